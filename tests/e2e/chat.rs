//! 1:1 chat across the two gateways.

use crate::helpers::*;

#[tokio::test]
async fn alice_and_bob_chat_across_both_gateways() -> anyhow::Result<()> {
    let gw = gateways();
    let (alice, bob) = (user("alice"), user("bob"));
    let conversation = dm(&alice, &bob);
    let mut a1 = Client::connect(&gw[0], &alice).await?;
    let mut a2 = Client::connect(&gw[1], &alice).await?;
    let mut b1 = Client::connect(&gw[0], &bob).await?;
    let mut b2 = Client::connect(&gw[1], &bob).await?;
    assert_ne!(
        a1.gateway, a2.gateway,
        "the two gateways are different instances"
    );

    for (i, body) in ["one", "two", "three"].iter().enumerate() {
        let id = format!("a-{i}");
        let seq = a1.send_accepted(&id, &bob, body).await?;
        assert_eq!(seq, i as u64 + 1);
        for c in [&mut a2, &mut b1, &mut b2] {
            let m = c.expect("message").await?;
            assert_eq!(
                (m["conversation"].as_str(), m["seq"].as_u64()),
                (Some(conversation.as_str()), Some(seq))
            );
            assert_eq!(
                (m["from"].as_str(), m["id"].as_str(), m["body"].as_str()),
                (Some(alice.as_str()), Some(id.as_str()), Some(*body))
            );
            assert!(m["ts"].as_u64().unwrap() > 1_700_000_000_000);
            assert!(m.get("group").is_none());
        }
    }
    // The other way: bob answers from his second gateway.
    let seq = b2.send_accepted("b-0", &alice, "hi alice").await?;
    assert_eq!(seq, 4);
    for c in [&mut a1, &mut a2, &mut b1] {
        let m = c.expect("message").await?;
        assert_eq!(
            (m["seq"].as_u64(), m["from"].as_str()),
            (Some(4), Some(bob.as_str()))
        );
    }
    // The sending connections got `accepted`, never their own `message`.
    a1.expect_silence(std::time::Duration::from_millis(300))
        .await?;
    b2.expect_silence(std::time::Duration::from_millis(300))
        .await?;
    let rows = stored(&conversation).await?;
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    Ok(())
}

#[tokio::test]
async fn twenty_concurrent_connections_see_one_order_without_gaps() -> anyhow::Result<()> {
    const PER_CONN: usize = 5;
    let gw = gateways();
    let (alice, bob) = (user("alice"), user("bob"));
    let conversation = dm(&alice, &bob);
    let mut clients = Vec::new();
    for i in 0..20 {
        let (me, peer) = if i % 2 == 0 {
            (&alice, &bob)
        } else {
            (&bob, &alice)
        };
        clients.push((Client::connect(&gw[i % 2], me).await?, peer.clone()));
    }
    let total = 20 * PER_CONN;
    // Every connection sends PER_CONN messages at once, then reads until it has seen all `total`
    // (its own as `accepted`, the others' as `message`).
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, (mut c, peer))| {
            tokio::spawn(async move {
                for k in 0..PER_CONN {
                    c.send_to(&format!("c{i}-{k}"), &peer, &format!("m{i}-{k}"))
                        .await?;
                }
                let mut seen: Vec<(u64, String)> = Vec::new();
                while seen.len() < total {
                    let f = c.next().await?;
                    match (f["type"].as_str(), f["code"].as_str()) {
                        (Some("accepted") | Some("message"), _) => seen.push((
                            f["seq"].as_u64().unwrap(),
                            f["id"].as_str().unwrap().to_owned(),
                        )),
                        // A busy messaging sheds a send that waited too long (overload, as
                        // under CI load): like a PROTOCOL.md client, send it again, same id.
                        (Some("error"), Some("unavailable")) => {
                            let id = f["id"].as_str().unwrap_or_default().to_owned();
                            let body = id.replacen('c', "m", 1);
                            c.send_to(&id, &peer, &body).await?;
                        }
                        _ => anyhow::bail!("unexpected frame {f}"),
                    }
                }
                Ok::<_, anyhow::Error>(seen)
            })
        })
        .collect();
    let mut views = Vec::new();
    for t in tasks {
        let mut seen = t.await??;
        seen.sort();
        views.push(seen);
    }
    let seqs: Vec<u64> = views[0].iter().map(|s| s.0).collect();
    assert_eq!(
        seqs,
        (1..=total as u64).collect::<Vec<_>>(),
        "seqs 1..N, no gap, no duplicate"
    );
    for v in &views {
        assert_eq!(
            v, &views[0],
            "every connection sees the same (seq, id) order"
        );
    }
    let rows = stored(&conversation).await?;
    let stored_view: Vec<(u64, String)> = rows.into_iter().map(|r| (r.0, r.2)).collect();
    assert_eq!(stored_view, views[0]);
    Ok(())
}

#[tokio::test]
async fn a_retried_send_keeps_its_seq_on_the_same_and_another_connection() -> anyhow::Result<()> {
    let gw = gateways();
    let (alice, bob) = (user("alice"), user("bob"));
    let mut a1 = Client::connect(&gw[0], &alice).await?;
    assert_eq!(a1.send_accepted("r-1", &bob, "first").await?, 1);
    assert_eq!(a1.send_accepted("r-2", &bob, "second").await?, 2);
    // Same connection, same id.
    assert_eq!(a1.send_accepted("r-1", &bob, "first").await?, 1);
    // After a "lost connection": another connection on the other gateway.
    a1.close().await;
    let mut a2 = Client::connect(&gw[1], &alice).await?;
    assert_eq!(a2.send_accepted("r-1", &bob, "first").await?, 1);
    assert_eq!(a2.send_accepted("r-3", &bob, "third").await?, 3);
    let ids: Vec<_> = stored(&dm(&alice, &bob))
        .await?
        .into_iter()
        .map(|r| (r.0, r.2))
        .collect();
    assert_eq!(
        ids,
        vec![(1, "r-1".into()), (2, "r-2".into()), (3, "r-3".into())]
    );
    Ok(())
}

#[tokio::test]
async fn a_message_is_stored_before_its_accepted_arrives() -> anyhow::Result<()> {
    let gw = gateways();
    let (alice, bob) = (user("alice"), user("bob"));
    let mut a = Client::connect(&gw[0], &alice).await?;
    for i in 0..5u64 {
        let seq = a.send_accepted(&format!("s-{i}"), &bob, "durable?").await?;
        // Read right after `accepted`: the item must already be there (strongly consistent read).
        let rows = stored(&dm(&alice, &bob)).await?;
        assert!(
            rows.iter().any(|r| r.0 == seq && r.2 == format!("s-{i}")),
            "seq {seq} not stored yet: {rows:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn each_gateway_reads_only_its_own_partition() -> anyhow::Result<()> {
    let gw = gateways();
    let (alice, bob) = (user("alice"), user("bob"));
    let mut a = Client::connect(&gw[0], &alice).await?;
    let mut b = Client::connect(&gw[1], &bob).await?;
    let slot = |addr: String| async move { metric(&addr, "connect_gateway_slot", "").await };
    let (slot0, slot1) = (
        slot(gw[0].clone()).await? as u32,
        slot(gw[1].clone()).await? as u32,
    );
    assert_ne!(slot0, slot1, "each gateway leases its own slot");
    let before = metric(
        &gw[1],
        "connect_gateway_records_total",
        &format!("partition=\"{slot1}\""),
    )
    .await?;
    // alice on gateway 0 → bob on gateway 1: crosses over.
    a.send_accepted("x-1", &bob, "over there").await?;
    let m = b.expect("message").await?;
    assert_eq!(m["id"], "x-1");
    // bob may have it from his connection's offline drain (the log is written before the
    // record): the record itself reaches gateway 1 a moment later.
    let after = metric_reaching(
        &gw[1],
        "connect_gateway_records_total",
        &format!("partition=\"{slot1}\""),
        before + 1.0,
    )
    .await?;
    assert!(
        after > before,
        "gateway 1 read the record from its partition {slot1}"
    );
    for (addr, own) in [(&gw[0], slot0), (&gw[1], slot1)] {
        let (_, body) = http_get(addr, "/metrics").await?;
        for line in body
            .lines()
            .filter(|l| l.starts_with("connect_gateway_records_total{"))
        {
            assert!(
                line.contains(&format!("partition=\"{own}\"")),
                "{addr} read a foreign partition: {line}"
            );
        }
    }
    Ok(())
}
