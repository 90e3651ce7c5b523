//! The messaging service's configuration, from env vars (docs/configuration.md).

use std::net::SocketAddr;
use std::time::Duration;

use connect_dynamo::{DynamoConfig, Tables};
use connect_kafka::{KafkaConfig, Topics};
use connect_redis::{OfflineLimits, PresenceConfig};

#[derive(Debug, Clone)]
pub struct Config {
    pub ops_addr: SocketAddr,
    pub kafka: KafkaConfig,
    pub topics: Topics,
    pub group_id: String,
    /// `MESSAGING_BATCH_MAX` (500), `MESSAGING_BATCHES_IN_FLIGHT` (8), `MESSAGING_LANES` (1): see
    /// [`crate::consumer::Pipeline`].
    pub pipeline: crate::consumer::Pipeline,
    /// `MESSAGING_SHED_AFTER_MS`: a client send that waited longer than this since the gateway
    /// took it is answered `unavailable` unprocessed (overload; 0: never).
    pub shed_after_ms: u64,
    /// `RECEIPTS_LIVE_MAX_MEMBERS`: groups up to this size get every member's receipts live.
    pub receipts_live_max_members: usize,
    /// `MESSAGING_TYPING_MAX_AGE_MS`: a `typing` signal that waited longer than this is dropped
    /// (under load typing gives way first).
    pub typing_max_age_ms: u64,
    /// `TYPING_MAX_MEMBERS`: groups above this size get no `typing`.
    pub typing_max_members: usize,
    /// `INBOX_PLACE_STEP_MS`: a busy direct conversation's place in the inbox order moves at most
    /// once per this (its head, and so its item, with every message).
    pub inbox_place_step_ms: u64,
    pub redis: connect_redis::RedisConfig,
    pub dynamo: DynamoConfig,
    pub tables: Tables,
    /// `CONNECT_REGION` and `CONNECT_PEER_REGIONS`: with peers, sends homed elsewhere are
    /// forwarded and what this region sequences is replicated.
    pub regions: connect_core::regions::Regions,
    pub dynamo_concurrency: usize,
    /// `SEQ_BLOCK_MAX`: most seqs a busy conversation reserves ahead (0: exact allocation).
    pub seq_block_max: u64,
    /// `SEQ_BLOCK_CONVERSATIONS`: conversations tracked for blocks at once.
    pub seq_block_conversations: usize,
    pub dedupe_ttl: Duration,
    /// `DEDUPE_MAX_PER_SENDER`: the newest ids remembered per sender (older ones are dropped
    /// first), so Redis holds at most active senders × this many entries.
    pub dedupe_max_per_sender: usize,
    pub session_ttl: Duration,
    /// Presence in this region: `PRESENCE_DEBOUNCE_MS` (5000), `PRESENCE_RETAIN_DAYS` (30).
    pub presence: PresenceConfig,
    /// `MESSAGING_PRESENCE_GROUP_ID` (presence): the consumer group of the presence relay.
    pub presence_group_id: String,
    /// `PRESENCE_SWEEP_MS` (250): how often the due offline checks are swept (0: not in this
    /// process; another one sweeps).
    pub presence_sweep: Duration,
    /// `PRESENCE_SWEEP_MAX` (1000): most due checks taken per shard per sweep.
    pub presence_sweep_max: usize,
    pub offline: OfflineLimits,
    /// Membership cache: entries live this long at most (group events invalidate them sooner).
    pub group_cache_ttl: Duration,
    pub group_cache_max: usize,
    /// Fault injection for the crash test: pause after a batch is stored and published, before
    /// its offsets are committed. Refused in production.
    pub fault_pause_before_commit: Option<Duration>,
    /// The largest record messaging writes to `outgoing_messages`: a batch's deliveries for one
    /// gateway go in one record up to this size (below librdkafka's `message.max.bytes`).
    pub outgoing_record_max_bytes: usize,
    /// Fault injection: `<conversation>=<times>` fails that many chat-table writes touching the
    /// conversation, after writing the rest of their batch. Refused in production.
    pub fault_fail_writes: Option<String>,
}

impl Config {
    pub fn from_settings(settings: &connect_config::Settings) -> anyhow::Result<Self> {
        let fault: u64 = settings.parsed("MESSAGING_FAULT_PAUSE_BEFORE_COMMIT_MS", 0)?;
        let fail_writes = settings.optional("MESSAGING_FAULT_FAIL_WRITES");
        if (fault > 0 || fail_writes.is_some()) && settings.production() {
            anyhow::bail!("MESSAGING_FAULT_* settings are test switches; refused in production");
        }
        let session_ttl = Duration::from_secs(settings.parsed("SESSION_TTL_SECS", 60)?);
        let regions =
            connect_core::regions::Regions::from_settings(settings).map_err(anyhow::Error::msg)?;
        Ok(Self {
            ops_addr: settings.parsed("MESSAGING_ADDR", "127.0.0.1:8070".parse()?)?,
            kafka: KafkaConfig::from_settings(settings).map_err(anyhow::Error::msg)?,
            topics: Topics::from_settings(settings),
            group_id: settings.string("MESSAGING_GROUP_ID", "messaging"),
            pipeline: crate::consumer::Pipeline {
                batch_max: settings.parsed("MESSAGING_BATCH_MAX", 500)?,
                in_flight: settings
                    .parsed::<usize>("MESSAGING_BATCHES_IN_FLIGHT", 8)?
                    .max(1),
                // Another region's mirrored topics carry a conversation on partitions of their
                // own: with peers, one lane keeps each conversation's work in one order.
                lanes: if regions.active() {
                    1
                } else {
                    settings.parsed::<usize>("MESSAGING_LANES", 1)?.max(1)
                },
                deadline: Duration::from_secs(
                    settings.parsed("MESSAGING_BATCH_DEADLINE_SECS", 120)?,
                ),
            },
            shed_after_ms: settings.parsed("MESSAGING_SHED_AFTER_MS", 400)?,
            receipts_live_max_members: settings.parsed("RECEIPTS_LIVE_MAX_MEMBERS", 32)?,
            typing_max_age_ms: settings.parsed("MESSAGING_TYPING_MAX_AGE_MS", 2000)?,
            typing_max_members: settings.parsed("TYPING_MAX_MEMBERS", 256)?,
            inbox_place_step_ms: settings.parsed("INBOX_PLACE_STEP_MS", 1000)?,
            redis: connect_redis::RedisConfig::from_settings(settings)?,
            dynamo: DynamoConfig::from_settings(settings).map_err(anyhow::Error::msg)?,
            tables: Tables::from_settings(settings),
            regions: regions.clone(),
            dynamo_concurrency: settings.parsed("DYNAMODB_CONCURRENCY", 16)?,
            seq_block_max: settings.parsed("SEQ_BLOCK_MAX", 64)?,
            seq_block_conversations: settings.parsed("SEQ_BLOCK_CONVERSATIONS", 100_000)?,
            dedupe_ttl: Duration::from_secs(settings.parsed("DEDUPE_TTL_SECS", 7 * 24 * 3600)?),
            dedupe_max_per_sender: settings.parsed("DEDUPE_MAX_PER_SENDER", 1000)?,
            session_ttl,
            presence: PresenceConfig::from_settings(settings, &regions.local)
                .map_err(anyhow::Error::msg)?,
            presence_group_id: settings.string("MESSAGING_PRESENCE_GROUP_ID", "presence"),
            presence_sweep: Duration::from_millis(settings.parsed("PRESENCE_SWEEP_MS", 250)?),
            presence_sweep_max: settings.parsed("PRESENCE_SWEEP_MAX", 1000)?,
            offline: OfflineLimits::from_settings(settings).map_err(anyhow::Error::msg)?,
            group_cache_ttl: Duration::from_secs(settings.parsed("GROUP_CACHE_TTL_SECS", 60)?),
            group_cache_max: settings.parsed("GROUP_CACHE_MAX", 10_000)?,
            outgoing_record_max_bytes: record_max_bytes(settings.parsed(
                "MESSAGING_OUTGOING_RECORD_MAX_BYTES",
                connect_kafka::codec::RECORD_MAX_BYTES_DEFAULT,
            )?)?,
            fault_pause_before_commit: (fault > 0).then(|| Duration::from_millis(fault)),
            fault_fail_writes: fail_writes,
        })
    }
}

/// `MESSAGING_OUTGOING_RECORD_MAX_BYTES` well within what the producer and a default topic take
/// (librdkafka's `message.max.bytes` is 1,000,000; only a single delivery larger than the cap
/// makes a larger record, alone).
fn record_max_bytes(bytes: usize) -> anyhow::Result<usize> {
    const ROOM: std::ops::RangeInclusive<usize> = 1024..=512 * 1024;
    if !ROOM.contains(&bytes) {
        anyhow::bail!(
            "MESSAGING_OUTGOING_RECORD_MAX_BYTES = {bytes}: must be within {}..={}",
            ROOM.start(),
            ROOM.end()
        );
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_outgoing_record_cap_stays_within_what_kafka_takes() {
        assert_eq!(super::record_max_bytes(256 * 1024).unwrap(), 256 * 1024);
        assert!(super::record_max_bytes(0).is_err());
        assert!(super::record_max_bytes(1_000_000).is_err());
    }
}
