//! Lambda `offline-delivery`: MSK trigger on `user_connected`. For each record, pushes the
//! device's backlog (every conversation whose log runs past the device's cursor: its direct
//! conversations from its inbox, its groups from the group table's `by_user` index) to the new
//! connection with `PostToConnection` (through the gateway's management API, or a real API
//! Gateway's), then `caught_up`. Only acks move cursors; a gone connection (410) leaves the
//! backlog for the next one. A backend failure fails the invocation, so the batch is retried
//! (pushing again is harmless: clients drop repeats).
//!
//! Config: `REDIS_URL`, `DYNAMODB_ENDPOINT` / `GROUP_TABLE` (as the other functions),
//! `AWS_REGION`, `CONNECT_INTERNAL_TOKEN`, `CONNECT_ENV`, `OFFLINE_DRAIN_PAGE` (entries per
//! log read, 200).

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};
use tracing::info;

use connect_apigw::ManagementPusher;
use connect_core::offline::{drain, DrainPorts};
use connect_dynamo::DynamoGroups;
use connect_redis::{OfflineLimits, RedisLog};

struct Ctx {
    log: RedisLog,
    groups: DynamoGroups,
    pusher: ManagementPusher,
    page: usize,
}

async fn handle(ctx: &Ctx, event: LambdaEvent<connect_events::MskEvent>) -> Result<Value, Error> {
    let mut pushed = 0;
    let mut gone = 0;
    for connected in connect_events::user_connected(&event.payload) {
        let ports = DrainPorts {
            log: &ctx.log,
            groups: &ctx.groups,
            pusher: &ctx.pusher,
        };
        let report = drain(ports, &connected, ctx.page).await?;
        info!(user = %connected.user, conn = %connected.conn, pushed = report.pushed, gone = report.gone, "drained");
        pushed += report.pushed;
        gone += usize::from(report.gone);
    }
    Ok(json!({ "pushed": pushed, "gone": gone }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    connect_service::telemetry::init_tracing();
    connect_secrets::load().await?;
    let env = connect_service::env::var;
    let production = connect_service::env::production();
    let redis = connect_redis::connect(&connect_service::env::string(
        "REDIS_URL",
        "redis://127.0.0.1:6380",
    ))
    .await?;
    let dynamo = connect_dynamo::client(&connect_dynamo::DynamoConfig::from_env()?).await;
    let ctx = Ctx {
        log: RedisLog::new(redis, OfflineLimits::from_env()?),
        groups: DynamoGroups::new(dynamo, connect_dynamo::Tables::from_env().groups),
        pusher: ManagementPusher::new(
            &connect_service::env::string("AWS_REGION", "us-east-1"),
            production,
            Some(connect_core::auth::internal_token(production)?),
        )
        .await,
        page: env("OFFLINE_DRAIN_PAGE", 200)?,
    };
    let ctx = &ctx;
    lambda_runtime::run(service_fn(move |event| handle(ctx, event))).await
}
