//! The consume loop: gather a batch from `incoming_messages` (and, with other regions, the
//! sends they forward here, their sequenced messages and their acks), run the messaging step,
//! commit.
//! Offsets are committed only after the step has stored and published the batch (at least
//! once; the step is idempotent, so a replay answers with the original seqs). Batch N+1 is
//! prepared (deduped, sequenced, stored) while batch N is being published; batches are
//! published and committed strictly in order, and a rebalance waits for the batch in flight
//! before this process's partitions move ([`GroupConsumer`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connect_core::messaging::{MessagingStep, Prepared};
use connect_core::ports::DeliveryBus;
use connect_core::regions::{Inbound, RegionBus};
use connect_kafka::codec::{decode_incoming, decode_json, decode_submission, CodecError, Incoming};
use connect_kafka::rdkafka::message::BorrowedMessage;
use connect_kafka::rdkafka::Message;
use connect_kafka::{GroupConsumer, PartitionKey};
use metrics::{counter, histogram};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// What a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Sends: `incoming_messages`.
    Sends,
    /// Sends other regions forward here: `<region>.forward_<here>`.
    Forwarded,
    /// `<region>.sequenced_messages`.
    Replicas,
    /// `<region>.acks`.
    Acks,
}

/// The topics messaging reads, and what each carries.
pub type TopicKinds = HashMap<String, Kind>;

fn decode(kinds: &TopicKinds, m: &BorrowedMessage<'_>) -> Option<Inbound> {
    let payload = m.payload().unwrap_or_default();
    let decoded: Result<Inbound, CodecError> = match kinds.get(m.topic()) {
        Some(Kind::Replicas) => decode_json(payload).map(Inbound::Replica),
        Some(Kind::Acks) => decode_json(payload).map(Inbound::Ack),
        Some(Kind::Forwarded) => decode_submission(payload).map(Inbound::Forwarded),
        Some(Kind::Sends) | None => {
            decode_incoming(m.headers(), payload).map(|incoming| match incoming {
                Incoming::Send(s) => Inbound::Send(s),
                Incoming::Marker(u) => Inbound::Marker(u),
                Incoming::Typing(u) => Inbound::Typing(u),
            })
        }
    };
    match decoded {
        Ok(s) => Some(s),
        Err(e) => {
            counter!("connect_messaging_undecodable_total").increment(1);
            warn!(cause = %e, partition = m.partition(), offset = m.offset(), "skipping undecodable record");
            None
        }
    }
}

/// Where a prepared batch goes: this region's gateways, and the other regions (if any).
#[derive(Clone)]
pub struct Outputs {
    pub deliveries: Arc<dyn DeliveryBus>,
    /// Push requests, for the push function.
    pub pushes: Arc<dyn connect_core::ports::PushBus>,
    pub regions: Option<Arc<dyn RegionBus>>,
}

/// Runs `publish` until it succeeds (the batch is not committed before), as long as its errors
/// may pass. A final error (the broker refuses the records themselves: too large, invalid) is
/// not retried: retrying would stall every later batch of this process for good. What it held
/// is dead-lettered: counted, logged, and left to the paths that do not need it (every message
/// is stored and in its conversation's log, so its recipients get it when they next catch up,
/// and a sender without `accepted` retries and is answered from the dedupe index).
async fn until_published<F, Fut>(what: &'static str, mut publish: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), connect_core::PortError>>,
{
    let mut backoff = Duration::from_millis(50);
    loop {
        match publish().await {
            Ok(()) => return,
            Err(e) if !e.is_retryable() => {
                counter!("connect_messaging_dead_letters_total", "what" => what).increment(1);
                error!(cause = %e, what, "the broker refused the batch's records for good; dead-lettered (not retried)");
                return;
            }
            Err(e) => {
                warn!(cause = %e, what, "publishing the batch failed; retrying it before committing");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Publishes a prepared batch (retrying until the buses take it), then commits its offsets.
async fn publish_and_commit(
    outputs: Outputs,
    consumer: Arc<GroupConsumer>,
    prepared: Prepared,
    next_offsets: HashMap<PartitionKey, i64>,
    fault_pause: Option<Duration>,
) {
    // The push requests side by side with the deliveries: the next batch waits for neither
    // longer than for the slower.
    tokio::join!(
        until_published("deliveries", || {
            outputs.deliveries.publish(&prepared.deliveries)
        }),
        async {
            if !prepared.pushes.is_empty() {
                until_published("push requests", || outputs.pushes.publish(&prepared.pushes)).await;
            }
        }
    );
    if let Some(regions) = &outputs.regions {
        if !prepared.taken_in.is_empty() {
            until_published("taken in", || regions.take_in(&prepared.taken_in)).await;
        }
        if !prepared.forwards.is_empty() {
            until_published("forwards", || regions.forward(&prepared.forwards)).await;
        }
        if !prepared.replicas.is_empty() {
            until_published("replicas", || regions.replicate(&prepared.replicas)).await;
        }
    }
    let report = &prepared.report;
    counter!("connect_messaging_stored_total").increment(report.stored as u64);
    counter!("connect_messaging_duplicates_total").increment(report.duplicates as u64);
    counter!("connect_messaging_rejected_total").increment(report.rejected as u64);
    counter!("connect_messaging_unavailable_total").increment(report.unavailable as u64);
    counter!("connect_messaging_records_out_total").increment(report.records as u64);
    counter!("connect_messaging_shed_total").increment(report.shed as u64);
    counter!("connect_messaging_log_retries_total").increment(report.log_retries as u64);
    counter!("connect_messaging_markers_total").increment(report.markers as u64);
    counter!("connect_messaging_pushes_total").increment(report.pushes as u64);
    counter!("connect_messaging_marker_retries_total").increment(report.marker_retries as u64);
    counter!("connect_messaging_typing_total", "result" => "sent").increment(report.typing as u64);
    counter!("connect_messaging_typing_total", "result" => "dropped")
        .increment(report.typing_dropped as u64);
    counter!("connect_messaging_lookup_retries_total").increment(report.lookup_retries as u64);
    counter!("connect_messaging_forwarded_total").increment(report.forwarded as u64);
    counter!("connect_messaging_relayed_total").increment(report.relayed as u64);
    counter!("connect_messaging_replicas_out_total").increment(prepared.replicas.len() as u64);
    if let Some(pause) = fault_pause {
        info!(
            ms = pause.as_millis() as u64,
            "fault injection: batch stored and published, pausing before the commit"
        );
        tokio::time::sleep(pause).await;
    }
    consumer.commit(&next_offsets);
}

pub async fn run(
    consumer: GroupConsumer,
    step: MessagingStep,
    outputs: Outputs,
    kinds: TopicKinds,
    batch_max: usize,
    fault_pause: Option<Duration>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), connect_kafka::group::Poisoned> {
    let consumer = Arc::new(consumer);
    while let Some(batch) = consumer
        .next_batch(batch_max, |m| decode(&kinds, m), &mut stop)
        .await
    {
        if batch.is_empty() {
            continue;
        }
        let (items, next_offsets) = batch.into_items();
        let now = connect_core::now_ms();
        let sends = items.iter().filter_map(|i| match i {
            Inbound::Send(s) => Some(s),
            _ => None,
        });
        for s in sends.filter(|s| s.submitted_ms > 0) {
            // Gateway → messaging: the Kafka hop plus the wait for earlier batches.
            histogram!("connect_messaging_wait_seconds")
                .record(now.saturating_sub(s.submitted_ms) as f64 / 1000.0);
        }
        for item in &items {
            if let Inbound::Replica(r) = item {
                if let Some(m) = &r.message {
                    // Home acceptance → here: the home's publish, MirrorMaker 2 and this read.
                    histogram!("connect_messaging_replica_age_seconds")
                        .record(now.saturating_sub(m.ts) as f64 / 1000.0);
                }
            }
        }
        let started = Instant::now();
        let n = items.len();
        let mut prepared = step.prepare_inbound(items, connect_core::now_ms()).await;
        // System messages (group events) have no client to retry them: one that failed for a
        // reason that may pass is prepared again, and the batch is not committed before it is
        // in (a stop meanwhile leaves the batch uncommitted, for the next owner).
        let mut backoff = Duration::from_millis(50);
        while !prepared.retry.is_empty() {
            counter!("connect_messaging_retried_total").increment(prepared.retry.len() as u64);
            warn!(
                count = prepared.retry.len(),
                "system messages failed on a backend; preparing them again"
            );
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            let again = std::mem::take(&mut prepared.retry);
            prepared.absorb(step.prepare(again, connect_core::now_ms()).await);
        }
        if !prepared.retry.is_empty() {
            info!("stopping with system messages not yet in; this batch stays uncommitted");
            break;
        }
        histogram!("connect_messaging_prepare_seconds").record(started.elapsed().as_secs_f64());
        for (phase, took) in prepared.report.phases.named() {
            histogram!("connect_messaging_phase_seconds", "phase" => phase)
                .record(took.as_secs_f64());
        }
        histogram!("connect_messaging_batch_size").record(n as f64);
        if let Err(poisoned) = consumer.finish().await {
            // The batch before did not finish: committing this one would cover its records.
            consumer.close().await;
            return Err(poisoned);
        }
        consumer.set_in_flight(tokio::spawn(publish_and_commit(
            outputs.clone(),
            consumer.clone(),
            prepared,
            next_offsets,
            fault_pause,
        )));
    }
    consumer.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use connect_core::PortError;

    /// A publish that fails `failures` times with `error`, then succeeds; counts its calls.
    fn flaky(
        calls: &AtomicUsize,
        failures: usize,
        error: PortError,
    ) -> impl FnMut() -> std::future::Ready<Result<(), PortError>> + '_ {
        move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(if n < failures {
                Err(error.clone())
            } else {
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn errors_that_may_pass_are_retried_until_the_batch_is_published() {
        let calls = AtomicUsize::new(0);
        until_published(
            "deliveries",
            flaky(&calls, 3, PortError::unavailable("kafka", "timed out")),
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_final_error_is_not_retried() {
        let calls = AtomicUsize::new(0);
        let publish = until_published(
            "deliveries",
            flaky(
                &calls,
                usize::MAX,
                PortError::rejected("kafka", "too large"),
            ),
        );
        tokio::time::timeout(Duration::from_secs(2), publish)
            .await
            .expect("a final error ends the publish");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
