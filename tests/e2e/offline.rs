//! Offline and guaranteed delivery: the offline store, the offline-delivery Lambda (run by
//! `cargo lambda watch`, fed by the event poller from `user_connected`), acks and redelivery.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::helpers::*;

const QUIET: Duration = Duration::from_secs(3);

#[tokio::test]
async fn offline_messages_arrive_after_hello_in_order_and_acked_ones_never_again(
) -> anyhow::Result<()> {
    let gw = gateways();
    let (alice, bob) = (user("alice"), user("bob"));
    let conversation = dm(&alice, &bob);
    let mut a = Client::connect(&gw[0], &alice).await?;
    for i in 1..=5u64 {
        assert_eq!(
            a.send_accepted(&format!("m{i}"), &bob, "while away")
                .await?,
            i
        );
    }

    let mut b = Client::connect(&gw[1], &bob).await?;
    let mut got = Vec::new();
    for _ in 0..5 {
        let m = b.expect("message").await?;
        assert_eq!(m["conversation"], conversation.as_str());
        assert_eq!(m["body"], "while away");
        got.push(m["seq"].as_u64().unwrap());
    }
    assert_eq!(got, [1, 2, 3, 4, 5], "in seq order");
    b.ack_held(&conversation, 5).await?;
    b.expect_silence(Duration::from_millis(500)).await?;
    b.close().await;

    let mut b = Client::connect(&gw[0], &bob).await?;
    b.expect_silence(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn unacked_live_messages_come_again_on_the_next_connection() -> anyhow::Result<()> {
    let gw = gateways();
    let (alice, bob) = (user("alice"), user("bob"));
    let conversation = dm(&alice, &bob);
    let mut a = Client::connect(&gw[0], &alice).await?;
    let mut b = Client::connect(&gw[1], &bob).await?;
    for i in 1..=3u64 {
        a.send_accepted(&format!("m{i}"), &bob, "live").await?;
        assert_eq!(b.expect("message").await?["seq"].as_u64(), Some(i));
    }
    b.close().await; // no ack

    let mut b = Client::connect(&gw[0], &bob).await?;
    // At least once: a repeat is allowed (the parking gateway announced this new connection
    // too), a gap or a reorder is not.
    let mut got = b.drain_messages(QUIET).await?;
    let first_pass: Vec<u64> = got.iter().copied().take_while(|s| *s <= 3).collect();
    assert!(first_pass.starts_with(&[1, 2, 3]), "{got:?}");
    got.dedup();
    got.sort_unstable();
    got.dedup();
    assert_eq!(got, [1, 2, 3]);
    b.ack_held(&conversation, 3).await?;
    b.close().await;
    let mut b = Client::connect(&gw[1], &bob).await?;
    b.expect_silence(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn nothing_is_lost_while_bob_keeps_reconnecting() -> anyhow::Result<()> {
    const N: u64 = 300;
    let gw = gateways();
    let (alice, bob) = (user("alice"), user("bob"));
    let conversation = dm(&alice, &bob);
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);

    let churn = {
        let (gw, bob, conversation) = (gw.clone(), bob.clone(), conversation.clone());
        tokio::spawn(async move {
            let mut held = BTreeSet::new();
            let mut contiguous = 0u64;
            let mut round = 0usize;
            loop {
                let finished = *done_rx.borrow();
                let mut b = Client::connect(&gw[round % 2], &bob).await?;
                round += 1;
                // Short visits while alice sends; one long one at the end.
                let visit = if finished {
                    QUIET
                } else {
                    Duration::from_millis(150 + 70 * (round as u64 % 5))
                };
                let mut seqs = Vec::new();
                while let Ok(f) = b.next_within(visit).await {
                    if f["type"] == "message" {
                        seqs.push(f["seq"].as_u64().unwrap());
                    }
                }
                held.extend(seqs);
                // Ack only what is held without a gap, as a client must.
                while held.contains(&(contiguous + 1)) {
                    contiguous += 1;
                }
                if contiguous > 0 && round.is_multiple_of(2) {
                    b.ack(&conversation, contiguous).await?;
                }
                b.close().await;
                if finished {
                    return anyhow::Ok((held, round));
                }
            }
        })
    };

    let mut a = Client::connect(&gw[0], &alice).await?;
    for i in 1..=N {
        assert_eq!(a.send_accepted(&format!("m{i}"), &bob, "x").await?, i);
    }
    done_tx.send(true)?;
    let (held, rounds) = churn.await??;
    let missing: Vec<u64> = (1..=N).filter(|s| !held.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "after {rounds} connections bob misses {missing:?}"
    );
    Ok(())
}

/// A gateway killed with SIGKILL: the records routed to its slot are never delivered by it, but
/// every message is in its conversation's log before the sessions are looked up, and only acks
/// move a device's cursor, so the device's next connection (on another gateway) gets all of it
/// from offline delivery alone; history agrees.
#[tokio::test]
async fn after_a_gateway_is_killed_its_devices_get_everything_on_their_next_connection(
) -> anyhow::Result<()> {
    use crate::private::ExtraGateway;
    let gw = gateways();
    let (alice, bob) = (user("alice"), user("bob"));
    let conversation = dm(&alice, &bob);
    let mut doomed = ExtraGateway::start().await?;
    let mut a = Client::connect(&gw[0], &alice).await?;
    let mut b = Client::connect(&doomed.addr, &bob).await?;
    let mut accepted = Vec::new();
    for i in 1..=5 {
        accepted.push(a.send_accepted(&format!("m{i}"), &bob, "x").await?);
    }
    // Bob has read some of them, acked none; then his gateway dies with SIGKILL.
    let _ = b.next().await?;
    doomed.kill().await?;
    for i in 6..=10 {
        accepted.push(a.send_accepted(&format!("m{i}"), &bob, "x").await?);
    }

    let mut b = Client::connect(&gw[1], &bob).await?;
    let mut held: BTreeSet<u64> = b.drain_messages(QUIET).await?.into_iter().collect();
    assert_eq!(
        held.iter().copied().collect::<Vec<_>>(),
        accepted,
        "offline delivery alone gives every message"
    );
    let last = (0..)
        .take_while(|s| *s == 0 || held.contains(s))
        .last()
        .unwrap_or(0);
    let (status, page) = api_get(
        &format!("/v1/conversations/{conversation}/messages?after={last}&limit=100"),
        Some(&bob),
    )
    .await?;
    assert_eq!(status, 200, "{page}");
    held.extend(
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["seq"].as_u64()),
    );
    assert_eq!(held.into_iter().collect::<Vec<_>>(), accepted);
    Ok(())
}

#[tokio::test]
async fn the_management_api_wants_the_internal_token() -> anyhow::Result<()> {
    let gw = gateways();
    let bob = user("bob");
    let mut b = Client::connect(&gw[0], &bob).await?;
    let token = std::env::var("CONNECT_INTERNAL_TOKEN")
        .unwrap_or_else(|_| connect_core::auth::DEV_INTERNAL_TOKEN.into());
    let call = |method: &'static str, conn: String, token: Option<String>, body: &'static str| {
        let addr = gw[0].clone();
        async move {
            let headers: Vec<_> = token
                .map(|t| vec![(connect_core::auth::INTERNAL_TOKEN_HEADER, t)])
                .unwrap_or_default();
            let path = format!("/@connections/{conn}");
            http_raw(&addr, method, &path, &headers, body)
                .await
                .map(|(_, response)| response)
        }
    };
    let forbidden = call("POST", b.session.clone(), None, "{}").await?;
    assert!(forbidden.starts_with("HTTP/1.0 403"), "{forbidden}");
    let wrong = call("POST", b.session.clone(), Some("nope".into()), "{}").await?;
    assert!(wrong.starts_with("HTTP/1.0 403"), "{wrong}");
    let gone = call("POST", "no-such-conn".into(), Some(token.clone()), "{}").await?;
    assert!(gone.starts_with("HTTP/1.0 410"), "{gone}");
    assert!(
        gone.to_ascii_lowercase()
            .contains("x-amzn-errortype: goneexception"),
        "{gone}"
    );

    let posted = call(
        "POST",
        b.session.clone(),
        Some(token.clone()),
        r#"{"type":"ping-test"}"#,
    )
    .await?;
    assert!(posted.starts_with("HTTP/1.0 200"), "{posted}");
    assert_eq!(b.next().await?["type"], "ping-test");
    let info = call("GET", b.session.clone(), Some(token.clone()), "").await?;
    assert!(
        info.starts_with("HTTP/1.0 200") && info.contains("connectedAt"),
        "{info}"
    );
    let deleted = call("DELETE", b.session.clone(), Some(token), "").await?;
    assert!(deleted.starts_with("HTTP/1.0 204"), "{deleted}");
    assert!(b.next().await.is_err(), "closed by the server");
    Ok(())
}

#[tokio::test]
async fn each_device_gets_what_it_has_not_acked_before_newer_live_messages() -> anyhow::Result<()> {
    let gw = gateways();
    let (alice, bob) = (user("alice"), user("bob"));
    let conversation = dm(&alice, &bob);
    let mut a = Client::connect(&gw[0], &alice).await?;
    for i in 1..=30u64 {
        a.send_accepted(&format!("m{i}"), &bob, &format!("n{i}"))
            .await?;
    }
    // The phone comes back, takes all 30 and acks them.
    let mut phone = Client::connect_device(&gw[1], &bob, "phone").await?;
    let mut got = Vec::new();
    for _ in 0..30 {
        got.push(phone.expect("message").await?["seq"].as_u64().unwrap_or(0));
    }
    assert_eq!(got, (1..=30).collect::<Vec<_>>());
    phone.ack_held(&conversation, 30).await?;
    phone.close().await;

    // The laptop comes back; alice sends while its backlog is on the way.
    let mut laptop = Client::connect_device(&gw[0], &bob, "laptop").await?;
    a.send_accepted("live", &bob, "sent meanwhile").await?;
    let mut got = Vec::new();
    for _ in 0..31 {
        let m = laptop.expect("message").await?;
        got.push(m["seq"].as_u64().unwrap_or(0));
    }
    assert_eq!(
        got,
        (1..=31).collect::<Vec<_>>(),
        "the whole backlog in order, then the live one"
    );
    laptop.expect_silence(Duration::from_millis(500)).await?;

    // The phone acked 30: it gets only what came after.
    let mut phone = Client::connect_device(&gw[1], &bob, "phone").await?;
    assert_eq!(phone.expect("message").await?["seq"], 31);
    phone.expect_silence(Duration::from_millis(500)).await?;
    Ok(())
}

#[tokio::test]
async fn the_senders_other_devices_get_what_it_sent_and_the_sending_device_does_not(
) -> anyhow::Result<()> {
    let gw = gateways();
    let (alice, bob) = (user("alice"), user("bob"));
    let conversation = dm(&alice, &bob);
    let mut phone = Client::connect_device(&gw[0], &bob, "phone").await?;
    for i in 1..=3u64 {
        phone
            .send_accepted(&format!("p{i}"), &alice, &format!("from the phone {i}"))
            .await?;
    }
    phone.close().await;
    // The laptop was offline: it gets what the phone sent, in order.
    let mut laptop = Client::connect_device(&gw[1], &bob, "laptop").await?;
    for i in 1..=3u64 {
        let m = laptop.expect("message").await?;
        assert_eq!(
            (
                m["conversation"].as_str(),
                m["seq"].as_u64(),
                m["from"].as_str()
            ),
            (Some(conversation.as_str()), Some(i), Some(bob.as_str()))
        );
    }
    laptop.expect_silence(Duration::from_millis(500)).await?;
    // The phone had `accepted` for each: nothing comes back to it.
    let mut phone = Client::connect_device(&gw[0], &bob, "phone").await?;
    phone.expect_silence(Duration::from_millis(800)).await?;
    Ok(())
}

#[tokio::test]
async fn a_bad_device_id_is_refused_before_the_upgrade() -> anyhow::Result<()> {
    let gw = gateways();
    let bob = user("bob");
    let auth = format!("Bearer {}", token(&bob));
    match open(&gw[0], Some(&auth), "?device=not%20ok").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 400),
        other => anyhow::bail!("expected 400, got {:?}", other.map(|_| "an upgrade")),
    }
    Ok(())
}

/// Writes one message into each of `n` direct conversations between `user` and fresh peers,
/// through the production Redis adapter, as messaging logs them (the send path itself caps a
/// user's send rate far below what building this many conversations quickly needs). Each body
/// is padded to at least `body_bytes`.
pub(crate) async fn backlog_in_many_conversations(
    user: &str,
    n: usize,
    body_bytes: usize,
) -> anyhow::Result<()> {
    use connect_core::model::{LogEntry, StoredMessage};
    use connect_core::ports::ConversationLog;
    use connect_protocol::{ClientMsgId, ConversationId, UserId};
    let log = redis_log().await?;
    let me = UserId::parse(user)?;
    let entries: Vec<LogEntry> = (0..n)
        .map(|i| {
            let peer = UserId::parse(format!("{user}-p{i:05}"))?;
            let message = StoredMessage {
                conversation: ConversationId::direct(&me, &peer)?,
                seq: 1,
                from: peer,
                id: ClientMsgId::parse("m1")?,
                body: format!("backlog {i} {}", "x".repeat(body_bytes)),
                ts: connect_core::now_ms(),
                event: None,
                mv: None,
                device: None,
            };
            Ok(LogEntry {
                conversation: message.conversation.clone(),
                seq: 1,
                frame: message.frame_text(),
                mv: 0,
                device: None,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    for chunk in entries.chunks(500) {
        log.append(chunk).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_user_with_thousands_of_backlogs_does_not_hold_up_another_users_catch_up(
) -> anyhow::Result<()> {
    const CONVERSATIONS: usize = 5000;
    let gw = gateways();
    let (noisy, quiet, sender) = (user("noisy"), user("quiet"), user("sender"));
    backlog_in_many_conversations(&noisy, CONVERSATIONS, 0).await?;
    let mut s = Client::connect(&gw[0], &sender).await?;
    s.send_accepted("q1", &quiet, "for quiet").await?;

    let mut n = Client::connect(&gw[0], &noisy).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = tokio::time::Instant::now();
    let mut q = Client::connect(&gw[1], &quiet).await?;
    let m = q.expect("message").await?;
    let waited = started.elapsed();
    assert_eq!(m["body"], "for quiet");
    assert!(
        waited < Duration::from_secs(2),
        "the quiet user's backlog took {waited:?} behind a drain of {CONVERSATIONS} conversations"
    );
    // The noisy user gets every one of them, each once, across the drain's slices.
    let mut got = BTreeSet::new();
    while got.len() < CONVERSATIONS {
        let f = n.next_within(Duration::from_secs(30)).await?;
        if f["type"] == "message" {
            got.insert(f["conversation"].as_str().unwrap_or_default().to_owned());
        }
    }
    eprintln!(
        "quiet's backlog after {waited:?}; noisy's {CONVERSATIONS} conversations after {:?}",
        started.elapsed() + Duration::from_secs(1)
    );
    Ok(())
}

/// A `user_connected` record not written by the connection's gateway (here: bob's live
/// connection, with another endpoint, as a service holding only Kafka credentials could write
/// it) has nothing pushed anywhere; bob's real connections still get the backlog.
#[tokio::test]
async fn a_forged_user_connected_record_pushes_nothing_to_its_endpoint() -> anyhow::Result<()> {
    use connect_core::ports::ConnectionEvents;
    let gw = gateways();
    let (alice, bob) = (user("alice"), user("bob"));
    let conversation = dm(&alice, &bob);
    let mut a = Client::connect(&gw[0], &alice).await?;
    a.send_accepted("m1", &bob, "for bob only").await?;
    let mut b = Client::connect(&gw[1], &bob).await?;
    assert_eq!(b.expect("message").await?["seq"].as_u64(), Some(1));

    // The attacker's endpoint: anything that reaches it is a leak.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let attacker = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
            let _ = tokio::io::AsyncWriteExt::write_all(&mut s, ok).await;
        }
    });
    let kafka = connect_kafka::KafkaConfig::from_settings(&settings())?;
    let (producer, _) = kafka.create_producer("e2e")?;
    let events = connect_kafka::KafkaConnectionEvents::new(
        producer,
        connect_kafka::Topics::from_settings(&settings()).user_connected,
    );
    events
        .connected(&connect_core::model::UserConnected {
            user: connect_protocol::UserId::parse(&bob)?,
            conn: b.session.clone(),
            gateway: b.gateway.clone(),
            endpoint,
            ts: connect_core::now_ms(),
            device: b.device.clone(),
            resume: None,
            attempt: 0,
        })
        .await?;
    // bob's next connection is announced on the same partition (key = user), after the forged
    // record: once it has its backlog, the forged record was handled.
    let mut b2 = Client::connect(&gw[0], &bob).await?;
    let m = b2.expect("message").await?;
    assert_eq!(
        (m["conversation"].as_str(), m["seq"].as_u64()),
        (Some(conversation.as_str()), Some(1))
    );
    b.expect_silence(Duration::from_millis(500)).await?;
    attacker.abort();
    let got = calls.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        got, 0,
        "the forged record's endpoint was called {got} times"
    );
    Ok(())
}

/// The drain reads its batch's starts (each device's direct conversations and cursors) in one
/// call: through the production adapter it answers what each device's own two reads answer, in
/// order, for devices with and without conversations and cursors (on the AWS-like stack, over
/// the cluster's slots).
#[tokio::test]
async fn a_batch_of_starts_answers_what_each_devices_own_reads_do() -> anyhow::Result<()> {
    use connect_core::ports::{ConversationLog, DeviceStart};
    use connect_protocol::UserId;
    let log = redis_log().await?;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    backlog_in_many_conversations(&alice, 3, 0).await?;
    backlog_in_many_conversations(&bob, 1, 0).await?;
    let a = UserId::parse(&alice)?;
    let first = log.inbox(&a).await?[0].0.clone();
    log.ack(&a, "phone", &first, 1).await?;
    let devices: Vec<(UserId, String)> = vec![
        (a.clone(), "phone".into()),
        (UserId::parse(&carol)?, "default".into()),
        (UserId::parse(&bob)?, "default".into()),
        (a.clone(), "laptop".into()),
    ];
    let mut alone = Vec::new();
    for (user, device) in &devices {
        alone.push(DeviceStart {
            inbox: log.inbox(user).await?,
            cursors: log.cursors(user, device).await?,
        });
    }
    let together = log.starts(&devices).await?;
    assert_eq!(together, alone);
    assert_eq!(
        (
            together[0].inbox.len(),
            together[0].cursors.get(&first),
            together[1].inbox.len(),
            together[2].inbox.len(),
            together[3].cursors.len()
        ),
        (3, Some(&1), 0, 1, 0),
        "{together:?}"
    );
    Ok(())
}
