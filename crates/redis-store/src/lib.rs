//! Redis (ElastiCache) adapter.
//!
//! # Layout
//! - [`registry`]: [`RedisRegistry`], the session registry (`sess:{user}` hash: connection →
//!   route with its own expiry, so a crashed gateway's sessions age out while others live on).
//! - [`dedupe`]: [`RedisDedupe`], (sender, client id) → acceptance, with a TTL.
//! - [`offline`]: [`RedisLog`], the offline state: conversation logs (on their own server,
//!   `REDIS_LOG_URL`, the one part that may be evicted), inboxes, device cursors.
//! - [`presence`]: [`RedisPresence`], presence per user (`pres:{user}`, beside its sessions) and
//!   the due offline checks.
//! - [`slots`]: [`SlotLease`], a gateway's lease on one partition of `outgoing_messages`.
//!
//! - [`conn`]: [`RedisConn`], a single server or a cluster (ElastiCache cluster mode).
//!
//! Every multi-key call is a [`conn::Batch`] of single-key commands: one pipeline on a single
//! server, one pipeline per hash slot in a cluster (a command never spans slots).

pub mod conn;
pub mod dedupe;
pub mod offline;
pub mod presence;
pub mod push;
pub mod registry;
pub mod slots;

pub use dedupe::RedisDedupe;
pub use offline::{OfflineLimits, RedisLog};
pub use presence::{PresenceConfig, RedisPresence};
pub use push::{RedisPushDevices, RedisPushGate};
pub use registry::RedisRegistry;
pub use slots::{LeaseError, SlotLease};

pub use conn::RedisConn;
/// The client crate, for callers that name its types.
pub use redis;

use std::time::Duration;

use connect_core::PortError;

/// Where Redis is and how to reach it: `REDIS_URL` (the state; `redis://127.0.0.1:6380`),
/// `REDIS_LOG_URL` (the offline logs' own server; none: the state's), `REDIS_CLUSTER`
/// (`false`), `REDIS_CA_FILE`, `REDIS_PASSWORD`, `REDIS_RESPONSE_TIMEOUT_MS` and
/// `REDIS_CONNECT_TIMEOUT_MS`.
#[derive(Clone)]
pub struct RedisConfig {
    pub url: String,
    pub log_url: Option<String>,
    /// `url` is a comma-separated list of cluster nodes to discover the cluster from
    /// (ElastiCache's configuration endpoint is one such node).
    pub cluster: bool,
    /// With `rediss://`: trust only this PEM CA bundle (a private CA), not the system's CAs.
    pub ca_file: Option<String>,
    /// ElastiCache's AUTH token (the Lambdas get it from `REDIS_AUTH_SECRET_ARN`,
    /// `connect_secrets`): it authenticates every connection, each cluster node's included.
    pub password: Option<String>,
    /// A command with no answer by then fails as unavailable (the caller retries or refuses).
    /// Long enough that a server busy for a moment (a reconnect storm's burst of
    /// registrations) answers late rather than failing every connection waiting on it.
    pub response_timeout: Duration,
    /// A connection (or reconnection) attempt gives up after this.
    pub connect_timeout: Duration,
}

/// [`RedisConfig::response_timeout`]'s default.
pub const RESPONSE_TIMEOUT_DEFAULT: Duration = Duration::from_millis(2000);
/// [`RedisConfig::connect_timeout`]'s default.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_millis(1000);

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            log_url: None,
            cluster: false,
            ca_file: None,
            password: None,
            response_timeout: RESPONSE_TIMEOUT_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
        }
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.url)
            .field("log_url", &self.log_url)
            .field("cluster", &self.cluster)
            .field("ca_file", &self.ca_file)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("response_timeout", &self.response_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl RedisConfig {
    pub fn from_settings(
        s: &connect_config::Settings,
    ) -> Result<Self, connect_config::ConfigError> {
        Ok(Self {
            url: s.string("REDIS_URL", "redis://127.0.0.1:6380"),
            log_url: s.optional("REDIS_LOG_URL"),
            cluster: s.parsed("REDIS_CLUSTER", false)?,
            ca_file: s.optional("REDIS_CA_FILE"),
            password: s.optional("REDIS_PASSWORD"),
            response_timeout: Duration::from_millis(s.parsed(
                "REDIS_RESPONSE_TIMEOUT_MS",
                RESPONSE_TIMEOUT_DEFAULT.as_millis() as u64,
            )?),
            connect_timeout: Duration::from_millis(s.parsed(
                "REDIS_CONNECT_TIMEOUT_MS",
                CONNECT_TIMEOUT_DEFAULT.as_millis() as u64,
            )?),
        })
    }

    /// One plain server at `url` (tests, tools).
    pub fn single(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            ..Self::default()
        }
    }
}

/// Connects to the state's Redis (`cfg.url`): one server, or with `cfg.cluster` a cluster. A
/// `rediss://` URL speaks TLS (ElastiCache in-transit encryption). Both kinds reconnect by
/// themselves.
pub async fn connect(cfg: &RedisConfig) -> Result<RedisConn, redis::RedisError> {
    connect_to(&cfg.url, cfg).await
}

/// Connects to the server(s) at `url` as `cfg` says (cluster, TLS, AUTH).
pub async fn connect_to(url: &str, cfg: &RedisConfig) -> Result<RedisConn, redis::RedisError> {
    let (ca_file, password) = (cfg.ca_file.as_deref(), cfg.password.as_deref());
    if cfg.cluster {
        let conn = cluster_builder(url, ca_file, password)?
            .response_timeout(cfg.response_timeout)
            .connection_timeout(cfg.connect_timeout)
            .build()?
            .get_async_connection()
            .await?;
        Ok(RedisConn::Cluster(conn))
    } else {
        let client = client(url, ca_file, password)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(cfg.response_timeout))
            .set_connection_timeout(Some(cfg.connect_timeout));
        let conn = redis::aio::ConnectionManager::new_with_config(client, config).await?;
        Ok(RedisConn::Single(conn))
    }
}

/// The offline logs' server (`cfg.log_url`): its own (production: one that evicts under memory
/// pressure), or, without one, `state`'s (one server for everything, as a development stack may
/// run).
pub async fn connect_logs(
    state: &RedisConn,
    cfg: &RedisConfig,
) -> Result<RedisConn, redis::RedisError> {
    match &cfg.log_url {
        Some(url) => connect_to(url, cfg).await,
        None => Ok(state.clone()),
    }
}

/// The client for `url`, trusting `ca_file` (PEM) instead of the system's CAs when given, and
/// authenticating with `password` when given (in place of one in the URL).
pub fn client(
    url: &str,
    ca_file: Option<&str>,
    password: Option<&str>,
) -> Result<redis::Client, redis::RedisError> {
    let mut info = redis::IntoConnectionInfo::into_connection_info(url)?;
    if let Some(password) = password {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    match root_cert(ca_file)? {
        None => redis::Client::open(info),
        Some(root_cert) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            },
        ),
    }
}

/// The cluster client for the comma-separated node URLs in `urls`, trusting `ca_file` (PEM)
/// instead of the system's CAs when given, authenticating to every node with `password`.
fn cluster_builder(
    urls: &str,
    ca_file: Option<&str>,
    password: Option<&str>,
) -> Result<redis::cluster::ClusterClientBuilder, redis::RedisError> {
    let nodes: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let mut builder = redis::cluster::ClusterClient::builder(nodes);
    if let Some(password) = password {
        builder = builder.password(password);
    }
    if let Some(root_cert) = root_cert(ca_file)? {
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        });
    }
    Ok(builder)
}

/// The PEM CA bundle to trust, if one is given; installs rustls's crypto provider first
/// (AWS-LC, as the AWS SDK uses; a no-op when one is installed already).
fn root_cert(ca_file: Option<&str>) -> Result<Option<Vec<u8>>, redis::RedisError> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    ca_file
        .map(|f| {
            std::fs::read(f).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "REDIS_CA_FILE unreadable",
                    format!("{f}: {e}"),
                ))
            })
        })
        .transpose()
}

pub(crate) fn unavailable(e: redis::RedisError) -> PortError {
    PortError::unavailable("redis", e)
}

#[cfg(test)]
mod tests {
    /// TLS is built in: a `rediss://` client can be made (making one does not connect).
    #[test]
    fn rediss_urls_are_understood() {
        let c = super::client("rediss://cache.example:6379", None, None).expect("a TLS client");
        assert!(matches!(
            c.get_connection_info().addr(),
            redis::ConnectionAddr::TcpTls { .. }
        ));
        assert!(super::client(
            "rediss://cache.example:6379",
            Some("/nonexistent/ca.pem"),
            None
        )
        .is_err());
    }
}
