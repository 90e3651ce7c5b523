//! In-memory implementations of the ports, for unit tests of the pure logic. Never used in place
//! of the real backends in end-to-end tests or in the services.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use connect_protocol::{ConversationId, UserId};

use crate::history::{Page, Range};
use crate::model::{
    Acceptance, DedupeKey, Delivery, LogEntry, Session, SessionRoute, StoredMessage, UserConnected,
};
use crate::ports::{
    ChatStore, ConnectionEvents, ConnectionPusher, ConversationLog, DedupeIndex, DeliveryBus,
    HistoryStore, PendingPublish, Ports, PushError, Reserved, SequenceAllocator, SessionRegistry,
};
use crate::PortError;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every port in memory, with switches to make the chat store fail.
#[derive(Default)]
pub struct Memory {
    pub sessions: Mutex<HashMap<UserId, Vec<SessionRoute>>>,
    pub seqs: Mutex<HashMap<ConversationId, u64>>,
    /// The highest seq each conversation gave back ([`Reserved::reused_to`]).
    pub given_back: Mutex<HashMap<ConversationId, u64>>,
    pub messages: Mutex<HashMap<(String, u64), StoredMessage>>,
    pub accepted: Mutex<HashMap<DedupeKey, Acceptance>>,
    pub published: Mutex<Vec<Delivery>>,
    pub chat_down: AtomicBool,
    /// The next this many conversation-log appends fail (`unavailable`), as Redis down would.
    pub log_failures: std::sync::atomic::AtomicUsize,
    /// The next this many reads of a user's direct conversations (`inbox`) fail.
    pub inbox_failures: std::sync::atomic::AtomicUsize,
    /// The next this many registry lookups fail.
    pub lookup_failures: std::sync::atomic::AtomicUsize,
    /// Conversation → seq → entry.
    pub logs: Mutex<BTreeMap<String, BTreeMap<u64, LogEntry>>>,
    /// User → direct conversation → latest seq.
    pub inboxes: Mutex<HashMap<UserId, BTreeMap<String, u64>>>,
    /// (user, device) → conversation → acked seq.
    pub cursors: Mutex<HashMap<(UserId, String), HashMap<String, u64>>>,
    /// What was pushed to connections: (connection, data).
    pub pushed: Mutex<Vec<(String, String)>>,
    /// Connections that answer a push with 410.
    pub gone: Mutex<HashSet<String>>,
    /// Connections that take this many more posts, then answer 429 (busy) until refilled.
    pub room: Mutex<HashMap<String, usize>>,
    /// Groups: meta and members.
    pub groups: Mutex<BTreeMap<connect_protocol::GroupId, crate::groups::Group>>,
    /// `user_connected` events published.
    pub announced: Mutex<Vec<UserConnected>>,
    /// Membership versions, bumped by every member write.
    pub group_versions: Mutex<HashMap<connect_protocol::GroupId, u64>>,
    /// The version each added member joined at (absent: 1, a member the group was created with).
    pub member_since: Mutex<HashMap<(connect_protocol::GroupId, UserId), u64>>,
    /// Conversations whose sequence another region owns: allocation answers `NotHome`.
    pub homed_elsewhere: Mutex<HashMap<ConversationId, String>>,
    /// Read markers per (user, conversation).
    pub markers: Mutex<HashMap<(UserId, ConversationId), crate::model::Markers>>,
    /// The inbox index: heads, and each user's direct conversations with their places.
    pub heads: Mutex<HashMap<ConversationId, crate::ports::Head>>,
    pub listings: Mutex<HashMap<UserId, HashMap<ConversationId, crate::ports::Head>>>,
    /// Inbox index writes made (for counting them).
    pub inbox_writes: std::sync::atomic::AtomicUsize,
    /// Read-marker reads made (for counting them).
    pub marker_reads: std::sync::atomic::AtomicUsize,
    /// Push registrations per (user, device).
    pub push: Mutex<HashMap<(UserId, String), crate::push::Registration>>,
    /// Quota counters by key.
    pub quotas: Mutex<HashMap<String, u64>>,
    /// Direct conversations started per (user, window).
    pub started: Mutex<HashMap<(UserId, u64), HashSet<ConversationId>>>,
}

impl Memory {
    /// The tests' group: `id` named `name`, owned by `owner`, with `members` (sorted), written
    /// as a create without caps would write it.
    pub fn put_group(
        &self,
        id: &str,
        name: &str,
        owner: &str,
        members: &[&str],
    ) -> connect_protocol::GroupId {
        let user = |u: &str| UserId::parse(u).expect("a user id");
        let group = connect_protocol::GroupId::parse(id).expect("a group id");
        let mut members: Vec<UserId> = members.iter().map(|m| user(m)).collect();
        members.sort();
        let g = crate::groups::Group {
            group: group.clone(),
            name: name.to_owned(),
            owner: user(owner),
            members,
        };
        lock(&self.groups).insert(group.clone(), g);
        group
    }

    pub fn ports(self: &Arc<Self>) -> Ports {
        Ports {
            registry: self.clone(),
            sequences: self.clone(),
            chat: self.clone(),
            dedupe: self.clone(),
            deliveries: self.clone(),
            log: self.clone(),
            groups: Arc::new(crate::groups::MembershipCache::new(
                self.clone(),
                std::time::Duration::from_secs(60),
                1000,
            )),
            markers: self.clone(),
            push: self.clone(),
            inbox: self.clone(),
            history: self.clone(),
        }
    }

    pub fn set_chat_down(&self, down: bool) {
        self.chat_down.store(down, Ordering::SeqCst);
    }

    pub fn take_published(&self) -> Vec<Delivery> {
        std::mem::take(&mut *lock(&self.published))
    }

    pub fn stored(&self) -> Vec<StoredMessage> {
        let mut v: Vec<_> = lock(&self.messages).values().cloned().collect();
        v.sort_by(|a, b| {
            (a.conversation.to_string(), a.seq).cmp(&(b.conversation.to_string(), b.seq))
        });
        v
    }

    pub fn take_pushed(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *lock(&self.pushed))
    }

    pub fn take_announced(&self) -> Vec<UserConnected> {
        std::mem::take(&mut *lock(&self.announced))
    }

    pub fn set_gone(&self, conn: &str) {
        lock(&self.gone).insert(conn.to_owned());
    }

    /// `conn` takes `posts` more posts, then answers busy (a reader that is not keeping up).
    pub fn set_room(&self, conn: &str, posts: usize) {
        lock(&self.room).insert(conn.to_owned(), posts);
    }

    /// The seqs in `conversation`'s log.
    pub fn log_seqs(&self, conversation: &str) -> Vec<u64> {
        lock(&self.logs)
            .get(conversation)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Takes one of `failures` if any is left: that call fails.
    fn fails(
        failures: &std::sync::atomic::AtomicUsize,
        what: &'static str,
    ) -> Result<(), PortError> {
        let took = failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match took {
            Ok(_) => Err(PortError::unavailable(what, "switched off")),
            Err(_) => Ok(()),
        }
    }

    fn check_chat(&self) -> Result<(), PortError> {
        if self.chat_down.load(Ordering::SeqCst) {
            return Err(PortError::unavailable("memory-chat", "switched off"));
        }
        Ok(())
    }
}

#[async_trait]
impl SessionRegistry for Memory {
    async fn upsert(&self, sessions: &[Session]) -> Result<(), PortError> {
        let mut map = lock(&self.sessions);
        for s in sessions {
            let routes = map.entry(s.user.clone()).or_default();
            routes.retain(|r| r.conn != s.route.conn);
            routes.push(s.route.clone());
        }
        Ok(())
    }

    async fn remove(&self, sessions: &[(UserId, String)]) -> Result<(), PortError> {
        let mut map = lock(&self.sessions);
        for (user, conn) in sessions {
            if let Some(routes) = map.get_mut(user) {
                routes.retain(|r| &r.conn != conn);
            }
        }
        Ok(())
    }

    async fn lookup(&self, users: &[UserId]) -> Result<Vec<Vec<SessionRoute>>, PortError> {
        Self::fails(&self.lookup_failures, "memory-registry")?;
        let map = lock(&self.sessions);
        Ok(users
            .iter()
            .map(|u| map.get(u).cloned().unwrap_or_default())
            .collect())
    }
}

#[async_trait]
impl SequenceAllocator for Memory {
    async fn allocate(
        &self,
        requests: &[(ConversationId, u64)],
    ) -> Vec<Result<Reserved, PortError>> {
        let homes = lock(&self.homed_elsewhere);
        let mut map = lock(&self.seqs);
        let given = lock(&self.given_back);
        requests
            .iter()
            .map(|(c, n)| {
                if let Some(home) = homes.get(c) {
                    return Err(PortError::NotHome {
                        conversation: c.to_string(),
                        home: home.clone(),
                    });
                }
                let last = map.entry(c.clone()).or_insert(0);
                *last += n;
                Ok(Reserved {
                    first: *last - n + 1,
                    reused_to: given.get(c).copied().unwrap_or(0),
                })
            })
            .collect()
    }

    async fn give_back(
        &self,
        conversation: &ConversationId,
        from: u64,
        last: u64,
    ) -> Result<bool, PortError> {
        let mut map = lock(&self.seqs);
        match map.get_mut(conversation) {
            Some(at) if *at == last => {
                *at = from - 1;
                let mut mark = lock(&self.given_back);
                let to = mark.entry(conversation.clone()).or_insert(0);
                *to = (*to).max(last);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl ChatStore for Memory {
    async fn put_batch(&self, messages: &[StoredMessage]) -> Result<(), PortError> {
        self.check_chat()?;
        let mut map = lock(&self.messages);
        for m in messages {
            map.insert((m.conversation.to_string(), m.seq), m.clone());
        }
        Ok(())
    }

    async fn put_if_absent(&self, message: &StoredMessage) -> Result<bool, PortError> {
        self.check_chat()?;
        let mut map = lock(&self.messages);
        let key = (message.conversation.to_string(), message.seq);
        if map.contains_key(&key) {
            return Ok(false);
        }
        map.insert(key, message.clone());
        Ok(true)
    }

    async fn get_many(
        &self,
        keys: &[(ConversationId, u64)],
    ) -> Result<Vec<Option<StoredMessage>>, PortError> {
        self.check_chat()?;
        let map = lock(&self.messages);
        Ok(keys
            .iter()
            .map(|(c, seq)| map.get(&(c.to_string(), *seq)).cloned())
            .collect())
    }
}

#[async_trait]
impl DedupeIndex for Memory {
    async fn get(&self, keys: &[DedupeKey]) -> Result<Vec<Option<Acceptance>>, PortError> {
        let map = lock(&self.accepted);
        Ok(keys.iter().map(|k| map.get(k).cloned()).collect())
    }

    async fn remember(
        &self,
        entries: &[(DedupeKey, Acceptance)],
    ) -> Result<Vec<Option<Acceptance>>, PortError> {
        let mut map = lock(&self.accepted);
        Ok(entries
            .iter()
            .map(|(key, acceptance)| match map.get(key) {
                Some(before) if before != acceptance => Some(before.clone()),
                Some(_) => None,
                None => {
                    map.insert(key.clone(), acceptance.clone());
                    None
                }
            })
            .collect())
    }

    async fn forget(&self, entries: &[(DedupeKey, Acceptance)]) -> Result<(), PortError> {
        let mut map = lock(&self.accepted);
        for (key, acceptance) in entries {
            if map.get(key) == Some(acceptance) {
                map.remove(key);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl DeliveryBus for Memory {
    async fn publish(&self, deliveries: &[Delivery]) -> Result<(), PortError> {
        lock(&self.published).extend_from_slice(deliveries);
        Ok(())
    }
}

#[async_trait]
impl ConversationLog for Memory {
    async fn append(&self, entries: &[LogEntry]) -> Result<(), PortError> {
        Self::fails(&self.log_failures, "memory-log")?;
        let mut logs = lock(&self.logs);
        let mut inboxes = lock(&self.inboxes);
        for e in entries {
            let conversation = e.conversation.to_string();
            logs.entry(conversation.clone())
                .or_default()
                .insert(e.seq, e.clone());
            if let ConversationId::Direct { low, high } = &e.conversation {
                for user in [low, high] {
                    let head = inboxes
                        .entry(user.clone())
                        .or_default()
                        .entry(conversation.clone())
                        .or_default();
                    *head = (*head).max(e.seq);
                }
            }
        }
        Ok(())
    }

    async fn inbox(&self, user: &UserId) -> Result<Vec<(String, u64)>, PortError> {
        Self::fails(&self.inbox_failures, "memory-log")?;
        Ok(lock(&self.inboxes)
            .get(user)
            .map(|m| m.iter().map(|(c, s)| (c.clone(), *s)).collect())
            .unwrap_or_default())
    }

    async fn heads(&self, conversations: &[String]) -> Result<Vec<u64>, PortError> {
        let logs = lock(&self.logs);
        Ok(conversations
            .iter()
            .map(|c| {
                logs.get(c)
                    .and_then(|m| m.keys().next_back().copied())
                    .unwrap_or(0)
            })
            .collect())
    }

    async fn page(
        &self,
        conversation: &ConversationId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, PortError> {
        Ok(lock(&self.logs)
            .get(&conversation.to_string())
            .map(|m| {
                m.range(after + 1..)
                    .take(limit)
                    .map(|(_, e)| e.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn cursors(
        &self,
        user: &UserId,
        device: &str,
    ) -> Result<HashMap<String, u64>, PortError> {
        Ok(lock(&self.cursors)
            .get(&(user.clone(), device.to_owned()))
            .cloned()
            .unwrap_or_default())
    }

    async fn ack(
        &self,
        user: &UserId,
        device: &str,
        conversation: &str,
        seq: u64,
    ) -> Result<(), PortError> {
        let mut cursors = lock(&self.cursors);
        let at = cursors
            .entry((user.clone(), device.to_owned()))
            .or_default()
            .entry(conversation.to_owned())
            .or_default();
        *at = (*at).max(seq);
        Ok(())
    }
}

#[async_trait]
impl crate::ports::ReadMarkers for Memory {
    async fn get(
        &self,
        keys: &[(UserId, ConversationId)],
    ) -> Result<Vec<crate::model::Markers>, PortError> {
        self.marker_reads
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let markers = lock(&self.markers);
        Ok(keys
            .iter()
            .map(|k| markers.get(k).copied().unwrap_or_default())
            .collect())
    }

    async fn put(
        &self,
        entries: &[(UserId, ConversationId, crate::model::Markers)],
    ) -> Result<(), PortError> {
        let mut markers = lock(&self.markers);
        for (user, conversation, m) in entries {
            markers.insert((user.clone(), conversation.clone()), *m);
        }
        Ok(())
    }
}

impl Memory {
    /// Places each direct conversation under both its users (`forward`: only later than the
    /// place it has).
    fn place(&self, places: &[(ConversationId, crate::ports::Head)], forward: bool) {
        let mut all = lock(&self.listings);
        for (conversation, head) in places {
            if let ConversationId::Direct { low, high } = conversation {
                for user in [low, high] {
                    let place = all
                        .entry(user.clone())
                        .or_default()
                        .entry(conversation.clone())
                        .or_default();
                    if !forward || place.seq < head.seq {
                        *place = *head;
                    }
                }
            }
        }
    }
}

#[async_trait]
impl crate::ports::InboxIndex for Memory {
    async fn write(&self, write: &crate::ports::InboxWrite) -> Result<(), PortError> {
        self.inbox_writes.fetch_add(1, Ordering::SeqCst);
        lock(&self.heads).extend(write.heads.iter().cloned());
        self.place(&write.places, false);
        crate::ports::ReadMarkers::put(self, &write.markers).await
    }

    async fn advance(&self, write: &crate::ports::InboxWrite) -> Result<(), PortError> {
        self.inbox_writes.fetch_add(1, Ordering::SeqCst);
        let mut heads = lock(&self.heads);
        for (conversation, head) in &write.heads {
            let current = heads.entry(conversation.clone()).or_default();
            if current.seq < head.seq {
                *current = *head;
            }
        }
        drop(heads);
        self.place(&write.places, true);
        Ok(())
    }

    async fn heads(
        &self,
        conversations: &[ConversationId],
    ) -> Result<Vec<Option<crate::ports::Head>>, PortError> {
        let heads = lock(&self.heads);
        Ok(conversations
            .iter()
            .map(|c| heads.get(c).copied())
            .collect())
    }

    async fn recent(
        &self,
        user: &UserId,
        after: Option<&crate::ports::Recency>,
        limit: usize,
    ) -> Result<Vec<(ConversationId, crate::ports::Head)>, PortError> {
        let places = lock(&self.listings).get(user).cloned().unwrap_or_default();
        let mut recent: Vec<(ConversationId, crate::ports::Head)> = places
            .into_iter()
            .filter(|(c, h)| after.is_none_or(|a| a.before(h.ts, &c.to_string())))
            .collect();
        recent.sort_by_cached_key(|(c, h)| (std::cmp::Reverse(h.ts), c.to_string()));
        recent.truncate(limit);
        Ok(recent)
    }
}

#[async_trait]
impl crate::ports::PushRegistry for Memory {
    async fn register(
        &self,
        user: &UserId,
        device: &str,
        registration: &crate::push::Registration,
        _at_ms: u64,
    ) -> Result<(), PortError> {
        lock(&self.push).insert((user.clone(), device.to_owned()), registration.clone());
        Ok(())
    }

    async fn unregister(&self, user: &UserId, device: &str) -> Result<(), PortError> {
        lock(&self.push).remove(&(user.clone(), device.to_owned()));
        Ok(())
    }

    async fn get(
        &self,
        keys: &[(UserId, String)],
    ) -> Result<Vec<Option<crate::push::Registration>>, PortError> {
        let push = lock(&self.push);
        Ok(keys.iter().map(|k| push.get(k).cloned()).collect())
    }
}

#[async_trait]
impl crate::ports::PushDevices for Memory {
    async fn registered(&self, users: &[UserId]) -> Result<Vec<Vec<String>>, PortError> {
        let push = lock(&self.push);
        Ok(users
            .iter()
            .map(|u| {
                let mut devices: Vec<String> = push
                    .keys()
                    .filter(|(user, _)| user == u)
                    .map(|(_, d)| d.clone())
                    .collect();
                devices.sort();
                devices
            })
            .collect())
    }

    async fn add(&self, _user: &UserId, _device: &str) -> Result<(), PortError> {
        Ok(())
    }

    async fn remove(&self, _user: &UserId, _device: &str) -> Result<(), PortError> {
        Ok(())
    }
}

#[async_trait]
impl ConnectionPusher for Memory {
    async fn post(&self, _endpoint: &str, conn: &str, data: &str) -> Result<(), PushError> {
        if lock(&self.gone).contains(conn) {
            return Err(PushError::Gone);
        }
        if let Some(room) = lock(&self.room).get_mut(conn) {
            if *room == 0 {
                return Err(PushError::Busy);
            }
            *room -= 1;
        }
        lock(&self.pushed).push((conn.to_owned(), data.to_owned()));
        Ok(())
    }
}

#[async_trait]
impl HistoryStore for Memory {
    async fn page(
        &self,
        conversation: &ConversationId,
        range: Range,
        limit: u32,
    ) -> Result<Page, PortError> {
        self.check_chat()?;
        let conv = conversation.to_string();
        let all: Vec<StoredMessage> = self
            .stored()
            .into_iter()
            .filter(|m| m.conversation.to_string() == conv)
            .collect();
        let limit = limit as usize;
        let (mut messages, has_more) = match range {
            Range::After { after, before } => {
                let mut v: Vec<_> = all
                    .into_iter()
                    .filter(|m| m.seq > after && before.is_none_or(|b| m.seq < b))
                    .collect();
                let more = v.len() > limit;
                v.truncate(limit);
                (v, more)
            }
            Range::Before { before } => {
                let mut v: Vec<_> = all
                    .into_iter()
                    .rev()
                    .filter(|m| before.is_none_or(|b| m.seq < b))
                    .collect();
                let more = v.len() > limit;
                v.truncate(limit);
                (v, more)
            }
        };
        messages.sort_by_key(|m| m.seq);
        Ok(Page { messages, has_more })
    }
}

impl ConnectionEvents for Memory {
    fn connected(&self, event: &UserConnected) -> PendingPublish {
        lock(&self.announced).push(event.clone());
        Box::pin(std::future::ready(Ok(())))
    }
}

#[async_trait]
impl crate::groups::GroupStore for Memory {
    async fn create(
        &self,
        group: &crate::groups::Group,
        caps: crate::groups::Caps,
    ) -> Result<crate::groups::Created, PortError> {
        let mut groups = lock(&self.groups);
        let count = |u: &UserId| groups.values().filter(|g| g.members.contains(u)).count();
        if count(&group.owner) >= caps.groups_per_user {
            return Ok(crate::groups::Created::OwnerFull);
        }
        let (members, left_out): (Vec<UserId>, Vec<UserId>) = group
            .members
            .iter()
            .cloned()
            .partition(|m| count(m) < caps.groups_per_user);
        let mut group = group.clone();
        group.members = members;
        groups.insert(group.group.clone(), group);
        Ok(crate::groups::Created::Yes { left_out })
    }

    async fn meta(
        &self,
        group: &connect_protocol::GroupId,
    ) -> Result<Option<crate::groups::GroupSummary>, PortError> {
        Ok(lock(&self.groups)
            .get(group)
            .map(|g| crate::groups::GroupSummary {
                group: g.group.clone(),
                name: g.name.clone(),
                owner: g.owner.clone(),
            }))
    }

    async fn roster(
        &self,
        group: &connect_protocol::GroupId,
    ) -> Result<Vec<crate::groups::Member>, PortError> {
        let since = lock(&self.member_since);
        Ok(lock(&self.groups)
            .get(group)
            .map(|g| {
                g.members
                    .iter()
                    .map(|u| crate::groups::Member {
                        user: u.clone(),
                        since: since.get(&(group.clone(), u.clone())).copied().unwrap_or(1),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn is_member(
        &self,
        group: &connect_protocol::GroupId,
        user: &UserId,
    ) -> Result<bool, PortError> {
        Ok(lock(&self.groups)
            .get(group)
            .is_some_and(|g| g.members.contains(user)))
    }

    async fn add_member(
        &self,
        group: &connect_protocol::GroupId,
        user: &UserId,
        _by: &UserId,
        caps: crate::groups::Caps,
    ) -> Result<crate::groups::Joined, PortError> {
        use crate::groups::Joined;
        let mut groups = lock(&self.groups);
        let in_groups = groups.values().filter(|g| g.members.contains(user)).count();
        let Some(g) = groups.get_mut(group) else {
            return Err(PortError::unavailable("groups", "the group vanished"));
        };
        if g.members.contains(user) {
            return Ok(Joined::Already);
        }
        if g.members.len() >= caps.members {
            return Ok(Joined::GroupFull);
        }
        if in_groups >= caps.groups_per_user {
            return Ok(Joined::UserFull);
        }
        g.members.push(user.clone());
        g.members.sort();
        let mut versions = lock(&self.group_versions);
        let v = versions.entry(group.clone()).or_insert(1);
        *v += 1;
        lock(&self.member_since).insert((group.clone(), user.clone()), *v);
        Ok(Joined::Added)
    }

    async fn remove_member(
        &self,
        group: &connect_protocol::GroupId,
        user: &UserId,
        _by: &UserId,
    ) -> Result<bool, PortError> {
        let removed = lock(&self.groups).get_mut(group).is_some_and(|g| {
            let before = g.members.len();
            g.members.retain(|m| m != user);
            g.members.len() < before
        });
        if removed {
            *lock(&self.group_versions).entry(group.clone()).or_insert(1) += 1;
        }
        Ok(removed)
    }

    async fn versions(
        &self,
        groups: &[connect_protocol::GroupId],
    ) -> Result<Vec<Option<u64>>, PortError> {
        let known = lock(&self.groups);
        let versions = lock(&self.group_versions);
        Ok(groups
            .iter()
            .map(|g| {
                known
                    .contains_key(g)
                    .then(|| versions.get(g).copied().unwrap_or(1))
            })
            .collect())
    }

    async fn memberships_of(
        &self,
        user: &UserId,
    ) -> Result<Vec<crate::groups::Membership>, PortError> {
        let since = lock(&self.member_since);
        Ok(lock(&self.groups)
            .values()
            .filter(|g| g.members.contains(user))
            .map(|g| crate::groups::Membership {
                group: g.group.clone(),
                since: since
                    .get(&(g.group.clone(), user.clone()))
                    .copied()
                    .unwrap_or(1),
            })
            .collect())
    }

    async fn summaries(
        &self,
        groups: &[connect_protocol::GroupId],
    ) -> Result<Vec<crate::groups::GroupSummary>, PortError> {
        Ok(lock(&self.groups)
            .values()
            .filter(|g| groups.contains(&g.group))
            .map(|g| crate::groups::GroupSummary {
                group: g.group.clone(),
                name: g.name.clone(),
                owner: g.owner.clone(),
            })
            .collect())
    }

    async fn groups_of(
        &self,
        user: &UserId,
    ) -> Result<Vec<crate::groups::GroupSummary>, PortError> {
        Ok(lock(&self.groups)
            .values()
            .filter(|g| g.members.contains(user))
            .map(|g| crate::groups::GroupSummary {
                group: g.group.clone(),
                name: g.name.clone(),
                owner: g.owner.clone(),
            })
            .collect())
    }

    async fn groups_page(
        &self,
        user: &UserId,
        after: Option<&connect_protocol::GroupId>,
        limit: usize,
    ) -> Result<
        (
            Vec<crate::groups::GroupSummary>,
            Option<connect_protocol::GroupId>,
        ),
        PortError,
    > {
        let mut all = self.groups_of(user).await?;
        all.sort_by(|a, b| a.group.cmp(&b.group));
        all.retain(|g| after.is_none_or(|a| &g.group > a));
        let more = all.len() > limit;
        all.truncate(limit);
        let next = all.last().filter(|_| more).map(|g| g.group.clone());
        Ok((all, next))
    }
}

#[async_trait]
impl crate::ports::ConversationStarts for Memory {
    async fn may_send(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        limit: u64,
        window_secs: u64,
    ) -> Result<bool, PortError> {
        let known = lock(&self.inboxes)
            .get(user)
            .is_some_and(|c| c.contains_key(&conversation.to_string()));
        if known {
            return Ok(true);
        }
        let window = crate::now_ms() / 1000 / window_secs.max(1);
        let mut started = lock(&self.started);
        let this = started.entry((user.clone(), window)).or_default();
        if this.contains(conversation) {
            return Ok(true);
        }
        if this.len() as u64 >= limit {
            return Ok(false);
        }
        this.insert(conversation.clone());
        Ok(true)
    }
}

#[async_trait]
impl crate::quota::QuotaStore for Memory {
    async fn take(&self, key: &str, amount: u64, limit: u64, _: u64) -> Result<bool, PortError> {
        let mut quotas = lock(&self.quotas);
        let n = quotas.entry(key.to_owned()).or_default();
        if *n + amount > limit {
            return Ok(false);
        }
        *n += amount;
        Ok(true)
    }
}

/// Presence nobody uses: no user ever goes online or offline, and watching is unavailable (for
/// tests and harnesses of what is not presence).
pub struct NoPresence;

#[async_trait]
impl crate::presence::PresenceStore for NoPresence {
    async fn present(
        &self,
        _: &[UserId],
        _: u64,
        _: u64,
    ) -> Result<Vec<crate::presence::PresenceChange>, PortError> {
        Ok(Vec::new())
    }

    async fn closed(&self, _: &[UserId], _: u64) -> Result<(), PortError> {
        Ok(())
    }

    async fn sweep(
        &self,
        _: u64,
        _: usize,
    ) -> Result<Vec<crate::presence::PresenceChange>, PortError> {
        Ok(Vec::new())
    }

    async fn apply(
        &self,
        _: &[crate::presence::PresenceChange],
        _: u64,
    ) -> Result<Vec<crate::presence::ViewChange>, PortError> {
        Ok(Vec::new())
    }

    async fn views(
        &self,
        _: &[UserId],
        _: Option<(u32, u64)>,
    ) -> Result<Vec<crate::presence::PresenceView>, PortError> {
        Err(PortError::unavailable("presence", "no presence here"))
    }

    async fn unwatch(&self, _: &[UserId], _: u32) -> Result<(), PortError> {
        Ok(())
    }
}

impl crate::presence::PresenceBus for NoPresence {
    fn publish(&self, _: &[crate::presence::PresenceChange]) -> PendingPublish {
        Box::pin(async { Ok(()) })
    }
}
