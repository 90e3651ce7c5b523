//! Auth at the upgrade: 401 and no upgrade for every bad token; both token carriers work.

use tokio_tungstenite::tungstenite::Error as WsError;

use crate::helpers::*;

fn status_of(result: Result<impl Sized, WsError>) -> Option<u16> {
    match result {
        Err(WsError::Http(resp)) => Some(resp.status().as_u16()),
        _ => None,
    }
}

#[tokio::test]
async fn bad_tokens_get_401_and_no_upgrade() -> anyhow::Result<()> {
    let gw = &gateways()[0];
    let alice = user("alice");
    let other = connect_core::auth::TokenIssuer::new(&connect_core::auth::JwtSecret::new(
        Some("not-the-secret".into()),
        false,
    )?);
    let expired = issuer().mint_until(&alice, 1_000_000);
    let bad_sub = issuer().mint("not a user id", 600);
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        (
            "badly signed",
            Some(format!("Bearer {}", other.mint(&alice, 600))),
        ),
        ("expired", Some(format!("Bearer {expired}"))),
        ("malformed", Some("Bearer not.a.jwt".into())),
        ("not bearer", Some(format!("Basic {}", token(&alice)))),
        ("bad subject", Some(format!("Bearer {bad_sub}"))),
    ];
    for (what, header) in cases {
        assert_eq!(
            status_of(open(gw, header.as_deref(), "").await),
            Some(401),
            "{what}"
        );
    }
    assert_eq!(
        status_of(open(gw, None, "?token=garbage").await),
        Some(401),
        "bad query token"
    );
    Ok(())
}

#[tokio::test]
async fn a_token_in_the_query_string_works_for_browsers() -> anyhow::Result<()> {
    let gw = &gateways()[1];
    let alice = user("alice");
    let ws = open(gw, None, &format!("?token={}", token(&alice))).await?;
    let c = Client::after_upgrade(ws, &alice).await?;
    assert!(!c.session.is_empty());
    Ok(())
}
