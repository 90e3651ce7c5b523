//! The frame types of this crate against PROTOCOL.md's own examples: every frame the contract
//! shows parses (client frames) or renders (server frames) to exactly the example, every frame
//! type the crate has is shown there, and the error codes are the contract's list.
//!
//! `docs/PROTOCOL.md` and `docs/ARCHITECTURE.md` are copies of the design documents the team
//! keeps beside the work tree (`../shared/`), so that a clone checks the same text. Where those
//! are, the copies must be identical: a changed contract fails here until the copy, and the
//! code, follow it. A clone without them skips only that check, and says so.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

use connect_protocol::{
    ClientFrame, ErrorCode, FrameLimits, MessageFrame, Presence, SendTarget, ServerFrame,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn contract() -> String {
    std::fs::read_to_string(repo().join("docs/PROTOCOL.md"))
        .expect("docs/PROTOCOL.md, our copy of the contract")
}

#[test]
fn the_copies_are_the_design_documents() {
    let shared = repo().join("../shared");
    if !shared.is_dir() {
        eprintln!(
            "skipped: the design documents (../shared beside the work tree) are absent, as in a \
             clone; docs/PROTOCOL.md and docs/ARCHITECTURE.md are not compared with them"
        );
        return;
    }
    for name in ["PROTOCOL.md", "ARCHITECTURE.md"] {
        let original = std::fs::read_to_string(shared.join(name))
            .unwrap_or_else(|e| panic!("{}: {e}", shared.join(name).display()));
        let copy = std::fs::read_to_string(repo().join("docs").join(name))
            .unwrap_or_else(|e| panic!("docs/{name}: {e}"));
        assert!(
            original == copy,
            "the design's {name} changed: copy it to docs/{name} (and make the code follow it)"
        );
    }
}

/// Every JSON example that has a `type`: each line of a ```json block, and each inline code
/// span that is an object. A bare `…` (an elided number) becomes 0.
fn frames(text: &str) -> Vec<Value> {
    let mut found = Vec::new();
    let mut in_json = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_json = trimmed == "```json";
            continue;
        }
        let candidates: Vec<&str> = if in_json {
            vec![trimmed]
        } else {
            line.split('`')
                .skip(1)
                .step_by(2)
                .filter(|span| span.starts_with('{'))
                .collect()
        };
        for candidate in candidates {
            if candidate.is_empty() || !candidate.contains("\"type\"") {
                continue;
            }
            let json = candidate.replace(":…", ":0");
            let value: Value = serde_json::from_str(&json)
                .unwrap_or_else(|e| panic!("PROTOCOL.md example is not JSON ({e}): {candidate}"));
            found.push(value);
        }
    }
    found
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("`{k}` missing in {v}"))
}

/// Renders the server frame an example shows, from the example's own fields.
fn rendered(example: &Value) -> Value {
    let text = match s(example, "type") {
        "hello" => ServerFrame::Hello {
            user: s(example, "user"),
            session: s(example, "session"),
            gateway: s(example, "gateway"),
        }
        .to_text(),
        "accepted" => ServerFrame::Accepted {
            id: s(example, "id"),
            conversation: s(example, "conversation"),
            seq: example["seq"].as_u64().expect("seq"),
            ts: example["ts"].as_u64().expect("ts"),
        }
        .to_text(),
        "message" => {
            let mut fields = example.clone();
            fields.as_object_mut().map(|o| o.remove("type"));
            let m: MessageFrame = serde_json::from_value(fields).unwrap_or_else(|e| {
                panic!("a `message` example the type cannot hold ({e}): {example}")
            });
            ServerFrame::Message(&m).to_text()
        }
        "error" => {
            let code: ErrorCode = serde_json::from_value(example["code"].clone())
                .unwrap_or_else(|e| panic!("unknown error code ({e}): {example}"));
            ServerFrame::Error {
                code,
                message: s(example, "message"),
                id: example["id"].as_str(),
            }
            .to_text()
        }
        "receipt" => ServerFrame::Receipt {
            conversation: s(example, "conversation"),
            user: s(example, "user"),
            read: example["read"].as_u64().expect("read"),
            delivered: example["delivered"].as_u64().expect("delivered"),
            ts: example["ts"].as_u64().expect("ts"),
        }
        .to_text(),
        "typing" => ServerFrame::Typing {
            conversation: s(example, "conversation"),
            user: s(example, "user"),
            stop: example["stop"].as_bool().unwrap_or(false),
        }
        .to_text(),
        "presence" => ServerFrame::Presence {
            user: s(example, "user"),
            state: if example["hidden"].as_bool() == Some(true) {
                Presence::HIDDEN
            } else if example["online"].as_bool().expect("online") {
                Presence::ONLINE
            } else {
                Presence::offline(example["last_seen"].as_u64())
            },
        }
        .to_text(),
        other => {
            panic!("PROTOCOL.md shows a `{other}` frame this crate does not render: {example}")
        }
    };
    serde_json::from_str(&text).expect("a rendered frame is JSON")
}

/// Parses a client frame example and checks the typed frame holds every field it shows.
fn parsed(example: &Value) {
    let frame = ClientFrame::parse(&example.to_string(), &FrameLimits::default())
        .unwrap_or_else(|e| panic!("the contract's example is refused ({e}): {example}"));
    match frame {
        ClientFrame::Send { id, target, body } => {
            assert_eq!(id.as_str(), s(example, "id"));
            assert_eq!(body, s(example, "body"));
            match target {
                SendTarget::User(u) => assert_eq!(u.as_str(), s(example, "to")),
                SendTarget::Group(g) => assert_eq!(g.as_str(), s(example, "group")),
            }
        }
        ClientFrame::Ack { conversation, seq } | ClientFrame::Read { conversation, seq } => {
            assert_eq!(conversation.to_string(), s(example, "conversation"));
            assert_eq!(Some(seq), example["seq"].as_u64());
        }
        ClientFrame::Typing { conversation, stop } => {
            assert_eq!(conversation.to_string(), s(example, "conversation"));
            assert_eq!(stop, example["stop"].as_bool().unwrap_or(false));
        }
        ClientFrame::Watch { users } => {
            let listed: Vec<&str> = example["users"]
                .as_array()
                .expect("users")
                .iter()
                .map(|u| u.as_str().expect("a user id"))
                .collect();
            assert_eq!(users.iter().map(|u| u.as_str()).collect::<Vec<_>>(), listed);
        }
    }
}

/// Whether an example is a frame a client sends (a `typing` from the server names its `user`).
fn from_client(example: &Value) -> bool {
    match s(example, "type") {
        "send" | "ack" | "read" | "watch" => true,
        "typing" => example.get("user").is_none(),
        _ => false,
    }
}

#[test]
fn every_frame_in_the_contract_parses_or_renders_exactly_as_shown() {
    let examples = frames(&contract());
    let mut seen = BTreeSet::new();
    for example in &examples {
        let kind = s(example, "type");
        if from_client(example) {
            parsed(example);
            seen.insert(format!("{kind} from a client"));
        } else {
            assert_eq!(
                &rendered(example),
                example,
                "the `{kind}` frame renders otherwise"
            );
            seen.insert(format!("{kind} from the server"));
        }
        seen.insert(kind.to_owned());
        if example.get("stop").is_some() {
            seen.insert(format!("{kind} stopped"));
        }
        for state in ["hidden", "last_seen"] {
            if example.get(state).is_some() {
                seen.insert(format!("{kind} {state}"));
            }
        }
        if example.get("event").is_some() {
            seen.insert("message with event".to_owned());
        }
        if example.get("group").is_some() {
            seen.insert(format!("{kind} to a group"));
        }
    }
    // The crate's frame types, each shown in the contract (a type the contract lacks, or an
    // example this test no longer finds, fails here).
    let expected = [
        "send",
        "send to a group",
        "ack",
        "hello",
        "accepted",
        "message",
        "message to a group",
        "message with event",
        "error",
        "read from a client",
        "receipt from the server",
        "typing from a client",
        "typing stopped",
        "typing from the server",
        "watch from a client",
        "presence from the server",
        "presence hidden",
        "presence last_seen",
    ];
    for kind in expected {
        assert!(
            seen.contains(kind),
            "PROTOCOL.md shows no `{kind}` example; found {seen:?}"
        );
    }
    assert!(examples.len() >= 8, "{} examples", examples.len());
}

#[test]
fn the_error_codes_are_the_contracts_list() {
    let text = contract();
    let start = text
        .find("Error codes:")
        .expect("PROTOCOL.md lists the error codes");
    // The list ends with the sentence: "… `unavailable` (…), `internal`."
    let end = start
        + text[start..]
            .find("`.")
            .expect("the list ends with a full stop")
        + 1;
    // The codes, without the remarks in parentheses ("retry with the same `id`").
    let mut list = String::new();
    let mut depth = 0;
    for c in text[start..end].chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            c if depth == 0 => list.push(c),
            _ => {}
        }
    }
    let listed: BTreeSet<&str> = list.split('`').skip(1).step_by(2).collect();
    let ours: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(listed, ours);
    for code in ErrorCode::ALL {
        let back: ErrorCode = serde_json::from_value(Value::from(code.as_str())).unwrap();
        assert_eq!(back, code);
    }
}

#[test]
fn a_frame_unlike_the_example_is_caught() {
    // The check itself can fail: a message example with a field renamed does not match.
    let example: Value = serde_json::from_str(
        r#"{"type":"message","conversation":"dm:a:b","seq":1,"from":"a","id":"x","body":"hi","ts":1}"#,
    )
    .unwrap();
    assert_eq!(rendered(&example), example);
    let mut wrong = example.clone();
    wrong["sender"] = wrong["from"].take();
    let result = std::panic::catch_unwind(|| rendered(&wrong));
    assert!(result.is_err() || result.unwrap() != wrong);
}
