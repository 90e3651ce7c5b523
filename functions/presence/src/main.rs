//! Lambda `presence`: `GET /v1/users/{user}/presence` → `connect_api::HttpApi` (the same handler
//! the local HTTP API serves; who may watch whom lives in `connect_core::presence`, the views in
//! Redis).

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let settings = connect_config::Settings::from_process();
    connect_service::telemetry::init_tracing(&settings);
    connect_api::run_lambda(connect_api::Serves::Presence, settings).await
}

#[cfg(test)]
mod tests {
    /// The handler answers the function's sample event (`events/presence.json`), on the local stack.
    #[tokio::test]
    async fn answers_its_sample_event() {
        let (status, body) =
            connect_api::samples::answer(connect_api::Serves::Presence, "presence").await;
        assert!((200..300).contains(&status), "{status}: {body}");
    }
}
