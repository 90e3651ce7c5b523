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

use connect_core::PortError;

/// Connects as the environment says: `url` (`REDIS_URL`) is one server, or with
/// `REDIS_CLUSTER=true` a comma-separated list of cluster nodes to discover the cluster from
/// (ElastiCache's configuration endpoint is one such node). A `rediss://` URL speaks TLS
/// (ElastiCache in-transit encryption), trusting the system's CAs, or only the PEM CA bundle in
/// `REDIS_CA_FILE` when that is set (a private CA). `REDIS_PASSWORD` (ElastiCache's AUTH token;
/// the Lambdas get it from `REDIS_AUTH_SECRET_ARN`, `connect_secrets`) authenticates every
/// connection, each cluster node's included. Both kinds reconnect by themselves.
pub async fn connect(url: &str) -> Result<RedisConn, redis::RedisError> {
    let ca_file = connect_core::env::optional("REDIS_CA_FILE");
    let password = connect_core::env::optional("REDIS_PASSWORD");
    let cluster = connect_core::env::parsed("REDIS_CLUSTER", false).map_err(|e| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "REDIS_CLUSTER",
            e.to_string(),
        ))
    })?;
    if cluster {
        let conn = cluster_client(url, ca_file.as_deref(), password.as_deref())?
            .get_async_connection()
            .await?;
        Ok(RedisConn::Cluster(conn))
    } else {
        let client = client(url, ca_file.as_deref(), password.as_deref())?;
        let conn = redis::aio::ConnectionManager::new(client).await?;
        Ok(RedisConn::Single(conn))
    }
}

/// The offline logs' server (`REDIS_LOG_URL`): its own at `url` (production: one that evicts
/// under memory pressure), or, without one, `state`'s (one server for everything, as a
/// development stack may run).
pub async fn connect_logs(
    state: &RedisConn,
    url: Option<&str>,
) -> Result<RedisConn, redis::RedisError> {
    match url {
        Some(url) => connect(url).await,
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
pub fn cluster_client(
    urls: &str,
    ca_file: Option<&str>,
    password: Option<&str>,
) -> Result<redis::cluster::ClusterClient, redis::RedisError> {
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
    builder.build()
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
