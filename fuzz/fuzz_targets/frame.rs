//! A client's text frame, as the gateway takes it: never a panic; a refusal is a well-formed
//! `error` frame with a contract code; a send that passes is within the limits.
#![no_main]

use connect_core::inbound::{handle_text, Inbound};
use connect_core::model::ReplyTo;
use connect_protocol::{FrameLimits, UserId};
use libfuzzer_sys::fuzz_target;

const CODES: [&str; 8] = [
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "too_large",
    "rate_limited",
    "unavailable",
    "internal",
];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let limits = FrameLimits::default();
    let user = UserId::parse("alice").unwrap();
    let reply = ReplyTo {
        conn: "c1".into(),
        slot: 0,
        region: None,
    };
    match handle_text(&user, reply, &text, &limits) {
        Inbound::Submit(s) => {
            assert!(text.len() <= limits.max_frame_bytes);
            assert!(s.body.len() <= limits.max_body_bytes);
            assert_eq!(s.sender, user);
        }
        Inbound::Ack { .. }
        | Inbound::Read { .. }
        | Inbound::Typing { .. }
        | Inbound::Watch(_) => assert!(text.len() <= limits.max_frame_bytes),
        Inbound::Reject(e) => {
            let frame: serde_json::Value = serde_json::from_str(&e.to_frame().to_text()).unwrap();
            assert_eq!(frame["type"], "error");
            assert!(CODES.contains(&frame["code"].as_str().unwrap()));
        }
    }
});
