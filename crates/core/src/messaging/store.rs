//! Sequencing and storing: fresh submissions get seqs and are written; submissions accepted
//! before are answered with what was stored for them.

use foldhash::{HashMap, HashMapExt};

use futures_util::future::join_all;
use tracing::warn;

use connect_protocol::{ConversationId, GroupId};

use super::{Accepted, Failure, MessagingStep, Outcome};
use crate::model::{Acceptance, DedupeKey, StoredMessage, Submission};
use crate::ports::Reserved;
use crate::PortError;

const STORE_DOWN: &str = "storage unavailable; retry with the same id";

/// What [`MessagingStep::persist`] made of one message.
enum Persisted {
    /// Remembered and written here.
    Ours,
    /// Another process remembered the same send first, with this acceptance.
    Taken(Acceptance),
    /// Its seq (a reused one) holds another message: not written, its acceptance forgotten.
    Conflict,
}

/// What became of a fresh submission.
enum Stored {
    /// Stored here, under this process's seq.
    Ours(StoredMessage),
    /// Another process remembered the same send first: its acceptance stands.
    Taken(Acceptance),
    /// Not stored (answered `unavailable`, or retried for a system message).
    Failed(PortError),
}

/// The message a fresh submission becomes under `acceptance`.
fn message_of(sub: &Submission, acceptance: &Acceptance) -> StoredMessage {
    StoredMessage {
        conversation: acceptance.conversation.clone(),
        seq: acceptance.seq,
        from: sub.sender.clone(),
        id: sub.id.clone(),
        body: sub.body.clone(),
        ts: acceptance.ts,
        event: sub.event.clone(),
        mv: acceptance.mv,
        device: sub.device.clone(),
    }
}

impl MessagingStep {
    /// Fresh submissions (no acceptance remembered, authorized): shed the stale ones, allocate,
    /// remember, store. A repeat of a key earlier in the batch gets that message's answer.
    /// Returns the sends that another process remembered first (between this batch's dedupe
    /// lookup and its remembering), with that acceptance: they are repeats, to be answered as
    /// [`Self::answer_earlier`] answers, and their seqs here stay unused (a gap, never a reuse).
    pub(super) async fn sequence_and_store(
        &self,
        candidates: Vec<Submission>,
        now_ms: u64,
        out: &mut Outcome,
    ) -> Vec<(Submission, Acceptance)> {
        let mut fresh: Vec<Submission> = Vec::new();
        let mut first_of: HashMap<DedupeKey, usize> = HashMap::new();
        let mut repeats: Vec<(Submission, usize)> = Vec::new();
        for sub in candidates {
            let key = sub.dedupe_key();
            if self.stale(&sub, now_ms) {
                out.report.shed += 1;
                out.fail(
                    &sub,
                    Failure::Refused(
                        connect_protocol::ErrorCode::Unavailable,
                        "overloaded; retry with the same id",
                    ),
                );
            } else if let Some(&i) = first_of.get(&key) {
                repeats.push((sub, i));
            } else {
                first_of.insert(key, fresh.len());
                fresh.push(sub);
            }
        }
        let stored = self.store_fresh(&fresh, now_ms, out).await;
        let mut taken: Vec<(Submission, Acceptance)> = Vec::new();
        for (sub, stored) in fresh.into_iter().zip(&stored) {
            if let Stored::Taken(acceptance) = stored {
                taken.push((sub, acceptance.clone()));
            }
        }
        for (sub, i) in repeats {
            match &stored[i] {
                Stored::Ours(message) => {
                    out.report.duplicates += 1;
                    out.accepted.push(Accepted {
                        message: message.clone(),
                        reply: sub.reply,
                        fan_out: false,
                    })
                }
                // Answered (and counted) with the repeats of earlier batches.
                Stored::Taken(acceptance) => taken.push((sub, acceptance.clone())),
                Stored::Failed(e) => {
                    out.report.duplicates += 1;
                    out.fail(&sub, Failure::Backend(e.clone(), STORE_DOWN))
                }
            }
        }
        taken
    }

    /// Allocates and stores fresh submissions; returns what became of each.
    async fn store_fresh(
        &self,
        fresh: &[Submission],
        now_ms: u64,
        out: &mut Outcome,
    ) -> Vec<Stored> {
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
        let mut next: Vec<Result<Reserved, PortError>> =
            self.ports.sequences.allocate(&order).await;
        for (e, (conversation, _)) in next.iter().zip(&order) {
            if let Err(e) = e {
                warn!(cause = %e, %conversation, "sequence allocation failed");
            }
        }
        let mut messages: Vec<Result<StoredMessage, PortError>> = Vec::with_capacity(fresh.len());
        let mut to_store: Vec<(StoredMessage, bool)> = Vec::with_capacity(fresh.len());
        for sub in fresh {
            match &mut next[slot_of[&sub.conversation]] {
                Ok(reserved) => {
                    let acceptance = Acceptance {
                        conversation: sub.conversation.clone(),
                        seq: reserved.first,
                        ts: now_ms,
                        mv: out.audience.get(&sub.dedupe_key()).and_then(|a| a.mv),
                    };
                    let message = message_of(sub, &acceptance);
                    to_store.push((message.clone(), reserved.reused(reserved.first)));
                    messages.push(Ok(message));
                    reserved.first += 1;
                }
                Err(e) => messages.push(Err(e.clone())),
            }
        }

        let mut persisted = match self.persist(&to_store).await {
            Ok(persisted) => persisted.into_iter(),
            Err(e) => {
                warn!(cause = %e, count = to_store.len(), "storing the batch failed; answering unavailable");
                for m in messages.iter_mut().filter(|m| m.is_ok()) {
                    *m = Err(e.clone());
                }
                Vec::new().into_iter()
            }
        };
        let mut outcomes = Vec::with_capacity(fresh.len());
        for (sub, message) in fresh.iter().zip(messages) {
            let m = match message {
                Ok(m) => m,
                Err(e) => {
                    out.fail(sub, Failure::Backend(e.clone(), STORE_DOWN));
                    outcomes.push(Stored::Failed(e));
                    continue;
                }
            };
            match persisted.next() {
                Some(Persisted::Taken(first)) => {
                    outcomes.push(Stored::Taken(first));
                    continue;
                }
                Some(Persisted::Conflict) => {
                    out.report.seq_conflicts += 1;
                    let e = PortError::unavailable("chat", "its seq was found taken");
                    out.fail(sub, Failure::Backend(e.clone(), STORE_DOWN));
                    outcomes.push(Stored::Failed(e));
                    continue;
                }
                Some(Persisted::Ours) | None => {}
            }
            if m.event.is_none() {
                let sent = out
                    .sent
                    .entry((m.from.clone(), m.conversation.clone()))
                    .or_default();
                *sent = (*sent).max(m.seq);
            }
            out.report.stored += 1;
            out.accepted.push(Accepted {
                message: m.clone(),
                reply: sub.reply.clone(),
                fan_out: true,
            });
            outcomes.push(Stored::Ours(m));
        }
        outcomes
    }

    /// Remembers the acceptances, then writes the messages whose acceptance was remembered
    /// here (not those another process remembered first: returned, in order, with that
    /// acceptance). A failed write keeps the acceptances: part of the batch may have landed,
    /// and a retry of any of its messages must answer the seq it was given and write only
    /// what is missing (never a second copy).
    ///
    /// A message whose seq was reserved before (`true` beside it: given back once, see
    /// [`Reserved::reused_to`]) is written only where nothing is stored. Where something is,
    /// the seq was taken (a reuse the allocator should never make): the stored message stays,
    /// the send's acceptance is forgotten (its retry is sequenced anew), the conversation's
    /// reserved seqs are abandoned, and it is returned as a conflict.
    async fn persist(
        &self,
        messages: &[(StoredMessage, bool)],
    ) -> Result<Vec<Persisted>, PortError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let entries: Vec<_> = messages
            .iter()
            .map(|(m, _)| {
                let key = DedupeKey {
                    sender: m.from.clone(),
                    id: m.id.clone(),
                };
                let acceptance = Acceptance {
                    conversation: m.conversation.clone(),
                    seq: m.seq,
                    ts: m.ts,
                    mv: m.mv,
                };
                (key, acceptance)
            })
            .collect();
        let taken = self.ports.dedupe.remember(&entries).await?;
        let mut persisted: Vec<Persisted> = taken
            .into_iter()
            .map(|t| t.map_or(Persisted::Ours, Persisted::Taken))
            .collect();
        let count = persisted
            .iter()
            .filter(|p| !matches!(p, Persisted::Ours))
            .count();
        if count > 0 {
            warn!(
                count,
                "sends remembered first by another process (a partition moving); answering them as repeats"
            );
        }
        // Reused seqs first, each written only where nothing is stored.
        let guarded: Vec<usize> = (0..messages.len())
            .filter(|&i| messages[i].1 && matches!(persisted[i], Persisted::Ours))
            .collect();
        if !guarded.is_empty() {
            let written = join_all(
                guarded
                    .iter()
                    .map(|&i| self.ports.chat.put_if_absent(&messages[i].0)),
            )
            .await;
            let mut conflicts = Vec::new();
            let mut failed = None;
            for (&i, written) in guarded.iter().zip(written) {
                match written {
                    Ok(true) => {}
                    Ok(false) => {
                        persisted[i] = Persisted::Conflict;
                        conflicts.push(entries[i].clone());
                    }
                    Err(e) => failed = Some(e),
                }
            }
            self.abandon_taken(&conflicts).await;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        let ours: Vec<StoredMessage> = messages
            .iter()
            .zip(&persisted)
            .filter(|((_, reused), p)| matches!(p, Persisted::Ours) && !*reused)
            .map(|((m, _), _)| m.clone())
            .collect();
        // The inbox's writes alongside the messages': a failure of either answers
        // `unavailable`, and the retry (a repeat) writes the inbox again (forward only).
        let written: Vec<StoredMessage> = messages
            .iter()
            .zip(&persisted)
            .filter(|(_, p)| matches!(p, Persisted::Ours))
            .map(|((m, _), _)| m.clone())
            .collect();
        let inbox = self.inbox_write(&written, false);
        self.ports
            .chat
            .put_with_inbox(&ours, &inbox, self.ports.inbox.as_ref())
            .await?;
        self.placed.remember(&inbox.places);
        Ok(persisted)
    }

    /// Sends whose seq was found taken by another message: their acceptances are forgotten
    /// (best effort: one left behind is found void by its retry, see
    /// [`Self::answer_each_earlier`]) and their conversations' reserved seqs abandoned.
    async fn abandon_taken(&self, conflicts: &[(DedupeKey, Acceptance)]) {
        if conflicts.is_empty() {
            return;
        }
        for (key, acceptance) in conflicts {
            warn!(
                conversation = %acceptance.conversation,
                seq = acceptance.seq,
                sender = %key.sender,
                "a reused seq was found taken: the stored message stays, the send is answered unavailable"
            );
            self.ports.sequences.abandon(&acceptance.conversation);
        }
        if let Err(e) = self.ports.dedupe.forget(conflicts).await {
            warn!(cause = %e, "forgetting the acceptances of taken seqs failed");
        }
    }

    /// The inbox's writes for stored messages: each conversation's head (its newest message
    /// here), a direct conversation's place when due (`all`: every one), each sender's markers
    /// moved to their newest message.
    fn inbox_write(&self, messages: &[StoredMessage], all: bool) -> crate::ports::InboxWrite {
        let mut write = crate::ports::InboxWrite::default();
        let mut headed = foldhash::HashSet::default();
        let mut senders = foldhash::HashSet::default();
        for m in messages.iter().rev() {
            if headed.insert(&m.conversation) {
                let head = crate::ports::Head {
                    seq: m.seq,
                    ts: m.ts,
                };
                write.heads.push((m.conversation.clone(), head));
                if m.conversation.group_id().is_none()
                    && (all || self.placed.due(&m.conversation, m.ts, self.place_step_ms))
                {
                    write.places.push((m.conversation.clone(), head));
                }
            }
            // A system message's `from` made the change; it is not a read.
            if m.event.is_none() && senders.insert((&m.from, &m.conversation)) {
                let markers = crate::model::Markers {
                    read: m.seq,
                    delivered: m.seq,
                    ts: m.ts,
                };
                write
                    .markers
                    .push((m.from.clone(), m.conversation.clone(), markers));
            }
        }
        write
    }

    /// The inbox's writes for repeats delivered again (a client's retry, a batch replayed after
    /// a crash): heads moved forward only; nothing else, as newer messages may
    /// have been indexed since.
    async fn reindex(&self, repeats: &[StoredMessage], out: &mut Outcome) {
        if repeats.is_empty() {
            return;
        }
        let mut write = self.inbox_write(repeats, true);
        write.markers.clear();
        super::route::until_ok(
            "re-indexing repeats",
            &mut out.report.marker_retries,
            || self.ports.inbox.advance(&write),
        )
        .await;
    }

    /// Submissions whose (sender, id) was accepted before: a retry, or a batch replayed after a
    /// crash. The answer is the original conversation and seq, whatever the repeat names. The
    /// stored message is delivered again (at least once); one that is missing (a crash or a
    /// failed write between remembering and storing) is written now from the repeat, if it is
    /// for the same conversation. A repeat naming another conversation stores and delivers
    /// nothing.
    pub(super) async fn answer_earlier(
        &self,
        earlier: Vec<(Submission, Acceptance)>,
        view: &mut HashMap<GroupId, crate::groups::Members>,
        out: &mut Outcome,
    ) {
        if earlier.is_empty() {
            return;
        }
        let first = out.accepted.len();
        self.answer_each_earlier(earlier, view, out).await;
        let repeats: Vec<StoredMessage> = out.accepted[first..]
            .iter()
            .filter(|a| a.fan_out)
            .map(|a| a.message.clone())
            .collect();
        self.reindex(&repeats, out).await;
    }

    async fn answer_each_earlier(
        &self,
        earlier: Vec<(Submission, Acceptance)>,
        view: &mut HashMap<GroupId, crate::groups::Members>,
        out: &mut Outcome,
    ) {
        out.report.duplicates += earlier.len();
        let keys: Vec<_> = earlier
            .iter()
            .map(|(_, a)| (a.conversation.clone(), a.seq))
            .collect();
        let found = match self.ports.chat.get_many(&keys).await {
            Ok(found) => found,
            Err(e) => {
                for (sub, _) in &earlier {
                    out.fail(sub, Failure::Backend(e.clone(), STORE_DOWN));
                }
                return;
            }
        };
        let mut missing = Vec::new();
        for ((sub, acceptance), found) in earlier.into_iter().zip(found) {
            let same = sub.conversation == acceptance.conversation;
            match found {
                // The seq holds another message: this acceptance is void (its seq was found
                // taken and forgetting it failed). Forgotten now; the retry is sequenced anew.
                Some(stored) if stored.from != sub.sender || stored.id != sub.id => {
                    self.abandon_taken(&[(sub.dedupe_key(), acceptance)]).await;
                    out.fail(
                        &sub,
                        Failure::Backend(
                            PortError::unavailable("chat", "its seq was found taken"),
                            STORE_DOWN,
                        ),
                    );
                }
                Some(stored) => self.answer(sub, stored, same, view, out).await,
                None if same => missing.push((message_of(&sub, &acceptance), sub)),
                // Its own conversation's copy is on its way (a replay writes it): answer only.
                None => {
                    let mut message = message_of(&sub, &acceptance);
                    message.body.clear();
                    message.event = None;
                    self.answer(sub, message, false, view, out).await;
                }
            }
        }
        let written = join_all(
            missing
                .iter()
                .map(|(m, _)| self.ports.chat.put_if_absent(m)),
        )
        .await;
        for ((message, sub), written) in missing.into_iter().zip(written) {
            match written {
                Ok(true) => self.answer(sub, message, true, view, out).await,
                // Written meanwhile (a replay of the original): answer with that copy.
                Ok(false) => match self
                    .ports
                    .chat
                    .get_many(&[(message.conversation.clone(), message.seq)])
                    .await
                    .map(|mut found| found.pop().flatten())
                {
                    Ok(Some(stored)) => self.answer(sub, stored, true, view, out).await,
                    Ok(None) => out.fail(
                        &sub,
                        Failure::Backend(
                            PortError::unavailable("chat", "message vanished"),
                            STORE_DOWN,
                        ),
                    ),
                    Err(e) => out.fail(&sub, Failure::Backend(e, STORE_DOWN)),
                },
                Err(e) => {
                    warn!(cause = %e, "re-storing a remembered message failed");
                    out.fail(&sub, Failure::Backend(e, STORE_DOWN));
                }
            }
        }
    }

    /// Answers a repeat with `message` and, with `fan_out`, delivers it again to its audience:
    /// for a group, the members who had joined by its membership version and still are; a
    /// sender no longer allowed gets the answer only.
    async fn answer(
        &self,
        sub: Submission,
        message: StoredMessage,
        fan_out: bool,
        view: &mut HashMap<GroupId, crate::groups::Members>,
        out: &mut Outcome,
    ) {
        let mut fan_out = fan_out && message.from == sub.sender && message.id == sub.id;
        if fan_out {
            // A group's members as of its sequencing: someone who joined since never gets it.
            match self.audience(&sub, view, message.mv).await {
                Ok(audience) => {
                    out.audience.entry(sub.dedupe_key()).or_insert(audience);
                }
                Err(_) => fan_out = false,
            }
        }
        out.accepted.push(Accepted {
            message,
            reply: sub.reply,
            fan_out,
        });
    }
}
