//! The chat table: one item per message, key (`conversation`, `seq`).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;

use connect_core::model::StoredMessage;
use connect_core::ports::{put_side_by_side, ChatStore, InboxIndex, InboxWrite};
use connect_core::PortError;

use crate::item::to_item;
use crate::unavailable;

#[derive(Clone)]
pub struct DynamoChatStore {
    client: Client,
    table: String,
    concurrency: usize,
    /// The inbox tables, when they are in the same database: a batch's messages and inbox
    /// writes go together ([`ChatStore::put_with_inbox`]).
    inbox: Option<crate::DynamoInbox>,
}

impl DynamoChatStore {
    /// `concurrency`: BatchWriteItem calls in flight at once.
    pub fn new(client: Client, table: impl Into<String>, concurrency: usize) -> Self {
        Self {
            client,
            table: table.into(),
            concurrency: concurrency.max(1),
            inbox: None,
        }
    }

    /// Writes each batch's inbox changes with its messages, in the same BatchWriteItem calls
    /// (25 items per call whatever their table): a quiet system's batch is one round trip to
    /// DynamoDB instead of two.
    pub fn with_inbox(mut self, inbox: crate::DynamoInbox) -> Self {
        self.inbox = Some(inbox);
        self
    }

    /// The messages as (table, item), for [`crate::put_items`].
    fn items<'a>(
        &'a self,
        messages: &'a [StoredMessage],
    ) -> impl Iterator<Item = (&'a str, crate::Item)> + 'a {
        messages.iter().map(|m| (self.table.as_str(), to_item(m)))
    }
}

#[async_trait]
impl ChatStore for DynamoChatStore {
    async fn put_batch(&self, messages: &[StoredMessage]) -> Result<(), PortError> {
        crate::put_items(
            &self.client,
            self.items(messages).collect(),
            self.concurrency,
        )
        .await
    }

    async fn put_with_inbox(
        &self,
        messages: &[StoredMessage],
        write: &InboxWrite,
        index: &dyn InboxIndex,
    ) -> Result<(), PortError> {
        let Some(inbox) = &self.inbox else {
            return put_side_by_side(self, messages, write, index).await;
        };
        let items = self.items(messages).chain(inbox.items(write)).collect();
        crate::put_items(&self.client, items, self.concurrency).await
    }

    async fn put_if_absent(&self, message: &StoredMessage) -> Result<bool, PortError> {
        crate::requested("PutItem");
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(message)))
            .condition_expression("attribute_not_exists(#c)")
            .expression_attribute_names("#c", "conversation")
            .send()
            .await;
        crate::written(result)
    }

    async fn get_many(
        &self,
        keys: &[(connect_protocol::ConversationId, u64)],
    ) -> Result<Vec<Option<StoredMessage>>, PortError> {
        use aws_sdk_dynamodb::types::AttributeValue;
        let mut unique: Vec<(String, u64)> =
            keys.iter().map(|(c, seq)| (c.to_string(), *seq)).collect();
        unique.sort();
        unique.dedup();
        let wanted: Vec<_> = unique
            .into_iter()
            .map(|(c, seq)| {
                HashMap::from([
                    ("conversation".to_owned(), AttributeValue::S(c)),
                    ("seq".to_owned(), AttributeValue::N(seq.to_string())),
                ])
            })
            .collect();
        let found: HashMap<(String, u64), StoredMessage> =
            crate::batch_get(&self.client, &self.table, wanted, true)
                .await?
                .iter()
                .filter_map(crate::item::from_item)
                .map(|m| ((m.conversation.to_string(), m.seq), m))
                .collect();
        Ok(keys
            .iter()
            .map(|(c, seq)| found.get(&(c.to_string(), *seq)).cloned())
            .collect())
    }
}

#[async_trait]
impl connect_core::ports::HistoryStore for DynamoChatStore {
    async fn page(
        &self,
        conversation: &connect_protocol::ConversationId,
        range: connect_core::history::Range,
        limit: u32,
    ) -> Result<connect_core::history::Page, PortError> {
        use aws_sdk_dynamodb::types::AttributeValue;
        use connect_core::history::{Page, Range};

        let n = |v: u64| AttributeValue::N(v.to_string());
        let mut query = self
            .client
            .query()
            .table_name(&self.table)
            .expression_attribute_names("#c", "conversation")
            .expression_attribute_values(":c", AttributeValue::S(conversation.to_string()))
            // One more than asked: its presence says `has_more`.
            .limit(limit as i32 + 1);
        if !matches!(range, Range::Before { before: None }) {
            query = query.expression_attribute_names("#s", "seq");
        }
        let ascending = match range {
            Range::After { after, before } => {
                query = match before {
                    // Both bounds are exclusive; BETWEEN is inclusive.
                    Some(b) => query
                        .key_condition_expression("#c = :c AND #s BETWEEN :a AND :b")
                        .expression_attribute_values(":a", n(after.saturating_add(1)))
                        .expression_attribute_values(":b", n(b.saturating_sub(1))),
                    None => query
                        .key_condition_expression("#c = :c AND #s > :a")
                        .expression_attribute_values(":a", n(after)),
                };
                true
            }
            Range::Before { before: Some(b) } => {
                query = query
                    .key_condition_expression("#c = :c AND #s < :b")
                    .expression_attribute_values(":b", n(b));
                false
            }
            Range::Before { before: None } => {
                query = query.key_condition_expression("#c = :c");
                false
            }
        };
        let out = query
            .scan_index_forward(ascending)
            .send()
            .await
            .map_err(|e| unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
        let mut messages: Vec<StoredMessage> = out
            .items()
            .iter()
            .filter_map(crate::item::from_item)
            .collect();
        let has_more = messages.len() > limit as usize;
        messages.truncate(limit as usize);
        if !ascending {
            messages.reverse();
        }
        Ok(Page { messages, has_more })
    }
}
