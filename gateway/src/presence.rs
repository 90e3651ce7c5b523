//! Presence at the gateway (`connect_core::presence`): its connections' opens, closes and
//! refreshes become transitions on `presence`; a `watch` is checked (who may watch whom),
//! recorded in Redis (this gateway's slot watches the user) and answered with the views; the
//! changes relayed to this slot reach the watching connections through the hub.
//!
//! Never in the way of messages: a transition that cannot be published is logged and dropped
//! (the next refresh or transition corrects the state), and a failed `watch` is answered
//! `unavailable`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::counter;
use tracing::{debug, warn};

use connect_core::groups::{GroupStore, MembershipCache};
use connect_core::ports::InboxIndex;
use connect_core::presence::{watchable, PresenceBus, PresenceChange, PresenceStore, PresenceView};
use connect_core::{now_ms, PortError};
use connect_protocol::UserId;

/// What presence at a gateway reads and writes.
pub struct PresencePorts {
    pub store: Arc<dyn PresenceStore>,
    pub bus: Arc<dyn PresenceBus>,
    pub inbox: Arc<dyn InboxIndex>,
    pub groups: Arc<dyn GroupStore>,
}

pub struct Presence {
    ports: PresencePorts,
    rosters: MembershipCache,
    /// Users recorded in Redis as watched from this gateway's slot, and when (refreshed by the
    /// heartbeat at half their TTL; forgotten once no connection here watches them).
    recorded: Mutex<HashMap<UserId, Instant>>,
    session_ttl: Duration,
    watch_ttl: Duration,
}

impl Presence {
    pub fn new(
        ports: PresencePorts,
        session_ttl: Duration,
        watch_ttl: Duration,
        rosters: (Duration, usize),
    ) -> Self {
        Self {
            rosters: MembershipCache::new(ports.groups.clone(), rosters.0, rosters.1),
            ports,
            recorded: Mutex::default(),
            session_ttl,
            watch_ttl,
        }
    }

    fn recorded(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Instant>> {
        self.recorded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes transitions in the background: never waited for, never retried.
    fn publish(&self, changes: Vec<PresenceChange>) {
        if changes.is_empty() {
            return;
        }
        counter!("connect_gateway_presence_changes_total").increment(changes.len() as u64);
        let pending = self.ports.bus.publish(&changes);
        tokio::spawn(async move {
            if let Err(e) = pending.await {
                counter!("connect_gateway_presence_dropped_total").increment(changes.len() as u64);
                warn!(cause = %e, count = changes.len(), "presence transitions not published");
            }
        });
    }

    /// `users` have a live session here (registered or refreshed): those not online yet go
    /// online.
    pub async fn present(&self, users: &[UserId]) {
        let now = now_ms();
        let expires = now + self.session_ttl.as_millis() as u64;
        match self.ports.store.present(users, now, expires).await {
            Ok(changes) => self.publish(changes),
            Err(e) => warn!(cause = %e, count = users.len(), "presence not recorded"),
        }
    }

    /// `user`'s connection closed (the registry has forgotten it).
    pub async fn closed(&self, user: &UserId) {
        if let Err(e) = self
            .ports
            .store
            .closed(std::slice::from_ref(user), now_ms())
            .await
        {
            // The session's expiry still takes the user offline.
            warn!(cause = %e, user = %user, "presence close not recorded; the session's expiry decides");
        }
    }

    /// Whether `user` is a member of `group`, by the roster cache (`GROUP_CACHE_TTL_SECS`): how
    /// a connection's acks of a group are checked without a read per ack.
    pub async fn is_member(
        &self,
        group: &connect_protocol::GroupId,
        user: &UserId,
    ) -> Result<bool, PortError> {
        Ok(self
            .rosters
            .members(group)
            .await?
            .is_some_and(|r| r.contains(user)))
    }

    /// Which of `users` `viewer` may watch (same order).
    pub async fn watchable(
        &self,
        viewer: &UserId,
        users: &[UserId],
    ) -> Result<Vec<bool>, PortError> {
        watchable(
            viewer,
            users,
            &*self.ports.inbox,
            &*self.ports.groups,
            &self.rosters,
        )
        .await
    }

    /// Records `users` as watched from `slot` and reads their views, in one step per user (a
    /// change relayed after the read reaches this gateway).
    pub async fn record(
        &self,
        users: &[UserId],
        slot: u32,
    ) -> Result<Vec<PresenceView>, PortError> {
        let until = now_ms() + self.watch_ttl.as_millis() as u64;
        let views = self.ports.store.views(users, Some((slot, until))).await?;
        let at = Instant::now();
        let mut recorded = self.recorded();
        for u in users {
            recorded.insert(u.clone(), at);
        }
        Ok(views)
    }

    /// The heartbeat's part: what this gateway's connections watched at `as_of` (`watched`)
    /// stays recorded (refreshed at half its TTL), what none watched then and was recorded
    /// before then is taken out.
    pub async fn refresh_watches(&self, watched: Vec<UserId>, as_of: Instant, slot: u32) {
        let now = Instant::now();
        let (stale, gone) = {
            let mut recorded = self.recorded();
            let keep: std::collections::HashSet<&UserId> = watched.iter().collect();
            let gone: Vec<UserId> = recorded
                .iter()
                .filter(|(u, at)| !keep.contains(u) && **at < as_of)
                .map(|(u, _)| u.clone())
                .collect();
            for u in &gone {
                recorded.remove(u);
            }
            let stale: Vec<UserId> = watched
                .iter()
                .filter(|u| {
                    recorded
                        .get(*u)
                        .is_none_or(|at| now.duration_since(*at) >= self.watch_ttl / 2)
                })
                .cloned()
                .collect();
            (stale, gone)
        };
        if !gone.is_empty() {
            if let Err(e) = self.ports.store.unwatch(&gone, slot).await {
                debug!(cause = %e, "watch records not taken out; they expire");
            }
        }
        if stale.is_empty() {
            return;
        }
        if let Err(e) = self.record(&stale, slot).await {
            warn!(cause = %e, "watch records not refreshed; next heartbeat retries");
        }
    }
}
