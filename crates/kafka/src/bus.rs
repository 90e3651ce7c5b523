//! The core's bus ports over an idempotent `FutureProducer`.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use connect_core::model::{Delivery, Submission};
use connect_core::ports::{DeliveryBus, PendingPublish, SubmissionBus};
use connect_core::PortError;

use crate::codec::{encode_delivery, encode_submission};

const BACKEND: &str = "kafka";

/// Publishes submissions to `incoming_messages`, key = conversation id.
#[derive(Clone)]
pub struct KafkaSubmissionBus {
    producer: FutureProducer,
    topic: String,
}

impl KafkaSubmissionBus {
    pub fn new(producer: FutureProducer, topic: impl Into<String>) -> Self {
        Self {
            producer,
            topic: topic.into(),
        }
    }
}

impl SubmissionBus for KafkaSubmissionBus {
    fn submit(&self, submission: &Submission) -> PendingPublish {
        let key = submission.conversation.to_string();
        let payload = encode_submission(submission);
        let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
        match self.producer.send_result(record) {
            Ok(fut) => Box::pin(async move {
                match fut.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(PortError::unavailable(BACKEND, e)),
                    Err(_) => Err(PortError::unavailable(BACKEND, "producer closed")),
                }
            }),
            Err((e, _)) => Box::pin(std::future::ready(Err(PortError::unavailable(BACKEND, e)))),
        }
    }
}

/// Publishes deliveries to `outgoing_messages`, each to its slot's partition.
#[derive(Clone)]
pub struct KafkaDeliveryBus {
    producer: FutureProducer,
    topic: String,
    queue_timeout: Duration,
}

impl KafkaDeliveryBus {
    pub fn new(producer: FutureProducer, topic: impl Into<String>) -> Self {
        Self {
            producer,
            topic: topic.into(),
            queue_timeout: Duration::from_secs(5),
        }
    }
}

#[async_trait]
impl DeliveryBus for KafkaDeliveryBus {
    async fn publish(&self, deliveries: &[Delivery]) -> Result<(), PortError> {
        let sends = deliveries.iter().map(|d| {
            let (headers, value) = encode_delivery(d);
            let slot = d.slot as i32;
            async move {
                let record: FutureRecord<'_, (), Vec<u8>> = FutureRecord::to(&self.topic)
                    .partition(slot)
                    .headers(headers)
                    .payload(&value);
                self.producer
                    .send(record, Timeout::After(self.queue_timeout))
                    .await
            }
        });
        for result in join_all(sends).await {
            result.map_err(|(e, _)| PortError::unavailable(BACKEND, e))?;
        }
        Ok(())
    }
}
