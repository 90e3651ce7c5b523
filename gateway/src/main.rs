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
//! - `ecs`: the task's own address on ECS Fargate (task metadata endpoint v4).
//! - `emf`: the connection count as a CloudWatch embedded metric (autoscaling on AWS).
//! - `heartbeat`: slot lease renewal, session refresh (and presence with it).
//! - `presence`: transitions from this gateway's connections, `watch` checked and answered.
//! - `rate`: the per-connection token bucket.

mod app;
mod config;
mod connection;
mod delivery;
mod ecs;
mod emf;
mod heartbeat;
mod hub;
mod limits;
mod management;
mod outbox;
mod pacer;
mod presence;
mod rate;
mod server;
mod state;
#[cfg(test)]
mod tests;
mod web;

use anyhow::Context;

/// jemalloc, so memory freed when connections close goes back to the OS.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (a C string it reads at start): a background thread purges freed pages
/// after about a second, whether or not the gateway is busy. `_RJEM_MALLOC_CONF` in the
/// environment overrides them.
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: MallocConf =
    MallocConf(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:1000".as_ptr());

/// A thin pointer to a NUL-terminated string, shaped as jemalloc's `const char *malloc_conf`.
#[repr(transparent)]
pub struct MallocConf(*const std::ffi::c_char);

// SAFETY: it points at a static, immutable byte string.
unsafe impl Sync for MallocConf {}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    connect_service::telemetry::init_tracing();
    let metrics = connect_service::telemetry::install_metrics()?;
    let mut cfg = config::Config::from_env().context("reading the gateway config")?;
    cfg.discover_endpoint()
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
