//! The history API on the local HTTP API (the same handler as the `history` Lambda).

use std::sync::Arc;

use connect_core::model::StoredMessage;
use connect_core::ports::ChatStore;
use connect_dynamo::DynamoChatStore;
use connect_protocol::{ClientMsgId, ConversationId, UserId};
use serde_json::Value;

use crate::helpers::*;

fn seqs(body: &Value) -> Vec<u64> {
    body["messages"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["seq"].as_u64()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn pages_of_a_120_message_conversation() -> anyhow::Result<()> {
    let (alice, bob) = (user("alice"), user("bob"));
    let conversation = dm(&alice, &bob);
    let store = Arc::new(DynamoChatStore::new(
        dynamo().await,
        connect_dynamo::Tables::from_settings(&settings()).chat,
        4,
    ));
    let messages: Vec<StoredMessage> = (1..=120u64)
        .map(|seq| StoredMessage {
            conversation: ConversationId::parse(&conversation).unwrap(),
            seq,
            from: UserId::parse(if seq % 2 == 0 { &bob } else { &alice }).unwrap(),
            id: ClientMsgId::parse(format!("h{seq}")).unwrap(),
            body: format!("message {seq}"),
            ts: 1_763_800_000_000 + seq,
            event: None,
            mv: None,
            device: None,
        })
        .collect();
    store.put_batch(&messages).await?;
    let path = |q: &str| format!("/v1/conversations/{conversation}/messages{q}");

    let (status, body) = api_get(&path(""), Some(&alice)).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seqs(&body), (71..=120).collect::<Vec<_>>());
    assert_eq!(body["has_more"], true);
    let first = &body["messages"][0];
    assert_eq!(first["conversation"], conversation.as_str());
    assert_eq!(
        (first["from"].as_str(), first["id"].as_str()),
        (Some(alice.as_str()), Some("h71"))
    );
    assert_eq!(first["body"], "message 71");
    assert!(first.get("type").is_none());

    let (_, body) = api_get(&path("?after=0&limit=100"), Some(&bob)).await?;
    assert_eq!(
        (seqs(&body), body["has_more"].as_bool()),
        ((1..=100).collect(), Some(true))
    );
    let (_, body) = api_get(&path("?after=100"), Some(&bob)).await?;
    assert_eq!(
        (seqs(&body), body["has_more"].as_bool()),
        ((101..=120).collect(), Some(false))
    );
    let (_, body) = api_get(&path("?before=51&limit=50"), Some(&bob)).await?;
    assert_eq!(
        (seqs(&body), body["has_more"].as_bool()),
        ((1..=50).collect(), Some(false))
    );
    // Percent-encoded conversation ids work as well.
    let encoded = format!(
        "/v1/conversations/{}/messages?before=3",
        conversation.replace(':', "%3A")
    );
    let (_, body) = api_get(&encoded, Some(&bob)).await?;
    assert_eq!(seqs(&body), [1, 2]);

    let (status, body) = api_get(&path(""), Some(&user("carol"))).await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, body) = api_get(&path(""), None).await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, body) = api_get(&path("?limit=5000"), Some(&alice)).await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (status, _) = api_get(&path("?after=abc"), Some(&alice)).await?;
    assert_eq!(status, 400);
    Ok(())
}
