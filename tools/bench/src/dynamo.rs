//! `connect-bench dynamo`: the chat table's write path alone, through the production adapter
//! (`DynamoChatStore::put_batch`, what messaging's store phase calls): the latency of one
//! batch at a time (the floor under every message's latency), then the ceiling in items/s with
//! several writers. On the local stack this is DynamoDB Local's speed, measured on the same
//! machine as the rest of a benchmark run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;

use connect_bench::procs::Usage;
use connect_core::model::StoredMessage;
use connect_core::ports::ChatStore;
use connect_protocol::{ClientMsgId, ConversationId, UserId};

#[derive(Args)]
pub struct DynamoRun {
    /// Items per batch in the latency run (a quiet system's batch is one message).
    #[arg(long, default_value_t = 1)]
    items: usize,
    /// Batches written one after another in the latency run (after 50 of warm-up).
    #[arg(long, default_value_t = 1000)]
    batches: usize,
    /// Writers in the ceiling run, each writing 25-item batches (BatchWriteItem's maximum).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seconds of the ceiling run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value = ".local/pids")]
    pids: PathBuf,
}

fn message(conversation: &ConversationId, from: &UserId, seq: u64) -> StoredMessage {
    StoredMessage {
        conversation: conversation.clone(),
        seq,
        from: from.clone(),
        id: ClientMsgId::parse(format!("d{seq}")).expect("id"),
        body: "x".repeat(100),
        ts: connect_core::now_ms(),
        event: None,
        mv: None,
        device: None,
    }
}

pub async fn run(run: DynamoRun) -> anyhow::Result<()> {
    let dynamo = connect_dynamo::client(
        &connect_dynamo::DynamoConfig::from_settings(&connect_bench::settings())
            .map_err(anyhow::Error::msg)?,
    )
    .await;
    let store = Arc::new(connect_dynamo::DynamoChatStore::new(
        dynamo,
        connect_dynamo::Tables::from_settings(&connect_bench::settings()).chat,
        16,
    ));
    let from = UserId::parse(super::unique("dyna"))?;
    let peer = UserId::parse(super::unique("dynb"))?;
    let conversation = ConversationId::direct(&from, &peer)?;

    let mut seq = 1;
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let usage = Usage::start(&run.pids);
    let started = Instant::now();
    for i in 0..run.batches + 50 {
        let batch: Vec<StoredMessage> = (0..run.items.max(1))
            .map(|k| message(&conversation, &from, seq + k as u64))
            .collect();
        seq += batch.len() as u64;
        let t = Instant::now();
        store.put_batch(&batch).await?;
        if i >= 50 {
            h.record((t.elapsed().as_micros() as u64).max(1))?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let usage = usage.stop();
    println!(
        "latency: {} batches of {} item(s), one at a time: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        run.batches,
        run.items,
        super::ms(&h, 0.5),
        super::ms(&h, 0.95),
        super::ms(&h, 0.99),
        h.max() as f64 / 1000.0
    );
    usage.print(secs);

    let deadline = Instant::now() + Duration::from_secs(run.seconds);
    let usage = Usage::start(&run.pids);
    let started = Instant::now();
    let writers = (0..run.concurrency.max(1)).map(|w| {
        let (store, from) = (store.clone(), from.clone());
        let conversation =
            ConversationId::direct(&from, &UserId::parse(format!("{peer}w{w}")).expect("id"))
                .expect("direct");
        tokio::spawn(async move {
            let (mut written, mut seq) = (0u64, 1u64);
            while Instant::now() < deadline {
                let batch: Vec<StoredMessage> = (0..25)
                    .map(|k| message(&conversation, &from, seq + k))
                    .collect();
                seq += 25;
                store.put_batch(&batch).await?;
                written += 25;
            }
            anyhow::Ok(written)
        })
    });
    let mut written = 0;
    for w in futures_util::future::join_all(writers).await {
        written += w??;
    }
    let secs = started.elapsed().as_secs_f64();
    let usage = usage.stop();
    println!(
        "ceiling: {} writers of 25-item batches: {:.0} items/s over {secs:.1} s",
        run.concurrency,
        written as f64 / secs
    );
    usage.print(secs);
    Ok(())
}
