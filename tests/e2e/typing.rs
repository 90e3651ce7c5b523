//! Typing (PROTOCOL.md "Typing") over the real stack: the other members' open connections get
//! it, within 500 ms; not the typist's other device, not a later connection; nothing is stored;
//! a burst reaches a peer at most once a second; a non-member is answered `forbidden`.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn typing_reaches_the_other_members_at_once_and_nothing_else() -> anyhow::Result<()> {
    let gw = gateways();
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let group = create_group(&alice, &[&bob, &carol]).await?;
    let conversation = format!("group:{group}");
    let mut phone = Client::connect_device(&gw[0], &alice, "phone").await?;
    let mut tablet = Client::connect_device(&gw[1], &alice, "tablet").await?;
    let mut b = Client::connect(&gw[1], &bob).await?;
    let mut c = Client::connect(&gw[0], &carol).await?;
    // The group's own event, if it is still on its way, is passed over below.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    phone
        .send_raw(&json!({"type":"typing","conversation":conversation}).to_string())
        .await?;
    let want = json!({"type":"typing","conversation":conversation,"user":alice});
    let to_bob = b.next_of("typing", Duration::from_secs(2)).await?;
    let bob_after = started.elapsed();
    let to_carol = c.next_of("typing", Duration::from_secs(2)).await?;
    let carol_after = started.elapsed();
    assert_eq!((to_bob, to_carol), (want.clone(), want));
    assert!(
        bob_after < Duration::from_millis(500) && carol_after < Duration::from_millis(500),
        "typing took {bob_after:?} / {carol_after:?}"
    );
    assert!(
        tablet
            .all_of("typing", Duration::from_secs(1))
            .await
            .is_empty(),
        "not the typist's other device"
    );
    // A connection opened afterwards gets nothing of it; nothing is in history.
    let mut later = Client::connect_device(&gw[0], &bob, "laptop").await?;
    assert!(later
        .all_of("typing", Duration::from_secs(1))
        .await
        .is_empty());
    let (status, page) = api_get(
        &format!("/v1/conversations/{conversation}/messages?limit=100"),
        Some(&bob),
    )
    .await?;
    assert_eq!(status, 200, "{page}");
    assert!(
        page["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|m| m.get("event").is_some()),
        "only the group's own event is stored: {page}"
    );

    // 20 frames in 2 s: at most one a second reaches a peer (and the stop after them).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..20 {
        phone
            .send_raw(&json!({"type":"typing","conversation":conversation}).to_string())
            .await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let burst = b.all_of("typing", Duration::from_millis(1500)).await;
    assert!(
        (1..=4).contains(&burst.len()),
        "20 typing frames in 2 s reached bob {} times: {burst:?}",
        burst.len()
    );
    phone
        .send_raw(&json!({"type":"typing","conversation":conversation,"stop":true}).to_string())
        .await?;
    let stop = b.next_of("typing", Duration::from_secs(3)).await?;
    assert_eq!(stop["stop"], true, "{stop}");
    Ok(())
}

#[tokio::test]
async fn typing_from_a_non_member_is_forbidden() -> anyhow::Result<()> {
    let gw = gateways();
    let (alice, bob, mallory) = (user("alice"), user("bob"), user("mallory"));
    let group = create_group(&alice, &[&bob]).await?;
    let mut m = Client::connect(&gw[0], &mallory).await?;
    let mut b = Client::connect(&gw[1], &bob).await?;
    for conversation in [format!("group:{group}"), dm(&alice, &bob)] {
        m.send_raw(&json!({"type":"typing","conversation":conversation}).to_string())
            .await?;
        let answer = m.next_within(Duration::from_secs(5)).await?;
        assert_eq!(
            (answer["type"].as_str(), answer["code"].as_str()),
            (Some("error"), Some("forbidden")),
            "{conversation}: {answer}"
        );
    }
    assert!(b.all_of("typing", Duration::from_secs(1)).await.is_empty());
    Ok(())
}

#[tokio::test]
async fn typing_in_a_direct_conversation_reaches_the_peer() -> anyhow::Result<()> {
    let gw = gateways();
    let (alice, bob) = (user("alice"), user("bob"));
    let conversation = dm(&alice, &bob);
    let mut a = Client::connect(&gw[0], &alice).await?;
    let mut b = Client::connect(&gw[1], &bob).await?;
    a.send_raw(&json!({"type":"typing","conversation":conversation}).to_string())
        .await?;
    let got = b.next_of("typing", Duration::from_secs(2)).await?;
    assert_eq!(
        got,
        json!({"type":"typing","conversation":conversation,"user":alice})
    );
    Ok(())
}
