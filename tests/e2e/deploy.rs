//! What a deployment behind a load balancer needs from a gateway: the management API and
//! `/metrics` on their own listener, never on the public one.

use crate::helpers::*;
use crate::private::{free_addr, ExtraGateway};

#[tokio::test]
async fn a_gateway_with_a_management_listener_keeps_it_off_the_public_port() -> anyhow::Result<()> {
    let management = free_addr();
    let gw = ExtraGateway::start_with(&[("GATEWAY_MANAGEMENT_ADDR", &management)]).await?;
    let token = std::env::var("CONNECT_INTERNAL_TOKEN")
        .unwrap_or_else(|_| connect_core::auth::DEV_INTERNAL_TOKEN.into());
    let post = |addr: String, with_token: bool| {
        let token = token.clone();
        async move {
            let headers: Vec<(&str, String)> = if with_token {
                vec![(connect_core::auth::INTERNAL_TOKEN_HEADER, token)]
            } else {
                Vec::new()
            };
            http_raw(&addr, "POST", "/@connections/nobody", &headers, "hi").await
        }
    };
    // Public: the WebSocket and the health check only.
    assert_eq!(http_get(&gw.addr, "/healthz").await?.0, 200);
    assert_eq!(http_get(&gw.addr, "/metrics").await?.0, 404);
    assert_eq!(post(gw.addr.clone(), true).await?.0, 404);
    // Management: the connections API (still behind the internal token) and the metrics.
    assert_eq!(http_get(&management, "/metrics").await?.0, 200);
    assert_eq!(post(management.clone(), false).await?.0, 403);
    assert_eq!(post(management.clone(), true).await?.0, 410);

    // Offline delivery reaches a connection through the management endpoint the registry has.
    let (alice, bob) = (user("alice"), user("bob"));
    let mut a = Client::connect(&gateways()[0], &alice).await?;
    a.send_accepted("away-1", &bob, "while you were away")
        .await?;
    let mut b = Client::connect(&gw.addr, &bob).await?;
    let m = b.expect("message").await?;
    assert_eq!(
        (m["id"].as_str(), m["body"].as_str()),
        (Some("away-1"), Some("while you were away"))
    );
    Ok(())
}

#[tokio::test]
async fn a_gateway_beyond_the_slots_waits_for_one_instead_of_failing() -> anyhow::Result<()> {
    use crate::private::{wait_healthy, PrivateStack};
    // The slice's outgoing topic has 2 partitions: its gateway and one more take both.
    let mut stack = PrivateStack::start().await?;
    stack.add_gateway().await?;
    let (spare, mut process) = stack.spawn_gateway()?;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(
        process.try_wait()?.is_none(),
        "a third gateway waits, it does not exit"
    );
    assert!(
        http_get(&spare, "/healthz").await.is_err(),
        "and does not listen (its health check keeps traffic away) until it has a slot"
    );
    // A gateway dies: its lease runs out and the spare takes its slot.
    stack.kill_added_gateway(0).await?;
    wait_healthy(&spare, &mut process).await?;
    let (alice, bob) = (user("alice"), user("bob"));
    let mut a = Client::connect(&stack.gateway, &alice).await?;
    let mut b = Client::connect(&spare, &bob).await?;
    stack.start_messaging(&[]).await?;
    a.send_accepted("s-1", &bob, "via the spare").await?;
    assert_eq!(b.expect("message").await?["body"], "via the spare");
    Ok(())
}
