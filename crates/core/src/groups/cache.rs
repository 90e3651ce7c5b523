//! Messaging's view of group membership.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use connect_protocol::{GroupId, UserId};

use super::GroupStore;
use crate::PortError;

/// A group's members, sorted (None: no such group).
pub type Members = Option<Arc<[UserId]>>;

struct Entry {
    at: Instant,
    /// The membership version the members were read at (None: read without one).
    version: Option<u64>,
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
                .filter(|e| e.version == Some(version) && e.at.elapsed() < self.ttl)
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

    async fn load(&self, group: &GroupId, version: Option<u64>) -> Result<Members, PortError> {
        let mut members = self.store.members(group).await?;
        // Sorted, so a membership check is a binary search even in a 10,000-member group.
        members.sort();
        // A group always has its owner: no members means no group.
        let members: Members = (!members.is_empty()).then(|| members.into());
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
                version,
                members: members.clone(),
            },
        );
        Ok(members)
    }

    pub fn invalidate(&self, group: &GroupId) {
        self.lock().remove(group);
    }
}
