//! The web client, served beside `/ws`: the page (`/`, `/app.js`, `/app.css`, and `/sw.js`, the
//! service worker that shows pushes; built into the binary from `gateway/web/`), `/config.json` (where the HTTP API is, whether development
//! sign-in is on) and, on the local stack only, `POST /dev/token` (a token for any user id).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use connect_core::auth::TokenIssuer;
use connect_protocol::{ErrorCode, UserId};

use crate::server::http_error;
use crate::state::Gateway;

const INDEX: &str = include_str!("../web/index.html");
const SCRIPT: &str = include_str!("../web/app.js");
const STYLE: &str = include_str!("../web/app.css");
const WORKER: &str = include_str!("../web/sw.js");

/// The largest development sign-in body (`{"user":"…"}` is under 100 bytes).
const DEV_SIGN_IN_MAX_BYTES: usize = 1024;

/// How long a development token lives.
pub const DEV_TOKEN_TTL_SECS: u64 = 12 * 3600;

/// The page's routes.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(script))
        .route("/app.css", get(style))
        .route("/sw.js", get(worker))
        .route("/config.json", get(config))
        .route(
            "/dev/token",
            post(dev_token).layer(DefaultBodyLimit::max(DEV_SIGN_IN_MAX_BYTES)),
        )
        .with_state(gw)
}

/// The page's Content-Security-Policy: its own script and style only; sockets to any gateway;
/// fetches to the HTTP API.
fn csp(api: &str) -> String {
    let api = origin_of(api).unwrap_or("");
    format!(
        "default-src 'self'; connect-src 'self' ws: wss: {api}; img-src 'self' data:; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
}

/// `scheme://host[:port]` of a URL (`None` for a relative one).
fn origin_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let end = rest
        .find('/')
        .map_or(url.len(), |i| url.len() - rest.len() + i);
    Some(&url[..end])
}

fn asset(gw: &Gateway, content_type: &'static str, body: &'static str) -> Response {
    let mut res = (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response();
    if let Ok(policy) = HeaderValue::from_str(&csp(&gw.cfg.web_api_url)) {
        res.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    res
}

async fn index(State(gw): State<Arc<Gateway>>) -> Response {
    asset(&gw, "text/html; charset=utf-8", INDEX)
}

async fn script(State(gw): State<Arc<Gateway>>) -> Response {
    asset(&gw, "text/javascript; charset=utf-8", SCRIPT)
}

async fn style(State(gw): State<Arc<Gateway>>) -> Response {
    asset(&gw, "text/css; charset=utf-8", STYLE)
}

/// The service worker that shows pushes (scope `/`, the page's).
async fn worker(State(gw): State<Arc<Gateway>>) -> Response {
    asset(&gw, "text/javascript; charset=utf-8", WORKER)
}

async fn config(State(gw): State<Arc<Gateway>>) -> Response {
    let body = serde_json::json!({
        "api": gw.cfg.web_api_url,
        "devSignIn": gw.cfg.dev_sign_in,
    });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body.to_string(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct DevSignIn {
    user: String,
}

/// `POST /dev/token {"user":"alice"}` → `{"user","token","exp"}`: development sign-in, on the
/// local stack only (`CONNECT_ENV=local`); everywhere else 404, as if the route did not exist.
async fn dev_token(
    State(gw): State<Arc<Gateway>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !gw.cfg.dev_sign_in {
        return http_error(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "development sign-in is off (local stack only)",
        );
    }
    // Over the body limit (or unreadable): the contract's error shape, not axum's text.
    let body = match body {
        Ok(body) => body,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return http_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::TooLarge,
                "a sign-in body is at most 1 KiB",
            )
        }
        Err(e) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                &e.body_text(),
            )
        }
    };
    let request: DevSignIn = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                &format!("expected {{\"user\":\"<user id>\"}}: {e}"),
            )
        }
    };
    let user = match UserId::parse(&request.user) {
        Ok(user) => user,
        Err(e) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                &format!("bad user id: {e}"),
            )
        }
    };
    let exp = connect_core::now_ms() / 1000 + DEV_TOKEN_TTL_SECS;
    let token = TokenIssuer::new(&gw.cfg.secret).mint_until(user.as_str(), exp);
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        serde_json::json!({"user": user.as_str(), "token": token, "exp": exp}).to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_the_api_origin() {
        assert_eq!(
            origin_of("http://127.0.0.1:8090"),
            Some("http://127.0.0.1:8090")
        );
        assert_eq!(
            origin_of("https://api.example.com/prod"),
            Some("https://api.example.com")
        );
        assert_eq!(origin_of("/v1"), None);
        assert!(csp("https://api.example.com/prod")
            .contains("connect-src 'self' ws: wss: https://api.example.com;"));
    }

    #[test]
    fn the_page_loads_its_script_and_style() {
        assert!(INDEX.contains(r#"src="/app.js""#));
        assert!(INDEX.contains(r#"href="/app.css""#));
        // Nothing inline: the policy allows only the page's own files.
        assert!(!INDEX.contains("<script>") && !INDEX.contains("style="));
    }
}
