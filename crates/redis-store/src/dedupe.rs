//! (sender, client id) → acceptance: `dedupe:{sender}:{id}` = "conversation|seq|ts[|mv]", with a
//! TTL (`mv`: a group message's membership version).

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use connect_core::model::{Acceptance, DedupeKey};
use connect_core::ports::DedupeIndex;
use connect_core::PortError;
use connect_protocol::ConversationId;

use crate::unavailable;

#[derive(Clone)]
pub struct RedisDedupe {
    conn: ConnectionManager,
    ttl: Duration,
}

impl RedisDedupe {
    /// Acceptances are remembered for `ttl` (how long a client may retry a send).
    pub fn new(conn: ConnectionManager, ttl: Duration) -> Self {
        Self { conn, ttl }
    }
}

fn key(k: &DedupeKey) -> String {
    format!("dedupe:{}:{}", k.sender, k.id)
}

fn encode(a: &Acceptance) -> String {
    match a.mv {
        Some(mv) => format!("{}|{}|{}|{mv}", a.conversation, a.seq, a.ts),
        None => format!("{}|{}|{}", a.conversation, a.seq, a.ts),
    }
}

fn decode(v: &str) -> Option<Acceptance> {
    let mut parts = v.split('|');
    let conversation = ConversationId::parse(parts.next()?).ok()?;
    let seq = parts.next()?.parse().ok()?;
    let ts = parts.next()?.parse().ok()?;
    let mv = match parts.next() {
        Some(mv) => Some(mv.parse().ok()?),
        None => None,
    };
    Some(Acceptance {
        conversation,
        seq,
        ts,
        mv,
    })
}

#[async_trait]
impl DedupeIndex for RedisDedupe {
    async fn get(&self, keys: &[DedupeKey]) -> Result<Vec<Option<Acceptance>>, PortError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        keys.iter().for_each(|k| {
            pipe.get(key(k));
        });
        let values: Vec<Option<String>> = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(values
            .iter()
            .map(|v| v.as_deref().and_then(decode))
            .collect())
    }

    async fn remember(&self, entries: &[(DedupeKey, Acceptance)]) -> Result<(), PortError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (k, a) in entries {
            pipe.set_ex(key(k), encode(a), self.ttl.as_secs()).ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptances_round_trip() {
        let a = Acceptance {
            conversation: ConversationId::parse("dm:a:b").unwrap(),
            seq: 12,
            ts: 99,
            mv: None,
        };
        assert_eq!(decode(&encode(&a)), Some(a.clone()));
        let g = Acceptance {
            conversation: ConversationId::parse("group:g_1").unwrap(),
            mv: Some(7),
            ..a
        };
        assert_eq!(decode(&encode(&g)), Some(g));
        assert_eq!(decode("dm:a:b|x|1"), None);
    }
}
