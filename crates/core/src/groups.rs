//! Group administration (PROTOCOL.md, Groups): the rules of the group routes, over a
//! [`GroupStore`]. The caller of `create` is the owner and a member; any member adds; the owner
//! removes anyone but themselves; a member removes themselves; non-members get 403, a missing
//! group 404.
//!
//! Modules: [`cache`] (messaging's membership view), [`change`] (stream records → system
//! messages).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use connect_protocol::{ErrorCode, GroupId, UserId};

use crate::ApiError;
use crate::PortError;

mod cache;
mod change;

pub use cache::{Members, MembershipCache, Roster};
pub use change::GroupChange;

/// The longest group name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// A group as the contract shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    pub group: GroupId,
    pub name: String,
    pub owner: UserId,
    /// Sorted.
    pub members: Vec<UserId>,
}

/// A group in `GET /v1/groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupSummary {
    pub group: GroupId,
    pub name: String,
    pub owner: UserId,
}

/// The group table (DynamoDB: a meta item and one item per member, an index user → groups).
#[async_trait]
pub trait GroupStore: Send + Sync {
    /// Writes a new group (its id is fresh).
    async fn create(&self, group: &Group) -> Result<(), PortError>;
    /// The group's meta data (no members), or None.
    async fn meta(&self, group: &GroupId) -> Result<Option<GroupSummary>, PortError>;
    /// The members, sorted.
    async fn members(&self, group: &GroupId) -> Result<Vec<UserId>, PortError> {
        Ok(self
            .roster(group)
            .await?
            .into_iter()
            .map(|m| m.user)
            .collect())
    }
    /// The members with the membership version each joined at, sorted by user, read
    /// consistently.
    async fn roster(&self, group: &GroupId) -> Result<Vec<Member>, PortError>;
    async fn is_member(&self, group: &GroupId, user: &UserId) -> Result<bool, PortError>;
    /// Adds a member on `by`'s request (adding a member again is a no-op).
    async fn add_member(
        &self,
        group: &GroupId,
        user: &UserId,
        by: &UserId,
    ) -> Result<(), PortError>;
    /// Removes a member on `by`'s request (the stream's old image says who); false if they
    /// were not one.
    async fn remove_member(
        &self,
        group: &GroupId,
        user: &UserId,
        by: &UserId,
    ) -> Result<bool, PortError>;
    /// The groups `user` is a member of.
    async fn groups_of(&self, user: &UserId) -> Result<Vec<GroupSummary>, PortError>;
    /// The meta data of each of `groups` that exists (in no particular order), batched.
    async fn summaries(&self, groups: &[GroupId]) -> Result<Vec<GroupSummary>, PortError>;
    /// The groups `user` is a member of, with the membership version they joined at (the
    /// membership index alone).
    async fn memberships_of(&self, user: &UserId) -> Result<Vec<Membership>, PortError>;
    /// Each group's membership version (same order as `groups`; None: no such group), read
    /// consistently in one round trip. Every member write bumps it in the same transaction, so
    /// a version read after an admin call answered shows that call's change.
    async fn versions(&self, groups: &[GroupId]) -> Result<Vec<Option<u64>>, PortError>;
}

/// A member and the membership version at which they joined (the version their add bumped the
/// group to; 1 for the members a group was created with, 0 for members written before versions
/// existed). A group message sequenced under version `v` belongs to the members with
/// `since <= v`: a later joiner never gets it, replayed or drained.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub user: UserId,
    pub since: u64,
}

/// One of a user's groups and the membership version they joined it at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub group: GroupId,
    pub since: u64,
}

/// `POST /v1/groups` body.
#[derive(Debug, Deserialize)]
pub struct CreateGroup {
    pub name: String,
    #[serde(default)]
    pub members: Vec<String>,
}

/// `POST /v1/groups/{group}/members` body.
#[derive(Debug, Deserialize)]
pub struct AddMember {
    pub user: String,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

fn user_id(s: &str) -> Result<UserId, ApiError> {
    UserId::parse(s).map_err(|e| bad(format!("bad user id {s:?}: {e}")))
}

/// Parses a JSON body into `T` (400 with the reason otherwise).
pub fn body<T: for<'de> Deserialize<'de>>(text: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(text).map_err(|e| bad(format!("bad JSON body: {e}")))
}

/// Parses a group id from a path (404: no such group can have a malformed id).
pub fn group_id(s: &str) -> Result<GroupId, ApiError> {
    GroupId::parse(s).map_err(|_| ApiError::new(ErrorCode::NotFound, "no such group"))
}

/// Group admin over its store; `max_members` bounds a group (`GROUP_MAX_MEMBERS`).
pub struct Groups<'a> {
    pub store: &'a dyn GroupStore,
    pub max_members: usize,
}

impl GroupSummary {
    fn with_members(self, members: Vec<UserId>) -> Group {
        Group {
            group: self.group,
            name: self.name,
            owner: self.owner,
            members,
        }
    }
}

impl Groups<'_> {
    fn too_many(&self) -> ApiError {
        ApiError::new(
            ErrorCode::TooLarge,
            format!("a group has at most {} members", self.max_members),
        )
    }

    pub async fn create(&self, caller: &UserId, req: CreateGroup) -> Result<Group, ApiError> {
        let name = req.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
            return Err(bad(format!(
                "`name` must be 1 to {MAX_NAME_CHARS} characters"
            )));
        }
        let mut members = req
            .members
            .iter()
            .map(|m| user_id(m))
            .collect::<Result<Vec<_>, _>>()?;
        members.push(caller.clone());
        members.sort();
        members.dedup();
        if members.len() > self.max_members {
            return Err(self.too_many());
        }
        let group = Group {
            group: GroupId::parse(format!(
                "g_{}",
                &uuid::Uuid::new_v4().simple().to_string()[..16]
            ))
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?,
            name,
            owner: caller.clone(),
            members,
        };
        self.store.create(&group).await?;
        Ok(group)
    }

    /// The group's meta data, if `caller` may see it (404 / 403 otherwise).
    async fn visible(&self, caller: &UserId, id: &GroupId) -> Result<GroupSummary, ApiError> {
        let Some(meta) = self.store.meta(id).await? else {
            return Err(ApiError::new(ErrorCode::NotFound, "no such group"));
        };
        if !self.store.is_member(id, caller).await? {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "not a member of this group",
            ));
        }
        Ok(meta)
    }

    pub async fn get(&self, caller: &UserId, id: &GroupId) -> Result<Group, ApiError> {
        let meta = self.visible(caller, id).await?;
        Ok(meta.with_members(self.store.members(id).await?))
    }

    pub async fn list(&self, caller: &UserId) -> Result<Vec<GroupSummary>, ApiError> {
        let mut groups = self.store.groups_of(caller).await?;
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(groups)
    }

    pub async fn add(
        &self,
        caller: &UserId,
        id: &GroupId,
        req: AddMember,
    ) -> Result<Group, ApiError> {
        let user = user_id(&req.user)?;
        let meta = self.visible(caller, id).await?;
        // One read of the members answers "already one?", the size bound and the response.
        let mut members = self.store.members(id).await?;
        if let Err(at) = members.binary_search(&user) {
            if members.len() >= self.max_members {
                return Err(self.too_many());
            }
            self.store.add_member(id, &user, caller).await?;
            members.insert(at, user);
        }
        Ok(meta.with_members(members))
    }

    pub async fn remove(&self, caller: &UserId, id: &GroupId, user: &str) -> Result<(), ApiError> {
        let user = user_id(user)?;
        let meta = self.visible(caller, id).await?;
        let allowed = if caller == &meta.owner {
            user != meta.owner
        } else {
            &user == caller
        };
        if !allowed {
            let why = if caller == &meta.owner {
                "the owner cannot leave the group"
            } else {
                "only the owner removes other members"
            };
            return Err(ApiError::new(ErrorCode::Forbidden, why));
        }
        if !self.store.remove_member(id, &user, caller).await? {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "not a member of this group",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Memory;

    fn u(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn groups(mem: &Memory) -> Groups<'_> {
        Groups {
            store: mem,
            max_members: 4,
        }
    }

    #[tokio::test]
    async fn the_rules_of_the_group_routes() {
        let mem = Memory::default();
        let g = groups(&mem);
        let trip = g
            .create(
                &u("alice"),
                CreateGroup {
                    name: " Trip ".into(),
                    members: vec!["bob".into(), "carol".into(), "bob".into()],
                },
            )
            .await
            .unwrap();
        assert!(trip.group.as_str().starts_with("g_"));
        assert_eq!((trip.name.as_str(), trip.owner.as_str()), ("Trip", "alice"));
        assert_eq!(trip.members, [u("alice"), u("bob"), u("carol")]);
        let id = trip.group.clone();

        assert_eq!(g.get(&u("bob"), &id).await.unwrap(), trip);
        assert_eq!(g.get(&u("dave"), &id).await.unwrap_err().status(), 403);
        assert_eq!(
            g.get(&u("bob"), &GroupId::parse("g_none").unwrap())
                .await
                .unwrap_err()
                .status(),
            404
        );
        assert_eq!(g.list(&u("carol")).await.unwrap().len(), 1);
        assert!(g.list(&u("dave")).await.unwrap().is_empty());

        // Any member adds; a non-member cannot.
        let after = g
            .add(
                &u("bob"),
                &id,
                AddMember {
                    user: "dave".into(),
                },
            )
            .await
            .unwrap();
        assert!(after.members.contains(&u("dave")));
        assert_eq!(
            g.add(
                &u("erin"),
                &id,
                AddMember {
                    user: "erin".into()
                }
            )
            .await
            .unwrap_err()
            .status(),
            403
        );
        assert_eq!(
            g.add(
                &u("bob"),
                &id,
                AddMember {
                    user: "erin".into()
                }
            )
            .await
            .unwrap_err()
            .code,
            ErrorCode::TooLarge
        );
        assert_eq!(
            g.add(
                &u("bob"),
                &id,
                AddMember {
                    user: "bad id".into()
                }
            )
            .await
            .unwrap_err()
            .status(),
            400
        );

        // A member cannot remove the owner or others; the owner removes anyone but themselves.
        assert_eq!(
            g.remove(&u("bob"), &id, "alice")
                .await
                .unwrap_err()
                .status(),
            403
        );
        assert_eq!(
            g.remove(&u("bob"), &id, "carol")
                .await
                .unwrap_err()
                .status(),
            403
        );
        assert_eq!(
            g.remove(&u("alice"), &id, "alice")
                .await
                .unwrap_err()
                .status(),
            403
        );
        g.remove(&u("alice"), &id, "carol").await.unwrap();
        assert_eq!(g.get(&u("carol"), &id).await.unwrap_err().status(), 403);
        g.remove(&u("dave"), &id, "dave").await.unwrap();
        assert_eq!(
            g.get(&u("alice"), &id).await.unwrap().members,
            [u("alice"), u("bob")]
        );
    }

    #[tokio::test]
    async fn bad_creates_are_refused() {
        let mem = Memory::default();
        let g = groups(&mem);
        let create = |name: &str, members: &[&str]| CreateGroup {
            name: name.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
        };
        assert_eq!(
            g.create(&u("a"), create("", &[]))
                .await
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            g.create(&u("a"), create(&"x".repeat(101), &[]))
                .await
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            g.create(&u("a"), create("n", &["no way"]))
                .await
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            g.create(&u("a"), create("n", &["b", "c", "d", "e"]))
                .await
                .unwrap_err()
                .status(),
            413
        );
        assert!(body::<CreateGroup>(b"{\"members\":[]}").is_err());
    }

    #[test]
    fn stream_records_become_system_messages() {
        use serde_json::json;
        let meta =
            json!({"group":{"S":"g_1"},"item":{"S":"meta"},"name":{"S":"T"},"owner":{"S":"alice"}});
        let c = GroupChange::from_record("e1", "INSERT", &meta, &json!({})).unwrap();
        assert_eq!(
            (c.kind, c.by.as_str(), c.user.as_ref()),
            ("group_created", "alice", None)
        );
        let sub = c.submission();
        assert_eq!(sub.conversation.to_string(), "group:g_1");
        assert_eq!(sub.id.as_str(), "ev-e1");
        assert!(sub.reply.is_none() && sub.body.is_empty());
        assert_eq!(sub.event.unwrap().kind, "group_created");

        let initial = json!({"group":{"S":"g_1"},"item":{"S":"m#bob"},"user":{"S":"bob"},"by":{"S":"alice"},"initial":{"BOOL":true}});
        assert!(GroupChange::from_record("e2", "INSERT", &initial, &json!({})).is_none());
        let added =
            json!({"group":{"S":"g_1"},"item":{"S":"m#dave"},"user":{"S":"dave"},"by":{"S":"bob"}});
        let c = GroupChange::from_record("e3", "INSERT", &added, &json!({})).unwrap();
        assert_eq!(
            (c.kind, c.by.as_str(), c.user.unwrap().as_str()),
            ("member_added", "bob", "dave")
        );
        let removed = json!({"group":{"S":"g_1"},"item":{"S":"m#carol"},"user":{"S":"carol"},"by":{"S":"alice"},"removed_by":{"S":"alice"}});
        assert!(GroupChange::from_record("e4", "MODIFY", &removed, &removed).is_none());
        let c = GroupChange::from_record("e5", "REMOVE", &json!({}), &removed).unwrap();
        assert_eq!(
            (c.kind, c.by.as_str(), c.user.clone().unwrap().as_str()),
            ("member_removed", "alice", "carol")
        );
        let long = GroupChange {
            event_id: "x".repeat(100),
            ..c
        };
        assert_eq!(long.submission().id.as_str().len(), 64);
    }
}
