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

use aws_lambda_events::event::kafka::KafkaEvent;
use base64::Engine;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};
use tracing::{info, warn};

use connect_apigw::ManagementPusher;
use connect_core::model::UserConnected;
use connect_core::offline::{drain, DrainPorts};
use connect_dynamo::DynamoGroups;
use connect_redis::{OfflineLimits, RedisLog};

struct Ctx {
    log: RedisLog,
    groups: DynamoGroups,
    pusher: ManagementPusher,
    page: usize,
}

/// The `user_connected` records of an MSK event, in partition order; undecodable ones are
/// logged and skipped (they would never decode).
fn connections(event: &KafkaEvent) -> Vec<UserConnected> {
    let mut partitions: Vec<_> = event.records.iter().collect();
    partitions.sort_by(|a, b| a.0.cmp(b.0));
    partitions
        .into_iter()
        .flat_map(|(_, records)| records)
        .filter_map(|r| {
            let value = r.value.as_deref()?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value)
                .map_err(|e| warn!(cause = %e, offset = r.offset, "value is not base64; skipped"))
                .ok()?;
            serde_json::from_slice(&bytes)
                .map_err(|e| warn!(cause = %e, offset = r.offset, "not a user_connected record; skipped"))
                .ok()
        })
        .collect()
}

async fn handle(ctx: &Ctx, event: LambdaEvent<KafkaEvent>) -> Result<Value, Error> {
    let mut pushed = 0;
    let mut gone = 0;
    for connected in connections(&event.payload) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_event_decodes() {
        let event: KafkaEvent =
            serde_json::from_str(include_str!("../../../events/offline-delivery.json")).unwrap();
        let got = connections(&event);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].user.as_str(), "bob");
        assert_eq!(got[0].endpoint, "http://127.0.0.1:8081");
    }
}
