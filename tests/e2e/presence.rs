//! Presence (PROTOCOL.md "Presence") over the real stack: a watcher sees a connect within 2 s
//! whichever gateway it is on, a reconnect within 5 s never shows offline, the last close shows
//! offline with `last_seen`; a stranger is `hidden` (403 on the HTTP route); more than 256
//! users is `bad_request`; a SIGKILLed gateway's users go offline once their sessions expire.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

async fn watch(c: &mut Client, users: &[&str]) -> anyhow::Result<()> {
    c.send_raw(&json!({"type":"watch","users":users}).to_string())
        .await
}

#[tokio::test]
async fn a_watcher_sees_a_connect_at_once_no_flap_on_a_quick_reconnect_and_offline_after_the_last_close(
) -> anyhow::Result<()> {
    let gw = gateways();
    let (alice, bob) = (user("alice"), user("bob"));
    let mut a = Client::connect(&gw[0], &alice).await?;
    // A direct conversation with a message: they may watch each other.
    a.send_accepted("hi", &bob, "hello").await?;
    watch(&mut a, &[&bob]).await?;
    assert_eq!(
        a.next_of("presence", Duration::from_secs(2)).await?,
        json!({"type":"presence","user":bob,"online":false}),
        "never seen: no last_seen"
    );

    // Bob connects on the other gateway.
    let started = Instant::now();
    let b = Client::connect_device(&gw[1], &bob, "phone").await?;
    let online = a.next_of("presence", Duration::from_secs(3)).await?;
    let took = started.elapsed();
    assert_eq!(online, json!({"type":"presence","user":bob,"online":true}));
    assert!(
        took < Duration::from_secs(2),
        "online reached the watcher after {took:?}"
    );

    // He drops and comes back within the debounce (on another gateway): never offline.
    b.close().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let b = Client::connect_device(&gw[0], &bob, "phone").await?;
    let flaps = a.all_of("presence", Duration::from_secs(7)).await;
    assert!(
        flaps.is_empty(),
        "a reconnect within 5 s shows nothing: {flaps:?}"
    );

    // The last connection closes: offline with last_seen, after the debounce.
    let closed = connect_core::now_ms();
    b.close().await;
    let offline = a.next_of("presence", Duration::from_secs(9)).await?;
    let after = connect_core::now_ms() - closed;
    assert_eq!(offline["online"], false, "{offline}");
    let seen = offline["last_seen"].as_u64().expect("last_seen");
    assert!(
        seen + 1000 >= closed && seen <= closed + 1000,
        "last_seen {seen} is when he left ({closed})"
    );
    assert!(
        (4_500..=7_500).contains(&after),
        "offline {after} ms after the close: the 5 s debounce, then within 2 s"
    );

    // The HTTP route says the same.
    let (status, body) = api_get(&format!("/v1/users/{bob}/presence"), Some(&alice)).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"user":bob,"online":false,"last_seen":seen}));
    Ok(())
}

#[tokio::test]
async fn strangers_are_hidden_and_too_long_a_list_is_refused() -> anyhow::Result<()> {
    let gw = gateways();
    let (alice, carol, erin) = (user("alice"), user("carol"), user("erin"));
    create_group(&carol, &[&alice]).await?;
    let mut a = Client::connect(&gw[0], &alice).await?;
    // Alice's own view turns online once messaging's presence relay has applied her transition
    // (within 2 s of the connect, as for any watcher): wait for it, so that the answers below are
    // the current state and no change of hers comes after them.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (status, body) = api_get(&format!("/v1/users/{alice}/presence"), Some(&carol)).await?;
        assert_eq!(status, 200, "{body}");
        if body["online"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alice not online 3 s after connecting: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watch(&mut a, &[&erin, &carol, &alice]).await?;
    let answers = [
        a.next_of("presence", Duration::from_secs(2)).await?,
        a.next_of("presence", Duration::from_secs(2)).await?,
        a.next_of("presence", Duration::from_secs(2)).await?,
    ];
    assert_eq!(
        answers,
        [
            json!({"type":"presence","user":erin,"hidden":true}),
            json!({"type":"presence","user":carol,"online":false}),
            json!({"type":"presence","user":alice,"online":true}),
        ],
        "one answer per user, in the list's order"
    );
    // A hidden user is never updated: erin comes online, and the next thing alice hears of is
    // carol coming online after her.
    let _e = Client::connect(&gw[1], &erin).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = Client::connect(&gw[1], &carol).await?;
    assert_eq!(
        a.next_of("presence", Duration::from_secs(3)).await?,
        json!({"type":"presence","user":carol,"online":true})
    );
    drop(c);

    // The HTTP route: 403 for a stranger (either way round), 200 for a member.
    let (status, body) = api_get(&format!("/v1/users/{erin}/presence"), Some(&alice)).await?;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let (status, _) = api_get(&format!("/v1/users/{alice}/presence"), Some(&erin)).await?;
    assert_eq!(status, 403);
    let (status, body) = api_get(&format!("/v1/users/{alice}/presence"), Some(&carol)).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"user":alice,"online":true}));
    let (status, _) = api_get(&format!("/v1/users/{alice}/presence"), None).await?;
    assert_eq!(status, 401);

    // 257 users: bad_request, and the connection stays.
    let many: Vec<String> = (0..257).map(|i| format!("u{i}")).collect();
    a.send_raw(&json!({"type":"watch","users":many}).to_string())
        .await?;
    let err = a.expect("error").await?;
    assert_eq!(err["code"], "bad_request", "{err}");
    watch(&mut a, &[&carol]).await?;
    assert_eq!(
        a.next_of("presence", Duration::from_secs(2)).await?["user"],
        json!(carol)
    );
    Ok(())
}

#[tokio::test]
async fn a_killed_gateways_users_go_offline_when_their_sessions_expire_and_come_back(
) -> anyhow::Result<()> {
    use crate::private::ExtraGateway;
    let gw = gateways();
    let (alice, bob) = (user("alice"), user("bob"));
    // Sessions there live 3 s unrefreshed (refreshed every second while it runs).
    let mut doomed = ExtraGateway::start_with(&[("SESSION_TTL_SECS", "3")]).await?;
    let mut a = Client::connect(&gw[0], &alice).await?;
    a.send_accepted("hi", &bob, "hello").await?;
    let _b = Client::connect(&doomed.addr, &bob).await?;
    watch(&mut a, &[&bob]).await?;
    let first = a.next_of("presence", Duration::from_secs(2)).await?;
    let first = if first["online"] == true {
        first
    } else {
        // The watch raced the connect's transition: the change follows.
        a.next_of("presence", Duration::from_secs(2)).await?
    };
    assert_eq!(first, json!({"type":"presence","user":bob,"online":true}));

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = connect_core::now_ms();
    doomed.kill().await?;
    let offline = a.next_of("presence", Duration::from_secs(8)).await?;
    let after = connect_core::now_ms() - killed;
    assert_eq!(offline["online"], false, "{offline}");
    let seen = offline["last_seen"].as_u64().expect("last_seen");
    assert!(
        seen <= killed && seen + 2_000 >= killed,
        "last seen at his last refresh: {seen} vs killed at {killed}"
    );
    assert!(
        after <= 6_000,
        "offline {after} ms after the kill (session TTL 3 s)"
    );

    let _b = Client::connect(&gw[1], &bob).await?;
    assert_eq!(
        a.next_of("presence", Duration::from_secs(3)).await?,
        json!({"type":"presence","user":bob,"online":true}),
        "online again once he reconnects elsewhere"
    );
    Ok(())
}
