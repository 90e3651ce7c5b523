//! (sender, client id) → acceptance: `dedupe:{sender}:{id}` = "conversation|seq|ts[|mv]", with a
//! TTL (`mv`: a group message's membership version).

use std::time::Duration;

use async_trait::async_trait;
use redis::Cmd;

use connect_core::model::{Acceptance, DedupeKey};
use connect_core::ports::DedupeIndex;
use connect_core::PortError;
use connect_protocol::ConversationId;

use crate::conn::{Batch, RedisConn};
use crate::unavailable;

#[derive(Clone)]
pub struct RedisDedupe {
    conn: RedisConn,
    ttl: Duration,
}

impl RedisDedupe {
    /// Acceptances are remembered for `ttl` (how long a client may retry a send).
    pub fn new(conn: RedisConn, ttl: Duration) -> Self {
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
        let mut batch = Batch::new();
        keys.iter().for_each(|k| {
            batch.add(Cmd::get(key(k)));
        });
        let values: Vec<Option<String>> = batch.query(&self.conn).await.map_err(unavailable)?;
        Ok(values
            .iter()
            .map(|v| v.as_deref().and_then(decode))
            .collect())
    }

    async fn remember(&self, entries: &[(DedupeKey, Acceptance)]) -> Result<(), PortError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new();
        for (k, a) in entries {
            batch.add_ignored(Cmd::set_ex(key(k), encode(a), self.ttl.as_secs()));
        }
        batch.exec(&self.conn).await.map_err(unavailable)
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
