//! What travels between the parts.

use serde::{Deserialize, Serialize};

use connect_protocol::{
    ClientMsgId, ConversationId, GroupEvent, MessageFrame, ServerFrame, UserId,
};

/// Where the answer to a send goes: the sending connection and its gateway's slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTo {
    pub conn: String,
    pub slot: u32,
    /// The region of the gateway (set when a send is forwarded to its conversation's home
    /// region; none: the region that took it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// A message submitted for sequencing: the record on `incoming_messages` (key = conversation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    pub conversation: ConversationId,
    pub sender: UserId,
    pub id: ClientMsgId,
    pub body: String,
    /// The connection to answer with `accepted` / `error`; none for system messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<ReplyTo>,
    /// A group change (system message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<GroupEvent>,
    /// When the gateway took the send (ms since the epoch; 0 = unknown): messaging refuses a
    /// client send that waited too long (overload shedding).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub submitted_ms: u64,
    /// The sending connection's device (`?device=`): that device has the message (`accepted`),
    /// the sender's other devices get it like any recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// How many times it was forwarded to another region (its conversation's home).
    #[serde(default, skip_serializing_if = "is_zero_u8")]
    pub hops: u8,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_u8(n: &u8) -> bool {
    *n == 0
}

impl Submission {
    /// The dedupe key: (sender, client id).
    pub fn dedupe_key(&self) -> DedupeKey {
        DedupeKey {
            sender: self.sender.clone(),
            id: self.id.clone(),
        }
    }
}

/// (sender, client message id): a send retried with the same pair is the same message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupeKey {
    pub sender: UserId,
    pub id: ClientMsgId,
}

/// What an accepted message was given: remembered under its [`DedupeKey`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acceptance {
    pub conversation: ConversationId,
    pub seq: u64,
    pub ts: u64,
    /// A group message's membership version ([`StoredMessage::mv`]).
    pub mv: Option<u64>,
}

/// A message with its place in the conversation, as stored in the chat table (and, as JSON, as
/// replicated to the other regions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub conversation: ConversationId,
    pub seq: u64,
    pub from: UserId,
    pub id: ClientMsgId,
    pub body: String,
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<GroupEvent>,
    /// A group message: the membership version it was sequenced under (its audience is the
    /// members who had joined by then, replayed or drained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mv: Option<u64>,
    /// The device that sent it (it does not get it back on reconnect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

impl StoredMessage {
    /// The message as the contract shows it.
    pub fn to_frame(&self) -> MessageFrame {
        MessageFrame {
            conversation: self.conversation.to_string(),
            seq: self.seq,
            from: self.from.to_string(),
            group: self.conversation.group_id().map(ToString::to_string),
            id: self.id.to_string(),
            body: self.body.clone(),
            ts: self.ts,
            event: self.event.clone(),
        }
    }

    /// The `message` frame text, rendered once for every recipient.
    pub fn frame_text(&self) -> String {
        ServerFrame::Message(&self.to_frame()).to_text()
    }

    /// The `accepted` frame text for the sender.
    pub fn accepted_text(&self) -> String {
        ServerFrame::Accepted {
            id: self.id.as_str(),
            conversation: &self.conversation.to_string(),
            seq: self.seq,
            ts: self.ts,
        }
        .to_text()
    }
}

/// Where one live session of a user is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRoute {
    /// Connection id (the `session` of `hello`).
    pub conn: String,
    /// The gateway's slot = its partition of `outgoing_messages`.
    pub slot: u32,
    /// Gateway instance id.
    pub gateway: String,
    /// The gateway's API Gateway Management API endpoint.
    pub endpoint: String,
    /// The connection's device (`?device=`; none from a gateway that does not say).
    pub device: Option<String>,
}

/// A session to record in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: UserId,
    pub route: SessionRoute,
}

/// A change of one user's read state in a conversation (gateway → messaging, a `marker` record
/// on `incoming_messages`, key = conversation): messaging checks it, clamps it to the
/// conversation's head, keeps it only if it moves a marker forward, stores it and sends the
/// receipts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerUpdate {
    pub conversation: ConversationId,
    pub user: UserId,
    /// The user has read up to here (0: no change).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub read: u64,
    /// A device of the user acked up to here (0: no change).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delivered: u64,
    /// The device that sent the `read`: its cursor moves up to the (clamped) marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The connection that sent it: left out of the receipts, and answered `forbidden` when a
    /// `read` is not the user's to make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<ReplyTo>,
}

/// A `typing` frame on its way to the conversation's other members (gateway → messaging, on
/// `incoming_messages` beside the sends, key = conversation). Ephemeral: never stored, never
/// retried, dropped once older than messaging's limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypingUpdate {
    pub conversation: ConversationId,
    pub user: UserId,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stop: bool,
    /// When the gateway took it (ms since the epoch).
    pub ts: u64,
    /// The typist's connection: answered `forbidden` when the user is not a member, and never
    /// sent the typing.
    pub reply: ReplyTo,
}

/// A user's markers in one conversation (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Markers {
    pub read: u64,
    pub delivered: u64,
    /// When they last moved (ms since the epoch).
    pub ts: u64,
}

impl Markers {
    /// The `receipt` frame text for `user` in `conversation`.
    pub fn receipt_text(&self, conversation: &str, user: &str) -> String {
        ServerFrame::Receipt {
            conversation,
            user,
            read: self.read,
            delivered: self.delivered,
            ts: self.ts,
        }
        .to_text()
    }
}

/// A frame that is not a message (a `receipt`), for some users' connections on one gateway: sent
/// live or never (not logged, not held back while a backlog comes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    /// What it is about, e.g. `<conversation> <user>` for a receipt: a connection gets at most
    /// one signal per key per second (a burst sends the latest).
    pub key: String,
    pub frame: String,
    /// A connection that does not get it (the one whose frame caused it).
    pub except: Option<String>,
}

/// A message for one gateway's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    pub conversation: String,
    pub seq: u64,
    pub ts: u64,
    /// The `message` frame text.
    pub frame: String,
}

/// A frame for exactly one connection (the sender's `accepted` or `error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub conn: String,
    pub frame: String,
}

/// One record on `outgoing_messages`, for the gateway that owns `slot`: a message and the users
/// on that gateway who get it, and/or a reply for one connection there. The reply's connection
/// does not also get the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub slot: u32,
    pub recipients: Vec<UserId>,
    pub message: Option<OutboundMessage>,
    pub reply: Option<Reply>,
    /// A signal for the recipients (then `message` is none).
    pub signal: Option<Signal>,
    /// A presence change for the connections there that watch its user (then nothing else).
    pub presence: Option<PresenceSignal>,
}

/// A watched user's new presence, for the connections of one gateway that watch them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceSignal {
    pub user: UserId,
    /// The view's version: a connection never gets an older view after a newer one.
    pub version: u64,
    /// The `presence` frame.
    pub frame: String,
}

/// A message in its conversation's log: the offline state, kept once per conversation
/// (bounded), whatever the number of members. A device's backlog is read from it above the
/// device's cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// A direct conversation is also indexed in both users' inboxes (a user's groups come from
    /// the membership index instead).
    pub conversation: ConversationId,
    pub seq: u64,
    /// The `message` frame text, exactly as a live delivery carries it.
    pub frame: String,
    /// A group message's membership version ([`StoredMessage::mv`]; 0: none, a direct message
    /// or one stored before versions were kept): a member who joined later does not get it.
    pub mv: u64,
    /// The device that sent it, which does not get it back.
    pub device: Option<String>,
}

impl LogEntry {
    /// The entry a stored message would have in its log (the drain reads history where a log
    /// falls short).
    pub fn of(message: &StoredMessage) -> Self {
        Self {
            conversation: message.conversation.clone(),
            seq: message.seq,
            frame: message.frame_text(),
            mv: message.mv.unwrap_or(0),
            device: message.device.clone(),
        }
    }
}

/// The device a connection without `?device=` belongs to.
pub const DEFAULT_DEVICE: &str = "default";

fn default_device() -> String {
    DEFAULT_DEVICE.to_owned()
}

/// A record on `user_connected` (key = user): a connection that its device's backlog should be
/// pushed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserConnected {
    pub user: UserId,
    /// The connection id (the `session` of `hello`).
    pub conn: String,
    pub gateway: String,
    /// The gateway's API Gateway Management API endpoint.
    pub endpoint: String,
    pub ts: u64,
    /// The connection's device (`?device=`; [`DEFAULT_DEVICE`] without one).
    #[serde(default = "default_device")]
    pub device: String,
    /// A drain that ran out of its time continues here (a record the drain published itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resume>,
    /// Drains of this connection that failed before (a backend was down); past a bound the
    /// record is dropped and the device gets its backlog on its next connection.
    #[serde(default, skip_serializing_if = "is_zero_u8")]
    pub attempt: u8,
}

/// Where a drain continues: in `conversation` (the drain goes through conversations in id
/// order) after `after` (or the device's cursor, if that is further).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub conversation: String,
    pub after: u64,
}
