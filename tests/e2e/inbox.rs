//! Read state and the inbox (PROTOCOL.md "Read state and the inbox") over the real stack: the
//! `read` frame, live receipts, the durable markers in DynamoDB, `GET /v1/conversations` and
//! `GET /v1/conversations/{conversation}/receipts`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

/// `user`'s item in a receipts page (null when the page lists none).
fn receipt_in(body: &Value, user: &str) -> Value {
    body["receipts"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["user"] == user))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Within this a receipt reaches its connections (PROTOCOL: live; the issue: within 1 s, plus
/// the pacing of one per second when one went out just before).
const RECEIPT_WAIT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_read_reaches_the_peer_and_the_readers_other_device_clamped_and_forward_only(
) -> anyhow::Result<()> {
    let gws = gateways();
    let (alice, bob) = (user("alice"), user("bob"));
    let conversation = dm(&alice, &bob);
    let mut a = Client::connect(&gws[0], &alice).await?;
    let mut phone = Client::connect_device(&gws[1], &bob, "phone").await?;
    let mut laptop = Client::connect_device(&gws[0], &bob, "laptop").await?;
    for c in [&mut a, &mut phone, &mut laptop] {
        c.receipts = true;
    }
    for i in 1..=3 {
        a.send_accepted(&format!("m{i}"), &bob, &format!("hi {i}"))
            .await?;
    }
    for c in [&mut phone, &mut laptop] {
        for _ in 1..=3 {
            c.expect_fresh("message").await?;
        }
    }

    let started = tokio::time::Instant::now();
    phone.read(&conversation, 2).await?;
    let r = a.receipt_of(&bob, RECEIPT_WAIT).await?;
    let took = started.elapsed();
    assert_eq!(
        (
            r["conversation"].as_str(),
            r["read"].as_u64(),
            r["delivered"].as_u64()
        ),
        (Some(conversation.as_str()), Some(2), Some(2)),
        "{r}"
    );
    assert!(r["ts"].as_u64().is_some_and(|ts| ts > 0), "{r}");
    assert!(
        took < Duration::from_secs(1),
        "the peer's receipt took {took:?}"
    );
    let r = laptop.receipt_of(&bob, RECEIPT_WAIT).await?;
    assert_eq!(r["read"], 2, "the reader's other device: {r}");
    phone.expect_silence(Duration::from_millis(1500)).await?;

    // A lower seq is ignored: no receipt anywhere.
    phone.read(&conversation, 1).await?;
    a.expect_silence(Duration::from_millis(1500)).await?;
    // Beyond the head counts as the head.
    laptop.read(&conversation, 99).await?;
    let r = a.receipt_of(&bob, RECEIPT_WAIT).await?;
    assert_eq!(
        (r["read"].as_u64(), r["delivered"].as_u64()),
        (Some(3), Some(3)),
        "{r}"
    );
    let r = phone.receipt_of(&bob, RECEIPT_WAIT).await?;
    assert_eq!(r["read"], 3, "the phone follows the laptop's read: {r}");

    // The marker is durable and shared: the receipts route reads it from DynamoDB.
    let (status, body) = api_get(
        &format!("/v1/conversations/{conversation}/receipts"),
        Some(&alice),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let of_bob = receipt_in(&body, &bob);
    assert_eq!(of_bob["read"], 3, "{body}");
    // Alice's own send moved her marker to her last message.
    let of_alice = receipt_in(&body, &alice);
    assert_eq!(of_alice["read"], 3, "{body}");

    // A conversation the user is not in.
    let stranger = dm(&user("carol"), &user("dave"));
    phone.read(&stranger, 1).await?;
    let e = phone.expect("error").await?;
    assert_eq!(e["code"], "forbidden", "{e}");
    let (status, _) = api_get(
        &format!("/v1/conversations/{stranger}/receipts"),
        Some(&bob),
    )
    .await?;
    assert_eq!(status, 403);
    Ok(())
}

#[tokio::test]
async fn a_read_in_a_group_of_33_reaches_only_the_readers_own_devices() -> anyhow::Result<()> {
    let gws = gateways();
    let owner = user("owner");
    let others: Vec<String> = (0..32).map(|i| user(&format!("m{i}"))).collect();
    let refs: Vec<&str> = others.iter().map(String::as_str).collect();
    let group = create_group(&owner, &refs).await?;
    let conversation = format!("group:{group}");
    let reader = &others[0];
    let mut own = Client::connect(&gws[0], &owner).await?;
    let mut r1 = Client::connect_device(&gws[0], reader, "one").await?;
    let mut r2 = Client::connect_device(&gws[1], reader, "two").await?;
    for c in [&mut own, &mut r1, &mut r2] {
        c.receipts = true;
    }
    let seq = own
        .send_passing_over(json!({"type":"send","id":"g1","group":group,"body":"hi"}))
        .await?;
    r1.read(&conversation, seq).await?;
    let r = r2.receipt_of(reader, RECEIPT_WAIT).await?;
    assert_eq!(r["read"].as_u64(), Some(seq), "{r}");
    // The group is over RECEIPTS_LIVE_MAX_MEMBERS (32): the other members get nothing live.
    let silent = tokio::time::timeout(
        Duration::from_millis(1500),
        own.receipt_of(reader, RECEIPT_WAIT),
    )
    .await;
    assert!(!matches!(silent, Ok(Ok(_))), "the owner got {silent:?}");
    // ... but the receipts route lists it, paged by user id.
    let (status, body) = api_get(
        &format!("/v1/conversations/{conversation}/receipts?limit=1000"),
        Some(&owner),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let users: Vec<&str> = body["receipts"]
        .as_array()
        .map(|r| r.iter().filter_map(|r| r["user"].as_str()).collect())
        .unwrap_or_default();
    assert!(users.contains(&reader.as_str()), "{body}");
    assert!(
        users.windows(2).all(|w| w[0] < w[1]),
        "ordered by user id: {users:?}"
    );
    let (status, _) = api_get(
        &format!("/v1/conversations/{conversation}/receipts?limit=1001"),
        Some(&owner),
    )
    .await?;
    assert_eq!(status, 400);
    Ok(())
}

/// Every page of `who`'s inbox with `limit`: the conversations in order.
async fn walk(who: &str, limit: usize) -> anyhow::Result<Vec<Value>> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/conversations?limit={limit}&cursor={c}"),
            None => format!("/v1/conversations?limit={limit}"),
        };
        let (status, body) = api_get(&path, Some(who)).await?;
        anyhow::ensure!(status == 200, "{status}: {body}");
        let page = body["conversations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        anyhow::ensure!(
            page.len() <= limit,
            "{} items for limit {limit}",
            page.len()
        );
        all.extend(page);
        match body["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(all),
        }
    }
}

#[tokio::test]
async fn a_fresh_client_lists_every_conversation_newest_first_with_unread_counts(
) -> anyhow::Result<()> {
    let gws = gateways();
    let me = user("me");
    let peers: Vec<String> = (0..4).map(|i| user(&format!("p{i}"))).collect();
    let group = create_group(&peers[0], &[me.as_str(), peers[1].as_str()]).await?;
    // Each peer writes to me (peer 0 twice), then peer 1 in the group, then I answer peer 3.
    for (i, p) in peers.iter().enumerate() {
        let mut c = Client::connect(&gws[i % 2], p).await?;
        c.send_passing_over(json!({"type":"send","id":"a","to":me,"body":format!("from {p}")}))
            .await?;
        if i == 0 {
            c.send_passing_over(json!({"type":"send","id":"b","to":me,"body":"again"}))
                .await?;
        }
        c.close().await;
    }
    let mut c = Client::connect(&gws[1], &peers[1]).await?;
    c.send_passing_over(json!({"type":"send","id":"g","group":group,"body":"in the group"}))
        .await?;
    c.close().await;
    let mut mine = Client::connect(&gws[0], &me).await?;
    mine.send_passing_over(json!({"type":"send","id":"r","to":peers[3],"body":"answer"}))
        .await?;
    mine.read(&dm(&me, &peers[2]), 1).await?;

    let want_order = [
        dm(&me, &peers[3]),
        format!("group:{group}"),
        dm(&me, &peers[2]),
        dm(&me, &peers[1]),
        dm(&me, &peers[0]),
    ];
    // The read is applied asynchronously (no answer): wait for it to show.
    let deadline = tokio::time::Instant::now() + WAIT;
    let all = loop {
        let all = walk(&me, 50).await?;
        let read_p2 = all
            .iter()
            .any(|i| i["with"] == peers[2].as_str() && i["read"] == 1);
        if read_p2 || tokio::time::Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let order: Vec<&str> = all
        .iter()
        .filter_map(|i| i["conversation"].as_str())
        .collect();
    assert_eq!(
        order,
        want_order.iter().map(String::as_str).collect::<Vec<_>>(),
        "{all:?}"
    );
    let by = |c: &str| {
        all.iter()
            .find(|i| i["conversation"] == c)
            .cloned()
            .unwrap()
    };
    let p0 = by(&want_order[4]);
    assert_eq!(
        (
            p0["with"].as_str(),
            p0["last"]["body"].as_str(),
            p0["last"]["seq"].as_u64(),
            p0["read"].as_u64(),
            p0["unread"].as_u64()
        ),
        (
            Some(peers[0].as_str()),
            Some("again"),
            Some(2),
            Some(0),
            Some(2)
        ),
        "{p0}"
    );
    let answered = by(&want_order[0]);
    assert_eq!(
        (answered["read"].as_u64(), answered["unread"].as_u64()),
        (Some(2), Some(0)),
        "my own send reads: {answered}"
    );
    assert_eq!(by(&want_order[2])["unread"], 0, "the read marker");
    let g = by(&want_order[1]);
    assert_eq!(
        (g["group"].as_str(), g["last"]["body"].as_str()),
        (Some(group.as_str()), Some("in the group")),
        "{g}"
    );
    assert_eq!(
        g["unread"].as_u64(),
        g["last"]["seq"].as_u64(),
        "nothing read in the group: {g}"
    );

    // limit=3 walks every conversation exactly once, in the same order.
    let paged = walk(&me, 3).await?;
    let paged: Vec<&str> = paged
        .iter()
        .filter_map(|i| i["conversation"].as_str())
        .collect();
    assert_eq!(paged, order);

    // Removed from the group: it leaves the inbox.
    remove_member(&peers[0], &group, &me).await?;
    let after = walk(&me, 50).await?;
    assert!(
        !after
            .iter()
            .any(|i| i["conversation"] == want_order[1].as_str()),
        "{after:?}"
    );
    assert_eq!(after.len(), 4);

    let (status, _) = api_get("/v1/conversations?limit=0", Some(&me)).await?;
    assert_eq!(status, 400);
    let (status, _) = api_get("/v1/conversations?cursor=nonsense", Some(&me)).await?;
    assert_eq!(status, 400);
    let (status, _) = api_get("/v1/conversations", None).await?;
    assert_eq!(status, 401);
    Ok(())
}

#[tokio::test]
async fn acks_become_the_delivered_marker_that_the_sender_sees() -> anyhow::Result<()> {
    let gws = gateways();
    let (alice, bob) = (user("alice"), user("bob"));
    let conversation = dm(&alice, &bob);
    let mut a = Client::connect(&gws[0], &alice).await?;
    let mut b = Client::connect(&gws[1], &bob).await?;
    a.receipts = true;
    a.send_accepted("m1", &bob, "one").await?;
    a.send_accepted("m2", &bob, "two").await?;
    b.expect_fresh("message").await?;
    b.expect_fresh("message").await?;
    b.ack(&conversation, 1).await?;
    b.ack(&conversation, 2).await?;
    // Gathered per connection for GATEWAY_DELIVERED_FLUSH_MS (1 s), then one report.
    let r = a.receipt_of(&bob, RECEIPT_WAIT).await?;
    assert_eq!(
        (r["delivered"].as_u64(), r["read"].as_u64()),
        (Some(2), Some(0)),
        "{r}"
    );
    // An ack beyond the head counts as the head; an ack into someone else's conversation
    // stores nothing.
    b.ack(&conversation, 50).await?;
    let stranger = dm(&user("carol"), &user("dave"));
    b.ack(&stranger, 5).await?;
    a.expect_silence(Duration::from_millis(2500)).await?;
    let (_, body) = api_get(
        &format!("/v1/conversations/{conversation}/receipts"),
        Some(&alice),
    )
    .await?;
    let of_bob = receipt_in(&body, &bob);
    assert_eq!(
        (of_bob["delivered"].as_u64(), of_bob["read"].as_u64()),
        (Some(2), Some(0)),
        "{body}"
    );
    Ok(())
}

/// A client that marks every message as it shows it: a burst of `read`s on one connection
/// becomes the first at once, then one marker record per `GATEWAY_READ_FLUSH_MS` window (its
/// highest seq), and the peer's receipt says the highest.
#[tokio::test]
async fn a_burst_of_reads_is_reported_once_with_its_highest_seq() -> anyhow::Result<()> {
    let gws = gateways();
    let (alice, bob) = (user("alice"), user("bob"));
    let conversation = dm(&alice, &bob);
    let mut a = Client::connect(&gws[0], &alice).await?;
    let mut b = Client::connect(&gws[1], &bob).await?;
    a.receipts = true;
    for i in 1..=30 {
        a.send_passing_over(json!({"type":"send","id":format!("r{i}"),"to":bob,"body":"x"}))
            .await?;
    }
    for _ in 1..=30 {
        b.expect_fresh("message").await?;
    }
    let count = |name: &'static str| {
        let gw = gws[1].clone();
        async move { metric(&gw, name, "").await }
    };
    let (reads, reports) = (
        count("connect_gateway_reads_total").await?,
        count("connect_gateway_read_reports_total").await?,
    );
    for seq in 1..=30 {
        b.read(&conversation, seq).await?;
    }
    let deadline = tokio::time::Instant::now() + RECEIPT_WAIT;
    loop {
        let r = a.receipt_of(&bob, RECEIPT_WAIT).await?;
        if r["read"] == 30 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no receipt at 30: {r}"
        );
    }
    let reads =
        metric_reaching(&gws[1], "connect_gateway_reads_total", "", reads + 30.0).await? - reads;
    let reports = count("connect_gateway_read_reports_total").await? - reports;
    assert!(reads >= 30.0, "{reads} reads counted");
    // Other tests' reads may be counted meanwhile; 30 reports would be one per frame.
    assert!(reports < 10.0, "{reports} reports for a burst of 30 reads");
    Ok(())
}

/// Direct conversations with equal times (the recency index orders only by time): every page
/// size walks them exactly once, newest first and equal times by conversation id, both through
/// the adapter and through `GET /v1/conversations`.
#[tokio::test]
async fn equal_times_page_exactly_once_through_the_recency_index() -> anyhow::Result<()> {
    use connect_core::ports::{Head, InboxIndex, InboxWrite, Recency};
    use connect_protocol::{ConversationId, UserId};

    let me = user("ties");
    let index = connect_dynamo::DynamoInbox::new(
        dynamo().await,
        &connect_dynamo::Tables::from_settings(&settings()),
    );
    let me_id = UserId::parse(&me)?;
    let times = [7u64, 5, 5, 5, 4, 9, 4, 5, 1];
    let mut write = InboxWrite::default();
    for (i, ts) in times.iter().enumerate() {
        let peer = UserId::parse(format!("{me}_{i}"))?;
        let c = ConversationId::direct(&me_id, &peer)?;
        write.heads.push((c.clone(), Head { seq: 1, ts: *ts }));
        write.places.push((c, Head { seq: 1, ts: *ts }));
    }
    index.write(&write).await?;
    let mut expected: Vec<(u64, String)> = write
        .heads
        .iter()
        .map(|(c, h)| (h.ts, c.to_string()))
        .collect();
    expected.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let expected: Vec<String> = expected.into_iter().map(|(_, c)| c).collect();
    for limit in 1..=4 {
        let mut seen = Vec::new();
        let mut after: Option<Recency> = None;
        loop {
            let page = index.recent(&me_id, after.as_ref(), limit).await?;
            assert!(page.len() <= limit);
            let Some((c, h)) = page.last() else { break };
            after = Some(Recency {
                ts: h.ts,
                conversation: c.to_string(),
            });
            seen.extend(page.iter().map(|(c, _)| c.to_string()));
        }
        assert_eq!(seen, expected, "adapter, limit {limit}");
        let api: Vec<String> = walk(&me, limit)
            .await?
            .iter()
            .filter_map(|i| i["conversation"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(api, expected, "API, limit {limit}");
    }
    // The peer's inbox lists the same conversation: a head is kept under both users.
    let peer = format!("{me}_5");
    let theirs = walk(&peer, 10).await?;
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0]["with"], me.as_str());
    Ok(())
}
