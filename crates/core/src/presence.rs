//! Presence (PROTOCOL.md "Presence"): who is online, derived from the session registry.
//!
//! - **Transitions, per region.** A gateway that registers a user's connection (or refreshes it)
//!   turns a user who is not online in this region online ([`PresenceStore::present`]); one
//!   that closes a user's last live connection schedules a check after the debounce
//!   ([`PresenceStore::closed`]). A sweep ([`PresenceStore::sweep`], in messaging) turns the
//!   due users with no live session offline: a reconnect within the debounce never shows
//!   offline, and a SIGKILLed gateway's users go offline once their sessions expire (each
//!   refresh moves the check to the session's expiry). Each transition carries the region's
//!   version for the user (never lower than the last), and is published on the `presence`
//!   topic, which MirrorMaker 2 replicates to the other regions.
//! - **Views, per region.** Every region applies every region's transitions
//!   ([`PresenceStore::apply`]): a user is online when online in any region, else offline with
//!   the latest `last_seen`. A change of that view goes to the gateways whose connections
//!   watch the user (the watch index: gateway slots per watched user, with an expiry that the
//!   gateways refresh), as one delivery per gateway.
//! - **Who may watch whom** ([`watchable`]): a user shares a conversation with the watcher (a
//!   direct conversation with at least one message, or a group both are in), or is the
//!   watcher. Checked once per `watch` (DynamoDB reads, group rosters from the membership
//!   cache), never per change.
//!
//! Ephemeral: nothing here touches the chat table, the sequences or the offline log; a change
//! that cannot be published is not retried (the next transition or refresh corrects it).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use connect_protocol::{ConversationId, Presence, ServerFrame, UserId};

use crate::groups::{GroupStore, MembershipCache};
use crate::model::{Delivery, PresenceSignal};
use crate::ports::{InboxIndex, PendingPublish};
use crate::PortError;

/// One region's presence transition for a user: the `presence` topic's record (key = user).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceChange {
    pub user: UserId,
    /// The region whose connections changed.
    pub region: String,
    /// The region's version of the user's presence: a change with a version not above the last
    /// one applied is older (records from two publishers may arrive out of order).
    pub v: u64,
    pub online: bool,
    /// Offline: when the user's last connection in the region closed (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
}

/// A user's presence as this region's watchers see it (every region's transitions merged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceView {
    pub online: bool,
    /// When the last connection closed (offline only; none: never seen).
    pub last_seen: Option<u64>,
    /// Grows with every change of the view: a gateway never sends an older view after a newer.
    pub version: u64,
}

impl PresenceView {
    /// The `presence` frame for `user`.
    pub fn frame(&self, user: &UserId) -> String {
        let state = if self.online {
            Presence::ONLINE
        } else {
            Presence::offline(self.last_seen)
        };
        ServerFrame::Presence {
            user: user.as_str(),
            state,
        }
        .to_text()
    }
}

/// The `presence` frame for a user the caller may not watch.
pub fn hidden_frame(user: &UserId) -> String {
    ServerFrame::Presence {
        user: user.as_str(),
        state: Presence::HIDDEN,
    }
    .to_text()
}

/// A view that changed, and the gateway slots that watch its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewChange {
    pub user: UserId,
    pub view: PresenceView,
    pub slots: Vec<u32>,
}

/// Presence state (Redis): the region's transitions, the merged views and the watch index.
#[async_trait]
pub trait PresenceStore: Send + Sync {
    /// `users` have a live session here until `expires_ms` (just registered or refreshed):
    /// each one's offline check moves to that time, and those not online in this region go
    /// online. Answers their transitions, to publish.
    async fn present(
        &self,
        users: &[UserId],
        now_ms: u64,
        expires_ms: u64,
    ) -> Result<Vec<PresenceChange>, PortError>;
    /// A connection of each of `users` closed (the registry has forgotten it): a user with no
    /// live session left is checked again after the debounce, `now_ms` kept as when they left.
    async fn closed(&self, users: &[UserId], now_ms: u64) -> Result<(), PortError>;
    /// Checks up to `limit` users whose check is due: those with no live session go offline.
    /// Answers their transitions, to publish. Safe to run in several processes at once.
    async fn sweep(&self, now_ms: u64, limit: usize) -> Result<Vec<PresenceChange>, PortError>;
    /// Applies transitions from any region to the views; answers the views that changed.
    async fn apply(
        &self,
        changes: &[PresenceChange],
        now_ms: u64,
    ) -> Result<Vec<ViewChange>, PortError>;
    /// The views of `users` (same order). With a watcher (slot, until), that gateway slot is
    /// recorded as watching each of them in the same step as the read, so no change between
    /// the read and the record is missed.
    async fn views(
        &self,
        users: &[UserId],
        watcher: Option<(u32, u64)>,
    ) -> Result<Vec<PresenceView>, PortError>;
    /// Gateway `slot` no longer watches `users`.
    async fn unwatch(&self, users: &[UserId], slot: u32) -> Result<(), PortError>;
}

/// Publishes transitions on the `presence` topic (key = user), which every region's presence
/// relay reads (this region's directly, the others' through MirrorMaker 2).
pub trait PresenceBus: Send + Sync {
    /// Enqueues the records now; the future resolves when the broker has them all.
    fn publish(&self, changes: &[PresenceChange]) -> PendingPublish;
}

/// Applies a batch of transitions (from any region) to the views and answers the deliveries
/// of the views that changed: one per watching gateway slot.
pub async fn relay(
    store: &dyn PresenceStore,
    changes: &[PresenceChange],
    now_ms: u64,
) -> Result<Vec<Delivery>, PortError> {
    let changed = store.apply(changes, now_ms).await?;
    Ok(changed
        .into_iter()
        .flat_map(|c| {
            let frame = c.view.frame(&c.user);
            let (user, version) = (c.user, c.view.version);
            c.slots.into_iter().map(move |slot| Delivery {
                slot,
                recipients: Vec::new(),
                message: None,
                reply: None,
                signal: None,
                presence: Some(PresenceSignal {
                    user: user.clone(),
                    version,
                    frame: frame.clone(),
                }),
            })
        })
        .collect())
}

/// Which of `users` `viewer` may watch (same order): the viewer, and users who share a
/// conversation with them — a direct conversation with at least one message, or a group both
/// are members of. Reads: one batch of direct conversation heads, the viewer's memberships,
/// and the rosters of their groups from `rosters` (stopping once every user is settled).
pub async fn watchable(
    viewer: &UserId,
    users: &[UserId],
    inbox: &dyn InboxIndex,
    groups: &dyn GroupStore,
    rosters: &MembershipCache,
) -> Result<Vec<bool>, PortError> {
    let mut allowed: Vec<bool> = users.iter().map(|u| u == viewer).collect();
    let direct: Vec<(usize, ConversationId)> = users
        .iter()
        .enumerate()
        .filter(|(i, _)| !allowed[*i])
        .filter_map(|(i, u)| Some((i, ConversationId::direct(viewer, u).ok()?)))
        .collect();
    if !direct.is_empty() {
        let conversations: Vec<ConversationId> = direct.iter().map(|(_, c)| c.clone()).collect();
        let heads = inbox.heads(&conversations).await?;
        for ((i, _), head) in direct.iter().zip(heads) {
            if head.is_some_and(|h| h.seq > 0) {
                allowed[*i] = true;
            }
        }
    }
    if allowed.iter().all(|a| *a) {
        return Ok(allowed);
    }
    for membership in groups.memberships_of(viewer).await? {
        let Some(roster) = rosters.members(&membership.group).await? else {
            continue;
        };
        let mut open = false;
        for (i, u) in users.iter().enumerate() {
            if !allowed[i] {
                allowed[i] = roster.contains(u);
                open |= !allowed[i];
            }
        }
        if !open {
            break;
        }
    }
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::memory::Memory;
    use crate::ports::{Head, InboxWrite};

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[tokio::test]
    async fn only_users_who_share_a_conversation_may_be_watched() {
        let ports = Arc::new(Memory::default());
        let (alice, bob, carol, dave, erin) = (
            user("alice"),
            user("bob"),
            user("carol"),
            user("dave"),
            user("erin"),
        );
        // alice and bob have a direct conversation with a message; alice and dave one that
        // never had any; alice and carol share a group; erin is a stranger.
        ports
            .write(&InboxWrite {
                heads: vec![(
                    ConversationId::direct(&alice, &bob).unwrap(),
                    Head { seq: 1, ts: 5 },
                )],
                ..Default::default()
            })
            .await
            .unwrap();
        ports.put_group(
            "g_1",
            "g",
            carol.as_str(),
            &[alice.as_str(), carol.as_str()],
        );
        let rosters = MembershipCache::new(ports.clone(), Duration::from_secs(5), 16);
        let users = [
            bob.clone(),
            carol.clone(),
            dave.clone(),
            erin.clone(),
            alice.clone(),
        ];
        let allowed = watchable(&alice, &users, &*ports, &*ports, &rosters)
            .await
            .unwrap();
        assert_eq!(allowed, [true, true, false, false, true]);
        // The rule is symmetric.
        let allowed = watchable(
            &carol,
            &[alice.clone(), bob.clone()],
            &*ports,
            &*ports,
            &rosters,
        )
        .await
        .unwrap();
        assert_eq!(allowed, [true, false]);
    }

    #[test]
    fn views_render_as_the_contract_says() {
        let bob = user("bob");
        let online = PresenceView {
            online: true,
            last_seen: Some(1),
            version: 3,
        };
        assert_eq!(
            online.frame(&bob),
            r#"{"type":"presence","user":"bob","online":true}"#
        );
        let away = PresenceView {
            online: false,
            last_seen: Some(1_763_800_000_123),
            version: 4,
        };
        assert_eq!(
            away.frame(&bob),
            r#"{"type":"presence","user":"bob","online":false,"last_seen":1763800000123}"#
        );
        assert_eq!(
            PresenceView::default().frame(&bob),
            r#"{"type":"presence","user":"bob","online":false}"#
        );
        assert_eq!(
            hidden_frame(&bob),
            r#"{"type":"presence","user":"bob","hidden":true}"#
        );
    }
}
