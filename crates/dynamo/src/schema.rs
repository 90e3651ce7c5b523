//! Table definitions; [`ensure_tables`] creates what is missing (idempotent).

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    StreamSpecification, StreamViewType,
};
use aws_sdk_dynamodb::Client;

/// Table names (`CHAT_TABLE`, `SEQUENCE_TABLE`).
#[derive(Debug, Clone)]
pub struct Tables {
    pub chat: String,
    pub sequences: String,
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

async fn create(
    client: &Client,
    name: &str,
    range: Option<(&str, ScalarAttributeType)>,
    stream: bool,
) -> Result<(), String> {
    let mut req = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("conversation", ScalarAttributeType::S))
        .key_schema(key("conversation", KeyType::Hash));
    if stream {
        req = req.stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .map_err(|e| e.to_string())?,
        );
    }
    if let Some((range, t)) = range {
        req = req
            .attribute_definitions(attr(range, t))
            .key_schema(key(range, KeyType::Range));
    }
    match req.send().await {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) =>
        {
            Ok(())
        }
        Err(e) => Err(format!(
            "creating table {name}: {}",
            aws_sdk_dynamodb::error::DisplayErrorContext(e)
        )),
    }
}

/// Creates the chat and sequence tables if missing. `streams`: whether they get a stream (AWS
/// global tables need one; locally nothing reads them, and DynamoDB Local pays for each record).
pub async fn ensure_tables(client: &Client, tables: &Tables, streams: bool) -> Result<(), String> {
    create(
        client,
        &tables.chat,
        Some(("seq", ScalarAttributeType::N)),
        streams,
    )
    .await?;
    create(client, &tables.sequences, None, streams).await?;
    Ok(())
}

impl Tables {
    /// From `CHAT_TABLE` (connect_messages) and `SEQUENCE_TABLE` (connect_sequences).
    pub fn from_env() -> Self {
        use connect_core::env::string;
        Self {
            chat: string("CHAT_TABLE", "connect_messages"),
            sequences: string("SEQUENCE_TABLE", "connect_sequences"),
        }
    }
}
