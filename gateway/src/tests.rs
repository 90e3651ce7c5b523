//! The connection loop in-process: a [`Gateway`] over the memory ports, served on a loopback
//! port by the real router, and real WebSocket clients. What reaches the bus, the socket and the
//! device cursors is checked; each test fails when the loop breaks the order it keeps (sends
//! published in the order sent, each refusal answered with its own id, a message held back while
//! catching up and then written, an ack moving the device's cursor, an expired token closing
//! the connection after saying why).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connect_core::auth::TokenIssuer;
use connect_core::memory::Memory;
use connect_core::model::{
    Delivery, MarkerUpdate, OutboundMessage, Submission, TypingUpdate, DEFAULT_DEVICE,
};
use connect_core::ports::{PendingPublish, SubmissionBus};
use connect_core::PortError;
use connect_protocol::{ConversationId, UserId};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::Config;
use crate::state::{Gateway, GatewayPorts};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The gateway's config as a local stack's, with a short catch-up wait (no offline drain runs
/// here to end it sooner).
fn config() -> Config {
    let settings = connect_config::Settings::from_process().with([
        ("CONNECT_ENV", "local"),
        ("GATEWAY_ADDR", "127.0.0.1:0"),
        ("GATEWAY_CATCH_UP_TIMEOUT_MS", "100"),
    ]);
    Config::from_settings(&settings).expect("the local config")
}

/// The bus: records what it is given, in call order; refuses while `refusing`.
#[derive(Default)]
struct Bus {
    sent: Mutex<Vec<String>>,
    /// (conversation, delivered) of each marker update.
    marks: Mutex<Vec<(String, u64)>>,
    refusing: AtomicBool,
}

impl Bus {
    fn answer(&self) -> PendingPublish {
        let refused = self.refusing.load(Ordering::SeqCst);
        Box::pin(async move {
            match refused {
                true => Err(PortError::unavailable("kafka", "refused by the test")),
                false => Ok(()),
            }
        })
    }

    fn sent(&self) -> Vec<String> {
        self.sent.lock().unwrap().clone()
    }
}

impl SubmissionBus for Bus {
    fn submit(&self, submission: &Submission) -> PendingPublish {
        if !self.refusing.load(Ordering::SeqCst) {
            self.sent.lock().unwrap().push(submission.id.to_string());
        }
        self.answer()
    }

    fn mark(&self, update: &MarkerUpdate) -> PendingPublish {
        self.marks
            .lock()
            .unwrap()
            .push((update.conversation.to_string(), update.delivered));
        self.answer()
    }

    fn typing(&self, _update: &TypingUpdate) -> PendingPublish {
        self.answer()
    }
}

struct Harness {
    gw: Arc<Gateway>,
    mem: Arc<Memory>,
    bus: Arc<Bus>,
    url: String,
    tokens: TokenIssuer,
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// With `change` made to the local config.
    async fn start_with(change: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = config();
        change(&mut cfg);
        let tokens = TokenIssuer::new(&cfg.secret);
        let mem = Arc::new(Memory::default());
        let bus = Arc::new(Bus::default());
        let ports = GatewayPorts::in_memory(mem.clone(), bus.clone());
        let (tracker, _drained) = tokio::sync::mpsc::channel(1);
        let gw = Arc::new(Gateway::new(cfg, 0, ports, tracker));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = crate::server::public_router(gw.clone())
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            gw,
            mem,
            bus,
            url: format!("ws://{addr}/ws"),
            tokens,
        }
    }

    async fn connect_with(&self, token: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("{}?token={token}", self.url))
            .await
            .expect("the upgrade");
        ws
    }

    async fn connect(&self, user: &str) -> Client {
        let token = self.tokens.mint(user, 600);
        let ws = self.connect_with(&token).await;
        // Registered once the hub knows the connection.
        for _ in 0..200 {
            if self
                .gw
                .hub
                .sessions()
                .iter()
                .any(|(u, _, _)| u.as_str() == user)
            {
                return ws;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{user} never registered");
    }
}

/// The next text frame as JSON (5 s at most), skipping pings and the `hello`.
async fn next_frame(ws: &mut Client) -> serde_json::Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame in time")
            .expect("the connection open")
            .expect("a frame");
        match msg {
            Message::Text(t) => {
                let frame: serde_json::Value = serde_json::from_str(&t).unwrap();
                if frame["type"] != "hello" {
                    return frame;
                }
            }
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

async fn send(ws: &mut Client, frame: serde_json::Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

fn dm(to: &str, id: &str) -> serde_json::Value {
    serde_json::json!({"type": "send", "to": to, "id": id, "body": format!("body of {id}")})
}

#[tokio::test]
async fn sends_reach_the_bus_in_the_order_sent_and_a_refused_one_is_answered_with_its_id() {
    let h = Harness::start().await;
    let mut alice = h.connect("alice").await;
    let ids: Vec<String> = (0..30).map(|i| format!("m{i:02}")).collect();
    for id in &ids {
        send(&mut alice, dm("bob", id)).await;
    }
    for _ in 0..200 {
        if h.bus.sent().len() == ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(h.bus.sent(), ids, "published in the order sent");
    h.bus.refusing.store(true, Ordering::SeqCst);
    send(&mut alice, dm("bob", "refused-1")).await;
    let answer = next_frame(&mut alice).await;
    assert_eq!(answer["type"], "error");
    assert_eq!(answer["code"], "unavailable");
    assert_eq!(answer["id"], "refused-1", "the refusal names its send");
}

#[tokio::test]
async fn past_its_hourly_quota_a_user_starts_no_new_conversation_but_writes_in_known_ones() {
    let h = Harness::start_with(|cfg| cfg.new_conversations_per_hour = 2).await;
    // carol wrote to alice before: that conversation is known (in alice's inbox).
    h.mem
        .inboxes
        .lock()
        .unwrap()
        .entry(UserId::parse("alice").unwrap())
        .or_default()
        .insert("dm:alice:carol".into(), 4);
    let mut alice = h.connect("alice").await;
    send(&mut alice, dm("b1", "m1")).await;
    send(&mut alice, dm("b2", "m2")).await;
    send(&mut alice, dm("b3", "m3")).await;
    let answer = next_frame(&mut alice).await;
    assert_eq!(
        (answer["code"].as_str(), answer["id"].as_str()),
        (Some("rate_limited"), Some("m3")),
        "{answer}"
    );
    // Started ones, and one with messages, still take sends.
    send(&mut alice, dm("b1", "m4")).await;
    send(&mut alice, dm("carol", "m5")).await;
    for _ in 0..200 {
        if h.bus.sent().len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(h.bus.sent(), ["m1", "m2", "m4", "m5"]);
    // A second connection of alice's is counted with the first (per user, not connection).
    let mut again = h.connect("alice").await;
    send(&mut again, dm("b4", "m6")).await;
    assert_eq!(next_frame(&mut again).await["code"], "rate_limited");
}

/// The cursor `user`'s default device has for `conversation`, waiting up to a second for it.
async fn cursor_of(h: &Harness, user: &str, conversation: &str) -> Option<u64> {
    let device = (UserId::parse(user).unwrap(), DEFAULT_DEVICE.to_owned());
    for _ in 0..200 {
        let cursor = h
            .mem
            .cursors
            .lock()
            .unwrap()
            .get(&device)
            .and_then(|c: &HashMap<String, u64>| c.get(conversation).copied());
        if cursor.is_some() {
            return cursor;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

#[tokio::test]
async fn acks_of_conversations_the_user_is_not_in_are_refused_and_write_nothing() {
    let h = Harness::start().await;
    h.mem
        .put_group("g_trip", "Trip", "alice", &["alice", "bob"]);
    let mut eve = h.connect("eve").await;
    for conversation in ["dm:alice:bob", "group:g_trip", "group:g_none"] {
        send(
            &mut eve,
            serde_json::json!({"type": "ack", "conversation": conversation, "seq": 1}),
        )
        .await;
        let answer = next_frame(&mut eve).await;
        assert_eq!(
            (answer["type"].as_str(), answer["code"].as_str()),
            (Some("error"), Some("forbidden")),
            "{conversation}: {answer}"
        );
    }
    assert!(
        h.mem
            .cursors
            .lock()
            .unwrap()
            .keys()
            .all(|(user, _)| user.as_str() != "eve"),
        "no cursor of eve's was written"
    );
    // A member's acks are written: a group by its roster, a direct conversation by its id.
    let mut bob = h.connect("bob").await;
    for conversation in ["group:g_trip", "dm:alice:bob"] {
        send(
            &mut bob,
            serde_json::json!({"type": "ack", "conversation": conversation, "seq": 1}),
        )
        .await;
        assert_eq!(
            cursor_of(&h, "bob", conversation).await,
            Some(1),
            "{conversation}"
        );
    }
}

#[tokio::test]
async fn a_message_is_written_after_the_catch_up_and_its_ack_moves_the_device_cursor() {
    let h = Harness::start().await;
    let mut bob = h.connect("bob").await;
    let alice = UserId::parse("alice").unwrap();
    let bob_id = UserId::parse("bob").unwrap();
    let conversation = ConversationId::direct(&alice, &bob_id).unwrap();
    let frame = serde_json::json!({
        "type": "message", "conversation": conversation.to_string(), "seq": 1,
        "from": "alice", "id": "m1", "body": "hello", "ts": 1
    });
    let handed = h.gw.hub.deliver(Delivery {
        slot: 0,
        recipients: vec![bob_id.clone()],
        message: Some(OutboundMessage {
            conversation: conversation.to_string(),
            seq: 1,
            ts: 1,
            frame: frame.to_string(),
        }),
        reply: None,
        signal: None,
        presence: None,
    });
    assert_eq!(handed.frames, 1);
    let got = next_frame(&mut bob).await;
    assert_eq!(got["type"], "message");
    assert_eq!(got["seq"], 1);
    send(
        &mut bob,
        serde_json::json!({"type": "ack", "conversation": conversation.to_string(), "seq": 1}),
    )
    .await;
    let device = (bob_id, DEFAULT_DEVICE.to_owned());
    let mut cursor = None;
    for _ in 0..200 {
        cursor = h
            .mem
            .cursors
            .lock()
            .unwrap()
            .get(&device)
            .and_then(|c: &HashMap<String, u64>| c.get(&conversation.to_string()).copied());
        if cursor.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(cursor, Some(1), "the ack moved bob's device cursor");
    // The ack is reported as bob's `delivered` marker when its flush is due, the connection
    // still open (the loop's timer, not its close, sends it).
    let reported = (conversation.to_string(), 1);
    for _ in 0..600 {
        if h.bus.marks.lock().unwrap().contains(&reported) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        h.bus.marks.lock().unwrap().contains(&reported),
        "delivered reported while connected: {:?}",
        h.bus.marks.lock().unwrap()
    );
    drop(bob);
}

#[tokio::test]
async fn an_expired_token_closes_the_connection_after_saying_why() {
    let h = Harness::start().await;
    // Past its `exp` already, but within the verifier's leeway: accepted, closing in ~1 s.
    let exp = connect_core::now_ms() / 1000 + 1 - connect_core::auth::LEEWAY_SECS;
    let mut carol = h.connect_with(&h.tokens.mint_until("carol", exp)).await;
    let said = next_frame(&mut carol).await;
    assert_eq!(said["type"], "error");
    assert_eq!(said["code"], "unauthorized");
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), carol.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let closed = closed.expect("a close code");
    assert_eq!(u16::from(closed.code), 1008, "policy: {closed:?}");
}
