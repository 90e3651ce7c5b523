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

use crate::quota::{Quota, QuotaStore};
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

/// The bounds a membership write keeps, checked in the write itself (two concurrent adds to a
/// group one below its cap: one gets in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// `GROUP_MAX_MEMBERS`: members of one group.
    pub members: usize,
    /// `GROUP_MAX_PER_USER`: groups one user is in.
    pub groups_per_user: usize,
}

impl Caps {
    /// No bound (tests and harnesses of what is not group admin).
    pub const UNBOUNDED: Self = Self {
        members: usize::MAX,
        groups_per_user: usize::MAX,
    };
}

/// How an add went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    Added,
    /// A member already: nothing written.
    Already,
    /// The group has [`Caps::members`].
    GroupFull,
    /// The user is in [`Caps::groups_per_user`] groups.
    UserFull,
}

/// How a create went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The group is written with every member but `left_out` (each in
    /// [`Caps::groups_per_user`] groups already).
    Yes { left_out: Vec<UserId> },
    /// The owner is in [`Caps::groups_per_user`] groups: nothing is written.
    OwnerFull,
}

/// The group table (DynamoDB: a meta item and one item per member, an index user → groups).
#[async_trait]
pub trait GroupStore: Send + Sync {
    /// Writes a new group (its id is fresh; its owner is among its members), leaving out the
    /// members who are in [`Caps::groups_per_user`] groups already.
    async fn create(&self, group: &Group, caps: Caps) -> Result<Created, PortError>;
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
    /// Adds a member on `by`'s request (adding a member again is a no-op), within `caps`.
    async fn add_member(
        &self,
        group: &GroupId,
        user: &UserId,
        by: &UserId,
        caps: Caps,
    ) -> Result<Joined, PortError>;
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
    /// A page of them in group id order: after `after`, up to `limit`, and where the next page
    /// starts (the last membership read; None: no more). A membership whose group is gone is
    /// left out of the page but still moves the cursor.
    async fn groups_page(
        &self,
        user: &UserId,
        after: Option<&GroupId>,
        limit: usize,
    ) -> Result<(Vec<GroupSummary>, Option<GroupId>), PortError>;
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

/// The largest `limit` of `GET /v1/groups`. Without `limit` every group is listed (at most
/// [`Caps::groups_per_user`] of them, as PROTOCOL.md has it).
pub const LIST_MAX_LIMIT: usize = 100;

/// A parsed `GET /v1/groups`: every group (no `limit`), or a page after the group id `cursor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub page: Option<(usize, Option<GroupId>)>,
}

impl ListQuery {
    /// `limit` (1..=100) and `cursor` (a `next` this server gave); a cursor needs a limit.
    pub fn parse<'a>(param: impl Fn(&str) -> Option<&'a str>) -> Result<Self, ApiError> {
        let cursor = param("cursor")
            .map(|c| GroupId::parse(c).map_err(|_| bad("`cursor` is not one this server gave")))
            .transpose()?;
        if param("limit").is_none() {
            if cursor.is_some() {
                return Err(bad("`cursor` goes with `limit`"));
            }
            return Ok(Self { page: None });
        }
        let limit = crate::inbox::limit(param("limit"), LIST_MAX_LIMIT, LIST_MAX_LIMIT)?;
        Ok(Self {
            page: Some((limit, cursor)),
        })
    }
}

/// `GET /v1/groups`' answer: `next` is the cursor of the following page (None: the last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupList {
    pub groups: Vec<GroupSummary>,
    pub next: Option<GroupId>,
}

/// What group admin keeps within: the caps, and each user's hourly quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRules {
    pub caps: Caps,
    /// `GROUP_CREATES_PER_HOUR`: groups one user creates.
    pub creates: Quota,
    /// `GROUP_MEMBER_ADDS_PER_HOUR`: members one user adds, the members a group is created with
    /// included (a group of 500 takes 499).
    pub adds: Quota,
}

impl GroupRules {
    pub const fn new(caps: Caps, creates_per_hour: u64, adds_per_hour: u64) -> Self {
        Self {
            caps,
            creates: Quota::per_hour("group creations", creates_per_hour),
            adds: Quota::per_hour("member additions", adds_per_hour),
        }
    }
}

/// Group admin over its store, within `rules`.
pub struct Groups<'a> {
    pub store: &'a dyn GroupStore,
    pub quotas: &'a dyn QuotaStore,
    pub rules: GroupRules,
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
            format!("a group has at most {} members", self.rules.caps.members),
        )
    }

    fn in_too_many(&self, user: &UserId) -> ApiError {
        ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "{user} is in {} groups, the most one user can be in",
                self.rules.caps.groups_per_user
            ),
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
        if members.len() > self.rules.caps.members {
            return Err(self.too_many());
        }
        let now = crate::now_ms();
        self.rules.creates.take(self.quotas, caller, 1, now).await?;
        self.rules
            .adds
            .take(self.quotas, caller, members.len() as u64 - 1, now)
            .await?;
        let mut group = Group {
            group: GroupId::parse(format!(
                "g_{}",
                &uuid::Uuid::new_v4().simple().to_string()[..16]
            ))
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?,
            name,
            owner: caller.clone(),
            members,
        };
        match self.store.create(&group, self.rules.caps).await? {
            Created::OwnerFull => Err(self.in_too_many(caller)),
            Created::Yes { left_out } => {
                if !left_out.is_empty() {
                    tracing::info!(group = %group.group, left_out = left_out.len(), "members in too many groups were left out");
                    group.members.retain(|m| !left_out.contains(m));
                }
                Ok(group)
            }
        }
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

    pub async fn list(&self, caller: &UserId, query: &ListQuery) -> Result<GroupList, ApiError> {
        match &query.page {
            None => {
                let mut groups = self.store.groups_of(caller).await?;
                groups.sort_by(|a, b| a.group.cmp(&b.group));
                Ok(GroupList { groups, next: None })
            }
            Some((limit, after)) => {
                let (groups, next) = self
                    .store
                    .groups_page(caller, after.as_ref(), *limit)
                    .await?;
                Ok(GroupList { groups, next })
            }
        }
    }

    pub async fn add(
        &self,
        caller: &UserId,
        id: &GroupId,
        req: AddMember,
    ) -> Result<Group, ApiError> {
        let user = user_id(&req.user)?;
        let meta = self.visible(caller, id).await?;
        self.rules
            .adds
            .take(self.quotas, caller, 1, crate::now_ms())
            .await?;
        match self
            .store
            .add_member(id, &user, caller, self.rules.caps)
            .await?
        {
            Joined::Added | Joined::Already => {}
            Joined::GroupFull => return Err(self.too_many()),
            Joined::UserFull => return Err(self.in_too_many(&user)),
        }
        Ok(meta.with_members(self.store.members(id).await?))
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
            quotas: mem,
            rules: GroupRules::new(
                Caps {
                    members: 4,
                    groups_per_user: 3,
                },
                1000,
                1000,
            ),
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
        let all = ListQuery { page: None };
        assert_eq!(g.list(&u("carol"), &all).await.unwrap().groups.len(), 1);
        assert!(g.list(&u("dave"), &all).await.unwrap().groups.is_empty());

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

    fn create(name: &str, members: &[&str]) -> CreateGroup {
        CreateGroup {
            name: name.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn a_user_is_in_at_most_groups_per_user_groups() {
        let mem = Memory::default();
        let g = groups(&mem);
        for n in 0..3 {
            g.create(&u("alice"), create(&format!("g{n}"), &["bob"]))
                .await
                .unwrap();
        }
        // alice and bob are in 3 each: alice cannot create, carol's group leaves bob out.
        assert_eq!(
            g.create(&u("alice"), create("g4", &[]))
                .await
                .unwrap_err()
                .status(),
            403
        );
        let carols = g
            .create(&u("carol"), create("c", &["bob", "dave"]))
            .await
            .unwrap();
        assert_eq!(carols.members, [u("carol"), u("dave")]);
        assert_eq!(g.get(&u("carol"), &carols.group).await.unwrap(), carols);
        let refused = g
            .add(&u("carol"), &carols.group, AddMember { user: "bob".into() })
            .await
            .unwrap_err();
        assert_eq!(refused.status(), 403);
        assert!(
            refused.message.contains("bob is in 3 groups"),
            "{}",
            refused.message
        );
        // Leaving one makes room.
        let first = g
            .list(&u("bob"), &ListQuery { page: None })
            .await
            .unwrap()
            .groups[0]
            .group
            .clone();
        g.remove(&u("bob"), &first, "bob").await.unwrap();
        g.add(&u("carol"), &carols.group, AddMember { user: "bob".into() })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn creations_and_additions_past_the_hourly_quota_get_429() {
        let mem = Memory::default();
        let g = Groups {
            store: &mem,
            quotas: &mem,
            rules: GroupRules::new(Caps::UNBOUNDED, 2, 5),
        };
        let a = g
            .create(&u("alice"), create("a", &["b1", "b2"]))
            .await
            .unwrap();
        g.create(&u("alice"), create("b", &["b3"])).await.unwrap();
        // A third creation, even of nobody else: 429.
        assert_eq!(
            g.create(&u("alice"), create("c", &[]))
                .await
                .unwrap_err()
                .status(),
            429
        );
        // 3 of 5 additions taken by the creations: 2 more adds, then 429.
        for who in ["c1", "c2"] {
            g.add(&u("alice"), &a.group, AddMember { user: who.into() })
                .await
                .unwrap();
        }
        let refused = g
            .add(&u("alice"), &a.group, AddMember { user: "c3".into() })
            .await
            .unwrap_err();
        assert_eq!(
            (refused.status(), refused.code),
            (429, ErrorCode::RateLimited)
        );
        // Another member has their own quota; a create bigger than the quota never fits.
        g.add(&u("b1"), &a.group, AddMember { user: "c3".into() })
            .await
            .unwrap();
        let big: Vec<String> = (0..6).map(|i| format!("x{i}")).collect();
        let big: Vec<&str> = big.iter().map(String::as_str).collect();
        assert_eq!(
            g.create(&u("b2"), create("big", &big))
                .await
                .unwrap_err()
                .status(),
            429
        );
    }

    #[tokio::test]
    async fn the_group_list_pages_by_group_id() {
        let mem = Memory::default();
        let g = Groups {
            store: &mem,
            quotas: &mem,
            rules: GroupRules::new(Caps::UNBOUNDED, 1000, 1000),
        };
        for n in 0..7 {
            g.create(&u("alice"), create(&format!("g{n}"), &[]))
                .await
                .unwrap();
        }
        fn q(limit: &str, cursor: Option<&str>) -> Result<ListQuery, ApiError> {
            let params = [("limit", Some(limit)), ("cursor", cursor)];
            ListQuery::parse(|name| {
                params
                    .iter()
                    .find(|(k, _)| *k == name)
                    .and_then(|(_, v)| *v)
            })
        }
        let all = g
            .list(&u("alice"), &ListQuery { page: None })
            .await
            .unwrap();
        assert_eq!((all.groups.len(), all.next.as_ref()), (7, None));
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = g
                .list(&u("alice"), &q("3", cursor.as_deref()).unwrap())
                .await
                .unwrap();
            assert!(page.groups.len() <= 3);
            seen.extend(page.groups.iter().map(|s| s.group.clone()));
            match page.next {
                Some(next) => cursor = Some(next.to_string()),
                None => break,
            }
        }
        let ids: Vec<_> = all.groups.iter().map(|s| s.group.clone()).collect();
        assert_eq!(seen, ids);
        for bad in [
            q("0", None),
            q("101", None),
            q("x", None),
            q("3", Some("no way")),
        ] {
            assert_eq!(bad.unwrap_err().status(), 400);
        }
        assert_eq!(
            ListQuery::parse(|n| (n == "cursor").then_some("g_1"))
                .unwrap_err()
                .status(),
            400
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
