//! `connect-bench push`: N offline recipients, each with a device registered for Web Push whose
//! endpoint is this benchmark's own push service (127.0.0.1, as the local stack allows); senders
//! send to them round-robin at a fixed rate. The benchmark's push service decrypts every push
//! (RFC 8291, with the keys it subscribed with) and reads the send time the body carries:
//! accepted → decrypted latency, pushes per second, and the stack's CPU. `--unregistered` sends
//! the same to recipients with nothing registered: the message path's cost of push, side by side.
//! `--group` puts everyone in one group instead (the senders, the registered offline
//! recipients, and `--online` members connected and reading): every message is a push to each
//! recipient, collapsed to one per device per 5 s window, the newest of a window sent when it
//! closes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;
use web_push_native::p256;

use connect_core::auth::TokenIssuer;

#[derive(clap::Args)]
pub struct PushRun {
    /// Offline recipients, each with one registered device (`--unregistered`: none).
    #[arg(long, default_value_t = 500)]
    recipients: usize,
    #[arg(long, default_value_t = 10)]
    senders: usize,
    /// Messages per second, all senders together.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Seconds to wait after the last send (pushes held back by their 5 s window come then).
    #[arg(long, default_value_t = 7)]
    drain: u64,
    /// Register nothing: the same messages, no push.
    #[arg(long)]
    unregistered: bool,
    /// One group of everyone: each message goes to the group.
    #[arg(long)]
    group: bool,
    /// With `--group`: members connected (and reading) besides the offline recipients.
    #[arg(long, default_value_t = 0)]
    online: usize,
    /// This benchmark's push service.
    #[arg(long, default_value = "127.0.0.1:8097")]
    listen: String,
    #[command(flatten)]
    stack: connect_bench::client::Stack,
}

/// One recipient's subscription keys (the user agent's side).
struct Keys {
    secret: p256::SecretKey,
    auth: web_push_native::Auth,
}

struct Received {
    /// Send → decrypted here, µs, for pushes of messages sent in the measured window.
    latency: Histogram<u64>,
    pushes: u64,
    undecryptable: u64,
    measure_from_us: u64,
    measure_to_us: u64,
}

struct Service {
    keys: Vec<Keys>,
    base: Instant,
    received: Mutex<Received>,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(16) {
        let id = uuid::Uuid::new_v4();
        chunk.copy_from_slice(&id.as_bytes()[..chunk.len()]);
    }
    out
}

async fn receive(
    State(service): State<Arc<Service>>,
    Path(i): Path<usize>,
    body: axum::body::Bytes,
) -> StatusCode {
    let now_us = service.base.elapsed().as_micros() as u64;
    let Some(keys) = service.keys.get(i) else {
        return StatusCode::NOT_FOUND;
    };
    let mut r = service.received.lock().unwrap_or_else(|p| p.into_inner());
    let payload = web_push_native::decrypt(body.to_vec(), &keys.secret, &keys.auth)
        .ok()
        .and_then(|plain| serde_json::from_slice::<serde_json::Value>(&plain).ok());
    let Some(payload) = payload else {
        r.undecryptable += 1;
        return StatusCode::CREATED;
    };
    r.pushes += 1;
    let sent_us: Option<u64> = payload["preview"]
        .as_str()
        .and_then(|p| p.split(' ').next()?.parse().ok());
    if let Some(t) = sent_us.filter(|t| *t >= r.measure_from_us && *t < r.measure_to_us) {
        let _ = r.latency.record(now_us.saturating_sub(t).max(1));
    }
    StatusCode::CREATED
}

async fn register(
    issuer: &TokenIssuer,
    api: &str,
    user: &str,
    endpoint: &str,
    keys: &Keys,
) -> anyhow::Result<()> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let body = serde_json::json!({
        "kind": "webpush",
        "endpoint": endpoint,
        "keys": {
            "p256dh": b64.encode(keys.secret.public_key().to_encoded_point(false).as_bytes()),
            "auth": b64.encode(keys.auth),
        },
    })
    .to_string();
    let url = format!("http://{api}/v1/devices/phone/push");
    let (status, answer) =
        connect_bench::client::api_request(issuer, user, "PUT", &url, Some(body)).await?;
    if status != 204 {
        bail!("registering answered {status}: {answer}");
    }
    Ok(())
}

pub async fn run(issuer: &TokenIssuer, run: PushRun) -> anyhow::Result<()> {
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let base = Instant::now();
    let keys: Vec<Keys> = (0..run.recipients)
        .map(|_| Keys {
            secret: p256::SecretKey::from_slice(&random_bytes::<32>()).expect("a scalar"),
            auth: web_push_native::Auth::from(random_bytes::<16>()),
        })
        .collect();
    let recipients: Vec<String> = (0..run.recipients)
        .map(|i| format!("pb{tag}r{i}"))
        .collect();
    let service = Arc::new(Service {
        keys,
        base,
        received: Mutex::new(Received {
            latency: Histogram::new_with_bounds(1, 600_000_000, 3)?,
            pushes: 0,
            undecryptable: 0,
            measure_from_us: u64::MAX,
            measure_to_us: u64::MAX,
        }),
    });
    let app = axum::Router::new()
        .route("/p/{i}", axum::routing::post(receive))
        .with_state(service.clone());
    let listener = tokio::net::TcpListener::bind(&run.listen)
        .await
        .with_context(|| format!("binding {}", run.listen))?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    if !run.unregistered {
        let started = Instant::now();
        futures_util::stream::iter(recipients.iter().enumerate())
            .map(|(i, user)| {
                let endpoint = format!("http://{}/p/{i}", run.listen);
                let service = service.clone();
                let api = run.stack.api.clone();
                async move { register(issuer, &api, user, &endpoint, &service.keys[i]).await }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<Vec<()>>>()?;
        println!(
            "registered {} devices in {:.1} s",
            run.recipients,
            started.elapsed().as_secs_f64()
        );
    }
    let gateways: Vec<String> = run.stack.gateways();
    let (group, readers) = match run.group {
        true => {
            let (group, readers) = group_of(issuer, &run, &tag, &recipients, &gateways).await?;
            (Some(group), readers)
        }
        false => (None, Vec::new()),
    };
    let period = Duration::from_secs_f64(run.senders as f64 / run.rate);
    let start = tokio::time::Instant::now() + Duration::from_secs(1);
    let measure_from = start + Duration::from_secs(run.warmup);
    let send_until = measure_from + Duration::from_secs(run.duration);
    {
        let mut r = service.received.lock().unwrap_or_else(|p| p.into_inner());
        r.measure_from_us = (measure_from.into_std() - base).as_micros() as u64;
        r.measure_to_us = (send_until.into_std() - base).as_micros() as u64;
    }
    let recipients = Arc::new(recipients);
    let mut tasks = Vec::new();
    for s in 0..run.senders {
        let me = format!("pb{tag}s{s}");
        let gateway = gateways[s % gateways.len()].clone();
        let ws = connect_bench::client::open(issuer, &gateway, &me).await?;
        let recipients = recipients.clone();
        let senders = run.senders;
        let group = group.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = ws;
            let mut accepted = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            let mut tick = tokio::time::interval_at(
                start + period.mul_f64(s as f64 / senders as f64),
                period,
            );
            let mut inflight = std::collections::HashMap::new();
            let (mut k, mut sent) = (0usize, 0u64);
            let stop = send_until + Duration::from_secs(2);
            loop {
                tokio::select! {
                    _ = tick.tick(), if tokio::time::Instant::now() < send_until => {
                        let now = tokio::time::Instant::now();
                        let now_us = (now.into_std() - base).as_micros() as u64;
                        let to = &recipients[(k * senders + s) % recipients.len()];
                        let id = format!("{k}");
                        k += 1;
                        let body = format!("{now_us} push benchmark");
                        let frame = match &group {
                            Some(g) => serde_json::json!({"type":"send","id":id,"group":g,"body":body}),
                            None => serde_json::json!({"type":"send","id":id,"to":to,"body":body}),
                        };
                        ws.send(Message::Text(frame.to_string().into())).await?;
                        if now >= measure_from {
                            inflight.insert(id, now);
                            sent += 1;
                        }
                    }
                    m = ws.next() => {
                        let text = match m {
                            Some(Ok(Message::Text(text))) => text,
                            Some(Ok(Message::Close(_)) | Err(_)) | None => bail!("a sender's connection closed"),
                            Some(Ok(_)) => continue,
                        };
                        let f: serde_json::Value = serde_json::from_str(&text)?;
                        if f["type"] == "accepted" {
                            if let Some(t) = f["id"].as_str().and_then(|id| inflight.remove(id)) {
                                accepted.record(t.elapsed().as_micros().max(1) as u64)?;
                            }
                        }
                    }
                    _ = tokio::time::sleep_until(stop) => break,
                }
            }
            Ok::<_, anyhow::Error>((accepted, sent))
        }));
    }
    tokio::time::sleep_until(measure_from).await;
    let usage = connect_bench::procs::Usage::start(&run.stack.pids);
    let (pushes_before, _) = {
        let r = service.received.lock().unwrap_or_else(|p| p.into_inner());
        (r.pushes, ())
    };
    tokio::time::sleep_until(send_until).await;
    let usage = usage.stop();
    let pushes_in_window = service
        .received
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pushes
        - pushes_before;
    let mut accepted = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut sent = 0;
    for t in tasks {
        let (h, n) = t.await??;
        accepted.add(&h)?;
        sent += n;
    }
    tokio::time::sleep(Duration::from_secs(run.drain)).await;
    for reader in readers {
        reader.abort();
    }
    let r = service.received.lock().unwrap_or_else(|p| p.into_inner());
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let secs = run.duration as f64;
    println!(
        "connect-bench push: {} recipients ({}{}), {} senders, offered {:.0} msg/s, measured {} s",
        run.recipients,
        if run.unregistered {
            "nothing registered"
        } else {
            "each with one registered device, offline"
        },
        match run.group {
            true => format!(
                "; one group of {} with {} members online",
                run.recipients + run.online + run.senders,
                run.online
            ),
            false => String::new(),
        },
        run.senders,
        run.rate,
        run.duration
    );
    println!(
        "accepted  {:.0} msg/s   p50 {:>8.2} ms  p99 {:>8.2} ms",
        sent as f64 / secs,
        ms(&accepted, 0.5),
        ms(&accepted, 0.99)
    );
    println!(
        "pushes    {:.1}/s in the window ({} in all, {} undecryptable); send → decrypted p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  (n={})",
        pushes_in_window as f64 / secs,
        r.pushes,
        r.undecryptable,
        ms(&r.latency, 0.5),
        ms(&r.latency, 0.95),
        ms(&r.latency, 0.99),
        r.latency.len()
    );
    let hot = usage.print(secs);
    println!(
        "gateway+messaging CPU per accepted message: {:.1} µs",
        hot / sent.max(1) as f64 * 1e6
    );
    Ok(())
}

/// `--group`: one group of the senders (the first owns it), the recipients and `--online`
/// members, who connect and read everything; its id and the readers.
async fn group_of(
    issuer: &TokenIssuer,
    run: &PushRun,
    tag: &str,
    recipients: &[String],
    gateways: &[String],
) -> anyhow::Result<(String, Vec<tokio::task::JoinHandle<()>>)> {
    let owner = format!("pb{tag}s0");
    let online: Vec<String> = (0..run.online).map(|i| format!("pb{tag}o{i}")).collect();
    let mut members: Vec<String> = (1..run.senders).map(|s| format!("pb{tag}s{s}")).collect();
    members.extend(recipients.iter().cloned());
    members.extend(online.iter().cloned());
    let body = serde_json::json!({"name": "push benchmark", "members": members}).to_string();
    let url = format!("http://{}/v1/groups", run.stack.api);
    let started = Instant::now();
    let (status, created) =
        connect_bench::client::api_request(issuer, &owner, "POST", &url, Some(body)).await?;
    if status != 201 {
        bail!("creating the group answered {status}: {created}");
    }
    let group = created["group"].as_str().context("no group id")?.to_owned();
    let mut readers = Vec::new();
    for (i, user) in online.iter().enumerate() {
        let mut ws =
            connect_bench::client::open(issuer, &gateways[i % gateways.len()], user).await?;
        readers.push(tokio::spawn(async move {
            while let Some(Ok(_)) = ws.next().await {}
        }));
    }
    println!(
        "group {group} of {} members made in {:.1} s; {} online",
        members.len() + 1,
        started.elapsed().as_secs_f64(),
        online.len()
    );
    // The group's own event and the connects settle before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok((group, readers))
}
