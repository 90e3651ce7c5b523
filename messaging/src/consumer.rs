//! The consume loop: gather a batch from `incoming_messages` (and, with other regions, the
//! sends they forward here, their sequenced messages and their acks), run the messaging step,
//! commit.
//! Offsets are committed only after the step has stored and published the batch (at least
//! once; the step is idempotent, so a replay answers with the original seqs). Partitions go
//! down lanes ([`run`]): a lane's batches are prepared (deduped, sequenced, stored) in order,
//! batch N+1 while batch N is being published, and published and committed strictly in order,
//! while other lanes' batches are in the works side by side. A rebalance waits for every lane's
//! work before this process's partitions move ([`GroupConsumer`]).
//!
//! The loop reads from a [`Source`]: the consumer group in production ([`Group`]), a script of
//! batches in its tests, which run it in-process over the memory ports.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connect_core::messaging::{MessagingStep, Prepared};
use connect_core::ports::DeliveryBus;
use connect_core::regions::{Inbound, RegionBus};
use connect_kafka::codec::{
    decode_incoming, decode_json, decode_submission, trace_id, CodecError, Incoming,
};
use connect_kafka::rdkafka::message::BorrowedMessage;
use connect_kafka::rdkafka::Message;
use connect_kafka::{GroupConsumer, InFlight, PartitionKey};
use futures_util::FutureExt;
use metrics::counter;
use tokio::sync::{oneshot, watch};
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::metrics::BatchMetrics;

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
                Incoming::Send(s) => {
                    // The headers are read only when the trace is logged (not in production).
                    let traced = tracing::enabled!(target: "connect::trace", tracing::Level::DEBUG);
                    if let Some(trace_id) = traced.then(|| trace_id(m.headers())).flatten() {
                        debug!(target: "connect::trace", trace_id = %trace_id, conversation = %s.conversation,
                            message.id = %s.id, partition = m.partition(), offset = m.offset(),
                            "send taken in");
                    }
                    Inbound::Send(s)
                }
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

/// The offsets that mark a batch done, per partition.
pub type Offsets = HashMap<PartitionKey, i64>;

/// Where the loop's batches come from and where their offsets go.
#[async_trait::async_trait]
pub trait Source: Send + Sync + 'static {
    /// Waits for records, then takes what is there, up to `max` (each with its partition),
    /// with the offsets that mark them done; None once `stop` is set.
    async fn next_batch(
        &self,
        max: usize,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<(Vec<(PartitionKey, Inbound)>, Offsets)>;
    /// The work in flight, which a revoke and a stop wait for.
    fn in_flight(&self) -> &InFlight;
    /// Marks a batch done (after it was stored and published).
    fn commit(&self, offsets: &Offsets);
    /// Before the loop ends: finishes the batch in flight and commits what is done.
    async fn close(&self);
}

/// The messaging consumer group: [`GroupConsumer`] reading the topics in `kinds`.
pub struct Group {
    pub consumer: GroupConsumer,
    pub kinds: TopicKinds,
}

#[async_trait::async_trait]
impl Source for Group {
    async fn next_batch(
        &self,
        max: usize,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<(Vec<(PartitionKey, Inbound)>, Offsets)> {
        let batch = self
            .consumer
            .next_batch(max, |m| decode(&self.kinds, m), stop)
            .await?;
        Some(batch.into_keyed())
    }

    fn in_flight(&self) -> &InFlight {
        self.consumer.in_flight()
    }

    fn commit(&self, offsets: &Offsets) {
        self.consumer.commit(offsets);
    }

    async fn close(&self) {
        self.consumer.close().await;
    }
}

/// Where a prepared batch goes: this region's gateways, and the other regions (if any).
#[derive(Clone)]
pub struct Outputs {
    pub deliveries: Arc<dyn DeliveryBus>,
    /// Push requests, for the push function.
    pub pushes: Arc<dyn connect_core::ports::PushBus>,
    pub regions: Option<Arc<dyn RegionBus>>,
    pub metrics: Arc<BatchMetrics>,
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
async fn publish_and_commit<S: Source>(
    outputs: Outputs,
    source: Arc<S>,
    prepared: Prepared,
    next_offsets: Offsets,
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
    outputs
        .metrics
        .published(&prepared.report, prepared.replicas.len());
    if let Some(pause) = fault_pause {
        info!(
            ms = pause.as_millis() as u64,
            "fault injection: batch stored and published, pausing before the commit"
        );
        tokio::time::sleep(pause).await;
    }
    source.commit(&next_offsets);
}

/// How many batches may be in the works at once, and how they are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pipeline {
    /// `MESSAGING_BATCH_MAX`: most records per batch read.
    pub batch_max: usize,
    /// `MESSAGING_BATCHES_IN_FLIGHT`: most (partition) batches prepared, stored or published at
    /// once, across the partitions this process owns (at least 1).
    pub in_flight: usize,
    /// `MESSAGING_LANES`: partition `p` goes down lane `p % lanes` (1: one lane for all, and
    /// always with other regions, whose mirrored topics carry a conversation on partitions of
    /// their own).
    pub lanes: usize,
    /// `MESSAGING_BATCH_DEADLINE_SECS`: a batch whose work (prepare, store, publish) has not
    /// finished after this stops the process (non-zero): something in it waits for good (a
    /// producer that never delivers, a backend that never answers), and a fresh process, which
    /// its orchestrator starts, replays the batch with fresh clients. Past any backend's own
    /// timeouts and retries.
    pub deadline: Duration,
}

/// How a batch's work in its lane ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Published and committed.
    Committed,
    /// Left uncommitted on a stop (system messages not yet in); so are the later batches of
    /// its lane (the partitions' next owner replays them).
    Held,
    /// Did not finish (its task panicked, or an earlier batch of its lane did not): nothing
    /// more may be committed.
    Failed,
}

type Done = futures_util::future::Shared<futures_util::future::BoxFuture<'static, Ended>>;

/// A lane's tail: the last batch handed to it.
#[derive(Default)]
struct Lane {
    /// Fires when that batch is prepared: the next one is prepared after it.
    prepared: Option<oneshot::Receiver<()>>,
    /// That batch's whole work: the next one is published after it.
    done: Option<Done>,
}

/// One partition batch's work, in its lane.
struct LaneBatch<S> {
    source: Arc<S>,
    step: Arc<MessagingStep>,
    outputs: Outputs,
    items: Vec<Inbound>,
    offsets: Offsets,
    after_prepared: Option<oneshot::Receiver<()>>,
    prepared: oneshot::Sender<()>,
    after_done: Option<Done>,
    fault_pause: Option<Duration>,
    stop: watch::Receiver<bool>,
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// The read this batch came from, held until the batch is prepared ([`run`]).
    reading: Arc<tokio::sync::OwnedSemaphorePermit>,
}

/// Prepares a batch after the one before it in its lane (dedupe, authorize and allocate in
/// partition order), while later batches of other lanes are prepared, stored and published;
/// then publishes and commits it after the one before it.
async fn lane_batch<S: Source>(b: LaneBatch<S>) -> Ended {
    let LaneBatch {
        source,
        step,
        outputs,
        items,
        offsets,
        after_prepared,
        prepared: prepared_tx,
        after_done,
        fault_pause,
        mut stop,
        _permit,
        reading,
    } = b;
    if let Some(before) = after_prepared {
        // Dropped unsent (that batch's task ended early): its `done` says how.
        let _ = before.await;
    }
    let started = Instant::now();
    let n = items.len();
    let mut prepared = step.prepare_inbound(items, connect_core::now_ms()).await;
    // System messages (group events) have no client to retry them: one that failed for a
    // reason that may pass is prepared again, and the batch is not committed before it is in
    // (a stop meanwhile leaves the batch uncommitted, for the next owner).
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
    let _ = prepared_tx.send(());
    drop(reading);
    if !prepared.retry.is_empty() {
        info!("stopping with system messages not yet in; this batch stays uncommitted");
        return Ended::Held;
    }
    outputs
        .metrics
        .prepared(n, started.elapsed(), &prepared.report.phases);
    if let Some(before) = after_done {
        match before.await {
            Ended::Committed => {}
            // Committing this batch would cover that one's records.
            ended => return ended,
        }
    }
    publish_and_commit(outputs, source, prepared, offsets, fault_pause).await;
    Ended::Committed
}

/// Runs the loop until `stop` (Ok) or until a batch's work did not finish (`Poisoned`: nothing
/// more may be committed, the caller must stop).
///
/// Each batch read is split by lane (partition `p`: lane `p % lanes`), and each part goes down
/// its lane: prepared (dedupe, authorize, allocate, store, log, route) after the lane's
/// previous batch was prepared, published and committed after it was committed. Lanes run side
/// by side, up to `pipeline.in_flight` batches at once, and at most `pipeline.lanes` reads wait
/// to be prepared: a conversation lives on one partition,
/// so its messages keep one order while a slow store in one lane holds no other lane up. A
/// revoke (and a stop) waits for every lane's work before seqs are given back and offsets
/// committed ([`Source::in_flight`] holds the latest batch of every lane).
///
/// Lanes trade batch size for concurrency: worth it where the store's latency, not its CPU,
/// bounds a batch (DynamoDB); on one machine with DynamoDB Local, smaller batches cost more
/// CPU than the overlap saves, so the default is one lane (docs/benchmarks.md).
pub async fn run<S: Source>(
    source: Arc<S>,
    step: MessagingStep,
    outputs: Outputs,
    pipeline: Pipeline,
    fault_pause: Option<Duration>,
    stop: watch::Receiver<bool>,
) -> Result<(), connect_kafka::group::Poisoned> {
    let step = Arc::new(step);
    let permits = Arc::new(tokio::sync::Semaphore::new(pipeline.in_flight.max(1)));
    let mut lanes: HashMap<usize, Lane> = HashMap::new();
    // A lane's batch that did not finish stops the reading at once (not at the next batch).
    let poison = Arc::new(watch::Sender::new(false));
    let (halt_tx, mut halt) = watch::channel(false);
    let halting = tokio::spawn({
        let (mut stop, mut poisoned) = (stop.clone(), poison.subscribe());
        async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = poisoned.wait_for(|p| *p) => {}
            }
            halt_tx.send_replace(true);
        }
    });
    // The next batch is read once the one before is prepared (with lanes, at most `lanes`
    // reads wait to be prepared): what arrives meanwhile makes one batch, not one each, and a
    // batch's fixed costs (a big group's lookup, a round trip per phase) are paid once for all
    // of it. Reading ahead only queued small batches behind the one being prepared.
    let reads = Arc::new(tokio::sync::Semaphore::new(pipeline.lanes.max(1)));
    'read: loop {
        let reading = tokio::select! {
            permit = reads.clone().acquire_owned() => Arc::new(permit.expect("never closed")),
            _ = halt.wait_for(|h| *h) => break 'read,
        };
        let Some((items, next_offsets)) = source.next_batch(pipeline.batch_max, &mut halt).await
        else {
            break;
        };
        if next_offsets.is_empty() {
            continue;
        }
        let now = connect_core::now_ms();
        record_waits(&outputs.metrics, &items, now);
        let lane_of = |key: &PartitionKey| key.1.unsigned_abs() as usize % pipeline.lanes.max(1);
        let mut parts: HashMap<usize, (Vec<Inbound>, Offsets)> = HashMap::new();
        for (key, offset) in next_offsets {
            parts
                .entry(lane_of(&key))
                .or_default()
                .1
                .insert(key, offset);
        }
        for (key, item) in items {
            parts.entry(lane_of(&key)).or_default().0.push(item);
        }
        // Lanes in a fixed order: the same partitions dispatch alike from batch to batch.
        let mut parts: Vec<_> = parts.into_iter().collect();
        parts.sort_by_key(|(lane, _)| *lane);
        for (lane_key, (items, offsets)) in parts {
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit.expect("never closed"),
                _ = halt.wait_for(|h| *h) => break 'read,
            };
            let lane = lanes.entry(lane_key).or_default();
            let (prepared, after) = oneshot::channel();
            // A span per batch (OpenTelemetry's messaging attributes): its log lines say which.
            let span = info_span!(
                "batch",
                "messaging.batch.message_count" = items.len(),
                lane = lane_key
            );
            let work = tokio::spawn({
                let batch = LaneBatch {
                    source: source.clone(),
                    step: step.clone(),
                    outputs: outputs.clone(),
                    items,
                    offsets,
                    after_prepared: lane.prepared.replace(after),
                    prepared,
                    after_done: lane.done.clone(),
                    fault_pause,
                    stop: stop.clone(),
                    _permit: permit,
                    reading: reading.clone(),
                };
                let poison = poison.clone();
                let deadline = pipeline.deadline;
                async move {
                    let work = std::panic::AssertUnwindSafe(lane_batch(batch).instrument(span))
                        .catch_unwind();
                    let ended = match tokio::time::timeout(deadline, work).await {
                        Ok(ended) => ended.unwrap_or(Ended::Failed),
                        Err(_) => {
                            counter!("connect_messaging_batches_stuck_total").increment(1);
                            error!(
                                secs = deadline.as_secs_f64(),
                                "a batch's work did not finish in MESSAGING_BATCH_DEADLINE_SECS; stopping, for a fresh process to take it over"
                            );
                            Ended::Failed
                        }
                    };
                    if ended == Ended::Failed {
                        poison.send_replace(true);
                    }
                    ended
                }
            });
            lane.done = Some(
                async move { work.await.unwrap_or(Ended::Failed) }
                    .boxed()
                    .shared(),
            );
        }
        // What a revoke and a stop wait for: the latest batch of every lane (each waits for
        // the one before it in its lane). One that did not finish poisons it.
        let tails: Vec<Done> = lanes.values().filter_map(|l| l.done.clone()).collect();
        source.in_flight().set(tokio::spawn(async move {
            let ended = futures_util::future::join_all(tails).await;
            assert!(
                !ended.contains(&Ended::Failed),
                "the work on a batch did not finish"
            );
        }));
    }
    halting.abort();
    source.close().await;
    if *poison.borrow() {
        Err(connect_kafka::group::Poisoned)
    } else {
        Ok(())
    }
}

/// The time sends waited before this batch (gateway → messaging: the Kafka hop plus the wait
/// for earlier batches), and the age of other regions' replicas.
fn record_waits(metrics: &BatchMetrics, items: &[(PartitionKey, Inbound)], now: u64) {
    for (_, item) in items {
        match item {
            Inbound::Send(s) if s.submitted_ms > 0 => {
                metrics
                    .wait
                    .record(now.saturating_sub(s.submitted_ms) as f64 / 1000.0);
            }
            // Home acceptance → here: the home's publish, MirrorMaker 2 and this read.
            Inbound::Replica(r) => {
                if let Some(m) = &r.message {
                    metrics
                        .replica_age
                        .record(now.saturating_sub(m.ts) as f64 / 1000.0);
                }
            }
            _ => {}
        }
    }
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

/// The loop in-process: batches from a script, the step over the memory ports, a delivery bus
/// that records what it was given and when (and can fail, stall or panic). Each test fails
/// when the loop's order is broken (a commit before the publish, a commit covering a batch whose
/// publish did not finish, a stop that drops the batch in flight).
#[cfg(test)]
mod loop_tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use connect_core::memory::Memory;
    use connect_core::model::{Delivery, ReplyTo, Submission};
    use connect_core::ports::PushBus;
    use connect_core::PortError;
    use connect_protocol::{ClientMsgId, ConversationId, UserId};

    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        /// A publish went through, with this many messages stored when it started.
        Published { stored: usize },
        /// A publish failed (it is retried).
        Refused,
        /// A batch's offsets were committed: the highest one.
        Committed(i64),
    }

    type Log = Arc<Mutex<Vec<Event>>>;

    fn push(log: &Log, e: Event) {
        log.lock().unwrap().push(e);
    }

    type Keyed = Vec<(PartitionKey, Inbound)>;

    struct Script {
        batches: Mutex<VecDeque<(Keyed, Offsets)>>,
        in_flight: InFlight,
        log: Log,
        /// The step's memory ports, and how many messages they held at each batch read.
        mem: std::sync::OnceLock<Arc<Memory>>,
        reads: Mutex<Vec<usize>>,
    }

    #[async_trait::async_trait]
    impl Source for Script {
        async fn next_batch(
            &self,
            _max: usize,
            stop: &mut watch::Receiver<bool>,
        ) -> Option<(Keyed, Offsets)> {
            let next = self.batches.lock().unwrap().pop_front();
            if next.is_some() {
                let stored = self.mem.get().map_or(0, |m| m.stored().len());
                self.reads.lock().unwrap().push(stored);
            }
            if next.is_none() {
                // Nothing more to read: as a consumer waits for records, until stopped.
                let _ = stop.wait_for(|s| *s).await;
            }
            next
        }

        fn in_flight(&self) -> &InFlight {
            &self.in_flight
        }

        fn commit(&self, offsets: &Offsets) {
            push(
                &self.log,
                Event::Committed(*offsets.values().max().unwrap()),
            );
        }

        async fn close(&self) {
            let _ = self.in_flight.finish().await;
        }
    }

    /// The delivery bus: waits `delay` (the first publish: `first_delay`; one answering
    /// connection `stalled`: `stall`), refuses `refusals` times, panics if told to.
    struct Recording {
        mem: Arc<Memory>,
        log: Log,
        delay: Duration,
        refusals: AtomicUsize,
        panics: bool,
        first_delay: Option<Duration>,
        calls: AtomicUsize,
        stalled: Option<(&'static str, Duration)>,
        published: Arc<Mutex<Vec<Vec<String>>>>,
    }

    #[async_trait::async_trait]
    impl DeliveryBus for Recording {
        async fn publish(&self, deliveries: &[Delivery]) -> Result<(), PortError> {
            let is_first = self.calls.fetch_add(1, Ordering::SeqCst) == 0;
            let stalled = self.stalled.filter(|(conn, _)| {
                deliveries
                    .iter()
                    .any(|d| d.reply.as_ref().is_some_and(|r| r.conn == *conn))
            });
            let delay = match (stalled, self.first_delay) {
                (Some((_, stall)), _) => stall,
                (None, Some(first)) if is_first => first,
                _ => self.delay,
            };
            tokio::time::sleep(delay).await;
            assert!(!self.panics, "a publish task failing");
            if self
                .refusals
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                push(&self.log, Event::Refused);
                return Err(PortError::unavailable("kafka", "timed out"));
            }
            let stored = self.mem.stored().len();
            let conns: Vec<String> = deliveries
                .iter()
                .filter_map(|d| d.reply.as_ref().map(|r| r.conn.clone()))
                .collect();
            push(&self.log, Event::Published { stored });
            self.published.lock().unwrap().push(conns);
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl PushBus for Recording {
        async fn publish(
            &self,
            _requests: &[connect_core::push::PushRequest],
        ) -> Result<(), PortError> {
            Ok(())
        }
    }

    fn send(n: usize) -> Inbound {
        send_as("alice", "bob", "c1", n)
    }

    /// A send of `from`'s to `to`, answered on connection `conn`.
    fn send_as(from: &str, to: &str, conn: &str, n: usize) -> Inbound {
        let sender = UserId::parse(from).unwrap();
        let peer = UserId::parse(to).unwrap();
        Inbound::Send(Submission {
            conversation: ConversationId::direct(&sender, &peer).unwrap(),
            sender,
            id: ClientMsgId::parse(format!("m{n}")).unwrap(),
            body: format!("body {n}"),
            reply: Some(ReplyTo {
                conn: conn.into(),
                slot: 0,
                region: None,
            }),
            event: None,
            submitted_ms: 0,
            device: None,
            hops: 0,
        })
    }

    fn partition(p: i32) -> PartitionKey {
        ("incoming_messages".to_owned(), p)
    }

    /// `batches` batches of two sends each on partition 0, at offsets 1, 2, ...
    fn script(batches: usize, log: &Log) -> Arc<Script> {
        let batches = (0..batches)
            .map(|b| {
                let offsets = HashMap::from([(partition(0), b as i64 + 1)]);
                let items = vec![(partition(0), send(2 * b)), (partition(0), send(2 * b + 1))];
                (items, offsets)
            })
            .collect();
        scripted(batches, log)
    }

    fn scripted(batches: VecDeque<(Keyed, Offsets)>, log: &Log) -> Arc<Script> {
        Arc::new(Script {
            batches: Mutex::new(batches),
            in_flight: InFlight::default(),
            log: log.clone(),
            mem: std::sync::OnceLock::new(),
            reads: Mutex::default(),
        })
    }

    struct Run {
        log: Log,
        stop: watch::Sender<bool>,
        ended: tokio::task::JoinHandle<Result<(), connect_kafka::group::Poisoned>>,
        /// The answering connections of each publish that went through, in order.
        published: Arc<Mutex<Vec<Vec<String>>>>,
    }

    fn start(batches: usize, bus: impl FnOnce(Arc<Memory>, Log) -> Recording) -> Run {
        let log: Log = Arc::default();
        start_with(script(batches, &log), log, bus)
    }

    fn start_with(
        script: Arc<Script>,
        log: Log,
        bus: impl FnOnce(Arc<Memory>, Log) -> Recording,
    ) -> Run {
        start_within(script, log, bus, Duration::from_secs(60))
    }

    /// As [`start_with`], with a batch deadline.
    fn start_within(
        script: Arc<Script>,
        log: Log,
        bus: impl FnOnce(Arc<Memory>, Log) -> Recording,
        deadline: Duration,
    ) -> Run {
        let pipeline = Pipeline {
            batch_max: 100,
            in_flight: 8,
            lanes: 8,
            deadline,
        };
        start_pipeline(script, log, bus, pipeline)
    }

    /// As [`start_with`], with this pipeline.
    fn start_pipeline(
        script: Arc<Script>,
        log: Log,
        bus: impl FnOnce(Arc<Memory>, Log) -> Recording,
        pipeline: Pipeline,
    ) -> Run {
        let mem = Arc::new(Memory::default());
        let _ = script.mem.set(mem.clone());
        let bus = Arc::new(bus(mem.clone(), log.clone()));
        let published = bus.published.clone();
        let (stop, stop_rx) = watch::channel(false);
        let outputs = Outputs {
            deliveries: bus.clone(),
            pushes: bus,
            regions: None,
            metrics: Arc::new(BatchMetrics::register()),
        };
        let ended = tokio::spawn(run(
            script,
            MessagingStep::new(mem.ports()),
            outputs,
            pipeline,
            None,
            stop_rx,
        ));
        Run {
            log,
            stop,
            ended,
            published,
        }
    }

    fn bus(
        delay_ms: u64,
        refusals: usize,
        panics: bool,
    ) -> impl FnOnce(Arc<Memory>, Log) -> Recording {
        move |mem, log| Recording {
            mem,
            log,
            delay: Duration::from_millis(delay_ms),
            refusals: AtomicUsize::new(refusals),
            panics,
            first_delay: None,
            calls: AtomicUsize::new(0),
            stalled: None,
            published: Arc::default(),
        }
    }

    /// The events in short ("P" published, "R" refused, "C<n>" committed through offset n),
    /// after checking that the k-th publish found the first k batches (two sends each) stored:
    /// the next batch may be prepared meanwhile, so more may be there, never fewer.
    fn shape(events: &[Event]) -> Vec<String> {
        let mut published = 0;
        events
            .iter()
            .map(|e| match e {
                Event::Published { stored } => {
                    published += 1;
                    assert!(
                        *stored >= 2 * published,
                        "publish {published} before its batch was stored: {events:?}"
                    );
                    "P".to_owned()
                }
                Event::Refused => "R".to_owned(),
                Event::Committed(n) => format!("C{n}"),
            })
            .collect()
    }

    impl Run {
        fn events(&self) -> Vec<Event> {
            self.log.lock().unwrap().clone()
        }

        /// Waits until `n` batches were committed (5 s at most), then stops the loop.
        async fn stop_after(
            self,
            n: usize,
        ) -> (Vec<Event>, Result<(), connect_kafka::group::Poisoned>) {
            for _ in 0..500 {
                let committed = self
                    .events()
                    .iter()
                    .filter(|e| matches!(e, Event::Committed(_)))
                    .count();
                if committed >= n {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.stop.send_replace(true);
            let events = self.log.clone();
            let ended = tokio::time::timeout(Duration::from_secs(5), self.ended)
                .await
                .expect("the loop stops")
                .expect("the loop does not panic");
            let events = events.lock().unwrap().clone();
            (events, ended)
        }
    }

    #[tokio::test]
    async fn each_batch_is_stored_then_published_then_committed_in_order() {
        let run = start(3, bus(0, 0, false));
        let (events, ended) = run.stop_after(3).await;
        assert_eq!(ended, Ok(()));
        assert_eq!(shape(&events), ["P", "C1", "P", "C2", "P", "C3"]);
    }

    /// Records that arrive while a batch is prepared wait for it and make the next batch
    /// together: reading ahead queued a batch per read behind the one being prepared, each
    /// paying a batch's fixed costs (a big group's lookup) for a message or two.
    #[tokio::test]
    async fn the_next_batch_is_read_once_the_one_before_is_prepared() {
        for lanes in [1, 2] {
            let log: Log = Arc::default();
            let script = script(4, &log);
            let pipeline = Pipeline {
                batch_max: 100,
                in_flight: 8,
                lanes,
                deadline: Duration::from_secs(60),
            };
            let run = start_pipeline(script.clone(), log, bus(50, 0, false), pipeline);
            let (events, ended) = run.stop_after(4).await;
            assert_eq!(ended, Ok(()));
            assert_eq!(shape(&events), ["P", "C1", "P", "C2", "P", "C3", "P", "C4"]);
            // Each batch is two sends; batch k (from 0) is read with at least the batches
            // `lanes` reads before it stored (all on one partition: one lane's work).
            let reads = script.reads.lock().unwrap().clone();
            let least: Vec<usize> = (0..4usize)
                .map(|k| 2 * k.saturating_sub(lanes - 1))
                .collect();
            assert_eq!(reads.len(), 4);
            assert!(
                reads.iter().zip(&least).all(|(got, least)| got >= least),
                "{lanes} lane(s): messages stored at each read {reads:?}, at least {least:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_batch_is_committed_only_once_its_publish_went_through() {
        let run = start(2, bus(0, 3, false));
        let (events, ended) = run.stop_after(2).await;
        assert_eq!(ended, Ok(()));
        assert_eq!(shape(&events), ["R", "R", "R", "P", "C1", "P", "C2"]);
    }

    #[tokio::test]
    async fn a_publish_that_panicked_stops_the_loop_and_nothing_after_it_is_committed() {
        let run = start(3, bus(0, 0, true));
        let ended = tokio::time::timeout(Duration::from_secs(5), run.ended)
            .await
            .expect("the loop stops on its own")
            .expect("the loop itself does not panic");
        assert_eq!(ended, Err(connect_kafka::group::Poisoned));
        let events = run.log.lock().unwrap().clone();
        assert!(
            events.is_empty(),
            "nothing published or committed: {events:?}"
        );
    }

    #[tokio::test]
    async fn a_batch_stuck_past_its_deadline_stops_the_loop_uncommitted() {
        let log: Log = Arc::default();
        let deadline = Duration::from_millis(300);
        let mut run = start_within(script(2, &log), log, bus(0, usize::MAX, false), deadline);
        let ended = tokio::time::timeout(Duration::from_secs(5), &mut run.ended)
            .await
            .expect("the loop stops on its own")
            .expect("the loop itself does not panic");
        assert_eq!(ended, Err(connect_kafka::group::Poisoned));
        let events = run.events();
        assert!(
            !events.is_empty() && events.iter().all(|e| *e == Event::Refused),
            "publishes refused until the deadline, nothing committed: {events:?}"
        );
    }

    #[tokio::test]
    async fn a_stop_finishes_the_batch_in_flight_and_commits_it() {
        let run = start(1, bus(300, 0, false));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(run.events().is_empty(), "the publish is still in flight");
        let (events, ended) = run.stop_after(0).await;
        assert_eq!(ended, Ok(()));
        assert_eq!(shape(&events), ["P", "C1"]);
    }

    #[tokio::test]
    async fn a_slow_publish_holds_the_later_batches_of_its_partition() {
        let run = start(3, |mem, log| Recording {
            first_delay: Some(Duration::from_millis(200)),
            ..bus(0, 0, false)(mem, log)
        });
        let (events, ended) = run.stop_after(3).await;
        assert_eq!(ended, Ok(()));
        assert_eq!(shape(&events), ["P", "C1", "P", "C2", "P", "C3"]);
    }

    /// Partition 0 carries alice's sends (answered on c1), partition 1 carol's (on c2); every
    /// publish answering carol takes 300 ms. Alice's batches are published and committed
    /// meanwhile, each partition's in its own order.
    #[tokio::test]
    async fn a_slow_partition_holds_no_other_partition_up() {
        let log: Log = Arc::default();
        let batches = (0..3)
            .map(|b| {
                let offsets =
                    HashMap::from([(partition(0), b as i64 + 1), (partition(1), b as i64 + 101)]);
                let items = vec![
                    (partition(0), send_as("alice", "bob", "c1", 2 * b)),
                    (partition(1), send_as("carol", "dave", "c2", 2 * b)),
                    (partition(0), send_as("alice", "bob", "c1", 2 * b + 1)),
                ];
                (items, offsets)
            })
            .collect();
        let run = start_with(scripted(batches, &log), log, |mem, log| Recording {
            stalled: Some(("c2", Duration::from_millis(300))),
            ..bus(0, 0, false)(mem, log)
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        let early: Vec<Event> = run.events();
        assert_eq!(
            early
                .iter()
                .filter(|e| matches!(e, Event::Committed(_)))
                .cloned()
                .collect::<Vec<_>>(),
            [
                Event::Committed(1),
                Event::Committed(2),
                Event::Committed(3)
            ],
            "partition 0 is done while partition 1 waits on its first publish: {early:?}"
        );
        let published = run.published.clone();
        let (events, ended) = run.stop_after(6).await;
        assert_eq!(ended, Ok(()));
        let committed: Vec<i64> = events
            .iter()
            .filter_map(|e| match e {
                Event::Committed(n) => Some(*n),
                _ => None,
            })
            .collect();
        assert_eq!(committed, [1, 2, 3, 101, 102, 103]);
        let answered: Vec<Vec<String>> = published.lock().unwrap().clone();
        let c2: Vec<&Vec<String>> = answered
            .iter()
            .filter(|c| c.contains(&"c2".into()))
            .collect();
        assert_eq!(c2.len(), 3, "{answered:?}");
        assert!(
            answered.iter().all(|c| c.iter().all(|x| x == &c[0])),
            "each publish answers one partition's sends: {answered:?}"
        );
    }
}
