//! `connect-probe`: how fast can the local stand-ins go, through the very adapters and client
//! settings the services use? DynamoDB Local: items/s of `put_batch` (BatchWriteItem of 25) and
//! allocations/s (UpdateItem ADD), each with `--concurrency` calls in flight for `--seconds`.
//! The Kafka API broker: records/s produced (200 B, as fast as the producer queue takes them) and
//! then consumed. The benchmark's ceiling reference.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use connect_core::model::StoredMessage;
use connect_core::ports::{ChatStore, SequenceAllocator};
use connect_dynamo::{DynamoChatStore, DynamoConfig, DynamoSequences, Tables};
use connect_protocol::{ClientMsgId, ConversationId, UserId};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Calls in flight at once (messaging's DYNAMODB_CONCURRENCY).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Messages per put_batch call (messaging writes a batch in chunks of 25).
    #[arg(long, default_value_t = 25)]
    batch: usize,
    /// Records for the Kafka probe (0 skips it).
    #[arg(long, default_value_t = 20_000)]
    records: usize,
    /// Skip the DynamoDB probe.
    #[arg(long)]
    no_dynamo: bool,
}

/// Produces `n` records of 200 B to a fresh 2-partition topic, then consumes them all.
async fn kafka_probe(settings: &connect_config::Settings, n: usize) -> anyhow::Result<()> {
    use connect_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
    use connect_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
    use connect_kafka::rdkafka::{Offset, TopicPartitionList};
    let kafka = connect_kafka::KafkaConfig::from_settings(settings).map_err(anyhow::Error::msg)?;
    let topic = format!("probe_{}", connect_core::now_ms());
    connect_kafka::ensure_topics(&kafka, &[(&topic, 2)], 1)
        .await
        .map_err(anyhow::Error::msg)?;
    let producer: FutureProducer = kafka.producer().create()?;
    let payload = vec![b'x'; 200];
    let started = Instant::now();
    let sends: Vec<_> = (0..n)
        .map(|i| {
            let key = format!("k{}", i % 64);
            let record = FutureRecord::to(&topic).key(&key).payload(&payload);
            producer.send_result(record).map_err(|(e, _)| e)
        })
        .collect();
    let queued: Vec<_> = sends.into_iter().flatten().collect();
    let rejected = n - queued.len();
    let failed = rejected
        + futures_util::future::join_all(queued)
            .await
            .into_iter()
            .filter(|r| !matches!(r, Ok(Ok(_))))
            .count();
    let produce = started.elapsed().as_secs_f64();
    println!(
        "kafka produce               {:>8.0} /s   ({failed} failed)",
        n as f64 / produce
    );
    let consumer: StreamConsumer = kafka.consumer(&topic).create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let mut got = 0;
    while got < n - failed {
        match tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await {
            Ok(Ok(_)) => got += 1,
            _ => break,
        }
    }
    println!(
        "kafka consume               {:>8.0} /s   ({got} of {})",
        got as f64 / started.elapsed().as_secs_f64(),
        n - failed
    );
    Ok(())
}

fn message(conversation: &ConversationId, seq: u64) -> StoredMessage {
    StoredMessage {
        conversation: conversation.clone(),
        seq,
        from: UserId::parse("probe_a").expect("id"),
        id: ClientMsgId::parse(format!("p-{seq}")).expect("id"),
        body: "x".repeat(100),
        ts: connect_core::now_ms(),
        event: None,
        mv: None,
        device: None,
    }
}

async fn run<F, Fut>(label: &str, seconds: u64, concurrency: usize, per_call: u64, call: F)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..concurrency as u64)
        .map(|w| {
            let (call, done, failed) = (call.clone(), done.clone(), failed.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while Instant::now() < until {
                    let ok = call(w * 1_000_000_000 + i).await;
                    i += 1;
                    let counter = if ok { &done } else { &failed };
                    counter.fetch_add(per_call, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let ok = done.load(Ordering::Relaxed) as f64 / seconds as f64;
    println!(
        "{label:<28} {ok:>8.0} /s   ({} failed)",
        failed.load(Ordering::Relaxed)
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = connect_config::Settings::from_process();
    if args.records > 0 {
        kafka_probe(&settings, args.records).await?;
    }
    if args.no_dynamo {
        return Ok(());
    }
    let client = connect_dynamo::client(
        &DynamoConfig::from_settings(&settings).map_err(anyhow::Error::msg)?,
    )
    .await;
    let tables = Tables::from_settings(&settings);
    let chat = Arc::new(DynamoChatStore::new(client.clone(), &tables.chat, 1));
    let seqs = Arc::new(DynamoSequences::new(client, &tables.sequences, "local", 1));
    let run_id = connect_core::now_ms();
    println!(
        "DynamoDB ceilings, {} calls in flight, {} s each",
        args.concurrency, args.seconds
    );
    let batch = args.batch as u64;
    run(
        "put_batch items",
        args.seconds,
        args.concurrency,
        batch,
        move |k| {
            let chat = chat.clone();
            async move {
                let c = ConversationId::parse(&format!("dm:a{run_id}:w{k}")).expect("conversation");
                let msgs: Vec<_> = (1..=batch).map(|s| message(&c, s)).collect();
                chat.put_batch(&msgs)
                    .await
                    .map_err(|e| eprintln!("put_batch: {e}"))
                    .is_ok()
            }
        },
    )
    .await;
    run(
        "allocations (UpdateItem ADD)",
        args.seconds,
        args.concurrency,
        1,
        move |k| {
            let seqs = seqs.clone();
            async move {
                let c = ConversationId::parse(&format!("dm:a{run_id}:s{}", k % 1000))
                    .expect("conversation");
                seqs.allocate(&[(c, 1)])
                    .await
                    .into_iter()
                    .all(|r| r.map_err(|e| eprintln!("allocate: {e}")).is_ok())
            }
        },
    )
    .await;
    Ok(())
}
