//! Sending pushes.
//!
//! - [`vapid`]: the server's VAPID key pair (RFC 8292), whose public half browsers subscribe with.
//! - [`endpoint`]: where a push may go: an endpoint's form (`connect_core::push::EndpointRule`)
//!   and its addresses (public only), checked at registration and again at every send, and an
//!   HTTP resolver that refuses private addresses, so a name that changes its answer after
//!   registration (DNS rebinding) still reaches nothing inside.
//! - [`webpush`]: Web Push: the payload encrypted per RFC 8291 (`aes128gcm`) and signed with
//!   VAPID by `web-push-native` (pure Rust, and it only builds the request: the HTTP client is
//!   ours, so redirects are never followed, every send has a timeout and every address is
//!   checked), with `TTL`, `Topic` and `Urgency`.
//! - [`sns`]: APNs and FCM through Amazon SNS mobile push (platform endpoints made at
//!   registration, `Publish` with the collapse id / key).
//!
//! Why `web-push-native` over `web-push`: `web-push` brings its own HTTP client (isahc or
//! hyper 0.14) and OpenSSL through `ece`; `web-push-native` is RustCrypto only and hands back an
//! `http::Request`, which is what an SSRF-safe sender needs.

pub mod endpoint;
pub mod sns;
pub mod transport;
pub mod vapid;
pub mod webpush;

/// Why a push was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The push service says the subscription is gone (404 or 410): remove the registration.
    #[error("subscription gone (HTTP {0})")]
    Gone(u16),
    /// Refused for good (an endpoint or key that is not allowed or does not parse, a request the
    /// service rejects): trying again will not help.
    #[error("refused: {0}")]
    Refused(String),
    /// May pass (a timeout, a connection failure, 429, 5xx): try again later.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl PushError {
    /// Whether the same push may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}
