//! Messaging's view of group membership.

use foldhash::{HashMap, HashMapExt};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use connect_protocol::{GroupId, UserId};

use super::{GroupStore, Member};
use crate::PortError;

/// A group's members as messaging sees them (None: no such group).
pub type Members = Option<Arc<Roster>>;

/// A group's members at a membership version, sorted by user, with the version each joined at.
#[derive(Debug)]
pub struct Roster {
    /// The membership version these members are (at least) as new as.
    pub version: u64,
    users: Arc<[UserId]>,
    since: Vec<u64>,
}

impl Roster {
    /// `members` sorted by user; `version` is raised to the newest join among them (a member
    /// read after the version was).
    pub fn new(version: u64, mut members: Vec<Member>) -> Self {
        members.sort();
        let version = members.iter().map(|m| m.since).fold(version, u64::max);
        let since = members.iter().map(|m| m.since).collect();
        Self {
            version,
            users: members.into_iter().map(|m| m.user).collect(),
            since,
        }
    }

    /// Every member (sorted).
    pub fn users(&self) -> Arc<[UserId]> {
        self.users.clone()
    }

    /// Whether `user` is a member (a binary search, even in a 10,000-member group).
    pub fn contains(&self, user: &UserId) -> bool {
        self.users.binary_search(user).is_ok()
    }

    /// The members who had joined by membership version `version`: a message sequenced under it
    /// goes to them, never to a later joiner.
    pub fn at(&self, version: u64) -> Arc<[UserId]> {
        if self.since.iter().all(|&s| s <= version) {
            return self.users.clone();
        }
        self.users
            .iter()
            .zip(&self.since)
            .filter(|(_, &s)| s <= version)
            .map(|(u, _)| u.clone())
            .collect()
    }
}

struct Entry {
    at: Instant,
    members: Members,
}

/// Messaging's view of group membership: members per group, cached (bounded, with a TTL as a
/// safety net). The admin call's answer is the commit point: [`Self::current`] checks the
/// batch's groups' membership versions with one consistent read, so every message sequenced
/// after a 200/204 uses the new membership.
pub struct MembershipCache {
    store: Arc<dyn GroupStore>,
    ttl: Duration,
    max: usize,
    map: Mutex<HashMap<GroupId, Entry>>,
}

impl MembershipCache {
    pub fn new(store: Arc<dyn GroupStore>, ttl: Duration, max: usize) -> Self {
        Self {
            store,
            ttl,
            max: max.max(1),
            map: Default::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<GroupId, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The members of `groups` as of now: one consistent read of their versions; a group whose
    /// cached members are of another version is read again.
    pub async fn current(
        &self,
        groups: &[GroupId],
    ) -> Result<HashMap<GroupId, Members>, PortError> {
        let mut view = HashMap::with_capacity(groups.len());
        if groups.is_empty() {
            return Ok(view);
        }
        let versions = self.store.versions(groups).await?;
        for (group, version) in groups.iter().zip(versions) {
            let Some(version) = version else {
                self.invalidate(group);
                view.insert(group.clone(), None);
                continue;
            };
            let cached = self
                .lock()
                .get(group)
                .filter(|e| {
                    e.at.elapsed() < self.ttl
                        && e.members.as_ref().is_some_and(|r| r.version == version)
                })
                .map(|e| e.members.clone());
            let members = match cached {
                Some(m) => m,
                // Read after the version: members at least as new as it (a later change has
                // a later version, which the next batch sees).
                None => self.load(group, Some(version)).await?,
            };
            view.insert(group.clone(), members);
        }
        Ok(view)
    }

    /// The members of `group`, from the cache (within its TTL) or the store.
    pub async fn members(&self, group: &GroupId) -> Result<Members, PortError> {
        if let Some(e) = self.lock().get(group) {
            if e.at.elapsed() < self.ttl {
                return Ok(e.members.clone());
            }
        }
        self.load(group, None).await
    }

    /// Reads the members after the version (read now unless given): members at least as new
    /// as it.
    async fn load(&self, group: &GroupId, version: Option<u64>) -> Result<Members, PortError> {
        let version = match version {
            Some(v) => Some(v),
            None => self
                .store
                .versions(std::slice::from_ref(group))
                .await?
                .pop()
                .flatten(),
        };
        let roster = self.store.roster(group).await?;
        // A group always has its owner: no members (or no meta item) means no group.
        let members: Members = match version {
            Some(v) if !roster.is_empty() => Some(Arc::new(Roster::new(v, roster))),
            _ => None,
        };
        let mut map = self.lock();
        if map.len() >= self.max && !map.contains_key(group) {
            // Evict the oldest entry: O(n), rare (only when full).
            if let Some(oldest) = map.iter().min_by_key(|(_, e)| e.at).map(|(g, _)| g.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(
            group.clone(),
            Entry {
                at: Instant::now(),
                members: members.clone(),
            },
        );
        Ok(members)
    }

    pub fn invalidate(&self, group: &GroupId) {
        self.lock().remove(group);
    }
}
