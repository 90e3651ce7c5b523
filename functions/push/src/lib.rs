//! What the `push` and `push-later` functions share: their backends, wired once per cold start.
//!
//! Config: `REDIS_URL`, `DYNAMODB_ENDPOINT`, `PUSH_TABLE`, `INBOX_TABLE` (markers), `AWS_REGION`,
//! `CONNECT_ENV`, `CONNECT_VAPID_PRIVATE_KEY` (or `CONNECT_VAPID_PRIVATE_KEY_ARN`),
//! `CONNECT_VAPID_CONTACT`, `KAFKA_*` and `KAFKA_PUSH_LATER_TOPIC` (where held-back pushes go),
//! `PUSH_COLLAPSE_MS` (5000), `PUSH_TIMEOUT_MS` (5000), `PUSH_TTL_SECS` (43200); APNs and FCM
//! through SNS: `SNS_APNS_APPLICATION_ARN`, `SNS_FCM_APPLICATION_ARN`, `SNS_ENDPOINT` (local),
//! `SNS_TIMEOUT_MS` (3000).

use std::time::Duration;

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};
use tracing::info;

use connect_core::push::{DeliverPorts, DeliverReport};
use connect_dynamo::{DynamoInbox, DynamoPush};
use connect_kafka::{KafkaConfig, KafkaJsonTopic, Topics};
use connect_push::transport::Transports;
use connect_push::vapid::Vapid;
use connect_push::webpush::{WebPushConfig, WebPushSender};
use connect_redis::{OfflineLimits, RedisLog, RedisPushDevices, RedisPushGate, RedisRegistry};

pub struct Ctx {
    registry: DynamoPush,
    devices: RedisPushDevices,
    sessions: RedisRegistry,
    log: RedisLog,
    markers: DynamoInbox,
    gate: RedisPushGate,
    transport: Transports,
    /// `push_later`: the held-back pushes, sent when their windows close.
    later: KafkaJsonTopic,
    collapse_ms: u64,
}

impl Ctx {
    fn ports(&self) -> DeliverPorts<'_> {
        DeliverPorts {
            registry: &self.registry,
            devices: &self.devices,
            sessions: &self.sessions,
            log: &self.log,
            markers: &self.markers,
            gate: &self.gate,
            transport: &self.transport,
        }
    }

    /// Schedules what `report` held back, logs it, and answers it.
    async fn finish(&self, records: usize, report: DeliverReport) -> Result<Value, Error> {
        self.later
            .publish(report.deferred.iter().map(|d| (d.user.as_str(), d)))
            .await?;
        info!(
            records,
            sent = report.sent,
            acked = report.acked,
            live = report.live,
            collapsed = report.collapsed,
            deferred = report.deferred.len(),
            gone = report.gone,
            failed = report.failed,
            "pushed"
        );
        Ok(json!({
            "sent": report.sent, "superseded": report.superseded, "acked": report.acked,
            "live": report.live, "collapsed": report.collapsed, "deferred": report.deferred.len(),
            "unregistered": report.unregistered, "gone": report.gone, "failed": report.failed,
        }))
    }
}

/// The backends from env (after the secrets are loaded).
async fn context(settings: connect_config::Settings) -> Result<Ctx, Error> {
    let settings = connect_secrets::load(settings).await?;
    let local = !settings.production();
    let vapid = Vapid::configured(
        settings.optional("CONNECT_VAPID_PRIVATE_KEY").as_deref(),
        &settings.string("CONNECT_VAPID_CONTACT", "mailto:push@connect.invalid"),
        local,
    )?;
    let web = WebPushSender::new(
        vapid,
        WebPushConfig {
            timeout: Duration::from_millis(settings.parsed("PUSH_TIMEOUT_MS", 5000)?),
            ttl: Duration::from_secs(settings.parsed("PUSH_TTL_SECS", 43_200)?),
            allow_local: local,
        },
    )?;
    let redis_cfg = connect_redis::RedisConfig::from_settings(&settings)?;
    let redis = connect_redis::connect(&redis_cfg).await?;
    let dynamo =
        connect_dynamo::client(&connect_dynamo::DynamoConfig::from_settings(&settings)?).await;
    let tables = connect_dynamo::Tables::from_settings(&settings);
    let (producer, _) = KafkaConfig::from_settings(&settings)?.create_producer("push")?;
    let sns = connect_push::sns::SnsConfig::from_lookup(|name| settings.optional(name))?;
    let sns = match sns.enabled() {
        true => Some(connect_push::sns::Sns::new(&sns).await),
        false => None,
    };
    Ok(Ctx {
        registry: DynamoPush::new(dynamo.clone(), &tables.push),
        devices: RedisPushDevices::new(redis.clone()),
        sessions: RedisRegistry::new(redis.clone(), Duration::from_secs(60)),
        log: RedisLog::new(
            redis.clone(),
            connect_redis::connect_logs(&redis, &redis_cfg).await?,
            OfflineLimits::from_settings(&settings)?,
        ),
        markers: DynamoInbox::new(dynamo, &tables),
        gate: RedisPushGate::new(redis),
        transport: Transports { web, sns },
        later: KafkaJsonTopic::new(producer, Topics::from_settings(&settings).push_later),
        collapse_ms: settings.parsed("PUSH_COLLAPSE_MS", connect_core::push::COLLAPSE_MS)?,
    })
}

/// Which of the two functions this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `push`: `push_requests` records, sent now ([`connect_core::push::deliver`]).
    Send,
    /// `push-later`: `push_later` records, sent when their windows close
    /// ([`connect_core::push::flush`]).
    Later,
}

impl Ctx {
    async fn handle(&self, role: Role, event: &connect_events::MskEvent) -> Result<Value, Error> {
        let (n, report) = match role {
            Role::Send => {
                // Each record: one messaging batch's requests.
                let requests: Vec<connect_core::push::PushRequest> =
                    connect_events::records::<Vec<_>>(event)
                        .into_iter()
                        .flatten()
                        .collect();
                let n = requests.len();
                (
                    n,
                    connect_core::push::deliver(self.ports(), requests, self.collapse_ms).await?,
                )
            }
            Role::Later => {
                let deferred: Vec<connect_core::push::Deferred> = connect_events::records(event);
                let n = deferred.len();
                (
                    n,
                    connect_core::push::flush(self.ports(), deferred, self.collapse_ms).await?,
                )
            }
        };
        self.finish(n, report).await
    }
}

/// The whole `main` of both functions.
pub async fn run(role: Role, settings: connect_config::Settings) -> Result<(), Error> {
    connect_service::telemetry::init_tracing(&settings);
    let ctx = context(settings).await?;
    let ctx = &ctx;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<connect_events::MskEvent>| async move {
            ctx.handle(role, &event.payload).await
        },
    ))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `events/<function>.json` handled by `role`'s handler on the local stack.
    async fn answer(role: Role, function: &str) -> Value {
        let ctx = context(connect_config::Settings::from_process())
            .await
            .expect("the function's backends");
        let path = format!(
            "{}/../../events/{function}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let event: connect_events::MskEvent =
            serde_json::from_str(&std::fs::read_to_string(path).expect("the sample event"))
                .expect("an MSK event");
        ctx.handle(role, &event).await.expect("handled")
    }

    /// The push function's handler takes its sample event (`events/push.json`).
    #[tokio::test]
    async fn push_answers_its_sample_event() {
        let answer = answer(Role::Send, "push").await;
        assert_eq!(answer["failed"].as_u64(), Some(0), "{answer}");
    }

    /// The push-later function's handler takes its sample event (`events/push-later.json`).
    #[tokio::test]
    async fn push_later_answers_its_sample_event() {
        let answer = answer(Role::Later, "push-later").await;
        assert_eq!(answer["failed"].as_u64(), Some(0), "{answer}");
    }
}
