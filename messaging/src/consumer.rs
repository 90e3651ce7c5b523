//! The consume loop: gather a batch from `incoming_messages`, run the messaging step, commit.
//! Offsets are committed only after the step has stored and published the batch (at least
//! once; the step is idempotent, so a replay answers with the original seqs).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use std::sync::Arc;

use connect_core::messaging::{MessagingStep, Prepared};
use connect_core::model::Submission;
use connect_core::ports::DeliveryBus;
use connect_kafka::codec::decode_submission;
use connect_kafka::rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use connect_kafka::rdkafka::{Message, Offset, TopicPartitionList};
use futures_util::FutureExt;
use metrics::{counter, histogram};
use tokio::sync::watch;
use tracing::{info, warn};

/// A batch: the decoded submissions and the next offset to commit per partition.
struct Batch {
    submissions: Vec<Submission>,
    next_offsets: HashMap<(String, i32), i64>,
}

fn add(batch: &mut Batch, topic: &str, partition: i32, offset: i64, payload: Option<&[u8]>) {
    batch
        .next_offsets
        .insert((topic.to_owned(), partition), offset + 1);
    match decode_submission(payload.unwrap_or_default()) {
        Ok(s) => batch.submissions.push(s),
        Err(e) => {
            counter!("connect_messaging_undecodable_total").increment(1);
            warn!(cause = %e, partition, offset, "skipping undecodable record");
        }
    }
}

/// Waits for one record, then takes whatever else is already fetched, up to `max`.
async fn next_batch(
    consumer: &StreamConsumer,
    max: usize,
    stop: &mut watch::Receiver<bool>,
) -> Option<Batch> {
    let mut batch = Batch {
        submissions: Vec::new(),
        next_offsets: HashMap::new(),
    };
    let first = tokio::select! {
        _ = stop.wait_for(|s| *s) => return None,
        r = consumer.recv() => r,
    };
    match first {
        Ok(m) => add(
            &mut batch,
            m.topic(),
            m.partition(),
            m.offset(),
            m.payload(),
        ),
        Err(e) => {
            warn!(cause = %e, "incoming_messages read failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Some(batch);
        }
    }
    // At most `max` records, counted whether or not they decode.
    for _ in 1..max {
        match consumer.recv().now_or_never() {
            Some(Ok(m)) => add(
                &mut batch,
                m.topic(),
                m.partition(),
                m.offset(),
                m.payload(),
            ),
            _ => break,
        }
    }
    Some(batch)
}

/// Publishes a prepared batch (retrying until the bus takes it), then commits its offsets.
async fn publish_and_commit(
    deliveries: Arc<dyn DeliveryBus>,
    consumer: Arc<StreamConsumer>,
    prepared: Prepared,
    next_offsets: HashMap<(String, i32), i64>,
    fault_pause: Option<Duration>,
) {
    let mut backoff = Duration::from_millis(50);
    while let Err(e) = deliveries.publish(&prepared.deliveries).await {
        warn!(cause = %e, "publishing the batch failed; retrying it before committing");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    let report = &prepared.report;
    counter!("connect_messaging_stored_total").increment(report.stored as u64);
    counter!("connect_messaging_duplicates_total").increment(report.duplicates as u64);
    counter!("connect_messaging_rejected_total").increment(report.rejected as u64);
    counter!("connect_messaging_unavailable_total").increment(report.unavailable as u64);
    counter!("connect_messaging_records_out_total").increment(report.records as u64);
    if let Some(pause) = fault_pause {
        info!(
            ms = pause.as_millis() as u64,
            "fault injection: batch stored and published, pausing before the commit"
        );
        tokio::time::sleep(pause).await;
    }
    commit(&consumer, &next_offsets);
}

/// Batch N+1 is prepared (deduped, sequenced, stored) while batch N is being published; batches
/// are published and committed strictly in order.
pub async fn run(
    consumer: StreamConsumer,
    step: MessagingStep,
    deliveries: Arc<dyn DeliveryBus>,
    batch_max: usize,
    fault_pause: Option<Duration>,
    mut stop: watch::Receiver<bool>,
) {
    let consumer = Arc::new(consumer);
    let mut publishing: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(batch) = next_batch(&consumer, batch_max, &mut stop).await {
        if batch.next_offsets.is_empty() {
            continue;
        }
        let started = Instant::now();
        let n = batch.submissions.len();
        let prepared = step
            .prepare(batch.submissions, connect_core::now_ms())
            .await;
        histogram!("connect_messaging_prepare_seconds").record(started.elapsed().as_secs_f64());
        histogram!("connect_messaging_batch_size").record(n as f64);
        if let Some(previous) = publishing.take() {
            let _ = previous.await;
        }
        publishing = Some(tokio::spawn(publish_and_commit(
            deliveries.clone(),
            consumer.clone(),
            prepared,
            batch.next_offsets,
            fault_pause,
        )));
    }
    if let Some(last) = publishing {
        let _ = last.await;
    }
}

fn commit(consumer: &StreamConsumer, next_offsets: &HashMap<(String, i32), i64>) {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in next_offsets {
        if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            warn!(cause = %e, "bad offset");
        }
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        // A partition revoked by a rebalance: its new owner replays from the last commit.
        warn!(cause = %e, "offset commit failed");
    }
}
