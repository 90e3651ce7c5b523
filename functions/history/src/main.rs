//! Lambda `history`: API Gateway HTTP API v2 → `connect_api::HttpApi` (the same handler the
//! local HTTP API serves). Config: see `HttpApi::from_env`.

use std::convert::Infallible;

use lambda_http::{service_fn, Request};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    connect_service::telemetry::init_tracing();
    let api = connect_api::HttpApi::from_env().await?;
    let api = &api;
    lambda_http::run(service_fn(move |req: Request| async move {
        Ok::<_, Infallible>(api.handle(req).await)
    }))
    .await
}
