//! What a gateway does with one text frame from a client (pure; the socket lives in the gateway).

use connect_protocol::{
    ClientFrame, ConversationId, ErrorCode, FrameError, FrameLimits, SendTarget, UserId,
};

use crate::model::{ReplyTo, Submission};

/// The gateway's next step for one client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Publish to `incoming_messages` (key = conversation).
    Submit(Box<Submission>),
    /// The client holds every message of `conversation` up to `seq`.
    Ack {
        conversation: ConversationId,
        seq: u64,
    },
    /// The user has read `conversation` up to `seq` (checked, clamped and stored by messaging).
    Read {
        conversation: ConversationId,
        seq: u64,
    },
    /// The user is typing in `conversation` (`stop`: no longer).
    Typing {
        conversation: ConversationId,
        stop: bool,
    },
    /// The connection's new watch list.
    Watch(Vec<UserId>),
    /// Answer with an `error` frame; the connection stays open.
    Reject(FrameError),
}

/// Parses and checks a frame from `user`'s connection `reply`.
pub fn handle_text(user: &UserId, reply: ReplyTo, text: &str, limits: &FrameLimits) -> Inbound {
    match ClientFrame::parse(text, limits) {
        Err(e) => Inbound::Reject(e),
        Ok(ClientFrame::Ack { conversation, seq }) => Inbound::Ack { conversation, seq },
        Ok(ClientFrame::Read { conversation, seq }) => {
            if conversation.is_direct_member(user) || conversation.group_id().is_some() {
                Inbound::Read { conversation, seq }
            } else {
                Inbound::Reject(not_a_member())
            }
        }
        Ok(ClientFrame::Typing { conversation, stop }) => {
            if conversation.is_direct_member(user) || conversation.group_id().is_some() {
                Inbound::Typing { conversation, stop }
            } else {
                Inbound::Reject(not_a_member())
            }
        }
        Ok(ClientFrame::Watch { users }) => Inbound::Watch(users),
        Ok(ClientFrame::Send { id, target, body }) => {
            let conversation = match target {
                SendTarget::Group(g) => ConversationId::group(g),
                SendTarget::User(peer) => match ConversationId::direct(user, &peer) {
                    Ok(c) => c,
                    Err(_) => {
                        let mut e = FrameError::new(
                            ErrorCode::BadRequest,
                            "cannot send a direct message to yourself",
                        );
                        e.id = Some(id.to_string());
                        return Inbound::Reject(e);
                    }
                },
            };
            Inbound::Submit(Box::new(Submission {
                conversation,
                sender: user.clone(),
                id,
                body,
                reply: Some(reply),
                event: None,
                submitted_ms: crate::now_ms(),
                device: None,
                hops: 0,
            }))
        }
    }
}

/// The answer to a frame about a conversation the user is not in.
pub fn not_a_member() -> FrameError {
    FrameError::new(ErrorCode::Forbidden, "not a member of this conversation")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    fn reply() -> ReplyTo {
        ReplyTo {
            conn: "c1".into(),
            slot: 3,
            region: None,
        }
    }

    #[test]
    fn a_direct_send_becomes_a_submission_in_the_dm_conversation() {
        let r = handle_text(
            &alice(),
            reply(),
            r#"{"type":"send","id":"m1","to":"bob","body":"hi"}"#,
            &FrameLimits::default(),
        );
        let Inbound::Submit(s) = r else {
            panic!("{r:?}")
        };
        assert_eq!(s.conversation.to_string(), "dm:alice:bob");
        assert_eq!(s.reply, Some(reply()));
        let r = handle_text(
            &UserId::parse("zed").unwrap(),
            reply(),
            r#"{"type":"send","id":"m1","to":"bob","body":"hi"}"#,
            &FrameLimits::default(),
        );
        let Inbound::Submit(s) = r else {
            panic!("{r:?}")
        };
        assert_eq!(s.conversation.to_string(), "dm:bob:zed");
    }

    #[test]
    fn a_send_to_yourself_is_a_bad_request_with_the_id() {
        let r = handle_text(
            &alice(),
            reply(),
            r#"{"type":"send","id":"m2","to":"alice","body":"hi"}"#,
            &FrameLimits::default(),
        );
        let Inbound::Reject(e) = r else {
            panic!("{r:?}")
        };
        assert_eq!(
            (e.code, e.id.as_deref()),
            (ErrorCode::BadRequest, Some("m2"))
        );
    }

    #[test]
    fn group_sends_and_acks_pass_through() {
        let r = handle_text(
            &alice(),
            reply(),
            r#"{"type":"send","id":"m3","group":"g_1","body":"x"}"#,
            &FrameLimits::default(),
        );
        assert!(matches!(r, Inbound::Submit(s) if s.conversation.to_string() == "group:g_1"));
        let r = handle_text(
            &alice(),
            reply(),
            r#"{"type":"ack","conversation":"dm:alice:bob","seq":4}"#,
            &FrameLimits::default(),
        );
        assert!(matches!(r, Inbound::Ack { seq: 4, .. }));
    }

    #[test]
    fn read_and_typing_into_someone_elses_direct_conversation_are_forbidden() {
        let limits = FrameLimits::default();
        for text in [
            r#"{"type":"read","conversation":"dm:bob:carol","seq":3}"#,
            r#"{"type":"typing","conversation":"dm:bob:carol"}"#,
        ] {
            let r = handle_text(&alice(), reply(), text, &limits);
            assert!(
                matches!(&r, Inbound::Reject(e) if e.code == ErrorCode::Forbidden),
                "{text}: {r:?}"
            );
        }
        let r = handle_text(
            &alice(),
            reply(),
            r#"{"type":"read","conversation":"dm:alice:bob","seq":3}"#,
            &limits,
        );
        assert!(matches!(r, Inbound::Read { seq: 3, .. }));
        let r = handle_text(
            &alice(),
            reply(),
            r#"{"type":"typing","conversation":"group:g_1","stop":true}"#,
            &limits,
        );
        assert!(matches!(r, Inbound::Typing { stop: true, .. }));
    }
}
