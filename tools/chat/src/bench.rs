//! `connect-bench`: the history and offline-delivery benchmarks against a running stack.
//!
//! ```text
//! connect-bench history --messages 100000 --reads 2000   # 50-message pages via the HTTP API
//! connect-bench drain --queued 10000                      # offline drain to a reconnecting user
//! ```
//! Both seed their data through the production adapters (DynamoDB chat store, Redis offline
//! store), then measure through the real entry points (the local HTTP API; a WebSocket to a
//! gateway, fed by the event poller and the offline-delivery Lambda).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use connect_core::auth::{JwtSecret, TokenIssuer};
use connect_core::model::{OfflineEntry, StoredMessage};
use connect_core::ports::{ChatStore, OfflineStore};
use connect_protocol::{ClientMsgId, ConversationId, UserId};

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
    /// A user with N queued messages connects: how fast do they arrive?
    Drain {
        #[arg(long, default_value_t = 10_000)]
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
        &connect_dynamo::DynamoConfig::from_env().map_err(anyhow::Error::msg)?,
    )
    .await;
    let store =
        connect_dynamo::DynamoChatStore::new(dynamo, connect_dynamo::Tables::from_env().chat, 16);
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
                let page: serde_json::Value = serde_json::from_slice(&body)?;
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
    let conversation =
        ConversationId::direct(&UserId::parse(&alice)?, &UserId::parse(&bob)?)?.to_string();
    let store = connect_redis::RedisOffline::new(
        connect_redis::connect(redis).await?,
        connect_redis::OfflineLimits::from_env().map_err(anyhow::Error::msg)?,
    );
    let bob_id = UserId::parse(&bob)?;
    let mut seq = 1;
    while seq <= queued {
        let entries: Vec<OfflineEntry> = (seq..=(seq + 999).min(queued))
            .map(|s| OfflineEntry {
                user: bob_id.clone(),
                conversation: conversation.clone(),
                seq: s,
                frame: serde_json::json!({"type":"message","conversation":conversation,"seq":s,"from":alice,"id":format!("o{s}"),"body":"queued while away","ts":1_763_800_000_000u64 + s}).to_string(),
            })
            .collect();
        seq += entries.len() as u64;
        store.append(&entries).await?;
    }
    let mut req = format!("ws://{gateway}/ws").into_client_request()?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", issuer.mint(&bob, 3600)).parse()?,
    );
    let t = Instant::now();
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let mut first = None;
    let mut got = 0u64;
    let mut last_seq = 0;
    while got < queued {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("stalled")?
            .context("closed")??;
        let Message::Text(text) = msg else { continue };
        let f: serde_json::Value = serde_json::from_str(&text)?;
        if f["type"] == "message" {
            let s = f["seq"].as_u64().unwrap_or(0);
            if s != last_seq + 1 {
                bail!("out of order: {s} after {last_seq}");
            }
            last_seq = s;
            got += 1;
            first.get_or_insert_with(|| t.elapsed());
        }
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
    }
}
