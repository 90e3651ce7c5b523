//! The other regions: what this region sequenced goes out as replicas (with the answers to sends
//! forwarded here), and the replicas of the others are delivered here from this region's
//! registry, written to this region's conversation logs and remembered in its dedupe index.

use foldhash::{HashMap, HashMapExt};

use connect_protocol::{ConversationId, UserId};
use futures_util::future::join_all;
use tracing::warn;

use super::{Accepted, MessagingStep, Outcome, Prepared};
use crate::model::{Acceptance, DedupeKey, Submission};
use crate::regions::{AckRecord, Inbound, RemoteError, Replica};

impl MessagingStep {
    /// The replicas of a batch this region prepared: every message it fanned out (each region
    /// delivers it to its own sessions), and every answer whose connection is in another region.
    pub(super) fn replicas(&self, out: &Outcome) -> Vec<Replica> {
        if !self.regions.active() {
            return Vec::new();
        }
        let remote = |reply: &Option<crate::model::ReplyTo>| {
            reply.clone().filter(|r| !self.regions.is_local(r))
        };
        let mut replicas: Vec<Replica> = out
            .accepted
            .iter()
            .filter_map(|a| {
                let reply = remote(&a.reply);
                (a.fan_out || reply.is_some()).then(|| Replica {
                    home: self.regions.local.clone(),
                    message: Some(a.message.clone()),
                    deliver: a.fan_out,
                    reply,
                    error: None,
                    id: None,
                    typing: None,
                })
            })
            .collect();
        replicas.extend(
            out.errors
                .iter()
                .filter(|(r, _)| !self.regions.is_local(r))
                .map(|(reply, err)| Replica {
                    home: self.regions.local.clone(),
                    message: None,
                    deliver: false,
                    reply: Some(reply.clone()),
                    error: Some(RemoteError::of(err)),
                    id: err.id.clone(),
                    typing: None,
                }),
        );
        replicas
    }

    /// Another region's replicas, here: each message's acceptance is remembered (a retry in
    /// this region, or after its home moves here, answers the original seq), the messages to
    /// deliver go to this region's conversation logs and live sessions (a group's to its
    /// members at the message's membership version), and the answers for connections in this
    /// region go to them. Never fails: what cannot be done is logged (the messages are stored
    /// at home; history and the next connection give them).
    pub async fn relay(&self, replicas: Vec<Replica>) -> Prepared {
        // Another region's typing signals: fanned out here like this region's own (never
        // replicated again, never answered: the typist's connection is elsewhere).
        let (typed, replicas): (Vec<Replica>, Vec<Replica>) =
            replicas.into_iter().partition(|r| r.typing.is_some());
        let typing: Vec<_> = typed
            .into_iter()
            .filter_map(|r| r.typing)
            .map(|t| *t)
            .collect();
        let typed = if typing.is_empty() {
            None
        } else {
            Some(self.typing(typing, crate::now_ms()).await)
        };
        let mut prepared = self.relay_messages(replicas).await;
        if let Some(typed) = typed {
            prepared.absorb(typed);
        }
        prepared
    }

    async fn relay_messages(&self, replicas: Vec<Replica>) -> Prepared {
        let mut out = Outcome::default();
        out.report.relayed = replicas.len();
        let entries: Vec<(DedupeKey, Acceptance)> = replicas
            .iter()
            .filter_map(|r| r.message.as_ref())
            .map(|m| {
                (
                    DedupeKey {
                        sender: m.from.clone(),
                        id: m.id.clone(),
                    },
                    Acceptance {
                        conversation: m.conversation.clone(),
                        seq: m.seq,
                        ts: m.ts,
                        mv: m.mv,
                    },
                )
            })
            .collect();
        if !entries.is_empty() {
            if let Err(e) = self.ports.dedupe.remember(&entries).await {
                warn!(cause = %e, count = entries.len(), "remembering other regions' acceptances failed");
            }
        }
        let mut view = HashMap::new();
        for replica in replicas {
            let reply = replica.reply.filter(|r| self.regions.is_local(r));
            match (replica.message, replica.error) {
                (Some(message), _) => {
                    let mut fan_out = replica.deliver;
                    if fan_out {
                        let sub = Submission {
                            conversation: message.conversation.clone(),
                            sender: message.from.clone(),
                            id: message.id.clone(),
                            body: String::new(),
                            reply: None,
                            event: message.event.clone(),
                            submitted_ms: 0,
                            device: message.device.clone(),
                            hops: 0,
                        };
                        match self.audience(&sub, &mut view, message.mv).await {
                            Ok(audience) => {
                                out.audience.insert(sub.dedupe_key(), audience);
                            }
                            Err(_) => {
                                warn!(conversation = %message.conversation, seq = message.seq,
                                    "a replicated message's audience could not be read here; its members get it from history");
                                fan_out = false;
                            }
                        }
                    }
                    if fan_out || reply.is_some() {
                        out.accepted.push(Accepted {
                            message,
                            reply,
                            fan_out,
                        });
                    }
                }
                (None, Some(error)) => {
                    if let Some(reply) = reply {
                        out.errors.push((reply, error.to_frame_error(replica.id)));
                    }
                }
                (None, None) => {}
            }
        }
        self.finish(out, false).await
    }

    /// Another region's acks: this region's cursors move too. Failures are logged (the
    /// device may get those messages again here: at least once).
    async fn apply_acks(&self, acks: &[AckRecord]) {
        let done = join_all(acks.iter().map(|a| {
            self.ports
                .log
                .ack(&a.user, &a.device, &a.conversation, a.seq)
        }))
        .await;
        for (a, result) in acks.iter().zip(done) {
            if let Err(e) = result {
                warn!(cause = %e, user = %a.user, "applying another region's ack failed");
            }
        }
    }

    /// A batch of everything messaging reads: sends ([`Self::prepare`]), read-state changes
    /// ([`Self::mark`]), other regions' replicas ([`Self::relay`]) and acks, and sends forwarded
    /// here (handed back in [`Prepared::taken_in`] for this region's `incoming_messages`).
    ///
    /// Read-state changes are applied side by side with the sends, so they do not add a stage to
    /// the message path; only a change by a user who also sent into that conversation in this
    /// batch waits for the sends (the send moves the same marker, and markers are written whole).
    pub async fn prepare_inbound(&self, batch: Vec<Inbound>, now_ms: u64) -> Prepared {
        let mut sends = Vec::new();
        let mut replicas = Vec::new();
        let mut acks = Vec::new();
        let mut taken_in = Vec::new();
        let mut markers = Vec::new();
        let mut typing = Vec::new();
        for item in batch {
            match item {
                Inbound::Marker(m) => markers.push(m),
                Inbound::Typing(t) => typing.push(t),
                Inbound::Send(s) => sends.push(s),
                Inbound::Forwarded(s) => taken_in.push(s),
                Inbound::Replica(r) => replicas.push(r),
                Inbound::Ack(a) => acks.push(a),
            }
        }
        let senders: foldhash::HashSet<(&UserId, &ConversationId)> =
            sends.iter().map(|s| (&s.sender, &s.conversation)).collect();
        let (later, now): (Vec<_>, Vec<_>) = markers
            .into_iter()
            .partition(|m| senders.contains(&(&m.user, &m.conversation)));
        drop(senders);
        let (mut prepared, marked, typed) = tokio::join!(
            async {
                if sends.is_empty() {
                    Prepared::default()
                } else {
                    self.prepare(sends, now_ms).await
                }
            },
            async {
                if now.is_empty() {
                    Prepared::default()
                } else {
                    self.mark(now, now_ms).await
                }
            },
            async {
                if typing.is_empty() {
                    Prepared::default()
                } else {
                    self.typing(typing, now_ms).await
                }
            }
        );
        prepared.merge(marked);
        prepared.merge(typed);
        if !later.is_empty() {
            // A stored send moved its sender's marker to its seq, past anything they could have
            // read before it: such a read (or ack) moves only the reading device's cursor. The
            // rest (a send refused, a read past the head) are marked now, after the sends.
            let (covered, rest): (Vec<_>, Vec<_>) = later.into_iter().partition(|m| {
                prepared
                    .sent
                    .get(&(m.user.clone(), m.conversation.clone()))
                    .is_some_and(|&seq| m.read.max(m.delivered) <= seq)
            });
            let (marked, ()) = tokio::join!(
                async {
                    if rest.is_empty() {
                        Prepared::default()
                    } else {
                        self.mark(rest, now_ms).await
                    }
                },
                self.ack_covered(&covered)
            );
            prepared.merge(marked);
        }
        if !replicas.is_empty() {
            prepared.merge(self.relay(replicas).await);
        }
        if !acks.is_empty() {
            self.apply_acks(&acks).await;
        }
        prepared.taken_in.extend(taken_in);
        prepared
    }
}
