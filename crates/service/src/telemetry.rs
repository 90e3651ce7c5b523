//! Logs and metrics.

#[cfg(feature = "ops")]
pub use metrics_exporter_prometheus::PrometheusHandle;
#[cfg(feature = "ops")]
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tracing_subscriber::EnvFilter;

/// `RUST_LOG` filters (default `info`); `LOG_FORMAT=json` for AWS, pretty otherwise.
pub fn init_tracing(settings: &connect_config::Settings) {
    let filter = settings
        .optional("RUST_LOG")
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let json = settings.optional("LOG_FORMAT").is_some_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.compact().try_init()
    };
}

/// Why the metrics recorder could not be installed (final: the process does not start).
#[cfg(feature = "ops")]
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("installing the Prometheus recorder: {0}")]
    Recorder(#[from] metrics_exporter_prometheus::BuildError),
    #[error("starting the metrics upkeep thread: {0}")]
    Upkeep(#[from] std::io::Error),
}

/// How often recorded histogram samples are folded into their buckets (`run_upkeep`).
#[cfg(feature = "ops")]
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the process-wide Prometheus recorder; latency histograms get millisecond buckets.
///
/// The recorder keeps every histogram sample until it is folded into its buckets, which
/// `install_recorder` leaves to a scrape of `/metrics`: with nothing scraping, memory grew with
/// every message (the soak run: messaging +15 MiB, gateways +7 MiB in 30 minutes at 200 msg/s).
/// A thread runs the upkeep every 5 s, scraped or not.
#[cfg(feature = "ops")]
pub fn install_metrics() -> Result<PrometheusHandle, MetricsError> {
    let buckets = [
        0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("seconds".into()), &buckets)?
        .install_recorder()?;
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            upkeep.run_upkeep();
        })?;
    Ok(handle)
}
