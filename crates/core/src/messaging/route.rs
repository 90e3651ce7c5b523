//! Routing: each message once into its conversation's log (the offline state), then who of the
//! batch's audience is online where, one delivery per (message, gateway).

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use connect_protocol::UserId;

use super::{MessagingStep, Outcome};
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
        let started = std::time::Instant::now();
        self.log(out, &frames).await;
        out.report.phases.log = started.elapsed();
        let started = std::time::Instant::now();
        // The distinct audiences (a group's messages in a batch share one), each looked up and
        // split by gateway once, with no per-member hashing: a 10,000-member group costs one
        // pass over its members per batch, not one per message.
        let mut audiences: Vec<Arc<[UserId]>> = Vec::new();
        let mut by_ptr: HashMap<usize, usize> = HashMap::new();
        let audience_of: Vec<Option<usize>> = out
            .accepted
            .iter()
            .map(|a| {
                if !a.fan_out {
                    return None;
                }
                let key = crate::model::DedupeKey {
                    sender: a.message.from.clone(),
                    id: a.message.id.clone(),
                };
                let users = &out.audience.get(&key)?.users;
                let ptr = Arc::as_ptr(users) as *const UserId as usize;
                Some(*by_ptr.entry(ptr).or_insert_with(|| {
                    audiences.push(users.clone());
                    audiences.len() - 1
                }))
            })
            .collect();
        let users: Vec<UserId> = audiences.iter().flat_map(|a| a.iter().cloned()).collect();
        // Push: who of the (small enough) audiences registered devices, beside the lookup.
        let pushable: Vec<UserId> = audiences
            .iter()
            .filter(|a| a.len() <= crate::push::MAX_GROUP)
            .flat_map(|a| a.iter().cloned())
            .collect();
        let (sessions, registered) =
            tokio::join!(self.lookup(&users, out), async {
                if pushable.is_empty() {
                    return Vec::new();
                }
                self.ports.push.registered(&pushable).await.unwrap_or_else(|e| {
                warn!(cause = %e, "push registrations unavailable; this batch pushes nothing");
                Vec::new()
            })
            });
        out.pushes = self.push_requests(out, &audiences, &audience_of, &sessions, &registered);
        out.report.pushes = out.pushes.len();
        let mut plans: Vec<Vec<(u32, Vec<UserId>)>> = Vec::with_capacity(audiences.len());
        let mut at = 0;
        for audience in &audiences {
            let end = (at + audience.len()).min(sessions.len());
            plans.push(by_gateway(
                audience,
                sessions.get(at..end).unwrap_or_default(),
            ));
            at += audience.len();
        }
        let mut deliveries = Vec::new();
        // A reply to a connection in another region goes there with the replicas.
        for ((a, frame), plan) in out.accepted.iter().zip(&frames).zip(&audience_of) {
            let plan = plan.map_or(&[][..], |k| &plans[k][..]);
            deliveries.extend(plan_deliveries(
                &a.message,
                frame.as_deref(),
                a.reply.as_ref().filter(|r| self.regions.is_local(r)),
                plan,
            ));
        }
        for (reply, err) in out.errors.iter().filter(|(r, _)| self.regions.is_local(r)) {
            deliveries.push(Delivery {
                slot: reply.slot,
                recipients: Vec::new(),
                message: None,
                reply: Some(Reply {
                    conn: reply.conn.clone(),
                    frame: err.to_frame().to_text(),
                }),
                signal: None,
                presence: None,
            });
        }
        out.report.phases.route = started.elapsed();
        deliveries
    }

    /// One log entry per message to be delivered (one round trip for the batch). A failed
    /// write (Redis down, failing over) is tried again, backing off, until it lands: the log is
    /// each device's backlog, and `accepted` goes out only after it, so an accepted message is
    /// never missing from it. Meanwhile the batch waits, uncommitted; every other step needs
    /// Redis too, and a process stopped while waiting leaves the batch to be replayed.
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
        until_ok(
            "conversation log write",
            &mut out.report.log_retries,
            || self.ports.log.append(&entries),
        )
        .await;
        out.report.logged += entries.len();
    }

    /// The live sessions of each user, tried [`LOOKUP_ATTEMPTS`] times; then none for all
    /// (the messages are logged, and reach the devices on their next connection).
    /// The push requests of the batch's fanned-out messages (`registered`: the devices of the
    /// users of the audiences of at most [`crate::push::MAX_GROUP`], in order; `sessions`: every
    /// audience's sessions, in order).
    fn push_requests(
        &self,
        out: &Outcome,
        audiences: &[Arc<[UserId]>],
        audience_of: &[Option<usize>],
        sessions: &[Vec<SessionRoute>],
        registered: &[Vec<String>],
    ) -> Vec<crate::push::PushRequest> {
        if registered.iter().all(Vec::is_empty) {
            return Vec::new();
        }
        // Where each audience's users start in `sessions` and in `registered`.
        let (mut at, mut pushed_at) = (0, 0);
        let mut starts: Vec<(usize, Option<usize>)> = Vec::with_capacity(audiences.len());
        for a in audiences {
            let small = a.len() <= crate::push::MAX_GROUP;
            starts.push((at, small.then_some(pushed_at)));
            at += a.len();
            if small {
                pushed_at += a.len();
            }
        }
        let mut requests = Vec::new();
        for (accepted, k) in out.accepted.iter().zip(audience_of) {
            let Some(k) = *k else { continue };
            let (at, Some(pushed_at)) = starts[k] else {
                continue;
            };
            let audience = &audiences[k];
            let n = audience.len();
            let (Some(devices), Some(live)) = (
                registered.get(pushed_at..pushed_at + n),
                sessions.get(at..at + n),
            ) else {
                continue;
            };
            let live: Vec<Vec<String>> = live
                .iter()
                .map(|routes| routes.iter().filter_map(|r| r.device.clone()).collect())
                .collect();
            requests.extend(crate::push::requests(
                &accepted.message,
                audience,
                devices,
                &live,
            ));
        }
        requests
    }

    pub(super) async fn lookup(
        &self,
        users: &[UserId],
        out: &mut Outcome,
    ) -> Vec<Vec<SessionRoute>> {
        if users.is_empty() {
            return Vec::new();
        }
        let mut backoff = RETRY_FIRST;
        for attempt in 1..=LOOKUP_ATTEMPTS {
            match self.ports.registry.lookup(users).await {
                Ok(sessions) => return sessions,
                Err(e) if attempt < LOOKUP_ATTEMPTS => {
                    out.report.lookup_retries += 1;
                    warn!(cause = %e, retry_in = ?backoff, "registry lookup failed; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
                Err(e) => {
                    warn!(cause = %e, "registry lookup failed; delivering replies only (the devices get the messages on their next connection)");
                }
            }
        }
        vec![Vec::new(); users.len()]
    }
}

/// The first wait before a log write or lookup is tried again; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Lookups tried per batch (about 0.75 s of waiting in all) before live delivery is given up.
const LOOKUP_ATTEMPTS: u32 = 5;

/// Runs `attempt` until it succeeds, backing off from [`RETRY_FIRST`] to [`RETRY_MAX`] and
/// counting the failures in `retries`: for the writes a batch cannot be answered or committed
/// without (meanwhile it waits, uncommitted; a process stopped while waiting leaves it to be
/// replayed).
pub(super) async fn until_ok<T, F, Fut>(
    what: &'static str,
    retries: &mut usize,
    mut attempt: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::PortError>>,
{
    let mut backoff = RETRY_FIRST;
    loop {
        match attempt().await {
            Ok(done) => return done,
            Err(e) => {
                *retries += 1;
                warn!(cause = %e, what, retry_in = ?backoff, "failed; trying again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

/// An audience's online members by gateway slot (`sessions`: each member's live sessions, in
/// the audience's order), each member once per slot.
pub(super) fn by_gateway(
    audience: &[UserId],
    sessions: &[Vec<SessionRoute>],
) -> Vec<(u32, Vec<UserId>)> {
    let mut by_slot: Vec<(u32, Vec<UserId>)> = Vec::new();
    for (user, routes) in audience.iter().zip(sessions) {
        for route in routes {
            match by_slot.iter_mut().find(|(slot, _)| *slot == route.slot) {
                // A user's sessions come one after another: one with several on a gateway
                // is its last recipient there.
                Some((_, users)) if users.last() == Some(user) => {}
                Some((_, users)) => users.push(user.clone()),
                None => by_slot.push((route.slot, vec![user.clone()])),
            }
        }
    }
    by_slot
}

/// The deliveries of signals (receipts, typing): `signal(i)` to the online members of
/// `audiences[i]`, one record per gateway slot. `sessions` holds every audience's members'
/// sessions in order, as one registry lookup of all of them answered.
pub(super) fn signal_deliveries(
    audiences: &[Vec<UserId>],
    sessions: &[Vec<SessionRoute>],
    mut signal: impl FnMut(usize) -> crate::model::Signal,
) -> Vec<Delivery> {
    let mut deliveries = Vec::new();
    let mut at = 0;
    for (i, audience) in audiences.iter().enumerate() {
        let end = (at + audience.len()).min(sessions.len());
        let plan = by_gateway(audience, sessions.get(at..end).unwrap_or_default());
        at += audience.len();
        if plan.is_empty() {
            continue;
        }
        let signal = signal(i);
        deliveries.extend(plan.into_iter().map(|(slot, recipients)| Delivery {
            slot,
            recipients,
            message: None,
            reply: None,
            signal: Some(signal.clone()),
            presence: None,
        }));
    }
    deliveries
}

/// The deliveries of one message (`frame`: its rendering, needed when it has recipients): one
/// per slot of `plan` (its audience's online members by slot), with the sender's `accepted` on
/// the record for its own slot (or alone, if no recipient is there).
fn plan_deliveries(
    message: &StoredMessage,
    frame: Option<&str>,
    reply: Option<&ReplyTo>,
    plan: &[(u32, Vec<UserId>)],
) -> Vec<Delivery> {
    let mut slots: Vec<(u32, &[UserId])> = plan
        .iter()
        .map(|(slot, users)| (*slot, &users[..]))
        .collect();
    if let Some(r) = reply {
        if !slots.iter().any(|(slot, _)| *slot == r.slot) {
            slots.push((r.slot, &[]));
        }
    }
    let frame = frame.filter(|_| slots.iter().any(|(_, users)| !users.is_empty()));
    slots
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
            recipients: users.to_vec(),
            reply: reply.filter(|r| r.slot == slot).map(|r| Reply {
                conn: r.conn.clone(),
                frame: message.accepted_text(),
            }),
            signal: None,
            presence: None,
        })
        .collect()
}
