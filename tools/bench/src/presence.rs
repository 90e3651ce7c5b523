//! `connect-bench presence`: one user watched by `--watchers` connections (spread over the
//! gateways; they may watch because they share a group with the user: groups of at most
//! `--group-size`), who comes online and goes offline `--rounds` times. Per round: from the
//! user's connect to each watcher's `presence` online frame (p50, p99, the last), and from the
//! close to each offline frame (the 5 s debounce included); the stack's CPU over the rounds.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use connect_core::auth::TokenIssuer;

#[derive(clap::Args)]
pub struct PresenceRun {
    #[arg(long, default_value_t = 10_000)]
    watchers: usize,
    /// Watchers per group (with the watched user; the groups' cap is GROUP_MAX_MEMBERS).
    #[arg(long, default_value_t = 5_000)]
    group_size: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Watches in flight while the watchers start.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[command(flatten)]
    stack: connect_bench::client::Stack,
}

/// A watcher saw the user go (online or offline), at this instant.
type Seen = (bool, Instant);

pub async fn run(issuer: &TokenIssuer, run: PresenceRun) -> anyhow::Result<()> {
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let target = format!("pp{tag}t");
    let watchers: Vec<String> = (0..run.watchers).map(|i| format!("pp{tag}w{i}")).collect();
    let gateways: Vec<String> = run.stack.gateways();

    let started = Instant::now();
    for chunk in watchers.chunks(run.group_size.max(1)) {
        let body = serde_json::json!({"name": "presence benchmark", "members": chunk}).to_string();
        let url = format!("http://{}/v1/groups", run.stack.api);
        let (status, created) =
            connect_bench::client::api_request(issuer, &target, "POST", &url, Some(body)).await?;
        if status != 201 {
            bail!("creating a group answered {status}: {created}");
        }
    }
    println!(
        "{} watchers in {} groups with {target}, made in {:.1} s",
        run.watchers,
        run.watchers.div_ceil(run.group_size.max(1)),
        started.elapsed().as_secs_f64()
    );

    // Every watcher connects, watches the user and takes the first answer (offline).
    let started = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel::<Seen>();
    let opened = futures_util::stream::iter(watchers.iter().enumerate())
        .map(|(i, w)| {
            let gateway = gateways[i % gateways.len()].clone();
            let target = target.clone();
            let tx = tx.clone();
            async move {
                let mut ws = connect_bench::client::open(issuer, &gateway, w).await?;
                let watch = serde_json::json!({"type": "watch", "users": [target]});
                ws.send(Message::Text(watch.to_string().into())).await?;
                loop {
                    let Some(Ok(Message::Text(text))) = ws.next().await else {
                        bail!("a watcher's connection closed before its answer");
                    };
                    let f: serde_json::Value = serde_json::from_str(&text)?;
                    match f["type"].as_str() {
                        Some("presence") if f["online"] == false => break,
                        Some("presence") => bail!("the watched user is not offline: {f}"),
                        Some("error") => bail!("watch answered {f}"),
                        _ => {}
                    }
                }
                Ok::<_, anyhow::Error>(tokio::spawn(async move {
                    while let Some(Ok(m)) = ws.next().await {
                        let Message::Text(text) = m else { continue };
                        let now = Instant::now();
                        if let Ok(f) = serde_json::from_str::<serde_json::Value>(&text) {
                            if f["type"] == "presence" {
                                let _ = tx.send((f["online"] == true, now));
                            }
                        }
                    }
                }))
            }
        })
        .buffer_unordered(run.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()
        .context("starting the watchers")?;
    drop(tx);
    println!(
        "{} watchers connected and answered in {:.1} s",
        opened.len(),
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    let usage = connect_bench::procs::Usage::start(&run.stack.pids);
    let measured = Instant::now();
    let mut online = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut offline = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut missed = 0;
    for round in 0..run.rounds {
        let t0 = Instant::now();
        let ws =
            connect_bench::client::open(issuer, &gateways[round % gateways.len()], &target).await?;
        let (got, last) = collect(&mut rx, true, run.watchers, t0, &mut online).await;
        missed += run.watchers - got;
        println!(
            "round {}: online reached {got} of {} watchers; the last after {:.1} ms",
            round + 1,
            run.watchers,
            last.as_secs_f64() * 1000.0
        );
        let t1 = Instant::now();
        drop(ws);
        let (got, last) = collect(&mut rx, false, run.watchers, t1, &mut offline).await;
        missed += run.watchers - got;
        println!(
            "round {}: offline reached {got} of {} watchers; the last {:.1} ms after the close",
            round + 1,
            run.watchers,
            last.as_secs_f64() * 1000.0
        );
    }
    let secs = measured.elapsed().as_secs_f64();
    let usage = usage.stop();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "connect-bench presence: one user watched by {} connections, {} rounds ({} frames missed)",
        run.watchers, run.rounds, missed
    );
    println!(
        "online   connect → watcher  p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms",
        ms(&online, 0.5),
        ms(&online, 0.99),
        online.max() as f64 / 1000.0
    );
    println!(
        "offline  close → watcher    p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms  (the debounce included)",
        ms(&offline, 0.5),
        ms(&offline, 0.99),
        offline.max() as f64 / 1000.0
    );
    usage.print(secs);
    for task in opened {
        task.abort();
    }
    Ok(())
}

/// Takes `watchers` frames saying `online` (others are stale and skipped), or what comes within
/// 30 s: how many came, and after how long the last did.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    online: bool,
    watchers: usize,
    since: Instant,
    into: &mut Histogram<u64>,
) -> (usize, Duration) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (mut got, mut last) = (0, Duration::ZERO);
    while got < watchers {
        let Ok(Some((seen_online, at))) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            break;
        };
        if seen_online != online {
            continue;
        }
        let took = at.saturating_duration_since(since);
        let _ = into.record(took.as_micros().max(1) as u64);
        last = last.max(took);
        got += 1;
    }
    (got, last)
}
