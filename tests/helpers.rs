//! Test helpers: clients over real WebSockets to the running stack, and direct reads of its
//! backends (DynamoDB Local, gateway metrics). Every test makes its own unique users.

use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use connect_core::auth::{JwtSecret, TokenIssuer};

pub const WAIT: Duration = Duration::from_secs(15);

/// The test process's settings (the stack's environment, as `make test` gives it).
pub fn settings() -> connect_config::Settings {
    connect_config::Settings::from_process()
}

/// The stack's two gateways (`CONNECT_GATEWAYS`, default 127.0.0.1:8080,127.0.0.1:8081).
pub fn gateways() -> Vec<String> {
    std::env::var("CONNECT_GATEWAYS")
        .unwrap_or_else(|_| "127.0.0.1:8080,127.0.0.1:8081".into())
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// A unique user id for this test run.
pub fn user(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

pub fn issuer() -> TokenIssuer {
    TokenIssuer::new(
        &JwtSecret::new(std::env::var("CONNECT_JWT_SECRET").ok(), false).expect("secret"),
    )
}

pub fn token(user: &str) -> String {
    issuer().mint(user, 3600)
}

pub fn dm(a: &str, b: &str) -> String {
    let user = |u: &str| connect_protocol::UserId::parse(u).expect("a user id");
    connect_protocol::ConversationId::direct(&user(a), &user(b))
        .expect("two users")
        .to_string()
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connected, authenticated client that has read its `hello`.
pub struct Client {
    pub user: String,
    /// The device it connected as (`?device=`; the default device without).
    pub device: String,
    pub session: String,
    pub gateway: String,
    ws: Ws,
    /// (conversation, seq) of every `message` taken with [`Client::expect_fresh`].
    seen: std::collections::HashSet<(String, u64)>,
    /// Whether `receipt` frames are returned; without, they are passed over, as a client that
    /// shows no ticks does (acks make receipts for the other members).
    pub receipts: bool,
}

/// Opens `/ws` on `gateway` with an optional Authorization header value and query string.
pub async fn open(gateway: &str, authorization: Option<&str>, query: &str) -> Result<Ws, WsError> {
    let mut req = format!("ws://{gateway}/ws{query}").into_client_request()?;
    if let Some(a) = authorization {
        req.headers_mut()
            .insert("authorization", a.parse().expect("header"));
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

impl Client {
    /// Sends `body` to `group` (send id `id`).
    pub async fn send_group(&mut self, id: &str, group: &str, body: &str) -> anyhow::Result<()> {
        self.send_raw(&json!({"type":"send","id":id,"group":group,"body":body}).to_string())
            .await
    }

    pub async fn connect(gateway: &str, user: &str) -> anyhow::Result<Self> {
        let ws = open(gateway, Some(&format!("Bearer {}", token(user))), "")
            .await
            .context("upgrade")?;
        Self::after_upgrade(ws, user).await
    }

    /// Connects as `user`'s device `device` (`?device=`).
    pub async fn connect_device(gateway: &str, user: &str, device: &str) -> anyhow::Result<Self> {
        let query = format!("?device={device}");
        let ws = open(gateway, Some(&format!("Bearer {}", token(user))), &query)
            .await
            .context("upgrade")?;
        let mut c = Self::after_upgrade(ws, user).await?;
        c.device = device.into();
        Ok(c)
    }

    pub async fn after_upgrade(ws: Ws, user: &str) -> anyhow::Result<Self> {
        let mut c = Self {
            user: user.into(),
            device: connect_core::model::DEFAULT_DEVICE.into(),
            session: String::new(),
            gateway: String::new(),
            ws,
            seen: Default::default(),
            receipts: false,
        };
        let hello = c.next().await?;
        if hello["type"] != "hello" || hello["user"] != user {
            bail!("expected hello for {user}, got {hello}");
        }
        c.session = hello["session"].as_str().unwrap_or_default().into();
        c.gateway = hello["gateway"].as_str().unwrap_or_default().into();
        Ok(c)
    }

    pub async fn send_raw(&mut self, text: &str) -> anyhow::Result<()> {
        Ok(self.ws.send(Message::Text(text.into())).await?)
    }

    pub async fn send_binary(&mut self, data: &[u8]) -> anyhow::Result<()> {
        Ok(self.ws.send(Message::Binary(data.to_vec().into())).await?)
    }

    pub async fn send_to(&mut self, id: &str, to: &str, body: &str) -> anyhow::Result<()> {
        self.send_raw(&json!({"type":"send","id":id,"to":to,"body":body}).to_string())
            .await
    }

    /// The next text frame as JSON (pings are answered by the library).
    pub async fn next(&mut self) -> anyhow::Result<Value> {
        self.next_within(WAIT).await
    }

    pub async fn next_within(&mut self, wait: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("{}: no frame within {wait:?}", self.user))?
                .ok_or_else(|| anyhow!("{}: connection closed", self.user))??;
            match msg {
                Message::Text(t) => {
                    let f: Value = serde_json::from_str(&t)?;
                    if f["type"] == "receipt" && !self.receipts {
                        continue;
                    }
                    return Ok(f);
                }
                Message::Close(f) => bail!("{}: closed by server: {f:?}", self.user),
                _ => {}
            }
        }
    }

    /// The next frame of `kind` within `wait`, frames of other kinds passed over.
    pub async fn next_of(&mut self, kind: &str, wait: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.next_within(left).await?;
            if f["type"] == kind {
                return Ok(f);
            }
        }
    }

    /// Every frame of `kind` that arrives within `wait` (others passed over).
    pub async fn all_of(&mut self, kind: &str, wait: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut got = Vec::new();
        while let Ok(f) = self
            .next_of(
                kind,
                deadline.saturating_duration_since(tokio::time::Instant::now()),
            )
            .await
        {
            got.push(f);
        }
        got
    }

    /// Waits for a frame of `kind`, failing on any other frame.
    pub async fn expect(&mut self, kind: &str) -> anyhow::Result<Value> {
        let f = self.next().await?;
        if f["type"] != kind {
            bail!("{}: expected {kind}, got {f}", self.user);
        }
        Ok(f)
    }

    /// Like [`Client::expect`], but drops a `message` whose (conversation, seq) this connection
    /// already took, as PROTOCOL.md's clients do (delivery is at least once).
    pub async fn expect_fresh(&mut self, kind: &str) -> anyhow::Result<Value> {
        let f = self.next_fresh().await?;
        if f["type"] != kind {
            bail!("{}: expected {kind}, got {f}", self.user);
        }
        Ok(f)
    }

    /// The next frame that is not a repeat of a `message` this connection already took.
    pub async fn next_fresh(&mut self) -> anyhow::Result<Value> {
        loop {
            let f = self.next().await?;
            if f["type"] == "message" {
                let key = (
                    f["conversation"].as_str().unwrap_or_default().to_owned(),
                    f["seq"].as_u64().unwrap_or_default(),
                );
                if !self.seen.insert(key) {
                    continue;
                }
            }
            return Ok(f);
        }
    }

    /// The next fresh frame that is not a group's system message (a group's own events may
    /// reach its members at any time).
    pub async fn next_non_event(&mut self) -> anyhow::Result<Value> {
        loop {
            let f = self.next_fresh().await?;
            if f.get("event").is_none() {
                return Ok(f);
            }
        }
    }

    /// Asserts that nothing but repeats of messages already taken arrives within `wait`.
    pub async fn expect_nothing_fresh(&mut self, wait: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Ok(f) = self.next_within(left).await else {
                return Ok(());
            };
            let key = (
                f["conversation"].as_str().unwrap_or_default().to_owned(),
                f["seq"].as_u64().unwrap_or_default(),
            );
            if f["type"] != "message" || !self.seen.contains(&key) {
                bail!("{}: expected nothing new, got {f}", self.user);
            }
        }
    }

    /// Asserts that no frame arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) -> anyhow::Result<()> {
        match self.next_within(wait).await {
            Ok(f) => bail!("{}: expected nothing, got {f}", self.user),
            Err(_) => Ok(()),
        }
    }

    /// Sends and waits for this send's `accepted`, returning its seq. Like a PROTOCOL.md client
    /// it sends again with the same id on `unavailable` (a busy or restarting messaging) and on
    /// `rate_limited` (over the gateway's send rate).
    pub async fn send_accepted(&mut self, id: &str, to: &str, body: &str) -> anyhow::Result<u64> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.send_to(id, to, body).await?;
            let f = self.next().await?;
            // Both say "retry with the same id": a client that sends as fast as it is
            // answered meets the gateway's send rate limit once the answers come quickly.
            let retry = f["code"] == "unavailable" || f["code"] == "rate_limited";
            if f["type"] == "error" && retry && f["id"] == id {
                if tokio::time::Instant::now() > deadline {
                    bail!("{}: still refused: {f}", self.user);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            if f["type"] != "accepted" || f["id"] != id {
                bail!("{}: expected accepted for {id}, got {f}", self.user);
            }
            return f["seq"].as_u64().ok_or_else(|| anyhow!("no seq in {f}"));
        }
    }

    /// The next WebSocket message as it comes (close frames included), within [`WAIT`].
    pub async fn raw_next(&mut self) -> Option<Result<Message, WsError>> {
        tokio::time::timeout(WAIT, self.ws.next())
            .await
            .ok()
            .flatten()
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// One HTTP/1.0 request on a fresh connection: (status, the whole response: head and body).
pub async fn http_raw(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    s.write_all(format!("{head}\r\n{body}").as_bytes()).await?;
    let mut response = String::new();
    s.read_to_string(&mut response).await?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, response))
}

fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// GET over plain HTTP/1.0 (metrics, health): (status, body).
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let (status, response) = http_raw(addr, "GET", path, &[], "").await?;
    Ok((status, body_of(&response).to_owned()))
}

/// A gateway's metric value (sum over series whose labels contain `labels`).
pub async fn metric(addr: &str, name: &str, labels: &str) -> anyhow::Result<f64> {
    let (_, body) = http_get(addr, "/metrics").await?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Polls a metric until it reaches `at_least` (or [`WAIT`] passes) and returns its last value:
/// counters move a moment after what they count may already be visible to a client.
pub async fn metric_reaching(
    addr: &str,
    name: &str,
    labels: &str,
    at_least: f64,
) -> anyhow::Result<f64> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = metric(addr, name, labels).await?;
        if v >= at_least || tokio::time::Instant::now() >= deadline {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// DynamoDB Local client for the stack's tables.
/// The stack's offline state through the production adapter (`REDIS_URL`, `REDIS_LOG_URL`).
pub async fn redis_log() -> anyhow::Result<connect_redis::RedisLog> {
    let redis_cfg = connect_redis::RedisConfig::from_settings(&settings())?;
    let state = connect_redis::connect(&redis_cfg).await?;
    let logs = connect_redis::connect_logs(&state, &redis_cfg).await?;
    Ok(connect_redis::RedisLog::new(
        state,
        logs,
        connect_redis::OfflineLimits {
            log_max: 1000,
            ttl: Duration::from_secs(3600),
        },
    ))
}

pub async fn dynamo() -> aws_sdk_dynamodb::Client {
    let cfg = connect_dynamo::DynamoConfig::from_settings(&settings()).expect("dynamo config");
    let cfg = connect_dynamo::DynamoConfig {
        endpoint: cfg
            .endpoint
            .or_else(|| Some("http://127.0.0.1:8000".into())),
        ..cfg
    };
    connect_dynamo::client(&cfg).await
}

/// Every stored message of a conversation, by seq: (seq, from, id, body).
pub async fn stored(conversation: &str) -> anyhow::Result<Vec<(u64, String, String, String)>> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let client = dynamo().await;
    let table = connect_dynamo::Tables::from_settings(&settings()).chat;
    let mut out = Vec::new();
    let mut start = None;
    loop {
        let page = client
            .query()
            .table_name(&table)
            .key_condition_expression("#c = :c")
            .expression_attribute_names("#c", "conversation")
            .expression_attribute_values(":c", AttributeValue::S(conversation.into()))
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await?;
        for item in page.items() {
            let m = connect_dynamo::item::from_item(item)
                .ok_or_else(|| anyhow!("bad item {item:?}"))?;
            out.push((m.seq, m.from.to_string(), m.id.to_string(), m.body));
        }
        start = page.last_evaluated_key;
        if start.is_none() {
            return Ok(out);
        }
    }
}

/// The local HTTP API (`CONNECT_API`, default 127.0.0.1:8090).
pub fn api_addr() -> String {
    std::env::var("CONNECT_API").unwrap_or_else(|_| "127.0.0.1:8090".into())
}

/// GET on the HTTP API as `user` (no token when None): (status, JSON body).
pub async fn api_get(path: &str, user: Option<&str>) -> anyhow::Result<(u16, Value)> {
    api_call("GET", path, user, "").await
}

/// A request to the HTTP API as `user` (no token when None): (status, JSON body or Null).
pub async fn api_call(
    method: &str,
    path: &str,
    user: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, Value)> {
    api_call_at(&api_addr(), method, path, user, body).await
}

/// [`api_call`] to the HTTP API at `addr`.
pub async fn api_call_at(
    addr: &str,
    method: &str,
    path: &str,
    user: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, Value)> {
    let mut headers = vec![("Content-Type", "application/json".to_owned())];
    if let Some(u) = user {
        headers.push(("Authorization", format!("Bearer {}", token(u))));
    }
    let (status, response) = http_raw(addr, method, path, &headers, body).await?;
    Ok((
        status,
        serde_json::from_str(body_of(&response)).unwrap_or(Value::Null),
    ))
}

impl Client {
    /// Sends `frame` (a `send` with `id`) until it is `accepted` (again on `unavailable`),
    /// passing over every other frame meanwhile (a backlog, events); returns its seq.
    pub async fn send_passing_over(&mut self, frame: Value) -> anyhow::Result<u64> {
        let id = frame["id"].clone();
        let deadline = tokio::time::Instant::now() + WAIT;
        self.send_raw(&frame.to_string()).await?;
        loop {
            let f = self.next().await?;
            if f["id"] != id {
                continue;
            }
            match f["type"].as_str() {
                Some("accepted") => {
                    return f["seq"].as_u64().ok_or_else(|| anyhow!("no seq in {f}"))
                }
                Some("error")
                    if f["code"] == "unavailable" && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    self.send_raw(&frame.to_string()).await?;
                }
                _ => bail!("{}: expected accepted for {id}, got {f}", self.user),
            }
        }
    }

    pub async fn read(&mut self, conversation: &str, seq: u64) -> anyhow::Result<()> {
        self.send_raw(&json!({"type":"read","conversation":conversation,"seq":seq}).to_string())
            .await
    }

    /// The next `receipt` about `user` (other frames passed over), within `wait`.
    pub async fn receipt_of(&mut self, user: &str, wait: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.next_within(left).await?;
            if f["type"] == "receipt" && f["user"] == user {
                return Ok(f);
            }
        }
    }

    pub async fn ack(&mut self, conversation: &str, seq: u64) -> anyhow::Result<()> {
        self.send_raw(&json!({"type":"ack","conversation":conversation,"seq":seq}).to_string())
            .await
    }

    /// Acks, then waits until the device's cursor holds the ack. The gateway writes cursors
    /// behind the connection, so a device that reconnects at once may get those messages once
    /// more (delivery is at least once, PROTOCOL.md); a test that reconnects and expects none
    /// of them waits for this first.
    pub async fn ack_held(&mut self, conversation: &str, seq: u64) -> anyhow::Result<()> {
        use connect_core::ports::ConversationLog;
        self.ack(conversation, seq).await?;
        let log = redis_log().await?;
        let user = connect_protocol::UserId::parse(&self.user)?;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let cursors = log.cursors(&user, &self.device).await?;
            if cursors.get(conversation).copied().unwrap_or(0) >= seq {
                return Ok(());
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "{}/{}: the ack of {conversation} up to {seq} was not written in {WAIT:?} ({cursors:?})",
                self.user,
                self.device
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The seqs of every `message` frame that arrives until `quiet` passes without one.
    pub async fn drain_messages(&mut self, quiet: Duration) -> anyhow::Result<Vec<u64>> {
        let mut seqs = Vec::new();
        while let Ok(f) = self.next_within(quiet).await {
            if f["type"] != "message" {
                bail!("{}: expected messages, got {f}", self.user);
            }
            seqs.push(f["seq"].as_u64().ok_or_else(|| anyhow!("no seq in {f}"))?);
        }
        Ok(seqs)
    }
}

/// Creates a group through the HTTP API; returns its id.
pub async fn create_group(owner: &str, members: &[&str]) -> anyhow::Result<String> {
    let (status, g) = api_call(
        "POST",
        "/v1/groups",
        Some(owner),
        &json!({"name": "Team", "members": members}).to_string(),
    )
    .await?;
    anyhow::ensure!(status == 201, "create: {status} {g}");
    Ok(g["group"].as_str().unwrap_or_default().to_owned())
}

/// `by` adds `user` to `group` through the HTTP API (200 expected).
pub async fn add_member(by: &str, group: &str, user: &str) -> anyhow::Result<()> {
    let (status, body) = api_call(
        "POST",
        &format!("/v1/groups/{group}/members"),
        Some(by),
        &json!({ "user": user }).to_string(),
    )
    .await?;
    anyhow::ensure!(status == 200, "add {user}: {status} {body}");
    Ok(())
}

/// `by` removes `user` from `group` through the HTTP API (204 expected).
pub async fn remove_member(by: &str, group: &str, user: &str) -> anyhow::Result<()> {
    let (status, body) = api_call(
        "DELETE",
        &format!("/v1/groups/{group}/members/{user}"),
        Some(by),
        "",
    )
    .await?;
    anyhow::ensure!(status == 204, "remove {user}: {status} {body}");
    Ok(())
}
