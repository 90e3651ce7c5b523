//! `connect-loadgen`: the benchmark. Drives N pairs of users across the gateways of a running
//! stack at a fixed offered rate (open loop), then prints throughput (accepted and delivered
//! messages/s), latency p50/p95/p99 (send → `accepted`, send → delivery at the peer), and the
//! RSS and CPU time of every process of the stack (from `/proc`, via `.local/pids`).
//!
//! ```text
//! make bench BENCH_ARGS="--pairs 100 --rate 1000 --duration 20"
//! ```

mod soak;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use connect_bench::procs::Usage;
use connect_core::auth::{JwtSecret, TokenIssuer};

#[derive(Parser, Clone)]
#[command(about = "Load generator for Connect Chat (run against `make up` / `make bench`)")]
struct Args {
    /// Pairs of users; each pair has one user on the first gateway and one on the second.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Offered messages per second, in total (half each way).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of warm-up (sent, not measured).
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds to wait for stragglers after sending stops.
    #[arg(long, default_value_t = 5)]
    drain: u64,
    /// Message body size in bytes (at least the timestamp it carries).
    #[arg(long, default_value_t = 100)]
    body: usize,
    #[arg(long, default_value = "127.0.0.1:8080,127.0.0.1:8081")]
    gateways: String,
    /// Only the users on the first gateway send (the offered rate all one way): with
    /// `--gateways 127.0.0.1:8080,127.0.0.1:8180` under `make regions`, send in region a →
    /// delivery in region b.
    #[arg(long)]
    one_way: bool,
    /// Every receiver marks each message it gets as read (a `read` frame per message), as an app
    /// with the conversation open does: receipts go back to the sender.
    #[arg(long)]
    read: bool,
    /// Every user also sends `typing` into its conversation once a second (the peer gets it as
    /// a signal): the cost of typing on the message path.
    #[arg(long)]
    typing: bool,
    /// Every connection also watches this many users (presence) of a pool of `--churners`
    /// who come online and go offline at `--churn-rate` connects a second (each stays 3 s and
    /// is away long enough to be shown offline): the cost of presence on the message path.
    #[arg(long, default_value_t = 0)]
    watch: usize,
    #[arg(long, default_value_t = 500)]
    churners: usize,
    #[arg(long, default_value_t = 50.0)]
    churn_rate: f64,
    /// The HTTP API (`--watch` puts everyone in one group, so they may watch each other).
    #[arg(long, default_value = "127.0.0.1:8090")]
    api: String,
    /// Where the stack keeps its pid files (for RSS and CPU); comma-separated for several
    /// (`make regions`: `.local/pids,.local/region-b/pids,.local/mirrormaker/pids`).
    #[arg(long, default_value = ".local/pids", value_delimiter = ',')]
    pids: Vec<PathBuf>,
    #[arg(long, env = "CONNECT_JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Redis, for its command counts.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6380")]
    redis: String,
    /// The services' ops addresses (`/metrics`), for their backend request counts.
    #[arg(
        long,
        default_value = "127.0.0.1:8080,127.0.0.1:8081,127.0.0.1:8070,127.0.0.1:8071"
    )]
    ops: String,
    /// Seconds between rows of `--csv` (0: no rows): a soak run (`scripts/soak.sh`).
    #[arg(long, default_value_t = 0)]
    sample_secs: u64,
    /// Where the rows go (with `--sample-secs`).
    #[arg(long, default_value = ".local/soak/soak.csv")]
    csv: PathBuf,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

/// What one connection saw inside the measured window.
struct Stats {
    accepted: Histogram<u64>,
    delivered: Histogram<u64>,
    /// Send → `error` answering it (refusals: `rate_limited`, `unavailable`).
    refused: Histogram<u64>,
    sent: u64,
    errors: HashMap<String, u64>,
    /// `typing` signals received.
    typing: u64,
    /// `presence` frames received (the watch's answers included).
    presence: u64,
}

struct Plan {
    base: Instant,
    measure_from: Instant,
    send_until: Instant,
    stop_at: Instant,
}

impl Plan {
    fn us(&self, t: Instant) -> u64 {
        t.duration_since(self.base).as_micros() as u64
    }

    fn measured(&self, sent_us: u64) -> bool {
        sent_us >= self.us(self.measure_from) && sent_us < self.us(self.send_until)
    }
}

/// One load connection: who it is, whom it sends to, and when its ticks fall.
struct Driver {
    url: String,
    token: String,
    peer: String,
    period: Duration,
    offset: Duration,
    body: usize,
    plan: std::sync::Arc<Plan>,
    sends: bool,
    /// Sends a `read` for every message it gets.
    reads: bool,
    /// The conversation to send `typing` into once a second (none: no typing).
    typing: Option<String>,
    /// Users to watch once connected (none: no `watch`).
    watch: Vec<String>,
    /// The soak sampler's current interval, when sampling.
    interval: Option<soak::Shared>,
}

async fn drive(d: Driver) -> anyhow::Result<Stats> {
    let Driver {
        url,
        token,
        peer,
        period,
        offset,
        body,
        plan,
        sends,
        reads,
        typing,
        watch,
        interval,
    } = d;
    let note = |f: &dyn Fn(&mut soak::Interval)| {
        if let Some(i) = &interval {
            f(&mut i.lock().unwrap_or_else(|p| p.into_inner()));
        }
    };
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let mut stats = Stats {
        accepted: hist(),
        delivered: hist(),
        refused: hist(),
        sent: 0,
        errors: HashMap::new(),
        typing: 0,
        presence: 0,
    };
    if !watch.is_empty() {
        let frame = json!({"type":"watch","users":watch}).to_string();
        ws.send(Message::Text(frame.into())).await?;
    }
    let mut typing_tick = tokio::time::interval_at(plan.base + offset, Duration::from_secs(1));
    typing_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut inflight: HashMap<String, u64> = HashMap::new();
    let mut tick = tokio::time::interval_at(plan.base + offset, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let pad = "x".repeat(body.saturating_sub(20));
    let mut k = 0u64;
    // Acks, as a client sends them: the highest seq held, every ACK_EVERY messages and at the end.
    const ACK_EVERY: u64 = 50;
    let (mut held, mut unacked): (Option<(String, u64)>, u64) = (None, 0);
    loop {
        tokio::select! {
            _ = tick.tick(), if sends && Instant::now() < plan.send_until => {
                let now_us = plan.us(Instant::now());
                let id = format!("{k}");
                k += 1;
                let frame = json!({"type":"send","id":id,"to":peer,"body":format!("{now_us} {pad}")}).to_string();
                ws.send(Message::Text(frame.into())).await?;
                inflight.insert(id, now_us);
                if plan.measured(now_us) { stats.sent += 1; note(&|i| i.sent += 1); }
            }
            _ = typing_tick.tick(), if typing.is_some() && Instant::now() < plan.send_until => {
                let frame = json!({"type":"typing","conversation":typing}).to_string();
                ws.send(Message::Text(frame.into())).await?;
            }
            msg = ws.next() => {
                let Some(msg) = msg else { break };
                let Message::Text(text) = msg? else { continue };
                let now_us = plan.us(Instant::now());
                let f: Value = serde_json::from_str(&text)?;
                match f["type"].as_str() {
                    Some("accepted") => {
                        if let Some(t) = f["id"].as_str().and_then(|id| inflight.remove(id)) {
                            if plan.measured(t) {
                                stats.accepted.record(now_us - t)?;
                                note(&|i| { let _ = i.accepted.record(now_us - t); });
                            }
                        }
                    }
                    Some("message") => {
                        if let (Some(c), Some(seq)) = (f["conversation"].as_str(), f["seq"].as_u64()) {
                            if reads {
                                ws.send(Message::Text(json!({"type":"read","conversation":c,"seq":seq}).to_string().into())).await?;
                            }
                            held = Some((c.to_owned(), seq));
                            unacked += 1;
                            if unacked >= ACK_EVERY {
                                unacked = 0;
                                ws.send(Message::Text(json!({"type":"ack","conversation":c,"seq":seq}).to_string().into())).await?;
                            }
                        }
                        let t: Option<u64> = f["body"].as_str().and_then(|b| b.split(' ').next()?.parse().ok());
                        if let Some(t) = t.filter(|t| plan.measured(*t)) {
                            let took = now_us.saturating_sub(t).max(1);
                            stats.delivered.record(took)?;
                            note(&|i| { let _ = i.delivered.record(took); });
                        }
                    }
                    Some("typing") => stats.typing += 1,
                    Some("presence") => stats.presence += 1,
                    Some("error") => {
                        let code = f["code"].as_str().unwrap_or("?").to_owned();
                        *stats.errors.entry(code).or_default() += 1;
                        note(&|i| i.errors += 1);
                        if let Some(t) = f["id"].as_str().and_then(|id| inflight.remove(id)) {
                            if plan.measured(t) { stats.refused.record((now_us - t).max(1))?; }
                        }
                    }
                    _ => {}
                }
            }
            _ = tokio::time::sleep_until(plan.stop_at) => break,
        }
    }
    if let (Some((c, seq)), true) = (held, unacked > 0) {
        ws.send(Message::Text(
            json!({"type":"ack","conversation":c,"seq":seq})
                .to_string()
                .into(),
        ))
        .await?;
    }
    let _ = ws.close(None).await;
    Ok(stats)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let issuer = TokenIssuer::new(&JwtSecret::new(args.secret.clone(), false)?);
    let gateways: Vec<&str> = args.gateways.split(',').collect();
    let run = &uuid_like();
    let conns = args.pairs * 2;
    let senders = if args.one_way { args.pairs } else { conns };
    let period = Duration::from_secs_f64(senders as f64 / args.rate);
    let base = Instant::now() + Duration::from_secs(2);
    let plan = std::sync::Arc::new(Plan {
        base,
        measure_from: base + Duration::from_secs(args.warmup),
        send_until: base + Duration::from_secs(args.warmup + args.duration),
        stop_at: base + Duration::from_secs(args.warmup + args.duration + args.drain),
    });
    println!(
        "connect-loadgen: {} pairs ({} connections), offered {:.0} msg/s, body {} B, warm-up {} s, measured {} s",
        args.pairs, conns, args.rate, args.body, args.warmup, args.duration
    );
    let interval = (args.sample_secs > 0).then(soak::shared);
    let churners: Vec<String> = match args.watch {
        0 => Vec::new(),
        _ => (0..args.churners).map(|k| format!("lg{run}c{k}")).collect(),
    };
    let churning = match args.watch {
        0 => Vec::new(),
        _ => churn(&args, &issuer, run, &churners, &gateways, &plan).await?,
    };
    let mut tasks = Vec::with_capacity(conns);
    for i in 0..args.pairs {
        let (a, b) = (format!("lg{run}a{i}"), format!("lg{run}b{i}"));
        for (j, (me, peer, gw)) in [
            (a.clone(), b.clone(), gateways[0]),
            (b, a, gateways[gateways.len() - 1]),
        ]
        .into_iter()
        .enumerate()
        {
            let offset = if args.one_way {
                period.mul_f64(i as f64 / args.pairs as f64)
            } else {
                period.mul_f64(((2 * i + j) as f64 / conns as f64) % 1.0)
            };
            let token = issuer.mint(&me, 3600);
            let conversation = if me < peer {
                format!("dm:{me}:{peer}")
            } else {
                format!("dm:{peer}:{me}")
            };
            tasks.push(tokio::spawn(drive(Driver {
                url: format!("ws://{gw}/ws"),
                token,
                peer,
                period,
                offset,
                body: args.body,
                plan: plan.clone(),
                sends: j == 0 || !args.one_way,
                reads: args.read,
                typing: args.typing.then_some(conversation),
                watch: (0..args.watch)
                    .map(|k| churners[(i * 2 + j + k * 7) % churners.len().max(1)].clone())
                    .collect(),
                interval: interval.clone(),
            })));
        }
    }
    tokio::time::sleep_until(plan.measure_from).await;
    let sampler = interval.clone().map(|i| {
        tokio::spawn(soak::sample(
            i,
            Duration::from_secs(args.sample_secs),
            plan.send_until.into_std(),
            args.csv.clone(),
            args.pids.clone(),
        ))
    });
    let usage = Usage::start_all(&args.pids);
    let backends = Backends::read(&args).await;
    tokio::time::sleep_until(plan.send_until).await;
    let usage = usage.stop();
    if let Some(sampler) = sampler {
        sampler.await?.context("the soak sampler")?;
        println!(
            "samples every {} s in {}",
            args.sample_secs,
            args.csv.display()
        );
    }
    let backends = Backends::read(&args).await.minus(&backends);

    let (mut accepted, mut delivered, mut refused, mut sent, mut errors) =
        (hist(), hist(), hist(), 0u64, HashMap::<String, u64>::new());
    let (mut typing, mut presence) = (0u64, 0u64);
    for t in tasks {
        let s = t.await?.context("a connection failed")?;
        accepted.add(&s.accepted)?;
        delivered.add(&s.delivered)?;
        refused.add(&s.refused)?;
        sent += s.sent;
        typing += s.typing;
        presence += s.presence;
        for (k, v) in s.errors {
            *errors.entry(k).or_default() += v;
        }
    }
    let secs = args.duration as f64;
    println!(
        "sent        {:>9.0} msg/s ({sent} in the window)",
        sent as f64 / secs
    );
    println!("accepted    {:>9.0} msg/s   p50 {:>7.2} ms  p95 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms", accepted.len() as f64 / secs, ms(&accepted, 0.5), ms(&accepted, 0.95), ms(&accepted, 0.99), accepted.max() as f64 / 1000.0);
    println!("delivered   {:>9.0} msg/s   p50 {:>7.2} ms  p95 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms", delivered.len() as f64 / secs, ms(&delivered, 0.5), ms(&delivered, 0.95), ms(&delivered, 0.99), delivered.max() as f64 / 1000.0);
    println!(
        "lost        {} of {sent} sent in the window were neither delivered nor refused; {} not delivered; errors (whole run): {errors:?}",
        sent.saturating_sub(delivered.len() + refused.len()),
        sent.saturating_sub(delivered.len())
    );
    if args.typing {
        println!("typing      {typing} signals received (whole run)");
    }
    for c in churning {
        c.abort();
    }
    if args.watch > 0 {
        println!(
            "presence    {presence} frames received (whole run); {} churners, {:.0} connects/s, each connection watching {}",
            args.churners, args.churn_rate, args.watch
        );
    }
    if !refused.is_empty() {
        println!("refused     {:>9.0} msg/s   p50 {:>7.2} ms  p95 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms", refused.len() as f64 / secs, ms(&refused, 0.5), ms(&refused, 0.95), ms(&refused, 0.99), refused.max() as f64 / 1000.0);
    }
    backends.print(accepted.len());
    let hot_path_cpu = usage.print(secs);
    if !delivered.is_empty() {
        println!(
            "gateway+messaging CPU per delivered message: {:.1} µs",
            hot_path_cpu * 1e6 / delivered.len() as f64
        );
    }
    Ok(())
}

/// `--watch`: one group of every load user and the churners (so each may watch the others),
/// then the churners' tasks: each connects, stays 3 s, leaves, and comes back once its turn
/// (`churners / churn_rate` s) is up, so connects run at `churn_rate` a second.
async fn churn(
    args: &Args,
    issuer: &TokenIssuer,
    run: &str,
    churners: &[String],
    gateways: &[&str],
    plan: &std::sync::Arc<Plan>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut members: Vec<String> = churners[1..].to_vec();
    for i in 0..args.pairs {
        members.push(format!("lg{run}a{i}"));
        members.push(format!("lg{run}b{i}"));
    }
    let body = json!({"name": "loadgen watch", "members": members}).to_string();
    let url = format!("http://{}/v1/groups", args.api);
    let (status, created) =
        connect_bench::client::api_request(issuer, &churners[0], "POST", &url, Some(body)).await?;
    anyhow::ensure!(
        status == 201,
        "creating the group answered {status}: {created}"
    );
    let cycle = Duration::from_secs_f64(churners.len() as f64 / args.churn_rate);
    let hold = Duration::from_secs(3).min(cycle / 2);
    let mut tasks = Vec::with_capacity(churners.len());
    for (k, user) in churners.iter().enumerate() {
        let url = format!("ws://{}/ws", gateways[k % gateways.len()]);
        let token = issuer.mint(user, 3600);
        let first = plan.base + cycle.mul_f64(k as f64 / churners.len() as f64);
        let until = plan.stop_at;
        tasks.push(tokio::spawn(async move {
            let mut next = first;
            while next < until {
                tokio::time::sleep_until(next).await;
                next += cycle;
                let Ok(mut req) = url.as_str().into_client_request() else {
                    return;
                };
                let Ok(auth) = format!("Bearer {token}").parse() else {
                    return;
                };
                req.headers_mut().insert("authorization", auth);
                let Ok((mut ws, _)) = tokio_tungstenite::connect_async(req).await else {
                    continue;
                };
                let leave = tokio::time::sleep(hold);
                tokio::pin!(leave);
                loop {
                    tokio::select! {
                        () = &mut leave => break,
                        m = ws.next() => if !matches!(m, Some(Ok(_))) { break },
                    }
                }
                let _ = ws.close(None).await;
            }
        }));
    }
    println!(
        "churn: {} users in one group with the load users, {:.0} connects/s (each online {:.1} s of every {:.1} s)",
        churners.len(),
        args.churn_rate,
        hold.as_secs_f64(),
        cycle.as_secs_f64()
    );
    Ok(tasks)
}

/// Backend requests during the measured window: Redis commands (`INFO commandstats`), DynamoDB
/// requests and Kafka records (the services' `/metrics`).
#[derive(Default)]
struct Backends {
    counts: Vec<(String, f64)>,
}

impl Backends {
    async fn read(args: &Args) -> Self {
        let mut counts = Vec::new();
        if let Ok(client) = redis::Client::open(args.redis.as_str()) {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let info: String = redis::cmd("INFO")
                    .arg("commandstats")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                for line in info.lines() {
                    // cmdstat_get:calls=12,usec=…
                    if let Some((cmd, rest)) = line
                        .strip_prefix("cmdstat_")
                        .and_then(|l| l.split_once(':'))
                    {
                        let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="));
                        if let Some(n) = calls.and_then(|n| n.parse::<f64>().ok()) {
                            counts.push((format!("redis {cmd}"), n));
                        }
                    }
                }
            }
        }
        let ops: Vec<String> = args.ops.split(',').map(str::to_owned).collect();
        for (metric, label) in [
            ("connect_dynamodb_requests_total", "dynamodb"),
            ("connect_gateway_sends_total", "kafka records in (incoming)"),
            (
                "connect_messaging_deliveries_out_total",
                "deliveries out (one per target gateway)",
            ),
            (
                "connect_messaging_records_out_total",
                "kafka records out (outgoing)",
            ),
        ] {
            let mut series: HashMap<String, f64> = HashMap::new();
            for addr in &ops {
                for (name, v) in scrape(addr, metric).await {
                    *series.entry(name).or_default() += v;
                }
            }
            for (name, v) in series {
                counts.push((format!("{label} {name}"), v));
            }
        }
        Self { counts }
    }

    fn minus(self, before: &Self) -> Self {
        let old: HashMap<&str, f64> = before
            .counts
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        let mut counts: Vec<(String, f64)> = self
            .counts
            .into_iter()
            .map(|(k, v)| {
                let d = v - old.get(k.as_str()).copied().unwrap_or(0.0);
                (k, d)
            })
            .filter(|(_, d)| *d > 0.0)
            .collect();
        counts.sort_by(|a, b| a.0.cmp(&b.0));
        Self { counts }
    }

    fn print(&self, messages: u64) {
        if messages == 0 {
            return;
        }
        println!("backend requests per accepted message:");
        for (name, n) in &self.counts {
            println!("  {name:<60} {:>8.3}", n / messages as f64);
        }
    }
}

/// The series of `metric` on a service's `/metrics`: (labels, value).
async fn scrape(addr: &str, metric: &str) -> Vec<(String, f64)> {
    use http_body_util::{BodyExt, Empty};
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let Ok(uri) = format!("http://{addr}/metrics").parse::<http::Uri>() else {
        return Vec::new();
    };
    let Ok(res) = client.get(uri).await else {
        return Vec::new();
    };
    let Ok(body) = res.into_body().collect().await else {
        return Vec::new();
    };
    String::from_utf8_lossy(&body.to_bytes())
        .lines()
        .filter(|l| l.starts_with(metric))
        .filter_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            Some((name.trim_start_matches(metric).to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// A short run id so users of different runs never collide.
fn uuid_like() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("{:x}", t % 0xff_ffff)
}
