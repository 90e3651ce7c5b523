//! `connect-bench`: the history and offline-delivery benchmarks against a running stack.
//!
//! ```text
//! connect-bench history --messages 100000 --reads 2000   # 50-message pages via the HTTP API
//! connect-bench drain --queued 1000                       # a device's backlog on reconnect
//! connect-bench group --members 1000 --online 1000 --messages 50 --rate 5     # fan-out latency
//! connect-bench group --members 10000 --online 1000 --messages 300 --rate 20 # mostly offline
//! connect-bench idle --connections 19000 --sources 8                          # idle density
//! connect-bench inbox --conversations 1000 --groups 200 --concurrency 4       # inbox pages
//! connect-bench push --recipients 600 --rate 100                              # push latency
//! connect-bench push --recipients 1000 --rate 1000 [--unregistered]          # push's cost
//! connect-bench presence --watchers 10000 --rounds 3                          # presence fan-out
//! connect-bench dynamo --items 1 --concurrency 8                             # DynamoDB's floor
//! connect-bench step | gateway        # over the memory ports: scripts/bench-instructions.sh
//! ```
//! Both seed their data through the production adapters (DynamoDB chat store, Redis offline
//! store), then measure through the real entry points (the local HTTP API; a WebSocket to a
//! gateway, fed by the event poller and the offline-delivery Lambda).

mod dynamo;
mod gateway;
mod idle;
mod inbox;
mod presence;
mod push;
mod step;
mod storm;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_tungstenite::tungstenite::Message;

use connect_core::auth::{JwtSecret, TokenIssuer};
use connect_core::model::{LogEntry, StoredMessage};
use connect_core::ports::{ChatStore, ConversationLog};
use connect_protocol::{ClientMsgId, ConversationId, UserId};

// The services' allocator, so that instruction counts (`step`, `gateway`) are theirs.
connect_service::jemalloc!();

#[derive(Parser)]
#[command(about = "History and offline-drain benchmarks (run against `make up`)")]
struct Args {
    #[command(subcommand)]
    what: What,
    #[arg(
        long,
        env = "CONNECT_JWT_SECRET",
        hide_env_values = true,
        global = true
    )]
    secret: Option<String>,
}

#[derive(Subcommand)]
enum What {
    /// Page reads of 50 on one long conversation, through the local HTTP API.
    History {
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        #[arg(long, default_value_t = 2000)]
        reads: usize,
        #[arg(long, default_value_t = 200)]
        warmup: usize,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[arg(long, default_value = "127.0.0.1:8090")]
        api: String,
    },
    /// A group of N members, some online across the gateways: send → last delivery, throughput,
    /// and the stack's CPU per group message.
    Group(GroupRun),
    /// N idle authenticated connections to one gateway: its RSS per connection, and after close.
    Idle(idle::IdleRun),
    /// A user in N conversations reads the first page of their inbox, C readers at once.
    Inbox(inbox::InboxRun),
    /// N offline recipients with a registered Web Push device (this benchmark's own push
    /// service): send → decrypted push latency, pushes/s, and the stack's CPU.
    Push(push::PushRun),
    /// One user watched by many connections comes online and goes offline: time until the
    /// last watcher knows.
    Presence(presence::PresenceRun),
    /// N devices with a message waiting connect at once (a gateway died): until every backlog
    /// is in, and the stack's CPU.
    Storm(storm::StormRun),
    /// Messaging's step alone over the memory ports (instructions per message under callgrind).
    Step(step::StepRun),
    /// The gateway over the memory ports, clients in a child process (instructions per message
    /// under callgrind: `scripts/bench-instructions.sh`).
    Gateway(gateway::GatewayRun),
    /// The chat table's writes alone (messaging's store phase): one batch's latency, and the
    /// ceiling in items/s.
    Dynamo(dynamo::DynamoRun),
    /// A user with N messages in a conversation's log connects: how fast do they arrive?
    /// (At most the log's bound, `OFFLINE_LOG_MAX`: older messages are in history.)
    Drain {
        #[arg(long, default_value_t = 1_000)]
        queued: u64,
        #[arg(long, default_value = "127.0.0.1:8081")]
        gateway: String,
        #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6380")]
        redis: String,
    },
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// A GET on the HTTP API as the holder of `token`: the JSON body and the microseconds it took
/// (an error for any status but 2xx).
async fn timed_get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    uri: String,
    token: &str,
) -> anyhow::Result<(serde_json::Value, u64)> {
    let req = http::Request::get(uri)
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::new())?;
    let t = Instant::now();
    let res = client.request(req).await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    let us = t.elapsed().as_micros() as u64;
    if !status.is_success() {
        bail!("{status}: {}", String::from_utf8_lossy(&body));
    }
    Ok((serde_json::from_slice(&body)?, us))
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        std::process::id() as u64 * 1_000_003 + connect_core::now_ms() % 1_000_000
    )
}

async fn history(
    issuer: &TokenIssuer,
    messages: u64,
    reads: usize,
    warmup: usize,
    concurrency: usize,
    api: &str,
) -> anyhow::Result<()> {
    let (alice, bob) = (unique("hista"), unique("histb"));
    let conversation = ConversationId::direct(&UserId::parse(&alice)?, &UserId::parse(&bob)?)?;
    let dynamo = connect_dynamo::client(
        &connect_dynamo::DynamoConfig::from_settings(&connect_bench::settings())
            .map_err(anyhow::Error::msg)?,
    )
    .await;
    let store = connect_dynamo::DynamoChatStore::new(
        dynamo,
        connect_dynamo::Tables::from_settings(&connect_bench::settings()).chat,
        16,
    );
    let t = Instant::now();
    let mut seq = 1;
    while seq <= messages {
        let chunk: Vec<StoredMessage> = (seq..=(seq + 999).min(messages))
            .map(|s| StoredMessage {
                conversation: conversation.clone(),
                seq: s,
                from: UserId::parse(&alice).expect("id"),
                id: ClientMsgId::parse(format!("h{s}")).expect("id"),
                body: format!("history message number {s} with a realistic-ish body of text"),
                ts: 1_763_800_000_000 + s,
                event: None,
                mv: None,
                device: None,
            })
            .collect();
        seq += chunk.len() as u64;
        store.put_batch(&chunk).await?;
    }
    println!(
        "seeded {messages} messages in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let token = issuer.mint(&bob, 3600);
    let total = warmup + reads;
    let per = total.div_ceil(concurrency.max(1));
    let mut tasks = Vec::new();
    let started = Instant::now();
    for w in 0..concurrency.max(1) {
        let (client, token, api, conversation) = (
            client.clone(),
            token.clone(),
            api.to_owned(),
            conversation.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut n = 0usize;
            for i in 0..per {
                // Pages all over the conversation: the latest, and `before` anywhere.
                let k = (w * per + i) as u64;
                let q = if k.is_multiple_of(10) {
                    "limit=50".to_owned()
                } else {
                    format!("before={}&limit=50", 51 + (k * 7919) % (messages - 50))
                };
                let uri = format!("http://{api}/v1/conversations/{conversation}/messages?{q}");
                let (page, us) = timed_get(&client, uri, &token).await?;
                if page["messages"].as_array().map_or(0, Vec::len) != 50 {
                    bail!("short page for {q}");
                }
                if i >= warmup / concurrency.max(1) {
                    h.record(us.max(1))?;
                    n += 1;
                }
            }
            anyhow::Ok((h, n))
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut n = 0;
    for t in tasks {
        let (h, k) = t.await??;
        all.add(&h)?;
        n += k;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "history: {n} measured reads of 50-message pages on a {messages}-message conversation, {concurrency} concurrent: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {:.0} pages/s",
        ms(&all, 0.5), ms(&all, 0.95), ms(&all, 0.99), all.max() as f64 / 1000.0, total as f64 / secs
    );
    Ok(())
}

async fn drain(
    issuer: &TokenIssuer,
    queued: u64,
    gateway: &str,
    redis: &str,
) -> anyhow::Result<()> {
    let (alice, bob) = (unique("draina"), unique("drainb"));
    let direct = ConversationId::direct(&UserId::parse(&alice)?, &UserId::parse(&bob)?)?;
    let conversation = direct.to_string();
    // Written as messaging writes them: the conversation's log, and both users' inboxes.
    let limits = connect_redis::OfflineLimits::from_settings(&connect_bench::settings())
        .map_err(anyhow::Error::msg)?;
    if queued as usize > limits.log_max {
        bail!(
            "--queued {queued} is over the log's bound ({}; OFFLINE_LOG_MAX, the same for the stack)",
            limits.log_max
        );
    }
    let redis_cfg = connect_redis::RedisConfig {
        url: redis.to_owned(),
        ..connect_redis::RedisConfig::from_settings(&connect_bench::settings())?
    };
    let state = connect_redis::connect(&redis_cfg).await?;
    let logs = connect_redis::connect_logs(&state, &redis_cfg).await?;
    let store = connect_redis::RedisLog::new(state, logs, limits);
    let mut seq = 1;
    while seq <= queued {
        let entries: Vec<LogEntry> = (seq..=(seq + 999).min(queued))
            .map(|s| LogEntry {
                conversation: direct.clone(),
                seq: s,
                frame: serde_json::json!({"type":"message","conversation":conversation,"seq":s,"from":alice,"id":format!("o{s}"),"body":"queued while away","ts":1_763_800_000_000u64 + s}).to_string(),
                mv: 0,
                device: None,
            })
            .collect();
        seq += entries.len() as u64;
        store.append(&entries).await?;
    }
    let t = Instant::now();
    let mut ws = open(issuer, gateway, &bob).await?;
    let mut first = None;
    let mut last_seq = 0;
    while last_seq < queued {
        let s = next_message(&mut ws).await?["seq"].as_u64().unwrap_or(0);
        if s != last_seq + 1 {
            bail!("out of order: {s} after {last_seq}");
        }
        last_seq = s;
        first.get_or_insert_with(|| t.elapsed());
    }
    let total = t.elapsed();
    let first = first.unwrap_or_default();
    println!(
        "drain: {queued} queued messages reached the reconnecting user in {:.2} s after connect (first after {:.0} ms): {:.0} messages/s over the drain",
        total.as_secs_f64(),
        first.as_secs_f64() * 1000.0,
        (queued - 1) as f64 / (total - first).as_secs_f64()
    );
    ws.send_ack(&conversation, queued).await?;
    Ok(())
}

#[derive(clap::Args)]
struct GroupRun {
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// Members connected (the first ones), alternating between the gateways.
    #[arg(long, default_value_t = 1000)]
    online: usize,
    #[arg(long, default_value_t = 50)]
    messages: usize,
    /// Group messages offered per second.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Seconds to wait for deliveries after the last send.
    #[arg(long, default_value_t = 5)]
    drain: u64,
    #[command(flatten)]
    stack: connect_bench::client::Stack,
    /// Seconds to wait after connecting the members, before sending: every new connection's
    /// backlog (the offline-delivery function, one `user_connected` partition locally) must be
    /// in before its live messages flow.
    #[arg(long, default_value_t = 10)]
    settle: u64,
    /// Redis, for its memory before and after (the offline state's cost per message).
    #[arg(long, default_value = "redis://127.0.0.1:6380")]
    redis: String,
}

/// Redis `used_memory`, bytes (summed over the nodes of a cluster, which answers `INFO` with
/// one reply per node).
async fn redis_memory(redis: &mut connect_redis::RedisConn) -> anyhow::Result<u64> {
    let used = |info: &str| -> anyhow::Result<u64> {
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .context("no used_memory in INFO")
    };
    match redis::cmd("INFO").arg("memory").query_async(redis).await? {
        redis::Value::Map(nodes) => nodes
            .into_iter()
            .map(|(_, v)| used(&redis::from_redis_value::<String>(v)?))
            .sum(),
        v => used(&redis::from_redis_value::<String>(v)?),
    }
}

/// An offline member comes back: how long until it has every one of `seqs` (group events
/// aside), and whether they came in order.
async fn come_back(
    issuer: &TokenIssuer,
    gateway: &str,
    member: &str,
    seqs: &[u64],
) -> anyhow::Result<()> {
    let mut missing: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
    let t = Instant::now();
    let mut ws = open(issuer, gateway, member).await?;
    let mut got: Vec<u64> = Vec::new();
    let mut first = None;
    while !missing.is_empty() {
        let seq = next_message(&mut ws).await?["seq"].as_u64().unwrap_or(0);
        first.get_or_insert_with(|| t.elapsed());
        missing.remove(&seq);
        got.push(seq);
    }
    let total = t.elapsed();
    let in_order = got.windows(2).all(|w| w[0] < w[1]);
    println!(
        "an offline member back after {} group messages: all of them in {:.2} s after connect (first after {:.0} ms), {} frames, in seq order: {in_order}",
        seqs.len(),
        total.as_secs_f64(),
        first.unwrap_or_default().as_secs_f64() * 1000.0,
        got.len()
    );
    Ok(())
}

/// The next `message` frame (other frames skipped); an error after 30 s without one (pings
/// and other frames do not reset the wait).
async fn next_message(ws: &mut Ws) -> anyhow::Result<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("stalled: no message for 30 s")?
            .context("closed")??;
        let Message::Text(text) = msg else { continue };
        let f: serde_json::Value = serde_json::from_str(&text)?;
        if f["type"] == "message" {
            return Ok(f);
        }
    }
}

use connect_bench::client::{open, Ws};

/// Reads `message` frames (not group events) until `stop`: (seq, arrival) each; acks as it goes.
async fn read_group(
    mut ws: Ws,
    conversation: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<(u64, Instant)>> {
    use futures_util::SinkExt;
    let mut got = Vec::new();
    let mut held = 0;
    loop {
        let msg = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            m = ws.next() => m,
        };
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            // Pings (answered by the library) and anything else that is not a frame.
            Some(Ok(
                Message::Ping(_) | Message::Pong(_) | Message::Binary(_) | Message::Frame(_),
            )) => continue,
            Some(Ok(Message::Close(_)) | Err(_)) | None => break,
        };
        let f: serde_json::Value = serde_json::from_str(&text)?;
        if f["type"] != "message" {
            continue;
        }
        let seq = f["seq"].as_u64().unwrap_or(0);
        held = held.max(seq);
        if f.get("event").is_none() {
            got.push((seq, Instant::now()));
        }
        if got.len() % 100 == 0 {
            let ack = serde_json::json!({"type":"ack","conversation":conversation,"seq":held})
                .to_string();
            ws.send(Message::Text(ack.into())).await?;
        }
    }
    let ack = serde_json::json!({"type":"ack","conversation":conversation,"seq":held}).to_string();
    let _ = ws.send(Message::Text(ack.into())).await;
    let _ = ws.close(None).await;
    Ok(got)
}

async fn group(issuer: &TokenIssuer, run: GroupRun) -> anyhow::Result<()> {
    use futures_util::SinkExt;
    let gateways: Vec<String> = run.stack.gateways();
    let tag = unique("grp");
    let members: Vec<String> = (0..run.members).map(|i| format!("{tag}_{i}")).collect();
    let client: Client<_, http_body_util::Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let body = serde_json::json!({"name": "bench", "members": &members[1..]}).to_string();
    let req = http::Request::post(format!("http://{}/v1/groups", run.stack.api))
        .header(
            "authorization",
            format!("Bearer {}", issuer.mint(&members[0], 3600)),
        )
        .body(http_body_util::Full::new(Bytes::from(body)))?;
    let t = Instant::now();
    let res = client.request(req).await?;
    let status = res.status();
    let created: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await?.to_bytes())?;
    if status != 201 {
        bail!("creating the group: {status} {created}");
    }
    let group_id = created["group"].as_str().unwrap_or_default().to_owned();
    let conversation = format!("group:{group_id}");
    println!(
        "group {group_id} ({}) of {} created in {:.2} s; connecting {} members",
        members[0],
        run.members,
        t.elapsed().as_secs_f64(),
        run.online
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut readers = Vec::new();
    for chunk in members[..run.online.min(run.members)]
        .chunks(50)
        .enumerate()
        .map(|(c, m)| (c * 50, m))
        .collect::<Vec<_>>()
    {
        let (base, names) = chunk;
        let opened = futures_util::future::join_all(
            names
                .iter()
                .enumerate()
                .map(|(i, m)| open(issuer, &gateways[(base + i) % gateways.len()], m)),
        )
        .await;
        for ws in opened {
            readers.push(tokio::spawn(read_group(
                ws?,
                conversation.clone(),
                stop_rx.clone(),
            )));
        }
    }
    // Let the group's own event and the connects settle.
    tokio::time::sleep(Duration::from_secs(run.settle)).await;

    let mut sender = open(issuer, &gateways[0], &members[0]).await?;
    let mut redis = connect_redis::connect(&connect_redis::RedisConfig {
        url: run.redis.to_owned(),
        ..connect_redis::RedisConfig::from_settings(&connect_bench::settings())?
    })
    .await?;
    let redis_before = redis_memory(&mut redis).await?;
    let usage = connect_bench::procs::Usage::start(&run.stack.pids);
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / run.rate.max(0.001));
    let mut sent_at: std::collections::HashMap<String, Instant> = Default::default();
    let mut accepted: Vec<(u64, Instant, Instant)> = Vec::new(); // seq, sent, accepted
    let mut errors = 0;
    let mut tick = tokio::time::interval(period);
    let mut k = 0;
    let deadline = loop {
        tokio::select! {
            _ = tick.tick(), if k < run.messages => {
                let id = format!("b{k}");
                k += 1;
                let frame = serde_json::json!({"type":"send","id":id,"group":group_id,"body":"fan-out benchmark message"}).to_string();
                sender.send(Message::Text(frame.into())).await?;
                sent_at.insert(id, Instant::now());
            }
            m = sender.next() => {
                let text = match m {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => bail!("the sender's connection closed"),
                    Some(Ok(_)) => continue,
                };
                let f: serde_json::Value = serde_json::from_str(&text)?;
                match f["type"].as_str() {
                    Some("accepted") => {
                        if let Some(t) = f["id"].as_str().and_then(|id| sent_at.remove(id)) {
                            accepted.push((f["seq"].as_u64().unwrap_or(0), t, Instant::now()));
                        }
                    }
                    Some("error") => errors += 1,
                    _ => {}
                }
                if accepted.len() + errors >= run.messages {
                    break Instant::now();
                }
            }
        }
    };
    let send_secs = (deadline - started).as_secs_f64();
    tokio::time::sleep(Duration::from_secs(run.drain)).await;
    let usage = usage.stop();
    let _ = stop_tx.send(true);
    let mut arrivals: std::collections::HashMap<u64, Vec<Instant>> = Default::default();
    let mut receivers = 0;
    for r in readers {
        receivers += 1;
        for (seq, at) in r.await?? {
            arrivals.entry(seq).or_default().push(at);
        }
    }
    let mut last = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut each = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut complete = 0;
    let mut deliveries = 0usize;
    for (seq, sent, _) in &accepted {
        let got = arrivals.get(seq).map(Vec::as_slice).unwrap_or_default();
        deliveries += got.len();
        for at in got {
            each.record(at.duration_since(*sent).as_micros().max(1) as u64)?;
        }
        // The sender's own reader connection is among the receivers.
        if got.len() >= receivers {
            complete += 1;
            let max = got.iter().max().copied().unwrap_or(*sent);
            last.record(max.duration_since(*sent).as_micros().max(1) as u64)?;
        }
    }
    println!(
        "{} group messages to {} members ({} online on {} gateways): {} accepted at {:.1} msg/s ({} errors), {} deliveries ({:.0}/s)",
        run.messages, run.members, receivers, gateways.len(), accepted.len(), accepted.len() as f64 / send_secs, errors, deliveries, deliveries as f64 / send_secs
    );
    println!(
        "send → last delivery ({complete} messages reached every online member): p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(&last, 0.5), ms(&last, 0.95), ms(&last, 0.99), last.max() as f64 / 1000.0
    );
    println!(
        "send → each delivery: p50 {:.1} ms, p99 {:.1} ms",
        ms(&each, 0.5),
        ms(&each, 0.99)
    );
    let secs = send_secs + run.drain as f64;
    let hot = usage.print(secs);
    let redis_after = redis_memory(&mut redis).await?;
    if !accepted.is_empty() {
        println!(
            "gateway+messaging CPU per group message: {:.2} ms ({:.1} µs per member)",
            hot * 1e3 / accepted.len() as f64,
            hot * 1e6 / (accepted.len() * (run.members - 1)).max(1) as f64
        );
        println!(
            "Redis used_memory: {:+.1} MiB over the run, {:.0} bytes per group message",
            (redis_after as f64 - redis_before as f64) / 1048576.0,
            (redis_after as f64 - redis_before as f64) / accepted.len() as f64
        );
    }
    if run.online < run.members {
        // The log keeps the newest OFFLINE_LOG_MAX of a conversation (older ones are history).
        let keep = connect_redis::OfflineLimits::from_settings(&connect_bench::settings())
            .map_err(anyhow::Error::msg)?
            .log_max;
        let mut seqs: Vec<u64> = accepted.iter().map(|(seq, _, _)| *seq).collect();
        seqs.sort_unstable();
        let seqs = seqs.split_off(seqs.len().saturating_sub(keep));
        come_back(
            issuer,
            &gateways[1 % gateways.len()],
            &members[run.online],
            &seqs,
        )
        .await?;
    }
    Ok(())
}

trait Ack {
    async fn send_ack(&mut self, conversation: &str, seq: u64) -> anyhow::Result<()>;
}

impl<S> Ack for tokio_tungstenite::WebSocketStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    async fn send_ack(&mut self, conversation: &str, seq: u64) -> anyhow::Result<()> {
        use futures_util::SinkExt;
        let frame =
            serde_json::json!({"type":"ack","conversation":conversation,"seq":seq}).to_string();
        self.send(Message::Text(frame.into())).await?;
        self.close(None).await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let issuer = TokenIssuer::new(&JwtSecret::new(args.secret, false)?);
    match args.what {
        What::History {
            messages,
            reads,
            warmup,
            concurrency,
            api,
        } => history(&issuer, messages, reads, warmup, concurrency, &api).await,
        What::Drain {
            queued,
            gateway,
            redis,
        } => drain(&issuer, queued, &gateway, &redis).await,
        What::Group(run) => group(&issuer, run).await,
        What::Idle(run) => idle::idle(&issuer, run).await,
        What::Inbox(run) => inbox::inbox(&issuer, run).await,
        What::Push(run) => push::run(&issuer, run).await,
        What::Presence(run) => presence::run(&issuer, run).await,
        What::Dynamo(run) => dynamo::run(run).await,
        What::Storm(run) => storm::run(&issuer, run).await,
        What::Step(run) => step::run(run).await,
        What::Gateway(run) => gateway::run(&issuer, run).await,
    }
}
