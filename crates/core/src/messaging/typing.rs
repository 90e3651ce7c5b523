//! Typing (PROTOCOL.md "Typing"): what messaging does with a batch's `typing` signals.
//!
//! Ephemeral: nothing is stored, nothing is retried, nothing reaches a later connection. Per
//! batch: a signal that waited longer than [`MessagingStep::typing_max_age_ms`] (behind sends,
//! under load) is dropped, so typing is what gives way first; the newest per (user,
//! conversation) is kept; membership comes from the membership cache (no store read per signal:
//! a roster may lag a change by the cache's TTL); a non-member is answered `forbidden`; a group
//! of more than [`MessagingStep::typing_max_members`] members gets none; the other members'
//! open connections (not the typist's own) get a `typing` signal keyed by (conversation, user),
//! which a connection passes on at most once a second (a burst sends the latest). With other
//! regions, each signal typed here also goes to them as a replica (`sequenced_messages`), and
//! theirs come here through [`MessagingStep::relay`].

use foldhash::{HashMap, HashMapExt};

use tracing::warn;

use connect_protocol::{ConversationId, ErrorCode, FrameError, ServerFrame, UserId};

use super::route::signal_deliveries;
use super::{MessagingStep, Prepared};
use crate::model::{Signal, TypingUpdate};
use crate::regions::Replica;

impl MessagingStep {
    /// Fans a batch's `typing` signals out to the other members' connections; the returned
    /// deliveries also carry the `forbidden` answers.
    pub(super) async fn typing(&self, updates: Vec<TypingUpdate>, now_ms: u64) -> Prepared {
        let mut out = self.outcome();
        let mut order: Vec<(UserId, ConversationId)> = Vec::new();
        let mut latest: HashMap<(UserId, ConversationId), TypingUpdate> = HashMap::new();
        for u in updates {
            if now_ms.saturating_sub(u.ts) > self.typing_max_age_ms {
                out.report.typing_dropped += 1;
                continue;
            }
            let key = (u.user.clone(), u.conversation.clone());
            match latest.get(&key) {
                Some(seen) if seen.ts > u.ts => {}
                Some(_) => {
                    latest.insert(key, u);
                }
                None => {
                    order.push(key.clone());
                    latest.insert(key, u);
                }
            }
        }
        let mut signals: Vec<(TypingUpdate, Vec<UserId>)> = Vec::new();
        for key in order {
            let Some(u) = latest.remove(&key) else {
                continue;
            };
            let members: Option<Vec<UserId>> = match &u.conversation {
                ConversationId::Direct { low, high } => u
                    .conversation
                    .is_direct_member(&u.user)
                    .then(|| vec![low.clone(), high.clone()]),
                ConversationId::Group(g) => match self.ports.groups.members(g).await {
                    Ok(Some(roster)) if roster.contains(&u.user) => {
                        if roster.users().len() > self.typing_max_members {
                            out.report.typing_dropped += 1;
                            continue;
                        }
                        Some(roster.users().to_vec())
                    }
                    Ok(_) => None,
                    Err(e) => {
                        // Never retried: a typing signal late is worth nothing.
                        warn!(cause = %e, conversation = %u.conversation, "membership unavailable; typing dropped");
                        out.report.typing_dropped += 1;
                        continue;
                    }
                },
            };
            match members {
                Some(members) => {
                    let others = members.into_iter().filter(|m| *m != u.user).collect();
                    signals.push((u, others));
                }
                None if self.regions.is_local(&u.reply) => {
                    out.report.rejected += 1;
                    out.errors.push((
                        u.reply.clone(),
                        FrameError::new(ErrorCode::Forbidden, "not a member of this conversation"),
                    ));
                }
                // Another region's signal for someone no longer a member here: dropped.
                None => out.report.typing_dropped += 1,
            }
        }
        let users: Vec<UserId> = signals
            .iter()
            .flat_map(|(_, a)| a.iter().cloned())
            .collect();
        let sessions = if users.is_empty() {
            Vec::new()
        } else {
            match self.ports.registry.lookup(&users).await {
                Ok(sessions) => sessions,
                Err(e) => {
                    warn!(cause = %e, "registry lookup failed; typing dropped");
                    out.report.typing_dropped += signals.len();
                    signals.clear();
                    Vec::new()
                }
            }
        };
        out.report.typing += signals.len();
        let (updates, audiences): (Vec<TypingUpdate>, Vec<Vec<UserId>>) =
            signals.into_iter().unzip();
        let deliveries = signal_deliveries(&audiences, &sessions, |i| {
            let u = &updates[i];
            let conversation = u.conversation.to_string();
            Signal {
                key: format!("typing {conversation} {}", u.user),
                frame: ServerFrame::Typing {
                    conversation: &conversation,
                    user: u.user.as_str(),
                    stop: u.stop,
                }
                .to_text(),
                except: None,
            }
        });
        let mut prepared = self.finish(out, false).await;
        prepared.report.deliveries += deliveries.len();
        prepared.deliveries.extend(deliveries);
        // The signals typed here go to the other regions too (one replica each).
        if self.regions.active() {
            let local = self.regions.local.clone();
            prepared.replicas.extend(
                updates
                    .into_iter()
                    .filter(|u| self.regions.is_local(&u.reply))
                    .map(|mut u| {
                        u.reply.region.get_or_insert_with(|| local.clone());
                        Replica {
                            home: local.clone(),
                            message: None,
                            deliver: false,
                            reply: None,
                            error: None,
                            id: None,
                            typing: Some(Box::new(u)),
                        }
                    }),
            );
        }
        prepared
    }
}
