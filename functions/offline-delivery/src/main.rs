//! Lambda `offline-delivery`: MSK trigger on `user_connected`. For each record, pushes the
//! device's backlog (every conversation whose log runs past the device's cursor: its direct
//! conversations from its inbox, its groups from the group table's `by_user` index) to the new
//! connection with `PostToConnection` (through the gateway's management API, or a real API
//! Gateway's), then `caught_up`. Only acks move cursors; a gone connection (410) leaves the
//! backlog for the next one.
//!
//! Bounded and fair (`connect_core::offline::drain_batch`): a batch's records drain side by side
//! for at most `OFFLINE_DRAIN_BUDGET_MS`; a drain still going then, and a drain that failed,
//! are published to `user_connected` again (behind every record already there) to continue. The
//! invocation fails only if that publish fails (then the batch is retried: pushing again is
//! harmless, clients drop repeats).
//!
//! A record is drained only to a connection its user has in the session registry (the same
//! connection id, gateway, endpoint and device as the gateway registered before publishing
//! it): a record written by anyone else, or for a connection that has closed, pushes nothing
//! (`refused`).
//!
//! Where a conversation's log falls short (evicted under memory pressure, expired, trimmed) the
//! backlog is read from history; a device is handed at most the newest `OFFLINE_LOG_MAX` of a
//! conversation.
//!
//! Config: `REDIS_URL`, `REDIS_LOG_URL`, `DYNAMODB_ENDPOINT` / `GROUP_TABLE` / `CHAT_TABLE` /
//! `INBOX_TABLE` (as the other functions),
//! `AWS_REGION`, `CONNECT_INTERNAL_TOKEN`, `CONNECT_ENV`, `KAFKA_*` and
//! `KAFKA_USER_CONNECTED_TOPIC` (where continuations go), `OFFLINE_DRAIN_PAGE` (entries per log
//! read, 200), `OFFLINE_DRAIN_BUDGET_MS` (250), `OFFLINE_DRAIN_CONCURRENCY` (16),
//! `OFFLINE_DRAIN_ATTEMPTS` (5).

use connect_events::TriggerError;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};
use tracing::info;

use connect_apigw::ManagementPusher;
use connect_core::offline::{drain_batch, BatchLimits, DrainPorts};
use connect_core::ports::ConnectionEvents;
use connect_dynamo::{DynamoChatStore, DynamoGroups, DynamoInbox};
use connect_kafka::{KafkaConfig, KafkaConnectionEvents, Topics};
use connect_redis::{OfflineLimits, RedisLog, RedisRegistry};

struct Ctx {
    log: RedisLog,
    groups: DynamoGroups,
    /// Where a log falls short (evicted, expired, trimmed).
    history: DynamoChatStore,
    /// Groups' heads.
    index: DynamoInbox,
    /// The session registry: a record is drained only to a live session of its user.
    sessions: RedisRegistry,
    pusher: ManagementPusher,
    /// Where continuations and retries go: `user_connected`.
    again: KafkaConnectionEvents,
    limits: BatchLimits,
}

async fn handle(
    ctx: &Ctx,
    event: LambdaEvent<connect_events::MskEvent>,
) -> Result<Value, TriggerError> {
    let records = connect_events::user_connected(&event.payload);
    let ports = DrainPorts {
        log: &ctx.log,
        groups: &ctx.groups,
        pusher: &ctx.pusher,
        history: &ctx.history,
        index: &ctx.index,
        sessions: &ctx.sessions,
    };
    let n = records.len();
    let report = drain_batch(ports, records, ctx.limits).await;
    let pending: Vec<_> = report
        .again
        .iter()
        .map(|r| ctx.again.connected(r))
        .collect();
    // A continuation not published: retryable fails the batch (it drains again, harmless);
    // a final one (the broker refuses the record itself) would fail it forever.
    for published in futures_util::future::join_all(pending).await {
        if let Err(e) = published {
            TriggerError::decide("offline-delivery", "publishing a continuation", e)?;
        }
    }
    info!(
        records = n,
        pushed = report.pushed,
        from_history = report.from_history,
        gone = report.gone,
        again = report.again.len(),
        dropped = report.dropped,
        refused = report.refused,
        "drained"
    );
    Ok(json!({
        "pushed": report.pushed,
        "from_history": report.from_history,
        "gone": report.gone,
        "again": report.again.len(),
        "dropped": report.dropped,
        "refused": report.refused,
    }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let settings = connect_config::Settings::from_process();
    connect_service::telemetry::init_tracing(&settings);
    let ctx = context(connect_secrets::load(settings).await?).await?;
    let ctx = &ctx;
    lambda_runtime::run(service_fn(move |event| handle(ctx, event))).await
}

/// The backends and bounds from `settings` (the secrets loaded).
async fn context(settings: connect_config::Settings) -> Result<Ctx, Error> {
    let production = settings.production();
    let redis_cfg = connect_redis::RedisConfig::from_settings(&settings)?;
    let redis = connect_redis::connect(&redis_cfg).await?;
    let dynamo =
        connect_dynamo::client(&connect_dynamo::DynamoConfig::from_settings(&settings)?).await;
    let tables = connect_dynamo::Tables::from_settings(&settings);
    let offline = OfflineLimits::from_settings(&settings)?;
    let (producer, _) =
        KafkaConfig::from_settings(&settings)?.create_producer("offline-delivery")?;
    let ctx = Ctx {
        log: RedisLog::new(
            redis.clone(),
            connect_redis::connect_logs(&redis, &redis_cfg).await?,
            offline,
        ),
        groups: DynamoGroups::new(dynamo.clone(), &tables.groups),
        history: DynamoChatStore::new(dynamo.clone(), &tables.chat, 1),
        index: DynamoInbox::new(dynamo, &tables),
        // Only read here (the TTL is the gateways' to set).
        sessions: RedisRegistry::new(redis.clone(), std::time::Duration::from_secs(60)),
        pusher: ManagementPusher::new(
            &settings.string("AWS_REGION", "us-east-1"),
            production,
            Some(connect_core::auth::internal_token(&settings)?),
        )
        .await,
        again: KafkaConnectionEvents::new(
            producer,
            Topics::from_settings(&settings).user_connected,
        ),
        limits: BatchLimits {
            page: settings.parsed("OFFLINE_DRAIN_PAGE", 200)?,
            budget: std::time::Duration::from_millis(
                settings.parsed("OFFLINE_DRAIN_BUDGET_MS", 250)?,
            ),
            concurrency: settings.parsed("OFFLINE_DRAIN_CONCURRENCY", 16)?,
            attempts: settings.parsed("OFFLINE_DRAIN_ATTEMPTS", 5)?,
            log_max: offline.log_max,
        },
    };
    Ok(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handler takes the function's sample event (`events/offline-delivery.json`) on the
    /// local stack: its record names a connection nobody has, so it is refused, nothing pushed.
    #[tokio::test]
    async fn answers_its_sample_event() {
        let ctx = context(connect_config::Settings::from_process())
            .await
            .expect("the function's backends");
        let event: connect_events::MskEvent =
            serde_json::from_str(include_str!("../../../events/offline-delivery.json"))
                .expect("an MSK event");
        let answer = handle(&ctx, LambdaEvent::new(event, Default::default()))
            .await
            .expect("handled");
        assert_eq!(
            (answer["refused"].as_u64(), answer["pushed"].as_u64()),
            (Some(1), Some(0)),
            "{answer}"
        );
    }
}
