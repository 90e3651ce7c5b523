//! Active-active regions (ARCHITECTURE: Multi-region). Each conversation has a home region that
//! owns its sequence (the sequence item's `home`). Messaging in another region forwards a send
//! to the home (`forward_<home>`, replicated there by MirrorMaker 2 as `<here>.forward_<home>`);
//! the home sequences and stores it and publishes the result once on `sequenced_messages`,
//! which MirrorMaker 2 replicates to every other region (`<home>.sequenced_messages`). There a
//! local step logs it in the region's conversation log, remembers its acceptance, and delivers
//! it from the region-local registry, with the sender's `accepted` / `error` when the send came
//! in there. Acks travel the same way (`acks` → `<region>.acks`), so a device's cursors hold in
//! whichever region it connects to. A `typing` signal rides `sequenced_messages` too (a replica
//! with only `typing`), so the members' connections in every region get it.
//!
//! This module holds the records and the ports; [`crate::messaging`] does the work.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use connect_protocol::{ErrorCode, FrameError, UserId};

use crate::model::{ReplyTo, StoredMessage, Submission};
use crate::ports::{ConversationLog, PendingPublish};
use crate::PortError;

/// Forwards a send at most this many times (a home that moves while a send is on its way
/// sends it on once more); past it the sender gets `unavailable` and retries.
pub const MAX_HOPS: u8 = 3;

/// This region and the others (`CONNECT_REGION`, `CONNECT_PEER_REGIONS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Regions {
    pub local: String,
    pub peers: Vec<String>,
}

impl Regions {
    /// One region: nothing is forwarded or replicated.
    pub fn single(local: impl Into<String>) -> Self {
        Self {
            local: local.into(),
            peers: Vec::new(),
        }
    }

    /// `local` and a comma-separated list of peers (blank entries and `local` itself ignored).
    pub fn parse(local: &str, peers: &str) -> Result<Self, connect_config::ConfigError> {
        let mut list: Vec<String> = Vec::new();
        for p in peers.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if !valid_name(p) {
                return Err(connect_config::ConfigError::new(
                    "CONNECT_PEER_REGIONS",
                    format!("region {p:?}: letters, digits and '-' only (it names Kafka topics)"),
                ));
            }
            if p != local && !list.iter().any(|l| l == p) {
                list.push(p.to_owned());
            }
        }
        if !valid_name(local) {
            return Err(connect_config::ConfigError::new(
                "CONNECT_REGION",
                format!("region {local:?}: letters, digits and '-' only (it names Kafka topics)"),
            ));
        }
        Ok(Self {
            local: local.to_owned(),
            peers: list,
        })
    }

    /// `CONNECT_REGION` (default `local`) and `CONNECT_PEER_REGIONS` (comma-separated; none).
    pub fn from_settings(
        settings: &connect_config::Settings,
    ) -> Result<Self, connect_config::ConfigError> {
        Self::parse(
            &settings.string("CONNECT_REGION", "local"),
            &settings.string("CONNECT_PEER_REGIONS", ""),
        )
    }

    /// The topics messaging reads from the other regions, as MirrorMaker 2 names them here:
    /// (`<peer>.forward_<local>`, `<peer>.<sequenced>`, `<peer>.<acks>`) for each peer.
    pub fn mirrored_topics(&self, sequenced: &str, acks: &str) -> Vec<(String, String, String)> {
        self.peers
            .iter()
            .map(|p| {
                (
                    remote_topic(p, &forward_topic(&self.local)),
                    remote_topic(p, sequenced),
                    remote_topic(p, acks),
                )
            })
            .collect()
    }

    /// Whether other regions exist (forwarding and replication on).
    pub fn active(&self) -> bool {
        !self.peers.is_empty()
    }

    /// Whether a reply belongs to a connection in this region (no region: where it was taken).
    pub fn is_local(&self, reply: &ReplyTo) -> bool {
        reply
            .region
            .as_deref()
            .is_none_or(|r| r == self.local.as_str())
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The local topic a region forwards sends for `home` to (MirrorMaker 2 replicates it to
/// `home`, where it is read as `<region>.forward_<home>`).
pub fn forward_topic(home: &str) -> String {
    format!("forward_{home}")
}

/// The name MirrorMaker 2's default replication policy gives `topic` of region `source`.
pub fn remote_topic(source: &str, topic: &str) -> String {
    format!("{source}.{topic}")
}

/// An error answering a forwarded send, for its region's connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    pub code: ErrorCode,
    pub message: String,
}

impl RemoteError {
    pub fn of(e: &FrameError) -> Self {
        Self {
            code: e.code,
            message: e.message.clone(),
        }
    }

    pub fn to_frame_error(&self, id: Option<String>) -> FrameError {
        let mut e = FrameError::new(self.code, self.message.clone());
        e.id = id;
        e
    }
}

/// A record on `sequenced_messages` (key = conversation): what the home region did with one
/// send, for the other regions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// The region that sequenced it.
    pub home: String,
    /// The stored message (none for an error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<StoredMessage>,
    /// Deliver `message` to its audience's local sessions (false: only answer the sender).
    #[serde(default)]
    pub deliver: bool,
    /// The sending connection, in the region named on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<ReplyTo>,
    /// The send was refused: `error` for `reply` (with the send's `id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RemoteError>,
    /// The refused send's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A `typing` signal taken in this region, for the members' connections in the others
    /// (ephemeral there too: dropped once too old, never answered across regions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typing: Option<Box<crate::model::TypingUpdate>>,
}

/// A record on `acks` (key = user): a device's cursor moved, for the other regions' cursors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRecord {
    pub user: UserId,
    pub device: String,
    pub conversation: String,
    pub seq: u64,
}

/// What messaging reads besides `incoming_messages` when other regions exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A send taken by this region's gateways (`incoming_messages`).
    Send(Submission),
    /// A send another region forwarded here (`<region>.forward_<here>`): it goes into this
    /// region's `incoming_messages` (same key, so the same partition and the same messaging
    /// process as the conversation's local sends, which keeps one allocator per conversation).
    Forwarded(Submission),
    /// Another region's sequenced message or forwarded send's answer.
    Replica(Replica),
    /// Another region's ack.
    Ack(AckRecord),
    /// A read-state change from this region's gateways (`incoming_messages`).
    Marker(crate::model::MarkerUpdate),
    /// A `typing` signal from this region's gateways (`incoming_messages`).
    Typing(crate::model::TypingUpdate),
}

/// Messaging → the other regions (and forwarded sends into this region's `incoming_messages`).
#[async_trait]
pub trait RegionBus: Send + Sync {
    /// Publishes sends forwarded here into this region's `incoming_messages`.
    async fn take_in(&self, sends: &[Submission]) -> Result<(), PortError>;
    /// Publishes sends for conversations homed elsewhere, each to its home's forward topic.
    async fn forward(&self, sends: &[(String, Submission)]) -> Result<(), PortError>;
    /// Publishes sequenced messages and remote answers for the other regions.
    async fn replicate(&self, replicas: &[Replica]) -> Result<(), PortError>;
}

/// Gateway → the other regions: acks.
pub trait AckBus: Send + Sync {
    fn publish(&self, ack: &AckRecord) -> PendingPublish;
}

/// A [`ConversationLog`] whose acks also go to the other regions (the gateway's, when other
/// regions exist): everything else is the region's own log.
pub struct SharedCursors {
    inner: Arc<dyn ConversationLog>,
    acks: Arc<dyn AckBus>,
}

impl SharedCursors {
    pub fn new(inner: Arc<dyn ConversationLog>, acks: Arc<dyn AckBus>) -> Self {
        Self { inner, acks }
    }
}

#[async_trait]
impl ConversationLog for SharedCursors {
    async fn append(&self, entries: &[crate::model::LogEntry]) -> Result<(), PortError> {
        self.inner.append(entries).await
    }
    async fn inbox(&self, user: &UserId) -> Result<Vec<(String, u64)>, PortError> {
        self.inner.inbox(user).await
    }
    async fn heads(&self, conversations: &[String]) -> Result<Vec<u64>, PortError> {
        self.inner.heads(conversations).await
    }
    async fn page(
        &self,
        conversation: &connect_protocol::ConversationId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<crate::model::LogEntry>, PortError> {
        self.inner.page(conversation, after, limit).await
    }
    async fn cursors(
        &self,
        user: &UserId,
        device: &str,
    ) -> Result<HashMap<String, u64>, PortError> {
        self.inner.cursors(user, device).await
    }
    /// The local cursor first (the region the device is in), then the record for the others;
    /// a failed publish is an error like a failed local write (the device's messages may come
    /// again in another region: at least once).
    async fn ack(
        &self,
        user: &UserId,
        device: &str,
        conversation: &str,
        seq: u64,
    ) -> Result<(), PortError> {
        self.inner.ack(user, device, conversation, seq).await?;
        self.acks
            .publish(&AckRecord {
                user: user.clone(),
                device: device.to_owned(),
                conversation: conversation.to_owned(),
                seq,
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_parsed_without_the_local_region_or_repeats() {
        let r = Regions::parse("a", "b, a,,b,c").unwrap();
        assert_eq!(r.peers, vec!["b".to_owned(), "c".to_owned()]);
        assert!(r.active());
        assert!(!Regions::parse("a", "").unwrap().active());
        assert!(Regions::parse("a", "b.c").is_err());
        assert!(Regions::parse("a b", "").is_err());
    }

    #[test]
    fn a_reply_is_local_without_a_region_or_with_this_one() {
        let r = Regions::parse("a", "b").unwrap();
        let mut reply = ReplyTo {
            conn: "c".into(),
            slot: 0,
            region: None,
        };
        assert!(r.is_local(&reply));
        reply.region = Some("a".into());
        assert!(r.is_local(&reply));
        reply.region = Some("b".into());
        assert!(!r.is_local(&reply));
    }

    #[test]
    fn a_replica_survives_json() {
        let r = Replica {
            home: "a".into(),
            message: None,
            deliver: false,
            reply: Some(ReplyTo {
                conn: "c".into(),
                slot: 3,
                region: Some("b".into()),
            }),
            error: Some(RemoteError {
                code: ErrorCode::Forbidden,
                message: "no".into(),
            }),
            id: Some("c-1".into()),
            typing: None,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Replica>(&text).unwrap(), r);
    }
}
