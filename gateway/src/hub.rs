//! The gateway's local connections: user → connections, connection → outbound queue.
//!
//! Delivery never blocks: each connection has a bounded queue (`GATEWAY_OUTBOUND_QUEUE`); a
//! connection whose queue is full is a slow consumer and is evicted (its queue closes, its task
//! closes the socket). Nothing is lost by that: history holds every accepted message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use connect_core::model::Delivery;
use connect_protocol::UserId;

/// A connection's outbound queue.
pub type Outbox = mpsc::Sender<Utf8Bytes>;

struct Entry {
    user: UserId,
    outbox: Outbox,
}

#[derive(Default)]
struct Inner {
    conns: HashMap<Arc<str>, Entry>,
    users: HashMap<UserId, Vec<Arc<str>>>,
}

/// What one delivery did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Handed {
    /// Frames queued to connections.
    pub frames: usize,
    /// Connections evicted as slow consumers.
    pub evicted: usize,
}

#[derive(Default)]
pub struct Hub {
    inner: Mutex<Inner>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, user: &UserId, conn: Arc<str>, outbox: Outbox) {
        let mut inner = self.lock();
        inner
            .users
            .entry(user.clone())
            .or_default()
            .push(conn.clone());
        inner.conns.insert(
            conn,
            Entry {
                user: user.clone(),
                outbox,
            },
        );
    }

    /// Forgets a connection; false if it was not here (already evicted).
    pub fn remove(&self, conn: &str) -> bool {
        let mut inner = self.lock();
        remove_locked(&mut inner, conn)
    }

    /// Every local (user, connection).
    pub fn sessions(&self) -> Vec<(UserId, Arc<str>)> {
        self.lock()
            .conns
            .iter()
            .map(|(c, e)| (e.user.clone(), c.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    /// Queues the delivery's frames to the local connections it names.
    pub fn deliver(&self, delivery: Delivery) -> Handed {
        let mut handed = Handed::default();
        let mut slow: Vec<Arc<str>> = Vec::new();
        let mut inner = self.lock();
        let skip = delivery.reply.as_ref().map(|r| r.conn.as_str());
        if let Some(message) = delivery.message {
            let frame = Utf8Bytes::from(message.frame);
            for user in &delivery.recipients {
                let Some(conns) = inner.users.get(user) else {
                    continue;
                };
                for conn in conns.iter().filter(|c| Some(&***c) != skip) {
                    match inner.conns[conn].outbox.try_send(frame.clone()) {
                        Ok(()) => handed.frames += 1,
                        Err(_) => slow.push(conn.clone()),
                    }
                }
            }
        }
        if let Some(reply) = delivery.reply {
            if let Some(entry) = inner.conns.get(reply.conn.as_str()) {
                match entry.outbox.try_send(Utf8Bytes::from(reply.frame)) {
                    Ok(()) => handed.frames += 1,
                    Err(_) => slow.push(reply.conn.into()),
                }
            }
        }
        for conn in slow {
            if remove_locked(&mut inner, &conn) {
                handed.evicted += 1;
            }
        }
        handed
    }
}

fn remove_locked(inner: &mut Inner, conn: &str) -> bool {
    let Some(entry) = inner.conns.remove(conn) else {
        return false;
    };
    if let Some(conns) = inner.users.get_mut(&entry.user) {
        conns.retain(|c| &**c != conn);
        if conns.is_empty() {
            inner.users.remove(&entry.user);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use connect_core::model::{OutboundMessage, Reply};

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn delivery(to: &[&str], reply_conn: Option<&str>) -> Delivery {
        Delivery {
            slot: 0,
            recipients: to.iter().map(|u| user(u)).collect(),
            message: Some(OutboundMessage {
                conversation: "dm:a:b".into(),
                seq: 1,
                ts: 0,
                frame: "m".into(),
            }),
            reply: reply_conn.map(|c| Reply {
                conn: c.into(),
                frame: "r".into(),
            }),
        }
    }

    #[test]
    fn the_sending_connection_gets_the_reply_and_the_others_the_message() {
        let hub = Hub::default();
        let (tx1, mut rx1) = mpsc::channel(4);
        let (tx2, mut rx2) = mpsc::channel(4);
        let (tx3, mut rx3) = mpsc::channel(4);
        hub.add(&user("a"), "a1".into(), tx1);
        hub.add(&user("a"), "a2".into(), tx2);
        hub.add(&user("b"), "b1".into(), tx3);
        let handed = hub.deliver(delivery(&["a", "b", "nobody"], Some("a1")));
        assert_eq!(
            handed,
            Handed {
                frames: 3,
                evicted: 0
            }
        );
        assert_eq!(rx1.try_recv().unwrap().as_str(), "r");
        assert!(rx1.try_recv().is_err());
        assert_eq!(rx2.try_recv().unwrap().as_str(), "m");
        assert_eq!(rx3.try_recv().unwrap().as_str(), "m");
    }

    #[test]
    fn a_full_queue_evicts_the_slow_connection() {
        let hub = Hub::default();
        let (tx, mut rx) = mpsc::channel(1);
        hub.add(&user("a"), "a1".into(), tx);
        assert_eq!(hub.deliver(delivery(&["a"], None)).frames, 1);
        assert_eq!(hub.deliver(delivery(&["a"], None)).evicted, 1);
        assert_eq!(hub.len(), 0);
        assert_eq!(rx.try_recv().unwrap().as_str(), "m");
        assert!(matches!(
            rx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        assert!(!hub.remove("a1"));
    }
}
