//! Crashes and backend failures: nothing accepted is lost, nothing is stored twice.

use std::time::Duration;

use crate::helpers::*;
use crate::private::PrivateStack;

#[tokio::test]
async fn a_retry_after_messaging_is_killed_between_write_and_commit_keeps_its_seq(
) -> anyhow::Result<()> {
    let mut stack = PrivateStack::start().await?;
    // Messaging stores and publishes each batch, then pauses before committing its offsets.
    stack
        .start_messaging(&[("MESSAGING_FAULT_PAUSE_BEFORE_COMMIT_MS", "120000")])
        .await?;
    let (alice, bob) = (user("alice"), user("bob"));
    let conversation = dm(&alice, &bob);
    let mut a = Client::connect(&stack.gateway, &alice).await?;
    a.send_to("k-1", &bob, "survives a crash").await?;
    let first = a.next_within(Duration::from_secs(40)).await?;
    assert_eq!(
        (first["type"].as_str(), first["seq"].as_u64()),
        (Some("accepted"), Some(1)),
        "{first}"
    );
    assert_eq!(
        stored(&conversation).await?.len(),
        1,
        "written to the chat table"
    );

    // SIGKILL while the batch's offsets are uncommitted; a new process replays the batch.
    stack.kill_messaging().await?;
    stack.start_messaging(&[]).await?;
    let replayed = a.next_within(Duration::from_secs(60)).await?;
    assert_eq!(
        (
            replayed["type"].as_str(),
            replayed["id"].as_str(),
            replayed["seq"].as_u64()
        ),
        (Some("accepted"), Some("k-1"), Some(1))
    );

    // The client's own retry, from another connection: the original seq again.
    let mut a2 = Client::connect(&stack.gateway, &alice).await?;
    assert_eq!(a2.send_accepted("k-1", &bob, "survives a crash").await?, 1);
    assert_eq!(a2.send_accepted("k-2", &bob, "next").await?, 2);
    let rows: Vec<_> = stored(&conversation)
        .await?
        .into_iter()
        .map(|r| (r.0, r.2))
        .collect();
    assert_eq!(
        rows,
        vec![(1, "k-1".to_owned()), (2, "k-2".to_owned())],
        "one stored message per id"
    );
    Ok(())
}

#[tokio::test]
async fn dynamodb_down_answers_unavailable_and_writes_nothing() -> anyhow::Result<()> {
    let mut stack = PrivateStack::start().await?;
    // Nothing listens on port 9: every DynamoDB call fails fast.
    stack
        .start_messaging(&[
            ("DYNAMODB_ENDPOINT", "http://127.0.0.1:9"),
            ("DYNAMODB_TIMEOUT_MS", "500"),
        ])
        .await?;
    let (alice, bob) = (user("alice"), user("bob"));
    let conversation = dm(&alice, &bob);
    let mut a = Client::connect(&stack.gateway, &alice).await?;
    a.send_to("u-1", &bob, "will it stick?").await?;
    let e = a.next_within(Duration::from_secs(40)).await?;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["id"].as_str()),
        (Some("error"), Some("unavailable"), Some("u-1")),
        "{e}"
    );
    assert!(
        stored(&conversation).await?.is_empty(),
        "nothing half-written"
    );

    // DynamoDB is back: the client's retry with the same id is stored once.
    stack.kill_messaging().await?;
    stack.start_messaging(&[]).await?;
    assert_eq!(a.send_accepted("u-1", &bob, "will it stick?").await?, 1);
    let rows: Vec<_> = stored(&conversation)
        .await?
        .into_iter()
        .map(|r| (r.0, r.2))
        .collect();
    assert_eq!(rows, vec![(1, "u-1".to_owned())]);
    Ok(())
}
