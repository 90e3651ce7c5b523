//! DynamoDB adapter (`aws-sdk-dynamodb`).
//!
//! # Layout
//! - [`client`]: builds the SDK client once (endpoint override + static credentials for
//!   DynamoDB Local).
//! - [`chat`]: [`DynamoChatStore`], the chat table (`conversation` + `seq`).
//! - [`sequences`]: [`DynamoSequences`], the sequence table: one atomic `ADD n` per conversation,
//!   guarded by the conversation's home region.
//! - [`groups`]: [`DynamoGroups`], the group table (meta item + one item per member, index
//!   `by_user`).
//! - [`inbox`]: [`DynamoInbox`], the inbox table: conversations' heads, users' direct
//!   conversations and read markers.
//! - [`quotas`]: [`DynamoQuotas`], per-user quota counters per window (group admin's).
//! - [`schema`]: table definitions and [`schema::ensure_tables`].
//! - [`item`]: message ⇄ item mapping.

pub mod chat;
pub mod client;
pub mod groups;
pub mod inbox;
pub mod item;
pub mod push;
pub mod quotas;
pub mod schema;
pub mod sequences;

pub use aws_sdk_dynamodb::Client;
pub use chat::DynamoChatStore;
pub use client::{client, sdk_config, DynamoConfig};
pub use groups::DynamoGroups;
pub use inbox::DynamoInbox;
pub use push::DynamoPush;
pub use quotas::DynamoQuotas;
pub use schema::{ensure_tables, Tables};
pub use sequences::{epoch_base, DynamoSequences, MovedHomes};

use connect_core::PortError;

pub(crate) fn unavailable(e: impl std::fmt::Display) -> PortError {
    PortError::unavailable("dynamodb", e)
}

/// Counts one request to DynamoDB (`connect_dynamodb_requests_total{op}`): the benchmarks
/// divide it by the messages carried.
pub(crate) fn requested(op: &'static str) {
    metrics::counter!("connect_dynamodb_requests_total", "op" => op).increment(1);
}

/// A conditional write's outcome: `true` if it was written, `false` if its condition did not
/// hold; any other failure is `unavailable`.
pub(crate) fn written<T, E, R>(
    result: Result<T, aws_sdk_dynamodb::error::SdkError<E, R>>,
) -> Result<bool, PortError>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match result {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error().and_then(|s| s.code())
                == Some("ConditionalCheckFailedException") =>
        {
            Ok(false)
        }
        Err(e) => Err(unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(e))),
    }
}

/// BatchWriteItem takes at most 25 puts.
pub(crate) const BATCH: usize = 25;
/// Rounds of re-sending unprocessed items before the batch is failed.
const UNPROCESSED_ROUNDS: u32 = 8;

/// The wait before re-sending what a batch call left unprocessed (throttling): 10 ms, doubling
/// per round up to 640 ms.
async fn unprocessed_backoff(round: u32) {
    tokio::time::sleep(std::time::Duration::from_millis(10 << round.min(6))).await;
}

/// Puts up to [`BATCH`] items, each into its table, with one BatchWriteItem (one call may
/// span tables), re-sending unprocessed ones with backoff.
pub(crate) async fn batch_put_tables(
    client: &Client,
    items: Vec<(&str, Item)>,
) -> Result<(), PortError> {
    use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
    let mut requests: std::collections::HashMap<String, Vec<WriteRequest>> =
        std::collections::HashMap::new();
    for (table, item) in items {
        let put = PutRequest::builder()
            .set_item(Some(item))
            .build()
            .map_err(unavailable)?;
        requests
            .entry(table.to_owned())
            .or_default()
            .push(WriteRequest::builder().put_request(put).build());
    }
    for round in 0..UNPROCESSED_ROUNDS {
        requested("BatchWriteItem");
        let out = client
            .batch_write_item()
            .set_request_items(Some(requests))
            .send()
            .await
            .map_err(|e| unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
        requests = out.unprocessed_items.unwrap_or_default();
        requests.retain(|_, r| !r.is_empty());
        if requests.is_empty() {
            return Ok(());
        }
        unprocessed_backoff(round).await;
    }
    Err(unavailable(format!(
        "{} items still unprocessed",
        requests.values().map(Vec::len).sum::<usize>()
    )))
}

pub(crate) type Item = std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>;

/// Puts every (table, item): [`BATCH`] per BatchWriteItem whatever their tables, `concurrency`
/// calls at once.
pub(crate) async fn put_items(
    client: &Client,
    items: Vec<(&str, Item)>,
    concurrency: usize,
) -> Result<(), PortError> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let mut writes = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let chunk: Vec<(&str, Item)> = items.by_ref().take(BATCH).collect();
        writes.push(batch_put_tables(client, chunk));
    }
    stream::iter(writes)
        .buffer_unordered(concurrency.max(1))
        .try_collect::<()>()
        .await
}

/// BatchGetItem calls of one [`batch_get`] in flight at once.
const GETS_IN_FLIGHT: usize = 8;

/// Reads the items at `keys` (those that exist, in no particular order), 100 keys per
/// BatchGetItem ([`GETS_IN_FLIGHT`] at once), re-asking unprocessed keys with backoff;
/// `consistent` for reads that must see every answered write.
pub(crate) async fn batch_get(
    client: &Client,
    table: &str,
    keys: Vec<Item>,
    consistent: bool,
) -> Result<Vec<Item>, PortError> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    // BatchGetItem refuses a request with the same key twice (a user's two devices in one
    // conversation ask for the same marker): each key once.
    let mut seen = std::collections::HashSet::new();
    let keys: Vec<Item> = keys
        .into_iter()
        .filter(|k| {
            let canonical: std::collections::BTreeMap<&String, String> =
                k.iter().map(|(name, v)| (name, format!("{v:?}"))).collect();
            seen.insert(format!("{canonical:?}"))
        })
        .collect();
    let chunks: Vec<Vec<Item>> = keys.chunks(100).map(<[Item]>::to_vec).collect();
    let found: Vec<Vec<Item>> = stream::iter(chunks)
        .map(|chunk| async move { batch_get_chunk(client, table, chunk, consistent).await })
        .buffer_unordered(GETS_IN_FLIGHT)
        .try_collect()
        .await?;
    Ok(found.into_iter().flatten().collect())
}

/// One BatchGetItem of at most 100 keys, re-asking unprocessed keys with backoff.
async fn batch_get_chunk(
    client: &Client,
    table: &str,
    chunk: Vec<Item>,
    consistent: bool,
) -> Result<Vec<Item>, PortError> {
    use aws_sdk_dynamodb::types::KeysAndAttributes;
    let mut items = Vec::with_capacity(chunk.len());
    let mut request = Some(
        KeysAndAttributes::builder()
            .set_keys(Some(chunk))
            .consistent_read(consistent)
            .build()
            .map_err(unavailable)?,
    );
    for round in 0..UNPROCESSED_ROUNDS {
        let Some(req) = request.take() else { break };
        if round > 0 {
            unprocessed_backoff(round - 1).await;
        }
        requested("BatchGetItem");
        let out = client
            .batch_get_item()
            .request_items(table, req)
            .send()
            .await
            .map_err(|e| unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
        if let Some(found) = out.responses().and_then(|r| r.get(table)) {
            items.extend(found.iter().cloned());
        }
        request = out
            .unprocessed_keys
            .and_then(|mut u| u.remove(table))
            .filter(|k| !k.keys().is_empty());
    }
    if request.is_some() {
        return Err(unavailable("keys still unprocessed"));
    }
    Ok(items)
}
