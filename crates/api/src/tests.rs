use std::sync::Arc;

use connect_core::auth::{JwtSecret, TokenIssuer};
use connect_core::memory::Memory;
use connect_core::model::StoredMessage;
use connect_core::ports::ChatStore;
use connect_protocol::{ClientMsgId, ConversationId, UserId};

use super::*;

fn api(mem: &Arc<Memory>) -> HttpApi {
    api_with(
        mem,
        TokenVerifier::new(&JwtSecret::new(None, false).unwrap()),
    )
}

/// For the sample events under `events/`: their token (for `sam local invoke` too) expires in
/// 2100 so that they never go stale, far past any maximum lifetime; these tests are of routing.
fn api_for_samples(mem: &Arc<Memory>) -> HttpApi {
    let rules = connect_core::auth::TokenRules {
        max_lifetime_secs: u64::MAX,
        ..Default::default()
    };
    api_with(
        mem,
        TokenVerifier::with_rules(&JwtSecret::new(None, false).unwrap(), &rules),
    )
}

fn api_with(mem: &Arc<Memory>, verifier: TokenVerifier) -> HttpApi {
    HttpApi::new(
        verifier,
        ApiPorts::all(mem.clone()),
        GroupRules::new(
            Caps {
                members: 100,
                groups_per_user: 100,
            },
            100,
            1000,
        ),
    )
}

fn token(user: &str) -> String {
    TokenIssuer::new(&JwtSecret::new(None, false).unwrap()).mint(user, 60)
}

/// A request as the local API builds it, parsed as the Lambda runtime parses it.
fn get(path_and_query: &str, user: Option<&str>) -> Request {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let (route, params) = match_route("GET", path).expect("a route");
    let headers: Vec<(String, String)> = user
        .map(|u| vec![("Authorization".into(), format!("Bearer {}", token(u)))])
        .unwrap_or_default();
    let event = event_json(&route, &params, path, query, &headers, "", "127.0.0.1");
    lambda_http::request::from_str(&event).expect("an API Gateway v2 event")
}

async fn seed(mem: &Memory, n: u64) {
    let messages: Vec<StoredMessage> = (1..=n)
        .map(|seq| StoredMessage {
            conversation: ConversationId::parse("dm:alice:bob").unwrap(),
            seq,
            from: UserId::parse("alice").unwrap(),
            id: ClientMsgId::parse(format!("m{seq}")).unwrap(),
            body: format!("b{seq}"),
            ts: seq,
            event: None,
            mv: None,
            device: None,
        })
        .collect();
    mem.put_batch(&messages).await.unwrap();
}

async fn page(api: &HttpApi, q: &str) -> (u16, Vec<u64>, serde_json::Value) {
    let res = api
        .handle(get(
            &format!("/v1/conversations/dm%3Aalice%3Abob/messages{q}"),
            Some("bob"),
        ))
        .await;
    let status = res.status().as_u16();
    let body: serde_json::Value = match res.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap(),
        other => panic!("{other:?}"),
    };
    let seqs = body["messages"]
        .as_array()
        .map(|a| a.iter().map(|m| m["seq"].as_u64().unwrap()).collect())
        .unwrap_or_default();
    (status, seqs, body)
}

#[tokio::test]
async fn pages_as_the_contract_says() {
    let mem = Arc::new(Memory::default());
    seed(&mem, 120).await;
    let api = api(&mem);

    let (s, seqs, body) = page(&api, "").await;
    assert_eq!(
        (s, seqs, body["has_more"].as_bool()),
        (200, (71..=120).collect(), Some(true))
    );
    assert_eq!(body["messages"][0]["from"], "alice");
    assert_eq!(body["messages"][0]["conversation"], "dm:alice:bob");
    assert!(body["messages"][0].get("type").is_none());

    let (_, seqs, body) = page(&api, "?after=0&limit=100").await;
    assert_eq!(
        (seqs, body["has_more"].as_bool()),
        ((1..=100).collect(), Some(true))
    );
    let (_, seqs, body) = page(&api, "?after=100").await;
    assert_eq!(
        (seqs, body["has_more"].as_bool()),
        ((101..=120).collect(), Some(false))
    );
    let (_, seqs, body) = page(&api, "?before=51&limit=50").await;
    assert_eq!(
        (seqs, body["has_more"].as_bool()),
        ((1..=50).collect(), Some(false))
    );
    let (_, seqs, body) = page(&api, "?before=52&limit=50").await;
    assert_eq!(
        (seqs, body["has_more"].as_bool()),
        ((2..=51).collect(), Some(true))
    );

    let (s, _, body) = page(&api, "?limit=5000").await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
}

#[tokio::test]
async fn strangers_and_the_anonymous_are_refused() {
    let mem = Arc::new(Memory::default());
    seed(&mem, 3).await;
    let api = api(&mem);
    let res = api
        .handle(get(
            "/v1/conversations/dm:alice:bob/messages",
            Some("carol"),
        ))
        .await;
    assert_eq!(res.status().as_u16(), 403);
    let res = api
        .handle(get("/v1/conversations/dm:alice:bob/messages", None))
        .await;
    assert_eq!(res.status().as_u16(), 401);
}

#[test]
fn routes_match_with_their_parameters() {
    let (r, p) = match_route("GET", "/v1/conversations/dm:a:b/messages").unwrap();
    assert_eq!(r, HISTORY);
    assert_eq!(p, vec![("conversation".to_owned(), "dm:a:b".to_owned())]);
    assert!(match_route("POST", "/v1/conversations/dm:a:b/messages").is_none());
    assert!(match_route("GET", "/v1/conversations//messages").is_none());
    assert!(match_route("GET", "/v1/conversations/x/messages/y").is_none());
    assert_eq!(percent_decode("dm%3Aa%3Ab"), "dm:a:b");
    assert_eq!(percent_decode("a%zz%"), "a%zz%");
}

#[tokio::test]
async fn the_sample_event_reads_a_page() {
    let mem = Arc::new(Memory::default());
    seed(&mem, 3).await;
    let req = lambda_http::request::from_str(include_str!("../../../events/history.json"))
        .expect("events/history.json is an API Gateway v2 event");
    let res = api_for_samples(&mem).handle(req).await;
    assert_eq!(res.status().as_u16(), 200, "{:?}", res.body());
}

/// A request with a method and body, as the local API builds it.
fn call(method: &str, path: &str, user: &str, body: &str) -> Request {
    let (route, params) = match_route(method, path).expect("a route");
    let headers = vec![("Authorization".into(), format!("Bearer {}", token(user)))];
    let event = event_json(&route, &params, path, "", &headers, body, "127.0.0.1");
    lambda_http::request::from_str(&event).expect("an API Gateway v2 event")
}

fn json_of(res: &Response<Body>) -> serde_json::Value {
    match res.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap(),
        _ => serde_json::Value::Null,
    }
}

#[tokio::test]
async fn the_group_routes_through_api_gateway_events() {
    let mem = Arc::new(Memory::default());
    let api = api(&mem);
    let res = api
        .handle(call(
            "POST",
            "/v1/groups",
            "alice",
            r#"{"name":"Trip","members":["bob"]}"#,
        ))
        .await;
    assert_eq!(res.status().as_u16(), 201);
    let g = json_of(&res);
    assert_eq!(g["owner"], "alice");
    assert_eq!(g["members"], serde_json::json!(["alice", "bob"]));
    let id = g["group"].as_str().unwrap().to_owned();

    let res = api
        .handle(call("GET", &format!("/v1/groups/{id}"), "bob", ""))
        .await;
    assert_eq!(
        (res.status().as_u16(), json_of(&res)["name"].as_str()),
        (200, Some("Trip"))
    );
    let res = api.handle(call("GET", "/v1/groups", "bob", "")).await;
    assert_eq!(json_of(&res)["groups"][0]["group"], id.as_str());
    let res = api
        .handle(call(
            "POST",
            &format!("/v1/groups/{id}/members"),
            "bob",
            r#"{"user":"dave"}"#,
        ))
        .await;
    assert_eq!(res.status().as_u16(), 200);
    let res = api
        .handle(call(
            "DELETE",
            &format!("/v1/groups/{id}/members/alice"),
            "bob",
            "",
        ))
        .await;
    assert_eq!(res.status().as_u16(), 403);
    let res = api
        .handle(call(
            "DELETE",
            &format!("/v1/groups/{id}/members/dave"),
            "alice",
            "",
        ))
        .await;
    assert_eq!(res.status().as_u16(), 204);
    let res = api
        .handle(call("GET", "/v1/groups/g_nope", "bob", ""))
        .await;
    assert_eq!(res.status().as_u16(), 404);
    let res = api
        .handle(call("POST", "/v1/groups", "alice", "{not json"))
        .await;
    assert_eq!(res.status().as_u16(), 400);
    // A group's history: members only.
    let res = api
        .handle(call(
            "GET",
            &format!("/v1/conversations/group:{id}/messages"),
            "dave",
            "",
        ))
        .await;
    assert_eq!(res.status().as_u16(), 403);
    let res = api
        .handle(call(
            "GET",
            &format!("/v1/conversations/group:{id}/messages"),
            "bob",
            "",
        ))
        .await;
    assert_eq!(res.status().as_u16(), 200);
}

#[tokio::test]
async fn the_groups_sample_event_creates_a_group() {
    let mem = Arc::new(Memory::default());
    let req = lambda_http::request::from_str(include_str!("../../../events/groups.json"))
        .expect("events/groups.json is an API Gateway v2 event");
    let res = api_for_samples(&mem).handle(req).await;
    assert_eq!(res.status().as_u16(), 201, "{:?}", res.body());
}

/// The sample events under `events/` are what API Gateway sends for a named stage (`prod`): the
/// path starts with the stage, the route key does not.
#[tokio::test]
async fn requests_under_a_named_stage_reach_their_routes() {
    let mem = Arc::new(Memory::default());
    let api = api_for_samples(&mem);
    for (event, status) in [
        (include_str!("../../../events/history.json"), 200),
        (include_str!("../../../events/groups.json"), 201),
    ] {
        let req = lambda_http::request::from_str(event).expect("an API Gateway v2 event");
        assert!(req.uri().path().starts_with("/prod/v1/"), "{}", req.uri());
        let res = api.handle(req).await;
        assert_eq!(res.status(), status, "{:?}", res.body());
    }
    // Without a route key (another front end), the stage prefix is taken off the path.
    let mut staged: serde_json::Value =
        serde_json::from_str(include_str!("../../../events/history.json")).unwrap();
    staged["requestContext"]["routeKey"] = serde_json::Value::Null;
    staged["routeKey"] = serde_json::Value::Null;
    let req = lambda_http::request::from_str(&staged.to_string()).unwrap();
    assert_eq!(route_of(&req), Some(HISTORY));
    // A path that only looks staged is not a route.
    staged["rawPath"] = "/prodx/v1/groups".into();
    staged["requestContext"]["http"]["path"] = "/prodx/v1/groups".into();
    let req = lambda_http::request::from_str(&staged.to_string()).unwrap();
    assert_eq!(route_of(&req), None);
}

#[tokio::test]
async fn a_clients_host_and_forwarded_proto_never_reach_the_request_uri() {
    // lambda_http builds the URI from these and panics on one that does not parse (found by
    // the http_api fuzz target); the event carries API Gateway's own instead.
    let (route, params) = match_route("GET", "/v1/groups/g_1").expect("a route");
    let headers = vec![
        ("Host".to_owned(), "a..b\u{7f}".to_owned()),
        ("X-Forwarded-Proto".to_owned(), "no such scheme".to_owned()),
    ];
    let event = event_json(
        &route,
        &params,
        "/v1/groups/g_1",
        "",
        &headers,
        "",
        "127.0.0.1",
    );
    let req = lambda_http::request::from_str(&event).expect("an API Gateway v2 event");
    let mem = Arc::new(Memory::default());
    let res = api(&mem).handle(req).await;
    assert_eq!(res.status().as_u16(), 401, "no token: refused, not a panic");
}

/// SNS with an APNs application only: each token gets `arn:<token>`; the token "bad" is refused.
struct ApnsOnly;

#[async_trait::async_trait]
impl connect_core::push::PlatformEndpoints for ApnsOnly {
    async fn endpoint(
        &self,
        platform: connect_core::push::Platform,
        token: &str,
    ) -> Result<String, connect_core::push::PlatformError> {
        use connect_core::push::{Platform, PlatformError};
        match (platform, token) {
            (Platform::Fcm, _) => Err(PlatformError::NotEnabled(platform)),
            (_, "bad") => Err(PlatformError::Refused("invalid token".into())),
            (_, "down") => Err(PlatformError::Failed {
                message: "throttled".into(),
                retryable: true,
            }),
            _ => Ok(format!("arn:{token}")),
        }
    }
}

fn push_api(mem: &Arc<Memory>) -> HttpApi {
    let config = PushConfig {
        local: true,
        ..PushConfig::default()
    };
    let settings = PushSettings::new(&config, mem.clone(), mem.clone()).unwrap();
    // The sample event of `devices` is among its calls.
    api_for_samples(mem).with_push(settings.with_platforms(Arc::new(ApnsOnly)))
}

fn webpush(endpoint: &str) -> String {
    serde_json::json!({"kind":"webpush","endpoint":endpoint,"keys":{
        "p256dh":"BPzEwyx3K81k__lbPNILGxDrKFcLmEGxWFSL5SalGvPUdvo8jkfuufU8yj1TFrSw0eR2i7mgMEIqY0Yj1U4Gxlo",
        "auth":"AAECAwQFBgcICQoLDA0ODw"}})
    .to_string()
}

#[tokio::test]
async fn devices_register_for_push_and_endpoints_into_our_network_are_400() {
    let mem = Arc::new(Memory::default());
    let api = push_api(&mem);
    let res = api.handle(call("GET", "/v1/push/vapid", "alice", "")).await;
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(
        json_of(&res)["public_key"].as_str(),
        Some(connect_push::vapid::Vapid::development().public_key())
    );
    let put = |device: &str, body: String| {
        call("PUT", &format!("/v1/devices/{device}/push"), "alice", &body)
    };
    for body in [
        webpush("http://10.0.0.1/push"),
        webpush("https://169.254.169.254/latest/meta-data"),
        webpush("https://localhost/x"),
        webpush("https://[::1]/x"),
        r#"{"kind":"sms","token":"1"}"#.to_owned(),
        // No FCM application on this deployment; a token SNS refuses.
        r#"{"kind":"fcm","token":"f1"}"#.to_owned(),
        r#"{"kind":"apns","token":"bad"}"#.to_owned(),
    ] {
        let res = api.handle(put("phone", body.clone())).await;
        assert_eq!(res.status().as_u16(), 400, "{body}: {:?}", res.body());
    }
    let res = api
        .handle(put("phone", r#"{"kind":"apns","token":"down"}"#.into()))
        .await;
    assert_eq!(
        json_of(&res)["error"]["code"],
        "unavailable",
        "SNS down: try again"
    );
    assert_eq!(
        api.handle(put("a%20b", webpush("https://8.8.8.8/p")))
            .await
            .status(),
        400
    );
    assert!(mem.push.lock().unwrap().is_empty());
    for (device, body) in [
        ("phone", webpush("https://8.8.8.8/p")),
        ("laptop", webpush("http://127.0.0.1:8095/notify/x")),
        ("ipad", r#"{"kind":"apns","token":"0a1b"}"#.to_owned()),
    ] {
        let res = api.handle(put(device, body)).await;
        assert_eq!(res.status().as_u16(), 204, "{device}: {:?}", res.body());
    }
    let alice = UserId::parse("alice").unwrap();
    assert_eq!(mem.push.lock().unwrap().len(), 3);
    assert_eq!(
        mem.push.lock().unwrap()[&(alice.clone(), "ipad".to_owned())],
        connect_core::push::Registration::Mobile {
            platform: connect_core::push::Platform::Apns,
            token: "0a1b".into(),
            arn: "arn:0a1b".into(),
        }
    );
    let res = api
        .handle(call("DELETE", "/v1/devices/ipad/push", "alice", ""))
        .await;
    assert_eq!(res.status().as_u16(), 204);
    assert!(!mem
        .push
        .lock()
        .unwrap()
        .contains_key(&(alice, "ipad".to_owned())));
    // The sample event of the `devices` function, as API Gateway sends it under a stage.
    let req = lambda_http::request::from_str(include_str!("../../../events/devices.json"))
        .expect("events/devices.json is an API Gateway v2 event");
    assert_eq!(api.handle(req).await.status().as_u16(), 200);
    // A function that does not serve push answers its routes 404.
    let res = api_without_push(&mem)
        .handle(call("GET", "/v1/push/vapid", "alice", ""))
        .await;
    assert_eq!(res.status().as_u16(), 404);
}

fn api_without_push(mem: &Arc<Memory>) -> HttpApi {
    api(mem)
}

#[test]
fn production_refuses_to_start_without_a_vapid_key_or_with_the_development_one() {
    let mem = Arc::new(Memory::default());
    let prod = PushConfig {
        vapid_contact: "mailto:ops@example.com".into(),
        ..PushConfig::default()
    };
    assert!(PushSettings::new(&prod, mem.clone(), mem.clone()).is_err());
    let dev = PushConfig {
        vapid_private_key: Some(connect_push::vapid::DEVELOPMENT_PRIVATE_KEY.into()),
        ..prod.clone()
    };
    assert!(PushSettings::new(&dev, mem.clone(), mem.clone()).is_err());
    let own = PushConfig {
        vapid_private_key: Some("kEFVU2Qq0a3_iO7r3ZfBFKH2VZgG6a9Qs9kSvHkyV8o".into()),
        ..prod
    };
    assert!(PushSettings::new(&own, mem.clone(), mem).is_ok());
}

/// With an audience configured, the HTTP API answers 401 to a token meant for another audience
/// (and to one without `aud`), 200 to one naming it.
#[tokio::test]
async fn a_token_for_another_audience_gets_401() {
    use connect_core::auth::TokenRules;
    let mem = Arc::new(Memory::default());
    let secret = JwtSecret::new(None, false).unwrap();
    let rules = TokenRules {
        audience: Some("connect-chat".into()),
        ..TokenRules::default()
    };
    let api = HttpApi::new(
        TokenVerifier::with_rules(&secret, &rules),
        ApiPorts::all(mem.clone()),
        GroupRules::new(Caps::UNBOUNDED, 1, 1),
    );
    let exp = connect_core::now_ms() / 1000 + 60;
    let issuer = TokenIssuer::new(&secret);
    for (aud, want) in [
        (Some("connect-chat"), 200),
        (Some("another-app"), 401),
        (None, 401),
    ] {
        let mut claims = serde_json::json!({ "sub": "alice", "exp": exp });
        if let Some(aud) = aud {
            claims["aud"] = aud.into();
        }
        let (route, params) = match_route("GET", "/v1/groups").unwrap();
        let headers = vec![(
            "Authorization".to_owned(),
            format!("Bearer {}", issuer.sign(&claims)),
        )];
        let event = event_json(&route, &params, "/v1/groups", "", &headers, "", "127.0.0.1");
        let req = lambda_http::request::from_str(&event).unwrap();
        assert_eq!(api.handle(req).await.status().as_u16(), want, "{aud:?}");
    }
}
