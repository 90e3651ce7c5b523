//! WebSocket frames: parsing what clients send, rendering what the server sends.
//!
//! Parsing never panics: every defect becomes a [`FrameError`] with the contract's code and, for a
//! `send`, the client's `id` so the `error` frame can name the send it answers.

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
        let value: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(bad("a frame must be a JSON object"));
        };
        match string_field(&obj, "type")? {
            "send" => {
                let id = obj.get("id").and_then(Value::as_str);
                Self::parse_send(&obj, limits).map_err(|e| e.with_id(id))
            }
            "ack" => {
                let (conversation, seq) = Self::conversation_and_seq(&obj)?;
                Ok(Self::Ack { conversation, seq })
            }
            "read" => {
                let (conversation, seq) = Self::conversation_and_seq(&obj)?;
                Ok(Self::Read { conversation, seq })
            }
            "typing" => Ok(Self::Typing {
                conversation: Self::conversation(&obj)?,
                stop: match obj.get("stop") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(bad("`stop` must be true or false")),
                },
            }),
            "watch" => Self::parse_watch(&obj, limits),
            other => Err(bad(format!("unknown frame type `{other}`"))),
        }
    }

    fn parse_send(obj: &Map<String, Value>, limits: &FrameLimits) -> Result<Self, FrameError> {
        let id = ClientMsgId::parse(string_field(obj, "id")?).map_err(|e| bad(e.to_string()))?;
        let body = string_field(obj, "body")?;
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
        let target = match (obj.get("to"), obj.get("group")) {
            (Some(_), Some(_)) => return Err(bad("give either `to` or `group`, not both")),
            (None, None) => return Err(bad("missing field `to` (or `group`)")),
            (Some(_), None) => SendTarget::User(
                UserId::parse(string_field(obj, "to")?).map_err(|e| bad(format!("`to`: {e}")))?,
            ),
            (None, Some(_)) => SendTarget::Group(
                GroupId::parse(string_field(obj, "group")?)
                    .map_err(|e| bad(format!("`group`: {e}")))?,
            ),
        };
        Ok(Self::Send {
            id,
            target,
            body: body.to_owned(),
        })
    }

    fn conversation(obj: &Map<String, Value>) -> Result<ConversationId, FrameError> {
        ConversationId::parse(string_field(obj, "conversation")?)
            .map_err(|e| bad(format!("`conversation`: {e}")))
    }

    /// `conversation` and `seq` (a whole number >= 1) of an `ack` or `read`.
    fn conversation_and_seq(obj: &Map<String, Value>) -> Result<(ConversationId, u64), FrameError> {
        let conversation = Self::conversation(obj)?;
        let seq = match obj.get("seq") {
            Some(v) => v.as_u64().filter(|s| *s >= 1),
            None => return Err(bad("missing field `seq`")),
        }
        .ok_or_else(|| bad("`seq` must be a whole number >= 1"))?;
        Ok((conversation, seq))
    }

    fn parse_watch(obj: &Map<String, Value>, limits: &FrameLimits) -> Result<Self, FrameError> {
        let Some(Value::Array(list)) = obj.get("users") else {
            return Err(bad("`users` must be a list of user ids"));
        };
        if list.len() > limits.max_watch_users {
            return Err(bad(format!(
                "`users` lists {} users; the limit is {}",
                list.len(),
                limits.max_watch_users
            )));
        }
        let mut users = Vec::with_capacity(list.len());
        for v in list {
            let id = v
                .as_str()
                .ok_or_else(|| bad("`users` must be a list of user ids"))?;
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
