//! The ports: what the core needs from the outside world. Adapters implement them; the core and
//! the binaries use them as `Arc<dyn Port>`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

use connect_protocol::{ConversationId, UserId};

use crate::model::{
    Acceptance, DedupeKey, Delivery, LogEntry, MarkerUpdate, Markers, Session, StoredMessage,
    Submission, UserConnected,
};
use crate::PortError;

/// A publish that was enqueued in order and completes when the bus has it durably.
pub type PendingPublish = Pin<Box<dyn Future<Output = Result<(), PortError>> + Send + 'static>>;

/// Gateway → messaging: the `incoming_messages` topic.
pub trait SubmissionBus: Send + Sync {
    /// Enqueues a submission (key = conversation) now, in call order; await the result for its ack.
    fn submit(&self, submission: &Submission) -> PendingPublish;
    /// Enqueues a read-state change (key = conversation, so it is ordered with the sends).
    fn mark(&self, update: &MarkerUpdate) -> PendingPublish;
    /// Enqueues a `typing` signal (key = conversation; nobody waits for it to be durable).
    fn typing(&self, update: &crate::model::TypingUpdate) -> PendingPublish;
}

/// Read markers per (user, conversation), durable (DynamoDB), shared by the user's devices.
#[async_trait]
pub trait ReadMarkers: Send + Sync {
    /// The markers of each (user, conversation) (same order; none: zeros), read consistently,
    /// batched.
    async fn get(&self, keys: &[(UserId, ConversationId)]) -> Result<Vec<Markers>, PortError>;
    /// Stores markers (whole: the caller has merged them with what [`Self::get`] read), batched.
    async fn put(&self, markers: &[(UserId, ConversationId, Markers)]) -> Result<(), PortError>;
    /// Every member's markers in `conversation` among `users` (same order; none: zeros),
    /// batched.
    async fn of_members(
        &self,
        conversation: &ConversationId,
        users: &[UserId],
    ) -> Result<Vec<Markers>, PortError> {
        let keys: Vec<_> = users
            .iter()
            .map(|u| (u.clone(), conversation.clone()))
            .collect();
        self.get(&keys).await
    }
}

/// What the inbox lists, kept at O(1) writes per message whatever the audience: each
/// conversation's head (its newest message), and each direct conversation's place in both of
/// its users' recency index, so a page of a user's direct conversations costs O(page) (the
/// inbox reads a user's groups through the membership index).
#[async_trait]
pub trait InboxIndex: Send + Sync {
    /// One batch's writes, batched: heads and places written whole (the conversation's one
    /// writer, in batch order), the senders' markers moved to their messages.
    async fn write(&self, write: &InboxWrite) -> Result<(), PortError>;
    /// A repeat's writes (answered maybe long after newer messages): each head and place moved
    /// forward only (conditional writes); `markers` ignored.
    async fn advance(&self, write: &InboxWrite) -> Result<(), PortError>;
    /// The head of each conversation (same order; none: no message indexed), read
    /// consistently, batched.
    async fn heads(&self, conversations: &[ConversationId])
        -> Result<Vec<Option<Head>>, PortError>;
    /// `user`'s direct conversations by their place in the recency index, newest first (equal
    /// times by conversation id), those after `after` only, at most `limit`. A place may lag
    /// the conversation's head (see [`InboxWrite::places`]; DynamoDB's index is also
    /// eventually consistent).
    async fn recent(
        &self,
        user: &UserId,
        after: Option<&Recency>,
        limit: usize,
    ) -> Result<Vec<(ConversationId, Head)>, PortError>;
}

/// A place in a user's inbox order: newest first, equal times by conversation id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recency {
    pub ts: u64,
    pub conversation: String,
}

impl Recency {
    /// Whether a conversation at (ts, conversation) comes after this place.
    pub fn before(&self, ts: u64, conversation: &str) -> bool {
        ts < self.ts || (ts == self.ts && conversation > self.conversation.as_str())
    }
}

/// The newest message of a conversation, as the inbox orders it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub ts: u64,
}

/// One messaging batch's inbox writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxWrite {
    /// Each conversation's newest message.
    pub heads: Vec<(ConversationId, Head)>,
    /// Direct conversations whose place in both users' recency index moves to this head (not
    /// every message's: the writer moves a busy conversation's place at most once per step).
    pub places: Vec<(ConversationId, Head)>,
    /// Senders' markers, moved to their newest message.
    pub markers: Vec<(UserId, ConversationId, Markers)>,
}

impl InboxWrite {
    pub fn is_empty(&self) -> bool {
        self.heads.is_empty() && self.places.is_empty() && self.markers.is_empty()
    }
}

/// Messaging → gateways: the `outgoing_messages` topic, one partition per gateway slot.
#[async_trait]
pub trait DeliveryBus: Send + Sync {
    /// Publishes every delivery to its slot's partition and waits until all are acked.
    async fn publish(&self, deliveries: &[Delivery]) -> Result<(), PortError>;
}

/// Which users have live sessions where (Redis, region-local).
#[async_trait]
pub trait SessionRegistry: Send + Sync {
    /// Records or refreshes sessions; each lives for the registry's TTL unless refreshed.
    async fn upsert(&self, sessions: &[Session]) -> Result<(), PortError>;
    /// Removes sessions, given as (user, connection id).
    async fn remove(&self, sessions: &[(UserId, String)]) -> Result<(), PortError>;
    /// The live sessions of each user (same order as `users`), in one round trip.
    async fn lookup(
        &self,
        users: &[UserId],
    ) -> Result<Vec<Vec<crate::model::SessionRoute>>, PortError>;
}

/// A range of seqs reserved for one conversation: `first` and on, as many as were asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    pub first: u64,
    /// The highest seq of the conversation ever given back ([`SequenceAllocator::give_back`]);
    /// 0: none. Seqs at or below it were reserved before, so a write of one must not replace a
    /// message stored under it (the chat table's guard against a reuse).
    pub reused_to: u64,
}

impl Reserved {
    /// A range of seqs never reserved before.
    pub fn fresh(first: u64) -> Self {
        Self {
            first,
            reused_to: 0,
        }
    }

    /// Whether `seq` was reserved before (written only where nothing is stored).
    pub fn reused(&self, seq: u64) -> bool {
        seq <= self.reused_to
    }
}

/// Per-conversation sequence numbers (DynamoDB sequence table).
#[async_trait]
pub trait SequenceAllocator: Send + Sync {
    /// Reserves `count` consecutive seqs for each conversation; returns each range (same order
    /// as `requests`). One atomic add per conversation.
    async fn allocate(
        &self,
        requests: &[(ConversationId, u64)],
    ) -> Vec<Result<Reserved, PortError>>;
    /// Returns the unused seqs `from..=last` of a reservation, only if nothing was allocated
    /// after `last` (the next allocation then starts at `from`, with
    /// [`Reserved::reused_to`] at least `last`); `Ok(false)` otherwise.
    async fn give_back(
        &self,
        conversation: &ConversationId,
        from: u64,
        last: u64,
    ) -> Result<bool, PortError>;
    /// Forgets what this allocator holds of `conversation` without giving it back (a seq of
    /// it was found taken: its remainder becomes a gap). Nothing for an allocator that holds
    /// nothing.
    fn abandon(&self, _conversation: &ConversationId) {}
}

/// The chat table: messages by (conversation, seq).
#[async_trait]
pub trait ChatStore: Send + Sync {
    /// Stores messages whose seqs were freshly allocated (batched; idempotent on retry).
    async fn put_batch(&self, messages: &[StoredMessage]) -> Result<(), PortError>;
    /// Stores a message unless its (conversation, seq) exists; true when it wrote.
    async fn put_if_absent(&self, message: &StoredMessage) -> Result<bool, PortError>;
    /// A batch's messages and its inbox writes. By default side by side, the messages here and
    /// the inbox through `index` ([`put_side_by_side`]); a store that holds the inbox in the
    /// same database writes both together, in fewer round trips.
    async fn put_with_inbox(
        &self,
        messages: &[StoredMessage],
        write: &InboxWrite,
        index: &dyn InboxIndex,
    ) -> Result<(), PortError> {
        put_side_by_side(self, messages, write, index).await
    }

    /// The message at each (conversation, seq) (same order), read consistently and batched.
    async fn get_many(
        &self,
        keys: &[(ConversationId, u64)],
    ) -> Result<Vec<Option<StoredMessage>>, PortError>;
}

/// [`ChatStore::put_with_inbox`] as two writes at once: the messages, and the inbox's (if any).
pub async fn put_side_by_side<C: ChatStore + ?Sized>(
    chat: &C,
    messages: &[StoredMessage],
    write: &InboxWrite,
    index: &dyn InboxIndex,
) -> Result<(), PortError> {
    let (stored, indexed) = tokio::join!(chat.put_batch(messages), async {
        if write.is_empty() {
            Ok(())
        } else {
            index.write(write).await
        }
    });
    stored.and(indexed)
}

/// What (sender, client id) was accepted as.
#[async_trait]
pub trait DedupeIndex: Send + Sync {
    /// The acceptance remembered for each key (same order as `keys`), in one round trip.
    async fn get(&self, keys: &[DedupeKey]) -> Result<Vec<Option<Acceptance>>, PortError>;
    /// Remembers acceptances; written before the messages are stored, and kept when a store
    /// fails (the retry answers the original seq and writes what is missing). An acceptance
    /// already remembered for a key is never replaced: it is returned (same order as
    /// `entries`; None where this one was remembered, or the same one was there), and it stands
    /// (two processes that both own a partition for a moment, around a rebalance, both find
    /// the first acceptance of a send).
    async fn remember(
        &self,
        entries: &[(DedupeKey, Acceptance)],
    ) -> Result<Vec<Option<Acceptance>>, PortError>;
    /// Forgets each key that still holds the given acceptance (one whose seq turned out taken
    /// by another message before it was stored): a retry of that send is then sequenced anew.
    /// One round trip.
    async fn forget(&self, entries: &[(DedupeKey, Acceptance)]) -> Result<(), PortError>;
}

/// The offline state (Redis, region-local): each conversation's recent messages once, a user's
/// direct conversations, and a cursor per (user, device, conversation) = the last seq that
/// device acked.
/// How many direct conversations a user starts (`GATEWAY_NEW_CONVERSATIONS_PER_HOUR`): each
/// new one is a log, an inbox entry and cursors in Redis for 14 days, so one account sending to
/// fresh user ids at full speed would fill it.
#[async_trait]
pub trait ConversationStarts: Send + Sync {
    /// Whether `user` may send in the direct `conversation`: yes when it has messages (either
    /// side started it) or was started in this window; otherwise it is counted as started if
    /// fewer than `limit` were in the window of `window_secs` (false: none more, nothing
    /// counted).
    async fn may_send(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        limit: u64,
        window_secs: u64,
    ) -> Result<bool, PortError>;
}

#[async_trait]
pub trait ConversationLog: Send + Sync {
    /// Adds entries to their conversations' logs (adding one twice keeps one; each log keeps
    /// its newest entries up to the store's bound) and indexes direct conversations under both
    /// users. One round trip.
    async fn append(&self, entries: &[LogEntry]) -> Result<(), PortError>;
    /// `user`'s direct conversations with the latest seq of each.
    async fn inbox(&self, user: &UserId) -> Result<Vec<(String, u64)>, PortError>;
    /// The latest seq in each conversation's log (0: empty), same order, one round trip.
    async fn heads(&self, conversations: &[String]) -> Result<Vec<u64>, PortError>;
    /// Up to `limit` entries of `conversation`'s log above `after`, ascending by seq.
    async fn page(
        &self,
        conversation: &ConversationId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, PortError>;
    /// A device's cursors: conversation → the last seq it acked.
    async fn cursors(
        &self,
        user: &UserId,
        device: &str,
    ) -> Result<std::collections::HashMap<String, u64>, PortError>;
    /// Where each device's drain starts, same order: its user's direct conversations
    /// ([`Self::inbox`]) and its cursors ([`Self::cursors`]). A store that can answers in one
    /// round trip for all of them.
    async fn starts(&self, devices: &[(UserId, String)]) -> Result<Vec<DeviceStart>, PortError> {
        let mut out = Vec::with_capacity(devices.len());
        for (user, device) in devices {
            out.push(DeviceStart {
                inbox: self.inbox(user).await?,
                cursors: self.cursors(user, device).await?,
            });
        }
        Ok(out)
    }
    /// Moves a device's cursor of `conversation` up to `seq` (never down).
    async fn ack(
        &self,
        user: &UserId,
        device: &str,
        conversation: &str,
        seq: u64,
    ) -> Result<(), PortError>;
}

/// A device's [`ConversationLog::inbox`] and [`ConversationLog::cursors`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeviceStart {
    pub inbox: Vec<(String, u64)>,
    pub cursors: std::collections::HashMap<String, u64>,
}

/// Why a push to a connection failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PushError {
    /// The connection is gone (API Gateway's 410): later pushes to it are pointless.
    #[error("connection gone")]
    Gone,
    /// The connection is not keeping up (API Gateway's 429 `LimitExceededException`; a gateway
    /// answers it when the connection's queue stayed full for `GATEWAY_POST_WAIT_MS`): try it
    /// again later, behind everyone else, rather than wait for it.
    #[error("connection busy")]
    Busy,
    #[error(transparent)]
    Failed(#[from] PortError),
}

/// Pushes data to one client connection: the API Gateway Management API's PostToConnection.
#[async_trait]
pub trait ConnectionPusher: Send + Sync {
    async fn post(&self, endpoint: &str, conn: &str, data: &str) -> Result<(), PushError>;
}

/// Announces a new connection (`user_connected`), so its device's backlog is pushed to it.
pub trait ConnectionEvents: Send + Sync {
    fn connected(&self, event: &UserConnected) -> PendingPublish;
}

/// History reads: one page of a conversation.
#[async_trait]
pub trait HistoryStore: Send + Sync {
    /// Up to `limit` messages of `conversation` in `range`, ascending by seq, and whether more
    /// lie beyond the page in the direction of paging. One query per call.
    async fn page(
        &self,
        conversation: &ConversationId,
        range: crate::history::Range,
        limit: u32,
    ) -> Result<crate::history::Page, PortError>;
}

/// Devices registered for push, per (user, device), durable (DynamoDB).
#[async_trait]
pub trait PushRegistry: Send + Sync {
    /// Registers a device, replacing any earlier registration of it.
    async fn register(
        &self,
        user: &UserId,
        device: &str,
        registration: &crate::push::Registration,
        at_ms: u64,
    ) -> Result<(), PortError>;
    /// Removes a device's registration (none: nothing to do).
    async fn unregister(&self, user: &UserId, device: &str) -> Result<(), PortError>;
    /// The registration of each (user, device) (same order; none: not registered), batched.
    async fn get(
        &self,
        keys: &[(UserId, String)],
    ) -> Result<Vec<Option<crate::push::Registration>>, PortError>;
}

/// Which devices of which users are registered for push: a mirror of [`PushRegistry`] that
/// messaging reads with every batch (Redis), written with each registration.
#[async_trait]
pub trait PushDevices: Send + Sync {
    /// Each user's registered devices (same order; none: nothing registered), batched.
    async fn registered(&self, users: &[UserId]) -> Result<Vec<Vec<String>>, PortError>;
    async fn add(&self, user: &UserId, device: &str) -> Result<(), PortError>;
    async fn remove(&self, user: &UserId, device: &str) -> Result<(), PortError>;
}

/// Messaging → the push function: the `push_requests` topic (one record per batch).
#[async_trait]
pub trait PushBus: Send + Sync {
    /// Publishes every request and waits until all are acked.
    async fn publish(&self, requests: &[crate::push::PushRequest]) -> Result<(), PortError>;
}

/// Everything the messaging step needs.
#[derive(Clone)]
pub struct Ports {
    pub registry: Arc<dyn SessionRegistry>,
    pub sequences: Arc<dyn SequenceAllocator>,
    pub chat: Arc<dyn ChatStore>,
    pub dedupe: Arc<dyn DedupeIndex>,
    pub deliveries: Arc<dyn DeliveryBus>,
    pub log: Arc<dyn ConversationLog>,
    pub groups: Arc<crate::groups::MembershipCache>,
    pub markers: Arc<dyn ReadMarkers>,
    pub inbox: Arc<dyn InboxIndex>,
    /// The last message of a conversation whose log is empty (clamping a marker to the head).
    pub history: Arc<dyn HistoryStore>,
    /// Devices registered for push (who gets a push request).
    pub push: Arc<dyn PushDevices>,
}
