//! In-memory implementations of the ports, for unit tests of the pure logic. Never used in place
//! of the real backends in end-to-end tests or in the services.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use connect_protocol::{ConversationId, UserId};

use crate::model::{Acceptance, DedupeKey, Delivery, Session, SessionRoute, StoredMessage};
use crate::ports::{
    ChatStore, DedupeIndex, DeliveryBus, Ports, SequenceAllocator, SessionRegistry,
};
use crate::PortError;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every port in memory, with switches to make the chat store fail.
#[derive(Default)]
pub struct Memory {
    pub sessions: Mutex<HashMap<UserId, Vec<SessionRoute>>>,
    pub seqs: Mutex<HashMap<ConversationId, u64>>,
    pub messages: Mutex<HashMap<(String, u64), StoredMessage>>,
    pub accepted: Mutex<HashMap<DedupeKey, Acceptance>>,
    pub published: Mutex<Vec<Delivery>>,
    pub chat_down: AtomicBool,
}

impl Memory {
    pub fn ports(self: &Arc<Self>) -> Ports {
        Ports {
            registry: self.clone(),
            sequences: self.clone(),
            chat: self.clone(),
            dedupe: self.clone(),
            deliveries: self.clone(),
        }
    }

    pub fn set_chat_down(&self, down: bool) {
        self.chat_down.store(down, Ordering::SeqCst);
    }

    pub fn take_published(&self) -> Vec<Delivery> {
        std::mem::take(&mut *lock(&self.published))
    }

    pub fn stored(&self) -> Vec<StoredMessage> {
        let mut v: Vec<_> = lock(&self.messages).values().cloned().collect();
        v.sort_by(|a, b| {
            (a.conversation.to_string(), a.seq).cmp(&(b.conversation.to_string(), b.seq))
        });
        v
    }

    fn check_chat(&self) -> Result<(), PortError> {
        if self.chat_down.load(Ordering::SeqCst) {
            return Err(PortError::unavailable("memory-chat", "switched off"));
        }
        Ok(())
    }
}

#[async_trait]
impl SessionRegistry for Memory {
    async fn upsert(&self, sessions: &[Session]) -> Result<(), PortError> {
        let mut map = lock(&self.sessions);
        for s in sessions {
            let routes = map.entry(s.user.clone()).or_default();
            routes.retain(|r| r.conn != s.route.conn);
            routes.push(s.route.clone());
        }
        Ok(())
    }

    async fn remove(&self, sessions: &[(UserId, String)]) -> Result<(), PortError> {
        let mut map = lock(&self.sessions);
        for (user, conn) in sessions {
            if let Some(routes) = map.get_mut(user) {
                routes.retain(|r| &r.conn != conn);
            }
        }
        Ok(())
    }

    async fn lookup(&self, users: &[UserId]) -> Result<Vec<Vec<SessionRoute>>, PortError> {
        let map = lock(&self.sessions);
        Ok(users
            .iter()
            .map(|u| map.get(u).cloned().unwrap_or_default())
            .collect())
    }
}

#[async_trait]
impl SequenceAllocator for Memory {
    async fn allocate(&self, requests: &[(ConversationId, u64)]) -> Vec<Result<u64, PortError>> {
        let mut map = lock(&self.seqs);
        requests
            .iter()
            .map(|(c, n)| {
                let last = map.entry(c.clone()).or_insert(0);
                *last += n;
                Ok(*last - n + 1)
            })
            .collect()
    }
}

#[async_trait]
impl ChatStore for Memory {
    async fn put_batch(&self, messages: &[StoredMessage]) -> Result<(), PortError> {
        self.check_chat()?;
        let mut map = lock(&self.messages);
        for m in messages {
            map.insert((m.conversation.to_string(), m.seq), m.clone());
        }
        Ok(())
    }

    async fn put_if_absent(&self, message: &StoredMessage) -> Result<bool, PortError> {
        self.check_chat()?;
        let mut map = lock(&self.messages);
        let key = (message.conversation.to_string(), message.seq);
        if map.contains_key(&key) {
            return Ok(false);
        }
        map.insert(key, message.clone());
        Ok(true)
    }
}

#[async_trait]
impl DedupeIndex for Memory {
    async fn get(&self, keys: &[DedupeKey]) -> Result<Vec<Option<Acceptance>>, PortError> {
        let map = lock(&self.accepted);
        Ok(keys.iter().map(|k| map.get(k).cloned()).collect())
    }

    async fn remember(&self, entries: &[(DedupeKey, Acceptance)]) -> Result<(), PortError> {
        lock(&self.accepted).extend(entries.iter().cloned());
        Ok(())
    }

    async fn forget(&self, keys: &[DedupeKey]) -> Result<(), PortError> {
        let mut map = lock(&self.accepted);
        keys.iter().for_each(|k| {
            map.remove(k);
        });
        Ok(())
    }
}

#[async_trait]
impl DeliveryBus for Memory {
    async fn publish(&self, deliveries: &[Delivery]) -> Result<(), PortError> {
        lock(&self.published).extend_from_slice(deliveries);
        Ok(())
    }
}
