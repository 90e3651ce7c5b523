//! The gateway's implementation of the API Gateway Management API, so the offline-delivery
//! function reaches a connection with `aws-sdk-apigatewaymanagement` exactly as it would reach a
//! real API Gateway WebSocket API: `POST` (send data), `GET` (connection info) and `DELETE`
//! (close) on `/@connections/{connectionId}`.
//!
//! Internal only: every call must carry `x-connect-internal-token` = `CONNECT_INTERNAL_TOKEN`
//! (403 otherwise), and in AWS the load balancer forwards only `/ws` and `/healthz`. Errors look
//! like API Gateway's: `x-amzn-ErrorType` names the exception, the SDK maps 410 to
//! `GoneException`.

use std::sync::Arc;

use aws_smithy_types::date_time::{DateTime, Format};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use metrics::counter;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use connect_core::auth::INTERNAL_TOKEN_HEADER;

use crate::hub::{Out, Posted};
use crate::state::Gateway;

pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route(
            "/@connections/{connection}",
            post(post_to_connection)
                .get(get_connection)
                .delete(delete_connection),
        )
        .route_layer(middleware::from_fn_with_state(gw.clone(), require_token))
        .with_state(gw)
}

fn exception(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::HeaderName::from_static("x-amzn-errortype"), kind),
        ],
        serde_json::json!({ "message": message }).to_string(),
    )
        .into_response()
}

fn gone() -> Response {
    exception(StatusCode::GONE, "GoneException", "no such connection")
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Every management call carries the internal token, or gets 403.
async fn require_token(
    State(gw): State<Arc<Gateway>>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let given = req
        .headers()
        .get(INTERNAL_TOKEN_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if same(given, gw.cfg.internal_token.as_bytes()) {
        return next.run(req).await;
    }
    counter!("connect_gateway_management_calls_total", "result" => "forbidden").increment(1);
    exception(
        StatusCode::FORBIDDEN,
        "ForbiddenException",
        "missing or wrong internal token",
    )
}

async fn post_to_connection(
    State(gw): State<Arc<Gateway>>,
    Path(connection): Path<String>,
    body: Bytes,
) -> Response {
    if body.len() > gw.cfg.max_post_bytes {
        return exception(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLargeException",
            "data is over GATEWAY_MAX_POST_BYTES",
        );
    }
    let Ok(text) = Utf8Bytes::try_from(body) else {
        return exception(
            StatusCode::BAD_REQUEST,
            "BadRequestException",
            "data must be UTF-8 text",
        );
    };
    // The offline-delivery function's last post: release the live messages held while the
    // backlog came (not forwarded: it is not a client frame).
    let out = if text.as_str() == connect_core::offline::CAUGHT_UP {
        Out::CaughtUp
    } else {
        Out::Posted(text)
    };
    // A backlog is paced by its connection: a post waits a little for room in the queue; a
    // queue that stays full answers 429 (as API Gateway does when it throttles), so the drain
    // comes back to this connection later instead of holding up everyone else's.
    match gw.hub.post_paced(&connection, out, gw.cfg.post_wait).await {
        Posted::Queued => {
            counter!("connect_gateway_management_calls_total", "result" => "posted").increment(1);
            StatusCode::OK.into_response()
        }
        Posted::Busy => {
            counter!("connect_gateway_management_calls_total", "result" => "busy").increment(1);
            exception(
                StatusCode::TOO_MANY_REQUESTS,
                "LimitExceededException",
                "the connection is not keeping up; post again later",
            )
        }
        Posted::Gone => {
            counter!("connect_gateway_management_calls_total", "result" => "gone").increment(1);
            gone()
        }
    }
}

fn timestamp(ms: u64) -> String {
    DateTime::from_millis(ms as i64)
        .fmt(Format::DateTime)
        .unwrap_or_default()
}

async fn get_connection(
    State(gw): State<Arc<Gateway>>,
    Path(connection): Path<String>,
) -> Response {
    let Some(info) = gw.hub.info(&connection) else {
        return gone();
    };
    let body = serde_json::json!({
        "connectedAt": timestamp(info.connected_at_ms),
        "lastActiveAt": timestamp(connect_core::now_ms()),
        "identity": { "sourceIp": info.source_ip, "userAgent": info.user_agent },
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn delete_connection(
    State(gw): State<Arc<Gateway>>,
    Path(connection): Path<String>,
) -> Response {
    if gw.hub.info(&connection).is_none() {
        return gone();
    }
    // A full queue evicts the connection instead: closed either way.
    gw.hub.post(&connection, Out::Close);
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert!(!same(b"", b"a"));
    }

    #[test]
    fn timestamps_are_iso_8601() {
        assert_eq!(timestamp(1_763_800_000_123), "2025-11-22T08:26:40.123Z");
    }
}
