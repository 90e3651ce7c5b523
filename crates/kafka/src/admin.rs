//! Topic creation (idempotent): used by `connect-setup` and the tests' private stacks.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::KafkaConfig;

/// Why topics could not be made (final for the setup run: it stops and says so).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("kafka admin: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("creating topic {topic}: {code}")]
    Topic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("creating ACLs: {0}")]
    Acl(String),
}

/// Creates each (topic, partitions) that does not exist yet, with `replication` copies of each
/// partition (`KAFKA_REPLICATION_FACTOR`: 1 on the local broker, 3 on MSK).
pub async fn ensure_topics(
    kafka: &KafkaConfig,
    topics: &[(&str, i32)],
    replication: i32,
) -> Result<(), AdminError> {
    let admin: AdminClient<DefaultClientContext> = kafka.client().create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, n)| NewTopic::new(name, *n, TopicReplication::Fixed(replication)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(AdminError::Topic { topic, code }),
        }
    }
    Ok(())
}

/// Where [`rewind_group`] moves a consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewindTo {
    /// The oldest record the topic still holds.
    Earliest,
    /// The first record at or after this time (milliseconds since the epoch).
    Time(i64),
}

/// Rewinds consumer group `group` on `topic`: its committed offset on every partition becomes
/// the one `to` names, so the group reads those records again when it next starts (replaying a
/// topic: runbook). Refused while the group has members (stop its consumers first: a running
/// member would commit over it). Returns (partition, new offset) for every partition.
pub fn rewind_group(
    kafka: &KafkaConfig,
    group: &str,
    topic: &str,
    to: RewindTo,
) -> Result<Vec<(i32, i64)>, String> {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};

    let timeout = Duration::from_secs(10);
    let consumer: BaseConsumer = kafka
        .consumer(group)
        .create()
        .map_err(|e| format!("creating a consumer: {e}"))?;
    let groups = consumer
        .fetch_group_list(Some(group), timeout)
        .map_err(|e| format!("describing group {group}: {e}"))?;
    if let Some(g) = groups.groups().iter().find(|g| g.name() == group) {
        if !g.members().is_empty() {
            return Err(format!(
                "group {group} has {} running member(s) (state {}): stop them first",
                g.members().len(),
                g.state()
            ));
        }
    }
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("reading {topic}'s metadata: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(format!("no topic {topic}"));
    }
    let mut offsets = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(|e| format!("{topic}/{p}: {e}"))?;
        let at = match to {
            RewindTo::Earliest => low,
            RewindTo::Time(_) => high,
        };
        offsets
            .add_partition_offset(topic, p, Offset::Offset(at))
            .map_err(|e| e.to_string())?;
    }
    if let RewindTo::Time(ms) = to {
        let mut times = TopicPartitionList::new();
        for &p in &partitions {
            times
                .add_partition_offset(topic, p, Offset::Offset(ms))
                .map_err(|e| e.to_string())?;
        }
        // A partition with nothing at or after the time keeps its end (nothing to replay).
        for e in consumer
            .offsets_for_times(times, timeout)
            .map_err(|e| format!("looking up offsets by time: {e}"))?
            .elements()
        {
            if let Offset::Offset(o) = e.offset() {
                offsets
                    .set_partition_offset(topic, e.partition(), Offset::Offset(o))
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    consumer
        .commit(&offsets, CommitMode::Sync)
        .map_err(|e| format!("committing the new offsets for {group}: {e}"))?;
    Ok(offsets
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-1)))
        .collect())
}
