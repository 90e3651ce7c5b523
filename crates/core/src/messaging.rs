//! The messaging step: what the Messaging Service does with one batch from `incoming_messages`.
//!
//! Per batch: authorize; dedupe by (sender, client id); allocate seqs with one atomic add per
//! conversation; remember the acceptances, then store the messages (batched); look every
//! recipient up in the registry in one round trip; publish ONE delivery per target gateway (the
//! sender's `accepted` rides on the record for its gateway). The caller commits the batch's
//! offsets only after [`MessagingStep::process`] returns `Ok`.
//!
//! Crash safety: acceptances are remembered before the messages are written, so a batch replayed
//! after a crash, or a client's retry, finds them, writes any message that did not make it
//! (conditional put) and answers with the original conversation and seq. A crash between
//! allocation and write leaves a gap, never a reuse. A failed write keeps the acceptances: the
//! senders get `unavailable` and their retries answer the original seqs.
//!
//! A system message (no client to answer) that fails for a reason that may pass is handed back
//! in [`Prepared::retry`]: the caller prepares it again before committing its offsets.
//!
//! With other regions ([`crate::regions`]): a send whose conversation is homed elsewhere (the
//! allocation says so) is handed back in [`Prepared::forwards`] for its home; what this region
//! sequences is handed back in [`Prepared::replicas`] for the others, with the answers to sends
//! forwarded here; [`MessagingStep::relay`] delivers another region's replicas here.
//!
//! Modules: [`audience`] (who receives, who may send), [`store`] (sequence, store, repeats),
//! [`route`] (conversation log, sessions, deliveries), [`relay`] (other regions).

mod audience;
mod markers;
mod relay;
mod route;
mod store;
mod typing;

use foldhash::{HashMap, HashMapExt};

use tracing::warn;

use connect_protocol::{ErrorCode, FrameError};

use crate::model::{Delivery, ReplyTo, StoredMessage, Submission};
use crate::ports::Ports;
use crate::PortError;

/// Declares [`StepReport`]'s counts once: its fields, [`StepReport::counts`] (what the
/// service's metrics publish, by name) and the sum of two reports.
macro_rules! step_counts {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Counts of what one batch did.
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        pub struct StepReport {
            $($(#[$doc])* pub $name: usize,)*
            /// Where the batch's time went.
            pub phases: Phases,
        }

        impl StepReport {
            /// Every count, by its field's name.
            pub fn counts(&self) -> [(&'static str, usize); step_counts!(@len $($name)*)] {
                [$((stringify!($name), self.$name)),*]
            }

            fn add(&mut self, other: &StepReport) {
                $(self.$name += other.$name;)*
                self.phases.add(&other.phases);
            }
        }
    };
    (@len $($name:ident)*) => { 0 $(+ step_counts!(@one $name))* };
    (@one $name:ident) => { 1 };
}

step_counts! {
    /// Messages stored under a fresh seq.
    stored,
    /// Repeats of a send already accepted (answered with the original seq).
    duplicates,
    /// Sends refused for good (not a member, no such group, …).
    rejected,
    /// Sends answered `unavailable` (a backend failed).
    unavailable,
    /// Deliveries made (one per target gateway of a message or signal; the bus carries a batch's
    /// deliveries for one gateway in one record).
    deliveries,
    /// Messages written to their conversations' logs (once each, whatever the audience).
    logged,
    /// Log appends that failed and were tried again (the batch waits for its log).
    log_retries,
    /// Registry lookups that failed and were tried again.
    lookup_retries,
    /// Client sends refused unprocessed because they waited too long (overload).
    shed,
    /// System messages handed back to be prepared again (a backend failed on them).
    retried,
    /// Sends forwarded to their conversation's home region.
    forwarded,
    /// Other regions' sequenced messages and answers taken in.
    relayed,
    /// Read markers that moved (and were stored).
    markers,
    /// Push requests emitted (registered devices without a live session).
    pushes,
    /// Read-marker reads and writes (and head reads) that failed and were tried again.
    marker_retries,
    /// `typing` signals fanned out.
    typing,
    /// `typing` signals dropped: too old, a group too large, a backend down.
    typing_dropped,
    /// Fresh messages whose reused seq was found taken (not written; answered `unavailable`).
    seq_conflicts,
}

/// Time spent in each phase of [`MessagingStep::prepare`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Phases {
    /// Dedupe lookup.
    pub dedupe: std::time::Duration,
    /// Membership versions and member lists (groups).
    pub authorize: std::time::Duration,
    /// Sequence allocation, remembering, the chat table write (and repeats' reads).
    pub store: std::time::Duration,
    /// The conversation log append.
    pub log: std::time::Duration,
    /// The session registry lookup and building the deliveries.
    pub route: std::time::Duration,
}

impl Phases {
    /// (name, time) of each phase, for metrics.
    pub fn named(&self) -> [(&'static str, std::time::Duration); 5] {
        [
            ("dedupe", self.dedupe),
            ("authorize", self.authorize),
            ("store", self.store),
            ("log", self.log),
            ("route", self.route),
        ]
    }

    fn add(&mut self, other: &Phases) {
        self.dedupe += other.dedupe;
        self.authorize += other.authorize;
        self.store += other.store;
        self.log += other.log;
        self.route += other.route;
    }
}

/// The time since `clock`, which moves to now.
fn lap(clock: &mut std::time::Instant) -> std::time::Duration {
    let now = std::time::Instant::now();
    let took = now - *clock;
    *clock = now;
    took
}

/// A batch ready to publish.
#[derive(Debug, Default)]
pub struct Prepared {
    pub deliveries: Vec<Delivery>,
    pub report: StepReport,
    /// System messages that failed for a reason that may pass: prepare them again (they have no
    /// client to retry them) before the batch's offsets are committed.
    pub retry: Vec<Submission>,
    /// Sends for conversations homed in another region: (home, send), to publish there.
    pub forwards: Vec<(String, Submission)>,
    /// What this region sequenced (and its answers to forwarded sends), for the other regions.
    pub replicas: Vec<crate::regions::Replica>,
    /// Sends other regions forwarded here, for this region's `incoming_messages`.
    pub taken_in: Vec<Submission>,
    /// (sender, conversation) → the seq their newest stored send moved their read marker to.
    pub sent: HashMap<(connect_protocol::UserId, connect_protocol::ConversationId), u64>,
    /// Pushes for registered devices with no live session, for the push function.
    pub pushes: Vec<crate::push::PushRequest>,
}

impl Prepared {
    /// Adds the outcome of preparing this batch's [`Self::retry`] again.
    pub fn absorb(&mut self, again: Prepared) {
        self.retry = Vec::new();
        self.merge(again);
    }

    /// Adds another part of the same batch (in order after this one).
    pub fn merge(&mut self, other: Prepared) {
        self.deliveries.extend(other.deliveries);
        self.report.add(&other.report);
        self.retry.extend(other.retry);
        self.forwards.extend(other.forwards);
        self.replicas.extend(other.replicas);
        self.taken_in.extend(other.taken_in);
        self.pushes.extend(other.pushes);
        for (key, seq) in other.sent {
            let at = self.sent.entry(key).or_default();
            *at = (*at).max(seq);
        }
    }
}

/// The messaging use-case over its ports.
pub struct MessagingStep {
    ports: Ports,
    /// Client sends older than this when their batch starts are answered `unavailable`
    /// without being processed (0: never).
    shed_after_ms: u64,
    regions: crate::regions::Regions,
    /// Groups up to this size get receipts live to every member (larger: the reader's own
    /// connections only).
    receipts_live_max_members: usize,
    /// A `typing` signal older than this (ms) when its batch starts is dropped.
    typing_max_age_ms: u64,
    /// Groups above this size get no `typing`.
    typing_max_members: usize,
    /// A direct conversation's place in its users' recency index moves when its newest message
    /// is at least this much newer than the place this process last wrote (ms).
    place_step_ms: u64,
    /// Where this process last placed each direct conversation (its ts).
    placed: Placed,
}

/// Direct conversations' last written places, bounded (forgotten all at once when full: a
/// conversation forgotten is placed again with its next message, which is harmless).
#[derive(Default)]
struct Placed(std::sync::Mutex<HashMap<connect_protocol::ConversationId, u64>>);

impl Placed {
    const MAX: usize = 100_000;

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<connect_protocol::ConversationId, u64>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a head at `ts` should move the conversation's place (nothing placed here, or
    /// placed at least `step` ms earlier).
    fn due(&self, c: &connect_protocol::ConversationId, ts: u64, step: u64) -> bool {
        self.lock()
            .get(c)
            .is_none_or(|placed| ts >= placed.saturating_add(step))
    }

    fn remember(&self, places: &[(connect_protocol::ConversationId, crate::ports::Head)]) {
        let mut map = self.lock();
        if map.len() + places.len() > Self::MAX {
            map.clear();
        }
        for (c, head) in places {
            map.insert(c.clone(), head.ts);
        }
    }
}

/// A message that will be delivered, with the connection to answer.
struct Accepted {
    message: StoredMessage,
    reply: Option<ReplyTo>,
    /// False for a repeat of a message already fanned out in this batch: it only needs `accepted`.
    fan_out: bool,
}

/// Why a submission was not accepted.
enum Failure {
    /// For good (or, for `unavailable`, by policy): answered with this code.
    Refused(ErrorCode, &'static str),
    /// A backend call failed: a client gets `unavailable`; a system message is retried if the
    /// error may pass, dropped (and logged) if not.
    Backend(PortError, &'static str),
}

#[derive(Default)]
struct Outcome {
    /// Who receives each valid submission, decided when it was authorized.
    audience: HashMap<crate::model::DedupeKey, audience::Audience>,
    accepted: Vec<Accepted>,
    errors: Vec<(ReplyTo, FrameError)>,
    retry: Vec<Submission>,
    forwards: Vec<(String, Submission)>,
    /// This region and its peers when other regions exist (sends homed elsewhere are forwarded).
    forwarding: Option<crate::regions::Regions>,
    report: StepReport,
    /// See [`Prepared::sent`].
    sent: HashMap<(connect_protocol::UserId, connect_protocol::ConversationId), u64>,
    /// See [`Prepared::pushes`].
    pushes: Vec<crate::push::PushRequest>,
}

impl Outcome {
    fn fail(&mut self, sub: &Submission, failure: Failure) {
        let (code, message) = match failure {
            Failure::Backend(PortError::NotHome { home, conversation }, _) => {
                match &self.forwarding {
                    Some(regions)
                        if regions.peers.contains(&home) && sub.hops < crate::regions::MAX_HOPS =>
                    {
                        let mut sub = sub.clone();
                        sub.hops += 1;
                        if let Some(reply) = &mut sub.reply {
                            reply.region.get_or_insert_with(|| regions.local.clone());
                        }
                        self.forwards.push((home, sub));
                        return;
                    }
                    _ => {
                        warn!(%conversation, %home, hops = sub.hops,
                            "conversation homed in a region that is not a peer (or forwarded too often); answering unavailable");
                        (
                            ErrorCode::Unavailable,
                            "conversation homed in an unreachable region; retry later",
                        )
                    }
                }
            }
            Failure::Refused(code, message) => (code, message),
            Failure::Backend(e, _) if sub.reply.is_none() && e.is_retryable() => {
                self.report.retried += 1;
                self.retry.push(sub.clone());
                return;
            }
            Failure::Backend(e, message) => {
                if sub.reply.is_none() {
                    warn!(cause = %e, conversation = %sub.conversation, id = %sub.id,
                        "system message dropped: its backend refused it for good");
                }
                (ErrorCode::Unavailable, message)
            }
        };
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

impl MessagingStep {
    pub fn new(ports: Ports) -> Self {
        Self {
            ports,
            shed_after_ms: 0,
            regions: crate::regions::Regions::single("local"),
            receipts_live_max_members: 32,
            typing_max_age_ms: 2000,
            typing_max_members: 256,
            place_step_ms: 1000,
            placed: Placed::default(),
        }
    }

    /// A busy direct conversation's place in the inbox order moves at most once per `ms`
    /// (`INBOX_PLACE_STEP_MS`); its head moves with every batch.
    pub fn place_step_ms(mut self, ms: u64) -> Self {
        self.place_step_ms = ms;
        self
    }

    /// Groups up to `n` members get every member's receipts live (`RECEIPTS_LIVE_MAX_MEMBERS`).
    pub fn receipts_live_max_members(mut self, n: usize) -> Self {
        self.receipts_live_max_members = n;
        self
    }

    /// `typing` signals older than `ms` when their batch starts are dropped
    /// (`MESSAGING_TYPING_MAX_AGE_MS`), and groups of more than `members` get none
    /// (`TYPING_MAX_MEMBERS`).
    pub fn typing_limits(mut self, ms: u64, members: usize) -> Self {
        self.typing_max_age_ms = ms;
        self.typing_max_members = members;
        self
    }

    /// This region and the others: sends homed elsewhere are forwarded, what this region
    /// sequences is replicated.
    pub fn regions(mut self, regions: crate::regions::Regions) -> Self {
        self.regions = regions;
        self
    }

    /// Refuses new client sends that waited longer than `ms` (since the gateway took them) with
    /// `unavailable`, unsequenced and unstored: under overload the backlog is answered quickly
    /// and the capacity goes to sends that can still be answered in time. A send accepted
    /// before (a batch replayed after a crash, a retry) and system messages are never shed.
    pub fn shed_after_ms(mut self, ms: u64) -> Self {
        self.shed_after_ms = ms;
        self
    }

    fn outcome(&self) -> Outcome {
        Outcome {
            forwarding: self.regions.active().then(|| self.regions.clone()),
            ..Outcome::default()
        }
    }

    fn stale(&self, sub: &Submission, now_ms: u64) -> bool {
        self.shed_after_ms > 0
            && sub.event.is_none()
            && sub.hops == 0
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
        let mut out = self.outcome();
        let mut clock = std::time::Instant::now();
        // Dedupe first: a repeat is answered with what it was accepted as, whatever it names now.
        let keys: Vec<_> = batch.iter().map(Submission::dedupe_key).collect();
        let known = self.ports.dedupe.get(&keys).await;
        out.report.phases.dedupe = lap(&mut clock);
        match known {
            Err(e) => {
                warn!(cause = %e, "dedupe lookup failed; answering unavailable");
                for sub in &batch {
                    out.fail(
                        sub,
                        Failure::Backend(e.clone(), "dedupe index unavailable; retry"),
                    );
                }
            }
            Ok(known) => {
                let mut view = self.current_groups(&batch, &known).await;
                out.report.phases.authorize = lap(&mut clock);
                let mut fresh = Vec::with_capacity(batch.len());
                let mut earlier = Vec::new();
                for ((sub, key), known) in batch.into_iter().zip(keys).zip(known) {
                    if let Some(acceptance) = known {
                        earlier.push((sub, acceptance));
                        continue;
                    }
                    match self.audience(&sub, &mut view, None).await {
                        Ok(audience) => {
                            out.audience.entry(key).or_insert(audience);
                            fresh.push(sub);
                        }
                        Err(failure) => out.fail(&sub, failure),
                    }
                }
                out.report.phases.authorize += lap(&mut clock);
                let taken = self.sequence_and_store(fresh, now_ms, &mut out).await;
                earlier.extend(taken);
                self.answer_earlier(earlier, &mut view, &mut out).await;
                out.report.phases.store = lap(&mut clock);
            }
        }
        self.finish(out, true).await
    }

    /// Routes what `out` holds: the local deliveries, and (`replicate`: this region sequenced
    /// them) the replicas for the other regions.
    async fn finish(&self, mut out: Outcome, replicate: bool) -> Prepared {
        let deliveries = self.route(&mut out).await;
        out.report.deliveries = deliveries.len();
        if !replicate {
            // Another region's messages are pushed by the region that sequenced them.
            out.pushes.clear();
            out.report.pushes = 0;
        }
        let replicas = if replicate {
            self.replicas(&out)
        } else {
            Vec::new()
        };
        out.report.forwarded = out.forwards.len();
        Prepared {
            deliveries,
            report: out.report,
            retry: out.retry,
            forwards: out.forwards,
            replicas,
            taken_in: Vec::new(),
            sent: out.sent,
            pushes: out.pushes,
        }
    }

    /// The members of the groups that the batch's new client sends go to, as of now (one
    /// consistent version read): a membership change whose admin call has answered holds for
    /// every message of this batch. If the versions cannot be read, the cached members are
    /// dropped and each group is read from the store (consistently) when it is needed.
    async fn current_groups(
        &self,
        batch: &[Submission],
        known: &[Option<crate::model::Acceptance>],
    ) -> HashMap<connect_protocol::GroupId, crate::groups::Members> {
        let groups = batch
            .iter()
            .zip(known)
            .filter(|(sub, known)| known.is_none() && sub.event.is_none())
            .filter_map(|(sub, _)| sub.conversation.group_id().cloned());
        self.view_of(groups).await
    }

    /// The current members of `groups` (one consistent version read); if the versions cannot be
    /// read, the cached members are dropped and each group is read afresh when needed.
    async fn view_of(
        &self,
        groups: impl Iterator<Item = connect_protocol::GroupId>,
    ) -> HashMap<connect_protocol::GroupId, crate::groups::Members> {
        let mut groups: Vec<connect_protocol::GroupId> = groups.collect();
        groups.sort();
        groups.dedup();
        match self.ports.groups.current(&groups).await {
            Ok(view) => view,
            Err(e) => {
                warn!(cause = %e, "membership versions unavailable; reading members afresh");
                groups.iter().for_each(|g| self.ports.groups.invalidate(g));
                HashMap::new()
            }
        }
    }
}

#[cfg(test)]
mod tests;
