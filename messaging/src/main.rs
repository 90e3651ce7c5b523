//! Messaging Service: consumes `incoming_messages` in a consumer group and runs the core
//! messaging step over the real adapters (Redis, DynamoDB, Kafka).
//!
//! # Layout
//! - `config`: [`config::Config`] from env vars.
//! - `app`: builds the parts ([`app::Application::build`]) and runs them until stopped.
//! - `consumer`: the batch / process / publish / commit loop, over a [`consumer::Source`].
//! - `metrics`: what a batch counts, with handles registered once.
//! - `presence`: the presence relay and the sweep of due offline checks, beside the message
//!   path (their own consumer group and batches).

mod app;
mod config;
mod consumer;
mod metrics;
mod presence;

use anyhow::Context;

// jemalloc: its per-thread caches make a batch's many small allocations (keys, frames, records)
// cheaper than glibc's malloc (47% of the step's instructions under it: `connect-bench step`).
connect_service::jemalloc!();

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = connect_config::Settings::from_process();
    connect_service::telemetry::init_tracing(&settings);
    let metrics = connect_service::telemetry::install_metrics()?;
    let cfg = config::Config::from_settings(&settings).context("reading the messaging config")?;
    let app = app::Application::build(cfg, metrics).await?;
    app.run(connect_service::shutdown_signal()).await
}
