//! Topic creation (idempotent): used by `connect-setup` and the tests' private stacks.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::KafkaConfig;

/// Creates each (topic, partitions) that does not exist yet, with `replication` copies of each
/// partition (`KAFKA_REPLICATION_FACTOR`: 1 on the local broker, 3 on MSK).
pub async fn ensure_topics(
    kafka: &KafkaConfig,
    topics: &[(&str, i32)],
    replication: i32,
) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> =
        kafka.client().create().map_err(|e| e.to_string())?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, n)| NewTopic::new(name, *n, TopicReplication::Fixed(replication)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin
        .create_topics(&new, &opts)
        .await
        .map_err(|e| e.to_string())?
    {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("creating topic {topic}: {code}")),
        }
    }
    Ok(())
}
