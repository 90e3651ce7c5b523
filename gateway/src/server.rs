//! HTTP beside the WebSocket: `GET /ws` (auth at the upgrade, then tokio-tungstenite on the raw
//! upgraded socket) and `/healthz` on the public listener; the management API and `/metrics` on
//! the management listener (or the same one, when no second is configured).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use connect_service::telemetry::PrometheusHandle;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use metrics::counter;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, warn};

use connect_protocol::ErrorCode;

use crate::connection;
use crate::state::Gateway;

/// The WebSocket route, `/ws`, and the web client's (`/`, see [`crate::web`]): what the load
/// balancer forwards, with `/healthz`.
pub fn public_router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/ws", get(upgrade))
        .with_state(gw.clone())
        .merge(crate::web::router(gw))
}

/// The internal routes: the management API (`/@connections`), `/healthz` and `/metrics`.
pub fn management_router(gw: Arc<Gateway>, metrics: PrometheusHandle) -> Router {
    crate::management::router(gw).merge(connect_service::ops::router(metrics))
}

/// The contract's HTTP error body.
pub fn http_error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        connect_core::ApiError::new(code, message).body(),
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}

fn query_param<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn query_token(uri: &Uri) -> Option<&str> {
    query_param(uri, "token")
}

fn header_is(headers: &HeaderMap, name: header::HeaderName, want: &str) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(want)))
}

/// Whether the upgrade's `Origin` (a browser's) is allowed: any without an allow-list, and any
/// request without `Origin` (native clients send none).
fn origin_allowed(headers: &HeaderMap, allowed: Option<&[String]>) -> bool {
    let (Some(allowed), Some(origin)) = (allowed, headers.get(header::ORIGIN)) else {
        return true;
    };
    let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
    allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
}

async fn upgrade(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>,
    mut req: Request,
) -> Response {
    // The client, not the load balancer in front: what the trusted proxies say they saw.
    let client = gw.cfg.trusted_proxies.client(addr.ip(), req.headers());
    if !origin_allowed(req.headers(), gw.cfg.allowed_origins.as_deref()) {
        counter!("connect_gateway_upgrades_refused_total", "reason" => "origin").increment(1);
        return http_error(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "origin not allowed",
        );
    }
    let Some(token) = bearer(req.headers()).or_else(|| query_token(req.uri())) else {
        counter!("connect_gateway_upgrades_refused_total", "reason" => "token").increment(1);
        return http_error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing token",
        );
    };
    let verified = match gw.verifier.verify_until(token) {
        Ok(verified) => verified,
        Err(e) => {
            debug!(cause = %e, source = %client, "token refused");
            counter!("connect_gateway_upgrades_refused_total", "reason" => "token").increment(1);
            return http_error(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                connect_core::auth::REFUSED,
            );
        }
    };
    let user = verified.user.clone();
    // `?device=<id>`: acks and redelivery are per device (same alphabet as a user id).
    let device = match query_param(req.uri(), "device") {
        None => connect_core::model::DEFAULT_DEVICE.to_owned(),
        Some(d) => match connect_protocol::UserId::parse(d) {
            Ok(d) => d.to_string(),
            Err(e) => {
                return http_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    &format!("bad device id: {e}"),
                )
            }
        },
    };
    let headers = req.headers();
    let key = match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key)
            if header_is(headers, header::UPGRADE, "websocket")
                && header_is(headers, header::CONNECTION, "upgrade")
                && header_is(headers, header::SEC_WEBSOCKET_VERSION, "13") =>
        {
            derive_accept_key(key.as_bytes())
        }
        _ => {
            return http_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "expected a WebSocket upgrade (version 13)",
            )
        }
    };
    if gw.stopping() {
        return http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "gateway is shutting down",
        );
    }
    let Ok(permit) = gw.permits.clone().try_acquire_owned() else {
        counter!("connect_gateway_upgrades_refused_total", "reason" => "gateway_full").increment(1);
        return http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "connection limit reached",
        );
    };
    let admitted = match gw.admission.admit(&user, client) {
        Ok(admitted) => admitted,
        Err(refused) => {
            let reason = match refused {
                crate::limits::Refused::User(_) => "user_connections",
                crate::limits::Refused::Address(_) => "address_connections",
            };
            counter!("connect_gateway_upgrades_refused_total", "reason" => reason).increment(1);
            return http_error(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                &refused.to_string(),
            );
        }
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<OnUpgrade>() else {
        return http_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "connection cannot be upgraded",
        );
    };
    let peer = connection::Peer {
        user,
        expires_at_secs: gw.cfg.close_on_token_expiry.then_some(verified.exp),
        admitted,
        device,
        source_ip: client.to_string(),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    };
    let guard = gw.tracker.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let config = WebSocketConfig::default()
                    .read_buffer_size(gw.cfg.ws_read_buffer)
                    .write_buffer_size(gw.cfg.ws_write_buffer)
                    .max_message_size(Some(gw.cfg.max_ws_message_bytes))
                    .max_frame_size(Some(gw.cfg.max_ws_message_bytes));
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                connection::run(gw, ws, peer).await;
            }
            Err(e) => warn!(cause = %e, "upgrade failed"),
        }
        drop(permit);
        drop(guard);
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, key)
        .body(Body::empty())
        .unwrap_or_default()
}
