//! Overload: a send that waited too long in `incoming_messages` is refused unprocessed with
//! `unavailable` (and its id), so the client can retry; nothing of it is stored.

use std::time::Duration;

use crate::helpers::*;
use crate::private::PrivateStack;

#[tokio::test]
async fn a_send_older_than_the_shed_limit_gets_unavailable_and_its_retry_is_stored_once(
) -> anyhow::Result<()> {
    let mut stack = PrivateStack::start().await?;
    // 1 ms: every client send is older than that when messaging reads it.
    stack
        .start_messaging(&[("MESSAGING_SHED_AFTER_MS", "1")])
        .await?;
    let (alice, bob) = (user("alice"), user("bob"));
    let conversation = dm(&alice, &bob);
    let mut a = Client::connect(&stack.gateway, &alice).await?;
    let mut b = Client::connect(&stack.gateway, &bob).await?;
    a.send_to("o-1", &bob, "too late").await?;
    let e = a.next_within(Duration::from_secs(30)).await?;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["id"].as_str()),
        (Some("error"), Some("unavailable"), Some("o-1")),
        "{e}"
    );
    b.expect_silence(Duration::from_millis(500)).await?;
    assert!(stored(&conversation).await?.is_empty(), "nothing stored");

    // Load is gone (messaging with the default limit): the retry with the same id is stored
    // once, as seq 1.
    stack.kill_messaging().await?;
    stack.start_messaging(&[]).await?;
    assert_eq!(a.send_accepted("o-1", &bob, "too late").await?, 1);
    assert_eq!(b.expect("message").await?["id"], "o-1");
    let rows: Vec<_> = stored(&conversation)
        .await?
        .into_iter()
        .map(|r| (r.0, r.2))
        .collect();
    assert_eq!(rows, vec![(1, "o-1".to_owned())]);
    Ok(())
}
