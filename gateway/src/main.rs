//! Gateway Service: WebSocket connections, session registry, delivery from its own slot of
//! `outgoing_messages`.
//!
//! # Layout
//! - `config`: [`config::Config`] from env vars.
//! - `app`: builds the parts and runs until stopped (graceful drain on SIGTERM).
//! - `server`: `GET /ws` (JWT at the upgrade), `/healthz`, `/metrics`.
//! - `connection`: one socket's loop.
//! - `hub`: local connections by user; delivery into bounded per-connection queues.
//! - `delivery`: the slot's Kafka consumer.
//! - `heartbeat`: slot lease renewal and session refresh.
//! - `rate`: the per-connection token bucket.

mod app;
mod config;
mod connection;
mod delivery;
mod heartbeat;
mod hub;
mod management;
mod rate;
mod server;
mod state;

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    connect_service::telemetry::init_tracing();
    let metrics = connect_service::telemetry::install_metrics()?;
    let cfg = config::Config::from_env().context("reading the gateway config")?;
    let app = app::Application::build(cfg, metrics).await?;
    app.run_until_stopped(connect_service::shutdown_signal())
        .await
}
