//! Redis memory that degrades safely: the offline logs (their own Redis, `REDIS_LOG_URL`, which
//! evicts the least recently used) fill up and give way, while the state Redis (sessions, slot
//! leases, dedupe entries, cursors) evicts nothing; gateways keep serving, a retry still answers
//! its original seq, and offline delivery reads history for a conversation whose log was dropped.
//!
//! Runs alone against the plain local stack after the end-to-end suite (`make test`; by hand:
//! `cargo test -p connect-e2e --test memory`): it fills the stack's log Redis, which would evict
//! every test's logs running beside it.

use std::time::Duration;

use anyhow::{bail, Context};
use redis::AsyncCommands;

use connect_e2e::helpers::*;

/// A field of `INFO <section>`.
async fn info(
    conn: &mut redis::aio::MultiplexedConnection,
    section: &str,
    field: &str,
) -> anyhow::Result<u64> {
    let text: String = redis::cmd("INFO").arg(section).query_async(conn).await?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("INFO {section} has no {field}"))
}

async fn redis_at(var: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let url = std::env::var(var).with_context(|| format!("{var} (the plain stack sets it)"))?;
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

/// Sends `n` messages of `body_bytes` from a fresh user, each to a fresh peer (a new log each).
async fn fill(gateway: &str, n: usize, body_bytes: usize) -> anyhow::Result<()> {
    let me = user("filler");
    let mut c = Client::connect(gateway, &me).await?;
    let body = "x".repeat(body_bytes);
    for i in 0..n {
        c.send_accepted(&format!("f{i}"), &user("nobody"), &body)
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_full_log_redis_gives_way_and_nothing_else_does() -> anyhow::Result<()> {
    let gw = gateways();
    let mut state = redis_at("REDIS_URL").await?;
    let mut logs = redis_at("REDIS_LOG_URL").await?;
    let state_evicted = info(&mut state, "stats", "evicted_keys").await?;
    // The stack's gateways' slot leases (`gw-<port>`; gateways of other tests come and go).
    let mut leases: Vec<(String, String)> = Vec::new();
    for key in state.keys::<_, Vec<String>>("slot:*").await? {
        let holder: String = state.get(&key).await.unwrap_or_default();
        if gw
            .iter()
            .any(|g| g.rsplit(':').next().map(|p| format!("gw-{p}")) == Some(holder.clone()))
        {
            leases.push((key, holder));
        }
    }
    anyhow::ensure!(
        leases.len() == gw.len(),
        "each stack gateway holds a slot lease: {leases:?}"
    );

    // From an empty log Redis (what was there is the suite's; the drain reads history for it).
    let _: () = redis::cmd("FLUSHALL").query_async(&mut logs).await?;

    // alice writes to bob, who is offline, and to carol, who is online.
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let mut a = Client::connect(&gw[0], &alice).await?;
    let mut c = Client::connect(&gw[1], &carol).await?;
    let mut seqs = Vec::new();
    for i in 1..=5 {
        seqs.push(
            a.send_accepted(&format!("m{i}"), &bob, &format!("hi {i}"))
                .await?,
        );
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let bobs_log = format!("log:{{{}}}", dm(&alice, &bob));
    assert!(
        logs.exists::<_, bool>(&bobs_log).await?,
        "{bobs_log} written"
    );

    // The log Redis a few MB from full, choosing its victims by (near exact) LRU; then 16 KiB
    // messages to fresh peers fill it, round after round, until bob's log is gone.
    let used = info(&mut logs, "memory", "used_memory").await?;
    let max = used + 6 * 1024 * 1024;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(max)
        .query_async(&mut logs)
        .await?;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-samples")
        .arg(64)
        .query_async(&mut logs)
        .await?;
    let restore = async |logs: &mut redis::aio::MultiplexedConnection| -> anyhow::Result<()> {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg("256mb")
            .query_async(logs)
            .await?;
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-samples")
            .arg(5)
            .query_async(logs)
            .await?;
        Ok(())
    };
    let mut rounds = 0;
    while logs.exists::<_, bool>(&bobs_log).await? {
        rounds += 1;
        if rounds > 4 {
            restore(&mut logs).await?;
            bail!("bob's log still there after {rounds} rounds of filling");
        }
        let fillers = (0..4).map(|i| fill(&gw[i % 2], 100, 16 * 1024));
        for r in futures_util::future::join_all(fillers).await {
            r?;
        }
    }
    let evicted = info(&mut logs, "stats", "evicted_keys").await?;
    let used_now = info(&mut logs, "memory", "used_memory").await?;
    println!("log Redis: maxmemory {max} B, used {used_now} B, {evicted} keys evicted in {rounds} rounds");
    assert!(evicted > 0);

    // The state Redis evicted nothing: the leases, alice's session and her dedupe entries are there.
    assert_eq!(
        info(&mut state, "stats", "evicted_keys").await?,
        state_evicted
    );
    for (key, holder) in &leases {
        let now: Option<String> = state.get(key).await?;
        assert_eq!(now.as_ref(), Some(holder), "{key} still held");
    }
    assert!(
        state.exists::<_, bool>(format!("sess:{{{alice}}}")).await?,
        "alice's session"
    );
    assert!(
        state
            .exists::<_, bool>(format!("dedupe:{{{alice}}}"))
            .await?,
        "alice's dedupe entries"
    );

    // The gateways keep serving; a retry of an old send answers its original seq.
    let seq = a.send_accepted("to-carol", &carol, "still here").await?;
    let got = c.expect_fresh("message").await?;
    assert_eq!(
        (got["seq"].as_u64(), got["body"].as_str()),
        (Some(seq), Some("still here"))
    );
    assert_eq!(a.send_accepted("m3", &bob, "hi 3").await?, 3);

    // bob's log is gone: his backlog comes from history, all of it, in order.
    let mut b = Client::connect(&gw[1], &bob).await?;
    let got = b.drain_messages(Duration::from_secs(3)).await?;
    restore(&mut logs).await?;
    assert_eq!(got, [1, 2, 3, 4, 5], "bob's backlog from history");
    Ok(())
}
