//! Bad input gets the contract's error code and the connection keeps working.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn every_bad_frame_gets_its_code_and_the_connection_survives() -> anyhow::Result<()> {
    let gw = &gateways()[0];
    let (alice, bob) = (user("alice"), user("bob"));
    let mut a = Client::connect(gw, &alice).await?;
    let big = "x".repeat(17 * 1024);
    let long_id = "x".repeat(65);
    let cases: Vec<(String, &str, Option<&str>)> = vec![
        ("{not json".into(), "bad_request", None),
        (json!({"type":"dance"}).to_string(), "bad_request", None),
        (
            json!({"type":"send","id":"f-1","body":"no target"}).to_string(),
            "bad_request",
            Some("f-1"),
        ),
        (
            json!({"type":"send","id":"f-2","to":"bob"}).to_string(),
            "bad_request",
            Some("f-2"),
        ),
        (
            json!({"type":"send","id":"f-3","to":"not a user!","body":"x"}).to_string(),
            "bad_request",
            Some("f-3"),
        ),
        (
            json!({"type":"send","id":"f-4","to":&bob,"body":big}).to_string(),
            "too_large",
            Some("f-4"),
        ),
        (
            json!({"type":"send","id":"f-5","to":&alice,"body":"me"}).to_string(),
            "bad_request",
            Some("f-5"),
        ),
        (
            json!({"type":"send","id":&long_id,"to":&bob,"body":"x"}).to_string(),
            "bad_request",
            Some(long_id.as_str()),
        ),
        (
            json!({"type":"ack","conversation":"dm:zz:aa","seq":1}).to_string(),
            "bad_request",
            None,
        ),
        (
            json!({"type":"send","pad":"y".repeat(65 * 1024)}).to_string(),
            "too_large",
            None,
        ),
    ];
    for (frame, code, id) in cases {
        a.send_raw(&frame).await?;
        let e = a.expect("error").await?;
        assert_eq!(e["code"], code, "{}", &frame[..frame.len().min(80)]);
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        // An error answering a send carries that send's id, whatever else was wrong with it.
        assert_eq!(e["id"].as_str(), id, "{e}");
    }
    a.send_binary(b"\x00\x01").await?;
    assert_eq!(a.expect("error").await?["code"], "bad_request");
    // Unknown fields are ignored, and the connection still works.
    a.send_raw(
        &json!({"type":"send","id":"ok-1","to":&bob,"body":"still here","extra":{"x":1}})
            .to_string(),
    )
    .await?;
    assert_eq!(a.expect("accepted").await?["seq"], 1);
    Ok(())
}

#[tokio::test]
async fn sends_over_the_rate_limit_are_rate_limited_not_dropped() -> anyhow::Result<()> {
    // The stack runs with the default GATEWAY_SEND_BURST=100 and GATEWAY_SEND_RATE=50.
    let gw = &gateways()[1];
    let (alice, bob) = (user("alice"), user("bob"));
    let mut a = Client::connect(gw, &alice).await?;
    let n = 160;
    for i in 0..n {
        a.send_to(&format!("burst-{i}"), &bob, "spam").await?;
    }
    let (mut accepted, mut limited) = (0, 0);
    while accepted + limited < n {
        let f = a.next().await?;
        match (f["type"].as_str(), f["code"].as_str()) {
            (Some("accepted"), _) => accepted += 1,
            (Some("error"), Some("rate_limited")) => {
                assert!(f["id"].as_str().is_some_and(|id| id.starts_with("burst-")));
                limited += 1
            }
            _ => anyhow::bail!("unexpected {f}"),
        }
    }
    assert!(limited > 0, "a burst over GATEWAY_SEND_BURST is limited");
    assert!(
        accepted >= 100,
        "the burst allowance is honoured: {accepted}"
    );
    // Every accepted one is stored exactly once.
    assert_eq!(stored(&dm(&alice, &bob)).await?.len(), accepted);
    a.expect_silence(Duration::from_millis(200)).await?;
    Ok(())
}
