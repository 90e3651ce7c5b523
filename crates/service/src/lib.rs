//! What the binaries share: tracing and shutdown for all; with feature `ops` (gateway,
//! messaging, the benchmarks) the metrics recorder and the ops routes, which the Lambdas do not
//! link.
//!
//! # Layout
//! - [`telemetry`]: `tracing` (pretty locally, JSON in AWS) and the Prometheus recorder.
//! - [`ops`]: the `/healthz` + `/metrics` routes.
//! - [`shutdown_signal`]: resolves on Ctrl-C or SIGTERM.
//! - [`alloc`] (feature `jemalloc`): [`jemalloc!`], the binaries' allocator.

#[cfg(feature = "jemalloc")]
pub mod alloc;
#[cfg(feature = "ops")]
pub mod ops;
pub mod telemetry;

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
