//! Sequence blocks: messaging reserves seqs ahead for busy conversations, so a conversation
//! that carries many messages costs one atomic add per block instead of one per batch.
//!
//! Only the messaging process that owns a conversation's partition allocates for it, so the
//! seqs it reserved are its own to hand out in order. A block grows (doubling, up to
//! `max_block`) while the conversation uses its blocks up within [`BUSY`], and shrinks back when
//! it does not; a quiet conversation reserves exactly what it needs. Unused seqs are given back
//! ([`SequenceBlocks::give_back_all`]) before the process loses its partitions (rebalance,
//! shutdown), with a conditional write that succeeds only if nobody allocated after the block:
//! the next owner continues without a gap. A crash leaves at most one block's remainder as a gap,
//! never a reuse (every reservation is the allocator's atomic add).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::join_all;
use tracing::{info, warn};

use connect_protocol::ConversationId;

use crate::ports::{Reserved, SequenceAllocator};
use crate::PortError;

/// A block used up within this long makes the next one twice as large.
pub const BUSY: Duration = Duration::from_secs(1);
/// A block that lasted longer than this makes the next one half as large.
pub const QUIET: Duration = Duration::from_secs(10);

/// The seqs a conversation has reserved and not handed out yet: `next..=last`.
#[derive(Debug, Clone)]
struct Block {
    next: u64,
    last: u64,
    /// Seqs reserved beyond what was asked for, next time.
    ahead: u64,
    reserved_at: Instant,
    /// [`Reserved::reused_to`] of the reservations the block holds.
    reused_to: u64,
}

impl Block {
    fn left(&self) -> u64 {
        (self.last + 1).saturating_sub(self.next)
    }
}

/// A [`SequenceAllocator`] that reserves blocks from another one (see the module docs).
pub struct SequenceBlocks {
    inner: Arc<dyn SequenceAllocator>,
    blocks: Mutex<HashMap<ConversationId, Block>>,
    max_block: u64,
    max_conversations: usize,
}

/// A request the block cannot cover: `n + ahead` are reserved anew. When the new range starts
/// right after the old block, the old block's rest is handed out first (and the extra joins the
/// block); otherwise (someone else allocated meanwhile) the rest is skipped.
struct Shortfall {
    index: usize,
    /// The old block's rest: `from..=last`, reused up to.
    held: Option<(u64, u64, u64)>,
    ahead: u64,
}

impl SequenceBlocks {
    /// `max_block`: most seqs reserved ahead per conversation (0: none, exact allocation);
    /// `max_conversations`: conversations that may hold a block at once (others allocate
    /// exactly).
    pub fn new(
        inner: Arc<dyn SequenceAllocator>,
        max_block: u64,
        max_conversations: usize,
    ) -> Self {
        Self {
            inner,
            blocks: Mutex::new(HashMap::new()),
            max_block,
            max_conversations,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConversationId, Block>> {
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How far ahead to reserve after `old` ran out now.
    fn next_ahead(&self, old: Option<&Block>, now: Instant) -> u64 {
        let Some(old) = old.filter(|_| self.max_block > 0) else {
            return 0;
        };
        let lasted = now.duration_since(old.reserved_at);
        if lasted < BUSY {
            (old.ahead * 2).clamp(1, self.max_block)
        } else if lasted > QUIET {
            old.ahead / 2
        } else {
            old.ahead.min(self.max_block)
        }
    }

    /// Gives every unused seq back to the inner allocator (before partitions move or the process
    /// stops); returns how many conversations gave some back.
    pub async fn give_back_all(&self) -> usize {
        let blocks: Vec<(ConversationId, Block)> = self.lock().drain().collect();
        let unused: Vec<_> = blocks.into_iter().filter(|(_, b)| b.left() > 0).collect();
        let results = join_all(
            unused
                .iter()
                .map(|(c, b)| self.inner.give_back(c, b.next, b.last)),
        )
        .await;
        let mut given = 0;
        for ((c, b), r) in unused.iter().zip(results) {
            match r {
                Ok(true) => given += 1,
                Ok(false) => {
                    info!(conversation = %c, from = b.next, to = b.last, "seqs not given back: allocated past them")
                }
                Err(e) => {
                    warn!(cause = %e, conversation = %c, "giving seqs back failed; they become a gap")
                }
            }
        }
        given
    }
}

#[async_trait]
impl SequenceAllocator for SequenceBlocks {
    async fn allocate(
        &self,
        requests: &[(ConversationId, u64)],
    ) -> Vec<Result<Reserved, PortError>> {
        let now = Instant::now();
        let mut out: Vec<Option<Result<Reserved, PortError>>> = vec![None; requests.len()];
        let mut short: Vec<Shortfall> = Vec::new();
        {
            let mut blocks = self.lock();
            let mut named = std::collections::HashSet::new();
            for (i, (c, n)) in requests.iter().enumerate() {
                if !named.insert(c) {
                    // Two ranges of one block in one call could not both start where the block
                    // does; messaging merges a batch's requests per conversation.
                    out[i] = Some(Err(PortError::rejected(
                        "sequences",
                        "a conversation named twice in one allocation",
                    )));
                    continue;
                }
                let full = blocks.len() >= self.max_conversations;
                match blocks.get_mut(c) {
                    Some(b) if b.left() >= *n => {
                        out[i] = Some(Ok(Reserved {
                            first: b.next,
                            reused_to: b.reused_to,
                        }));
                        b.next += n;
                    }
                    old => {
                        let ahead = match old.as_deref() {
                            None if full => 0,
                            old => self.next_ahead(old, now),
                        };
                        let held = old
                            .filter(|b| b.left() > 0)
                            .map(|b| (b.next, b.last, b.reused_to));
                        short.push(Shortfall {
                            index: i,
                            held,
                            ahead,
                        });
                    }
                }
            }
        }
        if short.is_empty() {
            return out.into_iter().map(|r| r.expect("answered")).collect();
        }
        let asks: Vec<(ConversationId, u64)> = short
            .iter()
            .map(|s| (requests[s.index].0.clone(), requests[s.index].1 + s.ahead))
            .collect();
        let got = self.inner.allocate(&asks).await;
        let mut blocks = self.lock();
        for (s, result) in short.into_iter().zip(got) {
            let (conversation, n) = &requests[s.index];
            out[s.index] = Some(result.map(|got| {
                let first = got.first;
                let last = first + n + s.ahead - 1;
                let (start, reused_to) = match s.held {
                    Some((from, held_last, held_reused)) if held_last + 1 == first => {
                        (from, held_reused.max(got.reused_to))
                    }
                    Some((from, held_last, _)) => {
                        warn!(%conversation, from, held_last, "seqs skipped: allocated elsewhere meanwhile");
                        (first, got.reused_to)
                    }
                    None => (first, got.reused_to),
                };
                let block = Block {
                    next: start + n,
                    last,
                    ahead: s.ahead,
                    reserved_at: now,
                    reused_to,
                };
                // Kept while there is room, to size the next block; always kept while it holds
                // seqs.
                let room = blocks.len() < self.max_conversations || blocks.contains_key(conversation);
                if block.left() > 0 || room {
                    blocks.insert(conversation.clone(), block);
                }
                Reserved {
                    first: start,
                    reused_to,
                }
            }));
        }
        out.into_iter().map(|r| r.expect("answered")).collect()
    }

    async fn give_back(
        &self,
        conversation: &ConversationId,
        from: u64,
        last: u64,
    ) -> Result<bool, PortError> {
        self.inner.give_back(conversation, from, last).await
    }

    fn abandon(&self, conversation: &ConversationId) {
        if let Some(b) = self.lock().remove(conversation) {
            warn!(%conversation, from = b.next, to = b.last, "a reserved seq was taken: the block's rest is abandoned (a gap)");
        }
        self.inner.abandon(conversation);
    }
}

#[cfg(test)]
mod tests;
