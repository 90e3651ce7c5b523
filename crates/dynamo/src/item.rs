//! Message ⇄ chat table item.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use connect_core::model::StoredMessage;
use connect_protocol::{ClientMsgId, ConversationId, GroupEvent, UserId};

pub type Item = HashMap<String, AttributeValue>;

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub fn to_item(m: &StoredMessage) -> Item {
    let mut item = Item::with_capacity(8);
    item.insert("conversation".into(), s(m.conversation.to_string()));
    item.insert("seq".into(), n(m.seq));
    item.insert("from".into(), s(m.from.as_str()));
    item.insert("id".into(), s(m.id.as_str()));
    item.insert("body".into(), s(&m.body));
    item.insert("ts".into(), n(m.ts));
    if let Some(e) = &m.event {
        item.insert("event_kind".into(), s(&e.kind));
        if let Some(u) = &e.user {
            item.insert("event_user".into(), s(u));
        }
    }
    if let Some(mv) = m.mv {
        item.insert("mv".into(), n(mv));
    }
    if let Some(d) = &m.device {
        item.insert("device".into(), s(d));
    }
    item
}

fn get_s<'a>(item: &'a Item, k: &str) -> Option<&'a str> {
    item.get(k)?.as_s().ok().map(String::as_str)
}

fn get_n(item: &Item, k: &str) -> Option<u64> {
    item.get(k)?.as_n().ok()?.parse().ok()
}

/// The message an item holds; None for an item that is not a well-formed message.
pub fn from_item(item: &Item) -> Option<StoredMessage> {
    Some(StoredMessage {
        conversation: ConversationId::parse(get_s(item, "conversation")?).ok()?,
        seq: get_n(item, "seq")?,
        from: UserId::parse(get_s(item, "from")?).ok()?,
        id: ClientMsgId::parse(get_s(item, "id")?).ok()?,
        body: get_s(item, "body")?.to_owned(),
        ts: get_n(item, "ts")?,
        event: get_s(item, "event_kind").map(|kind| GroupEvent {
            kind: kind.to_owned(),
            user: get_s(item, "event_user").map(str::to_owned),
        }),
        mv: get_n(item, "mv"),
        device: get_s(item, "device").map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let m = StoredMessage {
            conversation: ConversationId::parse("group:g1").unwrap(),
            seq: 3,
            from: UserId::parse("bob").unwrap(),
            id: ClientMsgId::parse("x:1").unwrap(),
            body: "".into(),
            ts: 17,
            event: Some(GroupEvent {
                kind: "member_added".into(),
                user: Some("dave".into()),
            }),
            mv: Some(4),
            device: Some("phone".into()),
        };
        assert_eq!(from_item(&to_item(&m)), Some(m.clone()));
        let plain = StoredMessage {
            event: None,
            mv: None,
            device: None,
            ..m
        };
        assert_eq!(from_item(&to_item(&plain)), Some(plain));
    }
}
