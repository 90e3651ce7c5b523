//! Group administration on the HTTP API (the `groups` Lambda's handler) over the real group
//! table in DynamoDB Local.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn group_admin_follows_the_contract() -> anyhow::Result<()> {
    let (alice, bob, carol, dave) = (user("alice"), user("bob"), user("carol"), user("dave"));
    let (status, g) = api_call(
        "POST",
        "/v1/groups",
        Some(&alice),
        &json!({"name": "Trip", "members": [bob, carol]}).to_string(),
    )
    .await?;
    assert_eq!(status, 201, "{g}");
    let id = g["group"].as_str().unwrap().to_owned();
    assert!(id.starts_with("g_"));
    assert_eq!(g["owner"], alice.as_str());
    let mut want = vec![alice.clone(), bob.clone(), carol.clone()];
    want.sort();
    assert_eq!(g["members"], json!(want));

    let group = format!("/v1/groups/{id}");
    let (status, got) = api_get(&group, Some(&bob)).await?;
    assert_eq!((status, &got), (200, &g));
    let (status, e) = api_get(&group, Some(&dave)).await?;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, _) = api_get("/v1/groups/g_nosuchgroup", Some(&bob)).await?;
    assert_eq!(status, 404);
    let (status, _) = api_get(&group, None).await?;
    assert_eq!(status, 401);

    // Any member adds; the owner removes anyone; a member only themselves.
    let (status, after) = api_call(
        "POST",
        &format!("{group}/members"),
        Some(&bob),
        &json!({"user": dave}).to_string(),
    )
    .await?;
    assert_eq!(status, 200, "{after}");
    assert!(after["members"].as_array().unwrap().contains(&json!(dave)));
    let (status, mine) = api_get("/v1/groups", Some(&dave)).await?;
    assert_eq!(status, 200);
    assert_eq!(
        mine["groups"],
        json!([{"group": id, "name": "Trip", "owner": alice}])
    );

    let (status, _) = api_call(
        "DELETE",
        &format!("{group}/members/{alice}"),
        Some(&bob),
        "",
    )
    .await?;
    assert_eq!(status, 403, "a member removing the owner");
    let (status, _) = api_call(
        "DELETE",
        &format!("{group}/members/{carol}"),
        Some(&alice),
        "",
    )
    .await?;
    assert_eq!(status, 204);
    let (status, _) = api_get(&group, Some(&carol)).await?;
    assert_eq!(status, 403, "carol is out");
    let (status, _) = api_get(
        &format!("/v1/conversations/group:{id}/messages"),
        Some(&carol),
    )
    .await?;
    assert_eq!(status, 403, "carol's history read");
    let (status, page) = api_get(
        &format!("/v1/conversations/group:{id}/messages"),
        Some(&dave),
    )
    .await?;
    assert_eq!(status, 200, "{page}");
    let (status, _) = api_call(
        "DELETE",
        &format!("{group}/members/{dave}"),
        Some(&dave),
        "",
    )
    .await?;
    assert_eq!(status, 204, "a member leaves");

    let (status, e) = api_call("POST", "/v1/groups", Some(&alice), r#"{"name":""}"#).await?;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    Ok(())
}

#[tokio::test]
async fn a_group_message_reaches_every_members_connections() -> anyhow::Result<()> {
    let gw = gateways();
    let (alice, bob, carol, erin) = (user("alice"), user("bob"), user("carol"), user("erin"));
    let mut a1 = Client::connect(&gw[0], &alice).await?;
    let mut a2 = Client::connect(&gw[1], &alice).await?;
    let mut b = Client::connect(&gw[0], &bob).await?;
    let mut c = Client::connect(&gw[1], &carol).await?;
    let mut e = Client::connect(&gw[1], &erin).await?;
    let group = create_group(&alice, &[&bob, &carol]).await?;
    let conversation = format!("group:{group}");
    for client in [&mut a1, &mut a2, &mut b, &mut c] {
        expect_event(client, 1, "group_created", &alice, None).await?;
    }

    a1.send_group("g1", &group, "hello team").await?;
    let acc = a1.expect_fresh("accepted").await?;
    assert_eq!(
        (acc["conversation"].as_str(), acc["seq"].as_u64()),
        (Some(conversation.as_str()), Some(2))
    );
    for client in [&mut a2, &mut b, &mut c] {
        let m = client.expect_fresh("message").await?;
        assert_eq!(m["group"], group.as_str());
        assert_eq!(
            (m["conversation"].as_str(), m["seq"].as_u64()),
            (Some(conversation.as_str()), Some(2))
        );
        assert_eq!(
            (m["from"].as_str(), m["body"].as_str()),
            (Some(alice.as_str()), Some("hello team"))
        );
    }
    e.send_group("x1", &group, "let me in").await?;
    let err = e.expect_fresh("error").await?;
    assert_eq!(
        (err["code"].as_str(), err["id"].as_str()),
        (Some("forbidden"), Some("x1"))
    );
    e.send_group("x2", "g_nosuchgroup", "anyone?").await?;
    assert_eq!(e.expect_fresh("error").await?["code"], "not_found");
    e.expect_silence(std::time::Duration::from_millis(300))
        .await?;

    // An offline member gets the group's messages on reconnect.
    c.ack_held(&conversation, 2).await?;
    c.close().await;
    b.send_group("b1", &group, "carol is away").await?;
    assert_eq!(b.expect_fresh("accepted").await?["seq"], 3);
    let mut c = Client::connect(&gw[0], &carol).await?;
    let m = c.expect_fresh("message").await?;
    assert_eq!(
        (m["seq"].as_u64(), m["group"].as_str()),
        (Some(3), Some(group.as_str()))
    );
    Ok(())
}

/// Waits for the next `message` and checks it is the group event `kind` (about `user`) by `from`.
async fn expect_event(
    c: &mut Client,
    seq: u64,
    kind: &str,
    from: &str,
    user: Option<&str>,
) -> anyhow::Result<()> {
    let m = c.expect_fresh("message").await?;
    anyhow::ensure!(
        m["seq"].as_u64() == Some(seq)
            && m["event"]["kind"] == kind
            && m["from"] == from
            && m["body"] == ""
            && m["event"]["user"].as_str() == user,
        "{}: expected {kind} #{seq} by {from}, got {m}",
        c.user
    );
    Ok(())
}

#[tokio::test]
async fn membership_changes_are_group_events_and_hold_for_later_messages() -> anyhow::Result<()> {
    let gw = gateways();
    let (alice, bob, carol, dave) = (user("alice"), user("bob"), user("carol"), user("dave"));
    let mut a = Client::connect(&gw[0], &alice).await?;
    let mut b = Client::connect(&gw[1], &bob).await?;
    let mut c = Client::connect(&gw[1], &carol).await?;
    let mut d = Client::connect(&gw[0], &dave).await?;
    let group = create_group(&alice, &[&bob, &carol]).await?;
    for client in [&mut a, &mut b, &mut c] {
        expect_event(client, 1, "group_created", &alice, None).await?;
    }

    add_member(&bob, &group, &dave).await?;
    for client in [&mut a, &mut b, &mut c, &mut d] {
        expect_event(client, 2, "member_added", &bob, Some(&dave)).await?;
    }

    remove_member(&alice, &group, &carol).await?;
    for client in [&mut a, &mut b, &mut c, &mut d] {
        expect_event(client, 3, "member_removed", &alice, Some(&carol)).await?;
    }

    a.send_group("after", &group, "carol is gone").await?;
    assert_eq!(a.expect_fresh("accepted").await?["seq"], 4);
    for client in [&mut b, &mut d] {
        let m = client.expect_fresh("message").await?;
        assert_eq!(
            (m["seq"].as_u64(), m["body"].as_str()),
            (Some(4), Some("carol is gone"))
        );
    }
    c.expect_nothing_fresh(std::time::Duration::from_secs(2))
        .await?;
    c.send_group("nope", &group, "still here?").await?;
    assert_eq!(c.expect_fresh("error").await?["code"], "forbidden");
    Ok(())
}

#[tokio::test]
async fn a_group_message_costs_one_delivery_per_gateway_and_a_batch_one_record_per_gateway(
) -> anyhow::Result<()> {
    use crate::private::PrivateStack;
    // A private slice: its own topics, two gateways and messaging, so its counters are ours.
    let mut stack = PrivateStack::start().await?;
    let second = stack.add_gateway().await?;
    // Counting records, not shedding: a loaded test machine must not turn a send into an
    // `unavailable` reply (one more record).
    let ops = stack
        .start_messaging(&[("MESSAGING_SHED_AFTER_MS", "60000")])
        .await?;
    let members: Vec<String> = (0..10).map(|i| user(&format!("m{i}"))).collect();
    let refs: Vec<&str> = members[1..].iter().map(String::as_str).collect();
    let group = create_group(&members[0], &refs).await?;
    let mut clients = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let gw = if i % 2 == 0 {
            stack.gateway.clone()
        } else {
            second.clone()
        };
        clients.push(Client::connect(&gw, m).await?);
    }
    let deliveries = || metric(&ops, "connect_messaging_deliveries_out_total", "");
    let before = deliveries().await?;
    // The group's `group_created` may reach these connections too (drained by the shared
    // stack, which shares Redis with this slice): skip system messages, and repeats.
    for k in 0..3 {
        clients[0]
            .send_group(&format!("r{k}"), &group, "count me")
            .await?;
        assert_eq!(clients[0].next_non_event().await?["type"], "accepted");
        for c in clients.iter_mut().skip(1) {
            assert_eq!(c.next_non_event().await?["body"], "count me");
        }
    }
    // Messaging counts a batch's deliveries once the broker acked them, which may be just after
    // a gateway delivered them: wait for the count to settle, then hold it to the exact figure.
    metric_reaching(
        &ops,
        "connect_messaging_deliveries_out_total",
        "",
        before + 6.0,
    )
    .await?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let after = deliveries().await?;
    // 3 messages × 2 gateways with online members (the sender's `accepted` rides on one of them),
    // not 3 × 10 members. Producers are idempotent: the broker hands each submission over once.
    assert_eq!(after - before, 6.0, "deliveries published");

    // A batch's deliveries for one gateway share one record: 20 sends waiting while messaging is
    // away are read in a batch or a few, and go out in a record per gateway and batch.
    stack.stop_messaging().await?;
    for k in 0..20 {
        clients[0]
            .send_group(&format!("b{k}"), &group, &format!("batched {k}"))
            .await?;
    }
    let ops = stack
        .start_messaging(&[("MESSAGING_SHED_AFTER_MS", "60000")])
        .await?;
    for k in 0..20 {
        let accepted = clients[0].next_non_event().await?;
        assert_eq!(accepted["type"], "accepted");
        assert_eq!(accepted["id"], format!("b{k}"));
        for c in clients.iter_mut().skip(1) {
            assert_eq!(c.next_non_event().await?["body"], format!("batched {k}"));
        }
    }
    metric_reaching(&ops, "connect_messaging_deliveries_out_total", "", 40.0).await?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        metric(&ops, "connect_messaging_deliveries_out_total", "").await?,
        40.0
    );
    let records = metric(&ops, "connect_messaging_records_out_total", "").await?;
    // One record per delivery (40) before batching; at most 4 batches × 2 gateways now.
    assert!(
        (2.0..=8.0).contains(&records),
        "{records} records carried the 40 deliveries"
    );
    Ok(())
}
