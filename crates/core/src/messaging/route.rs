//! Routing: each message once into its conversation's log (the offline state), then who of the
//! batch's audience is online where, one delivery per (message, gateway).

use std::collections::HashMap;

use tracing::warn;

use connect_protocol::UserId;

use super::{Accepted, MessagingStep, Outcome};
use crate::model::{
    Delivery, LogEntry, OutboundMessage, Reply, ReplyTo, SessionRoute, StoredMessage,
};

impl MessagingStep {
    /// Writes every message to be delivered to its conversation's log (once, whatever the
    /// number of members), then looks every recipient up once and builds one delivery per
    /// (message, target gateway). The log is written before the lookup: a device that connects
    /// after the lookup finds the message in its backlog.
    pub(super) async fn route(&self, out: &mut Outcome) -> Vec<Delivery> {
        // Each message to be delivered rendered once, for its log entry and its deliveries.
        let frames: Vec<Option<String>> = out
            .accepted
            .iter()
            .map(|a| a.fan_out.then(|| a.message.frame_text()))
            .collect();
        self.log(out, &frames).await;
        let no_one: &[UserId] = &[];
        let audience = |a: &Accepted| -> &[UserId] {
            if !a.fan_out {
                return no_one;
            }
            let key = crate::model::DedupeKey {
                sender: a.message.from.clone(),
                id: a.message.id.clone(),
            };
            out.audience.get(&key).map_or(no_one, |r| &r.users[..])
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
        for (a, frame) in out.accepted.iter().zip(&frames) {
            deliveries.extend(plan_deliveries(
                &a.message,
                frame.as_deref(),
                a.reply.as_ref(),
                audience(a),
                sessions_of,
            ));
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

    /// One log entry per message to be delivered (one round trip for the batch). A failed
    /// write is logged: the messages are stored, and history gives them to whoever missed them.
    async fn log(&self, out: &mut Outcome, frames: &[Option<String>]) {
        let entries: Vec<LogEntry> = out
            .accepted
            .iter()
            .zip(frames)
            .filter_map(|(a, frame)| {
                Some(LogEntry {
                    conversation: a.message.conversation.clone(),
                    seq: a.message.seq,
                    frame: frame.clone()?,
                    mv: a.message.mv.unwrap_or(0),
                    device: a.message.device.clone(),
                })
            })
            .collect();
        if entries.is_empty() {
            return;
        }
        match self.ports.log.append(&entries).await {
            Ok(()) => out.report.logged += entries.len(),
            Err(e) => warn!(cause = %e, count = entries.len(), "conversation log write failed"),
        }
    }

    /// The live sessions of each user (none for all when the registry is down: the messages
    /// are stored and logged, and reach the devices on their next connection).
    async fn lookup(&self, users: &[UserId]) -> Vec<Vec<SessionRoute>> {
        if users.is_empty() {
            return Vec::new();
        }
        self.ports.registry.lookup(users).await.unwrap_or_else(|e| {
            warn!(cause = %e, "registry lookup failed; delivering replies only");
            vec![Vec::new(); users.len()]
        })
    }
}

/// The deliveries of one message (`frame`: its rendering, needed when it has recipients): one
/// per slot that has a session of a recipient, with the sender's `accepted` on the record for
/// its own slot (or alone, if no recipient is there).
fn plan_deliveries<'s>(
    message: &StoredMessage,
    frame: Option<&str>,
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
    let frame = frame.filter(|_| by_slot.iter().any(|(_, users)| !users.is_empty()));
    by_slot
        .into_iter()
        .map(|(slot, users)| Delivery {
            slot,
            message: match (&frame, users.is_empty()) {
                (Some(frame), false) => Some(OutboundMessage {
                    conversation: message.conversation.to_string(),
                    seq: message.seq,
                    ts: message.ts,
                    frame: (*frame).to_owned(),
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
