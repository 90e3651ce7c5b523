//! The messaging step: what the Messaging Service does with one batch from `incoming_messages`.
//!
//! Per batch: authorize; dedupe by (sender, client id); allocate seqs with one atomic add per
//! conversation; remember the acceptances, then store the messages (batched); look every
//! recipient up in the registry in one round trip; publish ONE delivery per target gateway (the
//! sender's `accepted` rides on the record for its gateway). The caller commits the batch's
//! offsets only after [`MessagingStep::process`] returns `Ok`.
//!
//! Crash safety: acceptances are remembered before the messages are written, so a batch replayed
//! after a crash finds them, re-stores any message that did not make it (conditional put), and
//! answers with the original seq. A crash between allocation and write leaves a gap, never a
//! reuse. A store that fails leaves nothing behind: the acceptances are forgotten and the
//! senders get `unavailable` (retry with the same id).

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::join_all;
use tracing::warn;

use connect_protocol::{ConversationId, ErrorCode, FrameError, GroupId, UserId};

use crate::model::{
    Acceptance, Delivery, OfflineEntry, OutboundMessage, Reply, ReplyTo, SessionRoute,
    StoredMessage, Submission,
};
use crate::ports::Ports;
use crate::PortError;

/// Counts of what one batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StepReport {
    pub stored: usize,
    pub duplicates: usize,
    pub rejected: usize,
    pub unavailable: usize,
    pub records: usize,
    /// Offline-store entries written for recipients with no live session.
    pub parked: usize,
    /// Client sends refused unprocessed because they waited too long (overload).
    pub shed: usize,
}

/// A batch ready to publish.
#[derive(Debug)]
pub struct Prepared {
    pub deliveries: Vec<Delivery>,
    pub report: StepReport,
}

/// The messaging use-case over its ports.
pub struct MessagingStep {
    ports: Ports,
    /// Client sends older than this when their batch starts are answered `unavailable`
    /// without being processed (0: never).
    shed_after_ms: u64,
}

/// A message that will be delivered, with the connection to answer.
struct Accepted {
    message: StoredMessage,
    reply: Option<ReplyTo>,
    /// False for a repeat of a message already fanned out in this batch: it only needs `accepted`.
    fan_out: bool,
}

#[derive(Default)]
struct Outcome {
    /// Who receives each valid submission, decided when it was authorized.
    audience: HashMap<crate::model::DedupeKey, Arc<[UserId]>>,
    accepted: Vec<Accepted>,
    errors: Vec<(ReplyTo, FrameError)>,
    report: StepReport,
}

impl Outcome {
    fn fail(&mut self, sub: &Submission, code: ErrorCode, message: &str) {
        if code == ErrorCode::Unavailable {
            self.report.unavailable += 1;
        } else {
            self.report.rejected += 1;
        }
        if let Some(reply) = &sub.reply {
            let mut err = FrameError::new(code, message);
            err.id = Some(sub.id.to_string());
            self.errors.push((reply.clone(), err));
        }
    }
}

fn message_of(sub: &Submission, acceptance: &Acceptance) -> StoredMessage {
    StoredMessage {
        conversation: sub.conversation.clone(),
        seq: acceptance.seq,
        from: sub.sender.clone(),
        id: sub.id.clone(),
        body: sub.body.clone(),
        ts: acceptance.ts,
        event: sub.event.clone(),
    }
}

/// Why a submission is refused before sequencing.
type Refusal = (ErrorCode, &'static str);

impl MessagingStep {
    /// Who receives a submission, checking that its sender may send it. A group's system message
    /// (from the group-events function) first drops the group from the membership cache, so the
    /// change holds from this event on; a removed member also receives their removal.
    async fn audience(
        &self,
        sub: &Submission,
        view: &mut HashMap<GroupId, crate::groups::Members>,
    ) -> Result<Arc<[UserId]>, Refusal> {
        match &sub.conversation {
            ConversationId::Direct { low, high }
                if sub.conversation.is_direct_member(&sub.sender) =>
            {
                Ok(Arc::from([low.clone(), high.clone()]))
            }
            ConversationId::Direct { .. } => {
                Err((ErrorCode::Forbidden, "not a member of this conversation"))
            }
            ConversationId::Group(group) => {
                if sub.event.is_some() {
                    self.ports.groups.invalidate(group);
                    view.remove(group);
                }
                let members = match view.get(group) {
                    Some(m) => m.clone(),
                    None => {
                        let m = self.ports.groups.members(group).await.map_err(|e| {
                            warn!(cause = %e, %group, "membership lookup failed");
                            (
                                ErrorCode::Unavailable,
                                "group directory unavailable; retry with the same id",
                            )
                        })?;
                        view.insert(group.clone(), m.clone());
                        m
                    }
                };
                match (&sub.event, members) {
                    (Some(event), members) => {
                        let mut all: Vec<UserId> = members.map(|m| m.to_vec()).unwrap_or_default();
                        if let Some(user) =
                            event.user.as_deref().and_then(|u| UserId::parse(u).ok())
                        {
                            if !all.contains(&user) {
                                all.push(user);
                            }
                        }
                        Ok(all.into())
                    }
                    (None, None) => Err((ErrorCode::NotFound, "no such group")),
                    (None, Some(m)) if m.binary_search(&sub.sender).is_ok() => Ok(m),
                    (None, Some(_)) => Err((ErrorCode::Forbidden, "not a member of this group")),
                }
            }
        }
    }
}

impl MessagingStep {
    pub fn new(ports: Ports) -> Self {
        Self {
            ports,
            shed_after_ms: 0,
        }
    }

    /// Refuses new client sends that waited longer than `ms` (since the gateway took them) with
    /// `unavailable`, unsequenced and unstored: under overload the backlog is answered quickly
    /// and the capacity goes to sends that can still be answered in time. A send accepted
    /// before (a batch replayed after a crash, a retry) and system messages are never shed.
    pub fn shed_after_ms(mut self, ms: u64) -> Self {
        self.shed_after_ms = ms;
        self
    }

    fn stale(&self, sub: &Submission, now_ms: u64) -> bool {
        self.shed_after_ms > 0
            && sub.event.is_none()
            && sub.submitted_ms > 0
            && now_ms.saturating_sub(sub.submitted_ms) > self.shed_after_ms
    }

    /// Processes one batch (in partition order): [`Self::prepare`], then publish. `Err` means
    /// nothing could be published: the caller must not commit and should retry the batch (it is
    /// idempotent).
    pub async fn process(
        &self,
        batch: Vec<Submission>,
        now_ms: u64,
    ) -> Result<StepReport, PortError> {
        let prepared = self.prepare(batch, now_ms).await;
        self.ports.deliveries.publish(&prepared.deliveries).await?;
        Ok(prepared.report)
    }

    /// Everything but the publish: dedupe, authorize, sequence, store, route. Never fails: a
    /// submission that cannot be stored becomes an `error` reply. Publishing the deliveries (in
    /// batch order) is the caller's, so it can overlap the next batch's preparation.
    pub async fn prepare(&self, batch: Vec<Submission>, now_ms: u64) -> Prepared {
        let mut out = Outcome::default();
        let mut valid = Vec::with_capacity(batch.len());
        let mut view = HashMap::new();
        for sub in batch {
            match self.audience(&sub, &mut view).await {
                Ok(audience) => {
                    out.audience.entry(sub.dedupe_key()).or_insert(audience);
                    valid.push(sub);
                }
                Err((code, message)) => out.fail(&sub, code, message),
            }
        }
        if !valid.is_empty() {
            self.sequence_and_store(valid, now_ms, &mut out).await;
        }
        let deliveries = self.route(&mut out).await;
        out.report.records = deliveries.len();
        Prepared {
            deliveries,
            report: out.report,
        }
    }

    /// Dedupe, allocate, remember, store. Every submission ends in `out.accepted` or `out.errors`.
    async fn sequence_and_store(&self, valid: Vec<Submission>, now_ms: u64, out: &mut Outcome) {
        let keys: Vec<_> = valid.iter().map(Submission::dedupe_key).collect();
        let known = match self.ports.dedupe.get(&keys).await {
            Ok(known) => known,
            Err(e) => {
                warn!(cause = %e, "dedupe lookup failed; answering unavailable");
                valid
                    .iter()
                    .for_each(|s| out.fail(s, ErrorCode::Unavailable, "dedupe index unavailable"));
                return;
            }
        };

        // Split into known (accepted before), repeats (same key earlier in this batch), fresh.
        let mut fresh: Vec<Submission> = Vec::new();
        let mut first_of: HashMap<_, usize> = HashMap::new();
        let mut repeats: Vec<(Submission, usize)> = Vec::new();
        let mut earlier: Vec<(Submission, Acceptance)> = Vec::new();
        for ((sub, key), known) in valid.into_iter().zip(keys).zip(known) {
            if let Some(acceptance) = known {
                // Accepted before (a replay after a crash, a retry): answered and fanned out
                // however late, so nothing stored goes undelivered.
                earlier.push((sub, acceptance));
            } else if self.stale(&sub, now_ms) {
                out.report.shed += 1;
                out.fail(
                    &sub,
                    ErrorCode::Unavailable,
                    "overloaded; retry with the same id",
                );
            } else if let Some(&i) = first_of.get(&key) {
                repeats.push((sub, i));
            } else {
                first_of.insert(key, fresh.len());
                fresh.push(sub);
            }
        }
        out.report.duplicates += earlier.len() + repeats.len();

        let stored = self.store_fresh(&fresh, now_ms, out).await;
        for (sub, i) in repeats {
            match &stored[i] {
                Some(message) => out.accepted.push(Accepted {
                    message: message.clone(),
                    reply: sub.reply,
                    fan_out: false,
                }),
                None => out.fail(
                    &sub,
                    ErrorCode::Unavailable,
                    "storage unavailable; retry with the same id",
                ),
            }
        }
        self.restore_earlier(earlier, out).await;
    }

    /// Allocates and stores fresh submissions; returns the stored message of each (or None).
    async fn store_fresh(
        &self,
        fresh: &[Submission],
        now_ms: u64,
        out: &mut Outcome,
    ) -> Vec<Option<StoredMessage>> {
        if fresh.is_empty() {
            return Vec::new();
        }
        let mut order: Vec<(ConversationId, u64)> = Vec::new();
        let mut slot_of: HashMap<&ConversationId, usize> = HashMap::new();
        for sub in fresh {
            let i = *slot_of.entry(&sub.conversation).or_insert_with(|| {
                order.push((sub.conversation.clone(), 0));
                order.len() - 1
            });
            order[i].1 += 1;
        }
        let t = std::time::Instant::now();
        let mut next: Vec<Result<u64, PortError>> = self.ports.sequences.allocate(&order).await;
        tracing::debug!(
            conversations = order.len(),
            ms = t.elapsed().as_millis() as u64,
            "allocated"
        );

        let mut messages: Vec<Option<StoredMessage>> = Vec::with_capacity(fresh.len());
        for sub in fresh {
            let i = slot_of[&sub.conversation];
            messages.push(match &mut next[i] {
                Ok(seq) => {
                    let acceptance = Acceptance {
                        conversation: sub.conversation.clone(),
                        seq: *seq,
                        ts: now_ms,
                    };
                    *seq += 1;
                    Some(message_of(sub, &acceptance))
                }
                Err(_) => None,
            });
        }
        for (e, (conversation, _)) in next.iter().zip(&order) {
            if let Err(e) = e {
                warn!(cause = %e, %conversation, "sequence allocation failed");
            }
        }

        let to_store: Vec<StoredMessage> = messages.iter().flatten().cloned().collect();
        let t = std::time::Instant::now();
        let persisted = self.persist(&to_store).await;
        tracing::debug!(
            messages = to_store.len(),
            ms = t.elapsed().as_millis() as u64,
            "persisted"
        );
        if let Err(e) = persisted {
            warn!(cause = %e, count = to_store.len(), "storing the batch failed; answering unavailable");
            messages.iter_mut().for_each(|m| *m = None);
        }
        for (sub, message) in fresh.iter().zip(&messages) {
            match message {
                Some(m) => {
                    out.report.stored += 1;
                    out.accepted.push(Accepted {
                        message: m.clone(),
                        reply: sub.reply.clone(),
                        fan_out: true,
                    });
                }
                None => out.fail(
                    sub,
                    ErrorCode::Unavailable,
                    "storage unavailable; retry with the same id",
                ),
            }
        }
        messages
    }

    /// Remembers acceptances, then writes the messages; on failure forgets them again.
    async fn persist(&self, messages: &[StoredMessage]) -> Result<(), PortError> {
        if messages.is_empty() {
            return Ok(());
        }
        let entries: Vec<_> = messages
            .iter()
            .map(|m| {
                let key = crate::model::DedupeKey {
                    sender: m.from.clone(),
                    id: m.id.clone(),
                };
                (
                    key,
                    Acceptance {
                        conversation: m.conversation.clone(),
                        seq: m.seq,
                        ts: m.ts,
                    },
                )
            })
            .collect();
        self.ports.dedupe.remember(&entries).await?;
        if let Err(e) = self.ports.chat.put_batch(messages).await {
            let keys: Vec<_> = entries.into_iter().map(|(k, _)| k).collect();
            if let Err(forget) = self.ports.dedupe.forget(&keys).await {
                warn!(cause = %forget, "could not forget acceptances of an unstored batch");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Submissions accepted before: make sure the message is stored (a crash may have come
    /// between remembering and writing), then answer and deliver again (at least once).
    async fn restore_earlier(&self, earlier: Vec<(Submission, Acceptance)>, out: &mut Outcome) {
        let messages: Vec<StoredMessage> = earlier.iter().map(|(s, a)| message_of(s, a)).collect();
        let results = join_all(messages.iter().map(|m| self.ports.chat.put_if_absent(m))).await;
        for (((sub, _), message), result) in earlier.into_iter().zip(messages).zip(results) {
            match result {
                Ok(_) => out.accepted.push(Accepted {
                    message,
                    reply: sub.reply,
                    fan_out: true,
                }),
                Err(e) => {
                    warn!(cause = %e, "re-storing a remembered message failed");
                    out.fail(
                        &sub,
                        ErrorCode::Unavailable,
                        "storage unavailable; retry with the same id",
                    );
                }
            }
        }
    }

    /// Looks every recipient up once and builds one delivery per (message, target gateway);
    /// parks the message for recipients with no live session.
    async fn route(&self, out: &mut Outcome) -> Vec<Delivery> {
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

#[cfg(test)]
mod tests;
