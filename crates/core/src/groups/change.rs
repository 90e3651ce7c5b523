//! Group changes read from the group table's stream.

use connect_protocol::{GroupId, UserId};

/// A change to a group, read from the group table's stream; it becomes a system message of
/// the group's conversation (so it gets a seq like any message, and messaging drops the group
/// from its membership cache when it passes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupChange {
    /// The stream record's id: the system message's client id is derived from it, so a record
    /// delivered twice is one message.
    pub event_id: String,
    pub group: GroupId,
    /// `group_created`, `member_added`, `member_removed`.
    pub kind: &'static str,
    /// Who made the change (`from` of the message).
    pub by: UserId,
    /// Who was added or removed.
    pub user: Option<UserId>,
}

fn attr<'a>(image: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    image.get(name)?.get("S")?.as_str()
}

impl GroupChange {
    /// From a stream record (`INSERT` / `MODIFY` / `REMOVE`, images in DynamoDB JSON). Members
    /// written with the group are covered by its `group_created`; other records are no change.
    pub fn from_record(
        event_id: &str,
        event_name: &str,
        new: &serde_json::Value,
        old: &serde_json::Value,
    ) -> Option<Self> {
        let image = if event_name == "REMOVE" { old } else { new };
        let group = GroupId::parse(attr(image, "group")?).ok()?;
        let item = attr(image, "item")?;
        let user = |name| attr(image, name).and_then(|u| UserId::parse(u).ok());
        let (kind, by, member) = match (event_name, item) {
            ("INSERT", "meta") => ("group_created", user("owner")?, None),
            ("INSERT", i) if i.starts_with("m#") => {
                if image.get("initial").and_then(|v| v.get("BOOL"))
                    == Some(&serde_json::Value::Bool(true))
                {
                    return None;
                }
                let member = user("user")?;
                (
                    "member_added",
                    user("by").unwrap_or_else(|| member.clone()),
                    Some(member),
                )
            }
            ("REMOVE", i) if i.starts_with("m#") => {
                let member = user("user")?;
                (
                    "member_removed",
                    user("removed_by").unwrap_or_else(|| member.clone()),
                    Some(member),
                )
            }
            _ => return None,
        };
        Some(Self {
            event_id: event_id.to_owned(),
            group,
            kind,
            by,
            user: member,
        })
    }

    /// The system message for `incoming_messages`.
    pub fn submission(&self) -> crate::model::Submission {
        let id: String = format!("ev-{}", self.event_id)
            .chars()
            .filter(char::is_ascii_graphic)
            .take(64)
            .collect();
        crate::model::Submission {
            conversation: connect_protocol::ConversationId::group(self.group.clone()),
            sender: self.by.clone(),
            id: connect_protocol::ClientMsgId::parse(id)
                .unwrap_or_else(|_| connect_protocol::ClientMsgId::parse("ev").expect("static id")),
            body: String::new(),
            reply: None,
            event: Some(connect_protocol::GroupEvent {
                kind: self.kind.to_owned(),
                user: self.user.as_ref().map(ToString::to_string),
            }),
            submitted_ms: 0,
            device: None,
            hops: 0,
        }
    }
}
