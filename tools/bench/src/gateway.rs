//! `connect-bench gateway`: the gateway's own work per message, over the memory ports.
//!
//! One process runs the real gateway (its router, connection loop, hub and the slot consumer's
//! hand-over) with its backends in memory, and messaging's step as the only other part: a send
//! goes through the connection loop onto the submission bus (encoded as the Kafka bus encodes
//! it), the step sequences it, its deliveries are encoded as `outgoing_messages` records and
//! handed over as the slot's consumer hands them, and the frames are written to the sockets.
//! The clients (pairs of users; each sends to its peer one message at a time and acks every
//! message it gets) run in a child process of their own, so that under callgrind (which does
//! not follow children) every instruction counted is this process's: the gateway's, and the
//! step's in [`messaging`], whose inclusive cost `scripts/bench-instructions.sh` subtracts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio_tungstenite::tungstenite::Message;

use connect_core::auth::TokenIssuer;
use connect_core::memory::Memory;
use connect_core::messaging::MessagingStep;
use connect_core::model::{MarkerUpdate, Submission, TypingUpdate};
use connect_core::ports::{PendingPublish, SubmissionBus};
use connect_core::PortError;
use connect_gateway::state::{Gateway, GatewayPorts};
use connect_kafka::codec::{
    batch_headers, decode_submission, delivery_records, encode_submission, RECORD_MAX_BYTES_DEFAULT,
};

#[derive(clap::Args)]
pub struct GatewayRun {
    /// Messages in all (each: a send, its `accepted`, the peer's `message` and its ack).
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Pairs of users, each user on a connection of its own.
    #[arg(long, default_value_t = 20)]
    pairs: usize,
    /// The clients only, against the gateway at this address (the harness starts them so).
    #[arg(long, hide = true)]
    clients_of: Option<String>,
}

/// The gateway's settings in the harness: a local stack's, with the per-connection and per-user
/// rates out of the way (the clients send as fast as they are answered) and a short catch-up
/// wait (no offline drain runs here to end it sooner).
const SETTINGS: &[(&str, &str)] = &[
    ("CONNECT_ENV", "local"),
    ("GATEWAY_ADDR", "127.0.0.1:0"),
    ("GATEWAY_CATCH_UP_TIMEOUT_MS", "100"),
    ("GATEWAY_SEND_RATE", "1000000000"),
    ("GATEWAY_SEND_BURST", "1000000000"),
    ("GATEWAY_FRAME_RATE", "1000000000"),
    ("GATEWAY_FRAME_BURST", "1000000000"),
    ("GATEWAY_USER_SEND_RATE", "1000000000"),
    ("GATEWAY_USER_SEND_BURST", "1000000000"),
    ("GATEWAY_USER_FRAME_RATE", "1000000000"),
    ("GATEWAY_USER_FRAME_BURST", "1000000000"),
];

pub async fn run(issuer: &TokenIssuer, run: GatewayRun) -> anyhow::Result<()> {
    let pairs = run.pairs.max(1);
    let each = run.messages.div_ceil(2 * pairs).max(1);
    if let Some(addr) = run.clients_of {
        return clients(issuer, &addr, pairs, each).await;
    }
    let settings = connect_bench::settings().with(SETTINGS.iter().copied());
    // As in production: the metrics recorder installed, so that its costs count.
    let _metrics = connect_service::telemetry::install_metrics()?;
    let cfg = connect_gateway::config::Config::from_settings(&settings)?;
    let mem = Arc::new(Memory::default());
    let (incoming, sends) = mpsc::unbounded_channel();
    let ports = GatewayPorts::in_memory(mem.clone(), Arc::new(Incoming(incoming)));
    let (tracker, _drained) = mpsc::channel(1);
    let gw = Arc::new(Gateway::new(cfg, 0, ports, tracker));
    let (records, outgoing) = mpsc::unbounded_channel();
    tokio::spawn(messaging(MessagingStep::new(mem.ports()), sends, records));
    tokio::spawn(slot_consumer(gw.clone(), outgoing));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = connect_gateway::server::public_router(gw.clone())
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let started = Instant::now();
    let status = tokio::process::Command::new(std::env::current_exe()?)
        .args(["gateway", "--clients-of", &addr.to_string()])
        .args(["--pairs", &pairs.to_string()])
        .args(["--messages", &run.messages.to_string()])
        .kill_on_drop(true)
        .status()
        .await
        .context("starting the clients")?;
    if !status.success() {
        bail!("the clients failed ({status})");
    }
    let secs = started.elapsed().as_secs_f64();
    let messages = each * 2 * pairs;
    println!(
        "gateway: {messages} messages over {} connections (send, accepted, message, ack) through the gateway and messaging's step over the memory ports: {:.0} messages/s",
        2 * pairs,
        messages as f64 / secs
    );
    Ok(())
}

/// The submission bus: each send encoded as the Kafka bus encodes it, for [`messaging`].
struct Incoming(UnboundedSender<Vec<u8>>);

impl Incoming {
    fn settled(result: Result<(), PortError>) -> PendingPublish {
        Box::pin(async move { result })
    }
}

impl SubmissionBus for Incoming {
    fn submit(&self, submission: &Submission) -> PendingPublish {
        Self::settled(
            self.0
                .send(encode_submission(submission))
                .map_err(|_| PortError::unavailable("harness", "messaging stopped")),
        )
    }

    fn mark(&self, _: &MarkerUpdate) -> PendingPublish {
        Self::settled(Ok(()))
    }

    fn typing(&self, _: &TypingUpdate) -> PendingPublish {
        Self::settled(Ok(()))
    }
}

/// Messaging in the harness: batches of what was sent, decoded, through the step, and its
/// deliveries encoded as records of `outgoing_messages`. Not the gateway's work: the
/// instruction count subtracts this function's inclusive cost.
#[inline(never)]
async fn messaging(
    step: MessagingStep,
    mut sends: UnboundedReceiver<Vec<u8>>,
    records: UnboundedSender<Vec<u8>>,
) {
    let mut payloads = Vec::new();
    while sends.recv_many(&mut payloads, 500).await > 0 {
        let batch: Vec<Submission> = payloads
            .drain(..)
            .filter_map(|p| decode_submission(&p).ok())
            .collect();
        let prepared = step.prepare(batch, connect_core::now_ms()).await;
        for (_, record) in delivery_records(&prepared.deliveries, RECORD_MAX_BYTES_DEFAULT) {
            if records.send(record).is_err() {
                return;
            }
        }
    }
}

/// The slot's consumer in the harness: each record handed over as `delivery::run` hands it.
async fn slot_consumer(gw: Arc<Gateway>, mut records: UnboundedReceiver<Vec<u8>>) {
    let headers = batch_headers();
    while let Some(value) = records.recv().await {
        connect_gateway::delivery::hand_over(&gw, Some(&headers), Some(&value), |e| {
            eprintln!("a delivery the gateway could not decode: {e}");
        });
    }
}

/// The clients: `pairs` pairs of users, each connection sending `each` messages to its peer,
/// one at a time (the next after the `accepted`), and acking every message it gets.
async fn clients(
    issuer: &TokenIssuer,
    addr: &str,
    pairs: usize,
    each: usize,
) -> anyhow::Result<()> {
    let mut conns = Vec::with_capacity(2 * pairs);
    for i in 0..pairs {
        for (me, peer) in [
            (format!("a{i}"), format!("b{i}")),
            (format!("b{i}"), format!("a{i}")),
        ] {
            let mut ws = connect_bench::client::open(issuer, addr, &me).await?;
            // Reachable once the `hello` is read.
            loop {
                if frame_of(&mut ws).await?["type"] == "hello" {
                    break;
                }
            }
            conns.push((ws, peer));
        }
    }
    // Past the catch-up wait: deliveries go straight out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let talks: Vec<_> = conns
        .into_iter()
        .map(|(ws, peer)| tokio::spawn(converse(ws, peer, each)))
        .collect();
    for talk in futures_util::future::join_all(talks).await {
        talk??;
    }
    Ok(())
}

async fn frame_of(ws: &mut connect_bench::client::Ws) -> anyhow::Result<Value> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .context("no frame in 120 s")?
            .context("the gateway closed the connection")??;
        if let Message::Text(text) = msg {
            return Ok(serde_json::from_str(&text)?);
        }
    }
}

async fn converse(
    mut ws: connect_bench::client::Ws,
    peer: String,
    each: usize,
) -> anyhow::Result<()> {
    let send = |n: usize| {
        json!({"type": "send", "to": peer, "id": format!("m{n}"),
               "body": "a message of a realistic length, some forty bytes"})
        .to_string()
    };
    ws.send(Message::Text(send(0).into())).await?;
    let (mut sent, mut accepted, mut got) = (1, 0, 0);
    while accepted < each || got < each {
        let frame = frame_of(&mut ws).await?;
        match frame["type"].as_str() {
            Some("accepted") => {
                accepted += 1;
                if sent < each {
                    ws.send(Message::Text(send(sent).into())).await?;
                    sent += 1;
                }
            }
            Some("message") => {
                got += 1;
                let ack = json!({"type": "ack", "conversation": frame["conversation"],
                                 "seq": frame["seq"]});
                ws.send(Message::Text(ack.to_string().into())).await?;
            }
            Some("error") => bail!("the gateway refused: {frame}"),
            _ => {}
        }
    }
    ws.close(None).await?;
    Ok(())
}
