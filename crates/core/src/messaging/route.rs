//! Routing: who of a batch's audience is online where, one delivery per (message, gateway),
//! and the offline store for the rest.

use std::collections::HashMap;

use tracing::warn;

use connect_protocol::UserId;

use super::{Accepted, MessagingStep, Outcome};
use crate::model::{
    Delivery, OfflineEntry, OutboundMessage, Reply, ReplyTo, SessionRoute, StoredMessage,
};

impl MessagingStep {
    /// Looks every recipient up once and builds one delivery per (message, target gateway);
    /// parks the message for recipients with no live session.
    pub(super) async fn route(&self, out: &mut Outcome) -> Vec<Delivery> {
        let no_one: &[UserId] = &[];
        let audience = |a: &Accepted| -> &[UserId] {
            if !a.fan_out {
                return no_one;
            }
            let key = crate::model::DedupeKey {
                sender: a.message.from.clone(),
                id: a.message.id.clone(),
            };
            out.audience.get(&key).map_or(no_one, |r| &r[..])
        };
        let mut users: Vec<UserId> = Vec::new();
        let mut index: HashMap<UserId, usize> = HashMap::new();
        for a in &out.accepted {
            for user in audience(a) {
                index.entry(user.clone()).or_insert_with(|| {
                    users.push(user.clone());
                    users.len() - 1
                });
            }
        }
        let sessions = self.lookup(&users).await;
        let sessions_of = |u: &UserId| -> &[SessionRoute] { &sessions[index[u]] };
        let mut deliveries = Vec::new();
        let mut offline: Vec<(usize, UserId)> = Vec::new();
        for (i, a) in out.accepted.iter().enumerate() {
            let targets = audience(a);
            offline.extend(
                targets
                    .iter()
                    .filter(|u| **u != a.message.from && sessions_of(u).is_empty())
                    .map(|u| (i, u.clone())),
            );
            deliveries.extend(plan_deliveries(
                &a.message,
                a.reply.as_ref(),
                targets,
                sessions_of,
            ));
        }
        if !offline.is_empty() {
            deliveries.extend(self.park(&out.accepted, &offline).await);
            out.report.parked += offline.len();
        }
        for (reply, err) in &out.errors {
            deliveries.push(Delivery {
                slot: reply.slot,
                recipients: Vec::new(),
                message: None,
                reply: Some(Reply {
                    conn: reply.conn.clone(),
                    frame: err.to_frame().to_text(),
                }),
            });
        }
        deliveries
    }

    /// The live sessions of each user (none for all when the registry is down: the messages
    /// are stored, and the offline store or history gives them to the recipients later).
    async fn lookup(&self, users: &[UserId]) -> Vec<Vec<SessionRoute>> {
        if users.is_empty() {
            return Vec::new();
        }
        self.ports.registry.lookup(users).await.unwrap_or_else(|e| {
            warn!(cause = %e, "registry lookup failed; delivering replies only");
            vec![Vec::new(); users.len()]
        })
    }

    /// Writes `(message, user)` pairs to the users' offline stores, then looks the users up
    /// again: one who connected meanwhile may have drained the store before the write, so they
    /// get the message live too (at least once).
    async fn park(&self, accepted: &[Accepted], offline: &[(usize, UserId)]) -> Vec<Delivery> {
        // One rendering per message, however many members it is parked for (`offline` lists
        // each message's users together).
        let mut rendered: Option<(usize, String, String)> = None;
        let entries: Vec<OfflineEntry> = offline
            .iter()
            .map(|(i, user)| {
                if rendered.as_ref().is_none_or(|(at, _, _)| at != i) {
                    let m = &accepted[*i].message;
                    rendered = Some((*i, m.conversation.to_string(), m.frame_text()));
                }
                let (_, conversation, frame) = rendered.as_ref().expect("rendered above");
                OfflineEntry {
                    user: user.clone(),
                    conversation: conversation.clone(),
                    seq: accepted[*i].message.seq,
                    frame: frame.clone(),
                }
            })
            .collect();
        if let Err(e) = self.ports.offline.append(&entries).await {
            // Stored in the chat table all the same: history gives it to them.
            warn!(cause = %e, count = entries.len(), "offline store write failed");
        }
        let mut users: Vec<UserId> = offline.iter().map(|(_, u)| u.clone()).collect();
        users.sort();
        users.dedup();
        let sessions = self.lookup(&users).await;
        let mut late = Vec::new();
        for (i, user) in offline {
            let Ok(at) = users.binary_search(user) else {
                continue;
            };
            if sessions[at].is_empty() {
                continue;
            }
            late.extend(plan_deliveries(
                &accepted[*i].message,
                None,
                std::slice::from_ref(user),
                |_| sessions[at].as_slice(),
            ));
        }
        late
    }
}

/// The deliveries of one message: one per slot that has a session of a recipient, with the
/// sender's `accepted` on the record for its own slot (or alone, if no recipient is there).
pub fn plan_deliveries<'s>(
    message: &StoredMessage,
    reply: Option<&ReplyTo>,
    recipients: &[UserId],
    sessions_of: impl Fn(&UserId) -> &'s [SessionRoute],
) -> Vec<Delivery> {
    let mut by_slot: Vec<(u32, Vec<UserId>)> = Vec::new();
    for user in recipients {
        for route in sessions_of(user) {
            match by_slot.iter_mut().find(|(slot, _)| *slot == route.slot) {
                Some((_, users)) if users.contains(user) => {}
                Some((_, users)) => users.push(user.clone()),
                None => by_slot.push((route.slot, vec![user.clone()])),
            }
        }
    }
    if let Some(r) = reply {
        if !by_slot.iter().any(|(slot, _)| *slot == r.slot) {
            by_slot.push((r.slot, Vec::new()));
        }
    }
    let frame = if by_slot.iter().any(|(_, users)| !users.is_empty()) {
        Some(message.frame_text())
    } else {
        None
    };
    by_slot
        .into_iter()
        .map(|(slot, users)| Delivery {
            slot,
            message: match (&frame, users.is_empty()) {
                (Some(frame), false) => Some(OutboundMessage {
                    conversation: message.conversation.to_string(),
                    seq: message.seq,
                    ts: message.ts,
                    frame: frame.clone(),
                }),
                _ => None,
            },
            recipients: users,
            reply: reply.filter(|r| r.slot == slot).map(|r| Reply {
                conn: r.conn.clone(),
                frame: message.accepted_text(),
            }),
        })
        .collect()
}
