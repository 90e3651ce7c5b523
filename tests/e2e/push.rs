//! Push (PROTOCOL.md "Push notifications") over the real stack: registration through the HTTP
//! API with a subscription of the local Web Push service (npm `web-push-testing` on
//! 127.0.0.1:8095, which checks each push's VAPID signature against the key the subscription
//! was made with, decrypts it, and answers 410 once a subscription is expired), the checks
//! against endpoints into our own network, and the Web Push sender production uses.

use serde_json::{json, Value};

use connect_push::vapid::Vapid;
use connect_push::webpush::{Subscription, Urgency, WebPush, WebPushConfig, WebPushSender};
use connect_push::PushError;

use crate::helpers::*;

/// The local Web Push service (`CONNECT_WEBPUSH`, default 127.0.0.1:8095).
fn webpush_addr() -> String {
    std::env::var("CONNECT_WEBPUSH").unwrap_or_else(|_| "127.0.0.1:8095".into())
}

/// A POST of JSON to the Web Push service's own API: its `data`.
async fn service(path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
    let (status, response) = http_raw(
        &webpush_addr(),
        "POST",
        path,
        &[("Content-Type", "application/json".to_owned())],
        &body.to_string(),
    )
    .await?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((
        status,
        serde_json::from_str::<Value>(body).unwrap_or(Value::Null)["data"].clone(),
    ))
}

/// A subscription of the local push service for `application_server_key`, as a browser's
/// `pushManager.subscribe` makes one: (its JSON, its client hash).
async fn subscribe(application_server_key: &str) -> anyhow::Result<(Value, String)> {
    let (status, data) = service(
        "/subscribe",
        json!({"applicationServerKey": application_server_key, "userVisibleOnly": "true"}),
    )
    .await?;
    anyhow::ensure!(status == 200, "subscribe answered {status}: {data}");
    let hash = data["clientHash"].as_str().unwrap_or_default().to_owned();
    Ok((data, hash))
}

/// What the push service received and decrypted for a subscription.
async fn received(hash: &str) -> anyhow::Result<Vec<String>> {
    let (_, data) = service("/get-notifications", json!({"clientHash": hash})).await?;
    Ok(data["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect())
}

/// `PUT /v1/devices/phone/push` as `user` with `body`: (status, answer).
async fn register_phone(user: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
    api_call(
        "PUT",
        "/v1/devices/phone/push",
        Some(user),
        &body.to_string(),
    )
    .await
}

/// The registration of (user, device) in the push table, if any.
pub(crate) async fn registered(user: &str, device: &str) -> anyhow::Result<Option<Value>> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let item = dynamo()
        .await
        .get_item()
        .table_name(connect_dynamo::Tables::from_settings(&settings()).push)
        .key("user", AttributeValue::S(user.into()))
        .key("device", AttributeValue::S(device.into()))
        .consistent_read(true)
        .send()
        .await?
        .item;
    Ok(item.map(|item| {
        item.iter()
            .filter_map(|(k, v)| Some((k.clone(), Value::String(v.as_s().ok()?.clone()))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }))
}

#[tokio::test]
async fn a_device_registers_a_subscription_of_the_local_push_service_and_removes_it(
) -> anyhow::Result<()> {
    let alice = user("alice");
    let (status, vapid) = api_get("/v1/push/vapid", Some(&alice)).await?;
    assert_eq!(status, 200, "{vapid}");
    let key = vapid["public_key"].as_str().unwrap_or_default().to_owned();
    assert_eq!(key, Vapid::development().public_key());
    let (status, _) = api_get("/v1/push/vapid", None).await?;
    assert_eq!(status, 401, "a token, like every route");
    let (subscription, _) = subscribe(&key).await?;
    let body = json!({"kind": "webpush", "endpoint": subscription["endpoint"], "keys": subscription["keys"]});
    let (status, answer) = register_phone(&alice, &body).await?;
    assert_eq!(status, 204, "{answer}");
    let stored = registered(&alice, "phone").await?.expect("stored");
    assert_eq!(stored["kind"], "webpush");
    assert_eq!(stored["endpoint"], subscription["endpoint"]);
    assert_eq!(stored["p256dh"], subscription["keys"]["p256dh"]);
    // Replaced whole by a new registration of the same device.
    let (status, _) =
        register_phone(&alice, &json!({"kind": "fcm", "token": "fcm-token-1"})).await?;
    assert_eq!(status, 204);
    let stored = registered(&alice, "phone").await?.expect("stored");
    assert_eq!(
        (stored["kind"].as_str(), stored.get("endpoint")),
        (Some("fcm"), None)
    );
    let (status, _) = api_call("DELETE", "/v1/devices/phone/push", Some(&alice), "").await?;
    assert_eq!(status, 204);
    assert_eq!(registered(&alice, "phone").await?, None);
    Ok(())
}

#[tokio::test]
async fn registration_refuses_endpoints_into_our_network_and_unknown_kinds() -> anyhow::Result<()> {
    let alice = user("alice");
    let keys =
        json!({"p256dh": Vapid::development().public_key(), "auth": "AAECAwQFBgcICQoLDA0ODw"});
    for endpoint in [
        "http://10.0.0.1/push",
        "https://169.254.169.254/latest/meta-data",
        // A name resolving to 127.0.0.1: only the local push service's own http URL is taken.
        "https://localhost:8095/notify/x",
        "https://[::ffff:127.0.0.1]/x",
    ] {
        let body = json!({"kind": "webpush", "endpoint": endpoint, "keys": keys});
        let (status, answer) = register_phone(&alice, &body).await?;
        assert_eq!(status, 400, "{endpoint}: {answer}");
        assert_eq!(answer["error"]["code"], "bad_request");
    }
    let (status, _) =
        register_phone(&alice, &json!({"kind": "carrier-pigeon", "token": "t"})).await?;
    assert_eq!(status, 400);
    assert_eq!(registered(&alice, "phone").await?, None);
    Ok(())
}

#[tokio::test]
async fn the_push_service_decrypts_what_the_sender_sends_and_a_dead_subscription_is_gone(
) -> anyhow::Result<()> {
    let sender = WebPushSender::new(
        Vapid::development(),
        WebPushConfig {
            allow_local: true,
            ..WebPushConfig::default()
        },
    )?;
    let (subscription, hash) = subscribe(sender.vapid().public_key()).await?;
    let to = Subscription {
        endpoint: subscription["endpoint"].as_str().unwrap_or_default(),
        p256dh: subscription["keys"]["p256dh"].as_str().unwrap_or_default(),
        auth: subscription["keys"]["auth"].as_str().unwrap_or_default(),
    };
    let payload = json!({"conversation": "dm:alice:bob", "seq": 17, "from": "alice", "preview": "héllo ✓", "unread": 3});
    let push = WebPush {
        body: payload.to_string().into_bytes(),
        topic: Some(connect_push::webpush::topic("dm:alice:bob")),
        urgency: Urgency::High,
    };
    sender.send(&to, &push).await?;
    let got = received(&hash).await?;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(serde_json::from_str::<Value>(&got[0])?, payload);
    // Signed with another key than the subscription's: the service refuses it.
    let other = WebPushSender::new(
        Vapid::new(
            "kEFVU2Qq0a3_iO7r3ZfBFKH2VZgG6a9Qs9kSvHkyV8o",
            "mailto:a@example.com",
        )?,
        WebPushConfig {
            allow_local: true,
            ..WebPushConfig::default()
        },
    )?;
    assert!(matches!(
        other.send(&to, &push).await,
        Err(PushError::Refused(_))
    ));
    assert_eq!(received(&hash).await?.len(), 1);
    // Expired at the service: 410, the registration must go.
    let (status, _) = service(&format!("/expire-subscription/{hash}"), json!({})).await?;
    assert_eq!(status, 200);
    assert_eq!(sender.send(&to, &push).await, Err(PushError::Gone(410)));
    Ok(())
}

/// What the push service decrypted for `hash`, once it holds at least `n` (or [`WAIT`] passed).
async fn received_at_least(hash: &str, n: usize) -> anyhow::Result<Vec<Value>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = received(hash).await?;
        if got.len() >= n || tokio::time::Instant::now() >= deadline {
            return got.iter().map(|m| Ok(serde_json::from_str(m)?)).collect();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `user`'s `device` registered with a fresh subscription of the local push service: its hash.
async fn registered_device(user: &str, device: &str) -> anyhow::Result<String> {
    let (_, vapid) = api_get("/v1/push/vapid", Some(user)).await?;
    let (subscription, hash) = subscribe(vapid["public_key"].as_str().unwrap_or_default()).await?;
    let body = json!({"kind": "webpush", "endpoint": subscription["endpoint"], "keys": subscription["keys"]});
    let (status, answer) = api_call(
        "PUT",
        &format!("/v1/devices/{device}/push"),
        Some(user),
        &body.to_string(),
    )
    .await?;
    anyhow::ensure!(status == 204, "registering answered {status}: {answer}");
    Ok(hash)
}

#[tokio::test]
async fn a_message_to_a_device_with_no_connection_is_pushed_and_one_with_a_connection_is_not(
) -> anyhow::Result<()> {
    let gws = gateways();
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let hash = registered_device(&bob, "phone").await?;
    let mut a = Client::connect(&gws[0], &alice).await?;
    let seq = a.send_accepted("m1", &bob, "hello bob").await?;
    let got = received_at_least(&hash, 1).await?;
    assert_eq!(
        got,
        vec![
            json!({"conversation": dm(&alice, &bob), "seq": seq, "from": alice, "preview": "hello bob", "unread": seq})
        ],
        "PROTOCOL's payload, decrypted by the push service"
    );
    // The sender's own devices get no push for their own messages.
    let mine = registered_device(&alice, "tablet").await?;
    // With the phone connected, carol's message goes to it and is not pushed.
    let mut phone = Client::connect_device(&gws[1], &bob, "phone").await?;
    let mut c = Client::connect(&gws[0], &carol).await?;
    let first = c.send_accepted("c1", &bob, "are you there").await?;
    // (Its backlog, alice's first message, may come before.)
    loop {
        let m = phone.expect("message").await?;
        if m["conversation"] == dm(&bob, &carol) {
            assert_eq!(m["seq"], first);
            break;
        }
    }
    a.send_accepted("m2", &bob, "again").await?;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(received(&hash).await?.len(), 1, "nothing while connected");
    assert!(
        received(&mine).await?.is_empty(),
        "not the sender's own devices"
    );
    // Acked and gone: carol's next message is pushed, with both unread.
    phone.ack(&dm(&bob, &carol), first).await?;
    phone.close().await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let second = c.send_accepted("c2", &bob, "hello?").await?;
    let got = received_at_least(&hash, 2).await?;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (
            got[1]["conversation"].as_str(),
            got[1]["seq"].as_u64(),
            got[1]["unread"].as_u64()
        ),
        (Some(dm(&bob, &carol).as_str()), Some(second), Some(second)),
    );
    Ok(())
}

#[tokio::test]
async fn a_subscription_the_push_service_expired_is_removed_after_its_first_failure(
) -> anyhow::Result<()> {
    let gws = gateways();
    let (alice, bob) = (user("alice"), user("bob"));
    let hash = registered_device(&bob, "phone").await?;
    let (status, _) = service(&format!("/expire-subscription/{hash}"), json!({})).await?;
    assert_eq!(status, 200);
    let mut a = Client::connect(&gws[0], &alice).await?;
    a.send_accepted("m1", &bob, "hello").await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while registered(&bob, "phone").await?.is_some() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "still registered");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn ten_messages_in_two_seconds_make_at_most_three_pushes_the_last_with_the_newest(
) -> anyhow::Result<()> {
    let gws = gateways();
    let (alice, bob) = (user("alice"), user("bob"));
    let hash = registered_device(&bob, "phone").await?;
    let mut a = Client::connect(&gws[0], &alice).await?;
    let mut last = 0;
    for i in 1..=10 {
        last = a
            .send_accepted(&format!("m{i}"), &bob, &format!("message {i}"))
            .await?;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The newest arrives when the window held it back closes (5 s after the first push).
    let deadline = tokio::time::Instant::now() + WAIT;
    let got = loop {
        let got = received_at_least(&hash, 1).await?;
        if got.last().is_some_and(|p| p["seq"] == last) || tokio::time::Instant::now() >= deadline {
            break got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!((1..=3).contains(&got.len()), "{got:?}");
    let last_push = got.last().expect("a push");
    assert_eq!(
        (
            last_push["seq"].as_u64(),
            last_push["preview"].as_str(),
            last_push["unread"].as_u64()
        ),
        (Some(last), Some("message 10"), Some(last))
    );
    // Nothing more comes after the newest.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(received(&hash).await?.len(), got.len());
    Ok(())
}

/// The local SNS API (moto; `SNS_ENDPOINT`, default http://127.0.0.1:8096): its address.
fn sns_addr() -> String {
    std::env::var("SNS_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:8096".into())
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// Every platform endpoint the SNS API made, with what was published to it (moto's own view of
/// its state, `/moto-api/data.json`, which keeps deleted ones too): (token → endpoint).
async fn sns_endpoints() -> anyhow::Result<std::collections::HashMap<String, Value>> {
    let (status, body) = http_get(&sns_addr(), "/moto-api/data.json").await?;
    anyhow::ensure!(status == 200, "moto data: {status}");
    let data: Value = serde_json::from_str(&body)?;
    Ok(data["sns"]["PlatformEndpoint"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["token"].as_str()?.to_owned(), e.clone())))
        .collect())
}

/// What was published to the endpoint of `token`, each message's JSON (MessageStructure=json).
async fn published(token: &str) -> anyhow::Result<Vec<Value>> {
    Ok(sns_endpoints()
        .await?
        .get(token)
        .and_then(|e| e["messages"].as_object().cloned())
        .into_iter()
        .flatten()
        .filter_map(|(_, m)| serde_json::from_str(m.as_str()?).ok())
        .collect())
}

/// An SNS API call (query protocol) as ops or SNS itself would make it: its HTTP status.
async fn sns_call(params: &[(&str, &str)]) -> anyhow::Result<u16> {
    let body: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect();
    let (status, _) = http_raw(
        &sns_addr(),
        "POST",
        "/",
        &[
            (
                "Content-Type",
                "application/x-www-form-urlencoded".to_owned(),
            ),
            // moto tells the service from the credential scope (it does not check signatures).
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=local/20260101/us-east-1/sns/aws4_request, \
                 SignedHeaders=host, Signature=0"
                    .to_owned(),
            ),
        ],
        &body.join("&"),
    )
    .await?;
    Ok(status)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `Publish` calls the SNS API took for `arn` (moto records every call it takes), each as
/// its form parameters.
async fn publishes_to(arn: &str) -> anyhow::Result<Vec<std::collections::HashMap<String, String>>> {
    use base64::Engine as _;
    let (status, body) = http_get(&sns_addr(), "/moto-api/recorder/download-recording").await?;
    anyhow::ensure!(status == 200, "moto recording: {status}");
    let mut out = Vec::new();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let call: Value = serde_json::from_str(line)?;
        let raw = call["body"].as_str().unwrap_or_default();
        let form = if call["body_encoded"] == json!(true) {
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(raw)?)?
        } else {
            raw.to_owned()
        };
        let params: std::collections::HashMap<String, String> = form
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (urldecode(k), urldecode(v)))
            .collect();
        if params.get("Action").map(String::as_str) == Some("Publish")
            && params.get("TargetArn").map(String::as_str) == Some(arn)
        {
            out.push(params);
        }
    }
    Ok(out)
}

fn urldecode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of the message attribute `name` in a `Publish` call's form parameters.
fn attribute<'a>(
    call: &'a std::collections::HashMap<String, String>,
    name: &str,
) -> Option<&'a str> {
    (1..=10).find_map(|i| {
        (call
            .get(&format!("MessageAttributes.entry.{i}.Name"))?
            .as_str()
            == name)
            .then(|| call.get(&format!("MessageAttributes.entry.{i}.Value.StringValue")))
            .flatten()
            .map(String::as_str)
    })
}

/// SNS disables an endpoint when APNs or FCM says its token is unregistered.
async fn disable(arn: &str) -> anyhow::Result<()> {
    let status = sns_call(&[
        ("Action", "SetEndpointAttributes"),
        ("EndpointArn", arn),
        ("Attributes.entry.1.key", "Enabled"),
        ("Attributes.entry.1.value", "false"),
    ])
    .await?;
    anyhow::ensure!(status == 200, "SetEndpointAttributes: {status}");
    Ok(())
}

/// Waits up to 5 s for `n` messages published to `token`'s endpoint.
async fn published_soon(token: &str, n: usize) -> anyhow::Result<Vec<Value>> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let got = published(token).await?;
        if got.len() >= n || tokio::time::Instant::now() >= deadline {
            return Ok(got);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn apns_and_fcm_devices_get_platform_endpoints_and_pushes_through_sns() -> anyhow::Result<()>
{
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (apns, fcm) = (format!("{suffix}{suffix}"), format!("fcm:{suffix}"));
    for (device, kind, token) in [("iphone", "apns", &apns), ("pixel", "fcm", &fcm)] {
        let (status, answer) = api_call(
            "PUT",
            &format!("/v1/devices/{device}/push"),
            Some(&bob),
            &json!({"kind": kind, "token": token}).to_string(),
        )
        .await?;
        assert_eq!(status, 204, "{kind}: {answer}");
    }
    // Registration made each token's platform endpoint, on its kind's application.
    let endpoints = sns_endpoints().await?;
    let arn = |token: &str| {
        endpoints[token]["arn"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let (apns_arn, fcm_arn) = (arn(&apns), arn(&fcm));
    assert!(
        apns_arn.contains(":endpoint/APNS/connect-apns/"),
        "{apns_arn}"
    );
    assert!(fcm_arn.contains(":endpoint/GCM/connect-fcm/"), "{fcm_arn}");
    let stored = registered(&bob, "iphone").await?.expect("stored");
    assert_eq!(
        (
            stored["kind"].as_str(),
            stored["token"].as_str(),
            stored["arn"].as_str()
        ),
        (Some("apns"), Some(apns.as_str()), Some(apns_arn.as_str()))
    );

    // Bob is offline: a message pushes to both devices, each in its platform's shape.
    let mut a = Client::connect(&gateways()[0], &alice).await?;
    let seq = a.send_accepted("s1", &bob, "hello through SNS").await?;
    let conversation = dm(&alice, &bob);
    let to_iphone = published_soon(&apns, 1).await?;
    let to_pixel = published_soon(&fcm, 1).await?;
    assert_eq!((to_iphone.len(), to_pixel.len()), (1, 1), "one push each");
    let body = |m: &Value, key: &str| -> Value {
        serde_json::from_str(m[key].as_str().unwrap_or("null")).unwrap_or(Value::Null)
    };
    let want = json!({"conversation": conversation, "seq": seq, "from": alice,
        "preview": "hello through SNS", "unread": seq});
    let apns_body = body(&to_iphone[0], "APNS");
    assert_eq!(apns_body["connect"], want);
    assert_eq!(apns_body["aps"]["alert"]["title"], alice.as_str());
    assert_eq!(apns_body["aps"]["thread-id"], conversation.as_str());
    let fcm_body = body(&to_pixel[0], "GCM");
    let message = &fcm_body["fcmV1Message"]["message"];
    assert_eq!(message["data"]["seq"], seq.to_string());
    assert_eq!(message["data"]["conversation"], conversation.as_str());
    // Each names its (device, conversation): a newer push replaces one the service still holds.
    let collapse_of =
        |device: &str| connect_push::webpush::topic(&format!("{bob}|{device}|{conversation}"));
    assert_eq!(
        message["android"]["collapse_key"].as_str(),
        Some(collapse_of("pixel").as_str()),
        "FCM's collapse key: {fcm_body}"
    );
    let calls = publishes_to(&apns_arn).await?;
    assert_eq!(calls.len(), 1, "one Publish to the iPhone's endpoint");
    assert_eq!(
        attribute(&calls[0], "AWS.SNS.MOBILE.APNS.COLLAPSE_ID"),
        Some(collapse_of("iphone").as_str()),
        "APNs' collapse id: {:?}",
        calls[0]
    );
    assert_eq!(
        attribute(&calls[0], "AWS.SNS.MOBILE.APNS.PUSH_TYPE"),
        Some("alert")
    );
    assert_eq!(
        calls[0].get("MessageStructure").map(String::as_str),
        Some("json")
    );

    // FCM says the pixel's token is unregistered (SNS disables its endpoint): the next push to
    // it removes the registration and deletes the endpoint; the iPhone still gets it.
    disable(&fcm_arn).await?;
    let mut c = Client::connect(&gateways()[1], &carol).await?;
    c.send_accepted("c1", &bob, "after the pixel went away")
        .await?;
    let to_iphone = published_soon(&apns, 2).await?;
    assert_eq!(to_iphone.len(), 2);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    // (The registration goes first, then its endpoint.)
    let exists = |arn: String| async move {
        sns_call(&[("Action", "GetEndpointAttributes"), ("EndpointArn", &arn)])
            .await
            .map(|status| status == 200)
    };
    while (registered(&bob, "pixel").await?.is_some() || exists(fcm_arn.clone()).await?)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        registered(&bob, "pixel").await?,
        None,
        "a disabled endpoint's registration goes"
    );
    assert!(
        !exists(fcm_arn.clone()).await?,
        "its platform endpoint is deleted"
    );
    assert!(exists(apns_arn.clone()).await?);

    // The app registers the iPhone's token again after SNS disabled it: enabled again.
    disable(&apns_arn).await?;
    let (status, _) = api_call(
        "PUT",
        "/v1/devices/iphone/push",
        Some(&bob),
        &json!({"kind": "apns", "token": apns}).to_string(),
    )
    .await?;
    assert_eq!(status, 204);
    let again = &sns_endpoints().await?[&apns];
    assert_eq!(
        again["arn"].as_str(),
        Some(apns_arn.as_str()),
        "the same endpoint"
    );
    assert_eq!(again["attributes"]["Enabled"], json!(true));
    // And pushes go to it again.
    let mut d = Client::connect(&gateways()[0], &user("dave")).await?;
    d.send_accepted("d1", &bob, "after it came back").await?;
    assert_eq!(published_soon(&apns, 3).await?.len(), 3);
    Ok(())
}
