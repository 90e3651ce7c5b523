//! `connect-bench storm`: a reconnect storm, as after a gateway died. N users each have a
//! message waiting in a direct conversation's log (written as messaging writes it: the log and
//! both users' inboxes) and, with `--group-size`, one in a group's too (the users split into
//! groups of that size, each group's creation message, sequenced by messaging); all
//! connect at once, alternating between the gateways. Every connection's backlog goes through
//! `user_connected` and the offline-delivery function. Reports how long until every backlog
//! was complete (connect → its last waiting message: p50, p99, max), devices/s, and the
//! stack's CPU over the storm.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use connect_core::auth::TokenIssuer;
use connect_core::model::LogEntry;
use connect_core::ports::ConversationLog;
use connect_protocol::{ConversationId, UserId};

#[derive(clap::Args)]
pub struct StormRun {
    /// Devices that connect at once, each with one message waiting.
    #[arg(long, default_value_t = 5000)]
    users: usize,
    /// Connection attempts in flight at once (the storm's front).
    #[arg(long, default_value_t = 1000)]
    concurrency: usize,
    /// Also a message waiting in a group of this many of the users (0: direct ones only).
    #[arg(long, default_value_t = 0)]
    group_size: usize,
    /// How long a device waits for its backlog before the run fails.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    #[command(flatten)]
    stack: connect_bench::client::Stack,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6380")]
    redis: String,
}

pub async fn run(issuer: &TokenIssuer, run: StormRun) -> anyhow::Result<()> {
    let files = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    if files < run.users as u64 + 256 {
        bail!(
            "the open-file limit ({files}) is below --users {}",
            run.users
        );
    }
    let tag = crate::unique("storm");
    let sender = UserId::parse(format!("{tag}_s"))?;
    let users: Vec<UserId> = (0..run.users)
        .map(|i| UserId::parse(format!("{tag}_{i}")))
        .collect::<Result<_, _>>()?;
    let limits = connect_redis::OfflineLimits::from_settings(&connect_bench::settings())
        .map_err(anyhow::Error::msg)?;
    let redis_cfg = connect_redis::RedisConfig {
        url: run.redis.to_owned(),
        ..connect_redis::RedisConfig::from_settings(&connect_bench::settings())?
    };
    let state = connect_redis::connect(&redis_cfg).await?;
    let logs = connect_redis::connect_logs(&state, &redis_cfg).await?;
    let log = connect_redis::RedisLog::new(state, logs, limits);
    let seeded = Instant::now();
    let waiting = |conversation: ConversationId| LogEntry {
        frame: serde_json::json!({"type":"message","conversation":conversation.to_string(),
            "seq":1,"from":sender.to_string(),"id":"waiting","body":"sent while you were away",
            "ts":1_763_800_000_000u64})
        .to_string(),
        conversation,
        seq: 1,
        mv: 0,
        device: None,
    };
    for chunk in users.chunks(500) {
        let entries: Vec<LogEntry> = chunk
            .iter()
            .map(|u| waiting(ConversationId::direct(&sender, u).expect("two users")))
            .collect();
        log.append(&entries).await?;
    }
    let groups = if run.group_size > 0 {
        seed_groups(&tag, &sender, &users, run.group_size, &log).await?
    } else {
        0
    };
    // Each device's backlog: its direct message, and its group's.
    let expected = if groups > 0 { 2 } else { 1 };
    println!(
        "storm: {} devices with {expected} message(s) waiting ({groups} groups; seeded in {:.1} s); connecting {} at a time",
        run.users,
        seeded.elapsed().as_secs_f64(),
        run.concurrency
    );
    let gateways = run.stack.gateways();
    let usage = connect_bench::procs::Usage::start(&run.stack.pids);
    let front = Arc::new(Semaphore::new(run.concurrency.max(1)));
    let timeout = Duration::from_secs(run.timeout_secs);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(users.len());
    for (i, user) in users.iter().enumerate() {
        let (issuer, gateway, user, front) = (
            issuer.clone(),
            gateways[i % gateways.len()].clone(),
            user.to_string(),
            front.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = front.acquire_owned().await?;
            let mut ws = connect_bench::client::open(&issuer, &gateway, &user)
                .await
                .with_context(|| format!("{user} connecting to {gateway}"))?;
            drop(permit);
            let connected = started.elapsed();
            let waited = tokio::time::timeout(timeout, async {
                let mut got = std::collections::HashSet::new();
                while let Some(msg) = ws.next().await {
                    let Message::Text(text) = msg? else { continue };
                    let f: serde_json::Value = serde_json::from_str(&text)?;
                    if f["type"] == "message" && f["seq"] == 1 {
                        got.insert(f["conversation"].as_str().unwrap_or_default().to_owned());
                        if got.len() == expected {
                            return anyhow::Ok(());
                        }
                    }
                }
                bail!("closed before the backlog arrived")
            })
            .await
            .with_context(|| format!("{user}: no backlog within {timeout:?}"))?;
            waited?;
            let done = started.elapsed();
            // Held open until the end: a storm's devices stay.
            anyhow::Ok((connected, done, ws))
        }));
    }
    let mut backlog = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut last_connected = Duration::ZERO;
    let mut last_done = Duration::ZERO;
    let mut open = Vec::with_capacity(tasks.len());
    for t in tasks {
        let (connected, done, ws) = t.await??;
        backlog.record((done.saturating_sub(connected)).as_micros().max(1) as u64)?;
        last_connected = last_connected.max(connected);
        last_done = last_done.max(done);
        open.push(ws);
    }
    let usage = usage.stop();
    let secs = last_done.as_secs_f64();
    println!(
        "storm: {} devices connected within {:.2} s; every backlog complete after {:.2} s ({:.0} devices/s); connect → backlog p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        run.users,
        last_connected.as_secs_f64(),
        secs,
        run.users as f64 / secs,
        backlog.value_at_quantile(0.5) as f64 / 1000.0,
        backlog.value_at_quantile(0.99) as f64 / 1000.0,
        backlog.max() as f64 / 1000.0,
    );
    usage.print(secs);
    drop(open);
    Ok(())
}

/// `users` in groups of `size` (made through the groups adapter, as group admin does). Each
/// group's message waiting is the one its creation becomes (group-events → messaging, which
/// sequences, stores and logs it as any message): seeding waits until every group's log has
/// it. Returns how many groups.
async fn seed_groups(
    tag: &str,
    sender: &UserId,
    users: &[UserId],
    size: usize,
    log: &connect_redis::RedisLog,
) -> anyhow::Result<usize> {
    use connect_core::groups::{Caps, Group, GroupStore};
    let settings = connect_bench::settings();
    let dynamo = connect_dynamo::client(
        &connect_dynamo::DynamoConfig::from_settings(&settings).map_err(anyhow::Error::msg)?,
    )
    .await;
    let tables = connect_dynamo::Tables::from_settings(&settings);
    let store = connect_dynamo::DynamoGroups::new(dynamo, &tables.groups);
    let mut conversations = Vec::new();
    for (i, members) in users.chunks(size).enumerate() {
        let group = connect_protocol::GroupId::parse(format!("g_{tag}_{i}"))?;
        // The sender owns each group, so is among its members.
        let mut members = members.to_vec();
        members.push(sender.clone());
        members.sort();
        store
            .create(
                &Group {
                    group: group.clone(),
                    name: format!("storm {i}"),
                    owner: sender.clone(),
                    members,
                },
                Caps::UNBOUNDED,
            )
            .await?;
        conversations.push(ConversationId::group(group).to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let heads = log.heads(&conversations).await?;
        if heads.iter().all(|h| *h >= 1) {
            return Ok(conversations.len());
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {} groups' creation messages were not logged within 120 s",
                heads.iter().filter(|h| **h == 0).count(),
                conversations.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
