//! `/healthz` and `/metrics`, merged into each service's HTTP router.

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

/// The ops routes. `/healthz` answers 200 `ok`; `/metrics` the Prometheus text format.
pub fn router(handle: PrometheusHandle) -> Router {
    health().route("/metrics", get(move || std::future::ready(handle.render())))
}

/// `/healthz` alone (for a public listener, where `/metrics` is not exposed).
pub fn health() -> Router {
    Router::new().route("/healthz", get(|| async { (StatusCode::OK, "ok") }))
}
