//! DynamoDB stream source: the local stand-in of a Lambda event-source mapping on a table's
//! stream. Reads every shard of the table's latest stream (checkpointed per shard in Redis,
//! `stream-poller:<table>:<shard>` = last sequence number handed over), turns each batch into
//! the DynamoDB event JSON AWS sends, and honours the function's partial-batch response
//! (`batchItemFailures`): the batch is retried from the first failed record.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use aws_sdk_dynamodbstreams::types::{AttributeValue, Record, ShardIteratorType};
use base64::Engine;
use redis::AsyncCommands;
use serde_json::{json, Map, Value};
use tracing::{info, warn};

use crate::Invoker;

/// DynamoDB JSON of one attribute value.
fn attr_json(v: &AttributeValue) -> Value {
    let b64 = |b: &aws_sdk_dynamodbstreams::primitives::Blob| {
        Value::String(base64::engine::general_purpose::STANDARD.encode(b.as_ref()))
    };
    match v {
        AttributeValue::S(s) => json!({ "S": s }),
        AttributeValue::N(n) => json!({ "N": n }),
        AttributeValue::Bool(b) => json!({ "BOOL": b }),
        AttributeValue::Null(_) => json!({ "NULL": true }),
        AttributeValue::Ss(v) => json!({ "SS": v }),
        AttributeValue::Ns(v) => json!({ "NS": v }),
        AttributeValue::B(b) => json!({ "B": b64(b) }),
        AttributeValue::Bs(v) => json!({ "BS": v.iter().map(b64).collect::<Vec<_>>() }),
        AttributeValue::L(v) => json!({ "L": v.iter().map(attr_json).collect::<Vec<_>>() }),
        AttributeValue::M(m) => json!({ "M": image(m) }),
        _ => Value::Null,
    }
}

fn image(m: &HashMap<String, AttributeValue>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), attr_json(v)))
            .collect::<Map<_, _>>(),
    )
}

/// One stream record as AWS shapes it in a Lambda event.
fn record_json(r: &Record, arn: &str) -> Value {
    let mut dynamodb = Map::new();
    if let Some(d) = r.dynamodb() {
        if let Some(t) = d.approximate_creation_date_time() {
            dynamodb.insert("ApproximateCreationDateTime".into(), json!(t.secs()));
        }
        if let Some(k) = d.keys() {
            dynamodb.insert("Keys".into(), image(k));
        }
        if let Some(i) = d.new_image() {
            dynamodb.insert("NewImage".into(), image(i));
        }
        if let Some(i) = d.old_image() {
            dynamodb.insert("OldImage".into(), image(i));
        }
        dynamodb.insert("SequenceNumber".into(), json!(d.sequence_number()));
        dynamodb.insert("SizeBytes".into(), json!(d.size_bytes()));
        dynamodb.insert(
            "StreamViewType".into(),
            json!(d.stream_view_type().map(|v| v.as_str())),
        );
    }
    json!({
        "eventID": r.event_id(),
        "eventName": r.event_name().map(|n| n.as_str()),
        "eventVersion": r.event_version(),
        "eventSource": r.event_source().unwrap_or("aws:dynamodb"),
        "awsRegion": r.aws_region(),
        "dynamodb": dynamodb,
        "eventSourceARN": arn,
    })
}

fn sequence_of(r: &Record) -> Option<&str> {
    r.dynamodb()?.sequence_number()
}

/// Hands `records` to the function until it takes them all: after a partial failure, again from
/// the first failed record.
async fn hand_over(invoker: &Invoker, records: &[Record], arn: &str) {
    let mut start = 0;
    let mut backoff = Duration::from_millis(100);
    while start < records.len() {
        let batch: Vec<Value> = records[start..]
            .iter()
            .map(|r| record_json(r, arn))
            .collect();
        let event = json!({ "Records": batch }).to_string();
        let result = invoker.invoke_until_ok(event).await;
        let failed: Option<String> = serde_json::from_str::<Value>(&result).ok().and_then(|v| {
            v["batchItemFailures"].as_array()?.first()?["itemIdentifier"]
                .as_str()
                .map(str::to_owned)
        });
        match failed.and_then(|id| {
            records
                .iter()
                .position(|r| sequence_of(r) == Some(id.as_str()))
        }) {
            Some(at) => {
                warn!(
                    from = at,
                    "function reported failed records; retrying from the first"
                );
                start = at.max(start);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            None => {
                info!(records = records.len() - start, %result, "invoked");
                return;
            }
        }
    }
}

pub async fn run(
    invoker: Invoker,
    table: String,
    dynamo: &connect_dynamo::DynamoConfig,
    redis: &connect_redis::RedisConfig,
    poll: Duration,
) -> anyhow::Result<()> {
    let sdk = connect_dynamo::sdk_config(dynamo).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let streams = aws_sdk_dynamodbstreams::Client::new(&sdk);
    let mut redis = connect_redis::connect(redis).await?;
    let stop = connect_service::shutdown_signal();
    tokio::pin!(stop);
    // As Lambda's event source mapping, the poller outlives a backend's hiccup: each failed call
    // is logged and tried again (a restarted Redis, a frozen DynamoDB), never the end of it.
    let described = loop {
        match dynamo.describe_table().table_name(&table).send().await {
            Ok(d) => break d,
            Err(e) => {
                warn!(cause = %aws_sdk_dynamodb::error::DisplayErrorContext(e), %table, "describe table failed; trying again");
                tokio::select! {
                    () = &mut stop => return Ok(()),
                    () = tokio::time::sleep(poll.max(Duration::from_secs(1))) => {}
                }
            }
        }
    };
    let arn = described
        .table()
        .and_then(|t| t.latest_stream_arn())
        .with_context(|| format!("table {table} has no stream"))?
        .to_owned();
    info!(%table, %arn, "polling the stream");
    let mut iterators: HashMap<String, Option<String>> = HashMap::new();
    let mut closed: HashSet<String> = HashSet::new();
    let mut last_describe = tokio::time::Instant::now() - Duration::from_secs(60);
    loop {
        if last_describe.elapsed() > Duration::from_secs(5) {
            last_describe = tokio::time::Instant::now();
            let mut start = None;
            loop {
                let d = match streams
                    .describe_stream()
                    .stream_arn(&arn)
                    .set_exclusive_start_shard_id(start)
                    .send()
                    .await
                {
                    Ok(d) => d,
                    Err(e) => {
                        // The shards known so far are polled meanwhile.
                        warn!(cause = %aws_sdk_dynamodbstreams::error::DisplayErrorContext(e), "describe stream failed; trying again");
                        break;
                    }
                };
                let Some(desc) = d.stream_description() else {
                    break;
                };
                for shard in desc.shards() {
                    if let Some(id) = shard.shard_id() {
                        if !closed.contains(id) {
                            iterators.entry(id.to_owned()).or_insert(None);
                        }
                    }
                }
                start = desc.last_evaluated_shard_id().map(str::to_owned);
                if start.is_none() {
                    break;
                }
            }
        }
        let mut any = false;
        let shards: Vec<String> = iterators.keys().cloned().collect();
        for shard in shards {
            let key = format!("stream-poller:{table}:{shard}");
            let iterator = match iterators.get(&shard).cloned().flatten() {
                Some(it) => it,
                None => {
                    let after: Option<String> = match redis.get(&key).await {
                        Ok(after) => after,
                        Err(e) => {
                            warn!(cause = %e, %shard, "reading the checkpoint failed; trying again");
                            continue;
                        }
                    };
                    let req = streams
                        .get_shard_iterator()
                        .stream_arn(&arn)
                        .shard_id(&shard);
                    let req = match after {
                        Some(seq) => req
                            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                            .sequence_number(seq),
                        None => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
                    };
                    match req.send().await {
                        Ok(out) => match out.shard_iterator() {
                            Some(it) => it.to_owned(),
                            None => continue,
                        },
                        Err(e) => {
                            warn!(cause = %aws_sdk_dynamodbstreams::error::DisplayErrorContext(e), %shard, "no iterator");
                            continue;
                        }
                    }
                }
            };
            let out = match streams
                .get_records()
                .shard_iterator(iterator)
                .limit(100)
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    warn!(cause = %aws_sdk_dynamodbstreams::error::DisplayErrorContext(e), %shard, "get records failed; new iterator");
                    iterators.insert(shard, None);
                    continue;
                }
            };
            let records = out.records();
            if !records.is_empty() {
                any = true;
                hand_over(&invoker, records, &arn).await;
                if let Some(seq) = records.last().and_then(sequence_of) {
                    // Not written: a restart hands these records over again (at least once, as
                    // the trigger does); the iterator in hand goes on from here.
                    if let Err(e) = redis.set::<_, _, ()>(&key, seq).await {
                        warn!(cause = %e, %shard, "writing the checkpoint failed");
                    }
                }
            }
            match out.next_shard_iterator() {
                Some(next) => {
                    iterators.insert(shard, Some(next.to_owned()));
                }
                None => {
                    iterators.remove(&shard);
                    closed.insert(shard);
                }
            }
        }
        if !any {
            tokio::select! {
                () = &mut stop => return Ok(()),
                () = tokio::time::sleep(poll) => {}
            }
        }
    }
}
