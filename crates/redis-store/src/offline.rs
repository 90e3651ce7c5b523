//! The offline store: messages kept per user until acked.
//!
//! `off:{user}:<conversation>` is a sorted set (score = seq, member = the `message` frame text,
//! so adding the same message twice keeps one) bounded to the newest `max_per_conversation`;
//! `offc:{user}` is the set of conversations with entries. The `{user}` hash tag keeps one
//! user's keys in one cluster slot, so the ack script may touch both. Both expire after `ttl`
//! without writes. An entry is added before its conversation is indexed, and an ack drops the
//! index only when the set is empty in the same script: an entry is never left unindexed.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;

use connect_core::model::OfflineEntry;
use connect_core::ports::OfflineStore;
use connect_core::PortError;
use connect_protocol::UserId;

use crate::unavailable;

const ACK: &str = r"redis.call('zremrangebyscore', KEYS[1], '-inf', ARGV[1])
if redis.call('zcard', KEYS[1]) == 0 then redis.call('srem', KEYS[2], ARGV[2]) end
return 0";

/// Bounds of the store (`OFFLINE_MAX_PER_CONVERSATION`, `OFFLINE_TTL_SECS`).
#[derive(Debug, Clone, Copy)]
pub struct OfflineLimits {
    pub max_per_conversation: usize,
    pub ttl: Duration,
}

impl OfflineLimits {
    pub fn from_env() -> Result<Self, String> {
        use connect_core::env::parsed;
        Ok(Self {
            max_per_conversation: parsed("OFFLINE_MAX_PER_CONVERSATION", 10_000)?,
            ttl: Duration::from_secs(parsed("OFFLINE_TTL_SECS", 14 * 24 * 3600)?),
        })
    }
}

#[derive(Clone)]
pub struct RedisOffline {
    conn: ConnectionManager,
    limits: OfflineLimits,
    ack: Script,
}

fn entries_key(user: &UserId, conversation: &str) -> String {
    format!("off:{{{user}}}:{conversation}")
}

fn index_key(user: &UserId) -> String {
    format!("offc:{{{user}}}")
}

impl RedisOffline {
    pub fn new(conn: ConnectionManager, limits: OfflineLimits) -> Self {
        Self {
            conn,
            limits,
            ack: Script::new(ACK),
        }
    }
}

#[async_trait]
impl OfflineStore for RedisOffline {
    async fn append(&self, entries: &[OfflineEntry]) -> Result<(), PortError> {
        if entries.is_empty() {
            return Ok(());
        }
        let ttl = self.limits.ttl.as_millis() as i64;
        let keep = self.limits.max_per_conversation.max(1) as isize;
        let mut pipe = redis::pipe();
        for e in entries {
            let key = entries_key(&e.user, &e.conversation);
            let index = index_key(&e.user);
            pipe.zadd(&key, &e.frame, e.seq).ignore();
            pipe.zremrangebyrank(&key, 0, -(keep + 1)).ignore();
            pipe.pexpire(&key, ttl).ignore();
            pipe.sadd(&index, &e.conversation).ignore();
            pipe.pexpire(&index, ttl).ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    async fn ack(&self, user: &UserId, conversation: &str, seq: u64) -> Result<(), PortError> {
        self.ack
            .key(entries_key(user, conversation))
            .key(index_key(user))
            .arg(seq)
            .arg(conversation)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(drop)
            .map_err(unavailable)
    }

    async fn conversations(&self, user: &UserId) -> Result<Vec<String>, PortError> {
        let mut all: Vec<String> = redis::cmd("SMEMBERS")
            .arg(index_key(user))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        all.sort();
        Ok(all)
    }

    async fn page(
        &self,
        user: &UserId,
        conversation: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, PortError> {
        let raw: Vec<(String, u64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(entries_key(user, conversation))
            .arg(format!("({after}"))
            .arg("+inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(raw.into_iter().map(|(frame, seq)| (seq, frame)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_users_keys_share_a_hash_tag() {
        let u = UserId::parse("bob").unwrap();
        assert_eq!(entries_key(&u, "dm:alice:bob"), "off:{bob}:dm:alice:bob");
        assert_eq!(index_key(&u), "offc:{bob}");
    }
}
