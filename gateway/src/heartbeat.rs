//! Keeps the gateway's claims alive: renews its slot lease and refreshes every local session in
//! the registry (one pipeline for all), on one tick.
//!
//! A renewal that fails because Redis is unreachable (a failover, a restart) does not stop the
//! gateway: it keeps serving and retries on the next tick, until the lease has really expired
//! (its TTL since the last renewal that worked), when another gateway may own the slot. Only a
//! lease that another gateway holds, or one that ran out, stops it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, warn};

use connect_core::model::Session;
use connect_redis::{LeaseError, SlotLease};

use crate::state::Gateway;

pub async fn run(gw: Arc<Gateway>, lease: SlotLease) {
    let period = (gw.cfg.session_ttl.min(gw.cfg.slot_ttl)) / 3;
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    // When the last renewal that worked was sent (the lease runs `slot_ttl` from then).
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            () = gw.stopped() => break,
            _ = tick.tick() => {}
        }
        let attempt = Instant::now();
        let renewal = lease.renew().await;
        match after_renewal(&renewal, renewed, attempt, gw.cfg.slot_ttl) {
            Lease::Held => {
                if renewal.is_ok() {
                    renewed = attempt;
                } else if let Err(e) = &renewal {
                    metrics::counter!("connect_gateway_lease_renewal_failures_total").increment(1);
                    warn!(cause = %e, slot = gw.slot, "slot lease renewal failed; serving on until the lease expires");
                }
            }
            Lease::Gone => {
                if let Err(e) = &renewal {
                    error!(cause = %e, slot = gw.slot, since_renewed = ?attempt - renewed, "slot lease lost or expired; stopping the gateway");
                }
                gw.stop();
                break;
            }
        }
        let sessions: Vec<Session> = gw
            .hub
            .sessions()
            .into_iter()
            .map(|(user, conn, device)| Session {
                user,
                route: gw.route(&conn, &device),
            })
            .collect();
        if let Err(e) = gw.registry.upsert(&sessions).await {
            warn!(cause = %e, count = sessions.len(), "session refresh failed");
        } else {
            // Presence follows the sessions: each user's offline check moves to their new
            // expiry (and a user whose state was lost is online again).
            let mut users: Vec<_> = sessions.into_iter().map(|s| s.user).collect();
            users.sort();
            users.dedup();
            gw.presence.present(&users).await;
        }
        let as_of = Instant::now();
        gw.presence
            .refresh_watches(gw.hub.watched(), as_of, gw.slot)
            .await;
    }
    if let Err(e) = lease.release().await {
        warn!(cause = %e, "could not release the slot lease; it expires with its TTL");
    }
}

/// Whether the gateway still holds its slot after a renewal attempt.
#[derive(Debug, PartialEq, Eq)]
enum Lease {
    Held,
    Gone,
}

/// A renewal that worked holds the lease; another owner ends it; a failed call (Redis down)
/// holds it until `ttl` has passed since the last renewal that worked (`renewed`), measured at
/// the start of this attempt.
fn after_renewal(
    renewal: &Result<(), LeaseError>,
    renewed: Instant,
    attempt: Instant,
    ttl: Duration,
) -> Lease {
    match renewal {
        Ok(()) => Lease::Held,
        Err(LeaseError::Lost(_)) => Lease::Gone,
        Err(_) if attempt.saturating_duration_since(renewed) >= ttl => Lease::Gone,
        Err(_) => Lease::Held,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis_down() -> Result<(), LeaseError> {
        Err(LeaseError::Redis(connect_redis::redis::RedisError::from(
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "down"),
        )))
    }

    #[test]
    fn a_failed_renewal_keeps_the_lease_until_it_really_expires() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(15);
        assert_eq!(after_renewal(&Ok(()), t0, t0 + ttl * 2, ttl), Lease::Held);
        assert_eq!(
            after_renewal(&redis_down(), t0, t0 + Duration::from_secs(14), ttl),
            Lease::Held
        );
        assert_eq!(after_renewal(&redis_down(), t0, t0 + ttl, ttl), Lease::Gone);
        assert_eq!(
            after_renewal(&Err(LeaseError::Lost(3)), t0, t0, ttl),
            Lease::Gone
        );
    }
}
