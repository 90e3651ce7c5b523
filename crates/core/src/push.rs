//! Push registrations (PROTOCOL.md "Push notifications"): what a device registers, the checks a
//! registration passes before it is stored, and the payload a push carries.
//!
//! What is checked here needs no I/O: the body's shape, the kind, the sizes of keys and tokens,
//! and the endpoint's form (an `https` URL; `http://localhost` or `http://127.0.0.1` only when
//! the local stack allows its own push service). That the endpoint's name resolves to public
//! addresses only is the push crate's check (`connect_push::endpoint`), made at registration
//! and again at every send.

use base64::Engine as _;
use serde::Deserialize;

use connect_protocol::{ErrorCode, UserId};

use crate::ApiError;

/// The longest endpoint URL taken (browsers' endpoints are ~200 bytes).
pub const MAX_ENDPOINT_BYTES: usize = 2048;
/// The longest APNs or FCM token taken (APNs: 64 hex digits; FCM: ~160 characters).
pub const MAX_TOKEN_BYTES: usize = 4096;
/// How many characters of a message's body a push previews.
pub const PREVIEW_CHARS: usize = 100;

/// A device's push registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// A browser's PushSubscription: the push service's endpoint and the keys to encrypt for it
    /// (RFC 8291), both base64url as the browser gives them.
    WebPush {
        endpoint: String,
        p256dh: String,
        auth: String,
    },
    /// An APNs device token (delivered through Amazon SNS).
    Apns { token: String },
    /// An FCM registration token (delivered through Amazon SNS).
    Fcm { token: String },
}

impl Registration {
    /// `webpush`, `apns` or `fcm`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::WebPush { .. } => "webpush",
            Self::Apns { .. } => "apns",
            Self::Fcm { .. } => "fcm",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Keys {
    p256dh: String,
    auth: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    kind: String,
    endpoint: Option<String>,
    keys: Option<Keys>,
    token: Option<String>,
    /// Browsers' `PushSubscription.toJSON()` carries it; it is taken and ignored.
    #[serde(rename = "expirationTime")]
    _expiration_time: Option<serde_json::Value>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

/// Decodes base64url (padded or not) and checks the length.
fn key_bytes(name: &str, value: &str, len: usize) -> Result<Vec<u8>, ApiError> {
    let trimmed = value.trim_end_matches('=');
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .map_err(|_| bad(format!("keys.{name} is not base64url")))?;
    if bytes.len() != len {
        return Err(bad(format!("keys.{name} must be {len} bytes")));
    }
    Ok(bytes)
}

/// Where a web push endpoint may point, before any name is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointRule {
    /// The local stack: `http://localhost` and `http://127.0.0.1` (its own push service) too.
    pub allow_local: bool,
}

impl EndpointRule {
    /// Checks an endpoint's form: `https` with a host (or, locally, `http` to localhost /
    /// 127.0.0.1), no user info, at most [`MAX_ENDPOINT_BYTES`]. Returns the host and whether
    /// it is the local stack's own push service (then no address check follows).
    pub fn check<'a>(&self, endpoint: &'a str) -> Result<(&'a str, bool), ApiError> {
        if endpoint.len() > MAX_ENDPOINT_BYTES {
            return Err(bad("endpoint too long"));
        }
        let (scheme, rest) = endpoint
            .split_once("://")
            .ok_or_else(|| bad("endpoint must be an https URL"))?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(bad("endpoint must not carry credentials"));
        }
        if endpoint
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad("endpoint is not a URL"));
        }
        let host = host_of(authority).ok_or_else(|| bad("endpoint has no host"))?;
        match scheme.to_ascii_lowercase().as_str() {
            "https" => Ok((host, false)),
            "http" if self.allow_local && (host == "localhost" || host == "127.0.0.1") => {
                Ok((host, true))
            }
            _ => Err(bad("endpoint must be an https URL")),
        }
    }
}

/// The host of `host[:port]` (an IPv6 literal without its brackets); none when empty or when
/// the port is not a number.
fn host_of(authority: &str) -> Option<&str> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    (!host.is_empty()).then_some(host)
}

/// Parses and checks a `PUT /v1/devices/{device}/push` body (no I/O: the endpoint's addresses
/// are checked by the caller).
pub fn registration(body: &[u8], rule: EndpointRule) -> Result<Registration, ApiError> {
    let body: Body = serde_json::from_slice(body).map_err(|e| bad(format!("bad body: {e}")))?;
    let token = |token: Option<String>| -> Result<String, ApiError> {
        let token = token.ok_or_else(|| bad("token required"))?;
        if token.is_empty()
            || token.len() > MAX_TOKEN_BYTES
            || !token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(bad("token must be 1..4096 printable characters"));
        }
        Ok(token)
    };
    match body.kind.as_str() {
        "webpush" => {
            let endpoint = body.endpoint.ok_or_else(|| bad("endpoint required"))?;
            let keys = body.keys.ok_or_else(|| bad("keys required"))?;
            rule.check(&endpoint)?;
            let point = key_bytes("p256dh", &keys.p256dh, 65)?;
            if point[0] != 4 {
                return Err(bad("keys.p256dh must be an uncompressed P-256 point"));
            }
            key_bytes("auth", &keys.auth, 16)?;
            Ok(Registration::WebPush {
                endpoint,
                p256dh: keys.p256dh,
                auth: keys.auth,
            })
        }
        "apns" => Ok(Registration::Apns {
            token: token(body.token)?,
        }),
        "fcm" => Ok(Registration::Fcm {
            token: token(body.token)?,
        }),
        other => Err(bad(format!(
            "unknown kind {other:?} (webpush, apns or fcm)"
        ))),
    }
}

/// Checks where a web push endpoint points beyond its form (the addresses its host resolves to:
/// `connect_push::endpoint`); an `Err` is the 400's message.
#[async_trait::async_trait]
pub trait EndpointCheck: Send + Sync {
    async fn check(&self, endpoint: &str, rule: EndpointRule) -> Result<(), String>;
}

/// A device id as `?device=` takes it (a user id's alphabet and length).
pub fn device_id(device: &str) -> Result<String, ApiError> {
    UserId::parse(device)
        .map(|d| d.to_string())
        .map_err(|e| bad(format!("bad device id: {e}")))
}

/// What a push carries (PROTOCOL.md): `{"conversation","seq","from","preview","unread"}` and
/// `group` for a group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Payload {
    pub conversation: String,
    pub seq: u64,
    pub from: String,
    pub preview: String,
    pub unread: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub group: Option<String>,
}

/// The first [`PREVIEW_CHARS`] characters of a body.
pub fn preview(body: &str) -> String {
    body.chars().take(PREVIEW_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const P256DH: &str =
        "BPzEwyx3K81k__lbPNILGxDrKFcLmEGxWFSL5SalGvPUdvo8jkfuufU8yj1TFrSw0eR2i7mgMEIqY0Yj1U4Gxlo";
    const AUTH: &str = "AAECAwQFBgcICQoLDA0ODw";

    fn web(endpoint: &str) -> Vec<u8> {
        serde_json::json!({"kind":"webpush","endpoint":endpoint,"keys":{"p256dh":P256DH,"auth":AUTH}})
            .to_string()
            .into_bytes()
    }

    fn code(r: Result<Registration, ApiError>) -> Option<ErrorCode> {
        r.err().map(|e| e.code)
    }

    #[test]
    fn a_browser_subscription_and_tokens_parse() {
        let prod = EndpointRule::default();
        let r = registration(&web("https://push.example.com/send/abc"), prod).unwrap();
        assert_eq!(r.kind(), "webpush");
        let r = registration(br#"{"kind":"apns","token":"a1b2"}"#, prod).unwrap();
        assert_eq!(
            r,
            Registration::Apns {
                token: "a1b2".into()
            }
        );
        let r = registration(br#"{"kind":"fcm","token":"x:y-z"}"#, prod).unwrap();
        assert_eq!(r.kind(), "fcm");
        // The JSON of a browser's PushSubscription, as it comes.
        let browser = serde_json::json!({"kind":"webpush","endpoint":"https://p.example/x","expirationTime":null,"keys":{"p256dh":P256DH,"auth":AUTH}});
        assert!(registration(browser.to_string().as_bytes(), prod).is_ok());
    }

    #[test]
    fn bad_bodies_kinds_endpoints_and_keys_are_400() {
        let prod = EndpointRule::default();
        let local = EndpointRule { allow_local: true };
        for endpoint in [
            "http://10.0.0.1/push",
            "http://localhost:8095/notify/x",
            "ftp://push.example.com/",
            "https://user:pw@push.example.com/",
            "https:///nohost",
            "https://host:port/",
            "push.example.com/x",
            "https://push.example.com/a b",
        ] {
            assert_eq!(
                code(registration(&web(endpoint), prod)),
                Some(ErrorCode::BadRequest),
                "{endpoint}"
            );
        }
        assert!(registration(&web("http://localhost:8095/notify/x"), local).is_ok());
        assert!(registration(&web("http://127.0.0.1:8095/notify/x"), local).is_ok());
        assert!(
            registration(&web("http://10.0.0.1/push"), local).is_err(),
            "locally too, plain http only to the local push service"
        );
        let long = format!("https://p.example/{}", "x".repeat(MAX_ENDPOINT_BYTES));
        assert!(registration(&web(&long), prod).is_err());
        for body in [
            r#"{"kind":"sms","token":"1"}"#,
            r#"{"kind":"apns"}"#,
            r#"{"kind":"apns","token":""}"#,
            r#"{"kind":"fcm","token":"a b"}"#,
            r#"{"kind":"webpush","endpoint":"https://p.example/x"}"#,
            r#"{"kind":"webpush","endpoint":"https://p.example/x","keys":{"p256dh":"AAAA","auth":"AAECAwQFBgcICQoLDA0ODw"}}"#,
            r#"{"kind":"webpush","endpoint":"https://p.example/x","keys":{"p256dh":"BPzEwyx3K81k__lbPNILGxDrKFcLmEGxWFSL5SalGvPUdvo8jkfuufU8yj1TFrSw0eR2i7mgMEIqY0Yj1U4Gxlo","auth":"!!"}}"#,
            r#"{"kind":"apns","token":"t","extra":1}"#,
            "not json",
        ] {
            assert_eq!(
                code(registration(body.as_bytes(), prod)),
                Some(ErrorCode::BadRequest),
                "{body}"
            );
        }
    }

    #[test]
    fn hosts_are_taken_from_authorities() {
        assert_eq!(host_of("a.example:443"), Some("a.example"));
        assert_eq!(host_of("[::1]:8080"), Some("::1"));
        assert_eq!(host_of("[fe80::1]"), Some("fe80::1"));
        assert_eq!(host_of("a.example"), Some("a.example"));
        assert_eq!(host_of(""), None);
        assert_eq!(host_of("a.example:"), None);
    }

    #[test]
    fn a_preview_is_the_first_hundred_characters() {
        assert_eq!(preview("hi"), "hi");
        let long: String = "é".repeat(150);
        assert_eq!(preview(&long).chars().count(), 100);
    }
}
