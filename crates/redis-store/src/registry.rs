//! The session registry: which gateway slot each live connection of a user is on.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use connect_core::model::{Session, SessionRoute};
use connect_core::ports::SessionRegistry;
use connect_core::{now_ms, PortError};
use connect_protocol::UserId;

use crate::unavailable;

/// `sess:{user}` → { connection id → "slot|gateway|endpoint|expires_at_ms" }.
#[derive(Clone)]
pub struct RedisRegistry {
    conn: ConnectionManager,
    ttl: Duration,
}

fn key(user: &UserId) -> String {
    format!("sess:{user}")
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
    })
}

impl RedisRegistry {
    /// Sessions live `ttl` unless refreshed.
    pub fn new(conn: ConnectionManager, ttl: Duration) -> Self {
        Self { conn, ttl }
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
        let mut pipe = redis::pipe();
        for s in sessions {
            let k = key(&s.user);
            pipe.hset(&k, &s.route.conn, encode(&s.route, expires))
                .ignore();
            pipe.pexpire(&k, ttl_ms as i64).ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    async fn remove(&self, sessions: &[(UserId, String)]) -> Result<(), PortError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (user, conn) in sessions {
            pipe.hdel(key(user), conn).ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    async fn lookup(&self, users: &[UserId]) -> Result<Vec<Vec<SessionRoute>>, PortError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for u in users {
            pipe.hgetall(key(u));
        }
        let maps: Vec<HashMap<String, String>> = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        let now = now_ms();
        Ok(maps
            .into_iter()
            .map(|m| {
                let mut routes: Vec<_> = m
                    .into_iter()
                    .filter_map(|(c, v)| decode(c, &v, now))
                    .collect();
                routes.sort_by(|a, b| a.conn.cmp(&b.conn));
                routes
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_round_trip_and_expire() {
        let r = SessionRoute {
            conn: "c".into(),
            slot: 2,
            gateway: "gw-a".into(),
            endpoint: "http://127.0.0.1:8080".into(),
        };
        let v = encode(&r, 1000);
        assert_eq!(decode("c".into(), &v, 999), Some(r));
        assert_eq!(decode("c".into(), &v, 1000), None);
        assert_eq!(decode("c".into(), "garbage", 0), None);
    }
}
