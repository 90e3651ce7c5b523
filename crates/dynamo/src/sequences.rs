//! The sequence table: `conversation` → `seq` (last allocated), `home` (region that owns the
//! sequence) and `epoch` (bumped when the home moves). Only the home region allocates; unused
//! seqs of a reservation go back only while nothing was allocated after them.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_dynamodb::Client;
use futures_util::stream::{self, StreamExt};

use connect_core::ports::SequenceAllocator;
use connect_core::PortError;
use connect_protocol::ConversationId;

use crate::unavailable;

#[derive(Clone)]
pub struct DynamoSequences {
    client: Client,
    table: String,
    region: String,
    concurrency: usize,
}

impl DynamoSequences {
    /// Allocates for conversations homed in `region` (a new conversation is homed where it
    /// starts). `concurrency`: UpdateItem calls in flight at once.
    pub fn new(
        client: Client,
        table: impl Into<String>,
        region: impl Into<String>,
        concurrency: usize,
    ) -> Self {
        Self {
            client,
            table: table.into(),
            region: region.into(),
            concurrency: concurrency.max(1),
        }
    }

    async fn allocate_one(
        &self,
        conversation: &ConversationId,
        count: u64,
    ) -> Result<u64, PortError> {
        crate::requested("UpdateItem");
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("conversation", AttributeValue::S(conversation.to_string()))
            .update_expression("SET #home = if_not_exists(#home, :region), #epoch = if_not_exists(#epoch, :one) ADD #seq :n")
            .condition_expression("attribute_not_exists(#home) OR #home = :region")
            .expression_attribute_names("#home", "home")
            .expression_attribute_names("#epoch", "epoch")
            .expression_attribute_names("#seq", "seq")
            .expression_attribute_values(":region", AttributeValue::S(self.region.clone()))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .expression_attribute_values(":n", AttributeValue::N(count.to_string()))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        match result {
            Ok(out) => {
                let last: u64 = out
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get("seq"))
                    .and_then(|v| v.as_n().ok())
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| PortError::rejected("dynamodb", "UpdateItem returned no seq"))?;
                Ok(last + 1 - count)
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Err(PortError::NotHome {
                    conversation: conversation.to_string(),
                    home: "another region".into(),
                })
            }
            Err(e) => Err(unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(e))),
        }
    }
}

#[async_trait]
impl SequenceAllocator for DynamoSequences {
    async fn allocate(&self, requests: &[(ConversationId, u64)]) -> Vec<Result<u64, PortError>> {
        let calls: Vec<_> = requests
            .iter()
            .map(|(c, n)| self.allocate_one(c, *n))
            .collect();
        stream::iter(calls)
            .buffered(self.concurrency)
            .collect()
            .await
    }

    async fn give_back(
        &self,
        conversation: &ConversationId,
        from: u64,
        last: u64,
    ) -> Result<bool, PortError> {
        crate::requested("UpdateItem");
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("conversation", AttributeValue::S(conversation.to_string()))
            .update_expression("SET #seq = :kept")
            .condition_expression("#seq = :last AND #home = :region")
            .expression_attribute_names("#seq", "seq")
            .expression_attribute_names("#home", "home")
            .expression_attribute_values(":kept", AttributeValue::N((from - 1).to_string()))
            .expression_attribute_values(":last", AttributeValue::N(last.to_string()))
            .expression_attribute_values(":region", AttributeValue::S(self.region.clone()))
            .send()
            .await;
        crate::written(result)
    }
}
