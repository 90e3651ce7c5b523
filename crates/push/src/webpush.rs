//! Web Push (RFC 8030): one push to one browser subscription, encrypted per RFC 8291
//! (`aes128gcm`) and signed with VAPID (RFC 8292) by `web-push-native`, sent by our own HTTP
//! client: every address checked ([`crate::endpoint`]), no redirect followed, a timeout per send.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Digest as _;
use web_push_native::{p256, Auth, WebPushBuilder};

use connect_core::push::EndpointRule;

use crate::endpoint::{self, CheckedResolver};
use crate::vapid::Vapid;
use crate::PushError;

type HttpsClient =
    Client<hyper_rustls::HttpsConnector<HttpConnector<CheckedResolver>>, Full<Bytes>>;

/// How Web Push requests are sent.
#[derive(Debug, Clone, Copy)]
pub struct WebPushConfig {
    /// The longest a send (connect, TLS, request, answer) may take.
    pub timeout: Duration,
    /// How long the push service keeps an undelivered push (`TTL`; also the VAPID token's
    /// lifetime, which RFC 8292 caps at 24 h).
    pub ttl: Duration,
    /// The local stack: its own push service on `http://localhost` / `http://127.0.0.1` too.
    pub allow_local: bool,
}

impl Default for WebPushConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            ttl: Duration::from_secs(12 * 3600),
            allow_local: false,
        }
    }
}

/// A browser's push subscription, as registered (keys in base64url).
#[derive(Debug, Clone, Copy)]
pub struct Subscription<'a> {
    pub endpoint: &'a str,
    pub p256dh: &'a str,
    pub auth: &'a str,
}

/// RFC 8030 `Urgency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    VeryLow,
    Low,
    Normal,
    High,
}

impl Urgency {
    fn header(self) -> &'static str {
        match self {
            Self::VeryLow => "very-low",
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
        }
    }
}

/// One push: its plaintext, its `Topic` (a newer push with the same topic replaces one the
/// service still holds) and its `Urgency`.
#[derive(Debug, Clone)]
pub struct WebPush {
    pub body: Vec<u8>,
    pub topic: Option<String>,
    pub urgency: Urgency,
}

/// A `Topic` for `key`: RFC 8030 allows at most 32 characters of the base64url alphabet, so the
/// key (a conversation id has `:`) is hashed.
pub fn topic(key: &str) -> String {
    let digest = sha2::Sha256::digest(key.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..24])
}

fn decode(name: &str, value: &str) -> Result<Vec<u8>, PushError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|_| PushError::Refused(format!("subscription {name} is not base64url")))
}

/// Sends Web Push requests.
#[derive(Clone)]
pub struct WebPushSender {
    strict: HttpsClient,
    /// For the local stack's own push service (loopback allowed); none elsewhere.
    local: Option<HttpsClient>,
    vapid: Vapid,
    config: WebPushConfig,
}

fn client(config: &WebPushConfig, allow_loopback: bool) -> Result<HttpsClient, PushError> {
    let mut http = HttpConnector::new_with_resolver(CheckedResolver { allow_loopback });
    http.enforce_http(false);
    http.set_connect_timeout(Some(config.timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
        .map_err(|e| PushError::Refused(format!("TLS roots: {e}")))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(https))
}

/// Whether a client error came from the resolver refusing an address (for good) rather than the
/// network (may pass).
fn refused_address(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

impl WebPushSender {
    pub fn new(vapid: Vapid, config: WebPushConfig) -> Result<Self, PushError> {
        Ok(Self {
            strict: client(&config, false)?,
            local: if config.allow_local {
                Some(client(&config, true)?)
            } else {
                None
            },
            vapid,
            config,
        })
    }

    pub fn vapid(&self) -> &Vapid {
        &self.vapid
    }

    /// Sends one push. `Gone` means the subscription is dead (remove it); `Refused` will not
    /// pass; `Unavailable` may.
    pub async fn send(&self, to: &Subscription<'_>, push: &WebPush) -> Result<(), PushError> {
        let rule = EndpointRule {
            allow_local: self.config.allow_local,
        };
        let local = endpoint::check(to.endpoint, rule).await?;
        let client = match (&self.local, local) {
            (Some(client), true) => client,
            (None, true) => return Err(PushError::Refused("local endpoints not allowed".into())),
            (_, false) => &self.strict,
        };
        let uri: http::Uri = to
            .endpoint
            .parse()
            .map_err(|e| PushError::Refused(format!("endpoint: {e}")))?;
        let ua_public = p256::PublicKey::from_sec1_bytes(&decode("p256dh", to.p256dh)?)
            .map_err(|_| PushError::Refused("subscription p256dh is not a P-256 point".into()))?;
        let auth: [u8; 16] = decode("auth", to.auth)?
            .try_into()
            .map_err(|_| PushError::Refused("subscription auth must be 16 bytes".into()))?;
        let request = WebPushBuilder::new(uri, ua_public, Auth::from(auth))
            .with_valid_duration(self.config.ttl)
            .with_vapid(self.vapid.key_pair(), self.vapid.contact())
            .build(push.body.clone())
            .map_err(|e| PushError::Refused(format!("building the push: {e}")))?;
        let (mut parts, body) = request.into_parts();
        parts.headers.insert(
            "urgency",
            http::HeaderValue::from_static(push.urgency.header()),
        );
        if let Some(topic) = &push.topic {
            let value = http::HeaderValue::from_str(topic)
                .map_err(|_| PushError::Refused("topic is not a header value".into()))?;
            parts.headers.insert("topic", value);
        }
        let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
        let answer = tokio::time::timeout(self.config.timeout, client.request(request))
            .await
            .map_err(|_| PushError::Unavailable("push service timed out".into()))?
            .map_err(|e| {
                if refused_address(&e) {
                    PushError::Refused(format!("endpoint refused: {e}"))
                } else {
                    PushError::Unavailable(format!("push service unreachable: {e}"))
                }
            })?;
        match answer.status().as_u16() {
            200..=299 => Ok(()),
            s @ (404 | 410) => Err(PushError::Gone(s)),
            s @ (429 | 500..=599) => {
                Err(PushError::Unavailable(format!("push service answered {s}")))
            }
            s @ 300..=399 => Err(PushError::Refused(format!(
                "push service answered {s}; redirects are not followed"
            ))),
            s => Err(PushError::Refused(format!("push service answered {s}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_is_32_characters_of_base64url() {
        let t = topic("dm:alice:bob");
        assert_eq!(t.len(), 32);
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(t, topic("dm:alice:carol"));
    }

    #[tokio::test]
    async fn a_subscription_into_our_network_is_never_contacted() {
        let sender = WebPushSender::new(Vapid::development(), WebPushConfig::default()).unwrap();
        let to = Subscription {
            endpoint: "https://169.254.169.254/latest",
            p256dh: "BPzEwyx3K81k__lbPNILGxDrKFcLmEGxWFSL5SalGvPUdvo8jkfuufU8yj1TFrSw0eR2i7mgMEIqY0Yj1U4Gxlo",
            auth: "AAECAwQFBgcICQoLDA0ODw",
        };
        let push = WebPush {
            body: b"{}".to_vec(),
            topic: None,
            urgency: Urgency::High,
        };
        assert!(matches!(
            sender.send(&to, &push).await,
            Err(PushError::Refused(_))
        ));
    }
}
