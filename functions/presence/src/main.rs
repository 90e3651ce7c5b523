//! Lambda `presence`: `GET /v1/users/{user}/presence` → `connect_api::HttpApi` (the same handler
//! the local HTTP API serves; who may watch whom lives in `connect_core::presence`, the views in
//! Redis).

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let settings = connect_config::Settings::from_process();
    connect_service::telemetry::init_tracing(&settings);
    connect_api::run_lambda(connect_api::Serves::Presence, settings).await
}
