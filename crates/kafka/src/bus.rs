//! The core's bus ports over the idempotent, watched [`Producer`].

use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use connect_core::model::{Delivery, MarkerUpdate, Submission, TypingUpdate, UserConnected};
use connect_core::ports::{ConnectionEvents, DeliveryBus, PendingPublish, PushBus, SubmissionBus};
use connect_core::regions::{forward_topic, AckBus, AckRecord, RegionBus, Replica};
use connect_core::PortError;

use crate::codec::{
    batch_headers, delivery_records, encode_json, encode_submission, new_traceparent, KIND_HEADER,
    MARKER_KIND, TRACE_HEADER, TYPING_KIND,
};

use crate::Producer;

const BACKEND: &str = "kafka";

/// A failed produce as a port error: final when the record itself is refused (too large,
/// invalid, a topic that cannot be or may not be written), so that retrying cannot help;
/// retryable otherwise (a timeout, a broker away, a leader moving, a full queue).
pub fn produce_error(e: &KafkaError) -> PortError {
    use RDKafkaErrorCode::*;
    match e.rdkafka_error_code() {
        Some(
            MessageSizeTooLarge
            | MessageBatchTooLarge
            | InvalidMessage
            | InvalidMessageSize
            | InvalidRecord
            | BadMessage
            | InvalidTopic
            | TopicAuthorizationFailed
            | InvalidArgument,
        ) => PortError::rejected(BACKEND, e),
        _ => PortError::unavailable(BACKEND, e),
    }
}

/// Publishes submissions to `incoming_messages`, key = conversation id.
#[derive(Clone)]
pub struct KafkaSubmissionBus {
    producer: Producer,
    topic: String,
}

impl KafkaSubmissionBus {
    pub fn new(producer: Producer, topic: impl Into<String>) -> Self {
        Self {
            producer,
            topic: topic.into(),
        }
    }
}

/// Enqueues one record now; the future resolves when the broker has it.
fn publish(producer: &Producer, topic: &str, key: &str, payload: &[u8]) -> PendingPublish {
    enqueue(producer, FutureRecord::to(topic).key(key).payload(payload))
}

fn enqueue(producer: &Producer, record: FutureRecord<'_, str, [u8]>) -> PendingPublish {
    match producer.send_result(record) {
        Ok(fut) => Box::pin(async move {
            match fut.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(produce_error(&e)),
                Err(_) => Err(PortError::unavailable(BACKEND, "producer closed")),
            }
        }),
        Err((e, _)) => Box::pin(std::future::ready(Err(produce_error(&e)))),
    }
}

impl KafkaSubmissionBus {
    /// A record of `incoming_messages` that is not a send: its `kind` header says what it is.
    fn kind_record(&self, kind: &str, key: &str, payload: &[u8]) -> PendingPublish {
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: KIND_HEADER,
            value: Some(kind),
        });
        let record = FutureRecord::to(&self.topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        enqueue(&self.producer, record)
    }
}

impl SubmissionBus for KafkaSubmissionBus {
    /// The record carries a fresh trace (`traceparent`), logged here with the send's ids.
    fn submit(&self, submission: &Submission) -> PendingPublish {
        let key = submission.conversation.to_string();
        let (traceparent, trace_id) = new_traceparent();
        tracing::debug!(target: "connect::trace", trace_id = %trace_id, conversation = %key,
            message.id = %submission.id, sender = %submission.sender, "send published");
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: TRACE_HEADER,
            value: Some(&traceparent),
        });
        let payload = encode_submission(submission);
        let record = FutureRecord::to(&self.topic)
            .key(key.as_str())
            .payload(&payload[..])
            .headers(headers);
        enqueue(&self.producer, record)
    }

    fn mark(&self, update: &MarkerUpdate) -> PendingPublish {
        self.kind_record(
            MARKER_KIND,
            &update.conversation.to_string(),
            &encode_json(update),
        )
    }

    fn typing(&self, update: &TypingUpdate) -> PendingPublish {
        self.kind_record(
            TYPING_KIND,
            &update.conversation.to_string(),
            &encode_json(update),
        )
    }
}

/// Publishes `user_connected` records (key = user, value = JSON).
#[derive(Clone)]
pub struct KafkaConnectionEvents {
    producer: Producer,
    topic: String,
}

impl KafkaConnectionEvents {
    pub fn new(producer: Producer, topic: impl Into<String>) -> Self {
        Self {
            producer,
            topic: topic.into(),
        }
    }
}

impl ConnectionEvents for KafkaConnectionEvents {
    fn connected(&self, event: &UserConnected) -> PendingPublish {
        let payload = serde_json::to_vec(event).unwrap_or_default();
        publish(&self.producer, &self.topic, event.user.as_str(), &payload)
    }
}

/// Publishes deliveries to `outgoing_messages`: one record per slot (gateway) and call, or a few
/// when they would pass `record_max_bytes` ([`delivery_records`]), on the slot's partition.
#[derive(Clone)]
pub struct KafkaDeliveryBus {
    producer: Producer,
    topic: String,
    record_max_bytes: usize,
    queue_timeout: Duration,
    /// `connect_messaging_records_out_total`: records the broker acked.
    records_out: metrics::Counter,
}

impl KafkaDeliveryBus {
    /// `record_max_bytes` must stay under the producer's and the topic's largest record
    /// (librdkafka's `message.max.bytes`, 1,000,000 by default): a record is cut before a
    /// delivery that would take it past this size.
    pub fn new(producer: Producer, topic: impl Into<String>, record_max_bytes: usize) -> Self {
        Self {
            producer,
            topic: topic.into(),
            record_max_bytes,
            queue_timeout: Duration::from_secs(5),
            records_out: metrics::counter!("connect_messaging_records_out_total"),
        }
    }
}

#[async_trait]
impl DeliveryBus for KafkaDeliveryBus {
    async fn publish(&self, deliveries: &[Delivery]) -> Result<(), PortError> {
        let records = delivery_records(deliveries, self.record_max_bytes);
        // Enqueued one after the other, waiting for room when the queue is full: a slot's
        // records reach its partition in this order (the producer is idempotent). Then awaited
        // together.
        let deadline = tokio::time::Instant::now() + self.queue_timeout;
        let mut sends = Vec::with_capacity(records.len());
        for (slot, value) in &records {
            let mut record: FutureRecord<'_, (), Vec<u8>> = FutureRecord::to(&self.topic)
                .partition(*slot as i32)
                .headers(batch_headers())
                .payload(value);
            let delivery = loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => break delivery,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if tokio::time::Instant::now() < deadline =>
                    {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(produce_error(&e)),
                }
            };
            sends.push(delivery);
        }
        for result in join_all(sends).await {
            match result {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(produce_error(&e)),
                Err(_) => return Err(PortError::unavailable(BACKEND, "producer closed")),
            }
        }
        self.records_out.increment(records.len() as u64);
        Ok(())
    }
}

/// Messaging → the other regions: forwarded sends on `forward_<home>` and sequenced messages on
/// `sequenced_messages` (key = conversation, so one conversation stays one ordered stream
/// through MirrorMaker 2, which keeps partitions).
#[derive(Clone)]
pub struct KafkaRegionBus {
    producer: Producer,
    sequenced: String,
    incoming: String,
}

impl KafkaRegionBus {
    pub fn new(
        producer: Producer,
        sequenced: impl Into<String>,
        incoming: impl Into<String>,
    ) -> Self {
        Self {
            producer,
            sequenced: sequenced.into(),
            incoming: incoming.into(),
        }
    }
}

/// Publishes every (topic, key, payload) in order and waits for all.
async fn publish_all(
    producer: &Producer,
    records: impl Iterator<Item = (String, String, Vec<u8>)>,
) -> Result<(), PortError> {
    let pending: Vec<PendingPublish> = records
        .map(|(topic, key, payload)| publish(producer, &topic, &key, &payload))
        .collect();
    for result in join_all(pending).await {
        result?;
    }
    Ok(())
}

#[async_trait]
impl RegionBus for KafkaRegionBus {
    async fn take_in(&self, sends: &[Submission]) -> Result<(), PortError> {
        publish_all(
            &self.producer,
            sends.iter().map(|s| {
                (
                    self.incoming.clone(),
                    s.conversation.to_string(),
                    encode_submission(s),
                )
            }),
        )
        .await
    }

    async fn forward(&self, sends: &[(String, Submission)]) -> Result<(), PortError> {
        publish_all(
            &self.producer,
            sends.iter().map(|(home, s)| {
                (
                    forward_topic(home),
                    s.conversation.to_string(),
                    encode_submission(s),
                )
            }),
        )
        .await
    }

    async fn replicate(&self, replicas: &[Replica]) -> Result<(), PortError> {
        publish_all(
            &self.producer,
            replicas.iter().map(|r| {
                let key = r
                    .message
                    .as_ref()
                    .map(|m| m.conversation.to_string())
                    .or_else(|| r.typing.as_ref().map(|t| t.conversation.to_string()))
                    .unwrap_or_default();
                (self.sequenced.clone(), key, encode_json(r))
            }),
        )
        .await
    }
}

/// Gateway → the other regions: acks on `acks` (key = user).
#[derive(Clone)]
pub struct KafkaAckBus {
    producer: Producer,
    topic: String,
}

impl KafkaAckBus {
    pub fn new(producer: Producer, topic: impl Into<String>) -> Self {
        Self {
            producer,
            topic: topic.into(),
        }
    }
}

impl AckBus for KafkaAckBus {
    fn publish(&self, ack: &AckRecord) -> PendingPublish {
        publish(
            &self.producer,
            &self.topic,
            ack.user.as_str(),
            &encode_json(ack),
        )
    }
}

/// Publishes JSON records to one topic, each with its key: push requests (`push_requests`,
/// key = user), held-back pushes (`push_later`, key = user) and presence transitions
/// (`presence`, key = user).
#[derive(Clone)]
pub struct KafkaJsonTopic {
    producer: Producer,
    topic: String,
}

impl KafkaJsonTopic {
    pub fn new(producer: Producer, topic: impl Into<String>) -> Self {
        Self {
            producer,
            topic: topic.into(),
        }
    }

    /// Publishes every (key, value) and waits until all are acked.
    pub async fn publish<'a, T: serde::Serialize + 'a>(
        &self,
        records: impl IntoIterator<Item = (&'a str, &'a T)>,
    ) -> Result<(), PortError> {
        let sends: Vec<PendingPublish> = records
            .into_iter()
            .map(|(key, value)| publish(&self.producer, &self.topic, key, &encode_json(value)))
            .collect();
        for result in join_all(sends).await {
            result?;
        }
        Ok(())
    }
}

impl connect_core::presence::PresenceBus for KafkaJsonTopic {
    /// One record per transition, key = user (one user's transitions in one partition).
    fn publish(&self, changes: &[connect_core::presence::PresenceChange]) -> PendingPublish {
        let pending: Vec<PendingPublish> = changes
            .iter()
            .map(|c| {
                publish(
                    &self.producer,
                    &self.topic,
                    c.user.as_str(),
                    &encode_json(c),
                )
            })
            .collect();
        Box::pin(async move {
            for result in join_all(pending).await {
                result?;
            }
            Ok(())
        })
    }
}

#[async_trait]
impl PushBus for KafkaJsonTopic {
    /// One record for the whole batch (a JSON array; keyed by its first user, so batches spread
    /// over the partitions): the push function keeps the newest per (device, conversation)
    /// whatever the order, so nothing needs a user's requests in one partition.
    async fn publish(&self, requests: &[connect_core::push::PushRequest]) -> Result<(), PortError> {
        let Some(first) = requests.first() else {
            return Ok(());
        };
        KafkaJsonTopic::publish(self, [(first.user.as_str(), &requests)]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_refused_for_itself_is_final_and_anything_else_may_pass() {
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::InvalidRecord,
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ] {
            let e = produce_error(&KafkaError::MessageProduction(code));
            assert!(!e.is_retryable(), "{code:?}: {e}");
        }
        for code in [
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::AllBrokersDown,
        ] {
            let e = produce_error(&KafkaError::MessageProduction(code));
            assert!(e.is_retryable(), "{code:?}: {e}");
        }
    }
}
