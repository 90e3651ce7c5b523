//! Record formats on the two topics.
//!
//! `outgoing_messages`: value = the `message` frame text (empty when the record only carries a
//! reply); headers `to` (recipients, comma-separated — user ids have no commas), `conv`, `seq`,
//! `ts`, and for the sender's connection `reply_conn` + `reply` (its `accepted`/`error` frame);
//! a signal (a `receipt`) has its frame as the value, `to`, `signal` (its coalescing key) and
//! `except` (a connection left out); a presence change has its frame as the value and
//! `presence` (`<user> <version>`: it goes to the connections watching the user).
//!
//! `incoming_messages`: value = a [`Submission`] as JSON, or with the header `kind: marker` a
//! [`MarkerUpdate`].

use rdkafka::message::{Header, Headers, OwnedHeaders};

use connect_core::model::{
    Delivery, MarkerUpdate, OutboundMessage, PresenceSignal, Reply, Signal, Submission,
    TypingUpdate,
};
use connect_protocol::UserId;

/// A record that cannot be decoded (logged and skipped: it would never decode).
#[derive(Debug, thiserror::Error)]
#[error("undecodable record: {0}")]
pub struct CodecError(pub String);

pub fn encode_submission(s: &Submission) -> Vec<u8> {
    serde_json::to_vec(s).unwrap_or_default()
}

pub fn decode_submission(payload: &[u8]) -> Result<Submission, CodecError> {
    serde_json::from_slice(payload).map_err(|e| CodecError(e.to_string()))
}

/// The header that marks a record of `incoming_messages` that is not a send.
pub const KIND_HEADER: &str = "kind";
/// Its value for a [`MarkerUpdate`].
pub const MARKER_KIND: &str = "marker";
/// Its value for a [`TypingUpdate`].
pub const TYPING_KIND: &str = "typing";

/// What a record of `incoming_messages` carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Send(Submission),
    Marker(MarkerUpdate),
    Typing(TypingUpdate),
}

/// Decodes a record of `incoming_messages` by its `kind` header.
pub fn decode_incoming<H: Headers>(
    headers: Option<&H>,
    payload: &[u8],
) -> Result<Incoming, CodecError> {
    let kind = headers.and_then(|h| {
        h.iter()
            .find(|h| h.key == KIND_HEADER)
            .and_then(|h| h.value)
    });
    match kind {
        Some(k) if k == MARKER_KIND.as_bytes() => decode_json(payload).map(Incoming::Marker),
        Some(k) if k == TYPING_KIND.as_bytes() => decode_json(payload).map(Incoming::Typing),
        _ => decode_submission(payload).map(Incoming::Send),
    }
}

/// A record of another region (`<region>.sequenced_messages`, `<region>.acks`), or a send
/// forwarded here, as JSON.
pub fn encode_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

pub fn decode_json<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    serde_json::from_slice(payload).map_err(|e| CodecError(e.to_string()))
}

/// Headers and value of a delivery record.
pub fn encode_delivery(d: &Delivery) -> (OwnedHeaders, Vec<u8>) {
    let mut h = OwnedHeaders::new_with_capacity(6);
    let mut value = Vec::new();
    if d.message.is_some() || d.signal.is_some() {
        let to = d
            .recipients
            .iter()
            .map(UserId::as_str)
            .collect::<Vec<_>>()
            .join(",");
        h = h.insert(Header {
            key: "to",
            value: Some(to.as_bytes()),
        });
    }
    if let Some(m) = &d.message {
        h = h
            .insert(Header {
                key: "conv",
                value: Some(m.conversation.as_bytes()),
            })
            .insert(Header {
                key: "seq",
                value: Some(m.seq.to_string().as_bytes()),
            })
            .insert(Header {
                key: "ts",
                value: Some(m.ts.to_string().as_bytes()),
            });
        value = m.frame.as_bytes().to_vec();
    }
    if let Some(signal) = &d.signal {
        h = h.insert(Header {
            key: "signal",
            value: Some(signal.key.as_bytes()),
        });
        if let Some(except) = &signal.except {
            h = h.insert(Header {
                key: "except",
                value: Some(except.as_bytes()),
            });
        }
        value = signal.frame.as_bytes().to_vec();
    }
    if let Some(p) = &d.presence {
        h = h.insert(Header {
            key: "presence",
            value: Some(format!("{} {}", p.user, p.version).as_bytes()),
        });
        value = p.frame.as_bytes().to_vec();
    }
    if let Some(r) = &d.reply {
        h = h
            .insert(Header {
                key: "reply_conn",
                value: Some(r.conn.as_bytes()),
            })
            .insert(Header {
                key: "reply",
                value: Some(r.frame.as_bytes()),
            });
    }
    (h, value)
}

fn text(v: Option<&[u8]>, what: &str) -> Result<String, CodecError> {
    let v = v.ok_or_else(|| CodecError(format!("header `{what}` has no value")))?;
    String::from_utf8(v.to_vec()).map_err(|_| CodecError(format!("header `{what}` is not UTF-8")))
}

fn number(v: Option<&[u8]>, what: &str) -> Result<u64, CodecError> {
    text(v, what)?
        .parse()
        .map_err(|_| CodecError(format!("header `{what}` is not a number")))
}

/// Decodes a delivery record read from `slot`'s partition.
pub fn decode_delivery<H: Headers>(
    slot: u32,
    headers: Option<&H>,
    value: Option<&[u8]>,
) -> Result<Delivery, CodecError> {
    let (mut to, mut conv, mut seq, mut ts, mut reply_conn, mut reply) =
        (None, None, None, None, None, None);
    let (mut signal, mut except, mut presence) = (None, None, None);
    if let Some(headers) = headers {
        for h in headers.iter() {
            match h.key {
                "to" => to = Some(text(h.value, "to")?),
                "conv" => conv = Some(text(h.value, "conv")?),
                "seq" => seq = Some(number(h.value, "seq")?),
                "ts" => ts = Some(number(h.value, "ts")?),
                "reply_conn" => reply_conn = Some(text(h.value, "reply_conn")?),
                "reply" => reply = Some(text(h.value, "reply")?),
                "signal" => signal = Some(text(h.value, "signal")?),
                "except" => except = Some(text(h.value, "except")?),
                "presence" => presence = Some(text(h.value, "presence")?),
                _ => {}
            }
        }
    }
    let recipients = to
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|u| UserId::parse(u).map_err(|e| CodecError(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let message = match (conv, seq) {
        (Some(conversation), Some(seq)) => Some(OutboundMessage {
            conversation,
            seq,
            ts: ts.unwrap_or(0),
            frame: text(value, "value")?,
        }),
        _ => None,
    };
    let reply = match (reply_conn, reply) {
        (Some(conn), Some(frame)) => Some(Reply { conn, frame }),
        _ => None,
    };
    let signal = match signal {
        Some(key) => Some(Signal {
            key,
            frame: text(value, "value")?,
            except,
        }),
        None => None,
    };
    let presence = match presence {
        Some(header) => {
            let bad = || {
                CodecError(format!(
                    "header `presence` is not `<user> <version>`: {header}"
                ))
            };
            let (user, version) = header.split_once(' ').ok_or_else(bad)?;
            Some(PresenceSignal {
                user: UserId::parse(user).map_err(|_| bad())?,
                version: version.parse().map_err(|_| bad())?,
                frame: text(value, "value")?,
            })
        }
        None => None,
    };
    Ok(Delivery {
        slot,
        recipients,
        message,
        reply,
        signal,
        presence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_survives_the_round_trip() {
        let d = Delivery {
            slot: 3,
            recipients: vec![
                UserId::parse("alice").unwrap(),
                UserId::parse("bob").unwrap(),
            ],
            message: Some(OutboundMessage {
                conversation: "dm:alice:bob".into(),
                seq: 9,
                ts: 77,
                frame: "{\"type\":\"message\"}".into(),
            }),
            reply: Some(Reply {
                conn: "c1".into(),
                frame: "{\"type\":\"accepted\"}".into(),
            }),
            signal: None,
            presence: None,
        };
        let (h, v) = encode_delivery(&d);
        assert_eq!(decode_delivery(3, Some(&h), Some(&v)).unwrap(), d);
        let reply_only = Delivery {
            slot: 1,
            recipients: vec![],
            message: None,
            reply: d.reply.clone(),
            signal: None,
            presence: None,
        };
        let (h, v) = encode_delivery(&reply_only);
        assert_eq!(decode_delivery(1, Some(&h), Some(&v)).unwrap(), reply_only);
        let signal = Delivery {
            slot: 2,
            recipients: vec![UserId::parse("bob").unwrap()],
            message: None,
            reply: None,
            signal: Some(Signal {
                key: "dm:alice:bob alice".into(),
                frame: "{\"type\":\"receipt\"}".into(),
                except: Some("c9".into()),
            }),
            presence: None,
        };
        let (h, v) = encode_delivery(&signal);
        assert_eq!(decode_delivery(2, Some(&h), Some(&v)).unwrap(), signal);
        let presence = Delivery {
            slot: 1,
            recipients: Vec::new(),
            message: None,
            reply: None,
            signal: None,
            presence: Some(PresenceSignal {
                user: UserId::parse("bob").unwrap(),
                version: 1_763_800_000_123,
                frame: "{\"type\":\"presence\"}".into(),
            }),
        };
        let (h, v) = encode_delivery(&presence);
        assert_eq!(decode_delivery(1, Some(&h), Some(&v)).unwrap(), presence);
    }

    #[test]
    fn garbage_headers_are_a_codec_error() {
        let h = OwnedHeaders::new().insert(Header {
            key: "seq",
            value: Some(b"x".as_slice()),
        });
        assert!(decode_delivery(0, Some(&h), None).is_err());
        assert!(decode_submission(b"{}").is_err());
    }
}
