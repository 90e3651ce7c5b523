//! The inbox table (key `owner` + `item`): what the inbox lists and the read markers.
//! - `(<user>, m#<conversation>)`: the user's markers there (`read`, `delivered`, `ts`);
//! - `(<user>, d#<conversation>)`: a direct conversation the user is in (listed with its first
//!   message);
//! - `(<conversation>, head)`: the conversation's newest message (`seq`, `ts`).
//!
//! A message costs one head write per conversation per batch, whatever the group's size.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use futures_util::future::try_join_all;

use connect_core::model::Markers;
use connect_core::ports::{Head, InboxIndex, InboxWrite, Listing, ReadMarkers};
use connect_core::PortError;
use connect_protocol::{ConversationId, UserId};

use crate::groups::{get, get_n, n, query_all, s};
use crate::BATCH;

type Item = HashMap<String, AttributeValue>;

const HEAD: &str = "head";

fn key(owner: &str, item: &str) -> Item {
    HashMap::from([("owner".to_owned(), s(owner)), ("item".to_owned(), s(item))])
}

fn marker_key(user: &UserId, conversation: &ConversationId) -> Item {
    key(user.as_str(), &format!("m#{conversation}"))
}

fn head_key(conversation: &ConversationId) -> Item {
    key(&conversation.to_string(), HEAD)
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

fn listing_item(user: &UserId, conversation: &ConversationId) -> Item {
    key(user.as_str(), &format!("d#{conversation}"))
}

fn head_item(conversation: &ConversationId, head: &Head) -> Item {
    let mut item = head_key(conversation);
    item.insert("seq".into(), n(head.seq));
    item.insert("ts".into(), n(head.ts));
    item
}

#[derive(Clone)]
pub struct DynamoInbox {
    client: Client,
    table: String,
}

impl DynamoInbox {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Puts items, [`BATCH`] per BatchWriteItem, the calls concurrently.
    async fn put_all(&self, items: Vec<Item>) -> Result<(), PortError> {
        let writes = items
            .chunks(BATCH)
            .map(|chunk| crate::batch_put(&self.client, &self.table, chunk.to_vec()));
        try_join_all(writes).await.map(|_| ())
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
        let heads = write.heads.iter().map(|(c, h)| head_item(c, h));
        let listings = write.listings.iter().map(|(u, c)| listing_item(u, c));
        let markers = write.markers.iter().map(|(u, c, m)| marker_item(u, c, m));
        self.put_all(heads.chain(listings).chain(markers).collect())
            .await
    }

    async fn advance(&self, write: &InboxWrite) -> Result<(), PortError> {
        let heads = write.heads.iter().map(|(conversation, head)| {
            crate::requested("UpdateItem");
            let update = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(head_key(conversation)))
                .update_expression("SET #s = :s, #t = :t")
                .condition_expression("attribute_not_exists(#s) OR #s < :s")
                .expression_attribute_names("#s", "seq")
                .expression_attribute_names("#t", "ts")
                .expression_attribute_values(":s", n(head.seq))
                .expression_attribute_values(":t", n(head.ts))
                .send();
            async move { crate::written(update.await).map(|_| ()) }
        });
        try_join_all(heads).await?;
        self.put_all(
            write
                .listings
                .iter()
                .map(|(u, c)| listing_item(u, c))
                .collect(),
        )
        .await
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
                    .map(|item| Head {
                        seq: get_n(item, "seq"),
                        ts: get_n(item, "ts"),
                    })
            })
            .collect())
    }

    async fn listing(&self, user: &UserId) -> Result<Listing, PortError> {
        crate::requested("Query");
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#o = :o")
            .expression_attribute_names("#o", "owner")
            .expression_attribute_values(":o", s(user.as_str()))
            .consistent_read(true);
        let mut listing = Listing::default();
        for item in query_all(query).await? {
            let name = get(&item, "item").unwrap_or_default();
            if let Some(c) = name.strip_prefix("d#") {
                if let Ok(conversation) = ConversationId::parse(c) {
                    listing.direct.push(conversation);
                }
            } else if let Some(c) = name.strip_prefix("m#") {
                if let Ok(conversation) = ConversationId::parse(c) {
                    listing.markers.insert(conversation, markers_of(&item));
                }
            }
        }
        Ok(listing)
    }
}
