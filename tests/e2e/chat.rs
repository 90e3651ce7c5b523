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
    assert_ne!(a1.gateway, a2.gateway, "the two gateways are different instances");

    for (i, body) in ["one", "two", "three"].iter().enumerate() {
        let id = format!("a-{i}");
        let seq = a1.send_accepted(&id, &bob, body).await?;
        assert_eq!(seq, i as u64 + 1);
        for c in [&mut a2, &mut b1, &mut b2] {
            let m = c.expect("message").await?;
            assert_eq!((m["conversation"].as_str(), m["seq"].as_u64()), (Some(conversation.as_str()), Some(seq)));
            assert_eq!((m["from"].as_str(), m["id"].as_str(), m["body"].as_str()), (Some(alice.as_str()), Some(id.as_str()), Some(*body)));
            assert!(m["ts"].as_u64().unwrap() > 1_700_000_000_000);
            assert!(m.get("group").is_none());
        }
    }
    // The other way: bob answers from his second gateway.
    let seq = b2.send_accepted("b-0", &alice, "hi alice").await?;
    assert_eq!(seq, 4);
    for c in [&mut a1, &mut a2, &mut b1] {
        let m = c.expect("message").await?;
        assert_eq!((m["seq"].as_u64(), m["from"].as_str()), (Some(4), Some(bob.as_str())));
    }
    // The sending connections got `accepted`, never their own `message`.
    a1.expect_silence(std::time::Duration::from_millis(300)).await?;
    b2.expect_silence(std::time::Duration::from_millis(300)).await?;
    let rows = stored(&conversation).await?;
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    Ok(())
}
