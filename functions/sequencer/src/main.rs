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
    let dynamo = connect_dynamo::client(&DynamoConfig::from_settings(&settings)?).await;
    let region = settings.string("CONNECT_REGION", "local");
    let sequences = DynamoSequences::new(
        dynamo,
        Tables::from_settings(&settings).sequences,
        region,
        16,
    );
    let sequences = &sequences;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Allocate>| async move {
        Ok::<Allocated, Error>(allocate(sequences, event.payload).await?)
    }))
    .await
}
