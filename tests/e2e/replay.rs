//! Replaying a topic (docs/runbook.md): `connect-setup replay` rewinds the messaging group on
//! `incoming_messages`; it is refused while messaging runs; once messaging starts again it
//! reads every record again, and dedupe answers each with its original seq: nothing is stored
//! twice. On a private slice (its own topics and messaging group).

use tokio::process::Command;

use crate::helpers::*;
use crate::private::{binary, PrivateStack};

async fn replay(stack: &PrivateStack, from: &str) -> anyhow::Result<(bool, String)> {
    let topic = stack
        .env()
        .iter()
        .find(|(k, _)| k == "KAFKA_INCOMING_TOPIC")
        .map(|(_, v)| v.clone())
        .expect("the slice's topic");
    let out = Command::new(binary("connect-setup"))
        .envs(stack.env().iter().cloned())
        .args(["replay", &topic, from])
        .output()
        .await?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[tokio::test]
async fn a_replayed_topic_stores_nothing_twice() -> anyhow::Result<()> {
    let mut stack = PrivateStack::start().await?;
    stack.start_messaging(&[]).await?;
    let (alice, bob) = (user("alice"), user("bob"));
    let mut a = Client::connect(&stack.gateway, &alice).await?;
    for i in 1..=5 {
        let seq = a
            .send_accepted(&format!("replay-{i}"), &bob, &format!("m{i}"))
            .await?;
        assert_eq!(seq, i);
    }
    let (ok, out) = replay(&stack, "earliest").await?;
    assert!(
        !ok && out.contains("stop them first"),
        "refused while messaging runs: {out}"
    );

    stack.stop_messaging().await?;
    let (ok, out) = replay(&stack, "earliest").await?;
    assert!(ok, "{out}");
    assert!(out.contains("resumes at offset 0"), "{out}");
    let ops = stack.start_messaging(&[]).await?;
    let duplicates = metric_reaching(&ops, "connect_messaging_duplicates_total", "", 5.0).await?;
    assert_eq!(duplicates, 5.0, "every replayed send is a duplicate");
    assert_eq!(
        metric(&ops, "connect_messaging_stored_total", "").await?,
        0.0
    );
    let seqs: Vec<u64> = stored(&dm(&alice, &bob))
        .await?
        .iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    // Each replayed send is answered again, with the seq it was accepted with.
    for i in 1..=5u64 {
        let f = a.expect("accepted").await?;
        assert_eq!(
            (f["id"].as_str(), f["seq"].as_u64()),
            (Some(format!("replay-{i}").as_str()), Some(i))
        );
    }
    // New sends go on after them.
    assert_eq!(a.send_accepted("replay-6", &bob, "m6").await?, 6);
    Ok(())
}
