//! `connect-gateway`: the Gateway Service's binary (the parts are in the library).

use anyhow::Context;
use connect_gateway::{app, config};

// jemalloc, so memory freed when connections close goes back to the OS.
connect_service::jemalloc!();

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = connect_config::Settings::from_process();
    connect_service::telemetry::init_tracing(&settings);
    let metrics = connect_service::telemetry::install_metrics()?;
    let mut cfg = config::Config::from_settings(&settings).context("reading the gateway config")?;
    cfg.discover_endpoint(&settings)
        .await
        .context("finding the task's own address")?;
    // One file per connection: take the hard limit rather than the shell's soft one.
    let files = rlimit::increase_nofile_limit(u64::MAX).context("raising the open-file limit")?;
    if files < cfg.max_connections as u64 + 256 {
        tracing::warn!(
            files,
            max_connections = cfg.max_connections,
            "the open-file limit caps connections below GATEWAY_MAX_CONNECTIONS"
        );
    }
    let app = app::Application::build(cfg, metrics).await?;
    app.run_until_stopped(connect_service::shutdown_signal())
        .await
}
