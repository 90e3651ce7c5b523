//! WebSocket frames: parsing what clients send, rendering what the server sends.
//!
//! Parsing never panics: every defect becomes a [`FrameError`] with the contract's code and, for a
//! `send`, the client's `id` so the `error` frame can name the send it answers.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{ClientMsgId, ConversationId, ErrorCode, GroupId, UserId};

/// Size limits applied while parsing (the contract's defaults: 64 KiB frame, 16 KiB body, 256
/// users in a `watch` list).
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    pub max_frame_bytes: usize,
    pub max_body_bytes: usize,
    pub max_watch_users: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            max_body_bytes: 16 * 1024,
            max_watch_users: 256,
        }
    }
}

/// Where a `send` goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendTarget {
    User(UserId),
    Group(GroupId),
}

/// A frame from a client, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Send {
        id: ClientMsgId,
        target: SendTarget,
        body: String,
    },
    Ack {
        conversation: ConversationId,
        seq: u64,
    },
    /// The user has read `conversation` up to `seq` (all their devices share the marker).
    Read {
        conversation: ConversationId,
        seq: u64,
    },
    /// The user is typing in `conversation` (`stop`: no longer).
    Typing {
        conversation: ConversationId,
        stop: bool,
    },
    /// Replaces the connection's watch list (presence).
    Watch { users: Vec<UserId> },
}

/// A client frame the server refuses; becomes an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    /// The `id` of the `send` this error answers, when it could be read.
    pub id: Option<String>,
}

impl FrameError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            id: None,
        }
    }

    fn with_id(mut self, id: Option<&str>) -> Self {
        self.id = id.map(str::to_owned);
        self
    }

    /// The `error` frame for this error.
    pub fn to_frame(&self) -> ServerFrame<'_> {
        ServerFrame::Error {
            code: self.code,
            message: &self.message,
            id: self.id.as_deref(),
        }
    }
}

fn bad(message: impl Into<String>) -> FrameError {
    FrameError::new(ErrorCode::BadRequest, message)
}

fn string_field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, FrameError> {
    match obj.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(bad(format!("`{name}` must be a string"))),
        None => Err(bad(format!("missing field `{name}`"))),
    }
}

fn missing(name: &str) -> FrameError {
    bad(format!("missing field `{name}`"))
}

const SEQ_RANGE: &str = "`seq` must be a whole number >= 1";
const USERS_LIST: &str = "`users` must be a list of user ids";

/// A frame's fields, as [`ClientFrame::from_fields`] validates them: read from a typed
/// [`Flat`] (every field already of its type) or from a JSON object (each checked here).
trait Fields {
    /// A string field: missing, or not a string, is an error.
    fn string(&self, name: &str) -> Result<&str, FrameError>;
    /// Whether the field is there at all (whatever its value).
    fn has(&self, name: &str) -> bool;
    /// The send's `id`, when it is a string (so that an error can name the send).
    fn id(&self) -> Option<&str>;
    /// `seq`, a whole number >= 1.
    fn seq(&self) -> Result<u64, FrameError>;
    /// `stop`: true, false, null or missing (false).
    fn stop(&self) -> Result<bool, FrameError>;
    /// `users`, a list; each entry's id when it is a string.
    fn users(&self) -> Result<Vec<Option<&str>>, FrameError>;
}

impl Fields for Map<String, Value> {
    fn string(&self, name: &str) -> Result<&str, FrameError> {
        string_field(self, name)
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn id(&self) -> Option<&str> {
        self.get("id").and_then(Value::as_str)
    }

    fn seq(&self) -> Result<u64, FrameError> {
        match self.get("seq") {
            Some(v) => v.as_u64().filter(|s| *s >= 1).ok_or_else(|| bad(SEQ_RANGE)),
            None => Err(missing("seq")),
        }
    }

    fn stop(&self) -> Result<bool, FrameError> {
        match self.get("stop") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(bad("`stop` must be true or false")),
        }
    }

    fn users(&self) -> Result<Vec<Option<&str>>, FrameError> {
        let Some(Value::Array(list)) = self.get("users") else {
            return Err(bad(USERS_LIST));
        };
        Ok(list.iter().map(Value::as_str).collect())
    }
}

/// A frame read straight into its fields, borrowing from the text where no escape stands in
/// the way: what a well-formed frame costs. Any surprise (a field of another type, a `null`, a
/// field given twice, not an object) fails this read, and the frame is read again as a JSON
/// object, whose checks give the error: both reads accept the same frames, with the same
/// outcome.
#[derive(Deserialize)]
struct Flat<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "present")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    body: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    to: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    group: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    conversation: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "present")]
    seq: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    stop: Option<bool>,
    #[serde(borrow, default, deserialize_with = "present")]
    users: Option<Vec<Cow<'a, str>>>,
}

/// A field that is there holds a value of its type (`null` is not one).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

impl Flat<'_> {
    fn field(&self, name: &str) -> Option<&str> {
        match name {
            "type" => self.kind.as_deref(),
            "id" => self.id.as_deref(),
            "body" => self.body.as_deref(),
            "to" => self.to.as_deref(),
            "group" => self.group.as_deref(),
            "conversation" => self.conversation.as_deref(),
            _ => None,
        }
    }
}

impl Fields for Flat<'_> {
    fn string(&self, name: &str) -> Result<&str, FrameError> {
        self.field(name).ok_or_else(|| missing(name))
    }

    fn has(&self, name: &str) -> bool {
        self.field(name).is_some()
    }

    fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    fn seq(&self) -> Result<u64, FrameError> {
        match self.seq {
            Some(seq) if seq >= 1 => Ok(seq),
            Some(_) => Err(bad(SEQ_RANGE)),
            None => Err(missing("seq")),
        }
    }

    fn stop(&self) -> Result<bool, FrameError> {
        Ok(self.stop.unwrap_or(false))
    }

    fn users(&self) -> Result<Vec<Option<&str>>, FrameError> {
        match &self.users {
            Some(list) => Ok(list.iter().map(|u| Some(u.as_ref())).collect()),
            None => Err(bad(USERS_LIST)),
        }
    }
}

impl ClientFrame {
    /// Parses one text frame.
    pub fn parse(text: &str, limits: &FrameLimits) -> Result<Self, FrameError> {
        if text.len() > limits.max_frame_bytes {
            return Err(FrameError::new(
                ErrorCode::TooLarge,
                format!(
                    "frame is {} bytes; the limit is {}",
                    text.len(),
                    limits.max_frame_bytes
                ),
            ));
        }
        // Only an object: a derived struct would also read a JSON array, by position.
        let object = text
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{');
        if object {
            if let Ok(flat) = serde_json::from_str::<Flat<'_>>(text) {
                return Self::from_fields(&flat, limits);
            }
        }
        Self::parse_object(text, limits)
    }

    /// The frame read as a JSON object (what [`Self::parse`] falls back on).
    fn parse_object(text: &str, limits: &FrameLimits) -> Result<Self, FrameError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(bad("a frame must be a JSON object"));
        };
        Self::from_fields(&obj, limits)
    }

    fn from_fields(f: &impl Fields, limits: &FrameLimits) -> Result<Self, FrameError> {
        match f.string("type")? {
            "send" => Self::parse_send(f, limits).map_err(|e| e.with_id(f.id())),
            "ack" => {
                let (conversation, seq) = Self::conversation_and_seq(f)?;
                Ok(Self::Ack { conversation, seq })
            }
            "read" => {
                let (conversation, seq) = Self::conversation_and_seq(f)?;
                Ok(Self::Read { conversation, seq })
            }
            "typing" => Ok(Self::Typing {
                conversation: Self::conversation(f)?,
                stop: f.stop()?,
            }),
            "watch" => Self::parse_watch(f, limits),
            other => Err(bad(format!("unknown frame type `{other}`"))),
        }
    }

    fn parse_send(f: &impl Fields, limits: &FrameLimits) -> Result<Self, FrameError> {
        let id = ClientMsgId::parse(f.string("id")?).map_err(|e| bad(e.to_string()))?;
        let body = f.string("body")?;
        if body.len() > limits.max_body_bytes {
            return Err(FrameError::new(
                ErrorCode::TooLarge,
                format!(
                    "body is {} bytes; the limit is {}",
                    body.len(),
                    limits.max_body_bytes
                ),
            ));
        }
        let target = match (f.has("to"), f.has("group")) {
            (true, true) => return Err(bad("give either `to` or `group`, not both")),
            (false, false) => return Err(bad("missing field `to` (or `group`)")),
            (true, false) => SendTarget::User(
                UserId::parse(f.string("to")?).map_err(|e| bad(format!("`to`: {e}")))?,
            ),
            (false, true) => SendTarget::Group(
                GroupId::parse(f.string("group")?).map_err(|e| bad(format!("`group`: {e}")))?,
            ),
        };
        Ok(Self::Send {
            id,
            target,
            body: body.to_owned(),
        })
    }

    fn conversation(f: &impl Fields) -> Result<ConversationId, FrameError> {
        ConversationId::parse(f.string("conversation")?)
            .map_err(|e| bad(format!("`conversation`: {e}")))
    }

    /// `conversation` and `seq` (a whole number >= 1) of an `ack` or `read`.
    fn conversation_and_seq(f: &impl Fields) -> Result<(ConversationId, u64), FrameError> {
        let conversation = Self::conversation(f)?;
        Ok((conversation, f.seq()?))
    }

    fn parse_watch(f: &impl Fields, limits: &FrameLimits) -> Result<Self, FrameError> {
        let list = f.users()?;
        if list.len() > limits.max_watch_users {
            return Err(bad(format!(
                "`users` lists {} users; the limit is {}",
                list.len(),
                limits.max_watch_users
            )));
        }
        let mut users = Vec::with_capacity(list.len());
        for id in list {
            let id = id.ok_or_else(|| bad(USERS_LIST))?;
            let user = UserId::parse(id).map_err(|e| bad(format!("`users`: {e}")))?;
            if !users.contains(&user) {
                users.push(user);
            }
        }
        Ok(Self::Watch { users })
    }
}

/// A group change carried by a system message (`event` in the `message` frame).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupEvent {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user: Option<String>,
}

/// A stored message as the contract shows it: the `message` frame without `type`, and the items
/// of a history page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageFrame {
    pub conversation: String,
    pub seq: u64,
    pub from: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub group: Option<String>,
    pub id: String,
    pub body: String,
    pub ts: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub event: Option<GroupEvent>,
}

/// A frame the server sends.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Hello {
        user: &'a str,
        session: &'a str,
        gateway: &'a str,
    },
    Accepted {
        id: &'a str,
        conversation: &'a str,
        seq: u64,
        ts: u64,
    },
    Message(&'a MessageFrame),
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
    /// `user`'s read and delivered markers in `conversation`, as they are now.
    Receipt {
        conversation: &'a str,
        user: &'a str,
        read: u64,
        delivered: u64,
        ts: u64,
    },
    /// `user` is typing in `conversation` (or, with `stop`, no longer).
    Typing {
        conversation: &'a str,
        user: &'a str,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        stop: bool,
    },
    /// A watched user's presence.
    Presence {
        user: &'a str,
        #[serde(flatten)]
        state: Presence,
    },
}

/// What a `presence` frame says of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Presence {
    /// At least one open connection somewhere.
    Online { online: Always<true> },
    /// No open connection; `last_seen` when the last one closed (none: never seen).
    Offline {
        online: Always<false>,
        #[serde(skip_serializing_if = "Option::is_none")]
        last_seen: Option<u64>,
    },
    /// The caller may not watch this user.
    Hidden { hidden: Always<true> },
}

impl Presence {
    pub const ONLINE: Presence = Presence::Online { online: Always };
    pub const HIDDEN: Presence = Presence::Hidden { hidden: Always };

    pub fn offline(last_seen: Option<u64>) -> Self {
        Presence::Offline {
            online: Always,
            last_seen,
        }
    }
}

/// A boolean field that is always `B` (renders as `true` / `false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Always<const B: bool>;

impl<const B: bool> Serialize for Always<B> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(B)
    }
}

impl ServerFrame<'_> {
    /// The frame as the JSON text sent on the socket.
    pub fn to_text(&self) -> String {
        // Serialising these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ClientFrame, FrameError> {
        ClientFrame::parse(s, &FrameLimits::default())
    }

    #[test]
    fn parses_a_direct_send_and_ignores_unknown_fields() {
        let f = parse(r#"{"type":"send","id":"c-1","to":"bob","body":"hi","x":1}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::Send {
                id: ClientMsgId::parse("c-1").unwrap(),
                target: SendTarget::User(UserId::parse("bob").unwrap()),
                body: "hi".into()
            }
        );
    }

    #[test]
    fn parses_group_send_and_ack() {
        let f = parse(r#"{"type":"send","id":"c-2","group":"g_7f3a","body":"hi all"}"#).unwrap();
        assert!(matches!(
            f,
            ClientFrame::Send {
                target: SendTarget::Group(_),
                ..
            }
        ));
        let f = parse(r#"{"type":"ack","conversation":"dm:alice:bob","seq":17}"#).unwrap();
        assert!(matches!(f, ClientFrame::Ack { seq: 17, .. }));
    }

    #[test]
    fn every_defect_has_its_code_and_keeps_the_send_id() {
        let cases = [
            ("not json", ErrorCode::BadRequest, None),
            ("[1,2]", ErrorCode::BadRequest, None),
            (r#"{"id":"x"}"#, ErrorCode::BadRequest, None),
            (r#"{"type":"dance"}"#, ErrorCode::BadRequest, None),
            (
                r#"{"type":"send","id":"c-3","body":"x"}"#,
                ErrorCode::BadRequest,
                Some("c-3"),
            ),
            (
                r#"{"type":"send","id":"c-4","to":"b b","body":"x"}"#,
                ErrorCode::BadRequest,
                Some("c-4"),
            ),
            (
                r#"{"type":"send","id":"c-5","to":"b","group":"g","body":"x"}"#,
                ErrorCode::BadRequest,
                Some("c-5"),
            ),
            (
                r#"{"type":"send","id":"c-6","to":"b","body":7}"#,
                ErrorCode::BadRequest,
                Some("c-6"),
            ),
            (
                r#"{"type":"send","id":"","to":"b","body":"x"}"#,
                ErrorCode::BadRequest,
                Some(""),
            ),
            (
                r#"{"type":"ack","conversation":"dm:b:a","seq":1}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"ack","conversation":"dm:a:b","seq":-1}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"ack","conversation":"dm:a:b","seq":"1"}"#,
                ErrorCode::BadRequest,
                None,
            ),
        ];
        for (text, code, id) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!((e.code, e.id.as_deref()), (code, id), "{text}");
        }
    }

    #[test]
    fn the_typed_read_and_the_object_read_agree() {
        let limits = FrameLimits {
            max_frame_bytes: 64 * 1024,
            max_body_bytes: 8,
            max_watch_users: 2,
        };
        let corpus = [
            r#"{"type":"send","id":"c-1","to":"bob","body":"hi"}"#,
            r#"{"type":"send","id":"c-1","group":"g_1","body":"hi"}"#,
            r#"{"type":"send","id":"c-1","to":"bob","group":"g_1","body":"hi"}"#,
            r#"{"type":"send","id":"c-1","body":"hi"}"#,
            r#"{"type":"send","id":"c-1","to":"bob","body":"far too long"}"#,
            r#"{"type":"send","id":"c\u002d1","to":"b\"ob","body":"h\ni"}"#,
            r#"{"type":"send","id":"c-1","to":null,"body":"hi"}"#,
            r#"{"type":"send","id":7,"to":"bob","body":"hi"}"#,
            r#"{"type":"send","id":"c-1","id":"c-2","to":"bob","body":"hi"}"#,
            r#"{"type":"send","id":"","to":"bob","body":"hi"}"#,
            r#"{"type":"send","id":"c-1","to":"b b","body":"hi"}"#,
            r#"{"type":"send","id":"c-1","to":"bob","body":"hi","extra":[1,{"a":null}]}"#,
            r#"{"type":"ack","conversation":"dm:a:b","seq":3}"#,
            r#"{"type":"ack","conversation":"dm:a:b","seq":0}"#,
            r#"{"type":"ack","conversation":"dm:a:b","seq":-1}"#,
            r#"{"type":"ack","conversation":"dm:a:b","seq":1.0}"#,
            r#"{"type":"ack","conversation":"dm:a:b","seq":18446744073709551616}"#,
            r#"{"type":"ack","conversation":"dm:a:b","seq":"1"}"#,
            r#"{"type":"ack","conversation":"dm:a:b"}"#,
            r#"{"type":"ack","conversation":"x","seq":1}"#,
            r#"{"type":"ack","conversation":"dm:a:b","seq":1,"body":5}"#,
            r#"{"type":"read","conversation":"group:g_1","seq":9}"#,
            r#"{"type":"typing","conversation":"dm:a:b","stop":true}"#,
            r#"{"type":"typing","conversation":"dm:a:b","stop":null}"#,
            r#"{"type":"typing","conversation":"dm:a:b","stop":"yes"}"#,
            r#"{"type":"watch","users":["bob","carol","bob"]}"#,
            r#"{"type":"watch","users":["a","b","c"]}"#,
            r#"{"type":"watch","users":["a",1,"c"]}"#,
            r#"{"type":"watch","users":["a",1]}"#,
            r#"{"type":"watch","users":"bob"}"#,
            r#"{"type":"watch","users":null}"#,
            r#"{"type":"watch"}"#,
            r#"{"type":"nope"}"#,
            r#"{"type":7}"#,
            r#"{}"#,
            r#" {"type":"ack","conversation":"dm:a:b","seq":3} "#,
            r#"["ack","dm:a:b"]"#,
            r#"["send","c-1","hi","bob"]"#,
            r#""ack""#,
            r#"{"type":"ack","#,
            r#"{"type":"ack","conversation":"dm:a:b","seq":3}x"#,
        ];
        for text in corpus {
            let typed = serde_json::from_str::<Flat<'_>>(text)
                .ok()
                .filter(|_| text.trim_start().starts_with('{'))
                .map(|flat| ClientFrame::from_fields(&flat, &limits));
            let object = ClientFrame::parse_object(text, &limits);
            if let Some(typed) = typed {
                assert_eq!(typed, object, "{text}");
            }
            assert_eq!(ClientFrame::parse(text, &limits), object, "{text}");
        }
        // The typed read is the one that takes the well-formed frames.
        for text in [corpus[0], corpus[12], corpus[25]] {
            assert!(serde_json::from_str::<Flat<'_>>(text).is_ok(), "{text}");
        }
    }

    #[test]
    fn read_typing_and_watch_parse_and_refuse_what_is_wrong() {
        let f = parse(r#"{"type":"read","conversation":"group:g_1","seq":9}"#).unwrap();
        assert!(matches!(f, ClientFrame::Read { seq: 9, .. }));
        let f = parse(r#"{"type":"typing","conversation":"dm:a:b","stop":true}"#).unwrap();
        assert!(matches!(f, ClientFrame::Typing { stop: true, .. }));
        let f = parse(r#"{"type":"typing","conversation":"dm:a:b"}"#).unwrap();
        assert!(matches!(f, ClientFrame::Typing { stop: false, .. }));
        let f = parse(r#"{"type":"watch","users":["bob","carol","bob"]}"#).unwrap();
        let ClientFrame::Watch { users } = f else {
            panic!("{f:?}")
        };
        assert_eq!(users.len(), 2, "a repeated user is watched once");
        let many: Vec<String> = (0..257).map(|i| format!("\"u{i}\"")).collect();
        let text = format!(r#"{{"type":"watch","users":[{}]}}"#, many.join(","));
        assert_eq!(parse(&text).unwrap_err().code, ErrorCode::BadRequest);
        let at_limit = format!(r#"{{"type":"watch","users":[{}]}}"#, many[..256].join(","));
        assert!(parse(&at_limit).is_ok());
        for bad in [
            r#"{"type":"read","conversation":"dm:a:b","seq":0}"#,
            r#"{"type":"read","conversation":"dm:a:b"}"#,
            r#"{"type":"read","seq":3}"#,
            r#"{"type":"typing","conversation":"dm:a:b","stop":"yes"}"#,
            r#"{"type":"typing","conversation":"x"}"#,
            r#"{"type":"watch","users":"bob"}"#,
            r#"{"type":"watch","users":["b b"]}"#,
            r#"{"type":"watch","users":[1]}"#,
        ] {
            assert_eq!(parse(bad).unwrap_err().code, ErrorCode::BadRequest, "{bad}");
        }
    }

    #[test]
    fn receipt_typing_and_presence_render() {
        let text = ServerFrame::Typing {
            conversation: "dm:a:b",
            user: "a",
            stop: false,
        }
        .to_text();
        assert_eq!(
            text,
            r#"{"type":"typing","conversation":"dm:a:b","user":"a"}"#
        );
        let text = ServerFrame::Presence {
            user: "bob",
            state: Presence::offline(None),
        }
        .to_text();
        assert_eq!(text, r#"{"type":"presence","user":"bob","online":false}"#);
        let text = ServerFrame::Presence {
            user: "x",
            state: Presence::HIDDEN,
        }
        .to_text();
        assert_eq!(text, r#"{"type":"presence","user":"x","hidden":true}"#);
    }

    #[test]
    fn limits_are_enforced() {
        let body = "x".repeat(16 * 1024 + 1);
        let e = parse(&format!(
            r#"{{"type":"send","id":"big","to":"bob","body":"{body}"}}"#
        ))
        .unwrap_err();
        assert_eq!(
            (e.code, e.id.as_deref()),
            (ErrorCode::TooLarge, Some("big"))
        );
        let ok = "x".repeat(16 * 1024);
        assert!(parse(&format!(
            r#"{{"type":"send","id":"ok","to":"bob","body":"{ok}"}}"#
        ))
        .is_ok());
        let huge = format!(r#"{{"type":"send","pad":"{}"}}"#, "x".repeat(64 * 1024));
        assert_eq!(parse(&huge).unwrap_err().code, ErrorCode::TooLarge);
    }

    #[test]
    fn server_frames_render_as_the_contract_shows() {
        let hello = ServerFrame::Hello {
            user: "alice",
            session: "s1",
            gateway: "gw",
        }
        .to_text();
        assert_eq!(
            hello,
            r#"{"type":"hello","user":"alice","session":"s1","gateway":"gw"}"#
        );
        let m = MessageFrame {
            conversation: "group:g".into(),
            seq: 5,
            from: "bob".into(),
            group: Some("g".into()),
            id: "i".into(),
            body: "".into(),
            ts: 9,
            event: Some(GroupEvent {
                kind: "member_added".into(),
                user: Some("dave".into()),
            }),
        };
        let v: Value = serde_json::from_str(&ServerFrame::Message(&m).to_text()).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["event"]["kind"], "member_added");
        assert_eq!(v["group"], "g");
        let e = FrameError::new(ErrorCode::TooLarge, "big").with_id(Some("c-1"));
        assert_eq!(
            e.to_frame().to_text(),
            r#"{"type":"error","code":"too_large","message":"big","id":"c-1"}"#
        );
    }
}
