//! Which devices are registered for push: a mirror of the push table that messaging reads with
//! every batch (the table is the truth; the `devices` function writes both).
//!
//! `push:{user}` holds a user's registered devices; `pushable:{<n>}` (16 shards) the users who
//! have any. A lookup asks the shards which of the users are there (one `SMISMEMBER` per
//! shard), then reads only their devices: a batch whose recipients registered nothing costs 16
//! commands at most. Neither expires: a registration lasts until it is removed (by its device,
//! or by the push function when the push service says it is gone).

use async_trait::async_trait;
use redis::Cmd;

use connect_core::ports::PushDevices;
use connect_core::PortError;
use connect_protocol::UserId;

use crate::conn::{Batch, RedisConn};
use crate::registry::{in_shards, shard};
use crate::unavailable;

fn key(user: &UserId) -> String {
    format!("push:{user}")
}

fn pushable_key(shard: u32) -> String {
    format!("pushable:{{{shard}}}")
}

#[derive(Clone)]
pub struct RedisPushDevices {
    conn: RedisConn,
}

impl RedisPushDevices {
    pub fn new(conn: RedisConn) -> Self {
        Self { conn }
    }
}

#[async_trait]
impl PushDevices for RedisPushDevices {
    async fn registered(&self, users: &[UserId]) -> Result<Vec<Vec<String>>, PortError> {
        let mut devices = vec![Vec::new(); users.len()];
        if users.is_empty() {
            return Ok(devices);
        }
        let with = in_shards(&self.conn, users, pushable_key).await?;
        if with.is_empty() {
            return Ok(devices);
        }
        let mut batch = Batch::new();
        for &i in &with {
            batch.add(Cmd::smembers(key(&users[i])));
        }
        let sets: Vec<Vec<String>> = batch.query(&self.conn).await.map_err(unavailable)?;
        for (i, mut set) in with.into_iter().zip(sets) {
            set.sort();
            devices[i] = set;
        }
        Ok(devices)
    }

    async fn add(&self, user: &UserId, device: &str) -> Result<(), PortError> {
        let mut batch = Batch::new();
        batch.add_ignored(Cmd::sadd(key(user), device));
        batch.add_ignored(Cmd::sadd(pushable_key(shard(user)), user.as_str()));
        batch.exec(&self.conn).await.map_err(unavailable)
    }

    async fn remove(&self, user: &UserId, device: &str) -> Result<(), PortError> {
        let mut batch = Batch::new();
        batch.add_ignored(Cmd::srem(key(user), device));
        batch.add(Cmd::scard(key(user)));
        let left: Vec<u64> = batch.query(&self.conn).await.map_err(unavailable)?;
        if left.first().copied().unwrap_or(0) == 0 {
            // Out of its shard, then back in if a registration came meanwhile.
            let mut batch = Batch::new();
            batch.add_ignored(Cmd::srem(pushable_key(shard(user)), user.as_str()));
            batch.add(Cmd::scard(key(user)));
            let left: Vec<u64> = batch.query(&self.conn).await.map_err(unavailable)?;
            if left.first().copied().unwrap_or(0) > 0 {
                let mut batch = Batch::new();
                batch.add_ignored(Cmd::sadd(pushable_key(shard(user)), user.as_str()));
                batch.exec(&self.conn).await.map_err(unavailable)?;
            }
        }
        Ok(())
    }
}

fn gate_key(key: &str) -> String {
    format!("pushgate:{{{key}}}")
}

fn pending_key(key: &str) -> String {
    format!("pushpending:{{{key}}}")
}

/// The push function's collapse windows: `pushgate:{<user>|<device>|<conversation>}`, set with
/// `NX PX` (a window opens when its key does not exist), and each window's pending push (the
/// newest held back) in `pushpending:{…}`, in the same hash slot.
#[derive(Clone)]
pub struct RedisPushGate {
    conn: RedisConn,
}

impl RedisPushGate {
    pub fn new(conn: RedisConn) -> Self {
        Self { conn }
    }
}

#[async_trait]
impl connect_core::push::PushGate for RedisPushGate {
    async fn open(&self, keys: &[String], window_ms: u64) -> Result<Vec<bool>, PortError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = Batch::new();
        for k in keys {
            let mut cmd = redis::cmd("SET");
            cmd.arg(gate_key(k))
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(window_ms.max(1));
            batch.add(cmd);
        }
        let set: Vec<Option<String>> = batch.query(&self.conn).await.map_err(unavailable)?;
        Ok(set.into_iter().map(|s| s.is_some()).collect())
    }

    async fn release(&self, keys: &[String]) -> Result<(), PortError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new();
        for k in keys {
            batch.add_ignored(Cmd::del(gate_key(k)));
        }
        batch.exec(&self.conn).await.map_err(unavailable)
    }

    async fn defer(
        &self,
        held: &[(String, connect_core::push::PushRequest)],
        window_ms: u64,
    ) -> Result<Vec<Option<u64>>, PortError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        // Each kept a few windows at most: a deferral that never ran leaves nothing behind.
        let mut batch = Batch::new();
        for (key, request) in held {
            let value = serde_json::to_string(request)
                .map_err(|e| PortError::unavailable("redis", format!("encoding a push: {e}")))?;
            let mut set = redis::cmd("SET");
            set.arg(pending_key(key))
                .arg(value)
                .arg("PX")
                .arg(window_ms.saturating_mul(4).max(1))
                .arg("GET");
            batch.add(set);
        }
        let old: Vec<Option<String>> = batch.query(&self.conn).await.map_err(unavailable)?;
        // Those that had nothing pending: when their windows close.
        let first: Vec<usize> = (0..held.len())
            .filter(|&i| old.get(i).is_none_or(Option::is_none))
            .collect();
        let mut due = vec![None; held.len()];
        if first.is_empty() {
            return Ok(due);
        }
        let mut batch = Batch::new();
        for &i in &first {
            batch.add(Cmd::pttl(gate_key(&held[i].0)));
        }
        let ttl: Vec<i64> = batch.query(&self.conn).await.map_err(unavailable)?;
        let now = connect_core::now_ms();
        for (i, left) in first.into_iter().zip(ttl) {
            due[i] = Some(now + left.max(0) as u64);
        }
        Ok(due)
    }

    async fn take(&self, key: &str) -> Result<Option<connect_core::push::PushRequest>, PortError> {
        let mut cmd = redis::cmd("GETDEL");
        cmd.arg(pending_key(key));
        let mut batch = Batch::new();
        batch.add(cmd);
        let taken: Vec<Option<String>> = batch.query(&self.conn).await.map_err(unavailable)?;
        Ok(taken
            .into_iter()
            .flatten()
            .next()
            .and_then(|v| serde_json::from_str(&v).ok()))
    }
}
