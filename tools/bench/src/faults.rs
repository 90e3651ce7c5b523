//! `connect-faults`: a steady stream of direct and group messages across both gateways while a
//! fault is injected, then a check of what the system promised.
//!
//! ```text
//! connect-faults --name kill-messaging --fault "scripts/stack.sh fault kill-messaging"
//! ```
//!
//! Clients behave as PROTOCOL.md asks of them: a sender retries a send that got `unavailable`
//! or `rate_limited`, or no answer, with the same id, and resends what is unanswered after it
//! reconnects (to the other gateway when one is gone); a receiver marks as read the run of seqs
//! it holds from the first (never past a message it missed; a `read` also acks for its device)
//! and, after a lost connection, reconnects and takes its backlog. When the stream stops and
//! every send is answered, each receiver connects once more, says again how far it has read,
//! and takes what it has not acked.
//!
//! The check, per run: every accepted message is in history exactly once with the seq its
//! `accepted` gave, and reached every recipient (live or on reconnect); no id is answered with
//! two different seqs; nothing arrives that was never sent. Repeats of a `(conversation, seq)`
//! are allowed (at-least-once delivery) and counted. Every receiver's read marker (the receipts
//! route, from DynamoDB) reaches what it last said it read: a read survives the fault. The
//! report is one JSON line (appended to
//! `--report` too); the exit status is 1 when anything was lost or duplicated.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use connect_bench::client::{api_request, open, Ws};
use connect_core::auth::{JwtSecret, TokenIssuer};

#[derive(Parser, Clone)]
#[command(
    about = "A message stream through a fault, then a check: nothing accepted lost, nothing stored twice"
)]
struct Args {
    /// A name for the run (the report's `fault`).
    #[arg(long, default_value = "none")]
    name: String,
    /// A shell command that injects the fault (and recovers from it); run once the stream has
    /// flowed for `--before` seconds.
    #[arg(long)]
    fault: Option<String>,
    /// Pairs of users sending direct messages, half from each gateway to the other.
    #[arg(long, default_value_t = 8)]
    pairs: usize,
    /// Members of the one group (spread over the gateways); its first member sends into it.
    #[arg(long, default_value_t = 4)]
    group_members: usize,
    /// Messages per second, in total.
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// Seconds of stream before the fault.
    #[arg(long, default_value_t = 8)]
    before: u64,
    /// Seconds of stream after the fault command returns.
    #[arg(long, default_value_t = 15)]
    after: u64,
    /// Seconds to wait, after the stream stops, for every send to be answered.
    #[arg(long, default_value_t = 90)]
    settle: u64,
    #[arg(long, default_value = "127.0.0.1:8080,127.0.0.1:8081")]
    gateways: String,
    /// The HTTP API (history, groups).
    #[arg(long, default_value = "127.0.0.1:8090")]
    api: String,
    /// Appends the JSON report line to this file.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    #[arg(long, env = "CONNECT_JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
}

/// A send and what it is for.
#[derive(Clone)]
struct Outgoing {
    id: String,
    /// `("to", user)` or `("group", group id)`.
    target: (&'static str, String),
    /// Who must receive it.
    recipients: Vec<String>,
}

/// What one sender saw.
#[derive(Default)]
struct SenderLog {
    sent: Vec<Outgoing>,
    /// id → (conversation, seq) of each `accepted` (every one, repeats included).
    accepted: Vec<(String, String, u64)>,
    unavailable: usize,
    rate_limited: usize,
    other_errors: Vec<String>,
    resends: usize,
    reconnects: usize,
    /// Ids never answered with `accepted` by the end of the settle time.
    unanswered: Vec<String>,
}

/// What one receiver saw: (conversation, seq, id, from) of every `message`, in arrival order.
#[derive(Default)]
struct ReceiverLog {
    user: String,
    got: Vec<(String, u64, String, String)>,
    reconnects: usize,
    /// Per conversation, the furthest `read` it sent.
    read: BTreeMap<String, u64>,
}

type Shared<T> = Arc<Mutex<T>>;

/// Connects `user` to the first gateway that takes it, starting at `first`; returns the socket
/// (its `hello` read) and the index of the gateway.
async fn connect(
    issuer: &TokenIssuer,
    gateways: &[String],
    first: usize,
    user: &str,
    give_up: Instant,
) -> anyhow::Result<(Ws, usize)> {
    let mut backoff = Duration::from_millis(100);
    let mut at = first;
    loop {
        let gw = &gateways[at % gateways.len()];
        if let Ok(Ok(mut ws)) =
            tokio::time::timeout(Duration::from_secs(5), open(issuer, gw, user)).await
        {
            if let Ok(Some(Ok(Message::Text(t)))) =
                tokio::time::timeout(Duration::from_secs(5), ws.next()).await
            {
                if t.contains("\"hello\"") {
                    return Ok((ws, at % gateways.len()));
                }
            }
        }
        if Instant::now() > give_up {
            bail!("{user}: no gateway took the connection");
        }
        at += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Resolves once `stop` says so (the guard is not held across an await).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn text(v: Value) -> Message {
    Message::Text(v.to_string().into())
}

/// Sends `plan` at `every`, answering to its own frames as a client does, until `stop`; then
/// waits for every send to be answered, up to `settle`.
#[allow(clippy::too_many_arguments)]
async fn sender(
    issuer: TokenIssuer,
    gateways: Vec<String>,
    first: usize,
    user: String,
    plan: Vec<Outgoing>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    settle: Duration,
    log: Shared<SenderLog>,
) -> anyhow::Result<()> {
    let resend_after = Duration::from_secs(5);
    let far = Instant::now() + Duration::from_secs(3600);
    let (mut ws, mut at) = connect(&issuer, &gateways, first, &user, far).await?;
    let mut plan = plan.into_iter();
    // id → (the send, when it goes again unless answered, refusals so far).
    let mut pending: HashMap<String, (Outgoing, Instant, u32)> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    // A stalled sender does not make up for lost time in a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut check = tokio::time::interval(Duration::from_millis(250));
    let mut stopping: Option<Instant> = None;
    let frame_of = |o: &Outgoing| {
        let (field, target) = &o.target;
        let mut v = json!({"type":"send","id":o.id,"body":format!("body of {}", o.id)});
        v[*field] = json!(target);
        v
    };
    loop {
        if let Some(since) = stopping {
            if pending.is_empty() {
                break;
            }
            if since.elapsed() > settle {
                log.lock().unwrap().unanswered = pending.keys().cloned().collect();
                break;
            }
        }
        let mut resend: Vec<Outgoing> = Vec::new();
        let mut lost_connection = false;
        tokio::select! {
            () = stopped(&mut stop), if stopping.is_none() => {
                stopping = Some(Instant::now());
            }
            _ = tick.tick(), if stopping.is_none() => {
                match plan.next() {
                    Some(o) => {
                        log.lock().unwrap().sent.push(o.clone());
                        lost_connection = ws.send(text(frame_of(&o))).await.is_err();
                        pending.insert(o.id.clone(), (o, Instant::now() + resend_after, 0));
                    }
                    None => stopping = Some(Instant::now()),
                }
            }
            _ = check.tick() => {
                let now = Instant::now();
                for (o, due, _) in pending.values_mut() {
                    if *due <= now {
                        resend.push(o.clone());
                        *due = now + resend_after;
                    }
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let f: Value = serde_json::from_str(&t)?;
                    let id = f["id"].as_str().unwrap_or_default().to_owned();
                    match (f["type"].as_str(), f["code"].as_str()) {
                        (Some("accepted"), _) => {
                            pending.remove(&id);
                            let conversation = f["conversation"].as_str().unwrap_or_default().to_owned();
                            let seq = f["seq"].as_u64().unwrap_or(0);
                            log.lock().unwrap().accepted.push((id, conversation, seq));
                        }
                        (Some("error"), Some(code @ ("unavailable" | "rate_limited"))) => {
                            {
                                let mut l = log.lock().unwrap();
                                if code == "unavailable" { l.unavailable += 1 } else { l.rate_limited += 1 }
                            }
                            // Retried after a pause that doubles with each refusal (0.5 s up
                            // to 8 s), as a client backs off.
                            if let Some((_, due, refusals)) = pending.get_mut(&id) {
                                *due = Instant::now() + Duration::from_millis(500 << (*refusals).min(4));
                                *refusals += 1;
                            }
                        }
                        (Some("error"), _) => log.lock().unwrap().other_errors.push(t.to_string()),
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => lost_connection = true,
            },
        }
        if !resend.is_empty() && !lost_connection {
            log.lock().unwrap().resends += resend.len();
            for o in &resend {
                if ws.send(text(frame_of(o))).await.is_err() {
                    lost_connection = true;
                    break;
                }
            }
        }
        if lost_connection {
            log.lock().unwrap().reconnects += 1;
            (ws, at) = connect(&issuer, &gateways, at + 1, &user, far).await?;
            // Everything unanswered goes again on the new connection.
            let now = Instant::now();
            for (_, due, _) in pending.values_mut() {
                *due = now;
            }
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// Takes `message` frames (acking the run held from seq 1) until `stop`, reconnecting when the
/// connection is lost;
/// then connects once more and takes its backlog until `quiet` passes without a frame.
async fn receiver(
    issuer: TokenIssuer,
    gateways: Vec<String>,
    first: usize,
    mut stop: watch::Receiver<bool>,
    quiet: Duration,
    log: Shared<ReceiverLog>,
) -> anyhow::Result<()> {
    let user = log.lock().unwrap().user.clone();
    let far = Instant::now() + Duration::from_secs(3600);
    let (mut ws, mut at) = connect(&issuer, &gateways, first, &user, far).await?;
    let mut last_round = false;
    // Per conversation: seqs held beyond the acked run, and the end of that run.
    let mut held: HashMap<String, (BTreeSet<u64>, u64)> = HashMap::new();
    loop {
        let msg = if last_round {
            match tokio::time::timeout(quiet, ws.next()).await {
                Ok(m) => m,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                () = stopped(&mut stop) => {
                    // The final connection: what this device has not acked. It says again how
                    // far it has read (a read sent into a gateway that died is lost with it).
                    let _ = ws.close(None).await;
                    last_round = true;
                    (ws, at) = connect(&issuer, &gateways, at + 1, &user, far).await?;
                    for (conversation, (_, acked)) in &held {
                        if *acked > 0 {
                            let read = json!({"type":"read","conversation":conversation,"seq":*acked});
                            ws.send(text(read)).await?;
                            log.lock().unwrap().read.insert(conversation.clone(), *acked);
                        }
                    }
                    continue;
                }
                m = ws.next() => m,
            }
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                let f: Value = serde_json::from_str(&t)?;
                if f["type"] != "message" {
                    continue;
                }
                let conversation = f["conversation"].as_str().unwrap_or_default().to_owned();
                let seq = f["seq"].as_u64().unwrap_or(0);
                if f.get("event").is_none() {
                    log.lock().unwrap().got.push((
                        conversation.clone(),
                        seq,
                        f["id"].as_str().unwrap_or_default().to_owned(),
                        f["from"].as_str().unwrap_or_default().to_owned(),
                    ));
                }
                // An ack says "I hold everything up to here": only the end of the run of seqs
                // held from 1 is acked, so a message missed live comes again on reconnect.
                let (held, acked) = held.entry(conversation.clone()).or_default();
                held.insert(seq);
                let before = *acked;
                while held.remove(&(*acked + 1)) {
                    *acked += 1;
                }
                if *acked > before {
                    let read = json!({"type":"read","conversation":conversation,"seq":*acked});
                    if ws.send(text(read)).await.is_ok() {
                        log.lock().unwrap().read.insert(conversation, *acked);
                    }
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                log.lock().unwrap().reconnects += 1;
                (ws, at) = connect(&issuer, &gateways, at + 1, &user, far).await?;
            }
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// The receivers whose read marker (the receipts route) stays behind the furthest `read` they
/// sent, waiting up to `wait` for the reads still on their way: one line each.
async fn markers_behind(
    issuer: &TokenIssuer,
    api: &str,
    receivers: &[ReceiverLog],
    wait: Duration,
) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + wait;
    loop {
        let mut behind = Vec::new();
        for r in receivers {
            for (conversation, sent) in &r.read {
                let url =
                    format!("http://{api}/v1/conversations/{conversation}/receipts?limit=1000");
                let (status, body) = api_request(issuer, &r.user, "GET", &url, None).await?;
                if status != 200 {
                    bail!("receipts of {conversation}: {status} {body}");
                }
                let stored = body["receipts"]
                    .as_array()
                    .and_then(|all| all.iter().find(|m| m["user"] == r.user.as_str()))
                    .and_then(|m| m["read"].as_u64())
                    .unwrap_or(0);
                if stored < *sent {
                    behind.push(format!(
                        "read marker behind: {} in {conversation} read up to {sent}, stored {stored}",
                        r.user
                    ));
                }
            }
        }
        if behind.is_empty() || Instant::now() > deadline {
            return Ok(behind);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every message of `conversation` in history, read as `reader`: (seq, id, from).
async fn history(
    issuer: &TokenIssuer,
    api: &str,
    reader: &str,
    conversation: &str,
) -> anyhow::Result<Vec<(u64, String, String)>> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let url = format!(
            "http://{api}/v1/conversations/{conversation}/messages?after={after}&limit=100"
        );
        let (status, page) = api_request(issuer, reader, "GET", &url, None).await?;
        if status != 200 {
            bail!("history of {conversation}: {status} {page}");
        }
        let messages = page["messages"].as_array().cloned().unwrap_or_default();
        for m in &messages {
            if m.get("event").is_some() {
                after = after.max(m["seq"].as_u64().unwrap_or(0));
                continue;
            }
            let seq = m["seq"].as_u64().unwrap_or(0);
            after = after.max(seq);
            out.push((
                seq,
                m["id"].as_str().unwrap_or_default().to_owned(),
                m["from"].as_str().unwrap_or_default().to_owned(),
            ));
        }
        if !page["has_more"].as_bool().unwrap_or(false) || messages.is_empty() {
            return Ok(out);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let issuer = TokenIssuer::new(&JwtSecret::new(args.secret.clone(), false)?);
    let gateways: Vec<String> = args.gateways.split(',').map(str::to_owned).collect();
    let run = &connect_core::now_ms().to_string()[5..];
    let tag = format!("f{run}");

    // The group: created through the HTTP API by its first member.
    let members: Vec<String> = (0..args.group_members.max(2))
        .map(|i| format!("{tag}_g{i}"))
        .collect();
    let body = json!({"name": "faults", "members": &members[1..]}).to_string();
    let (status, created) = api_request(
        &issuer,
        &members[0],
        "POST",
        &format!("http://{}/v1/groups", args.api),
        Some(body),
    )
    .await?;
    if status != 201 {
        bail!("creating the group: {status} {created}");
    }
    let group = created["group"].as_str().context("no group id")?.to_owned();

    // Senders: pair i's a sends to its b; the group's first member sends to the group.
    let total_secs = args.before + args.after + 600; // the plan outlasts any fault
    let senders = args.pairs + 1;
    let every = Duration::from_secs_f64(senders as f64 / args.rate.max(0.1));
    let per_sender = (total_secs as f64 / every.as_secs_f64()) as usize;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);
    let mut sender_logs = Vec::new();
    let mut receiver_logs = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut receivers = tokio::task::JoinSet::new();
    let start_receiver = |receivers: &mut tokio::task::JoinSet<anyhow::Result<()>>,
                          receiver_logs: &mut Vec<Shared<ReceiverLog>>,
                          user: String,
                          first: usize| {
        let log = Arc::new(Mutex::new(ReceiverLog {
            user,
            ..Default::default()
        }));
        receiver_logs.push(log.clone());
        receivers.spawn(receiver(
            issuer.clone(),
            gateways.clone(),
            first,
            done_rx.clone(),
            Duration::from_secs(3),
            log,
        ));
    };
    for i in 0..args.pairs {
        let (a, b) = (format!("{tag}_a{i}"), format!("{tag}_b{i}"));
        start_receiver(&mut receivers, &mut receiver_logs, b.clone(), (i + 1) % 2);
        let plan = (0..per_sender)
            .map(|n| Outgoing {
                id: format!("{a}-{n}"),
                target: ("to", b.clone()),
                recipients: vec![b.clone()],
            })
            .collect();
        let log = Arc::new(Mutex::new(SenderLog::default()));
        sender_logs.push((a.clone(), log.clone()));
        tasks.spawn(sender(
            issuer.clone(),
            gateways.clone(),
            i % 2,
            a,
            plan,
            every,
            stop_rx.clone(),
            Duration::from_secs(args.settle),
            log,
        ));
    }
    for (i, m) in members.iter().enumerate().skip(1) {
        start_receiver(&mut receivers, &mut receiver_logs, m.clone(), i % 2);
    }
    let plan = (0..per_sender)
        .map(|n| Outgoing {
            id: format!("{}-{n}", members[0]),
            target: ("group", group.clone()),
            recipients: members[1..].to_vec(),
        })
        .collect();
    let log = Arc::new(Mutex::new(SenderLog::default()));
    sender_logs.push((members[0].clone(), log.clone()));
    tasks.spawn(sender(
        issuer.clone(),
        gateways.clone(),
        0,
        members[0].clone(),
        plan,
        every,
        stop_rx.clone(),
        Duration::from_secs(args.settle),
        log,
    ));

    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.before)).await;
    let mut fault_secs = 0.0;
    if let Some(fault) = &args.fault {
        eprintln!("[faults] {}: injecting: {fault}", args.name);
        let t = Instant::now();
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(fault)
            .status()
            .await?;
        fault_secs = t.elapsed().as_secs_f64();
        if !status.success() {
            bail!("the fault command failed: {status}");
        }
        eprintln!("[faults] {}: recovered after {fault_secs:.1} s", args.name);
    }
    tokio::time::sleep(Duration::from_secs(args.after)).await;
    stop_tx.send_replace(true);
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let stream_secs = started.elapsed().as_secs_f64();
    // Every send answered: the receivers take their last backlog.
    tokio::time::sleep(Duration::from_secs(2)).await;
    done_tx.send_replace(true);
    while let Some(r) = receivers.join_next().await {
        r??;
    }

    // The check: the conversations the senders were answered in, read back from history.
    let senders: Vec<(String, SenderLog)> = sender_logs
        .into_iter()
        .map(|(user, log)| (user, std::mem::take(&mut *log.lock().unwrap())))
        .collect();
    let receivers: Vec<ReceiverLog> = receiver_logs
        .into_iter()
        .map(|log| std::mem::take(&mut *log.lock().unwrap()))
        .collect();
    let mut readers: BTreeMap<String, String> = BTreeMap::new();
    for (user, log) in &senders {
        for (_, conversation, _) in &log.accepted {
            readers.insert(conversation.clone(), user.clone());
        }
    }
    let mut histories = BTreeMap::new();
    for (conversation, reader) in &readers {
        histories.insert(
            conversation.clone(),
            history(&issuer, &args.api, reader, conversation).await?,
        );
    }
    let mut verdict = check(&senders, &receivers, &histories);
    let behind = markers_behind(&issuer, &args.api, &receivers, Duration::from_secs(20)).await?;
    verdict.report["read_markers"] = json!(receivers.iter().map(|r| r.read.len()).sum::<usize>());
    verdict.problems.extend(behind);
    let mut report = verdict.report.clone();
    report["fault"] = json!(args.name);
    report["stream_secs"] = json!((stream_secs * 10.0).round() / 10.0);
    report["fault_secs"] = json!((fault_secs * 10.0).round() / 10.0);
    println!("{report}");
    if let Some(path) = &args.report {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{report}")?;
    }
    for problem in verdict.problems.iter().take(20) {
        eprintln!("[faults] {}: {problem}", args.name);
    }
    if !verdict.problems.is_empty() {
        eprintln!(
            "[faults] {}: FAILED ({} problems)",
            args.name,
            verdict.problems.len()
        );
        std::process::exit(1);
    }
    eprintln!("[faults] {}: ok", args.name);
    Ok(())
}

/// The counts of a run, and every broken promise in it.
struct Verdict {
    report: Value,
    problems: Vec<String>,
}

/// conversation → (seq, id, from) of each stored message.
type Histories = BTreeMap<String, Vec<(u64, String, String)>>;

/// Checks what the senders were answered and the receivers got against history (conversation →
/// (seq, id, from) of each stored message).
fn check(
    senders: &[(String, SenderLog)],
    receivers: &[ReceiverLog],
    histories: &Histories,
) -> Verdict {
    let mut problems = Vec::new();
    let mut sent: HashMap<&str, &Outgoing> = HashMap::new();
    let mut accepted: HashMap<&str, (&str, u64)> = HashMap::new();
    let (mut unavailable, mut rate_limited, mut resends, mut reconnects) = (0, 0, 0, 0);
    for (_, log) in senders {
        for o in &log.sent {
            sent.insert(&o.id, o);
        }
        for (id, conversation, seq) in &log.accepted {
            match accepted.get(id.as_str()) {
                Some(first) if *first != (conversation.as_str(), *seq) => problems.push(format!(
                    "answered twice differently: {id}: {first:?} then {conversation}/{seq}"
                )),
                _ => {
                    accepted.insert(id, (conversation, *seq));
                }
            }
        }
        unavailable += log.unavailable;
        rate_limited += log.rate_limited;
        resends += log.resends;
        reconnects += log.reconnects;
        problems.extend(
            log.unanswered
                .iter()
                .map(|id| format!("never answered: {id}")),
        );
        problems.extend(
            log.other_errors
                .iter()
                .map(|e| format!("unexpected error: {e}")),
        );
    }
    // Each id's stored copies.
    let mut stored: HashMap<&str, Vec<(&str, u64)>> = HashMap::new();
    let mut gaps = 0;
    for (conversation, messages) in histories {
        gaps += messages.windows(2).filter(|w| w[1].0 != w[0].0 + 1).count();
        for (seq, id, _) in messages {
            stored.entry(id).or_default().push((conversation, *seq));
        }
    }
    for (id, copies) in &stored {
        if copies.len() > 1 {
            problems.push(format!("stored twice: {id}: {copies:?}"));
        }
        if !sent.contains_key(id) {
            problems.push(format!("stored but never sent: {id}"));
        }
    }
    for (id, at) in &accepted {
        if !stored.get(id).is_some_and(|copies| copies.contains(at)) {
            problems.push(format!(
                "accepted as {at:?} but stored as {:?}",
                stored.get(id)
            ));
        }
    }
    // Deliveries: each accepted message to each of its recipients.
    let mut received: HashSet<(&str, &str)> = HashSet::new();
    let mut repeats = 0;
    for log in receivers {
        reconnects += log.reconnects;
        let mut seen: HashSet<(&str, u64)> = HashSet::new();
        for (conversation, seq, id, _) in &log.got {
            if !seen.insert((conversation, *seq)) {
                repeats += 1;
            }
            if !sent.contains_key(id.as_str()) {
                problems.push(format!("received but never sent: {}: {id}", log.user));
            }
            received.insert((&log.user, id));
        }
    }
    let mut expected = 0;
    let mut undelivered = 0;
    for id in accepted.keys() {
        for user in &sent[id].recipients {
            expected += 1;
            if !received.contains(&(user.as_str(), *id)) {
                undelivered += 1;
                problems.push(format!("not delivered: {id} → {user}"));
            }
        }
    }
    if accepted.is_empty() {
        problems.push("nothing was accepted".into());
    }
    let not_stored = accepted
        .iter()
        .filter(|(id, at)| !stored.get(*id).is_some_and(|c| c.contains(at)))
        .count();
    let duplicated = stored.values().filter(|c| c.len() > 1).count();
    let report = json!({
        "sent": sent.len(),
        "accepted": accepted.len(),
        "stored": stored.len(),
        "deliveries_expected": expected,
        "delivered": expected - undelivered,
        "lost": not_stored + undelivered,
        "duplicated": duplicated,
        "redelivered": repeats,
        "seq_gaps": gaps,
        "unavailable_answers": unavailable,
        "rate_limited_answers": rate_limited,
        "resends": resends,
        "reconnects": reconnects,
        "problems": problems.len(),
    });
    Verdict { report, problems }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dm(id: &str, to: &str) -> Outgoing {
        Outgoing {
            id: id.into(),
            target: ("to", to.into()),
            recipients: vec![to.into()],
        }
    }

    /// Alice sent m1, m2 to bob; both accepted as seqs 1, 2.
    fn run() -> (Vec<(String, SenderLog)>, Vec<ReceiverLog>, Histories) {
        let c = "dm:alice:bob".to_owned();
        let senders = vec![(
            "alice".to_owned(),
            SenderLog {
                sent: vec![dm("m1", "bob"), dm("m2", "bob")],
                accepted: vec![("m1".into(), c.clone(), 1), ("m2".into(), c.clone(), 2)],
                ..Default::default()
            },
        )];
        let receivers = vec![ReceiverLog {
            user: "bob".into(),
            got: vec![
                (c.clone(), 1, "m1".into(), "alice".into()),
                (c.clone(), 2, "m2".into(), "alice".into()),
            ],
            reconnects: 0,
            read: BTreeMap::new(),
        }];
        let histories = BTreeMap::from([(
            c,
            vec![
                (1, "m1".into(), "alice".into()),
                (2, "m2".into(), "alice".into()),
            ],
        )]);
        (senders, receivers, histories)
    }

    #[test]
    fn a_clean_run_passes_and_a_repeat_is_only_counted() {
        let (s, mut r, h) = run();
        let again = r[0].got[0].clone();
        r[0].got.push(again);
        let v = check(&s, &r, &h);
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        assert_eq!(v.report["redelivered"], 1);
        assert_eq!(v.report["delivered"], 2);
    }

    #[test]
    fn every_broken_promise_is_found() {
        // Not stored.
        let (s, r, mut h) = run();
        h.values_mut().next().unwrap().pop();
        assert_eq!(check(&s, &r, &h).report["lost"], 1);
        // Not delivered.
        let (s, mut r, h) = run();
        r[0].got.pop();
        let v = check(&s, &r, &h);
        assert_eq!(v.report["lost"], 1);
        assert!(v.problems[0].starts_with("not delivered: m2"));
        // Stored twice.
        let (s, r, mut h) = run();
        h.values_mut()
            .next()
            .unwrap()
            .push((3, "m2".into(), "alice".into()));
        assert_eq!(check(&s, &r, &h).report["duplicated"], 1);
        // One id answered with two seqs.
        let (mut s, r, h) = run();
        s[0].1
            .accepted
            .push(("m2".into(), "dm:alice:bob".into(), 3));
        assert_eq!(check(&s, &r, &h).problems.len(), 1);
        // Received or stored but never sent; never answered.
        let (mut s, mut r, h) = run();
        r[0].got
            .push(("dm:alice:bob".into(), 9, "ghost".into(), "alice".into()));
        s[0].1.unanswered.push("m3".into());
        assert_eq!(check(&s, &r, &h).problems.len(), 2);
    }
}
