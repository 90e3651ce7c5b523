//! A gateway's slot: the one partition of `outgoing_messages` it reads, leased in Redis
//! (`slot:{topic}:{n}` = owner, with a TTL the gateway renews).

use std::time::Duration;

use redis::Script;

use crate::RedisConn;

/// 1: extended; 2: the key was gone (Redis lost it: a failover, a restart without the last
/// writes) and is taken again; 0: another owner holds it.
const RENEW: &str = r"
local v = redis.call('get', KEYS[1])
if v == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
if not v then redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2]); return 2 end
return 0";
const RELEASE: &str = r"if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// Why a lease could not be had or kept.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("all {0} slots are leased by other gateways")]
    NoFreeSlot(u32),
    #[error("lease on slot {0} was lost")]
    Lost(u32),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// A held lease.
pub struct SlotLease {
    conn: RedisConn,
    key: String,
    owner: String,
    slot: u32,
    ttl: Duration,
}

impl SlotLease {
    /// Takes the lowest free slot of `slots` for `owner`.
    pub async fn acquire(
        conn: RedisConn,
        topic: &str,
        slots: u32,
        owner: &str,
        ttl: Duration,
    ) -> Result<Self, LeaseError> {
        for slot in 0..slots {
            let key = format!("slot:{topic}:{slot}");
            let won: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(owner)
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .query_async(&mut conn.clone())
                .await?;
            if won.is_some() {
                return Ok(Self {
                    conn,
                    key,
                    owner: owner.to_owned(),
                    slot,
                    ttl,
                });
            }
        }
        Err(LeaseError::NoFreeSlot(slots))
    }

    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// Extends the lease (taking the slot again if Redis lost the key and no one else took it);
    /// `Lost` if another owner holds it now.
    pub async fn renew(&self) -> Result<(), LeaseError> {
        let renewed: i64 = Script::new(RENEW)
            .key(&self.key)
            .arg(&self.owner)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        match renewed {
            1 => Ok(()),
            2 => {
                tracing::warn!(
                    slot = self.slot,
                    "the slot's lease was gone from Redis; taken again"
                );
                Ok(())
            }
            _ => Err(LeaseError::Lost(self.slot)),
        }
    }

    /// Gives the slot back (on shutdown) if still held.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let _: i64 = Script::new(RELEASE)
            .key(&self.key)
            .arg(&self.owner)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}
