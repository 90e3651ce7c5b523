//! The sequence table: `conversation` → `seq` (last allocated), `home` (region that owns the
//! sequence), `epoch` (bumped when the home moves) and `given` (the highest seq ever given back).
//! Only the home region allocates; unused seqs of a reservation go back only while nothing was
//! allocated after them, and every later reservation learns from `given` which of its seqs were
//! reserved before ([`Reserved::reused_to`]).
//!
//! Failover ([`DynamoSequences::move_homes`]) moves every conversation homed in one region to
//! another and bumps its epoch; the new home continues from [`epoch_base`] of the new epoch, past
//! anything the old home may have allocated in its epoch and not yet replicated (a gap, never a
//! reuse).

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;
use futures_util::stream::{self, StreamExt};

use connect_core::ports::{Reserved, SequenceAllocator};
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
    ) -> Result<Reserved, PortError> {
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
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => {
                let number = |name: &str| -> Option<u64> {
                    out.attributes
                        .as_ref()
                        .and_then(|a| a.get(name))
                        .and_then(|v| v.as_n().ok())
                        .and_then(|n| n.parse().ok())
                };
                let last = number("seq")
                    .ok_or_else(|| PortError::rejected("dynamodb", "UpdateItem returned no seq"))?;
                Ok(Reserved {
                    first: last + 1 - count,
                    reused_to: number("given").unwrap_or(0),
                })
            }
            Err(aws_sdk_dynamodb::error::SdkError::ServiceError(e))
                if e.err().is_conditional_check_failed_exception() =>
            {
                let home = match e.err() {
                    aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => c
                        .item()
                        .and_then(|i| i.get("home"))
                        .and_then(|v| v.as_s().ok())
                        .cloned(),
                    _ => None,
                };
                let home = match home {
                    Some(home) => home,
                    None => self.home_of(conversation).await?,
                };
                Err(PortError::NotHome {
                    conversation: conversation.to_string(),
                    home,
                })
            }
            Err(e) => Err(unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(e))),
        }
    }
}

impl DynamoSequences {
    /// The region a conversation's sequence is homed in (read consistently).
    async fn home_of(&self, conversation: &ConversationId) -> Result<String, PortError> {
        crate::requested("GetItem");
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("conversation", AttributeValue::S(conversation.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
        out.item
            .as_ref()
            .and_then(|i| i.get("home"))
            .and_then(|v| v.as_s().ok())
            .cloned()
            .ok_or_else(|| PortError::unavailable("dynamodb", "sequence item lost its home"))
    }

    /// Failover: every conversation homed in `from` is homed in `to` from now on, with its
    /// epoch bumped and its sequence continuing past [`epoch_base`] of the new epoch. Each move
    /// is conditional on the home and epoch it read (a conversation moved meanwhile is left
    /// alone). Returns how many moved. The old home must have stopped allocating (its messaging
    /// stopped or cut off): its conditional allocations fail from here on.
    pub async fn move_homes(&self, from: &str, to: &str) -> Result<MovedHomes, PortError> {
        let mut moved = MovedHomes::default();
        let mut start: Option<std::collections::HashMap<String, AttributeValue>> = None;
        loop {
            crate::requested("Scan");
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("#home = :from")
                .expression_attribute_names("#home", "home")
                .expression_attribute_values(":from", AttributeValue::S(from.to_owned()))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
            for item in page.items() {
                let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
                let number = |k: &str| {
                    item.get(k)
                        .and_then(|v| v.as_n().ok())
                        .and_then(|n| n.parse::<u64>().ok())
                };
                let (Some(conversation), Some(seq)) = (text("conversation"), number("seq")) else {
                    continue;
                };
                let epoch = number("epoch").unwrap_or(1);
                let next = seq.max(epoch_base(epoch + 1));
                crate::requested("UpdateItem");
                let result = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .key("conversation", AttributeValue::S(conversation.clone()))
                    .update_expression("SET #home = :to, #epoch = :next_epoch, #seq = :next")
                    .condition_expression(
                        "#home = :from AND (#epoch = :epoch OR attribute_not_exists(#epoch))",
                    )
                    .expression_attribute_names("#home", "home")
                    .expression_attribute_names("#epoch", "epoch")
                    .expression_attribute_names("#seq", "seq")
                    .expression_attribute_values(":to", AttributeValue::S(to.to_owned()))
                    .expression_attribute_values(":from", AttributeValue::S(from.to_owned()))
                    .expression_attribute_values(":epoch", AttributeValue::N(epoch.to_string()))
                    .expression_attribute_values(
                        ":next_epoch",
                        AttributeValue::N((epoch + 1).to_string()),
                    )
                    .expression_attribute_values(":next", AttributeValue::N(next.to_string()))
                    .send()
                    .await;
                match crate::written(result)? {
                    true => {
                        moved.moved += 1;
                        moved.last.push((conversation, seq, next));
                    }
                    false => moved.skipped += 1,
                }
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        Ok(moved)
    }
}

/// What [`DynamoSequences::move_homes`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MovedHomes {
    pub moved: usize,
    /// Moved by someone else meanwhile.
    pub skipped: usize,
    /// (conversation, last seq seen, the seq the new home continues after) of each move.
    pub last: Vec<(String, u64, u64)>,
}

/// Where epoch `epoch`'s seqs start (epoch 1: 0). A home allocates at most 2^32 seqs per epoch
/// in one conversation, so a new epoch starts past anything an earlier one allocated, whether
/// or not the old home's last allocations had replicated.
pub fn epoch_base(epoch: u64) -> u64 {
    epoch.saturating_sub(1) << 32
}

#[async_trait]
impl SequenceAllocator for DynamoSequences {
    async fn allocate(
        &self,
        requests: &[(ConversationId, u64)],
    ) -> Vec<Result<Reserved, PortError>> {
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
        // `given` only grows: raised to `last` where it is lower, else left (a second write,
        // under the same condition on `seq`).
        for raise in [true, false] {
            crate::requested("UpdateItem");
            let mut update = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("conversation", AttributeValue::S(conversation.to_string()))
                .expression_attribute_names("#seq", "seq")
                .expression_attribute_names("#home", "home")
                .expression_attribute_values(":kept", AttributeValue::N((from - 1).to_string()))
                .expression_attribute_values(":last", AttributeValue::N(last.to_string()))
                .expression_attribute_values(":region", AttributeValue::S(self.region.clone()));
            update = if raise {
                update
                    .update_expression("SET #seq = :kept, #given = :last")
                    .condition_expression(
                        "#seq = :last AND #home = :region AND (attribute_not_exists(#given) OR #given < :last)",
                    )
                    .expression_attribute_names("#given", "given")
            } else {
                update
                    .update_expression("SET #seq = :kept")
                    .condition_expression("#seq = :last AND #home = :region")
            };
            if crate::written(update.send().await)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
