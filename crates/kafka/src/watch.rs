//! Keeps a long-lived client in touch with the cluster: [`BrokerWatch`], and the clients built
//! with it ([`Producer`], [`KafkaConfig::create_producer`], [`KafkaConfig::create_consumer`]).
//!
//! Since 2.10, librdkafka forgets every broker a Metadata response does not list, the bootstrap
//! servers included. A broker that was fenced by its controller (it paused or restarted; a
//! rolling upgrade) can answer such a request with the topics and no broker at all, and then
//! nothing makes the client ask again: the response counted as a success, so the re-bootstrap
//! timer is stopped, and with no broker left no metadata request is ever sent to start it
//! (librdkafka issue #5301; the fix, #5303, is not in a release up to 2.12.1, which we bundle).
//! Such a client is cut off for good: a consumer never rejoins its group, a producer times out
//! every record. The fault suite's `pause-kafka` reproduces it every time.
//!
//! [`BrokerWatch`] reads the client's statistics (every `KAFKA_BROKER_CHECK_MS`) and, when the
//! client knows no broker (neither configured nor learned), adds `bootstrap.servers` back, as
//! librdkafka's own re-bootstrap would: the client connects, reads the metadata again and
//! carries on (a consumer rejoins its group, a producer's queued records go).
//!
//! The watch also keeps a client's fatal error (librdkafka's idempotent producer can meet one,
//! e.g. a sequence desynchronized with the broker after records timed out): such a client never
//! delivers again, so a service waits on [`BrokerWatch::fatal`] and stops (non-zero, for its
//! orchestrator to start a fresh one) instead of answering `unavailable` for good.

use std::ffi::CString;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use metrics::{counter, gauge};
use rdkafka::client::{ClientContext, NativeClient};
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafka;
use serde::Deserialize;
use tracing::{error, warn};

use crate::KafkaConfig;

/// The producer every service and function uses: idempotent, watched ([`BrokerWatch`]).
pub type Producer = FutureProducer<WatchedContext>;

/// A consumer outside a group member's rebalancing ([`crate::GroupConsumer`] has its own
/// context, watched the same way).
pub type WatchedConsumer = StreamConsumer<WatchedContext>;

/// Notices, from a client's statistics, that the client knows no broker, and adds the bootstrap
/// servers back. Lives in the client's context; [`Self::attach`] gives it the client once built.
pub struct BrokerWatch {
    /// Which client, for the log and the metric (`producer`, a group id, ...).
    client: String,
    bootstrap: CString,
    native: OnceLock<Handle>,
    /// Configured and learned brokers in the last report (`usize::MAX` before the first).
    known: AtomicUsize,
    /// The client's fatal error, once it had one.
    fatal: tokio::sync::watch::Sender<Option<String>>,
}

/// The client's librdkafka handle.
struct Handle(*mut RDKafka);

// SAFETY: a librdkafka handle may be used from any thread (librdkafka locks its own state);
// `rd_kafka_brokers_add` is documented "@locality any thread", and `rd_kafka_fatal_error`
// reads an atomic and the error text under the handle's lock. Both are called from the
// client's own poll (its statistics and error callbacks), never under that lock.
unsafe impl Send for Handle {}
// SAFETY: as above; the handle is only read.
unsafe impl Sync for Handle {}

/// What a statistics report says of one broker (librdkafka's STATISTICS.md).
#[derive(Deserialize)]
struct BrokerStats {
    /// `configured` (bootstrap), `learned` (from metadata), `internal`, `logical` (a group
    /// coordinator and such, which stand for a real broker but are not one).
    source: String,
}

#[derive(Deserialize)]
struct Stats {
    #[serde(default)]
    brokers: std::collections::HashMap<String, BrokerStats>,
}

impl BrokerWatch {
    pub fn new(client: impl Into<String>, bootstrap: &str) -> Self {
        Self {
            client: client.into(),
            // A broker list has no NUL; one that did could not reach librdkafka either.
            bootstrap: CString::new(bootstrap.replace('\0', "")).unwrap_or_default(),
            native: OnceLock::new(),
            known: AtomicUsize::new(usize::MAX),
            fatal: tokio::sync::watch::Sender::new(None),
        }
    }

    /// Resolves once the client has had a fatal error (it will never work again), with
    /// librdkafka's reason.
    pub async fn fatal(&self) -> String {
        let mut rx = self.fatal.subscribe();
        // The sender lives in `self`: waiting ends only with a fatal error.
        let reason = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|r| r.clone());
        reason.unwrap_or_default()
    }

    /// The client's fatal error, if it has had one (without waiting).
    pub fn failed(&self) -> Option<String> {
        self.fatal.borrow().clone()
    }

    /// Notes an error librdkafka reported for the whole client; a fatal one (the client says
    /// so: `rd_kafka_fatal_error`) is kept.
    pub fn error(&self, error: &KafkaError, reason: &str) {
        match self.fatal_error() {
            Some(fatal) => {
                error!(client = %self.client, %fatal, "the Kafka client hit a fatal error: it will not deliver again");
                counter!("connect_kafka_fatal_errors_total", "client" => self.client.clone())
                    .increment(1);
                self.fatal.send_replace(Some(fatal));
            }
            None => error!("librdkafka: {error}: {reason}"),
        }
    }

    /// The client's fatal error, if it has had one.
    fn fatal_error(&self) -> Option<String> {
        let handle = self.native.get()?;
        let mut buf = [0 as std::ffi::c_char; 512];
        // SAFETY: called from the client's own poll (the handle is alive); librdkafka writes at
        // most `buf.len()` bytes, NUL-terminated.
        let code = unsafe {
            rdkafka::bindings::rd_kafka_fatal_error(handle.0, buf.as_mut_ptr(), buf.len())
        };
        if code == rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            return None;
        }
        // SAFETY: NUL-terminated by librdkafka (and the buffer was zeroed).
        let text = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
        Some(format!(
            "{}: {}",
            RDKafkaErrorCode::from(code),
            text.to_string_lossy()
        ))
    }

    /// How many brokers (configured or learned) the client's last report listed.
    pub fn known(&self) -> Option<usize> {
        Some(self.known.load(Ordering::Relaxed)).filter(|n| *n != usize::MAX)
    }

    /// Gives the watch its client, right after the client is built (before that, or for a
    /// watch never attached, a report is only read).
    pub fn attach(&self, client: &NativeClient) {
        let _ = self.native.set(Handle(client.ptr()));
    }

    /// Reads one statistics report; a client that knows no broker gets the bootstrap servers
    /// again. Returns whether it did.
    pub fn check(&self, report: &[u8]) -> bool {
        let Ok(stats) = serde_json::from_slice::<Stats>(report) else {
            return false;
        };
        let known = reachable(&stats);
        self.known.store(known, Ordering::Relaxed);
        gauge!("connect_kafka_known_brokers", "client" => self.client.clone()).set(known as f64);
        if known > 0 {
            return false;
        }
        let Some(handle) = self.native.get() else {
            return false;
        };
        // SAFETY: the report comes from the client's own poll, so the client (and its handle)
        // is alive; the broker list is a NUL-terminated string that outlives the call.
        let added =
            unsafe { rdkafka::bindings::rd_kafka_brokers_add(handle.0, self.bootstrap.as_ptr()) };
        warn!(client = %self.client, added,
            "the Kafka client knew no broker (a Metadata response listed none); bootstrap servers added back");
        counter!("connect_kafka_rebootstraps_total", "client" => self.client.clone()).increment(1);
        true
    }
}

/// The brokers in a report that the client can reach the cluster through.
fn reachable(stats: &Stats) -> usize {
    stats
        .brokers
        .values()
        .filter(|b| matches!(b.source.as_str(), "configured" | "learned"))
        .count()
}

/// The context of [`Producer`] and [`WatchedConsumer`]: librdkafka's logs as the default
/// context writes them, statistics to the [`BrokerWatch`].
pub struct WatchedContext {
    watch: Arc<BrokerWatch>,
}

impl ClientContext for WatchedContext {
    fn stats_raw(&self, statistics: &[u8]) {
        self.watch.check(statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.watch.error(&error, reason);
    }
}

impl ConsumerContext for WatchedContext {}

impl KafkaConfig {
    /// The producer ([`Self::producer`]'s settings) and its watch: `client` names it in logs.
    pub fn create_producer(&self, client: &str) -> KafkaResult<(Producer, Arc<BrokerWatch>)> {
        let watch = Arc::new(BrokerWatch::new(client, &self.brokers));
        Ok((self.producer_watched(watch.clone())?, watch))
    }

    fn producer_watched(&self, watch: Arc<BrokerWatch>) -> KafkaResult<Producer> {
        use rdkafka::producer::Producer as _;
        self.watched(self.producer(), watch, |p: &Producer| {
            p.client().native_client()
        })
    }

    /// A consumer ([`Self::consumer`]'s settings, in `group`), watched.
    pub fn create_consumer(&self, group: &str) -> KafkaResult<WatchedConsumer> {
        use rdkafka::consumer::Consumer as _;
        let watch = Arc::new(BrokerWatch::new(group, &self.brokers));
        self.watched(self.consumer(group), watch, |c: &WatchedConsumer| {
            c.client().native_client()
        })
    }

    /// A client of `config` whose statistics (every `broker_check_ms`) go to `watch`, which
    /// gets the client's handle (`native`) once it is built.
    fn watched<T>(
        &self,
        mut config: rdkafka::ClientConfig,
        watch: Arc<BrokerWatch>,
        native: impl Fn(&T) -> &NativeClient,
    ) -> KafkaResult<T>
    where
        T: rdkafka::config::FromClientConfigAndContext<WatchedContext>,
    {
        let client: T = config
            .set("statistics.interval.ms", self.broker_check_ms.to_string())
            .create_with_context(WatchedContext {
                watch: watch.clone(),
            })?;
        watch.attach(native(&client));
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(sources: &[(&str, &str)]) -> Vec<u8> {
        let brokers: serde_json::Map<String, serde_json::Value> = sources
            .iter()
            .map(|(name, source)| {
                (
                    (*name).to_owned(),
                    serde_json::json!({"name": name, "source": source, "state": "UP", "nodeid": 1}),
                )
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({"name": "rdkafka#producer-1", "brokers": brokers}))
            .unwrap()
    }

    #[test]
    fn a_client_with_a_learned_or_configured_broker_is_left_alone() {
        let watch = BrokerWatch::new("test", "127.0.0.1:1");
        assert!(!watch.check(&report(&[
            ("127.0.0.1:9092/1", "learned"),
            ("GroupCoordinator", "logical")
        ])));
        assert_eq!(watch.known(), Some(1));
        assert!(!watch.check(&report(&[("127.0.0.1:9092/bootstrap", "configured")])));
        // A report that cannot be read changes nothing.
        assert!(!watch.check(b"not json"));
        assert_eq!(watch.known(), Some(1));
    }

    /// A real librdkafka client in the state a Metadata response without brokers leaves it
    /// (the report says only logical brokers remain): the watch adds its bootstrap list, and
    /// the client's own next statistics list that broker beside the one it was built with.
    #[test]
    fn a_client_that_knows_no_broker_gets_the_bootstrap_servers_back() {
        let cfg = KafkaConfig {
            broker_check_ms: 50,
            ..KafkaConfig::local("127.0.0.1:1")
        };
        // The watch's list differs from the client's, so that the added broker shows.
        let watch = Arc::new(BrokerWatch::new("test", "127.0.0.1:2"));
        let _producer = cfg.producer_watched(watch.clone()).expect("a producer");
        let reported = |n: usize| {
            (0..200).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                watch.known() == Some(n)
            })
        };
        assert!(
            reported(1),
            "the client starts with its one bootstrap broker"
        );
        assert!(watch.check(&report(&[
            ("GroupCoordinator", "logical"),
            (":0/internal", "internal")
        ])));
        assert!(
            reported(2),
            "the added broker is in the client's next report"
        );
        // A watch without its client only reads.
        let unattached = BrokerWatch::new("test", "127.0.0.1:1");
        assert!(!unattached.check(&report(&[("GroupCoordinator", "logical")])));
    }

    /// librdkafka's own test hook raises a fatal error on a real producer (as an idempotent
    /// producer's desynchronized sequence would): the watch hands it to whoever waits.
    #[tokio::test]
    async fn a_fatal_error_reaches_whoever_waits_for_it() {
        let watch = Arc::new(BrokerWatch::new("test", "127.0.0.1:1"));
        let producer = KafkaConfig::local("127.0.0.1:1")
            .producer_watched(watch.clone())
            .expect("a producer");
        let waiting = tokio::spawn({
            let watch = watch.clone();
            async move { watch.fatal().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "no fatal error yet");
        assert_eq!(watch.failed(), None);
        let reason = std::ffi::CString::new("a test of the fatal path").unwrap();
        use rdkafka::producer::Producer as _;
        // SAFETY: the producer is alive; the reason outlives the call.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                producer.client().native_ptr(),
                rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            );
        }
        let reason = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the fatal error is reported")
            .unwrap();
        assert!(reason.contains("a test of the fatal path"), "{reason}");
        assert_eq!(watch.failed(), Some(reason));
    }
}
