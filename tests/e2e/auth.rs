//! Auth at the upgrade: 401 and no upgrade for every bad token; both token carriers work.

use std::time::Duration;

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

/// The upgrade's status and body for an Authorization header of `value`, over raw HTTP.
async fn upgrade_answer(gw: &str, authorization: String) -> anyhow::Result<(u16, String)> {
    let headers = [
        ("Upgrade", "websocket".to_owned()),
        ("Connection", "Upgrade".to_owned()),
        ("Sec-WebSocket-Version", "13".to_owned()),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==".to_owned()),
        ("Authorization", authorization),
    ];
    let (status, response) = http_raw(gw, "GET", "/ws", &headers, "").await?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

#[tokio::test]
async fn a_refused_token_is_not_explained_and_oversized_ones_are_refused_unread(
) -> anyhow::Result<()> {
    let gw = &gateways()[0];
    let alice = user("alice");
    let expired = issuer().mint_until(&alice, 1_000_000);
    let long = format!("{}.{}", token(&alice), "a".repeat(300 * 1024));
    let want = r#"{"error":{"code":"unauthorized","message":"invalid or expired token"}}"#;
    // Forged by hand, as an attacker would: unsigned with `alg: none`, another algorithm in the
    // header over our signature, no `exp`.
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let exp = connect_core::now_ms() / 1000 + 600;
    let claims = b64(&format!(r#"{{"sub":"{alice}","exp":{exp}}}"#));
    let signature = token(&alice)
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    let forged = [
        (
            "alg none",
            format!("{}.{claims}.", b64(r#"{"alg":"none","typ":"JWT"}"#)),
        ),
        (
            "alg HS512 with an HS256 signature",
            format!("{}.{claims}.{signature}", b64(r#"{"alg":"HS512"}"#)),
        ),
        (
            "no exp",
            format!(
                "{}.{}.{signature}",
                b64(r#"{"alg":"HS256"}"#),
                b64(&format!(r#"{{"sub":"{alice}"}}"#))
            ),
        ),
    ];
    for (what, value) in forged.into_iter().chain([
        ("expired", expired),
        ("garbage", "x.y.z".to_owned()),
        ("300 KiB, over GATEWAY_MAX_TOKEN_BYTES", long),
    ]) {
        let (status, body) = upgrade_answer(gw, format!("Bearer {value}")).await?;
        assert_eq!(status, 401, "{what}");
        // The same words whatever failed: nothing of the JWT library's reason.
        assert_eq!(body, want, "{what}");
    }
    // A 1 MB token makes the request head larger than HTTP's limit (hyper's, about 400 KiB):
    // refused with 431 before anything reads it.
    let huge = format!("Bearer {}", "a".repeat(1024 * 1024));
    assert_eq!(upgrade_answer(gw, huge).await?.0, 431);
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

/// Runs `binary` with `env` (and nothing of the stack's auth or fault settings) and returns its
/// exit status and stderr, or fails if it is still running after 15 s (it did not refuse).
async fn refused_start(binary: &str, env: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut command = tokio::process::Command::new(crate::private::binary(binary));
    for name in [
        "CONNECT_ENV",
        "CONNECT_JWT_SECRET",
        "CONNECT_INTERNAL_TOKEN",
        "MESSAGING_FAULT_PAUSE_BEFORE_COMMIT_MS",
        "MESSAGING_FAULT_FAIL_WRITES",
    ] {
        command.env_remove(name);
    }
    let child = command
        .envs(env.iter().copied())
        // Ports nothing else uses: a start that wrongly succeeds must not disturb the stack.
        .env("GATEWAY_ADDR", crate::private::free_addr())
        .env("MESSAGING_ADDR", crate::private::free_addr())
        .env("LOCAL_API_ADDR", crate::private::free_addr())
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .map_err(|_| anyhow::anyhow!("{binary} {env:?} started instead of refusing"))??;
    anyhow::ensure!(!out.status.success(), "{binary} {env:?} exited 0");
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn services_refuse_to_start_without_real_secrets_unless_told_they_run_locally(
) -> anyhow::Result<()> {
    let real = ("CONNECT_JWT_SECRET", "a-real-secret-from-secrets-manager");
    let real_internal = (
        "CONNECT_INTERNAL_TOKEN",
        "a-real-internal-token-from-secrets-manager",
    );
    // A guessable secret: 16 bytes (at least 32 outside the local stack).
    let short = ("CONNECT_JWT_SECRET", "0123456789abcdef");
    // CONNECT_ENV unset: nothing set, the development values set, or one of the two missing.
    type Env<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(&str, Env<'_>, &str)> = vec![
        ("connect-gateway", vec![], "CONNECT_JWT_SECRET"),
        (
            "connect-gateway",
            vec![
                ("CONNECT_JWT_SECRET", connect_core::auth::DEV_SECRET),
                real_internal,
            ],
            "CONNECT_JWT_SECRET",
        ),
        ("connect-gateway", vec![real], "CONNECT_INTERNAL_TOKEN"),
        (
            "connect-gateway",
            vec![
                real,
                (
                    "CONNECT_INTERNAL_TOKEN",
                    connect_core::auth::DEV_INTERNAL_TOKEN,
                ),
            ],
            "CONNECT_INTERNAL_TOKEN",
        ),
        (
            "connect-gateway",
            vec![("CONNECT_ENV", "production")],
            "CONNECT_JWT_SECRET",
        ),
        ("connect-local-api", vec![], "CONNECT_JWT_SECRET"),
        ("connect-gateway", vec![short, real_internal], "16 bytes"),
        ("connect-local-api", vec![short, real_internal], "16 bytes"),
        (
            "connect-messaging",
            vec![("MESSAGING_FAULT_FAIL_WRITES", "dm:a:b=1")],
            "MESSAGING_FAULT_",
        ),
    ];
    for (binary, env, named) in cases {
        let stderr = refused_start(binary, &env).await?;
        assert!(
            stderr.contains(named),
            "{binary} {env:?}: the error should name {named}: {stderr}"
        );
    }
    Ok(())
}

/// With `CONNECT_JWT_ISSUER` and `CONNECT_JWT_AUDIENCE` set, a token must name both; `nbf` in the
/// future and a lifetime past `CONNECT_JWT_MAX_LIFETIME_SECS` are refused too.
#[tokio::test]
async fn a_gateway_with_an_audience_refuses_tokens_meant_for_another() -> anyhow::Result<()> {
    let gw = crate::private::ExtraGateway::start_with(&[
        ("CONNECT_JWT_ISSUER", "https://auth.e2e.example"),
        ("CONNECT_JWT_AUDIENCE", "connect-chat-e2e"),
        ("CONNECT_JWT_MAX_LIFETIME_SECS", "3600"),
    ])
    .await?;
    let alice = user("alice");
    let now = connect_core::now_ms() / 1000;
    let claims = |aud: &str, iss: &str, nbf: u64, exp: u64| {
        issuer().sign(&serde_json::json!({
            "sub": alice, "exp": exp, "iat": now, "nbf": nbf, "aud": aud, "iss": iss,
        }))
    };
    let (aud, iss) = ("connect-chat-e2e", "https://auth.e2e.example");
    for (what, token, want) in [
        ("right", claims(aud, iss, now, now + 600), 101),
        ("wrong aud", claims("other-app", iss, now, now + 600), 401),
        (
            "wrong iss",
            claims(aud, "https://evil.example", now, now + 600),
            401,
        ),
        ("nbf ahead", claims(aud, iss, now + 300, now + 600), 401),
        ("two hours", claims(aud, iss, now, now + 7200), 401),
        ("no aud or iss", token(&alice), 401),
    ] {
        let got = match open(&gw.addr, Some(&format!("Bearer {token}")), "").await {
            Ok(ws) => {
                Client::after_upgrade(ws, &alice).await?;
                101
            }
            Err(e) => status_of(Err::<(), _>(e)).unwrap_or(0),
        };
        assert_eq!(got, want, "{what}");
    }
    Ok(())
}

/// Rotating the JWT secret (docs/runbook.md): with `CONNECT_JWT_SECRET_PREVIOUS` a gateway takes
/// tokens of the new secret and of the previous one; without it, only the new one's.
#[tokio::test]
async fn during_a_secret_rotation_tokens_of_both_secrets_are_taken() -> anyhow::Result<()> {
    use connect_core::auth::{JwtSecret, TokenIssuer};
    let new_secret = "a-rotated-secret-for-this-test-3b9e";
    let old = std::env::var("CONNECT_JWT_SECRET")
        .unwrap_or_else(|_| connect_core::auth::DEV_SECRET.into());
    let rotating = crate::private::ExtraGateway::start_with(&[
        ("CONNECT_JWT_SECRET", new_secret),
        ("CONNECT_JWT_SECRET_PREVIOUS", &old),
    ])
    .await?;
    let after =
        crate::private::ExtraGateway::start_with(&[("CONNECT_JWT_SECRET", new_secret)]).await?;
    let alice = user("alice");
    let by_old = token(&alice);
    let by_new =
        TokenIssuer::new(&JwtSecret::new(Some(new_secret.into()), false)?).mint(&alice, 600);
    let by_stranger =
        TokenIssuer::new(&JwtSecret::new(Some("not-ours".into()), false)?).mint(&alice, 600);
    for (gw, token, want) in [
        (&rotating.addr, &by_old, 101),
        (&rotating.addr, &by_new, 101),
        (&rotating.addr, &by_stranger, 401),
        (&after.addr, &by_old, 401),
        (&after.addr, &by_new, 101),
    ] {
        let got = match open(gw, Some(&format!("Bearer {token}")), "").await {
            Ok(ws) => {
                Client::after_upgrade(ws, &alice).await?;
                101
            }
            Err(e) => status_of(Err::<(), _>(e)).unwrap_or(0),
        };
        assert_eq!(got, want, "{gw}");
    }
    Ok(())
}
