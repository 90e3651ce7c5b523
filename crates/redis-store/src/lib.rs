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

/// Opens a self-reconnecting, multiplexed connection.
pub async fn connect(url: &str) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(url)?;
    ConnectionManager::new(client).await
}

pub(crate) fn unavailable(e: redis::RedisError) -> PortError {
    PortError::unavailable("redis", e)
}
