//! Read markers: what messaging does with a batch's `read` and `delivered` changes.
//!
//! Per batch: each change is checked against membership (a `read` from a non-member is answered
//! `forbidden`); changes are merged per (user, conversation), clamped to the conversation's head
//! and merged with the stored markers (forward only; read implies delivered); what moved is
//! stored (the batch waits until it is: a restart never loses a marker whose batch was
//! committed); the reading devices' cursors move up to the clamped read; and each moved marker
//! goes out as a `receipt` to the user's other connections and, in a direct conversation or a
//! group of at most [`MessagingStep::receipts_live_max_members`], to the other members'.
//!
//! One writer per conversation (its partition of `incoming_messages`), so reading the markers
//! and writing them back whole needs no condition.

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use futures_util::future::join_all;
use tracing::warn;

use connect_protocol::{ConversationId, ErrorCode, FrameError, GroupId, UserId};

use super::route::{signal_deliveries, until_ok};
use super::{MessagingStep, Prepared};
use crate::history::Range;
use crate::model::{Delivery, MarkerUpdate, Markers, ReplyTo, Signal};
use crate::PortError;

/// The merged changes of one (user, conversation) in a batch.
#[derive(Default)]
struct Change {
    read: u64,
    delivered: u64,
    /// Reading devices and the highest read each sent.
    devices: Vec<(String, u64)>,
    /// The connection of the latest `read` (or, without one, of the first change): it does not
    /// get the receipt.
    origin: Option<String>,
}

impl MessagingStep {
    /// Applies a batch's marker changes; the returned deliveries carry the receipts and the
    /// `forbidden` answers.
    pub(super) async fn mark(&self, updates: Vec<MarkerUpdate>, now_ms: u64) -> Prepared {
        let mut out = self.outcome();
        let mut view = self
            .view_of(
                updates
                    .iter()
                    .filter_map(|u| u.conversation.group_id().cloned()),
            )
            .await;
        let mut changes: HashMap<(UserId, ConversationId), Change> = HashMap::new();
        let mut order: Vec<(UserId, ConversationId)> = Vec::new();
        for u in updates {
            let refusal = match self.members_of(&u.conversation, &mut view).await {
                Ok(None) if u.conversation.is_direct_member(&u.user) => None,
                Ok(Some(members)) if members.contains(&u.user) => None,
                Ok(_) => Some(FrameError::new(
                    ErrorCode::Forbidden,
                    "not a member of this conversation",
                )),
                Err(e) => {
                    warn!(cause = %e, conversation = %u.conversation, "membership lookup failed; marker change refused");
                    Some(FrameError::new(
                        ErrorCode::Unavailable,
                        "group directory unavailable; retry",
                    ))
                }
            };
            if let Some(err) = refusal {
                out.report.rejected += 1;
                // Only a `read` is answered: a `delivered` comes from acks, which have no answer.
                if let Some(reply) = u.reply.filter(|_| u.read > 0) {
                    out.errors.push((reply, err));
                }
                continue;
            }
            let key = (u.user.clone(), u.conversation.clone());
            let change = changes.entry(key.clone()).or_insert_with(|| {
                order.push(key);
                Change::default()
            });
            change.delivered = change.delivered.max(u.delivered);
            if change.origin.is_none() {
                change.origin = u.reply.as_ref().map(|r| r.conn.clone());
            }
            if u.read > 0 {
                change.read = change.read.max(u.read);
                if let Some(device) = u.device {
                    match change.devices.iter_mut().find(|(d, _)| *d == device) {
                        Some((_, seq)) => *seq = (*seq).max(u.read),
                        None => change.devices.push((device, u.read)),
                    }
                }
                change.origin = u.reply.map(|r: ReplyTo| r.conn);
            }
        }
        if !order.is_empty() {
            let heads = self.heads(&order, &mut out).await;
            let (moved, ()) = tokio::join!(
                self.merge_markers(&order, &changes, &heads, now_ms, &mut out.report),
                self.move_cursors(&order, &changes, &heads)
            );
            // The receipts' sessions are looked up while the markers are written: the receipts
            // are published only after this returns, so never before their markers are stored.
            let mut retries = 0;
            let ((), deliveries) = tokio::join!(
                async {
                    if !moved.is_empty() {
                        until_ok("storing read markers", &mut retries, || {
                            self.ports.markers.put(&moved)
                        })
                        .await;
                    }
                },
                self.receipts(&moved, &changes, &view, &mut out)
            );
            out.report.marker_retries += retries;
            out.report.markers += moved.len();
            let mut prepared = self.finish(out, false).await;
            prepared.report.deliveries += deliveries.len();
            prepared.deliveries.extend(deliveries);
            return prepared;
        }
        self.finish(out, false).await
    }

    /// A group's members (from `view`, else read and kept there); none for a direct
    /// conversation or a group that does not exist.
    async fn members_of(
        &self,
        conversation: &ConversationId,
        view: &mut HashMap<GroupId, crate::groups::Members>,
    ) -> Result<Option<Arc<[UserId]>>, PortError> {
        let Some(group) = conversation.group_id() else {
            return Ok(None);
        };
        if !view.contains_key(group) {
            let members = self.ports.groups.members(group).await?;
            view.insert(group.clone(), members);
        }
        Ok(view
            .get(group)
            .and_then(|m| m.as_ref().map(|roster| roster.users())))
    }

    /// Clamps the changes to their conversations' heads and merges them with the stored markers
    /// (read, with backoff, until the store answers). Returns the markers that moved, in `order`,
    /// for the caller to store.
    async fn merge_markers(
        &self,
        order: &[(UserId, ConversationId)],
        changes: &HashMap<(UserId, ConversationId), Change>,
        heads: &HashMap<ConversationId, u64>,
        now_ms: u64,
        report: &mut super::StepReport,
    ) -> Vec<(UserId, ConversationId, Markers)> {
        let stored = until_ok("reading read markers", &mut report.marker_retries, || {
            self.ports.markers.get(order)
        })
        .await;
        let mut moved = Vec::new();
        for ((key, current), head) in order.iter().zip(stored).zip(
            order
                .iter()
                .map(|(_, c)| heads.get(c).copied().unwrap_or(0)),
        ) {
            let change = &changes[key];
            let read = current.read.max(change.read.min(head));
            let delivered = current.delivered.max(change.delivered.min(head)).max(read);
            if (read, delivered) != (current.read, current.delivered) {
                moved.push((
                    key.0.clone(),
                    key.1.clone(),
                    Markers {
                        read,
                        delivered,
                        ts: now_ms,
                    },
                ));
            }
        }
        moved
    }

    /// The latest seq of each conversation of `order`: its log's head (one round trip), or (an
    /// empty log: lost, or never written) its last stored message (those read side by side).
    async fn heads(
        &self,
        order: &[(UserId, ConversationId)],
        out: &mut super::Outcome,
    ) -> HashMap<ConversationId, u64> {
        let mut seen = foldhash::HashSet::default();
        let conversations: Vec<&ConversationId> = order
            .iter()
            .map(|(_, c)| c)
            .filter(|c| seen.insert(*c))
            .collect();
        let names: Vec<String> = conversations.iter().map(|c| c.to_string()).collect();
        let logged = match self.ports.log.heads(&names).await {
            Ok(heads) => heads,
            Err(e) => {
                warn!(cause = %e, "log heads unavailable; reading the chat table");
                vec![0; names.len()]
            }
        };
        let mut heads = HashMap::new();
        let mut unlogged = Vec::new();
        for (conversation, head) in conversations.into_iter().zip(logged) {
            if head > 0 {
                heads.insert(conversation.clone(), head);
            } else {
                unlogged.push(conversation);
            }
        }
        let stored = join_all(unlogged.iter().map(|conversation| async move {
            let mut retries = 0;
            let page = until_ok("reading a conversation's head", &mut retries, || {
                self.ports
                    .history
                    .page(conversation, Range::Before { before: None }, 1)
            })
            .await;
            (page.messages.last().map_or(0, |m| m.seq), retries)
        }))
        .await;
        for (conversation, (head, retries)) in unlogged.into_iter().zip(stored) {
            out.report.marker_retries += retries;
            heads.insert(conversation.clone(), head);
        }
        heads
    }

    /// Moves each reading device's cursor up to its read, clamped to the head as the marker is
    /// (a cursor past the head would skip the messages still to come).
    async fn move_cursors(
        &self,
        order: &[(UserId, ConversationId)],
        changes: &HashMap<(UserId, ConversationId), Change>,
        heads: &HashMap<ConversationId, u64>,
    ) {
        let mut acks = Vec::new();
        for key in order {
            let head = heads.get(&key.1).copied().unwrap_or(0);
            for (device, seq) in &changes[key].devices {
                let seq = (*seq).min(head);
                if seq > 0 {
                    acks.push((&key.0, device.as_str(), key.1.to_string(), seq));
                }
            }
        }
        self.ack_devices(&acks).await;
    }

    /// Reads that a stored send of the same user into the same conversation, in the same
    /// batch, already covered: their marker is at the send; only the reading devices' cursors
    /// move (the read is at most the send's seq, so within the head).
    pub(super) async fn ack_covered(&self, covered: &[MarkerUpdate]) {
        let acks: Vec<_> = covered
            .iter()
            .filter(|u| u.read > 0)
            .filter_map(|u| {
                let device = u.device.as_deref()?;
                Some((&u.user, device, u.conversation.to_string(), u.read))
            })
            .collect();
        self.ack_devices(&acks).await;
    }

    /// Moves each (user, device) cursor in `conversation` up to `seq`, side by side.
    async fn ack_devices(&self, acks: &[(&UserId, &str, String, u64)]) {
        let writes = acks.iter().map(|(user, device, conversation, seq)| {
            self.ports.log.ack(user, device, conversation, *seq)
        });
        for result in join_all(writes).await {
            if let Err(e) = result {
                warn!(cause = %e, "moving a device's cursor failed; those messages may come again");
            }
        }
    }

    /// The `receipt` of each moved marker, for the user's own connections (but the one that
    /// read) and the other members' in a direct conversation or a small group.
    async fn receipts(
        &self,
        moved: &[(UserId, ConversationId, Markers)],
        changes: &HashMap<(UserId, ConversationId), Change>,
        view: &HashMap<GroupId, crate::groups::Members>,
        out: &mut super::Outcome,
    ) -> Vec<Delivery> {
        let audiences: Vec<Vec<UserId>> = moved
            .iter()
            .map(|(user, conversation, _)| match conversation {
                ConversationId::Direct { low, high } => vec![low.clone(), high.clone()],
                ConversationId::Group(g) => match view.get(g).and_then(|m| m.as_ref()) {
                    Some(roster) if roster.users().len() <= self.receipts_live_max_members => {
                        roster.users().to_vec()
                    }
                    _ => vec![user.clone()],
                },
            })
            .collect();
        let users: Vec<UserId> = audiences.iter().flatten().cloned().collect();
        let sessions = self.lookup(&users, out).await;
        signal_deliveries(&audiences, &sessions, |i| {
            let (user, conversation, markers) = &moved[i];
            let conversation_text = conversation.to_string();
            Signal {
                key: format!("{conversation_text} {user}"),
                frame: markers.receipt_text(&conversation_text, user.as_str()),
                except: changes[&(user.clone(), conversation.clone())]
                    .origin
                    .clone(),
            }
        })
    }
}
