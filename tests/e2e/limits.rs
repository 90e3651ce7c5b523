//! The gateway's limits, each set small on a gateway of its own (the real binary on the shared
//! stack): connection caps per user, per address and per gateway; the Origin allow-list; a
//! connection closed when its token expires; rate limits on every frame type with acks
//! coalesced; slow readers cut off (byte-bounded queue, write timeout) with nothing lost.

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::json;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::*;
use crate::private::ExtraGateway;

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/ws` on `gateway` as `user` from source address `source` (127.0.0.x), with extra
/// request headers, and a receive buffer of `recv_buffer` bytes when given.
pub(crate) async fn open_from(
    gateway: &str,
    source: &str,
    user: &str,
    headers: &[(&str, &str)],
    recv_buffer: Option<u32>,
) -> Result<Ws, WsError> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().expect("source address"))?;
    if let Some(bytes) = recv_buffer {
        socket.set_recv_buffer_size(bytes)?;
    }
    let stream = socket
        .connect(gateway.parse().expect("gateway address"))
        .await?;
    let mut req = format!("ws://{gateway}/ws").into_client_request()?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(user)).parse().expect("header"),
    );
    for (name, value) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
    }
    tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
        .await
        .map(|(ws, _)| ws)
}

fn status_of<T>(result: &Result<T, WsError>) -> Option<u16> {
    match result {
        Err(WsError::Http(resp)) => Some(resp.status().as_u16()),
        Ok(_) => Some(101),
        Err(_) => None,
    }
}

async fn connect_from(gateway: &str, source: &str, user: &str) -> anyhow::Result<Client> {
    let ws = open_from(gateway, source, user, &[], None)
        .await
        .context("upgrade")?;
    Client::after_upgrade(ws, user).await
}

/// Retries `open` until it is admitted: a closed connection leaves the counts a moment later.
async fn admitted_soon(gateway: &str, source: &str, user: &str) -> anyhow::Result<Client> {
    for _ in 0..50 {
        match connect_from(gateway, source, user).await {
            Ok(c) => return Ok(c),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    bail!("{user} from {source} was never admitted again")
}

#[tokio::test]
async fn connections_are_capped_per_user_per_address_and_per_gateway() -> anyhow::Result<()> {
    let gw = ExtraGateway::start_with(&[
        ("GATEWAY_MAX_CONNECTIONS", "4"),
        ("GATEWAY_MAX_CONNECTIONS_PER_USER", "2"),
        ("GATEWAY_MAX_CONNECTIONS_PER_ADDRESS", "3"),
    ])
    .await?;
    let gw = &gw.addr;
    let (alice, bob, carol, dave) = (user("alice"), user("bob"), user("carol"), user("dave"));
    let alice1 = connect_from(gw, "127.0.0.1", &alice).await?;
    let _alice2 = connect_from(gw, "127.0.0.1", &alice).await?;
    let third = open_from(gw, "127.0.0.2", &alice, &[], None).await;
    assert_eq!(
        status_of(&third),
        Some(429),
        "a third connection of one user"
    );
    let _bob = connect_from(gw, "127.0.0.1", &bob).await?;
    let fourth = open_from(gw, "127.0.0.1", &carol, &[], None).await;
    assert_eq!(status_of(&fourth), Some(429), "a fourth from one address");
    let _carol = connect_from(gw, "127.0.0.2", &carol).await?;
    let fifth = open_from(gw, "127.0.0.3", &dave, &[], None).await;
    assert_eq!(status_of(&fifth), Some(503), "a fifth on a gateway of four");
    for reason in ["user_connections", "address_connections", "gateway_full"] {
        let label = format!("reason=\"{reason}\"");
        assert_eq!(
            metric(gw, "connect_gateway_upgrades_refused_total", &label).await?,
            1.0,
            "{reason}"
        );
    }
    // A connection that closes frees its place under every cap.
    alice1.close().await;
    let _dave = admitted_soon(gw, "127.0.0.3", &dave).await?;
    Ok(())
}

/// Behind a trusted proxy (127.0.0.2 here, the ALB in AWS) the per-address cap counts the
/// clients the proxy says it saw; a peer that is no trusted proxy is counted by its own address,
/// whatever `X-Forwarded-For` it sends.
#[tokio::test]
async fn behind_a_trusted_proxy_the_address_cap_counts_its_clients() -> anyhow::Result<()> {
    let gw = ExtraGateway::start_with(&[
        ("GATEWAY_MAX_CONNECTIONS_PER_ADDRESS", "1"),
        ("GATEWAY_TRUSTED_PROXIES", "127.0.0.2/32"),
    ])
    .await?;
    let gw = &gw.addr;
    let proxy = "127.0.0.2";
    let via = |client: &'static str| [("x-forwarded-for", client)];
    let (a, b, c, d) = (user("a"), user("b"), user("c"), user("d"));
    // Two clients behind the one proxy address: counted apart.
    let _a = open_from(gw, proxy, &a, &via("203.0.113.1"), None).await?;
    let _b = open_from(gw, proxy, &b, &via("203.0.113.2"), None).await?;
    // A second connection of one of them: that client's cap, not the proxy's.
    let again = open_from(gw, proxy, &c, &via("203.0.113.1"), None).await;
    assert_eq!(status_of(&again), Some(429), "203.0.113.1 twice");
    // A client's own entry to the left of the proxy's is not believed.
    let spoofed = open_from(gw, proxy, &c, &via("198.51.100.9, 203.0.113.2"), None).await;
    assert_eq!(
        status_of(&spoofed),
        Some(429),
        "203.0.113.2 with a forged entry in front"
    );
    // Straight from an untrusted peer, a forged header changes nothing: 127.0.0.3 is the address.
    let _c = open_from(gw, "127.0.0.3", &c, &via("198.51.100.1"), None).await?;
    let forged = open_from(gw, "127.0.0.3", &d, &via("198.51.100.2"), None).await;
    assert_eq!(
        status_of(&forged),
        Some(429),
        "a forged X-Forwarded-For from 127.0.0.3"
    );
    assert_eq!(
        metric(
            gw,
            "connect_gateway_upgrades_refused_total",
            "reason=\"address_connections\""
        )
        .await?,
        3.0
    );
    Ok(())
}

#[tokio::test]
async fn browsers_from_origins_off_the_allow_list_get_403() -> anyhow::Result<()> {
    let gw = ExtraGateway::start_with(&[(
        "GATEWAY_ALLOWED_ORIGINS",
        "https://chat.example.com, http://localhost:8080/",
    )])
    .await?;
    let gw = &gw.addr;
    let alice = user("alice");
    let cases = [
        (Some("https://evil.example.net"), 403),
        (Some("https://chat.example.com.evil.net"), 403),
        (Some("null"), 403),
        (Some("https://chat.example.com"), 101),
        (Some("http://localhost:8080"), 101),
        (None, 101),
    ];
    for (origin, want) in cases {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
        let result = open_from(gw, "127.0.0.1", &alice, &headers, None).await;
        assert_eq!(status_of(&result), Some(want), "origin {origin:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_connection_is_closed_when_its_token_expires() -> anyhow::Result<()> {
    let gw = &gateways()[0];
    let alice = user("alice");
    let exp = connect_core::now_ms() / 1000 + 2;
    let short = issuer().mint_until(&alice, exp);
    let ws = open(gw, Some(&format!("Bearer {short}")), "").await?;
    let mut c = Client::after_upgrade(ws, &alice).await?;
    let error = c.next_within(Duration::from_secs(20)).await?;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "unauthorized");
    let closed_at = connect_core::now_ms() / 1000;
    assert!(
        closed_at >= exp + connect_core::auth::LEEWAY_SECS,
        "not before exp + leeway: {closed_at} < {exp} + 5"
    );
    match c.raw_next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1008),
        other => bail!("expected a 1008 close, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn floods_of_any_frame_are_rate_limited_and_acks_cost_a_write_at_a_time() -> anyhow::Result<()>
{
    // The defaults: 100 frames a second, bursts of 200, per connection.
    let gw = ExtraGateway::start().await?;
    let gw = &gw.addr;
    let (alice, bob) = (user("alice"), user("bob"));
    let mut a = Client::connect(&gateways()[0], &alice).await?;
    for i in 1..=3 {
        a.send_accepted(&format!("m{i}"), &bob, "hi").await?;
    }
    let conversation = dm(&alice, &bob);
    let mut b = Client::connect(gw, &bob).await?;
    let mut got = b.drain_messages(Duration::from_millis(1500)).await?;
    got.sort_unstable();
    assert_eq!(got, vec![1, 2, 3]);
    let ack = |seq: u64| json!({"type":"ack","conversation":conversation,"seq":seq}).to_string();
    let n = 1000;
    let mut frames = vec![ack(1), ack(2), ack(3)];
    frames.extend((3..n).map(|_| ack(3)));
    for f in &frames {
        b.send_raw(f).await?;
    }
    let mut limited = 0;
    while let Ok(f) = b.next_within(Duration::from_millis(1000)).await {
        assert_eq!(f["code"], "rate_limited", "{f}");
        assert!(f.get("id").is_none_or(|id| id.is_null()), "{f}");
        limited += 1;
    }
    assert!(
        (n - 260..=n - 190).contains(&limited),
        "about a burst's worth (200) taken, the rest limited: {limited} of {n} limited"
    );
    // Bad frames and binary frames count against the same limit, and are answered.
    for _ in 0..300 {
        b.send_raw("{not json").await?;
    }
    let mut codes = std::collections::HashMap::<String, usize>::new();
    while let Ok(f) = b.next_within(Duration::from_millis(1000)).await {
        *codes
            .entry(f["code"].as_str().unwrap_or("?").into())
            .or_default() += 1;
    }
    assert_eq!(codes.values().sum::<usize>(), 300, "{codes:?}");
    assert!(
        codes.get("rate_limited").copied().unwrap_or(0) > 0,
        "{codes:?}"
    );
    let acks = metric(gw, "connect_gateway_acks_total", "").await?;
    let writes = metric(gw, "connect_gateway_ack_writes_total", "").await?;
    assert!(
        acks >= 150.0 && writes <= acks / 4.0,
        "acks coalesce while a write is in flight: {acks} acks, {writes} writes"
    );
    // The connection still works once the bucket refills, and the cursor holds seq 3: the
    // next connection of bob's device gets no backlog.
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.send_accepted("after", &alice, "still here").await?;
    b.close().await;
    let mut again = Client::connect(&gateways()[1], &bob).await?;
    again.expect_nothing_fresh(Duration::from_secs(2)).await?;
    Ok(())
}

/// Starts a gateway with `env`, connects bob there as a reader that never reads (a receive
/// buffer of 4 KiB), and sends him `n` messages of 15 KiB from alice; returns once `metric`
/// on that gateway shows him cut off, then checks that his next connection gets all `n`.
async fn a_stalled_reader_is_cut_off(env: &[(&str, &str)], cut_by: &str) -> anyhow::Result<()> {
    let mut env = env.to_vec();
    env.extend([
        ("GATEWAY_SEND_RATE", "1000"),
        ("GATEWAY_SEND_BURST", "1000"),
        ("GATEWAY_USER_SEND_RATE", "1000"),
        ("GATEWAY_USER_SEND_BURST", "1000"),
        ("GATEWAY_FRAME_BURST", "2000"),
        ("GATEWAY_USER_FRAME_BURST", "2000"),
    ]);
    let gw = ExtraGateway::start_with(&env).await?;
    let gw = &gw.addr;
    let (alice, bob) = (user("alice"), user("bob"));
    let mut stalled = open_from(gw, "127.0.0.1", &bob, &[], Some(4096)).await?;
    // Only the hello is read: from now on bob reads nothing.
    match stalled.next().await {
        Some(Ok(Message::Text(t))) if t.contains("hello") => {}
        other => bail!("expected hello, got {other:?}"),
    }
    let mut a = Client::connect(gw, &alice).await?;
    let body = "x".repeat(15 * 1024);
    let max = 400;
    let mut sent = 0;
    while sent < max {
        // 20 at a time; a send shed as `unavailable` is retried with its id, as a client does.
        let mut pending: Vec<String> = (sent..sent + 20).map(|i| format!("big-{i}")).collect();
        while !pending.is_empty() {
            for id in &pending {
                a.send_to(id, &bob, &body).await?;
            }
            let mut retry = Vec::new();
            for _ in 0..pending.len() {
                let f = a.next().await?;
                match (f["type"].as_str(), f["code"].as_str(), f["id"].as_str()) {
                    (Some("accepted"), _, _) => {}
                    (Some("error"), Some("unavailable"), Some(id)) => retry.push(id.to_owned()),
                    _ => bail!("unexpected {f}"),
                }
            }
            pending = retry;
        }
        sent += 20;
        if metric(gw, cut_by, "").await? >= 1.0 {
            break;
        }
    }
    metric_reaching(gw, cut_by, "", 1.0)
        .await
        .with_context(|| format!("bob not cut off after {sent} messages of 15 KiB"))?;
    // His socket is closed from the server's side (or reset): reading it ends soon.
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(Ok(_)) = stalled.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the cut-off socket was not closed");
    // Nothing was lost: what he had not acked comes on his next connection.
    let mut b = Client::connect(&gateways()[0], &bob).await?;
    let mut got = b.drain_messages(Duration::from_secs(3)).await?;
    got.sort_unstable();
    got.dedup();
    assert_eq!(got, (1..=sent as u64).collect::<Vec<_>>());
    Ok(())
}

/// A connection that does not read its backlog fills its queue; its gateway then answers the
/// drain's posts 429 at once (`GATEWAY_POST_WAIT_MS`), so the drain comes back to it later
/// instead of waiting, and another user's catch-up is not held up behind it.
#[tokio::test]
async fn a_reader_that_does_not_read_its_backlog_does_not_hold_up_anyone_elses(
) -> anyhow::Result<()> {
    const CONVERSATIONS: usize = 2000;
    let gw = ExtraGateway::start_with(&[("GATEWAY_OUTBOUND_QUEUE_BYTES", "65536")]).await?;
    let (stalled_user, quiet, sender) = (user("stalled"), user("quiet"), user("sender"));
    // 2,000 × 4 KiB: more than the connection's queue and both socket buffers hold.
    crate::offline::backlog_in_many_conversations(&stalled_user, CONVERSATIONS, 4096).await?;
    let mut s = Client::connect(&gateways()[0], &sender).await?;
    s.send_accepted("q1", &quiet, "for quiet").await?;

    let mut stalled = open_from(&gw.addr, "127.0.0.1", &stalled_user, &[], Some(4096)).await?;
    match stalled.next().await {
        Some(Ok(Message::Text(t))) if t.contains("hello") => {}
        other => bail!("expected hello, got {other:?}"),
    }
    // From now on it reads nothing; its drain fills the queue and is answered busy.
    let busy = metric_reaching(
        &gw.addr,
        "connect_gateway_management_calls_total",
        "result=\"busy\"",
        1.0,
    )
    .await?;
    anyhow::ensure!(
        busy >= 1.0,
        "the stalled connection's drain was never answered busy"
    );
    let started = tokio::time::Instant::now();
    let mut q = Client::connect(&gateways()[1], &quiet).await?;
    let m = q.expect("message").await?;
    let waited = started.elapsed();
    assert_eq!(m["body"], "for quiet");
    assert!(
        waited < Duration::from_secs(2),
        "the quiet user's backlog took {waited:?} behind a connection that does not read"
    );
    // Nothing was lost: its next connection, which reads, gets every conversation once.
    drop(stalled);
    let mut again = Client::connect(&gateways()[0], &stalled_user).await?;
    let mut got = std::collections::BTreeSet::new();
    while got.len() < CONVERSATIONS {
        let f = again.next_within(Duration::from_secs(30)).await?;
        if f["type"] == "message" {
            got.insert(f["conversation"].as_str().unwrap_or_default().to_owned());
        }
    }
    eprintln!("quiet's backlog after {waited:?} behind a stalled reader");
    Ok(())
}

#[tokio::test]
async fn a_reader_past_the_byte_bound_is_cut_off_and_loses_nothing() -> anyhow::Result<()> {
    a_stalled_reader_is_cut_off(
        &[
            ("GATEWAY_OUTBOUND_QUEUE_BYTES", "131072"),
            ("GATEWAY_WRITE_TIMEOUT_MS", "120000"),
        ],
        "connect_gateway_slow_consumers_total",
    )
    .await
}

#[tokio::test]
async fn a_write_that_times_out_cuts_the_reader_off_and_loses_nothing() -> anyhow::Result<()> {
    a_stalled_reader_is_cut_off(
        &[
            ("GATEWAY_OUTBOUND_QUEUE_BYTES", "268435456"),
            ("GATEWAY_OUTBOUND_QUEUE", "100000"),
            ("GATEWAY_WRITE_TIMEOUT_MS", "500"),
        ],
        "connect_gateway_write_timeouts_total",
    )
    .await
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_dropped_and_deregistered() -> anyhow::Result<()> {
    let gw = ExtraGateway::start_with(&[
        ("GATEWAY_PING_INTERVAL_SECS", "1"),
        ("GATEWAY_IDLE_TIMEOUT_SECS", "2"),
        ("GATEWAY_CLOSE_TIMEOUT_MS", "500"),
    ])
    .await?;
    let gw = &gw.addr;
    let bob = user("bob");
    // A socket that reads its hello and then nothing: pings go unanswered.
    let mut silent = open_from(gw, "127.0.0.1", &bob, &[], None).await?;
    match silent.next().await {
        Some(Ok(Message::Text(t))) if t.contains("hello") => {}
        other => bail!("expected hello, got {other:?}"),
    }
    // A live client beside it, answering pings (its library does, as it reads), stays.
    let mut alive = Client::connect(gw, &user("alice")).await?;
    assert_eq!(metric(gw, "connect_gateway_connections", "").await?, 2.0);
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(gw, "connect_gateway_connections", "").await? > 1.0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the silent peer was not dropped"
        );
        // Reading keeps the live one answering pings.
        let _ = alive.next_within(Duration::from_millis(200)).await;
    }
    // Its session is gone from the registry: a message to bob finds no connection.
    let sessions = redis_sessions(&bob).await?;
    assert_eq!(sessions, 0, "bob's session was deregistered");
    Ok(())
}

/// How many live sessions the registry holds for `user`, read through the production adapter
/// (`REDIS_URL` and its settings, as the services read them: a TLS cluster on the AWS-like stack).
async fn redis_sessions(user: &str) -> anyhow::Result<usize> {
    use connect_core::ports::SessionRegistry;
    let redis_cfg = connect_redis::RedisConfig::from_settings(&settings())?;
    let conn = connect_redis::connect(&redis_cfg).await?;
    let registry = connect_redis::RedisRegistry::new(conn, Duration::from_secs(60));
    let user = connect_protocol::UserId::parse(user)?;
    let found = registry.lookup(std::slice::from_ref(&user)).await?;
    Ok(found.first().map_or(0, Vec::len))
}
