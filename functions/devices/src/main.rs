//! Lambda `devices`: the push routes of the HTTP API → `connect_api::HttpApi` (the same handler
//! the local HTTP API serves; the checks live in `connect_core::push` and `connect_push`).

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let settings = connect_config::Settings::from_process();
    connect_service::telemetry::init_tracing(&settings);
    connect_api::run_lambda(connect_api::Serves::Push, settings).await
}

#[cfg(test)]
mod tests {
    /// The handler answers the function's sample event (`events/devices.json`), on the local stack.
    #[tokio::test]
    async fn answers_its_sample_event() {
        let (status, body) =
            connect_api::samples::answer(connect_api::Serves::Push, "devices").await;
        assert!((200..300).contains(&status), "{status}: {body}");
    }
}
