//! The offline state: each conversation's recent messages once, a user's direct conversations,
//! a cursor per (user, device, conversation).
//!
//! - `log:{<conversation>}`: sorted set, score = seq, member = "<mv> <device> <frame>": the
//!   membership version (0 for direct messages), the sending device (empty if unknown) and the
//!   `message` frame text (adding the same message twice keeps one), bounded to the newest
//!   `log_max` entries.
//! - `inbox:{<user>}`: sorted set of the user's direct conversations, score = latest seq.
//! - `cur:{<user>}:<device>`: hash, conversation → the last seq that device acked; the ack
//!   script only ever moves it up.
//!
//! Every key expires after `ttl` without writes. Each key is its own hash slot owner (cluster
//! mode): calls are pipelines of single-key commands and a single-key script.
//!
//! The logs are the bulk of Redis's memory and the only part that may be lost: history has every
//! message, and the drain reads it where a log falls short. They live on their own server
//! (`REDIS_LOG_URL`, one that evicts under memory pressure: `allkeys-lru`); the inboxes and
//! cursors stay with the state that must never be evicted (`REDIS_URL`, `noeviction`), as do
//! sessions, slot leases and dedupe entries.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::{Cmd, Script};

use connect_core::model::LogEntry;
use connect_core::ports::{ConversationLog, ConversationStarts, DeviceStart};
use connect_core::PortError;
use connect_protocol::{ConversationId, UserId};

use crate::conn::{Batch, RedisConn};
use crate::unavailable;

const ACK: &str = r"local at = tonumber(redis.call('hget', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > at then redis.call('hset', KEYS[1], ARGV[1], ARGV[2]) end
redis.call('pexpire', KEYS[1], ARGV[3])
return 0";

/// `ConversationStarts`: a direct conversation in the user's inbox (it has messages) may be
/// written in; otherwise it is counted in `started:{<user>}:<window>` (a set, the same hash slot
/// as the inbox) while the window's count is under the limit.
const START: &str = r"if redis.call('zscore', KEYS[1], ARGV[1]) then return 1 end
if redis.call('sismember', KEYS[2], ARGV[1]) == 1 then return 1 end
if redis.call('scard', KEYS[2]) >= tonumber(ARGV[2]) then return 0 end
redis.call('sadd', KEYS[2], ARGV[1])
redis.call('pexpire', KEYS[2], ARGV[3])
return 1";

/// Bounds of the offline state (`OFFLINE_LOG_MAX`, `OFFLINE_TTL_SECS`).
#[derive(Debug, Clone, Copy)]
pub struct OfflineLimits {
    /// Entries kept per conversation (a frame is at most ~17 KiB: a 16 KiB body and its
    /// envelope, so a log holds at most `log_max` × 17 KiB). Older messages are in history.
    pub log_max: usize,
    pub ttl: Duration,
}

impl OfflineLimits {
    pub fn from_settings(
        s: &connect_config::Settings,
    ) -> Result<Self, connect_config::ConfigError> {
        Ok(Self {
            log_max: s.parsed("OFFLINE_LOG_MAX", 1_000)?,
            ttl: Duration::from_secs(s.parsed("OFFLINE_TTL_SECS", 14 * 24 * 3600)?),
        })
    }
}

#[derive(Clone)]
pub struct RedisLog {
    /// Inboxes and cursors.
    conn: RedisConn,
    /// The conversation logs (the same server as `conn` when no other is configured).
    logs: RedisConn,
    limits: OfflineLimits,
    ack: Script,
    start: Script,
}

fn log_key(conversation: &str) -> String {
    format!("log:{{{conversation}}}")
}

fn inbox_key(user: &UserId) -> String {
    format!("inbox:{{{user}}}")
}

fn cursor_key(user: &UserId, device: &str) -> String {
    format!("cur:{{{user}}}:{device}")
}

/// A log member: "<mv> <device> <frame>" (device and mv never hold a space; a frame is JSON).
fn encode(e: &LogEntry) -> String {
    format!(
        "{} {} {}",
        e.mv,
        e.device.as_deref().unwrap_or_default(),
        e.frame
    )
}

/// The entry a log member holds (a bare frame: version 0, no device).
fn decode(conversation: &ConversationId, seq: u64, member: String) -> LogEntry {
    let parsed = (!member.starts_with('{'))
        .then(|| {
            let (mv, rest) = member.split_once(' ')?;
            let (device, frame) = rest.split_once(' ')?;
            Some((mv.parse().ok()?, device, frame))
        })
        .flatten();
    let (mv, device, frame) = match parsed {
        Some((mv, device, frame)) => (
            mv,
            (!device.is_empty()).then(|| device.to_owned()),
            frame.to_owned(),
        ),
        None => (0, None, member),
    };
    LogEntry {
        conversation: conversation.clone(),
        seq,
        frame,
        mv,
        device,
    }
}

impl RedisLog {
    /// Inboxes and cursors on `state`, the logs on `logs`.
    pub fn new(state: RedisConn, logs: RedisConn, limits: OfflineLimits) -> Self {
        Self {
            conn: state,
            logs,
            limits,
            ack: Script::new(ACK),
            start: Script::new(START),
        }
    }
}

#[async_trait]
impl ConversationStarts for RedisLog {
    async fn may_send(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        limit: u64,
        window_secs: u64,
    ) -> Result<bool, PortError> {
        let window_secs = window_secs.max(1);
        let window = connect_core::now_ms() / 1000 / window_secs;
        self.start
            .key(inbox_key(user))
            .key(format!("started:{{{user}}}:{window}"))
            .arg(conversation.to_string())
            .arg(limit)
            .arg(window_secs * 1000)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(|allowed| allowed == 1)
            .map_err(unavailable)
    }
}

#[async_trait]
impl ConversationLog for RedisLog {
    async fn append(&self, entries: &[LogEntry]) -> Result<(), PortError> {
        if entries.is_empty() {
            return Ok(());
        }
        let ttl = self.limits.ttl.as_millis() as i64;
        let keep = self.limits.log_max.max(1) as isize;
        let (mut log_batch, mut inbox_batch) = (Batch::new(), Batch::new());
        let mut logs: Vec<String> = Vec::new();
        for e in entries {
            let conversation = e.conversation.to_string();
            log_batch.add_ignored(Cmd::zadd(log_key(&conversation), encode(e), e.seq));
            if let ConversationId::Direct { low, high } = &e.conversation {
                for user in [low, high] {
                    let inbox = inbox_key(user);
                    let mut zadd = redis::cmd("ZADD");
                    zadd.arg(&inbox).arg("GT").arg(e.seq).arg(&conversation);
                    inbox_batch.add_ignored(zadd);
                    inbox_batch.add_ignored(Cmd::pexpire(&inbox, ttl));
                }
            }
            if !logs.contains(&conversation) {
                logs.push(conversation);
            }
        }
        for conversation in &logs {
            let key = log_key(conversation);
            log_batch.add_ignored(Cmd::zremrangebyrank(&key, 0, -(keep + 1)));
            log_batch.add_ignored(Cmd::pexpire(&key, ttl));
        }
        let (logged, indexed) =
            tokio::join!(log_batch.exec(&self.logs), inbox_batch.exec(&self.conn));
        logged.and(indexed).map_err(unavailable)
    }

    async fn inbox(&self, user: &UserId) -> Result<Vec<(String, u64)>, PortError> {
        redis::cmd("ZRANGE")
            .arg(inbox_key(user))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    async fn starts(&self, devices: &[(UserId, String)]) -> Result<Vec<DeviceStart>, PortError> {
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = Batch::new();
        for (user, device) in devices {
            let mut zrange = redis::cmd("ZRANGE");
            zrange.arg(inbox_key(user)).arg(0).arg(-1).arg("WITHSCORES");
            batch.add(zrange);
            batch.add(Cmd::hgetall(cursor_key(user, device)));
        }
        let replies: Vec<redis::Value> = batch.query(&self.conn).await.map_err(unavailable)?;
        replies
            .chunks(2)
            .map(|pair| {
                let [inbox, cursors] = pair else {
                    return Err(PortError::unavailable(
                        "redis",
                        "a pipeline answered fewer replies than it sent commands",
                    ));
                };
                let parsed = |e: redis::ParsingError| PortError::unavailable("redis", e);
                Ok(DeviceStart {
                    inbox: redis::from_redis_value_ref(inbox).map_err(parsed)?,
                    cursors: redis::from_redis_value_ref(cursors).map_err(parsed)?,
                })
            })
            .collect()
    }

    async fn heads(&self, conversations: &[String]) -> Result<Vec<u64>, PortError> {
        if conversations.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = Batch::new();
        for c in conversations {
            let mut zrange = redis::cmd("ZRANGE");
            zrange.arg(log_key(c)).arg(-1).arg(-1).arg("WITHSCORES");
            batch.add(zrange);
        }
        let last: Vec<Vec<(String, u64)>> = batch.query(&self.logs).await.map_err(unavailable)?;
        Ok(last
            .into_iter()
            .map(|l| l.first().map_or(0, |(_, seq)| *seq))
            .collect())
    }

    async fn page(
        &self,
        conversation: &ConversationId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, PortError> {
        let raw: Vec<(String, u64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(log_key(&conversation.to_string()))
            .arg(format!("({after}"))
            .arg("+inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.logs.clone())
            .await
            .map_err(unavailable)?;
        Ok(raw
            .into_iter()
            .map(|(member, seq)| decode(conversation, seq, member))
            .collect())
    }

    async fn cursors(
        &self,
        user: &UserId,
        device: &str,
    ) -> Result<HashMap<String, u64>, PortError> {
        redis::cmd("HGETALL")
            .arg(cursor_key(user, device))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    async fn ack(
        &self,
        user: &UserId,
        device: &str,
        conversation: &str,
        seq: u64,
    ) -> Result<(), PortError> {
        self.ack
            .key(cursor_key(user, device))
            .arg(conversation)
            .arg(seq)
            .arg(self.limits.ttl.as_millis() as u64)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(drop)
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_their_hash_tags() {
        let u = UserId::parse("bob").unwrap();
        assert_eq!(log_key("dm:alice:bob"), "log:{dm:alice:bob}");
        assert_eq!(inbox_key(&u), "inbox:{bob}");
        assert_eq!(cursor_key(&u, "phone"), "cur:{bob}:phone");
    }

    #[test]
    fn log_members_round_trip() {
        let conversation = ConversationId::parse("group:g_1").unwrap();
        let frame = r#"{"type":"message","body":"a b c"}"#.to_owned();
        for (mv, device) in [(7, Some("phone".to_owned())), (0, None)] {
            let e = LogEntry {
                conversation: conversation.clone(),
                seq: 3,
                frame: frame.clone(),
                mv,
                device,
            };
            assert_eq!(decode(&conversation, 3, encode(&e)), e);
        }
        // A bare frame (written before versions were kept).
        let bare = decode(&conversation, 4, frame.clone());
        assert_eq!((bare.mv, bare.device, bare.frame), (0, None, frame));
    }
}
