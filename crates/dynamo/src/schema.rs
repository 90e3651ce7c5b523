//! Table definitions; [`ensure_tables`] creates what is missing (idempotent).

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, StreamSpecification, StreamViewType,
};
use aws_sdk_dynamodb::Client;

/// Table names (`CHAT_TABLE`, `SEQUENCE_TABLE`, `GROUP_TABLE`, `INBOX_TABLE`, `PLACES_TABLE`,
/// `PUSH_TABLE`, `QUOTA_TABLE`).
#[derive(Debug, Clone)]
pub struct Tables {
    pub chat: String,
    pub sequences: String,
    pub groups: String,
    /// Read state: markers per (user, conversation), and each conversation's head.
    pub inbox: String,
    /// Direct conversations' places in each user's inbox order (indexed by recency). A table of
    /// its own: its index is written once per step, not with every head and marker.
    pub places: String,
    /// Push registrations per (user, device).
    pub push: String,
    /// Per-user quota counters per window (expiring by TTL in AWS).
    pub quotas: String,
}

fn attr(name: &str, t: ScalarAttributeType) -> AttributeDefinition {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(t)
        .build()
        .expect("static definition")
}

fn key(name: &str, t: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(t)
        .build()
        .expect("static definition")
}

/// One table: hash key, optional range key (both S unless given), optional index, stream.
struct Spec<'a> {
    name: &'a str,
    hash: &'a str,
    range: Option<(&'a str, ScalarAttributeType)>,
    /// (index name, hash (S), range), projecting the keys and `index_includes`.
    index: Option<(&'a str, &'a str, (&'a str, ScalarAttributeType))>,
    index_includes: &'a [&'a str],
    stream: bool,
}

/// A table that could not be made (final for the setup run: it stops and says which).
#[derive(Debug, thiserror::Error)]
#[error("creating table {table}: {cause}")]
pub struct SchemaError {
    pub table: String,
    pub cause: String,
}

async fn create(client: &Client, spec: Spec<'_>) -> Result<(), SchemaError> {
    let name = spec.name;
    let mut req = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr(spec.hash, ScalarAttributeType::S))
        .key_schema(key(spec.hash, KeyType::Hash));
    if spec.stream {
        req = req.stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .map_err(|e| SchemaError {
                    table: name.to_owned(),
                    cause: e.to_string(),
                })?,
        );
    }
    if let Some((range, t)) = &spec.range {
        req = req
            .attribute_definitions(attr(range, t.clone()))
            .key_schema(key(range, KeyType::Range));
    }
    if let Some((index, hash, (range, t))) = spec.index {
        if hash != spec.hash {
            req = req.attribute_definitions(attr(hash, ScalarAttributeType::S));
        }
        if Some(range) != spec.range.as_ref().map(|r| r.0) && range != spec.hash {
            req = req.attribute_definitions(attr(range, t));
        }
        req = req.global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(index)
                .key_schema(key(hash, KeyType::Hash))
                .key_schema(key(range, KeyType::Range))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::Include)
                        .set_non_key_attributes(Some(
                            spec.index_includes
                                .iter()
                                .map(|a| (*a).to_owned())
                                .collect(),
                        ))
                        .build(),
                )
                .build()
                .map_err(|e| SchemaError {
                    table: name.to_owned(),
                    cause: e.to_string(),
                })?,
        );
    }
    match req.send().await {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) =>
        {
            Ok(())
        }
        Err(e) => Err(SchemaError {
            table: name.to_owned(),
            cause: aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string(),
        }),
    }
}

/// Creates the chat, sequence and group tables if missing. `streams`: whether the chat and
/// sequence tables get a stream (AWS global tables need one; locally nothing reads them, and
/// DynamoDB Local pays for each record). The group table always has one: the group-events
/// function reads it.
pub async fn ensure_tables(
    client: &Client,
    tables: &Tables,
    streams: bool,
) -> Result<(), SchemaError> {
    let conversation = |name, range, stream| Spec {
        name,
        hash: "conversation",
        range,
        index: None,
        index_includes: &[],
        stream,
    };
    create(
        client,
        conversation(&tables.chat, Some(("seq", ScalarAttributeType::N)), streams),
    )
    .await?;
    create(client, conversation(&tables.sequences, None, streams)).await?;
    create(
        client,
        Spec {
            name: &tables.groups,
            hash: "group",
            range: Some(("item", ScalarAttributeType::S)),
            index: Some((
                crate::groups::BY_USER,
                "user",
                ("group", ScalarAttributeType::S),
            )),
            // A membership's `since` (offline delivery reads it with the user's groups).
            index_includes: &["since"],
            stream: true,
        },
    )
    .await?;
    create(
        client,
        Spec {
            name: &tables.inbox,
            hash: "owner",
            range: Some(("item", ScalarAttributeType::S)),
            index: None,
            index_includes: &[],
            stream: streams,
        },
    )
    .await?;
    create(
        client,
        Spec {
            name: &tables.places,
            hash: "owner",
            range: Some(("conversation", ScalarAttributeType::S)),
            index: Some((
                crate::inbox::RECENT,
                "owner",
                ("at", ScalarAttributeType::N),
            )),
            // A direct conversation's newest seq when placed.
            index_includes: &["seq"],
            stream: streams,
        },
    )
    .await?;
    create(
        client,
        Spec {
            name: &tables.push,
            hash: "user",
            range: Some(("device", ScalarAttributeType::S)),
            index: None,
            index_includes: &[],
            stream: streams,
        },
    )
    .await?;
    // Locally without TTL: the stack's tables live as long as the stack.
    create(
        client,
        Spec {
            name: &tables.quotas,
            hash: "key",
            range: None,
            index: None,
            index_includes: &[],
            stream: false,
        },
    )
    .await
}

impl Tables {
    /// From `CHAT_TABLE` (connect_messages), `SEQUENCE_TABLE` (connect_sequences),
    /// `GROUP_TABLE` (connect_groups), `INBOX_TABLE` (connect_inbox), `PLACES_TABLE`
    /// (connect_places), `PUSH_TABLE` (connect_push) and `QUOTA_TABLE` (connect_quotas).
    pub fn from_settings(s: &connect_config::Settings) -> Self {
        Self {
            chat: s.string("CHAT_TABLE", "connect_messages"),
            sequences: s.string("SEQUENCE_TABLE", "connect_sequences"),
            groups: s.string("GROUP_TABLE", "connect_groups"),
            inbox: s.string("INBOX_TABLE", "connect_inbox"),
            places: s.string("PLACES_TABLE", "connect_places"),
            push: s.string("PUSH_TABLE", "connect_push"),
            quotas: s.string("QUOTA_TABLE", "connect_quotas"),
        }
    }
}
