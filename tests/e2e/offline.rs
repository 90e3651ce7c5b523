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
    b.ack(&conversation, 5).await?;
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
    assert_eq!(b.drain_messages(QUIET).await?, [1, 2, 3]);
    b.ack(&conversation, 3).await?;
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
