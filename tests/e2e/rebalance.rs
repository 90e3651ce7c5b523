//! Messaging as a consumer group under a steady stream: a member killed with SIGKILL, a member
//! joining mid-stream. Nothing accepted is lost, seqs are never reused, seqs are skipped only
//! after the crash (at most once per conversation), and each conversation keeps its order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::time::Instant;

use crate::helpers::*;
use crate::private::PrivateStack;

/// One DM stream: a sender that sends one message at a time (waiting for `accepted`, resending
/// the same id on `unavailable`) and a receiver that records what arrives.
#[derive(Debug)]
struct Sent {
    id: String,
    seq: u64,
    sent: Instant,
    accepted: Instant,
}

async fn send_stream(
    mut sender: Client,
    to: String,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<Sent>> {
    let mut out = Vec::new();
    let mut k = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("s{k}");
        let sent = Instant::now();
        let seq = loop {
            sender.send_to(&id, &to, &format!("body {k}")).await?;
            let f = sender.next_within(Duration::from_secs(60)).await?;
            match (f["type"].as_str(), f["code"].as_str()) {
                (Some("accepted"), _) if f["id"] == id.as_str() => {
                    break f["seq"].as_u64().context("seq")?
                }
                // A batch replayed after a crash answers its sends again: with the same seq.
                (Some("accepted"), _) => {
                    let again = out.iter().find(|s: &&Sent| f["id"] == s.id.as_str());
                    anyhow::ensure!(
                        again.is_some_and(|s| f["seq"].as_u64() == Some(s.seq)),
                        "{}: accepted again with another seq: {f}",
                        sender.user
                    );
                }
                (Some("error"), Some("unavailable")) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                _ => bail!("{}: unexpected {f}", sender.user),
            }
        };
        out.push(Sent {
            id,
            seq,
            sent,
            accepted: Instant::now(),
        });
        k += 1;
        tokio::time::sleep(every).await;
    }
    Ok(out)
}

/// Every (seq, id) the receiver got, in arrival order (repeats included).
async fn receive_stream(mut receiver: Client, stop: Arc<AtomicBool>) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    loop {
        // Only a quiet spell that began after the stop ends it: a short wait that was already
        // running when the senders stopped must not cut off their last messages' delivery.
        let stopping = stop.load(Ordering::Relaxed);
        let wait = if stopping {
            Duration::from_secs(3)
        } else {
            Duration::from_millis(500)
        };
        match receiver.next_within(wait).await {
            Ok(f) if f["type"] == "message" => got.push((
                f["seq"].as_u64().unwrap_or_default(),
                f["id"].as_str().unwrap_or_default().to_owned(),
            )),
            Ok(_) => {}
            Err(_) if stopping => return got,
            Err(_) => {}
        }
    }
}

struct Streams {
    senders: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<Sent>>>>,
    receivers: Vec<tokio::task::JoinHandle<Vec<(u64, String)>>>,
    conversations: Vec<String>,
    stop: Arc<AtomicBool>,
}

/// The `incoming_messages` partition of a conversation: librdkafka's default partitioner
/// (`consistent_random`) takes the CRC32 of the key modulo the partition count.
fn partition_of(conversation: &str) -> usize {
    crc32fast::hash(conversation.as_bytes()) as usize % INCOMING_PARTITIONS
}

/// `per_partition` DM streams on every partition of the slice's `incoming_messages`, so every
/// member of the group has traffic whatever it was assigned.
async fn start_streams(
    gateway: &str,
    per_partition: usize,
    every: Duration,
) -> anyhow::Result<Streams> {
    let stop = Arc::new(AtomicBool::new(false));
    let (mut senders, mut receivers, mut conversations) = (Vec::new(), Vec::new(), Vec::new());
    let mut on_partition = [0; INCOMING_PARTITIONS];
    while conversations.len() < per_partition * INCOMING_PARTITIONS {
        let (a, b) = (user("rb_a"), user("rb_b"));
        let p = partition_of(&dm(&a, &b));
        if on_partition[p] == per_partition {
            continue;
        }
        on_partition[p] += 1;
        conversations.push(dm(&a, &b));
        let receiver = Client::connect(gateway, &b).await?;
        let sender = Client::connect(gateway, &a).await?;
        receivers.push(tokio::spawn(receive_stream(receiver, stop.clone())));
        senders.push(tokio::spawn(send_stream(sender, b, every, stop.clone())));
    }
    Ok(Streams {
        senders,
        receivers,
        conversations,
        stop,
    })
}

/// What one conversation's stream showed.
struct Checked {
    sent: Vec<Sent>,
}

/// Stops the streams and checks each conversation: ids accepted once each with strictly
/// increasing seqs; at most one gap, and only after `crash`; the chat table holds exactly the accepted (seq, id) pairs; the receiver got
/// every one of them, in seq order apart from repeats.
async fn stop_and_check(streams: Streams, crash: Option<Instant>) -> anyhow::Result<Vec<Checked>> {
    streams.stop.store(true, Ordering::Relaxed);
    let mut out = Vec::new();
    for ((sender, receiver), conversation) in streams
        .senders
        .into_iter()
        .zip(streams.receivers)
        .zip(streams.conversations)
    {
        let sent = sender.await??;
        let got = receiver.await?;
        anyhow::ensure!(sent.len() >= 5, "{conversation}: only {} sent", sent.len());
        // A crash may leave one gap per conversation: the rest of the seqs the killed process
        // had reserved, skipped by the first message the next owner accepts.
        let mut gaps = 0;
        for w in sent.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            anyhow::ensure!(
                b.seq > a.seq,
                "{conversation}: seq {} after {}",
                b.seq,
                a.seq
            );
            if b.seq != a.seq + 1 {
                gaps += 1;
                let after_crash = crash.is_some_and(|c| b.accepted >= c);
                anyhow::ensure!(
                    after_crash,
                    "{conversation}: seqs {}..{} skipped without a crash",
                    a.seq + 1,
                    b.seq - 1
                );
            }
        }
        anyhow::ensure!(gaps <= 1, "{conversation}: {gaps} gaps");
        let accepted: BTreeMap<u64, String> = sent.iter().map(|s| (s.seq, s.id.clone())).collect();
        let rows: BTreeMap<u64, String> = stored(&conversation)
            .await?
            .into_iter()
            .map(|(seq, _, id, _)| (seq, id))
            .collect();
        anyhow::ensure!(
            rows == accepted,
            "{conversation}: stored {rows:?} != accepted {accepted:?}"
        );
        let mut last = 0;
        let mut delivered = BTreeMap::new();
        for (seq, id) in got {
            if seq <= last {
                anyhow::ensure!(
                    delivered.get(&seq) == Some(&id),
                    "{conversation}: seq {seq} out of order"
                );
                continue; // a repeat (at least once)
            }
            last = seq;
            delivered.insert(seq, id);
        }
        anyhow::ensure!(
            delivered == accepted,
            "{conversation}: delivered {delivered:?} != accepted {accepted:?}"
        );
        out.push(Checked { sent });
    }
    Ok(out)
}

async fn stored_total(ops: &str) -> anyhow::Result<f64> {
    metric(ops, "connect_messaging_stored_total", "").await
}

/// The private slice's settings (`private.rs`).
const SESSION_TIMEOUT: Duration = Duration::from_millis(3000);
const INCOMING_PARTITIONS: usize = crate::private::INCOMING_PARTITIONS;

#[tokio::test]
async fn killing_one_of_two_messaging_processes_loses_nothing_and_its_partitions_move(
) -> anyhow::Result<()> {
    let mut stack = PrivateStack::start().await?;
    let first = stack.start_messaging(&[]).await?;
    stack.start_messaging(&[]).await?;
    let streams = start_streams(&stack.gateway, 2, Duration::from_millis(80)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    anyhow::ensure!(
        stored_total(&first).await? > 0.0,
        "the process to kill had no partition with traffic"
    );
    let crash = Instant::now();
    stack.kill_messaging_at(0).await?;
    tokio::time::sleep(SESSION_TIMEOUT + Duration::from_secs(5)).await;
    let checked = stop_and_check(streams, Some(crash)).await?;

    // The longest wait of a message sent around the crash: the hand-over time.
    let handover = checked
        .iter()
        .flat_map(|c| &c.sent)
        .filter(|s| s.accepted >= crash)
        .map(|s| s.accepted - s.sent)
        .max()
        .unwrap_or_default();
    eprintln!("hand-over after SIGKILL: {handover:?} (session timeout {SESSION_TIMEOUT:?})");
    anyhow::ensure!(
        handover < SESSION_TIMEOUT + Duration::from_secs(5),
        "partitions moved after {handover:?}"
    );
    // Every conversation went on after the crash.
    for c in &checked {
        anyhow::ensure!(c.sent.iter().any(|s| s.sent > crash + handover));
    }
    Ok(())
}

#[tokio::test]
async fn a_messaging_process_joining_mid_stream_keeps_order_and_seqs() -> anyhow::Result<()> {
    let mut stack = PrivateStack::start().await?;
    stack.start_messaging(&[]).await?;
    stack.start_messaging(&[]).await?;
    let streams = start_streams(&stack.gateway, 2, Duration::from_millis(80)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let third = stack.start_messaging(&[]).await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    anyhow::ensure!(
        stored_total(&third).await? > 0.0,
        "the joining process was given no partition with traffic"
    );
    // No crash: no seq may be skipped at all.
    stop_and_check(streams, None).await?;
    Ok(())
}
