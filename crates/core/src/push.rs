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
    /// An APNs device token or an FCM registration token, delivered through Amazon SNS mobile
    /// push: `arn` is the SNS platform endpoint made for the token at registration (empty until
    /// then).
    Mobile {
        platform: Platform,
        token: String,
        arn: String,
    },
}

impl Registration {
    /// `webpush`, `apns` or `fcm`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::WebPush { .. } => "webpush",
            Self::Mobile { platform, .. } => platform.as_str(),
        }
    }
}

/// A mobile push service, reached through an Amazon SNS platform application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    Apns,
    Fcm,
}

impl Platform {
    /// `apns` or `fcm` (the registration's `kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Apns => "apns",
            Self::Fcm => "fcm",
        }
    }

    pub fn parse(kind: &str) -> Option<Self> {
        match kind {
            "apns" => Some(Self::Apns),
            "fcm" => Some(Self::Fcm),
            _ => None,
        }
    }
}

/// Why a platform endpoint could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// The deployment has no SNS platform application for this kind.
    #[error("{} push is not enabled on this deployment", .0.as_str())]
    NotEnabled(Platform),
    /// SNS refused the token (malformed for its platform).
    #[error("the push service refused the token: {0}")]
    Refused(String),
    /// SNS failed; `retryable` says whether trying again may help.
    #[error("SNS: {message}")]
    Failed { message: String, retryable: bool },
}

impl From<PlatformError> for ApiError {
    fn from(e: PlatformError) -> Self {
        match e {
            PlatformError::NotEnabled(_) | PlatformError::Refused(_) => bad(e.to_string()),
            PlatformError::Failed { .. } => ApiError::new(ErrorCode::Unavailable, e.to_string()),
        }
    }
}

/// Amazon SNS mobile push's platform endpoints: one per device token, made at registration.
#[async_trait::async_trait]
pub trait PlatformEndpoints: Send + Sync {
    /// The platform endpoint of `token` on `platform`'s application (made, or the existing one
    /// found and enabled again with this token); its ARN.
    async fn endpoint(&self, platform: Platform, token: &str) -> Result<String, PlatformError>;
}

/// A deployment without SNS platform applications: APNs and FCM registrations get 400.
pub struct NoPlatforms;

#[async_trait::async_trait]
impl PlatformEndpoints for NoPlatforms {
    async fn endpoint(&self, platform: Platform, _: &str) -> Result<String, PlatformError> {
        Err(PlatformError::NotEnabled(platform))
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
        other => match Platform::parse(other) {
            Some(platform) => Ok(Registration::Mobile {
                platform,
                token: token(body.token)?,
                arn: String::new(),
            }),
            None => Err(bad(format!(
                "unknown kind {other:?} (webpush, apns or fcm)"
            ))),
        },
    }
}

/// Checks where a web push endpoint points beyond its form (the addresses its host resolves to:
/// `connect_push::endpoint`); an `Err` is the 400's message.
#[async_trait::async_trait]
pub trait EndpointCheck: Send + Sync {
    async fn check(&self, endpoint: &str, rule: EndpointRule) -> Result<(), EndpointRefused>;
}

/// Why an endpoint is refused (final: the registration is answered 400 with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EndpointRefused(pub String);

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

/// Groups of more than this many members push nothing (PROTOCOL.md).
pub const MAX_GROUP: usize = 1024;

/// A push to send (messaging → the push function: each record on `push_requests` holds one
/// batch's, a JSON array):
/// one per (message, registered device of a recipient with no live session on it). The push
/// function collapses them per (device, conversation) and sends the newest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PushRequest {
    pub user: UserId,
    pub device: String,
    pub conversation: connect_protocol::ConversationId,
    pub seq: u64,
    pub from: UserId,
    /// The first [`PREVIEW_CHARS`] characters of the body.
    pub preview: String,
    /// When the message was accepted (ms).
    pub ts: u64,
}

impl PushRequest {
    /// The payload, with the recipient's unread count in the conversation.
    pub fn payload(&self, unread: u64) -> Payload {
        Payload {
            conversation: self.conversation.to_string(),
            seq: self.seq,
            from: self.from.to_string(),
            preview: self.preview.clone(),
            unread,
            group: self.conversation.group_id().map(ToString::to_string),
        }
    }
}

/// The push requests of one stored message: every member of its `audience` but the sender
/// (`registered[i]`: the devices of `audience[i]` registered for push; `live[i]`: the devices
/// with an open connection), each registered device without a live one. None for a system
/// message or an audience above [`MAX_GROUP`] (a direct conversation's audience is its two
/// users).
pub fn requests(
    message: &crate::model::StoredMessage,
    audience: &[UserId],
    registered: &[Vec<String>],
    live: &[Vec<String>],
) -> Vec<PushRequest> {
    if message.event.is_some() || audience.len() > MAX_GROUP {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, user) in audience.iter().enumerate() {
        if *user == message.from {
            continue;
        }
        let on = live.get(i).map_or(&[][..], Vec::as_slice);
        for device in registered.get(i).into_iter().flatten() {
            if !on.contains(device) {
                out.push(PushRequest {
                    user: user.clone(),
                    device: device.clone(),
                    conversation: message.conversation.clone(),
                    seq: message.seq,
                    from: message.from.clone(),
                    preview: preview(&message.body),
                    ts: message.ts,
                });
            }
        }
    }
    out
}

/// How long a (device, conversation) gets no second push after one (PROTOCOL.md: at most one
/// per 5 s).
pub const COLLAPSE_MS: u64 = 5_000;

/// Why a push was not sent by its transport.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The push service says the registration is dead (404/410, an unregistered token): it
    /// goes.
    #[error("registration gone: {0}")]
    Gone(String),
    /// Not sent; `retryable` says whether trying again later may help.
    #[error("not sent: {message}")]
    Failed { message: String, retryable: bool },
}

/// Sends one payload to one registration: Web Push itself, APNs and FCM through Amazon SNS.
/// `collapse` names the (device, conversation): a newer push with it replaces an older one the
/// service still holds (Web Push `Topic`, APNs `apns-collapse-id`, FCM `collapse_key`).
#[async_trait::async_trait]
pub trait PushTransport: Send + Sync {
    async fn send(
        &self,
        registration: &Registration,
        payload: &Payload,
        collapse: &str,
    ) -> Result<(), TransportError>;

    /// Cleans up after a registration the push service called dead (SNS: its platform endpoint
    /// is deleted). Best effort.
    async fn forget(&self, _registration: &Registration) {}
}

/// The collapse windows (Redis): a window per key opens at most once per `window_ms`.
#[async_trait::async_trait]
pub trait PushGate: Send + Sync {
    /// For each key, whether its window was open (then it is closed for `window_ms` from now).
    async fn open(&self, keys: &[String], window_ms: u64) -> Result<Vec<bool>, crate::PortError>;
    /// Opens the keys' windows again (a window opened for a push that was not sent).
    async fn release(&self, keys: &[String]) -> Result<(), crate::PortError>;
    /// Keeps each request as its key's pending push (replacing an older one). For each, when
    /// its window closes (ms since the epoch) if nothing was pending: a [`Deferred`] must then
    /// be scheduled; otherwise the one already scheduled will send this newer request.
    async fn defer(
        &self,
        pending: &[(String, PushRequest)],
        window_ms: u64,
    ) -> Result<Vec<Option<u64>>, crate::PortError>;
    /// Takes the key's pending push, if any.
    async fn take(&self, key: &str) -> Result<Option<PushRequest>, crate::PortError>;
}

/// A push held back by its window, to be sent when the window closes (the push function →
/// `push_later`, key = user): the newest request of the (device, conversation) then goes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deferred {
    /// The collapse key (`<user>|<device>|<conversation>`).
    pub key: String,
    pub user: UserId,
    /// When the window closes (ms since the epoch).
    pub due_ms: u64,
}

/// What the push function reads and writes.
#[derive(Clone, Copy)]
pub struct DeliverPorts<'a> {
    pub registry: &'a dyn crate::ports::PushRegistry,
    pub devices: &'a dyn crate::ports::PushDevices,
    pub sessions: &'a dyn crate::ports::SessionRegistry,
    pub log: &'a dyn crate::ports::ConversationLog,
    pub markers: &'a dyn crate::ports::ReadMarkers,
    pub gate: &'a dyn PushGate,
    pub transport: &'a dyn PushTransport,
}

/// What one batch of push requests came to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeliverReport {
    pub sent: usize,
    /// Older requests of a (device, conversation) with a newer one in the batch.
    pub superseded: usize,
    /// The device had acked the message by then.
    pub acked: usize,
    /// The device had a live connection by then.
    pub live: usize,
    /// A push went to the (device, conversation) less than the window ago: held back as its
    /// pending push (the newest wins), sent when the window closes.
    pub collapsed: usize,
    /// Held-back pushes to schedule (the first held back in each window).
    pub deferred: Vec<Deferred>,
    /// The device is no longer registered (the mirror lagged): taken out of it.
    pub unregistered: usize,
    /// The push service said the registration is dead: removed.
    pub gone: usize,
    /// Not sent (the transport failed).
    pub failed: usize,
}

/// Sends the pushes held back until their windows closed: waits for the latest of `deferred`
/// to fall due (at most `window_ms`, so a batch never waits longer than one window), takes each
/// key's pending push (the newest of its window) and sends them as [`deliver`] does (checked
/// again: acked or connected meanwhile, nothing goes).
pub async fn flush(
    ports: DeliverPorts<'_>,
    deferred: Vec<Deferred>,
    window_ms: u64,
) -> Result<DeliverReport, crate::PortError> {
    let due = deferred.iter().map(|d| d.due_ms).max().unwrap_or(0);
    let wait = due.saturating_sub(crate::now_ms()).min(window_ms);
    if wait > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    }
    let mut keys: Vec<String> = deferred.into_iter().map(|d| d.key).collect();
    keys.sort();
    keys.dedup();
    let mut requests = Vec::new();
    for key in &keys {
        requests.extend(ports.gate.take(key).await?);
    }
    deliver(ports, requests, window_ms).await
}

/// Sends a batch of push requests: the newest per (device, conversation), to devices that have
/// not acked it and have no live connection, at most one per (device, conversation) per
/// `window_ms`, with the recipient's unread count in the conversation. A registration the push
/// service calls dead is removed. `Err`: a backend the checks need is down (the batch may be
/// tried again; what was sent is collapsed then).
pub async fn deliver(
    ports: DeliverPorts<'_>,
    requests: Vec<PushRequest>,
    window_ms: u64,
) -> Result<DeliverReport, crate::PortError> {
    use std::collections::HashMap;
    let mut report = DeliverReport::default();
    // The newest per (user, device, conversation), in first-seen order.
    let mut order: Vec<PushRequest> = Vec::new();
    let mut at: HashMap<(UserId, String, connect_protocol::ConversationId), usize> = HashMap::new();
    for r in requests {
        let key = (r.user.clone(), r.device.clone(), r.conversation.clone());
        match at.get(&key) {
            Some(&i) => {
                report.superseded += 1;
                if r.seq > order[i].seq {
                    order[i] = r;
                }
            }
            None => {
                at.insert(key, order.len());
                order.push(r);
            }
        }
    }
    if order.is_empty() {
        return Ok(report);
    }
    // At most one per window: the window first (one pipelined call), so a request held back
    // costs no other read; the newest held back is checked like any other when it goes.
    let keys: Vec<String> = order
        .iter()
        .map(|r| format!("{}|{}|{}", r.user, r.device, r.conversation))
        .collect();
    let open = ports.gate.open(&keys, window_ms).await?;
    let mut kept = Vec::new();
    let mut held = Vec::new();
    for ((r, key), open) in order.into_iter().zip(keys).zip(open) {
        if open {
            kept.push((r, key));
        } else {
            held.push((key, r));
        }
    }
    report.collapsed = held.len();
    if !held.is_empty() {
        let due = ports.gate.defer(&held, window_ms).await?;
        for ((key, r), due_ms) in held.into_iter().zip(due) {
            if let Some(due_ms) = due_ms {
                report.deferred.push(Deferred {
                    key,
                    user: r.user,
                    due_ms,
                });
            }
        }
    }
    if kept.is_empty() {
        return Ok(report);
    }
    // Acked by the device since?
    let mut devices: Vec<(UserId, String)> = kept
        .iter()
        .map(|(r, _)| (r.user.clone(), r.device.clone()))
        .collect();
    devices.sort();
    devices.dedup();
    let cursors =
        futures_util::future::try_join_all(devices.iter().map(|(u, d)| ports.log.cursors(u, d)))
            .await?;
    let cursor_of: HashMap<&(UserId, String), &HashMap<String, u64>> =
        devices.iter().zip(&cursors).collect();
    // Connected since?
    let mut users: Vec<UserId> = kept.iter().map(|(r, _)| r.user.clone()).collect();
    users.sort();
    users.dedup();
    let sessions = ports.sessions.lookup(&users).await?;
    let live: HashMap<&UserId, Vec<String>> = users
        .iter()
        .zip(&sessions)
        .map(|(u, routes)| (u, routes.iter().filter_map(|r| r.device.clone()).collect()))
        .collect();
    let mut unsent = Vec::new();
    kept.retain(|(r, key)| {
        let acked = cursor_of
            .get(&(r.user.clone(), r.device.clone()))
            .and_then(|c| c.get(&r.conversation.to_string()))
            .is_some_and(|&seq| seq >= r.seq);
        let on = !acked && live.get(&r.user).is_some_and(|d| d.contains(&r.device));
        report.acked += usize::from(acked);
        report.live += usize::from(on);
        if acked || on {
            unsent.push(key.clone());
        }
        !(acked || on)
    });
    // Nothing went to those: a message that comes next (the device gone away) pushes at once.
    if !unsent.is_empty() {
        ports.gate.release(&unsent).await?;
    }
    if kept.is_empty() {
        return Ok(report);
    }
    let regs = ports
        .registry
        .get(
            &kept
                .iter()
                .map(|(r, _)| (r.user.clone(), r.device.clone()))
                .collect::<Vec<_>>(),
        )
        .await?;
    let markers = ports
        .markers
        .get(
            &kept
                .iter()
                .map(|(r, _)| (r.user.clone(), r.conversation.clone()))
                .collect::<Vec<_>>(),
        )
        .await?;
    let sends = kept
        .iter()
        .zip(&regs)
        .zip(&markers)
        .map(|(((r, key), reg), markers)| async move {
            let Some(reg) = reg else {
                return (r, None, None);
            };
            let payload = r.payload(r.seq.saturating_sub(markers.read));
            (
                r,
                Some(reg),
                Some(ports.transport.send(reg, &payload, key).await),
            )
        });
    for (r, reg, outcome) in futures_util::future::join_all(sends).await {
        match outcome {
            None => {
                report.unregistered += 1;
                let _ = ports.devices.remove(&r.user, &r.device).await;
            }
            Some(Ok(())) => report.sent += 1,
            Some(Err(TransportError::Gone(why))) => {
                report.gone += 1;
                tracing::info!(user = %r.user, device = %r.device, why, "push registration gone; removed");
                ports.registry.unregister(&r.user, &r.device).await?;
                let _ = ports.devices.remove(&r.user, &r.device).await;
                if let Some(reg) = reg {
                    ports.transport.forget(reg).await;
                }
            }
            Some(Err(e)) => {
                report.failed += 1;
                tracing::warn!(user = %r.user, device = %r.device, cause = %e, "push not sent");
            }
        }
    }
    Ok(report)
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
            Registration::Mobile {
                platform: Platform::Apns,
                token: "a1b2".into(),
                arn: String::new(),
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

    fn stored(from: &str, conversation: &str, seq: u64, body: &str) -> crate::model::StoredMessage {
        crate::model::StoredMessage {
            conversation: connect_protocol::ConversationId::parse(conversation).unwrap(),
            seq,
            from: UserId::parse(from).unwrap(),
            id: connect_protocol::ClientMsgId::parse(format!("m{seq}")).unwrap(),
            body: body.into(),
            ts: 7,
            event: None,
            mv: None,
            device: None,
        }
    }

    fn users(names: &[&str]) -> Vec<UserId> {
        names.iter().map(|n| UserId::parse(*n).unwrap()).collect()
    }

    fn devices(lists: &[&[&str]]) -> Vec<Vec<String>> {
        lists
            .iter()
            .map(|l| l.iter().map(|d| (*d).to_owned()).collect())
            .collect()
    }

    #[test]
    fn registered_devices_without_a_connection_get_requests_but_never_the_senders() {
        let m = stored("alice", "dm:alice:bob", 3, &"x".repeat(150));
        let got = requests(
            &m,
            &users(&["alice", "bob"]),
            &devices(&[&["tablet"], &["phone", "laptop"]]),
            &devices(&[&[], &["laptop"]]),
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (got[0].user.as_str(), got[0].device.as_str(), got[0].seq),
            ("bob", "phone", 3)
        );
        assert_eq!(got[0].preview.len(), PREVIEW_CHARS);
        let p = got[0].payload(2);
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"conversation":"dm:alice:bob","seq":3,"from":"alice","preview":"x".repeat(100),"unread":2})
        );
        // A group's payload names the group; a system message pushes nothing.
        let g = stored("alice", "group:g_1", 9, "hi");
        let got = requests(
            &g,
            &users(&["alice", "bob"]),
            &devices(&[&[], &["phone"]]),
            &[],
        );
        assert_eq!(got[0].payload(1).group.as_deref(), Some("g_1"));
        let mut event = g.clone();
        event.event = Some(connect_protocol::GroupEvent {
            kind: "group_created".into(),
            user: None,
        });
        assert!(requests(
            &event,
            &users(&["alice", "bob"]),
            &devices(&[&[], &["phone"]]),
            &[]
        )
        .is_empty());
    }

    #[test]
    fn groups_above_the_limit_push_nothing() {
        let g = stored("u0", "group:g_1", 1, "hi");
        let big: Vec<UserId> = (0..=MAX_GROUP)
            .map(|i| UserId::parse(format!("u{i}")).unwrap())
            .collect();
        let registered = vec![vec!["phone".to_owned()]; big.len()];
        assert!(requests(&g, &big, &registered, &[]).is_empty());
        assert_eq!(
            requests(&g, &big[..MAX_GROUP], &registered, &[]).len(),
            MAX_GROUP - 1
        );
    }

    /// A gate in memory, and a transport that records what it sends (or says a device is gone).
    #[derive(Default)]
    struct Sink {
        closed: std::sync::Mutex<std::collections::HashSet<String>>,
        sent: std::sync::Mutex<Vec<(String, Payload)>>,
        gone: std::sync::Mutex<Vec<String>>,
        forgotten: std::sync::Mutex<Vec<String>>,
        pending: std::sync::Mutex<std::collections::HashMap<String, PushRequest>>,
    }

    #[async_trait::async_trait]
    impl PushGate for Sink {
        async fn open(&self, keys: &[String], _: u64) -> Result<Vec<bool>, crate::PortError> {
            // As Redis does: a pipeline of no command is an error.
            if keys.is_empty() {
                return Err(crate::PortError::unavailable("redis", "empty command"));
            }
            let mut closed = self.closed.lock().unwrap();
            Ok(keys.iter().map(|k| closed.insert(k.clone())).collect())
        }

        async fn release(&self, keys: &[String]) -> Result<(), crate::PortError> {
            let mut closed = self.closed.lock().unwrap();
            for k in keys {
                closed.remove(k);
            }
            Ok(())
        }

        async fn defer(
            &self,
            held: &[(String, PushRequest)],
            _: u64,
        ) -> Result<Vec<Option<u64>>, crate::PortError> {
            let mut pending = self.pending.lock().unwrap();
            Ok(held
                .iter()
                .map(|(key, r)| {
                    let old = pending.insert(key.clone(), r.clone());
                    old.is_none().then_some(0)
                })
                .collect())
        }

        async fn take(&self, key: &str) -> Result<Option<PushRequest>, crate::PortError> {
            Ok(self.pending.lock().unwrap().remove(key))
        }
    }

    #[async_trait::async_trait]
    impl PushTransport for Sink {
        async fn send(&self, r: &Registration, p: &Payload, _: &str) -> Result<(), TransportError> {
            let Registration::Mobile { token, .. } = r else {
                unreachable!()
            };
            if self.gone.lock().unwrap().contains(token) {
                return Err(TransportError::Gone("410".into()));
            }
            self.sent.lock().unwrap().push((token.clone(), p.clone()));
            Ok(())
        }

        async fn forget(&self, r: &Registration) {
            if let Registration::Mobile { arn, .. } = r {
                self.forgotten.lock().unwrap().push(arn.clone());
            }
        }
    }

    fn request(user: &str, device: &str, conversation: &str, seq: u64) -> PushRequest {
        PushRequest {
            user: UserId::parse(user).unwrap(),
            device: device.into(),
            conversation: connect_protocol::ConversationId::parse(conversation).unwrap(),
            seq,
            from: UserId::parse("alice").unwrap(),
            preview: "hi".into(),
            ts: 1,
        }
    }

    #[tokio::test]
    async fn the_newest_goes_once_per_window_and_not_to_acked_or_connected_devices() {
        use crate::ports::{ConversationLog, PushRegistry, ReadMarkers, SessionRegistry};
        let mem = std::sync::Arc::new(crate::memory::Memory::default());
        let sink = Sink::default();
        let bob = UserId::parse("bob").unwrap();
        for device in ["phone", "watch", "laptop"] {
            let token = Registration::Mobile {
                platform: Platform::Apns,
                token: device.into(),
                arn: format!("arn:{device}"),
            };
            mem.register(&bob, device, &token, 0).await.unwrap();
        }
        let dm = connect_protocol::ConversationId::parse("dm:alice:bob").unwrap();
        ReadMarkers::put(
            &*mem,
            &[(
                bob.clone(),
                dm.clone(),
                crate::model::Markers {
                    read: 2,
                    delivered: 2,
                    ts: 0,
                },
            )],
        )
        .await
        .unwrap();
        mem.ack(&bob, "watch", "dm:alice:bob", 5).await.unwrap();
        mem.upsert(&[crate::model::Session {
            user: bob.clone(),
            route: crate::model::SessionRoute {
                conn: "c1".into(),
                slot: 0,
                gateway: "g".into(),
                endpoint: "e".into(),
                device: Some("laptop".into()),
            },
        }])
        .await
        .unwrap();
        let ports = DeliverPorts {
            registry: &*mem,
            devices: &*mem,
            sessions: &*mem,
            log: &*mem,
            markers: &*mem,
            gate: &sink,
            transport: &sink,
        };
        let batch = vec![
            request("bob", "phone", "dm:alice:bob", 4),
            request("bob", "phone", "dm:alice:bob", 5),
            request("bob", "watch", "dm:alice:bob", 5),
            request("bob", "laptop", "dm:alice:bob", 5),
        ];
        let r = deliver(ports, batch, COLLAPSE_MS).await.unwrap();
        assert_eq!(
            (r.sent, r.superseded, r.acked, r.live),
            (1, 1, 1, 1),
            "{r:?}"
        );
        let sent = sink.sent.lock().unwrap().clone();
        assert_eq!(sent[0].0, "phone");
        assert_eq!((sent[0].1.seq, sent[0].1.unread), (5, 3));
        // Nothing went to the watch or the laptop: their windows are open again.
        assert_eq!(
            *sink.closed.lock().unwrap(),
            std::collections::HashSet::from(["bob|phone|dm:alice:bob".to_owned()])
        );
        // Within the window: held back, the newest winning, one deferral per window.
        let one = |seq| vec![request("bob", "phone", "dm:alice:bob", seq)];
        let r = deliver(ports, one(6), COLLAPSE_MS).await.unwrap();
        assert_eq!((r.sent, r.collapsed, r.deferred.len()), (0, 1, 1));
        let deferred = r.deferred;
        let r = deliver(ports, one(7), COLLAPSE_MS).await.unwrap();
        assert_eq!(
            (r.collapsed, r.deferred.len()),
            (1, 0),
            "one already scheduled"
        );
        // The window closes: the newest goes.
        sink.closed.lock().unwrap().clear();
        let r = flush(ports, deferred, COLLAPSE_MS).await.unwrap();
        assert_eq!(r.sent, 1);
        assert_eq!(
            sink.sent.lock().unwrap().last().map(|(_, p)| p.seq),
            Some(7)
        );
        let r = flush(ports, vec![], COLLAPSE_MS).await.unwrap();
        assert_eq!(r.sent, 0, "nothing pending any more");
        // Dead at the service: the registration goes.
        sink.gone.lock().unwrap().push("phone".into());
        sink.closed.lock().unwrap().clear();
        let r = deliver(ports, one(8), COLLAPSE_MS).await.unwrap();
        assert_eq!(r.gone, 1);
        assert_eq!(*sink.forgotten.lock().unwrap(), ["arn:phone"]);
        assert_eq!(
            PushRegistry::get(&*mem, &[(bob.clone(), "phone".to_owned())])
                .await
                .unwrap(),
            vec![None]
        );
        // Not registered (any more): nothing sent.
        sink.closed.lock().unwrap().clear();
        let r = deliver(ports, one(9), COLLAPSE_MS).await.unwrap();
        assert_eq!((r.sent, r.unregistered), (0, 1));
    }
}
