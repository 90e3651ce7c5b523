//! `connect-setup`: creates the Kafka topics and DynamoDB tables (idempotent). Run by
//! `make up` / `make run` before the services start, by tests for private topics, and on AWS
//! by each messaging task's setup container with `SETUP_TABLES=false` (the template makes the
//! tables there).

use anyhow::Context;
use connect_dynamo::{DynamoConfig, Tables};
use connect_kafka::{KafkaConfig, Topics};
use connect_service::env;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    connect_service::telemetry::init_tracing();
    let kafka = KafkaConfig::from_env().map_err(anyhow::Error::msg)?;
    let topics = Topics::from_env();
    let incoming: i32 = env::var("INCOMING_PARTITIONS", 8)?;
    let outgoing: i32 = env::var("OUTGOING_PARTITIONS", 16)?;
    let connected: i32 = env::var("USER_CONNECTED_PARTITIONS", 1)?;
    let replication: i32 = env::var("KAFKA_REPLICATION_FACTOR", 1)?;
    connect_kafka::ensure_topics(
        &kafka,
        &[
            (&topics.incoming, incoming),
            (&topics.outgoing, outgoing),
            (&topics.user_connected, connected),
        ],
        replication,
    )
    .await
    .map_err(anyhow::Error::msg)
    .context("creating topics")?;
    println!(
        "topics {} ({incoming} partitions), {} ({outgoing} partitions), {} ({connected})",
        topics.incoming, topics.outgoing, topics.user_connected
    );
    if env::var("SETUP_TABLES", true)? {
        let dynamo =
            connect_dynamo::client(&DynamoConfig::from_env().map_err(anyhow::Error::msg)?).await;
        let tables = Tables::from_env();
        connect_dynamo::ensure_tables(&dynamo, &tables, env::var("DYNAMODB_STREAMS", false)?)
            .await
            .map_err(anyhow::Error::msg)
            .context("creating tables")?;
        println!(
            "tables {}, {}, {}",
            tables.chat, tables.sequences, tables.groups
        );
    }
    Ok(())
}
