//! The session registry: which gateway slot each live connection of a user is on.
//!
//! `sess:{user}` holds a user's sessions (and, in `d:<connection>`, each one's device: a field
//! of its own, so a route's value reads as before); `online:{<n>}` (16 shards) the users who may have
//! one. A lookup first asks the shards which of the users are there (one `SMISMEMBER` per
//! shard), then reads only their sessions: a 10,000-member group with 1,000 online costs 16
//! commands and 1,000 hash reads, not 10,000. A user left in a shard with no live session (a
//! crashed gateway's) is dropped from it by the lookup that finds out.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::Cmd;

use connect_core::model::{Session, SessionRoute};
use connect_core::ports::SessionRegistry;
use connect_core::{now_ms, PortError};
use connect_protocol::UserId;

use crate::conn::{Batch, RedisConn};
use crate::unavailable;

/// `sess:{user}` → { connection id → "slot|gateway|endpoint|expires_at_ms" }.
#[derive(Clone)]
pub struct RedisRegistry {
    conn: RedisConn,
    ttl: Duration,
}

/// A user's sessions hash (hash-tagged: the user's presence, `crate::presence`, shares its
/// slot, so one script reads both).
pub(crate) fn session_key(user: &UserId) -> String {
    format!("sess:{{{user}}}")
}

fn key(user: &UserId) -> String {
    session_key(user)
}

/// The shards of the online set (and of the push mirror's, `crate::push`).
pub(crate) const SHARDS: u32 = 16;
const ONLINE_SHARDS: u32 = SHARDS;

/// A session's device field.
fn device_field(conn: &str) -> String {
    format!("d:{conn}")
}

/// The indices of the `users` found in their shards' sets (`set_of(shard)`): one `SMISMEMBER` per
/// shard that has any of them.
pub(crate) async fn in_shards(
    conn: &RedisConn,
    users: &[UserId],
    set_of: fn(u32) -> String,
) -> Result<Vec<usize>, PortError> {
    let mut by_shard: Vec<Vec<usize>> = vec![Vec::new(); SHARDS as usize];
    for (i, u) in users.iter().enumerate() {
        by_shard[shard(u) as usize].push(i);
    }
    let asked: Vec<usize> = (0..by_shard.len())
        .filter(|s| !by_shard[*s].is_empty())
        .collect();
    let mut batch = Batch::new();
    for &s in &asked {
        let mut cmd = redis::cmd("SMISMEMBER");
        cmd.arg(set_of(s as u32));
        for &i in &by_shard[s] {
            cmd.arg(users[i].as_str());
        }
        batch.add(cmd);
    }
    let flags: Vec<Vec<bool>> = batch.query(conn).await.map_err(unavailable)?;
    let mut found = Vec::new();
    for (s, flags) in asked.iter().zip(flags) {
        found.extend(
            by_shard[*s]
                .iter()
                .zip(flags)
                .filter(|(_, on)| *on)
                .map(|(i, _)| *i),
        );
    }
    Ok(found)
}

/// The shard a user belongs to (FNV-1a of the id).
pub(crate) fn shard(user: &UserId) -> u32 {
    let hash = user.as_str().bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    hash % ONLINE_SHARDS
}

fn online_key(shard: u32) -> String {
    format!("online:{{{shard}}}")
}

fn encode(route: &SessionRoute, expires_ms: u64) -> String {
    format!(
        "{}|{}|{}|{}",
        route.slot, route.gateway, route.endpoint, expires_ms
    )
}

fn decode(conn: String, value: &str, now: u64) -> Option<SessionRoute> {
    let mut parts = value.splitn(4, '|');
    let slot = parts.next()?.parse().ok()?;
    let gateway = parts.next()?.to_owned();
    let endpoint = parts.next()?.to_owned();
    let expires: u64 = parts.next()?.parse().ok()?;
    (expires > now).then_some(SessionRoute {
        conn,
        slot,
        gateway,
        endpoint,
        device: None,
    })
}

impl RedisRegistry {
    /// Sessions live `ttl` unless refreshed.
    pub fn new(conn: RedisConn, ttl: Duration) -> Self {
        Self { conn, ttl }
    }

    /// Takes users found with no live session out of their shards, then puts back any whose
    /// session hash is not empty after the removal (a session registered meanwhile: its HSET
    /// came before that check, or its own SADD comes after the removal). A hash holding only
    /// a crashed gateway's expired sessions keeps its user until the hash itself expires.
    async fn forget_offline(&self, users: &[&UserId]) -> redis::RedisResult<()> {
        let mut batch = Batch::new();
        for u in users {
            batch.add_ignored(Cmd::srem(online_key(shard(u)), u.as_str()));
            batch.add(Cmd::hlen(key(u)));
        }
        let lens: Vec<u64> = batch.query(&self.conn).await?;
        let mut back = Batch::new();
        for (u, len) in users.iter().zip(lens) {
            if len > 0 {
                back.add_ignored(Cmd::sadd(online_key(shard(u)), u.as_str()));
            }
        }
        if !back.is_empty() {
            back.exec(&self.conn).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl SessionRegistry for RedisRegistry {
    async fn upsert(&self, sessions: &[Session]) -> Result<(), PortError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let ttl_ms = self.ttl.as_millis() as u64;
        let expires = now_ms() + ttl_ms;
        let mut batch = Batch::new();
        for s in sessions {
            let k = key(&s.user);
            batch.add_ignored(Cmd::hset(&k, &s.route.conn, encode(&s.route, expires)));
            if let Some(device) = &s.route.device {
                batch.add_ignored(Cmd::hset(&k, device_field(&s.route.conn), device));
            }
            batch.add_ignored(Cmd::pexpire(&k, ttl_ms as i64));
            batch.add_ignored(Cmd::sadd(online_key(shard(&s.user)), s.user.as_str()));
        }
        batch.exec(&self.conn).await.map_err(unavailable)
    }

    async fn remove(&self, sessions: &[(UserId, String)]) -> Result<(), PortError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new();
        for (user, conn) in sessions {
            batch.add_ignored(Cmd::hdel(
                key(user),
                &[conn.clone(), device_field(conn)][..],
            ));
        }
        batch.exec(&self.conn).await.map_err(unavailable)
    }

    async fn lookup(&self, users: &[UserId]) -> Result<Vec<Vec<SessionRoute>>, PortError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        // Which users may be online: one SMISMEMBER per shard.
        let maybe = in_shards(&self.conn, users, online_key).await?;
        let mut routes_of = vec![Vec::new(); users.len()];
        if maybe.is_empty() {
            return Ok(routes_of);
        }
        let mut batch = Batch::new();
        for &i in &maybe {
            batch.add(Cmd::hgetall(key(&users[i])));
        }
        let maps: Vec<HashMap<String, String>> =
            batch.query(&self.conn).await.map_err(unavailable)?;
        let now = now_ms();
        let mut gone: Vec<&UserId> = Vec::new();
        for (&i, m) in maybe.iter().zip(maps) {
            let mut routes: Vec<_> = m
                .iter()
                .filter(|(c, _)| !c.starts_with("d:"))
                .filter_map(|(c, v)| {
                    let mut route = decode(c.clone(), v, now)?;
                    route.device = m.get(&device_field(c)).cloned();
                    Some(route)
                })
                .collect();
            if routes.is_empty() {
                gone.push(&users[i]);
            }
            routes.sort_by(|a, b| a.conn.cmp(&b.conn));
            routes_of[i] = routes;
        }
        if !gone.is_empty() {
            if let Err(e) = self.forget_offline(&gone).await {
                tracing::debug!(cause = %e, "could not drop offline users from their shards");
            }
        }
        Ok(routes_of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_spread_over_the_online_shards() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            seen.insert(shard(&UserId::parse(format!("u{i}")).unwrap()));
        }
        assert_eq!(seen.len(), ONLINE_SHARDS as usize);
        assert_eq!(online_key(3), "online:{3}");
    }

    #[test]
    fn routes_round_trip_and_expire() {
        let r = SessionRoute {
            conn: "c".into(),
            slot: 2,
            gateway: "gw-a".into(),
            endpoint: "http://127.0.0.1:8080".into(),
            device: None,
        };
        let v = encode(&r, 1000);
        assert_eq!(decode("c".into(), &v, 999), Some(r));
        assert_eq!(decode("c".into(), &v, 1000), None);
        assert_eq!(decode("c".into(), "garbage", 0), None);
    }
}
