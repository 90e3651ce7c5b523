//! A consumer-group member that gives partitions away cleanly: [`GroupConsumer`].
//!
//! Work on a batch may still be running (publishing, committing) while the next batch is being
//! read. When a rebalance takes partitions from this member, the revoke callback (which runs
//! inside `recv`, on the reading task) first waits for that work, then commits synchronously,
//! so the next owner starts exactly after the last batch this member finished. Records of a
//! revoked partition that were read but not yet handed out are dropped from the batch being
//! gathered: the next owner reads them again from the committed offset. Rebalances are
//! cooperative (`cooperative-sticky`): only the partitions that move stop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use metrics::gauge;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::{BrokerWatch, KafkaConfig};

/// (topic, partition).
pub type PartitionKey = (String, i32);

/// Work to do before partitions are given away, after the batch in flight has finished.
pub type RevokeHook = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// The work on a batch ended without finishing (its task panicked): its offsets were never
/// committed, and no later batch's may be (they would cover its records). The member must stop
/// without committing more; the partitions' next owner replays from the last commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the work on an earlier batch did not finish (it panicked); nothing more may be committed")]
pub struct Poisoned;

/// The work on the last batch (publishing, committing), which may still run while the next
/// batch is read and prepared: whoever must not overtake it (a revoke, the next batch's publish,
/// a stop) waits for it with [`Self::finish`]. Work that did not finish (its task panicked)
/// poisons it for good.
#[derive(Default)]
pub struct InFlight {
    work: Mutex<Option<JoinHandle<()>>>,
    poisoned: AtomicBool,
}

impl InFlight {
    /// Hands over the work on the last batch. The previous work must have been awaited with
    /// [`Self::finish`].
    pub fn set(&self, work: JoinHandle<()>) {
        *self.work.lock().expect("in-flight lock") = Some(work);
    }

    fn take(&self) -> Option<JoinHandle<()>> {
        self.work.lock().expect("in-flight lock").take()
    }

    /// Notes how a batch's work ended: one that did not finish poisons for good.
    fn settled(&self, ended: Result<(), tokio::task::JoinError>) {
        if let Err(e) = ended {
            warn!(cause = %e, "the work on a batch did not finish; committing nothing more");
            self.poisoned.store(true, Ordering::SeqCst);
        }
    }

    /// Waits for the work in flight, if any; Err once any batch's work did not finish.
    pub async fn finish(&self) -> Result<(), Poisoned> {
        if let Some(work) = self.take() {
            self.settled(work.await);
        }
        if self.poisoned.load(Ordering::SeqCst) {
            Err(Poisoned)
        } else {
            Ok(())
        }
    }
}

/// What the rebalance callback and the reading task share.
#[derive(Default)]
struct Gate {
    /// The work on the last batch; finished before partitions go.
    in_flight: InFlight,
    /// Partitions revoked since the batch being gathered started.
    revoked: Mutex<Vec<PartitionKey>>,
    on_revoke: Mutex<Option<RevokeHook>>,
}

/// The consumer's context: finishes and commits in-flight work before a revoke completes.
pub struct GroupContext {
    gate: Arc<Gate>,
    group: String,
    watch: BrokerWatch,
}

impl ClientContext for GroupContext {
    fn stats_raw(&self, statistics: &[u8]) {
        self.watch.check(statistics);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            if let Rebalance::Assign(tpl) = rebalance {
                info!(partitions = ?partitions(tpl), "partitions assigned");
            }
            return;
        };
        let work = self.gate.in_flight.take();
        let hook = self.gate.on_revoke.lock().expect("gate lock").clone();
        // The callback runs inside `recv` on a runtime worker: let the runtime move its other
        // tasks away while this one waits for the batch's publish and commit, then the hook.
        // (What was stored is committed below even after a batch's work did not finish: only
        // finished batches store offsets.)
        tokio::task::block_in_place(|| {
            let rt = tokio::runtime::Handle::current();
            if let Some(work) = work {
                self.gate.in_flight.settled(rt.block_on(work));
            }
            if let Some(hook) = hook {
                rt.block_on(hook());
            }
        });
        if consumer.assignment_lost() {
            warn!(partitions = ?partitions(tpl), "partitions lost (session expired); not committing");
        } else {
            commit_stored(consumer, CommitMode::Sync);
        }
        info!(partitions = ?partitions(tpl), "partitions revoked");
        self.gate
            .revoked
            .lock()
            .expect("gate lock")
            .extend(partitions(tpl));
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, _rebalance: &Rebalance<'_>) {
        // What this member owns once the step is done: a group has settled when its members'
        // figures add up to the topic's partitions (ops dashboards; the tests wait on it).
        let owned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        gauge!("connect_kafka_assigned_partitions", "group" => self.group.clone())
            .set(owned as f64);
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            warn!(cause = %e, "offset commit failed");
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<PartitionKey> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

/// A batch: items in partition order, and the next offset to commit per partition.
pub struct Batch<T> {
    items: Vec<(PartitionKey, T)>,
    pub next_offsets: HashMap<PartitionKey, i64>,
}

impl<T> Batch<T> {
    /// True when no record was read (a read error ends a batch early).
    pub fn is_empty(&self) -> bool {
        self.next_offsets.is_empty()
    }

    /// The decoded items, in the order read.
    pub fn into_items(self) -> (Vec<T>, HashMap<PartitionKey, i64>) {
        (
            self.items.into_iter().map(|(_, t)| t).collect(),
            self.next_offsets,
        )
    }

    /// The decoded items with the partition each came from, in the order read.
    pub fn into_keyed(self) -> (Vec<(PartitionKey, T)>, HashMap<PartitionKey, i64>) {
        (self.items, self.next_offsets)
    }

    fn drop_partitions(&mut self, gone: &[PartitionKey]) {
        self.items.retain(|(p, _)| !gone.contains(p));
        self.next_offsets.retain(|p, _| !gone.contains(p));
    }
}

/// A consumer-group member reading batches; see the module docs.
pub struct GroupConsumer {
    consumer: StreamConsumer<GroupContext>,
    gate: Arc<Gate>,
}

impl GroupConsumer {
    /// Joins `group_id` and subscribes to `topics` (cooperative-sticky assignment).
    pub fn subscribe(config: &KafkaConfig, group_id: &str, topics: &[&str]) -> KafkaResult<Self> {
        let gate = Arc::new(Gate::default());
        // Offsets are stored by hand when a batch is finished ([`Self::commit`]) and committed
        // by librdkafka every `commit_interval_ms` (only what was stored: at least once).
        let consumer: StreamConsumer<GroupContext> = config
            .consumer(group_id)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "true")
            .set(
                "auto.commit.interval.ms",
                config.commit_interval_ms.max(1).to_string(),
            )
            .set("statistics.interval.ms", config.broker_check_ms.to_string())
            .create_with_context(GroupContext {
                gate: gate.clone(),
                group: group_id.to_owned(),
                watch: BrokerWatch::new(group_id, &config.brokers),
            })?;
        consumer
            .context()
            .watch
            .attach(consumer.client().native_client());
        consumer.subscribe(topics)?;
        Ok(Self { consumer, gate })
    }

    /// Waits for one record, then takes what is already fetched, up to `max` records in all.
    /// `decode` turns a record into an item (None: skipped, its offset still committed).
    /// Returns None once `stop` is set.
    pub async fn next_batch<T>(
        &self,
        max: usize,
        mut decode: impl FnMut(&BorrowedMessage<'_>) -> Option<T>,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Batch<T>> {
        let mut batch = Batch {
            items: Vec::new(),
            next_offsets: HashMap::new(),
        };
        self.gate.revoked.lock().expect("gate lock").clear();
        let first = tokio::select! {
            _ = stop.wait_for(|s| *s) => return None,
            r = self.consumer.recv() => r,
        };
        let mut next = Some(first);
        let mut read = 0;
        while let Some(record) = next.take() {
            read += 1;
            match record {
                Ok(m) => {
                    let gone = std::mem::take(&mut *self.gate.revoked.lock().expect("gate lock"));
                    if !gone.is_empty() {
                        batch.drop_partitions(&gone);
                    }
                    let key = (m.topic().to_owned(), m.partition());
                    batch.next_offsets.insert(key.clone(), m.offset() + 1);
                    if let Some(item) = decode(&m) {
                        batch.items.push((key, item));
                    }
                }
                Err(e) => {
                    warn!(cause = %e, "read failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
            }
            if read < max {
                next = self.consumer.recv().now_or_never();
            }
        }
        let gone = std::mem::take(&mut *self.gate.revoked.lock().expect("gate lock"));
        batch.drop_partitions(&gone);
        Some(batch)
    }

    /// Runs `hook` whenever partitions are revoked, after the batch in flight has finished and
    /// before the offsets are committed and the partitions move.
    pub fn on_revoke(&self, hook: RevokeHook) {
        *self.gate.on_revoke.lock().expect("gate lock") = Some(hook);
    }

    /// The work on the last batch: a revoke waits for it before giving this member's partitions
    /// away, and so must the next batch's publish ([`InFlight::finish`]).
    pub fn in_flight(&self) -> &InFlight {
        &self.gate.in_flight
    }

    /// Marks a batch done: its offsets are stored, and committed with the next periodic commit
    /// (a revoke and [`Self::close`] commit at once). A partition revoked meanwhile is skipped:
    /// its new owner replays.
    pub fn commit(&self, next_offsets: &HashMap<PartitionKey, i64>) {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next_offsets {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
                warn!(cause = %e, "bad offset");
            }
        }
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            warn!(cause = %e, "storing offsets failed (partition revoked?)");
        }
    }

    /// Commits what was stored, waiting for the broker.
    pub fn commit_sync(&self) {
        commit_stored(&self.consumer, CommitMode::Sync);
    }

    /// Before leaving the group (shutdown): finishes the batch in flight, runs the revoke hook
    /// and commits, as a revoke would.
    pub async fn close(&self) {
        // A batch that did not finish stored no offsets: committing what is stored is right.
        let _ = self.gate.in_flight.finish().await;
        let hook = self.gate.on_revoke.lock().expect("gate lock").clone();
        if let Some(hook) = hook {
            hook().await;
        }
        self.commit_sync();
    }
}

/// Commits the stored offsets; nothing stored since the last commit is not an error.
fn commit_stored<C: Consumer<GroupContext>>(consumer: &C, mode: CommitMode) {
    match consumer.commit_consumer_state(mode) {
        Ok(()) => {}
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => warn!(cause = %e, "offset commit failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_whose_work_panicked_stops_every_later_commit() {
        let in_flight = InFlight::default();
        in_flight.set(tokio::spawn(async {}));
        assert_eq!(in_flight.finish().await, Ok(()));
        in_flight.set(tokio::spawn(async {
            panic!("a publish task failing");
        }));
        assert_eq!(in_flight.finish().await, Err(Poisoned));
        // And for good: a later batch finishing fine does not clear it.
        in_flight.set(tokio::spawn(async {}));
        assert_eq!(in_flight.finish().await, Err(Poisoned));
    }
}
