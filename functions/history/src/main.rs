//! Lambda `history`: API Gateway HTTP API v2 → `connect_api::HttpApi` (the same handler the
//! local HTTP API serves). Config: see `HttpApi::from_env`.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    connect_service::telemetry::init_tracing();
    connect_api::run_lambda(connect_api::Serves::Api).await
}
