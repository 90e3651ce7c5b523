//! Redis (ElastiCache) adapter.
//!
//! # Layout
//! - [`registry`]: [`RedisRegistry`], the session registry (`sess:{user}` hash: connection →
//!   route with its own expiry, so a crashed gateway's sessions age out while others live on).
//! - [`dedupe`]: [`RedisDedupe`], (sender, client id) → acceptance, with a TTL.
//! - [`offline`]: [`RedisLog`], the offline state: conversation logs, inboxes, device cursors.
//! - [`slots`]: [`SlotLease`], a gateway's lease on one partition of `outgoing_messages`.
//!
//! Every multi-key call is one pipeline of single-key commands (one round trip, and valid in
//! cluster mode where a multi-key command would cross hash slots).

pub mod dedupe;
pub mod offline;
pub mod registry;
pub mod slots;

pub use dedupe::RedisDedupe;
pub use offline::{OfflineLimits, RedisLog};
pub use registry::RedisRegistry;
pub use slots::{LeaseError, SlotLease};

pub use redis::aio::ConnectionManager;

use connect_core::PortError;

/// Opens a self-reconnecting, multiplexed connection. A `rediss://` URL speaks TLS
/// (ElastiCache in transit encryption), trusting the system's CAs, or only the PEM CA bundle in
/// `REDIS_CA_FILE` when that is set (a private CA).
pub async fn connect(url: &str) -> Result<ConnectionManager, redis::RedisError> {
    ConnectionManager::new(client(
        url,
        connect_core::env::optional("REDIS_CA_FILE").as_deref(),
    )?)
    .await
}

/// The client for `url`, trusting `ca_file` (PEM) instead of the system's CAs when given.
pub fn client(url: &str, ca_file: Option<&str>) -> Result<redis::Client, redis::RedisError> {
    // rustls's crypto: AWS-LC, as the AWS SDK uses (a no-op when one is installed already).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let Some(ca_file) = ca_file else {
        return redis::Client::open(url);
    };
    let root_cert = std::fs::read(ca_file).map_err(|e| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "REDIS_CA_FILE unreadable",
            format!("{ca_file}: {e}"),
        ))
    })?;
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        },
    )
}

pub(crate) fn unavailable(e: redis::RedisError) -> PortError {
    PortError::unavailable("redis", e)
}

#[cfg(test)]
mod tests {
    /// TLS is built in: a `rediss://` client can be made (making one does not connect).
    #[test]
    fn rediss_urls_are_understood() {
        let c = super::client("rediss://cache.example:6379", None).expect("a TLS client");
        assert!(matches!(
            c.get_connection_info().addr(),
            redis::ConnectionAddr::TcpTls { .. }
        ));
        assert!(super::client("rediss://cache.example:6379", Some("/nonexistent/ca.pem")).is_err());
    }
}
