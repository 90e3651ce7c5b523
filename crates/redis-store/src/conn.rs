//! One connection type for both deployments, and the batch that sends many keys' commands in as
//! few round trips as the deployment allows.
//!
//! - [`RedisConn::Single`]: one server (or one primary endpoint), a self-reconnecting multiplexed
//!   connection; a [`Batch`] is one pipeline.
//! - [`RedisConn::Cluster`]: Redis Cluster (ElastiCache cluster mode). A cluster refuses a
//!   pipeline whose keys span hash slots, so a [`Batch`] becomes one pipeline per slot, sent
//!   concurrently, and the replies are put back in the order the commands were added.

use std::collections::HashMap;

use futures_util::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Arg, Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};

/// A connection to Redis: a single server or a cluster. Cheap to clone (both share their
/// multiplexed connections).
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// A Lua script run by its SHA1 (`EVALSHA`): its text crosses the network once per server,
/// when a batch finds the server without it (a new server, a restart, a failover:
/// [`Batch::query`] loads it and runs those calls again), not with every call.
pub(crate) struct Lua {
    code: String,
    sha: String,
}

impl Lua {
    pub(crate) fn new(code: impl Into<String>) -> Self {
        let code = code.into();
        let sha = redis::Script::new(&code).get_hash().to_owned();
        Self { code, sha }
    }

    /// `EVALSHA <sha> <n> keys…`; add the arguments to the returned command.
    pub(crate) fn call(&self, keys: &[&str]) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.sha).arg(keys.len());
        for k in keys {
            cmd.arg(*k);
        }
        cmd
    }

    fn load(&self) -> Cmd {
        let mut cmd = redis::cmd("SCRIPT");
        cmd.arg("LOAD").arg(&self.code);
        cmd
    }
}

/// Whether a reply says the server does not have the script.
fn no_script(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript))
}

/// One command of a [`Batch`]: its reply kept or only checked, and the script it calls.
struct Entry {
    cmd: Cmd,
    ignored: bool,
    script: Option<&'static Lua>,
}

/// Single-key commands on many keys (the key is each command's first argument).
#[derive(Default)]
pub(crate) struct Batch {
    cmds: Vec<Entry>,
}

impl Batch {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds a command whose reply the query returns.
    pub(crate) fn add(&mut self, cmd: Cmd) -> &mut Self {
        self.push(cmd, false, None)
    }

    /// Adds a command whose reply is only checked for an error.
    pub(crate) fn add_ignored(&mut self, cmd: Cmd) -> &mut Self {
        self.push(cmd, true, None)
    }

    /// Adds a call of `script` (made with [`Lua::call`]) whose reply the query returns.
    pub(crate) fn add_script(&mut self, script: &'static Lua, cmd: Cmd) -> &mut Self {
        self.push(cmd, false, Some(script))
    }

    /// Adds a call of `script` whose reply is only checked for an error.
    pub(crate) fn add_script_ignored(&mut self, script: &'static Lua, cmd: Cmd) -> &mut Self {
        self.push(cmd, true, Some(script))
    }

    fn push(&mut self, cmd: Cmd, ignored: bool, script: Option<&'static Lua>) -> &mut Self {
        self.cmds.push(Entry {
            cmd,
            ignored,
            script,
        });
        self
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// Runs the batch; the replies of the commands not ignored, in the order they were added.
    /// Script calls that find a server without their script are run again once it is loaded
    /// (a call that met NOSCRIPT did nothing; those calls keep their order among themselves).
    pub(crate) async fn query<T: FromRedisValue>(self, conn: &RedisConn) -> RedisResult<Vec<T>> {
        let mut replies = self.replies(conn).await?;
        let missing: Vec<usize> = (0..self.cmds.len())
            .filter(|&i| self.cmds[i].script.is_some() && no_script(&replies[i]))
            .collect();
        if !missing.is_empty() {
            let mut loaded: Vec<&str> = Vec::new();
            for &i in &missing {
                let script = self.cmds[i].script.expect("a script call");
                if !loaded.contains(&script.sha.as_str()) {
                    loaded.push(&script.sha);
                    let _: Value = script.load().query_async(&mut conn.clone()).await?;
                }
            }
            let again = Batch {
                cmds: missing
                    .iter()
                    .map(|&i| Entry {
                        cmd: self.cmds[i].cmd.clone(),
                        ignored: false,
                        script: None,
                    })
                    .collect(),
            };
            for (i, v) in missing.into_iter().zip(again.replies(conn).await?) {
                replies[i] = v;
            }
        }
        let mut out = Vec::new();
        for (entry, v) in self.cmds.iter().zip(replies) {
            let v = v.extract_error()?;
            if !entry.ignored {
                out.push(redis::from_redis_value(v)?);
            }
        }
        Ok(out)
    }

    /// Every command's reply (errors included), in the order they were added.
    async fn replies(&self, conn: &RedisConn) -> RedisResult<Vec<Value>> {
        if let RedisConn::Single(_) = conn {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for entry in &self.cmds {
                pipe.add_command(entry.cmd.clone());
            }
            return pipe.query_async(&mut conn.clone()).await;
        }
        let groups = self.by_slot();
        let replies = try_join_all(groups.iter().map(|(_, pipe)| async move {
            pipe.query_async::<Vec<Value>>(&mut conn.clone()).await
        }))
        .await?;
        let mut at: Vec<Option<Value>> = vec![None; self.cmds.len()];
        for ((positions, _), values) in groups.iter().zip(replies) {
            for (&i, v) in positions.iter().zip(values) {
                at[i] = Some(v);
            }
        }
        at.into_iter()
            .map(|v| {
                v.ok_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "a pipeline answered fewer replies than it sent commands",
                    ))
                })
            })
            .collect()
    }

    /// Runs the batch for its effects (an empty one sends nothing).
    pub(crate) async fn exec(self, conn: &RedisConn) -> RedisResult<()> {
        if self.is_empty() {
            return Ok(());
        }
        self.query::<Value>(conn).await.map(drop)
    }

    /// The commands grouped by their key's hash slot, first-seen slot first: (positions, the
    /// slot's pipeline, every reply kept, errors included).
    fn by_slot(&self) -> Vec<(Vec<usize>, Pipeline)> {
        let mut index: HashMap<Slot, usize> = HashMap::new();
        let mut groups: Vec<(Vec<usize>, Pipeline)> = Vec::new();
        for (i, entry) in self.cmds.iter().enumerate() {
            let g = *index.entry(slot_of(&entry.cmd)).or_insert_with(|| {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                groups.push((Vec::new(), pipe));
                groups.len() - 1
            });
            groups[g].0.push(i);
            groups[g].1.add_command(entry.cmd.clone());
        }
        groups
    }
}

/// The hash slot of a command's key: its first argument after the name, or for a script
/// (`EVAL script numkeys key …`) its first key.
fn slot_of(cmd: &Cmd) -> Slot {
    let mut args = cmd.args_iter();
    let is_script = matches!(args.next(), Some(Arg::Simple(name)) if name.eq_ignore_ascii_case(b"EVAL") || name.eq_ignore_ascii_case(b"EVALSHA"));
    let key = if is_script { args.nth(2) } else { args.next() };
    match key {
        Some(Arg::Simple(key)) => Slot::for_key(key),
        _ => Slot::for_key(b""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_group_by_their_keys_slot_in_order() {
        let mut b = Batch::new();
        b.add(Cmd::get("log:{a}"))
            .add_ignored(Cmd::pexpire("log:{a}", 5))
            .add(Cmd::get("log:{b}"))
            .add(Cmd::hgetall("cur:{a}:phone"));
        let groups = b.by_slot();
        let positions: Vec<Vec<usize>> = groups.into_iter().map(|(p, _)| p).collect();
        // {a} tags share a slot whatever the rest of the key; {b} is another.
        assert_eq!(positions, vec![vec![0, 1, 3], vec![2]]);
        assert_eq!(slot_of(&Cmd::get("x{a}y")), Slot::for_key("a"));
        let mut script = redis::cmd("EVAL");
        script
            .arg("return 1")
            .arg(2)
            .arg("d:{b}")
            .arg("d:{b}:o")
            .arg("x");
        assert_eq!(slot_of(&script), Slot::for_key("b"));
    }
}
