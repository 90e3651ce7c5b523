//! `connect-local-api`: the local stack's HTTP API (`LOCAL_API_ADDR`, 127.0.0.1:8090). Like API
//! Gateway's HTTP API it matches the route, builds the payload-2.0 event JSON, and hands it to
//! the very handler the Lambda runs (`connect_api::HttpApi::handle`, parsed by `lambda_http` as
//! the Lambda runtime parses it); the handler's response goes back as it is.

use std::net::SocketAddr;

use anyhow::Context;
use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::info;

use connect_api::{event_json, match_route, HttpApi};
use connect_core::ApiError;
use connect_protocol::ErrorCode;

/// API Gateway's payload limit.
const MAX_BODY: usize = 10 * 1024 * 1024;

/// An error answered here, before any handler runs, in the contract's shape.
fn contract_error(code: ErrorCode, message: &str) -> Response {
    let e = ApiError::new(code, message);
    (
        StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        e.body(),
    )
        .into_response()
}

async fn serve(
    State(api): State<HttpApi>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let Some((route, params)) = match_route(parts.method.as_str(), &path) else {
        return contract_error(ErrorCode::NotFound, "no such route");
    };
    let Ok(body) = to_bytes(body, MAX_BODY).await else {
        return contract_error(ErrorCode::TooLarge, "body too large");
    };
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let event = event_json(
        &route,
        &params,
        &path,
        &query,
        &headers,
        &String::from_utf8_lossy(&body),
        &peer.ip().to_string(),
    );
    let request = match lambda_http::request::from_str(&event) {
        Ok(r) => r,
        Err(e) => {
            return contract_error(ErrorCode::BadRequest, &e.to_string());
        }
    };
    let response = api.handle(request).await;
    let (parts, body) = response.into_parts();
    let bytes: Vec<u8> = match body {
        lambda_http::Body::Empty => Vec::new(),
        lambda_http::Body::Text(t) => t.into_bytes(),
        lambda_http::Body::Binary(b) => b,
        _ => Vec::new(),
    };
    Response::from_parts(parts, Body::from(bytes))
}

/// What API Gateway's CORS configuration (template.yaml, `CorsConfiguration`) does, for the web
/// client served by the gateways on another port: preflights answered here, before any handler;
/// `LOCAL_API_CORS_ORIGINS` (comma-separated, `*` = any) like the template's `WebOrigins`.
fn cors(origins: &str) -> anyhow::Result<CorsLayer> {
    let allow = if origins.trim() == "*" {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .split(',')
                .map(|o| o.trim().trim_end_matches('/'))
                .filter(|o| !o.is_empty())
                .map(|o| {
                    o.parse()
                        .with_context(|| format!("LOCAL_API_CORS_ORIGINS: {o:?}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
        )
    };
    Ok(CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            axum::http::Method::GET,
            axum::http::Method::POST,
            axum::http::Method::PUT,
            axum::http::Method::DELETE,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(600)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = connect_config::Settings::from_process();
    connect_service::telemetry::init_tracing(&settings);
    let addr: SocketAddr = settings.parsed("LOCAL_API_ADDR", "127.0.0.1:8090".parse()?)?;
    let api = HttpApi::from_settings(
        &settings,
        Some(connect_api::push_config(&settings).map_err(anyhow::Error::msg)?),
        true,
    )
    .await
    .map_err(anyhow::Error::msg)
    .context("configuring the HTTP API")?;
    let app = Router::new()
        .fallback(serve)
        .with_state(api)
        .layer(cors(&settings.string("LOCAL_API_CORS_ORIGINS", "*"))?);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    info!(%addr, "local HTTP API listening");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(connect_service::shutdown_signal())
    .await?;
    Ok(())
}
