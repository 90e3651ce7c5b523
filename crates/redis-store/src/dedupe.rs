//! (sender, client id) → acceptance, kept per sender and bounded twice: `dedupe:{sender}` is a
//! hash of client id → "conversation|seq|ts[|mv]" (`mv`: a group message's membership version),
//! `dedupe:{sender}:order` the ids in the order they were remembered. A sender's newest
//! `max_per_sender` ids are kept (older ones are dropped first), and both keys expire `ttl`
//! after the sender's last send. Redis memory is therefore at most
//! min(message rate × ttl, active senders × max_per_sender) entries, about 100 bytes each.
//! Both keys share the `{sender}` hash tag: one script updates them on one cluster node.

use std::time::Duration;

use async_trait::async_trait;
use redis::Cmd;

use connect_core::model::{Acceptance, DedupeKey};
use connect_core::ports::DedupeIndex;
use connect_core::PortError;
use connect_protocol::ConversationId;

use crate::conn::{Batch, Lua, RedisConn};
use crate::unavailable;

/// KEYS: the sender's hash and order list; ARGV: id, acceptance, max per sender, ttl secs. A new
/// id is remembered and appended to the order, and the oldest beyond the bound leave both; an
/// id remembered before keeps its acceptance, which is returned (nil for a new id).
static REMEMBER: std::sync::LazyLock<Lua> = std::sync::LazyLock::new(|| {
    Lua::new(
        r"
local before = redis.call('hget', KEYS[1], ARGV[1])
if not before then
  redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
  local over = redis.call('rpush', KEYS[2], ARGV[1]) - tonumber(ARGV[3])
  while over > 0 do
    redis.call('hdel', KEYS[1], redis.call('lpop', KEYS[2]))
    over = over - 1
  end
end
redis.call('expire', KEYS[1], ARGV[4])
redis.call('expire', KEYS[2], ARGV[4])
return before",
    )
});

/// KEYS: the sender's hash and order list; ARGV: id, acceptance. The id is forgotten only if it
/// still holds that acceptance.
static FORGET: std::sync::LazyLock<Lua> = std::sync::LazyLock::new(|| {
    Lua::new(
        r"
if redis.call('hget', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('hdel', KEYS[1], ARGV[1])
  redis.call('lrem', KEYS[2], 1, ARGV[1])
  return 1
end
return 0",
    )
});

#[derive(Clone)]
pub struct RedisDedupe {
    conn: RedisConn,
    ttl: Duration,
    max_per_sender: usize,
}

impl RedisDedupe {
    /// Acceptances are remembered for `ttl` after a sender's last send (how long a client may
    /// retry a send), at most `max_per_sender` per sender (its newest).
    pub fn new(conn: RedisConn, ttl: Duration, max_per_sender: usize) -> Self {
        Self {
            conn,
            ttl,
            max_per_sender: max_per_sender.max(1),
        }
    }
}

fn hash_key(sender: &str) -> String {
    format!("dedupe:{{{sender}}}")
}

fn order_key(sender: &str) -> String {
    format!("dedupe:{{{sender}}}:order")
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
            batch.add(Cmd::hget(hash_key(k.sender.as_str()), k.id.as_str()));
        });
        let values: Vec<Option<String>> = batch.query(&self.conn).await.map_err(unavailable)?;
        Ok(values
            .iter()
            .map(|v| v.as_deref().and_then(decode))
            .collect())
    }

    async fn remember(
        &self,
        entries: &[(DedupeKey, Acceptance)],
    ) -> Result<Vec<Option<Acceptance>>, PortError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = Batch::new();
        for (k, a) in entries {
            let sender = k.sender.as_str();
            let mut cmd = REMEMBER.call(&[&hash_key(sender), &order_key(sender)]);
            cmd.arg(k.id.as_str())
                .arg(encode(a))
                .arg(self.max_per_sender)
                .arg(self.ttl.as_secs());
            batch.add_script(&REMEMBER, cmd);
        }
        let before: Vec<Option<String>> = batch.query(&self.conn).await.map_err(unavailable)?;
        Ok(before
            .iter()
            .zip(entries)
            .map(|(before, (_, acceptance))| {
                before
                    .as_deref()
                    .and_then(decode)
                    .filter(|before| before != acceptance)
            })
            .collect())
    }

    async fn forget(&self, entries: &[(DedupeKey, Acceptance)]) -> Result<(), PortError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new();
        for (k, a) in entries {
            let sender = k.sender.as_str();
            let mut cmd = FORGET.call(&[&hash_key(sender), &order_key(sender)]);
            cmd.arg(k.id.as_str()).arg(encode(a));
            batch.add_script(&FORGET, cmd);
        }
        let _: Vec<u8> = batch.query(&self.conn).await.map_err(unavailable)?;
        Ok(())
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
