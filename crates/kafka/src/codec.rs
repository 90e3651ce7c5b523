//! Record formats on the two topics.
//!
//! `outgoing_messages`: a record carries the deliveries of one messaging batch (or presence
//! sweep) for one gateway slot, in order ([`delivery_records`]), marked by the header
//! `batch: 1`; its value is a run of entries, each a `u32` (big-endian) length and the
//! delivery's fields, each a `u8` name length, the name, a `u32` value length and the value.
//! A delivery's fields: `value`, the `message` frame text (none when it only carries a reply);
//! `to` (recipients, comma-separated — user ids have no commas), `conv`, `seq`, `ts`, and for the
//! sender's connection `reply_conn` + `reply` (its `accepted`/`error` frame); a signal (a
//! `receipt`, typing) has its frame as `value`, `to`, `signal` (its coalescing key) and `except`
//! (a connection left out); a presence change has its frame as `value` and `presence`
//! (`<user> <version>`: it goes to the connections watching the user). A record without the
//! `batch` header is one delivery whose fields are its headers and whose frame is its value: the
//! format before batching, still read.
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
    // Room for the fields around the body up front: `to_vec` starts at 128 bytes and grows
    // twice for a send of a 100-byte body.
    let mut out = Vec::with_capacity(320 + s.body.len());
    match serde_json::to_writer(&mut out, s) {
        Ok(()) => out,
        Err(_) => Vec::new(),
    }
}

pub fn decode_submission(payload: &[u8]) -> Result<Submission, CodecError> {
    serde_json::from_slice(payload).map_err(|e| CodecError(e.to_string()))
}

/// The W3C Trace Context header a send carries from the gateway (`00-<trace id>-<parent>-01`):
/// its trace id names the send in every log line about it (`trace_id`, target
/// `connect::trace`, at debug level), so `grep <trace id>` over the services' logs shows its
/// path.
pub const TRACE_HEADER: &str = "traceparent";

/// A fresh `traceparent` value and its trace id (32 hex digits, random).
pub fn new_traceparent() -> (String, String) {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    // The sending gateway's span: any 16 hex digits, not all zero; the trace id's second half
    // (one random draw per send, not two).
    let parent = &trace[16..];
    (format!("00-{trace}-{parent}-01"), trace)
}

/// The trace id of a record's `traceparent` header, if it has a well-formed one.
pub fn trace_id<H: Headers>(headers: Option<&H>) -> Option<&str> {
    let value = headers?
        .iter()
        .find(|h| h.key == TRACE_HEADER)
        .and_then(|h| h.value)?;
    let value = std::str::from_utf8(value).ok()?;
    let mut parts = value.split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit())).then_some(trace)
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

/// Where a delivery's fields go: a record's headers (one delivery per record, the format before
/// batching) or an entry of a batch record.
trait FieldSink {
    fn field(&mut self, key: &'static str, value: &[u8]);
}

/// A delivery's fields (the headers of the one-per-record format) into `sink`; returns its
/// frame (the record's value; empty when it only carries a reply).
fn write_fields<'d>(d: &'d Delivery, sink: &mut impl FieldSink) -> &'d [u8] {
    let mut value: &[u8] = &[];
    if d.message.is_some() || d.signal.is_some() {
        let mut to = String::with_capacity(d.recipients.len() * 12);
        for (i, user) in d.recipients.iter().enumerate() {
            if i > 0 {
                to.push(',');
            }
            to.push_str(user.as_str());
        }
        sink.field("to", to.as_bytes());
    }
    if let Some(m) = &d.message {
        sink.field("conv", m.conversation.as_bytes());
        sink.field("seq", m.seq.to_string().as_bytes());
        sink.field("ts", m.ts.to_string().as_bytes());
        value = m.frame.as_bytes();
    }
    if let Some(signal) = &d.signal {
        sink.field("signal", signal.key.as_bytes());
        if let Some(except) = &signal.except {
            sink.field("except", except.as_bytes());
        }
        value = signal.frame.as_bytes();
    }
    if let Some(p) = &d.presence {
        sink.field("presence", format!("{} {}", p.user, p.version).as_bytes());
        value = p.frame.as_bytes();
    }
    if let Some(r) = &d.reply {
        sink.field("reply_conn", r.conn.as_bytes());
        sink.field("reply", r.frame.as_bytes());
    }
    value
}

/// The default of the largest batch record (`MESSAGING_OUTGOING_RECORD_MAX_BYTES`).
pub const RECORD_MAX_BYTES_DEFAULT: usize = 256 * 1024;

/// The header that marks a record of `outgoing_messages` carrying several deliveries; its value
/// is the format's version.
pub const BATCH_HEADER: &str = "batch";
const BATCH_VERSION: &[u8] = b"1";
/// The key of a delivery's frame among its fields in a batch record.
const VALUE_FIELD: &str = "value";

/// An entry of a batch record: `u8` key length, key, `u32` (big-endian) value length, value.
impl FieldSink for Vec<u8> {
    fn field(&mut self, key: &'static str, value: &[u8]) {
        self.push(key.len() as u8);
        self.extend_from_slice(key.as_bytes());
        self.extend_from_slice(&(value.len() as u32).to_be_bytes());
        self.extend_from_slice(value);
    }
}

/// Appends one delivery as an entry of a batch record: `u32` (big-endian) length, then its
/// fields.
fn push_entry(record: &mut Vec<u8>, d: &Delivery) {
    let at = record.len();
    record.extend_from_slice(&[0; 4]);
    let value = write_fields(d, record);
    if !value.is_empty() {
        record.field(VALUE_FIELD, value);
    }
    let len = (record.len() - at - 4) as u32;
    record[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// The records of `outgoing_messages` for `deliveries`: per slot, its deliveries in their
/// order, in as few records as keep each under `max_bytes` (a delivery larger than that goes
/// alone). One slot's records come in order: published in this order, each slot's partition
/// gets its deliveries in the order given. Each record goes with [`batch_headers`].
pub fn delivery_records(deliveries: &[Delivery], max_bytes: usize) -> Vec<(u32, Vec<u8>)> {
    let mut open: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut done = Vec::new();
    for d in deliveries {
        let i = match open.iter().position(|(slot, _)| *slot == d.slot) {
            Some(i) => i,
            None => {
                open.push((d.slot, Vec::new()));
                open.len() - 1
            }
        };
        let record = &mut open[i].1;
        let before = record.len();
        push_entry(record, d);
        if before > 0 && record.len() > max_bytes {
            let entry = record.split_off(before);
            done.push((d.slot, std::mem::replace(record, entry)));
        }
    }
    // Full records went first: any later record of a slot follows its earlier ones.
    done.extend(open);
    done
}

/// The headers of a batch record.
pub fn batch_headers() -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(1).insert(Header {
        key: BATCH_HEADER,
        value: Some(BATCH_VERSION),
    })
}

fn text(v: Option<&[u8]>, what: &str) -> Result<String, CodecError> {
    let v = v.ok_or_else(|| CodecError(format!("header `{what}` has no value")))?;
    String::from_utf8(v.to_vec()).map_err(|_| CodecError(format!("header `{what}` is not UTF-8")))
}

fn str_of<'a>(v: Option<&'a [u8]>, what: &str) -> Result<&'a str, CodecError> {
    let v = v.ok_or_else(|| CodecError(format!("header `{what}` has no value")))?;
    std::str::from_utf8(v).map_err(|_| CodecError(format!("header `{what}` is not UTF-8")))
}

fn number(v: Option<&[u8]>, what: &str) -> Result<u64, CodecError> {
    str_of(v, what)?
        .parse()
        .map_err(|_| CodecError(format!("header `{what}` is not a number")))
}

/// Decodes a record read from `slot`'s partition of `outgoing_messages`: a batch record (header
/// [`BATCH_HEADER`]) or a record of one delivery (the format before batching, which a messaging
/// process of an older release still writes during a rolling deploy). Each entry decodes on its
/// own: one that does not is an error in its place, and the others still go; a batch whose
/// framing breaks ends with an error.
pub fn decode_record<H: Headers>(
    slot: u32,
    headers: Option<&H>,
    value: Option<&[u8]>,
) -> Vec<Result<Delivery, CodecError>> {
    let batch = headers.and_then(|h| h.iter().find(|h| h.key == BATCH_HEADER));
    let Some(batch) = batch else {
        let fields = headers
            .into_iter()
            .flat_map(|h| h.iter().map(|h| (h.key, h.value)));
        return vec![decode_fields(slot, fields, value)];
    };
    if batch.value != Some(BATCH_VERSION) {
        return vec![Err(CodecError(format!(
            "batch format {:?} is not one this gateway reads",
            batch.value.map(String::from_utf8_lossy)
        )))];
    }
    let mut rest = value.unwrap_or_default();
    let mut out = Vec::new();
    while !rest.is_empty() {
        let Some((entry, after)) = take_sized(rest) else {
            out.push(Err(CodecError(
                "a batch entry runs past the record's end".into(),
            )));
            break;
        };
        rest = after;
        out.push(decode_entry(slot, entry));
    }
    out
}

/// `n` bytes off the front of `bytes`, and the rest.
fn take(bytes: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    (bytes.len() >= n).then(|| bytes.split_at(n))
}

/// A `u32` (big-endian) length off the front of `bytes`, then that many bytes, and the rest.
fn take_sized(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = take(bytes, 4)?;
    take(rest, u32::from_be_bytes(len.try_into().ok()?) as usize)
}

/// One entry of a batch record (its fields, see [`push_entry`]), read in place.
fn decode_entry(slot: u32, mut entry: &[u8]) -> Result<Delivery, CodecError> {
    let mut broken = None;
    let fields = std::iter::from_fn(|| {
        if entry.is_empty() {
            return None;
        }
        let field = (|| {
            let (key_len, rest) = take(entry, 1)?;
            let (key, rest) = take(rest, key_len[0] as usize)?;
            let (v, rest) = take_sized(rest)?;
            Some((std::str::from_utf8(key).ok()?, v, rest))
        })();
        match field {
            Some((key, v, rest)) => {
                entry = rest;
                Some((key, Some(v)))
            }
            None => {
                broken = Some(CodecError(
                    "a batch entry's field is cut short or misnamed".into(),
                ));
                None
            }
        }
    });
    let delivery = decode_fields(slot, fields, None);
    match broken {
        Some(e) => Err(e),
        None => delivery,
    }
}

/// A delivery from its fields (a record's headers, or a batch entry's fields with its frame
/// among them as [`VALUE_FIELD`]) and frame.
fn decode_fields<'a>(
    slot: u32,
    fields: impl Iterator<Item = (&'a str, Option<&'a [u8]>)>,
    mut value: Option<&'a [u8]>,
) -> Result<Delivery, CodecError> {
    let (mut to, mut conv, mut seq, mut ts, mut reply_conn, mut reply) =
        (None, None, None, None, None, None);
    let (mut signal, mut except, mut presence) = (None, None, None);
    for (key, v) in fields {
        match key {
            VALUE_FIELD => value = v,
            "to" => to = Some(str_of(v, "to")?),
            "conv" => conv = Some(text(v, "conv")?),
            "seq" => seq = Some(number(v, "seq")?),
            "ts" => ts = Some(number(v, "ts")?),
            "reply_conn" => reply_conn = Some(text(v, "reply_conn")?),
            "reply" => reply = Some(text(v, "reply")?),
            "signal" => signal = Some(text(v, "signal")?),
            "except" => except = Some(text(v, "except")?),
            "presence" => presence = Some(text(v, "presence")?),
            _ => {}
        }
    }
    let recipients = to
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

    /// A record in the one-delivery-per-record format (what a messaging process of an older
    /// release writes).
    fn single_record(d: &Delivery) -> (OwnedHeaders, Vec<u8>) {
        struct Sink(Option<OwnedHeaders>);
        impl FieldSink for Sink {
            fn field(&mut self, key: &'static str, value: &[u8]) {
                let h = self.0.take().unwrap_or_default();
                self.0 = Some(h.insert(Header {
                    key,
                    value: Some(value),
                }));
            }
        }
        let mut sink = Sink(Some(OwnedHeaders::new()));
        let value = write_fields(d, &mut sink).to_vec();
        (sink.0.unwrap(), value)
    }

    fn user(u: &str) -> UserId {
        UserId::parse(u).unwrap()
    }

    /// One delivery of each kind, for `slot`.
    fn every_kind(slot: u32) -> Vec<Delivery> {
        let message = Delivery {
            slot,
            recipients: vec![user("alice"), user("bob")],
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
        let reply_only = Delivery {
            recipients: vec![],
            message: None,
            ..message.clone()
        };
        let signal = Delivery {
            slot,
            recipients: vec![user("bob")],
            message: None,
            reply: None,
            signal: Some(Signal {
                key: "dm:alice:bob alice".into(),
                frame: "{\"type\":\"receipt\"}".into(),
                except: Some("c9".into()),
            }),
            presence: None,
        };
        let presence = Delivery {
            slot,
            recipients: Vec::new(),
            message: None,
            reply: None,
            signal: None,
            presence: Some(PresenceSignal {
                user: user("bob"),
                version: 1_763_800_000_123,
                frame: "{\"type\":\"presence\"}".into(),
            }),
        };
        vec![message, reply_only, signal, presence]
    }

    fn decoded(slot: u32, headers: &OwnedHeaders, value: &[u8]) -> Vec<Delivery> {
        decode_record(slot, Some(headers), Some(value))
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn every_kind_of_delivery_survives_a_batch_record() {
        let all = every_kind(3);
        let records = delivery_records(&all, 256 * 1024);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].0, 3);
        assert_eq!(decoded(3, &batch_headers(), &records[0].1), all);
    }

    #[test]
    fn a_record_of_one_delivery_still_decodes() {
        for d in every_kind(1) {
            let (h, v) = single_record(&d);
            assert_eq!(decoded(1, &h, &v), vec![d]);
        }
    }

    #[test]
    fn each_slot_gets_its_deliveries_in_order_in_records_under_the_cap() {
        let mut all = Vec::new();
        for i in 0..40u64 {
            let mut d = every_kind((i % 3) as u32).remove(0);
            let m = d.message.as_mut().unwrap();
            m.seq = i;
            m.frame = "x".repeat(100 + (i as usize * 37) % 300);
            all.push(d);
        }
        let max = 1500;
        let records = delivery_records(&all, max);
        assert!(records.len() > 3, "the cap splits each slot's deliveries");
        for slot in 0..3 {
            let got: Vec<Delivery> = records
                .iter()
                .filter(|(s, _)| *s == slot)
                .inspect(|(_, r)| assert!(r.len() <= max, "{} > {max}", r.len()))
                .flat_map(|(_, r)| decoded(slot, &batch_headers(), r))
                .collect();
            let sent: Vec<Delivery> = all.iter().filter(|d| d.slot == slot).cloned().collect();
            assert_eq!(got, sent);
        }
    }

    #[test]
    fn a_delivery_larger_than_the_cap_goes_alone() {
        let mut big = every_kind(0);
        big[0].message.as_mut().unwrap().frame = "y".repeat(5000);
        let records = delivery_records(&big, 1000);
        assert_eq!(records.len(), 2, "the big one, then the rest");
        assert!(records[0].1.len() > 1000);
        let got: Vec<Delivery> = records
            .iter()
            .flat_map(|(_, r)| decoded(0, &batch_headers(), r))
            .collect();
        assert_eq!(got, big);
    }

    #[test]
    fn a_bad_entry_is_an_error_in_its_place_and_the_others_still_go() {
        let all = every_kind(0);
        let mut record = Vec::new();
        push_entry(&mut record, &all[0]);
        // An entry whose `seq` is not a number.
        let at = record.len();
        record.extend_from_slice(&[0; 4]);
        record.field("seq", b"x");
        let len = (record.len() - at - 4) as u32;
        record[at..at + 4].copy_from_slice(&len.to_be_bytes());
        push_entry(&mut record, &all[2]);
        let got = decode_record(0, Some(&batch_headers()), Some(&record));
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].as_ref().unwrap(), &all[0]);
        assert!(got[1].is_err());
        assert_eq!(got[2].as_ref().unwrap(), &all[2]);
        // Cut short: the entries before the cut, then an error.
        record.truncate(record.len() - 3);
        let got = decode_record(0, Some(&batch_headers()), Some(&record));
        assert_eq!(got.len(), 3);
        assert!(got[0].is_ok() && got[1].is_err() && got[2].is_err());
        // A format this gateway does not know.
        let newer = OwnedHeaders::new().insert(Header {
            key: BATCH_HEADER,
            value: Some(b"2".as_slice()),
        });
        let got = decode_record(0, Some(&newer), Some(&record));
        assert!(got.len() == 1 && got[0].is_err());
    }

    #[test]
    fn garbage_headers_are_a_codec_error() {
        let h = OwnedHeaders::new().insert(Header {
            key: "seq",
            value: Some(b"x".as_slice()),
        });
        let got = decode_record(0, Some(&h), None);
        assert!(got.len() == 1 && got[0].is_err());
        assert!(decode_submission(b"{}").is_err());
    }
}
