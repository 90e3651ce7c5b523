//! The inbox's tables.
//!
//! The inbox table (key `owner` + `item`), written with every batch:
//! - `(<user>, m#<conversation>)`: the user's markers there (`read`, `delivered`, `ts`);
//! - `(<conversation>, head)`: a conversation's newest message (`seq`, `ts`), one item whatever
//!   the group's size.
//!
//! The places table (key `owner` + `conversation`): `(<user>, <direct conversation>)` is the
//! conversation's place in the user's inbox order (`seq`, `at`), written under both users,
//! indexed by recency (index [`RECENT`]: `owner` + `at`), so a page of a user's direct
//! conversations is one query. A busy conversation's place moves at most once per the writer's
//! step, and in a table of its own, so the index costs nothing to the writes of every batch.
//! Groups have no places: the inbox reads a user's groups through the membership index.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use futures_util::future::try_join_all;

use connect_core::model::Markers;
use connect_core::ports::{Head, InboxIndex, InboxWrite, ReadMarkers, Recency};
use connect_core::PortError;
use connect_protocol::{ConversationId, UserId};

use crate::groups::{err, get, get_n, n, s};

type Item = HashMap<String, AttributeValue>;

/// The recency index of users' direct conversations (`owner` + `at`, projecting `seq`).
pub const RECENT: &str = "recent";

const HEAD: &str = "head";

/// BatchWriteItem calls of one inbox write in flight at once.
const WRITES_IN_FLIGHT: usize = 8;

fn key(owner: &str, item: &str) -> Item {
    HashMap::from([("owner".to_owned(), s(owner)), ("item".to_owned(), s(item))])
}

fn marker_key(user: &UserId, conversation: &ConversationId) -> Item {
    key(user.as_str(), &format!("m#{conversation}"))
}

fn marker_item(user: &UserId, conversation: &ConversationId, m: &Markers) -> Item {
    let mut item = marker_key(user, conversation);
    item.insert("read".into(), n(m.read));
    item.insert("delivered".into(), n(m.delivered));
    item.insert("ts".into(), n(m.ts));
    item
}

fn markers_of(item: &Item) -> Markers {
    Markers {
        read: get_n(item, "read"),
        delivered: get_n(item, "delivered"),
        ts: get_n(item, "ts"),
    }
}

fn head_key(conversation: &ConversationId) -> Item {
    key(&conversation.to_string(), HEAD)
}

/// A direct conversation's place under each of its users.
fn place_keys(conversation: &ConversationId) -> Vec<Item> {
    let key = |owner: &UserId| {
        HashMap::from([
            ("owner".to_owned(), s(owner.as_str())),
            ("conversation".to_owned(), s(conversation.to_string())),
        ])
    };
    match conversation {
        ConversationId::Direct { low, high } => vec![key(low), key(high)],
        ConversationId::Group(_) => Vec::new(),
    }
}

/// An item with a head: `seq` and the time under `time`.
fn with_head(mut item: Item, time: &str, head: Head) -> Item {
    item.insert("seq".into(), n(head.seq));
    item.insert(time.into(), n(head.ts));
    item
}

fn head_of(item: &Item, time: &str) -> Head {
    Head {
        seq: get_n(item, "seq"),
        ts: get_n(item, time),
    }
}

#[derive(Clone)]
pub struct DynamoInbox {
    client: Client,
    table: String,
    places: String,
}

impl DynamoInbox {
    /// Over `tables.inbox` and `tables.places`.
    pub fn new(client: Client, tables: &crate::Tables) -> Self {
        Self {
            client,
            table: tables.inbox.clone(),
            places: tables.places.clone(),
        }
    }

    /// Puts items into `table`, [`crate::BATCH`] per BatchWriteItem, the calls concurrently.
    async fn put_all(&self, table: &str, items: Vec<Item>) -> Result<(), PortError> {
        let items = items.into_iter().map(|i| (table, i)).collect();
        crate::put_items(&self.client, items, WRITES_IN_FLIGHT).await
    }

    /// A batch's inbox writes as (table, item): heads and markers, and the places due.
    pub(crate) fn items(&self, write: &InboxWrite) -> Vec<(&str, Item)> {
        let heads = write
            .heads
            .iter()
            .map(|(c, h)| (self.table.as_str(), with_head(head_key(c), "ts", *h)));
        let markers = write
            .markers
            .iter()
            .map(|(u, c, m)| (self.table.as_str(), marker_item(u, c, m)));
        let places = write.places.iter().flat_map(|(c, h)| {
            place_keys(c)
                .into_iter()
                .map(|k| (self.places.as_str(), with_head(k, "at", *h)))
        });
        heads.chain(markers).chain(places).collect()
    }

    /// Moves the head at `key` of `table` forward only (a conditional UpdateItem).
    async fn advance_one(
        &self,
        table: &str,
        key: Item,
        time: &str,
        head: Head,
    ) -> Result<(), PortError> {
        crate::requested("UpdateItem");
        let update = self
            .client
            .update_item()
            .table_name(table)
            .set_key(Some(key))
            .update_expression("SET #s = :s, #t = :t")
            .condition_expression("attribute_not_exists(#s) OR #s < :s")
            .expression_attribute_names("#s", "seq")
            .expression_attribute_names("#t", time)
            .expression_attribute_values(":s", n(head.seq))
            .expression_attribute_values(":t", n(head.ts))
            .send()
            .await;
        crate::written(update).map(|_| ())
    }

    /// The items at `keys` by (owner, item), read consistently.
    async fn get_all(&self, keys: Vec<Item>) -> Result<HashMap<(String, String), Item>, PortError> {
        let found = crate::batch_get(&self.client, &self.table, keys, true).await?;
        Ok(found
            .into_iter()
            .map(|item| {
                let k = (
                    get(&item, "owner").unwrap_or_default().to_owned(),
                    get(&item, "item").unwrap_or_default().to_owned(),
                );
                (k, item)
            })
            .collect())
    }
}

#[async_trait]
impl ReadMarkers for DynamoInbox {
    async fn get(&self, keys: &[(UserId, ConversationId)]) -> Result<Vec<Markers>, PortError> {
        let found = self
            .get_all(keys.iter().map(|(u, c)| marker_key(u, c)).collect())
            .await?;
        Ok(keys
            .iter()
            .map(|(user, conversation)| {
                let k = (user.to_string(), format!("m#{conversation}"));
                found.get(&k).map(markers_of).unwrap_or_default()
            })
            .collect())
    }

    async fn put(&self, markers: &[(UserId, ConversationId, Markers)]) -> Result<(), PortError> {
        self.put_all(
            &self.table,
            markers
                .iter()
                .map(|(u, c, m)| marker_item(u, c, m))
                .collect(),
        )
        .await
    }
}

#[async_trait]
impl InboxIndex for DynamoInbox {
    async fn write(&self, write: &InboxWrite) -> Result<(), PortError> {
        crate::put_items(&self.client, self.items(write), WRITES_IN_FLIGHT).await
    }

    async fn advance(&self, write: &InboxWrite) -> Result<(), PortError> {
        let heads = write
            .heads
            .iter()
            .map(|(c, h)| (&self.table, head_key(c), "ts", *h));
        let places = write.places.iter().flat_map(|(c, h)| {
            place_keys(c)
                .into_iter()
                .map(|k| (&self.places, k, "at", *h))
        });
        let updates = heads
            .chain(places)
            .map(|(table, key, time, head)| self.advance_one(table, key, time, head));
        try_join_all(updates).await.map(|_| ())
    }

    async fn heads(
        &self,
        conversations: &[ConversationId],
    ) -> Result<Vec<Option<Head>>, PortError> {
        let found = self
            .get_all(conversations.iter().map(head_key).collect())
            .await?;
        Ok(conversations
            .iter()
            .map(|c| {
                found
                    .get(&(c.to_string(), HEAD.to_owned()))
                    .map(|item| head_of(item, "ts"))
            })
            .collect())
    }

    async fn recent(
        &self,
        user: &UserId,
        after: Option<&Recency>,
        limit: usize,
    ) -> Result<Vec<(ConversationId, Head)>, PortError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut query = self
            .client
            .query()
            .table_name(&self.places)
            .index_name(RECENT)
            .scan_index_forward(false)
            .limit(i32::try_from(limit + 1).unwrap_or(i32::MAX))
            .expression_attribute_names("#o", "owner")
            .expression_attribute_values(":o", s(user.as_str()));
        query = match after {
            Some(after) => query
                .key_condition_expression("#o = :o AND #a <= :a")
                .expression_attribute_names("#a", "at")
                .expression_attribute_values(":a", n(after.ts)),
            None => query.key_condition_expression("#o = :o"),
        };
        // Pages newest first until `limit` are found and every conversation as new as the
        // last of them has been seen (equal times are ordered by conversation id here, not by
        // the index).
        let mut found: Vec<(ConversationId, Head)> = Vec::new();
        let mut start = None;
        loop {
            crate::requested("Query");
            let out = query
                .clone()
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(err)?;
            let mut oldest = None;
            for item in out.items.unwrap_or_default() {
                let head = head_of(&item, "at");
                oldest = Some(head.ts);
                let c = get(&item, "conversation").unwrap_or_default();
                if after.is_some_and(|a| !a.before(head.ts, c)) {
                    continue;
                }
                if let Ok(conversation) = ConversationId::parse(c) {
                    found.push((conversation, head));
                }
            }
            start = out.last_evaluated_key;
            let full = found.len() >= limit
                && oldest.is_some_and(|ts| {
                    found
                        .iter()
                        .map(|(_, h)| h.ts)
                        .nth(limit - 1)
                        .is_some_and(|t| ts < t)
                });
            if start.is_none() || full {
                break;
            }
        }
        found.sort_by_cached_key(|(c, h)| (std::cmp::Reverse(h.ts), c.to_string()));
        found.truncate(limit);
        Ok(found)
    }
}
