//! `connect-event-poller`: the local stack's stand-in for a Lambda event-source mapping, on MSK
//! (`EVENT_SOURCE_KIND=kafka`, the default) or on a DynamoDB stream (`dynamodb`, see
//! [`stream`]). In Kafka mode it reads a topic as a member of its consumer group (`EVENT_GROUP_ID`), turns each
//! batch into the MSK event JSON AWS sends (records keyed `topic-partition`, key and value
//! base64), and invokes the function through the Lambda Invoke API: up to `EVENT_BATCH_MAX`
//! records per invocation, each partition's in order, the partitions side by side (as MSK's
//! trigger runs partitions concurrently)
//! (`POST {LAMBDA_ENDPOINT}/2015-03-31/functions/{name}/invocations`, which `cargo lambda watch`
//! serves locally). Offsets are committed only after the function succeeded; a failed
//! invocation is retried with backoff, as the MSK trigger does.
//!
//! Config: `EVENT_SOURCE_KIND`; for Kafka `KAFKA_*`, `EVENT_SOURCE_TOPIC` (user_connected);
//! for a stream `EVENT_SOURCE_TABLE` (connect_groups), `REDIS_URL` (checkpoints),
//! `EVENT_POLL_MS` (100), `DYNAMODB_ENDPOINT`; and for both `EVENT_FUNCTION`
//! (offline-delivery), `EVENT_GROUP_ID` (lambda-<function>), `LAMBDA_ENDPOINT`
//! (http://127.0.0.1:9000), `EVENT_BATCH_MAX` (100), `EVENT_POLL_MAX` (1000: records read per
//! round, for Kafka), `EVENT_INVOKE_TIMEOUT_SECS` (60: an
//! invocation without an answer by then is retried).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use connect_kafka::rdkafka::message::BorrowedMessage;
use connect_kafka::rdkafka::Message;
use connect_kafka::{GroupConsumer, KafkaConfig};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{info, warn};

mod stream;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn b64(bytes: Option<&[u8]>) -> Value {
    bytes.map_or(Value::Null, |b| {
        Value::String(base64::engine::general_purpose::STANDARD.encode(b))
    })
}

/// One MSK record as AWS shapes it, under its "topic-partition" key.
fn record(m: &BorrowedMessage<'_>) -> Option<(String, Value)> {
    Some((format!("{}-{}", m.topic(), m.partition()), record_json(m)))
}

fn record_json(m: &BorrowedMessage<'_>) -> Value {
    json!({
        "topic": m.topic(),
        "partition": m.partition(),
        "offset": m.offset(),
        "timestamp": m.timestamp().to_millis().unwrap_or(0),
        "timestampType": "CREATE_TIME",
        "key": b64(m.key()),
        "value": b64(m.payload()),
        "headers": [],
    })
}

/// The MSK event for a batch: `records` maps "topic-partition" to its records in order.
fn event_json(brokers: &str, batch: &BTreeMap<String, Vec<Value>>) -> String {
    json!({
        "eventSource": "aws:kafka",
        "eventSourceArn": "arn:aws:kafka:us-east-1:000000000000:cluster/connect-local/local",
        "bootstrapServers": brokers,
        "records": batch,
    })
    .to_string()
}

/// Invokes the function once; `Err` on a transport failure, a non-2xx status or a function error.
async fn invoke(
    client: &HttpClient,
    url: &str,
    event: String,
    timeout: Duration,
) -> anyhow::Result<String> {
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(event)))?;
    let res = tokio::time::timeout(timeout, client.request(req))
        .await
        .context("invocation timed out")?
        .context("invoke request")?;
    let status = res.status();
    let function_error = res.headers().get("x-amz-function-error").cloned();
    let body = tokio::time::timeout(timeout, res.into_body().collect())
        .await
        .context("invocation timed out")??
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() || function_error.is_some() {
        anyhow::bail!("function failed ({status}): {body}");
    }
    Ok(body)
}

/// Invokes one function through the Lambda Invoke API.
pub struct Invoker {
    client: HttpClient,
    url: String,
    timeout: Duration,
}

impl Invoker {
    /// Invokes until the function succeeds (backoff up to 5 s), as an event-source mapping
    /// retries; returns the function's result.
    pub async fn invoke_until_ok(&self, event: String) -> String {
        let mut backoff = Duration::from_millis(100);
        loop {
            match invoke(&self.client, &self.url, event.clone(), self.timeout).await {
                Ok(result) => return result,
                Err(e) => {
                    warn!(cause = %e, "invocation failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = connect_config::Settings::from_process();
    connect_service::telemetry::init_tracing(&settings);
    let function = settings.string("EVENT_FUNCTION", "offline-delivery");
    let endpoint = settings.string("LAMBDA_ENDPOINT", "http://127.0.0.1:9000");
    let invoker = Invoker {
        client: Client::builder(TokioExecutor::new()).build_http(),
        url: format!("{endpoint}/2015-03-31/functions/{function}/invocations"),
        timeout: Duration::from_secs(settings.parsed("EVENT_INVOKE_TIMEOUT_SECS", 60)?),
    };
    info!(url = %invoker.url, "invoking");
    match settings.string("EVENT_SOURCE_KIND", "kafka").as_str() {
        "kafka" => run_kafka(&settings, invoker, &function).await,
        "dynamodb" => {
            stream::run(
                invoker,
                settings.string("EVENT_SOURCE_TABLE", "connect_groups"),
                &connect_dynamo::DynamoConfig::from_settings(&settings)?,
                &connect_redis::RedisConfig::from_settings(&settings)?,
                Duration::from_millis(settings.parsed("EVENT_POLL_MS", 100)?),
            )
            .await
        }
        other => anyhow::bail!("EVENT_SOURCE_KIND={other:?}: expected kafka or dynamodb"),
    }
}

/// How long a round may keep the poller from polling: a member that does not poll for
/// `max.poll.interval.ms` leaves its group, and its partitions' uncommitted records are read
/// again. A round invokes one partition's records (all `poll_max` of them at worst) in order,
/// `max` per invocation, each answered within `timeout`: at least that long, plus a margin
/// (an invocation that fails and is retried past it still makes the poller leave and read
/// the round again, as a trigger's retries would).
fn round_bound_ms(configured: u32, timeout: Duration, poll_max: usize, max: usize) -> u32 {
    let invocations = poll_max.div_ceil(max.max(1)) as u128;
    let bound = invocations * timeout.as_millis() + 30_000;
    configured.max(bound.min(u128::from(u32::MAX)) as u32)
}

async fn run_kafka(
    settings: &connect_config::Settings,
    invoker: Invoker,
    function: &str,
) -> anyhow::Result<()> {
    let mut kafka = KafkaConfig::from_settings(settings).map_err(anyhow::Error::msg)?;
    let topic = settings.string("EVENT_SOURCE_TOPIC", "user_connected");
    let group = settings.string("EVENT_GROUP_ID", &format!("lambda-{function}"));
    // As an MSK trigger: up to `max` records per invocation (its BatchSize), each partition's
    // invocations in order, the partitions side by side; a poll round reads up to `poll_max`.
    let max: usize = settings.parsed::<usize>("EVENT_BATCH_MAX", 100)?.max(1);
    let poll_max: usize = settings.parsed::<usize>("EVENT_POLL_MAX", 1000)?.max(max);
    kafka.max_poll_interval_ms =
        round_bound_ms(kafka.max_poll_interval_ms, invoker.timeout, poll_max, max);

    let consumer = GroupConsumer::subscribe(&kafka, &group, &[&topic])?;
    info!(%topic, %group, "polling");

    let (stop_tx, mut stop) = watch::channel(false);
    tokio::spawn(async move {
        connect_service::shutdown_signal().await;
        stop_tx.send_replace(true);
    });
    while let Some(batch) = consumer.next_batch(poll_max, record, &mut stop).await {
        if batch.is_empty() {
            continue;
        }
        let (records, next_offsets) = batch.into_items();
        let n = records.len();
        let mut partitions: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for (key, value) in records {
            partitions.entry(key).or_default().push(value);
        }
        let invocations = partitions.into_iter().map(|(key, values)| {
            let (invoker, brokers) = (&invoker, &kafka.brokers);
            async move {
                let mut results = Vec::new();
                for chunk in values.chunks(max) {
                    let event =
                        event_json(brokers, &BTreeMap::from([(key.clone(), chunk.to_vec())]));
                    results.push(invoker.invoke_until_ok(event).await);
                }
                results
            }
        });
        let results: Vec<String> = futures_util::future::join_all(invocations)
            .await
            .into_iter()
            .flatten()
            .collect();
        info!(records = n, invocations = results.len(), results = ?results, "invoked");
        consumer.commit(&next_offsets);
    }
    consumer.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_of_slow_invocations_does_not_outlast_the_poll_interval() {
        // 1,000 records on one partition, 100 per invocation, 60 s each: ten in a row.
        let bound = round_bound_ms(30_000, Duration::from_secs(60), 1000, 100);
        assert_eq!(bound, 630_000);
        // A longer configured interval stands; a partial last invocation counts.
        assert_eq!(
            round_bound_ms(900_000, Duration::from_secs(60), 1000, 100),
            900_000
        );
        assert_eq!(round_bound_ms(0, Duration::from_secs(1), 101, 100), 32_000);
    }
}
