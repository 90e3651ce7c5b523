//! Keeps the gateway's claims alive: renews its slot lease and refreshes every local session in
//! the registry (one pipeline for all), on one tick.

use std::sync::Arc;

use tracing::{error, warn};

use connect_core::model::Session;
use connect_redis::SlotLease;

use crate::state::Gateway;

pub async fn run(gw: Arc<Gateway>, lease: SlotLease) {
    let period = (gw.cfg.session_ttl.min(gw.cfg.slot_ttl)) / 3;
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tokio::select! {
            () = gw.stopped() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = lease.renew().await {
            error!(cause = %e, slot = gw.slot, "slot lease lost or unrenewable; stopping the gateway");
            gw.stop();
            break;
        }
        let sessions: Vec<Session> = gw
            .hub
            .sessions()
            .into_iter()
            .map(|(user, conn)| Session {
                user,
                route: gw.route(&conn),
            })
            .collect();
        if let Err(e) = gw.registry.upsert(&sessions).await {
            warn!(cause = %e, count = sessions.len(), "session refresh failed");
        }
    }
    if let Err(e) = lease.release().await {
        warn!(cause = %e, "could not release the slot lease; it expires with its TTL");
    }
}
