//! The consume loop: gather a batch from `incoming_messages` (and, with other regions, the
//! sends they forward here, their sequenced messages and their acks), run the messaging step,
//! commit.
//! Offsets are committed only after the step has stored and published the batch (at least
//! once; the step is idempotent, so a replay answers with the original seqs). Batch N+1 is
//! prepared (deduped, sequenced, stored) while batch N is being published; batches are
//! published and committed strictly in order, and a rebalance waits for the batch in flight
//! before this process's partitions move ([`GroupConsumer`]).
//!
//! The loop reads from a [`Source`]: the consumer group in production ([`Group`]), a script of
//! batches in its tests, which run it in-process over the memory ports.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connect_core::messaging::{MessagingStep, Prepared};
use connect_core::ports::DeliveryBus;
use connect_core::regions::{Inbound, RegionBus};
use connect_kafka::codec::{decode_incoming, decode_json, decode_submission, CodecError, Incoming};
use connect_kafka::rdkafka::message::BorrowedMessage;
use connect_kafka::rdkafka::Message;
use connect_kafka::{GroupConsumer, InFlight, PartitionKey};
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

/// The offsets that mark a batch done, per partition.
pub type Offsets = HashMap<PartitionKey, i64>;

/// Where the loop's batches come from and where their offsets go.
#[async_trait::async_trait]
pub trait Source: Send + Sync + 'static {
    /// Waits for records, then takes what is there, up to `max`, with the offsets that mark
    /// them done; None once `stop` is set.
    async fn next_batch(
        &self,
        max: usize,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<(Vec<Inbound>, Offsets)>;
    /// The work on the last batch, which the next batch's publish (and a revoke) waits for.
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
    ) -> Option<(Vec<Inbound>, Offsets)> {
        let batch = self
            .consumer
            .next_batch(max, |m| decode(&self.kinds, m), stop)
            .await?;
        Some(batch.into_items())
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
    counter!("connect_messaging_seq_conflicts_total").increment(report.seq_conflicts as u64);
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
    source.commit(&next_offsets);
}

/// Runs the loop until `stop` (Ok) or until a batch's work did not finish (`Poisoned`: nothing
/// more may be committed, the caller must stop).
pub async fn run<S: Source>(
    source: Arc<S>,
    step: MessagingStep,
    outputs: Outputs,
    batch_max: usize,
    fault_pause: Option<Duration>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), connect_kafka::group::Poisoned> {
    while let Some((items, next_offsets)) = source.next_batch(batch_max, &mut stop).await {
        if next_offsets.is_empty() {
            continue;
        }
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
        if let Err(poisoned) = source.in_flight().finish().await {
            // The batch before did not finish: committing this one would cover its records.
            source.close().await;
            return Err(poisoned);
        }
        source.in_flight().set(tokio::spawn(publish_and_commit(
            outputs.clone(),
            source.clone(),
            prepared,
            next_offsets,
            fault_pause,
        )));
    }
    source.close().await;
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

    struct Script {
        batches: Mutex<VecDeque<(Vec<Inbound>, Offsets)>>,
        in_flight: InFlight,
        log: Log,
    }

    #[async_trait::async_trait]
    impl Source for Script {
        async fn next_batch(
            &self,
            _max: usize,
            stop: &mut watch::Receiver<bool>,
        ) -> Option<(Vec<Inbound>, Offsets)> {
            let next = self.batches.lock().unwrap().pop_front();
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

    /// The delivery bus: waits `delay`, refuses `refusals` times, panics if told to.
    struct Recording {
        mem: Arc<Memory>,
        log: Log,
        delay: Duration,
        refusals: AtomicUsize,
        panics: bool,
    }

    #[async_trait::async_trait]
    impl DeliveryBus for Recording {
        async fn publish(&self, _deliveries: &[Delivery]) -> Result<(), PortError> {
            tokio::time::sleep(self.delay).await;
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
            push(&self.log, Event::Published { stored });
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
        let alice = UserId::parse("alice").unwrap();
        let bob = UserId::parse("bob").unwrap();
        Inbound::Send(Submission {
            conversation: ConversationId::direct(&alice, &bob).unwrap(),
            sender: alice,
            id: ClientMsgId::parse(format!("m{n}")).unwrap(),
            body: format!("body {n}"),
            reply: Some(ReplyTo {
                conn: "c1".into(),
                slot: 0,
                region: None,
            }),
            event: None,
            submitted_ms: 0,
            device: None,
            hops: 0,
        })
    }

    /// `batches` batches of two sends each, at offsets 1, 2, ...
    fn script(batches: usize, log: &Log) -> Arc<Script> {
        let batches = (0..batches)
            .map(|b| {
                let offsets = HashMap::from([(("incoming_messages".to_owned(), 0), b as i64 + 1)]);
                (vec![send(2 * b), send(2 * b + 1)], offsets)
            })
            .collect();
        Arc::new(Script {
            batches: Mutex::new(batches),
            in_flight: InFlight::default(),
            log: log.clone(),
        })
    }

    struct Run {
        log: Log,
        stop: watch::Sender<bool>,
        ended: tokio::task::JoinHandle<Result<(), connect_kafka::group::Poisoned>>,
    }

    fn start(batches: usize, bus: impl FnOnce(Arc<Memory>, Log) -> Recording) -> Run {
        let log: Log = Arc::default();
        let mem = Arc::new(Memory::default());
        let bus = Arc::new(bus(mem.clone(), log.clone()));
        let (stop, stop_rx) = watch::channel(false);
        let outputs = Outputs {
            deliveries: bus.clone(),
            pushes: bus,
            regions: None,
        };
        let ended = tokio::spawn(run(
            script(batches, &log),
            MessagingStep::new(mem.ports()),
            outputs,
            100,
            None,
            stop_rx,
        ));
        Run { log, stop, ended }
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
    async fn a_stop_finishes_the_batch_in_flight_and_commits_it() {
        let run = start(1, bus(300, 0, false));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(run.events().is_empty(), "the publish is still in flight");
        let (events, ended) = run.stop_after(0).await;
        assert_eq!(ended, Ok(()));
        assert_eq!(shape(&events), ["P", "C1"]);
    }
}
