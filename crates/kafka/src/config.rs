//! Client settings shared by every Kafka user in the system.

use rdkafka::config::ClientConfig;

/// How to reach and use the broker. Built by each binary from its env.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `KAFKA_BROKERS`.
    pub brokers: String,
    /// `KAFKA_FETCH_WAIT_MS`: how long the broker may hold a fetch while no data is there. Kafka
    /// answers a waiting fetch as soon as data arrives, so this bounds idle polling, not latency.
    pub fetch_wait_ms: u32,
    /// `KAFKA_FETCH_MIN_BYTES`: the broker may hold a fetch (up to the fetch wait) until this
    /// much data is there: fewer, fuller fetches under load.
    pub fetch_min_bytes: u32,
    /// `KAFKA_LINGER_MS`: how long the producer batches before sending.
    pub linger_ms: u32,
    /// `KAFKA_MESSAGE_TIMEOUT_MS`: how long a produce may take before it is failed.
    pub message_timeout_ms: u32,
    /// `KAFKA_SESSION_TIMEOUT_MS`: how long a consumer-group member may go silent before its
    /// partitions move to another member (after a crash: the hand-over delay).
    pub session_timeout_ms: u32,
    /// `KAFKA_MAX_POLL_INTERVAL_MS`: a member that does not poll for this long leaves the group;
    /// also bounds how long a rebalance waits for a member that died.
    pub max_poll_interval_ms: u32,
    /// `KAFKA_DEBUG`: librdkafka debug contexts (e.g. `cgrp,fetch`), empty for none.
    pub debug: Option<String>,
}

impl KafkaConfig {
    /// A producer: acks=all, idempotent (ordered, no repeats on retry).
    pub fn producer(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", self.linger_ms.to_string())
            .set("message.timeout.ms", self.message_timeout_ms.to_string())
            .set("socket.nagle.disable", "true");
        c
    }

    /// A consumer; offsets are committed by hand, only after the work is done.
    pub fn consumer(&self, group_id: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", self.fetch_wait_ms.to_string())
            .set("fetch.min.bytes", self.fetch_min_bytes.max(1).to_string())
            .set("fetch.error.backoff.ms", "50")
            .set("socket.nagle.disable", "true")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout_ms / 5).max(100).to_string(),
            )
            .set(
                "max.poll.interval.ms",
                self.max_poll_interval_ms
                    .max(self.session_timeout_ms)
                    .to_string(),
            );
        if let Some(d) = &self.debug {
            c.set("debug", d);
        }
        c
    }
}

impl KafkaConfig {
    /// From `KAFKA_BROKERS` (127.0.0.1:9092), `KAFKA_FETCH_WAIT_MS` (100), `KAFKA_LINGER_MS` (5),
    /// `KAFKA_MESSAGE_TIMEOUT_MS` (5000), `KAFKA_SESSION_TIMEOUT_MS` (10000),
    /// `KAFKA_MAX_POLL_INTERVAL_MS` (30000), `KAFKA_DEBUG` (none).
    pub fn from_env() -> Result<Self, String> {
        use connect_core::env::parsed as num;
        Ok(Self {
            brokers: connect_core::env::string("KAFKA_BROKERS", "127.0.0.1:9092"),
            fetch_wait_ms: num("KAFKA_FETCH_WAIT_MS", 100)?,
            linger_ms: num("KAFKA_LINGER_MS", 5)?,
            fetch_min_bytes: num("KAFKA_FETCH_MIN_BYTES", 1)?,
            message_timeout_ms: num("KAFKA_MESSAGE_TIMEOUT_MS", 5000)?,
            session_timeout_ms: num("KAFKA_SESSION_TIMEOUT_MS", 10_000)?,
            max_poll_interval_ms: num("KAFKA_MAX_POLL_INTERVAL_MS", 30_000)?,
            debug: connect_core::env::optional("KAFKA_DEBUG"),
        })
    }
}

/// Topic names: `KAFKA_INCOMING_TOPIC` (incoming_messages), `KAFKA_OUTGOING_TOPIC`
/// (outgoing_messages).
#[derive(Debug, Clone)]
pub struct Topics {
    pub incoming: String,
    pub outgoing: String,
    pub user_connected: String,
}

impl Topics {
    pub fn from_env() -> Self {
        use connect_core::env::string;
        Self {
            incoming: string("KAFKA_INCOMING_TOPIC", "incoming_messages"),
            outgoing: string("KAFKA_OUTGOING_TOPIC", "outgoing_messages"),
            user_connected: string("KAFKA_USER_CONNECTED_TOPIC", "user_connected"),
        }
    }
}
