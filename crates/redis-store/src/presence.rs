//! Presence state ([`connect_core::presence`]): one hash per user beside its sessions, and the
//! due checks.
//!
//! `pres:{user}` (the same hash slot as the user's sessions, `sess:{user}`, so a script reads
//! both):
//! - `on`, `v`, `closed`, `at`: this region's own state — online here or not, its version, when
//!   the last connection here closed (while the offline check waits for the debounce), and
//!   when a session here was last registered or refreshed;
//! - `r:<region>` = `v|on|last_seen`: each region's newest transition as applied here; the view
//!   is their merge (online anywhere, else the latest `last_seen`), `mv` its version;
//! - `w:<slot>` = until (ms): gateway slots whose connections watch the user.
//!
//! It lives `retain` after the last write (`last_seen` is worth keeping for weeks).
//! `pdue:{<region>.<n>}` (16 shards, as the online sets): user → when to check whether they are still
//! online here (after a close: the debounce; while connected: the sessions' expiry, moved on by
//! every refresh, so a gateway that died takes its users offline once their sessions expire).

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::{Cmd, Value};

use connect_core::presence::{PresenceChange, PresenceStore, PresenceView, ViewChange};
use connect_core::PortError;
use connect_protocol::UserId;

use crate::conn::{Batch, Lua, RedisConn};
use crate::registry::{session_key, shard, SHARDS};
use crate::unavailable;

/// How presence is kept in one region.
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// This region's name (`CONNECT_REGION`).
    pub region: String,
    /// A user whose last connection closed is shown offline only if none is open this much
    /// later (`PRESENCE_DEBOUNCE_MS`, 5 s).
    pub debounce: Duration,
    /// How long a user's presence (their `last_seen`) is kept after its last change
    /// (`PRESENCE_RETAIN_DAYS`, 30).
    pub retain: Duration,
}

impl PresenceConfig {
    /// Region `region` with `PRESENCE_DEBOUNCE_MS` (5000) and `PRESENCE_RETAIN_DAYS` (30).
    pub fn from_settings(
        s: &connect_config::Settings,
        region: &str,
    ) -> Result<Self, connect_config::ConfigError> {
        Ok(Self {
            region: region.to_owned(),
            debounce: Duration::from_millis(s.parsed("PRESENCE_DEBOUNCE_MS", 5000)?),
            retain: Duration::from_secs(s.parsed::<u64>("PRESENCE_RETAIN_DAYS", 30)? * 86_400),
        })
    }
}

#[derive(Clone)]
pub struct RedisPresence {
    conn: RedisConn,
    cfg: PresenceConfig,
}

fn key(user: &UserId) -> String {
    format!("pres:{{{user}}}")
}

fn due_key(region: &str, shard: u32) -> String {
    format!("pdue:{{{region}.{shard}}}")
}

/// Whether the sessions hash (flat HGETALL reply in `fields`) holds a live one; the latest
/// expiry among the live ones. Shared by the scripts below.
const LIVE: &str = r#"
local function live(sess, now)
  local fields = redis.call('HGETALL', sess)
  local latest = 0
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 2) ~= 'd:' then
      local exp = tonumber(string.match(fields[i + 1], '|(%d+)$'))
      if exp and exp > now and exp > latest then latest = exp end
    end
  end
  return latest
end
"#;

/// KEYS: pres. ARGV: now, retain ms. A live session here (`at`: when it was last seen so):
/// online here if not yet (answers the new version), else 0.
const PRESENT: &str = r#"
local now = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'at', now)
if redis.call('HGET', KEYS[1], 'on') == '1' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 0
end
local v = math.max(tonumber(redis.call('HGET', KEYS[1], 'v') or '0') + 1, now)
redis.call('HSET', KEYS[1], 'on', '1', 'v', v)
redis.call('HDEL', KEYS[1], 'closed')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return v
"#;

/// KEYS: sess, pres. ARGV: now. A connection closed: with no live session left, remembers when
/// (answers 1: the check is to be scheduled), else 0.
fn closed_script() -> String {
    format!(
        r#"{LIVE}
local now = tonumber(ARGV[1])
if live(KEYS[1], now) > 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HSET', KEYS[2], 'closed', now) end
return 1
"#
    )
}

/// KEYS: sess, pres. ARGV: now, retain ms. Answers {1, latest expiry} when a session is still
/// live, {2, v, last_seen} when the user went offline here (last seen: when the last connection
/// closed, or for sessions that expired, when they were last refreshed), {0} otherwise.
fn check_script() -> String {
    format!(
        r#"{LIVE}
local now = tonumber(ARGV[1])
local latest = live(KEYS[1], now)
if latest > 0 then return {{1, latest}} end
if redis.call('HGET', KEYS[2], 'on') ~= '1' then return {{0}} end
local seen = tonumber(redis.call('HGET', KEYS[2], 'closed') or redis.call('HGET', KEYS[2], 'at') or '0')
local v = math.max(tonumber(redis.call('HGET', KEYS[2], 'v') or '0') + 1, now)
redis.call('HSET', KEYS[2], 'on', '0', 'v', v)
redis.call('HDEL', KEYS[2], 'closed')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {{2, v, seen}}
"#
    )
}

/// KEYS: pdue shard. ARGV: user, now. Takes the user's check out unless it was moved past now.
const DONE: &str = r#"
local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if at and tonumber(at) <= tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"#;

/// The merged view of a presence hash's fields (flat HGETALL reply), with `region`'s entry
/// replaced by `entry` when given. Shared by the scripts below.
const MERGE: &str = r#"
local function merge(fields, region, entry)
  local on, seen, mv = false, 0, 0
  local seen_region = false
  local function take(value)
    local _, o, s = string.match(value, '^(%d+)|(%d)|(%d+)$')
    if o == '1' then on = true elseif s and tonumber(s) > seen then seen = tonumber(s) end
  end
  for i = 1, #fields, 2 do
    local f = fields[i]
    if f == 'mv' then mv = tonumber(fields[i + 1])
    elseif string.sub(f, 1, 2) == 'r:' then
      if entry and string.sub(f, 3) == region then seen_region = true; take(entry)
      else take(fields[i + 1]) end
    end
  end
  if entry and not seen_region then take(entry) end
  return on, seen, mv
end
"#;

/// KEYS: pres. ARGV: region, v, on, last_seen, now, retain ms. Applies a region's transition;
/// when the view changed answers {mv, on, last_seen, slot…} (the live watchers), else false.
fn apply_script() -> String {
    format!(
        r#"{MERGE}
local field = 'r:' .. ARGV[1]
local old = redis.call('HGET', KEYS[1], field)
if old and tonumber(string.match(old, '^(%d+)')) >= tonumber(ARGV[2]) then return false end
local entry = ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4]
local fields = redis.call('HGETALL', KEYS[1])
local b_on, b_seen, mv = merge(fields, nil, nil)
local a_on, a_seen = merge(fields, ARGV[1], entry)
redis.call('HSET', KEYS[1], field, entry)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
if a_on == b_on and (a_on or a_seen == b_seen) then return false end
mv = math.max(mv + 1, tonumber(ARGV[5]))
redis.call('HSET', KEYS[1], 'mv', mv)
local out = {{mv, a_on and 1 or 0, a_seen}}
local now = tonumber(ARGV[5])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 2) == 'w:' then
    if tonumber(fields[i + 1]) > now then table.insert(out, tonumber(string.sub(fields[i], 3)))
    else redis.call('HDEL', KEYS[1], fields[i]) end
  end
end
return out
"#
    )
}

/// KEYS: pres. ARGV: slot ('' for none), until, retain ms. Records the watcher, then answers
/// the view {mv, on, last_seen}.
fn view_script() -> String {
    format!(
        r#"{MERGE}
if ARGV[1] ~= '' then
  redis.call('HSET', KEYS[1], 'w:' .. ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
local on, seen, mv = merge(redis.call('HGETALL', KEYS[1]), nil, nil)
return {{mv, on and 1 or 0, seen}}
"#
    )
}

/// The scripts, each loaded once per server and called by its SHA1 (see [`Lua`]).
static PRESENT_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(PRESENT));
static CLOSED_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(closed_script()));
static CHECK_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(check_script()));
static DONE_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(DONE));
static APPLY_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(apply_script()));
static VIEW_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(view_script()));

fn int(v: &Value) -> u64 {
    match v {
        Value::Int(i) => (*i).max(0) as u64,
        _ => redis::from_redis_value::<u64>(v.clone()).unwrap_or(0),
    }
}

fn view_of(values: &[Value]) -> PresenceView {
    let version = values.first().map(int).unwrap_or(0);
    let online = values.get(1).map(int) == Some(1);
    let seen = values.get(2).map(int).unwrap_or(0);
    PresenceView {
        online,
        last_seen: (!online && seen > 0).then_some(seen),
        version,
    }
}

impl RedisPresence {
    pub fn new(conn: RedisConn, cfg: PresenceConfig) -> Self {
        Self { conn, cfg }
    }

    fn due_key(&self, user: &UserId) -> String {
        due_key(&self.cfg.region, shard(user))
    }

    fn retain_ms(&self) -> u64 {
        self.cfg.retain.as_millis() as u64
    }

    fn change(
        &self,
        user: &UserId,
        v: u64,
        online: bool,
        last_seen: Option<u64>,
    ) -> PresenceChange {
        PresenceChange {
            user: user.clone(),
            region: self.cfg.region.clone(),
            v,
            online,
            last_seen,
        }
    }
}

#[async_trait]
impl PresenceStore for RedisPresence {
    async fn present(
        &self,
        users: &[UserId],
        now_ms: u64,
        expires_ms: u64,
    ) -> Result<Vec<PresenceChange>, PortError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = Batch::new();
        for u in users {
            let mut cmd = PRESENT_LUA.call(&[&key(u)]);
            cmd.arg(now_ms).arg(self.retain_ms());
            batch.add_script(&PRESENT_LUA, cmd);
            // The check moves to the sessions' expiry (never earlier than it was).
            batch.add_ignored(
                redis::cmd("ZADD")
                    .arg(self.due_key(u))
                    .arg("GT")
                    .arg(expires_ms)
                    .arg(u.as_str())
                    .clone(),
            );
        }
        let versions: Vec<u64> = batch.query(&self.conn).await.map_err(unavailable)?;
        Ok(users
            .iter()
            .zip(versions)
            .filter(|(_, v)| *v > 0)
            .map(|(u, v)| self.change(u, v, true, None))
            .collect())
    }

    async fn closed(&self, users: &[UserId], now_ms: u64) -> Result<(), PortError> {
        if users.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new();
        for u in users {
            let mut cmd = CLOSED_LUA.call(&[&session_key(u), &key(u)]);
            cmd.arg(now_ms);
            batch.add_script(&CLOSED_LUA, cmd);
        }
        let left: Vec<u64> = batch.query(&self.conn).await.map_err(unavailable)?;
        let due = now_ms + self.cfg.debounce.as_millis() as u64;
        let mut schedule = Batch::new();
        for (u, _) in users.iter().zip(left).filter(|(_, l)| *l == 1) {
            // Plain ZADD: the check comes after the debounce, even if a session's expiry was
            // later (a check that finds a session open again moves on to its expiry).
            schedule.add_ignored(Cmd::zadd(self.due_key(u), u.as_str(), due));
        }
        if schedule.is_empty() {
            return Ok(());
        }
        schedule.exec(&self.conn).await.map_err(unavailable)
    }

    async fn sweep(&self, now_ms: u64, limit: usize) -> Result<Vec<PresenceChange>, PortError> {
        let mut batch = Batch::new();
        for s in 0..SHARDS {
            batch.add(
                redis::cmd("ZRANGE")
                    .arg(due_key(&self.cfg.region, s))
                    .arg("-inf")
                    .arg(now_ms)
                    .arg("BYSCORE")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .arg("WITHSCORES")
                    .clone(),
            );
        }
        let shards: Vec<Vec<(String, u64)>> = batch.query(&self.conn).await.map_err(unavailable)?;
        let due: Vec<(UserId, u64)> = shards
            .into_iter()
            .flatten()
            .take(limit)
            .filter_map(|(u, at)| Some((UserId::parse(u).ok()?, at)))
            .collect();
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = Batch::new();
        for (u, _) in &due {
            let mut cmd = CHECK_LUA.call(&[&session_key(u), &key(u)]);
            cmd.arg(now_ms).arg(self.retain_ms());
            batch.add_script(&CHECK_LUA, cmd);
        }
        let results: Vec<Vec<u64>> = batch.query(&self.conn).await.map_err(unavailable)?;
        let mut changes = Vec::new();
        let mut after = Batch::new();
        for ((u, _), r) in due.iter().zip(results) {
            match r.as_slice() {
                [1, latest] => {
                    after.add_ignored(
                        redis::cmd("ZADD")
                            .arg(self.due_key(u))
                            .arg("GT")
                            .arg(*latest)
                            .arg(u.as_str())
                            .clone(),
                    );
                    continue;
                }
                [2, v, seen] => changes.push(self.change(u, *v, false, Some(*seen))),
                _ => {}
            }
            let mut done = DONE_LUA.call(&[&self.due_key(u)]);
            done.arg(u.as_str()).arg(now_ms);
            after.add_script_ignored(&DONE_LUA, done);
        }
        after.exec(&self.conn).await.map_err(unavailable)?;
        Ok(changes)
    }

    async fn apply(
        &self,
        changes: &[PresenceChange],
        now_ms: u64,
    ) -> Result<Vec<ViewChange>, PortError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = Batch::new();
        for c in changes {
            let mut cmd = APPLY_LUA.call(&[&key(&c.user)]);
            cmd.arg(&c.region)
                .arg(c.v)
                .arg(u8::from(c.online))
                .arg(c.last_seen.unwrap_or(0))
                .arg(now_ms)
                .arg(self.retain_ms());
            batch.add_script(&APPLY_LUA, cmd);
        }
        let results: Vec<Value> = batch.query(&self.conn).await.map_err(unavailable)?;
        Ok(changes
            .iter()
            .zip(results)
            .filter_map(|(c, r)| match r {
                Value::Array(values) if values.len() >= 3 => Some(ViewChange {
                    user: c.user.clone(),
                    view: view_of(&values),
                    slots: values[3..].iter().map(|s| int(s) as u32).collect(),
                }),
                _ => None,
            })
            .collect())
    }

    async fn views(
        &self,
        users: &[UserId],
        watcher: Option<(u32, u64)>,
    ) -> Result<Vec<PresenceView>, PortError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let (slot, until) = match watcher {
            Some((slot, until)) => (slot.to_string(), until),
            None => (String::new(), 0),
        };
        let mut batch = Batch::new();
        for u in users {
            let mut cmd = VIEW_LUA.call(&[&key(u)]);
            cmd.arg(&slot).arg(until).arg(self.retain_ms());
            batch.add_script(&VIEW_LUA, cmd);
        }
        let results: Vec<Vec<Value>> = batch.query(&self.conn).await.map_err(unavailable)?;
        Ok(results.iter().map(|r| view_of(r)).collect())
    }

    async fn unwatch(&self, users: &[UserId], slot: u32) -> Result<(), PortError> {
        if users.is_empty() {
            return Ok(());
        }
        let field = format!("w:{slot}");
        let mut batch = Batch::new();
        for u in users {
            batch.add_ignored(Cmd::hdel(key(u), &field));
        }
        batch.exec(&self.conn).await.map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_presence_shares_its_sessions_hash_slot() {
        let u = UserId::parse("alice").unwrap();
        assert_eq!(
            redis::cluster_routing::Slot::for_key(key(&u).as_bytes()),
            redis::cluster_routing::Slot::for_key(session_key(&u).as_bytes())
        );
        assert_eq!(due_key("a", 3), "pdue:{a.3}");
    }
}
