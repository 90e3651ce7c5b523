use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::memory::Memory;

/// The in-memory allocator, counting the calls that reach it.
#[derive(Default)]
struct Counted {
    memory: Memory,
    calls: AtomicUsize,
}

#[async_trait]
impl SequenceAllocator for Counted {
    async fn allocate(
        &self,
        requests: &[(ConversationId, u64)],
    ) -> Vec<Result<Reserved, PortError>> {
        self.calls.fetch_add(requests.len(), Ordering::Relaxed);
        self.memory.allocate(requests).await
    }

    async fn give_back(&self, c: &ConversationId, from: u64, last: u64) -> Result<bool, PortError> {
        self.memory.give_back(c, from, last).await
    }
}

fn conv(s: &str) -> ConversationId {
    ConversationId::parse(s).expect("conversation")
}

async fn take(blocks: &SequenceBlocks, c: &ConversationId, n: u64) -> u64 {
    blocks.allocate(&[(c.clone(), n)]).await[0]
        .clone()
        .expect("allocated")
        .first
}

/// Seqs handed out one batch at a time stay consecutive while blocks grow.
#[tokio::test]
async fn a_busy_conversation_gets_consecutive_seqs_from_few_reservations() {
    let inner = Arc::new(Counted::default());
    let blocks = SequenceBlocks::new(inner.clone(), 64, 100);
    let c = conv("dm:alice:bob");
    let mut expected = 1;
    for round in 0..500u64 {
        let n = 1 + round % 3;
        assert_eq!(take(&blocks, &c, n).await, expected, "round {round}");
        expected += n;
    }
    let calls = inner.calls.load(Ordering::Relaxed);
    assert!(calls < 40, "{calls} reservations for 500 batches");
}

#[tokio::test]
async fn a_quiet_conversation_reserves_exactly_what_it_needs() {
    let inner = Arc::new(Counted::default());
    let blocks = SequenceBlocks::new(inner.clone(), 64, 100);
    let c = conv("dm:alice:carol");
    assert_eq!(take(&blocks, &c, 2).await, 1);
    // The first reservation of a conversation is exact: nothing is held for it.
    assert_eq!(blocks.give_back_all().await, 0);
    assert_eq!(inner.memory.seqs.lock().unwrap()[&c], 2);
}

/// Hands out seqs 1..=21 one at a time, so that a block is held ahead: the highest reserved.
async fn hand_out_21(blocks: &SequenceBlocks, inner: &Counted, c: &ConversationId) -> u64 {
    for _ in 0..21 {
        take(blocks, c, 1).await;
    }
    let reserved = inner.memory.seqs.lock().unwrap()[c];
    assert!(reserved > 21, "a block is held ahead");
    reserved
}

#[tokio::test]
async fn unused_seqs_go_back_so_the_next_owner_continues_without_a_gap() {
    let inner = Arc::new(Counted::default());
    let blocks = SequenceBlocks::new(inner.clone(), 64, 100);
    let c = conv("dm:alice:bob");
    let reserved = hand_out_21(&blocks, &inner, &c).await;
    assert_eq!(blocks.give_back_all().await, 1);
    // Another process (here: the inner allocator itself) continues at 22, and learns that
    // 22..=reserved were reserved before (their writes must not replace anything).
    let next = inner.allocate(&[(c.clone(), 1)]).await[0].clone().unwrap();
    assert_eq!(next.first, 22);
    assert_eq!(next.reused_to, reserved);
    // A block that starts in the given-back range carries the mark to every seq it hands out.
    let again = SequenceBlocks::new(inner.clone(), 64, 100);
    let got = again.allocate(&[(c.clone(), 1)]).await[0].clone().unwrap();
    assert_eq!((got.first, got.reused_to), (23, reserved));
}

#[tokio::test]
async fn an_abandoned_block_is_never_handed_out_again() {
    let inner = Arc::new(Counted::default());
    let blocks = SequenceBlocks::new(inner.clone(), 64, 100);
    let c = conv("dm:alice:bob");
    let reserved = hand_out_21(&blocks, &inner, &c).await;
    blocks.abandon(&c);
    // Its rest is a gap: the next seq comes after everything reserved, and nothing goes back.
    assert_eq!(take(&blocks, &c, 1).await, reserved + 1);
    assert_eq!(blocks.give_back_all().await, 0);
}

#[tokio::test]
async fn seqs_allocated_elsewhere_are_never_reused() {
    let inner = Arc::new(Counted::default());
    let blocks = SequenceBlocks::new(inner.clone(), 64, 100);
    let c = conv("dm:alice:bob");
    let mut mine = Vec::new();
    for _ in 0..10 {
        mine.push(take(&blocks, &c, 1).await);
    }
    // A zombie or the sequencer function allocates meanwhile.
    let theirs = inner.allocate(&[(c.clone(), 5)]).await[0]
        .clone()
        .unwrap()
        .first;
    for _ in 0..100 {
        mine.push(take(&blocks, &c, 1).await);
    }
    assert!(mine.windows(2).all(|w| w[1] > w[0]), "strictly increasing");
    assert!(
        !mine.iter().any(|s| (theirs..theirs + 5).contains(s)),
        "no reuse"
    );
    // Giving back fails for a block that was allocated past, and changes nothing.
    let before = inner.memory.seqs.lock().unwrap()[&c];
    inner.allocate(&[(c.clone(), 1)]).await;
    blocks.give_back_all().await;
    assert_eq!(inner.memory.seqs.lock().unwrap()[&c], before + 1);
}

#[tokio::test]
async fn without_room_for_more_conversations_allocation_is_exact() {
    let inner = Arc::new(Counted::default());
    let blocks = SequenceBlocks::new(inner.clone(), 64, 1);
    let (a, b) = (conv("dm:a:b"), conv("dm:a:c"));
    for i in 0..20 {
        assert_eq!(take(&blocks, &a, 1).await, i + 1);
        assert_eq!(take(&blocks, &b, 1).await, i + 1);
    }
    // `b` never got a block: every one of its seqs was its own reservation, none held.
    blocks.give_back_all().await;
    assert_eq!(inner.memory.seqs.lock().unwrap()[&b], 20);
    assert_eq!(inner.memory.seqs.lock().unwrap()[&a], 20);
}

#[tokio::test]
async fn max_block_zero_is_exact_allocation() {
    let inner = Arc::new(Counted::default());
    let blocks = SequenceBlocks::new(inner.clone(), 0, 100);
    let c = conv("dm:alice:bob");
    for i in 0..10 {
        assert_eq!(take(&blocks, &c, 1).await, i + 1);
    }
    assert_eq!(inner.calls.load(Ordering::Relaxed), 10);
}

#[tokio::test]
async fn a_conversation_named_twice_in_one_call_is_refused_not_given_overlapping_seqs() {
    let inner = Arc::new(Counted::default());
    let blocks = SequenceBlocks::new(inner.clone(), 64, 100);
    let c = conv("dm:alice:bob");
    let got = blocks.allocate(&[(c.clone(), 1), (c.clone(), 1)]).await;
    assert_eq!(got[0].clone().unwrap().first, 1);
    assert!(got[1].is_err());
    assert_eq!(take(&blocks, &c, 1).await, 2);
}
