//! The chat table: one item per message, key (`conversation`, `seq`).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
use aws_sdk_dynamodb::Client;
use futures_util::stream::{self, StreamExt, TryStreamExt};

use connect_core::model::StoredMessage;
use connect_core::ports::ChatStore;
use connect_core::PortError;

use crate::item::to_item;
use crate::unavailable;

/// BatchWriteItem takes at most 25 puts.
const BATCH: usize = 25;
/// Rounds of re-sending unprocessed items before the batch is failed.
const UNPROCESSED_ROUNDS: u32 = 8;

#[derive(Clone)]
pub struct DynamoChatStore {
    client: Client,
    table: String,
    concurrency: usize,
}

impl DynamoChatStore {
    /// `concurrency`: BatchWriteItem calls in flight at once.
    pub fn new(client: Client, table: impl Into<String>, concurrency: usize) -> Self {
        Self {
            client,
            table: table.into(),
            concurrency: concurrency.max(1),
        }
    }

    async fn write_chunk(&self, chunk: &[StoredMessage]) -> Result<(), PortError> {
        let mut requests: Vec<WriteRequest> = chunk
            .iter()
            .map(|m| {
                let put = PutRequest::builder()
                    .set_item(Some(to_item(m)))
                    .build()
                    .map_err(unavailable)?;
                Ok(WriteRequest::builder().put_request(put).build())
            })
            .collect::<Result<_, PortError>>()?;
        for round in 0..UNPROCESSED_ROUNDS {
            let out = self
                .client
                .batch_write_item()
                .request_items(&self.table, requests)
                .send()
                .await
                .map_err(|e| unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
            requests = out
                .unprocessed_items
                .and_then(|mut m| m.remove(&self.table))
                .unwrap_or_default();
            if requests.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10 << round.min(6))).await;
        }
        Err(unavailable(format!(
            "{} items still unprocessed",
            requests.len()
        )))
    }
}

#[async_trait]
impl ChatStore for DynamoChatStore {
    async fn put_batch(&self, messages: &[StoredMessage]) -> Result<(), PortError> {
        let writes: Vec<_> = messages
            .chunks(BATCH)
            .map(|chunk| self.write_chunk(chunk))
            .collect();
        stream::iter(writes)
            .buffer_unordered(self.concurrency)
            .try_collect::<()>()
            .await
    }

    async fn put_if_absent(&self, message: &StoredMessage) -> Result<bool, PortError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(message)))
            .condition_expression("attribute_not_exists(#c)")
            .expression_attribute_names("#c", "conversation")
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(e))),
        }
    }
}
