//! Lambda `group-events`: triggered by the group table's DynamoDB stream. Each change (group
//! created, member added, member removed) becomes a system message of the group's conversation
//! on `incoming_messages` (`connect_core::groups::GroupChange`): messaging gives it a seq, fans
//! it out and drops the group from its membership cache. Records that could not be published
//! are reported as batch item failures, so only they are retried.
//!
//! Config: `KAFKA_*`, `KAFKA_INCOMING_TOPIC`.

use aws_lambda_events::event::dynamodb::Event;
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use connect_core::ports::SubmissionBus;
use connect_events::TriggerError;
use connect_kafka::{KafkaConfig, KafkaSubmissionBus, Topics};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use tracing::{info, warn};

async fn handle(
    bus: &KafkaSubmissionBus,
    event: LambdaEvent<Event>,
) -> Result<DynamoDbEventResponse, Error> {
    let changes = connect_events::group_changes(&event.payload);
    // Enqueue in stream order, then wait for all: per-group order is kept by the partition key.
    let pending: Vec<_> = changes
        .iter()
        .map(|(seq, c)| (seq.clone(), c, bus.submit(&c.submission())))
        .collect();
    let mut response = DynamoDbEventResponse::default();
    let mut failed = false;
    for (seq, change, publish) in pending {
        // After a failure, later records of the batch are retried too (order per group).
        // A final failure (the broker refuses the record itself) would come again forever and
        // hold the shard up: TriggerError::decide counts and logs it instead.
        let retry = match publish.await {
            _ if failed => true,
            Ok(()) => {
                info!(group = %change.group, kind = change.kind, "group event published");
                false
            }
            Err(e) => {
                warn!(cause = %e, group = %change.group, "publishing a group event failed");
                TriggerError::decide("group-events", "publishing a group event", e).is_err()
            }
        };
        if retry {
            failed = true;
            let mut failure = DynamoDbBatchItemFailure::default();
            failure.item_identifier = seq;
            response.batch_item_failures.push(failure);
        }
    }
    Ok(response)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let settings = connect_config::Settings::from_process();
    connect_service::telemetry::init_tracing(&settings);
    let bus = bus(&connect_secrets::load(settings).await?)?;
    let bus = &bus;
    lambda_runtime::run(service_fn(move |event| handle(bus, event))).await
}

/// Where system messages go: `incoming_messages`, as `settings` say.
fn bus(settings: &connect_config::Settings) -> Result<KafkaSubmissionBus, Error> {
    let kafka = KafkaConfig::from_settings(settings)?;
    let (producer, _) = kafka.create_producer("group-events")?;
    Ok(KafkaSubmissionBus::new(
        producer,
        Topics::from_settings(settings).incoming,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handler takes the function's sample event (`events/group-events.json`) on the local
    /// stack: its change is published, no record of the batch is handed back.
    #[tokio::test]
    async fn answers_its_sample_event() {
        let bus = bus(&connect_config::Settings::from_process()).expect("the function's bus");
        let event: Event = serde_json::from_str(include_str!("../../../events/group-events.json"))
            .expect("a DynamoDB stream event");
        assert!(
            !connect_events::group_changes(&event).is_empty(),
            "the sample is a change"
        );
        let answer = handle(&bus, LambdaEvent::new(event, Default::default()))
            .await
            .expect("handled");
        assert!(answer.batch_item_failures.is_empty());
    }
}
