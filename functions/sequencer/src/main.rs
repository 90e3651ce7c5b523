//! Lambda `sequencer`: `{"requests":[{"conversation":"dm:a:b","count":3}, …]}` →
//! `{"ranges":[{"conversation":"dm:a:b","first":18,"last":20}, …]}` (or an `error` per bad
//! request), over `connect_dynamo::DynamoSequences`, the allocator messaging uses: one atomic
//! add per conversation, only for conversations homed in this region.
//!
//! Config: `AWS_REGION`, `DYNAMODB_ENDPOINT`, `SEQUENCE_TABLE`, `CONNECT_REGION`.

use connect_core::sequencer::{allocate, Allocate, Allocated};
use connect_dynamo::{DynamoConfig, DynamoSequences, Tables};
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let settings = connect_config::Settings::from_process();
    connect_service::telemetry::init_tracing(&settings);
    let sequences = sequences(&settings).await?;
    let sequences = &sequences;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Allocate>| async move {
        handle(sequences, event).await
    }))
    .await
}

/// The sequence table of this region, as `settings` say.
async fn sequences(settings: &connect_config::Settings) -> Result<DynamoSequences, Error> {
    let dynamo = connect_dynamo::client(&DynamoConfig::from_settings(settings)?).await;
    Ok(DynamoSequences::new(
        dynamo,
        Tables::from_settings(settings).sequences,
        settings.string("CONNECT_REGION", "local"),
        16,
    ))
}

async fn handle(
    sequences: &DynamoSequences,
    event: LambdaEvent<Allocate>,
) -> Result<Allocated, Error> {
    Ok(allocate(sequences, event.payload).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handler answers the function's sample event (`events/sequencer.json`) on the local
    /// stack: a range for each conversation asked for.
    #[tokio::test]
    async fn answers_its_sample_event() {
        let sequences = sequences(&connect_config::Settings::from_process())
            .await
            .expect("the function's table");
        let event: Allocate = serde_json::from_str(include_str!("../../../events/sequencer.json"))
            .expect("an allocation request");
        let asked = event.requests.len();
        let answer = handle(&sequences, LambdaEvent::new(event, Default::default()))
            .await
            .expect("handled");
        assert_eq!(answer.ranges.len(), asked, "{answer:?}");
        assert!(
            answer.ranges.iter().all(|r| r.first.is_some()),
            "{answer:?}"
        );
    }
}
