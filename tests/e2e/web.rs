//! The web client's routes on the gateway (the page itself runs in Chromium:
//! tests/browser/chat.test.mjs): the page and its files with their policy, `/config.json`,
//! development sign-in (local stack only; 404 on a gateway that runs with production's
//! checks), and CORS on the HTTP API for the page's calls.

use serde_json::Value;

use crate::helpers::*;
use crate::private::ExtraGateway;

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[tokio::test]
async fn the_gateway_serves_the_page_its_files_and_its_config() -> anyhow::Result<()> {
    let gw = &gateways()[0];
    for (path, kind, has) in [
        ("/", "text/html", "<script src=\"/app.js\""),
        ("/app.js", "text/javascript", "new WebSocket("),
        ("/app.css", "text/css", "@media (max-width: 640px)"),
    ] {
        let (status, response) = http_raw(gw, "GET", path, &[], "").await?;
        assert_eq!(status, 200, "{path}");
        assert!(
            header(&response, "content-type").is_some_and(|t| t.starts_with(kind)),
            "{path}: {response:.300}"
        );
        assert!(body(&response).contains(has), "{path}");
        let policy = header(&response, "content-security-policy").unwrap_or_default();
        assert!(
            policy.contains("default-src 'self'") && policy.contains("http://127.0.0.1:8090"),
            "{policy}"
        );
        assert_eq!(header(&response, "x-content-type-options"), Some("nosniff"));
    }
    let (status, config) = http_get(gw, "/config.json").await?;
    let config: Value = serde_json::from_str(&config)?;
    assert_eq!(status, 200);
    assert_eq!(config["api"], "http://127.0.0.1:8090");
    assert_eq!(config["devSignIn"], true);
    let (status, _) = http_get(gw, "/nothing-here").await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test]
async fn development_sign_in_gives_a_token_for_the_socket_and_the_api() -> anyhow::Result<()> {
    let gw = &gateways()[1];
    let alice = user("alice");
    let json = [("content-type", "application/json".to_owned())];
    let (status, response) = http_raw(
        gw,
        "POST",
        "/dev/token",
        &json,
        &format!(r#"{{"user":"{alice}"}}"#),
    )
    .await?;
    assert_eq!(status, 200, "{response}");
    let answer: Value = serde_json::from_str(body(&response))?;
    let token = answer["token"].as_str().expect("token");
    assert_eq!(answer["user"], alice.as_str());
    let exp = answer["exp"].as_u64().expect("exp");
    let verified = connect_core::auth::TokenVerifier::new(&connect_core::auth::JwtSecret::new(
        std::env::var("CONNECT_JWT_SECRET").ok(),
        false,
    )?)
    .verify_until(token)?;
    assert_eq!(
        (verified.user.as_str(), verified.exp),
        (alice.as_str(), exp)
    );
    // As a browser uses it: `?token=` on the upgrade; and as the page calls the API.
    let mut ws = Client::after_upgrade(
        open(gw, None, &format!("?token={token}&device=web")).await?,
        &alice,
    )
    .await?;
    let seq = ws
        .send_accepted("w-1", &user("bob"), "from the page")
        .await?;
    assert_eq!(seq, 1);
    let (status, groups) = http_raw(
        &api_addr(),
        "GET",
        "/v1/groups",
        &[("authorization", format!("Bearer {token}"))],
        "",
    )
    .await?;
    assert_eq!(status, 200, "{groups}");

    for (bad, why) in [
        (r#"{"user":"a b"}"#, "bad user id"),
        (r#"{"name":"alice"}"#, "expected"),
        ("not json", "expected"),
    ] {
        let (status, response) = http_raw(gw, "POST", "/dev/token", &json, bad).await?;
        assert_eq!(status, 400, "{bad}");
        let e: Value = serde_json::from_str(body(&response))?;
        assert_eq!(e["error"]["code"], "bad_request");
        assert!(
            e["error"]["message"].as_str().unwrap_or("").contains(why),
            "{response}"
        );
    }
    let (status, response) = http_raw(gw, "POST", "/dev/token", &json, &"x".repeat(4096)).await?;
    assert_eq!(status, 413, "a sign-in body is small");
    let e: Value = serde_json::from_str(body(&response))?;
    assert_eq!(e["error"]["code"], "too_large", "{response}");
    Ok(())
}

#[tokio::test]
async fn with_production_checks_there_is_no_development_sign_in() -> anyhow::Result<()> {
    let gw = ExtraGateway::start_with(&[
        ("CONNECT_ENV", "production"),
        (
            "CONNECT_JWT_SECRET",
            "a-real-secret-for-this-test-only-1f0c",
        ),
        (
            "CONNECT_INTERNAL_TOKEN",
            "a-real-internal-token-for-this-test-7d2a",
        ),
        ("GATEWAY_WEB_API_URL", "https://api.example.com/prod/"),
    ])
    .await?;
    let json = [("content-type", "application/json".to_owned())];
    let (status, response) =
        http_raw(&gw.addr, "POST", "/dev/token", &json, r#"{"user":"alice"}"#).await?;
    assert_eq!(status, 404, "{response}");
    assert!(!body(&response).contains("token\""), "{response}");
    let (_, config) = http_get(&gw.addr, "/config.json").await?;
    let config: Value = serde_json::from_str(&config)?;
    assert_eq!(config["devSignIn"], false);
    assert_eq!(config["api"], "https://api.example.com/prod");
    // The page is served all the same: it asks for a token instead.
    let (status, response) = http_raw(&gw.addr, "GET", "/", &[], "").await?;
    assert_eq!(status, 200);
    assert!(header(&response, "content-security-policy")
        .unwrap_or_default()
        .contains("https://api.example.com;"));
    Ok(())
}

#[tokio::test]
async fn the_api_answers_the_pages_cross_origin_calls() -> anyhow::Result<()> {
    let api = api_addr();
    let origin = ("origin", format!("http://{}", gateways()[0]));
    let (status, response) = http_raw(
        &api,
        "OPTIONS",
        "/v1/groups",
        &[
            origin.clone(),
            ("access-control-request-method", "POST".into()),
            (
                "access-control-request-headers",
                "authorization,content-type".into(),
            ),
        ],
        "",
    )
    .await?;
    assert!((200..300).contains(&status), "{response}");
    assert_eq!(header(&response, "access-control-allow-origin"), Some("*"));
    let methods = header(&response, "access-control-allow-methods").unwrap_or_default();
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{methods}"
    );
    let allowed = header(&response, "access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );
    // The call itself, an error included, carries the header the browser needs to read it.
    let alice = user("alice");
    let (status, response) = http_raw(
        &api,
        "GET",
        "/v1/groups/g_nosuchgroup",
        &[
            origin,
            ("authorization", format!("Bearer {}", token(&alice))),
        ],
        "",
    )
    .await?;
    assert_eq!(status, 404);
    assert_eq!(header(&response, "access-control-allow-origin"), Some("*"));
    Ok(())
}
