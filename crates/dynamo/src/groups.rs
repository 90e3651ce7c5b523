//! The group table: key (`group`, `item`); `item` = `meta` (name, owner) or `m#<user>` (one per
//! member, with `user` and `since`). The sparse global index `by_user` (`user`, `group`,
//! projecting `since`) lists a user's groups. Its stream feeds the group-events function. The
//! meta item's `version` is the membership version: every member write bumps it in the same
//! transaction, and an added member's `since` is the version their add bumped it to. The meta
//! item's `count` is the number of members, written in the same transactions under the same
//! version condition: the member cap holds whatever runs concurrently.
//!
//! Each user's group count lives in an item of its own, (`u#<user>`, `groups`) with `n`, moved
//! in the transaction of every member write (and in the transactions a group's initial members
//! are written in): `GROUP_MAX_PER_USER` is a condition on it. (It has no `user` attribute, so
//! the index leaves it out; the group-events function skips it, as its key is no group id.)

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};
use aws_sdk_dynamodb::Client;
use futures_util::stream::{self, StreamExt, TryStreamExt};

use connect_core::groups::{
    Caps, Created, Group, GroupStore, GroupSummary, Joined, Member, Membership,
};
use connect_core::PortError;
use connect_protocol::{GroupId, UserId};

use crate::unavailable;

/// The index from user to groups.
pub const BY_USER: &str = "by_user";
const META: &str = "meta";

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn member_key(user: &UserId) -> String {
    format!("m#{user}")
}

pub(crate) fn get<'a>(item: &'a HashMap<String, AttributeValue>, k: &str) -> Option<&'a str> {
    item.get(k)?.as_s().ok().map(String::as_str)
}

/// A number attribute (0 when absent: items written before it existed).
pub(crate) fn get_n(item: &HashMap<String, AttributeValue>, k: &str) -> u64 {
    item.get(k)
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Attempts of a member write whose version read was overtaken by another member write.
const ADD_ATTEMPTS: usize = 20;

/// Initial members written per transaction: each is two items (the member, their group count)
/// and a transaction takes at most 100.
const CREATE_CHUNK: usize = 50;

/// A membership write overtaken [`ADD_ATTEMPTS`] times in a row.
fn contended() -> PortError {
    PortError::unavailable("groups", "too many concurrent membership changes; retry")
}

/// The item that counts a user's groups.
fn user_count_key(user: &UserId) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("group".to_owned(), s(format!("u#{user}"))),
        ("item".to_owned(), s("groups")),
    ])
}

/// A transaction's outcome: written, or canceled with a reason code per item.
enum Transacted {
    Yes,
    Canceled(Vec<Option<String>>),
}

impl Transacted {
    fn failed(reasons: &[Option<String>], i: usize) -> bool {
        reasons.get(i).and_then(Option::as_deref) == Some("ConditionalCheckFailed")
    }

    fn conflicted(reasons: &[Option<String>]) -> bool {
        reasons
            .iter()
            .any(|r| r.as_deref() == Some("TransactionConflict"))
    }
}

fn summary(item: &HashMap<String, AttributeValue>) -> Option<GroupSummary> {
    Some(GroupSummary {
        group: GroupId::parse(get(item, "group")?).ok()?,
        name: get(item, "name")?.to_owned(),
        owner: UserId::parse(get(item, "owner")?).ok()?,
    })
}

pub(crate) fn err<E>(
    e: aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> PortError
where
    E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + Send + Sync + 'static,
{
    unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(e))
}

/// Every item a query matches, page after page.
pub(crate) async fn query_all(
    query: aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
) -> Result<Vec<HashMap<String, AttributeValue>>, PortError> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let out = query
            .clone()
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(err)?;
        items.extend(out.items.unwrap_or_default());
        start = out.last_evaluated_key;
        if start.is_none() {
            return Ok(items);
        }
    }
}

#[derive(Clone)]
pub struct DynamoGroups {
    client: Client,
    table: String,
}

impl DynamoGroups {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// A member item joining at membership version `since`; `initial` marks the members
    /// written with the group (its `group_created` event covers them).
    fn member_item(
        &self,
        group: &GroupId,
        user: &UserId,
        by: &UserId,
        since: u64,
        initial: bool,
    ) -> HashMap<String, AttributeValue> {
        let mut item = HashMap::from([
            ("group".to_owned(), s(group.as_str())),
            ("item".to_owned(), s(member_key(user))),
            ("user".to_owned(), s(user.as_str())),
            ("by".to_owned(), s(by.as_str())),
            ("since".to_owned(), n(since)),
        ]);
        if initial {
            item.insert("initial".to_owned(), AttributeValue::Bool(true));
        }
        item
    }
}

#[async_trait]
impl GroupStore for DynamoGroups {
    /// Members first, the meta item last: the meta item is the commit point, so the group (and
    /// its `group_created` event, which makes messaging read the member list) appears only with
    /// every initial member in place. Members are written with their group counts, the owner's
    /// transaction first: an owner at the cap writes nothing.
    async fn create(&self, group: &Group, caps: Caps) -> Result<Created, PortError> {
        let others: Vec<UserId> = group
            .members
            .iter()
            .filter(|m| **m != group.owner)
            .cloned()
            .collect();
        let first: Vec<UserId> = std::iter::once(group.owner.clone())
            .chain(others.iter().take(CREATE_CHUNK - 1).cloned())
            .collect();
        let mut left_out = self.write_initial(group, first, caps).await?;
        if left_out.contains(&group.owner) {
            return Ok(Created::OwnerFull);
        }
        let rest: Vec<Vec<UserId>> = others
            .get(CREATE_CHUNK - 1..)
            .unwrap_or_default()
            .chunks(CREATE_CHUNK)
            .map(<[_]>::to_vec)
            .collect();
        let more: Vec<Vec<UserId>> = stream::iter(rest)
            .map(|chunk| self.write_initial(group, chunk, caps))
            .buffer_unordered(8)
            .try_collect()
            .await?;
        left_out.extend(more.into_iter().flatten());
        let count = group.members.len() - left_out.len();
        self.client
            .put_item()
            .table_name(&self.table)
            .item("group", s(group.group.as_str()))
            .item("item", s(META))
            .item("name", s(&group.name))
            .item("owner", s(group.owner.as_str()))
            .item("version", n(1))
            .item("count", n(count as u64))
            .condition_expression("attribute_not_exists(#g)")
            .expression_attribute_names("#g", "group")
            .send()
            .await
            .map_err(err)?;
        Ok(Created::Yes { left_out })
    }

    async fn meta(&self, group: &GroupId) -> Result<Option<GroupSummary>, PortError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("group", s(group.as_str()))
            .key("item", s(META))
            .consistent_read(true)
            .send()
            .await
            .map_err(err)?;
        Ok(out.item().and_then(summary))
    }

    async fn roster(&self, group: &GroupId) -> Result<Vec<Member>, PortError> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#g = :g AND begins_with(#i, :m)")
            .expression_attribute_names("#g", "group")
            .expression_attribute_names("#i", "item")
            .expression_attribute_values(":g", s(group.as_str()))
            .expression_attribute_values(":m", s("m#"))
            .consistent_read(true);
        let mut members: Vec<Member> = query_all(query)
            .await?
            .iter()
            .filter_map(|i| {
                Some(Member {
                    user: UserId::parse(get(i, "user")?).ok()?,
                    since: get_n(i, "since"),
                })
            })
            .collect();
        members.sort();
        Ok(members)
    }

    async fn is_member(&self, group: &GroupId, user: &UserId) -> Result<bool, PortError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("group", s(group.as_str()))
            .key("item", s(member_key(user)))
            .consistent_read(true)
            .send()
            .await
            .map_err(err)?;
        Ok(out.item().is_some())
    }

    async fn add_member(
        &self,
        group: &GroupId,
        user: &UserId,
        by: &UserId,
        caps: Caps,
    ) -> Result<Joined, PortError> {
        // The member joins at the version their add bumps the group to: read the version and
        // the count, then write the member, the next version and count, and the user's group
        // count, on the condition that the version is unchanged (another member write in
        // between: read again) and the user is under their cap.
        for _ in 0..ADD_ATTEMPTS {
            let (version, count) = self.version_and_count(group).await?;
            if count >= caps.members as u64 {
                return Ok(if self.is_member(group, user).await? {
                    Joined::Already
                } else {
                    Joined::GroupFull
                });
            }
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(self.member_item(group, user, by, version + 1, false)))
                .condition_expression("attribute_not_exists(#i)")
                .expression_attribute_names("#i", "item")
                .build()
                .map_err(unavailable)?;
            let items = vec![
                TransactWriteItem::builder().put(put).build(),
                self.meta_bump(group, version, count + 1)?,
                self.user_count(user, 1, Some(caps.groups_per_user))?,
            ];
            match self.transact(items).await? {
                Transacted::Yes => return Ok(Joined::Added),
                // Already a member: no change, no event.
                Transacted::Canceled(r) if Transacted::failed(&r, 0) => return Ok(Joined::Already),
                Transacted::Canceled(r)
                    if Transacted::failed(&r, 1) || Transacted::conflicted(&r) =>
                {
                    continue
                }
                Transacted::Canceled(r) if Transacted::failed(&r, 2) => {
                    return Ok(Joined::UserFull)
                }
                Transacted::Canceled(r) => {
                    return Err(PortError::unavailable(
                        "groups",
                        format!("add canceled: {r:?}"),
                    ))
                }
            }
        }
        Err(contended())
    }

    async fn remove_member(
        &self,
        group: &GroupId,
        user: &UserId,
        by: &UserId,
    ) -> Result<bool, PortError> {
        // Record who removes, so the stream's REMOVE image (and the member_removed event) says.
        let marked = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("group", s(group.as_str()))
            .key("item", s(member_key(user)))
            .update_expression("SET #r = :by")
            .condition_expression("attribute_exists(#i)")
            .expression_attribute_names("#r", "removed_by")
            .expression_attribute_names("#i", "item")
            .expression_attribute_values(":by", s(by.as_str()))
            .send()
            .await;
        match marked {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                return Ok(false)
            }
            Err(e) => return Err(err(e)),
        }
        // The user's group count goes down with the membership, unless it is at zero already
        // (memberships written before counts existed were never counted).
        let mut uncount = true;
        for _ in 0..ADD_ATTEMPTS {
            let (version, count) = self.version_and_count(group).await?;
            let delete = Delete::builder()
                .table_name(&self.table)
                .key("group", s(group.as_str()))
                .key("item", s(member_key(user)))
                .condition_expression("attribute_exists(#i)")
                .expression_attribute_names("#i", "item")
                .build()
                .map_err(unavailable)?;
            let mut items = vec![
                TransactWriteItem::builder().delete(delete).build(),
                self.meta_bump(group, version, count.saturating_sub(1))?,
            ];
            if uncount {
                items.push(self.user_count(user, -1, None)?);
            }
            match self.transact(items).await? {
                Transacted::Yes => return Ok(true),
                Transacted::Canceled(r) if Transacted::failed(&r, 0) => return Ok(false),
                Transacted::Canceled(r)
                    if Transacted::failed(&r, 1) || Transacted::conflicted(&r) =>
                {
                    continue
                }
                Transacted::Canceled(r) if Transacted::failed(&r, 2) => {
                    uncount = false;
                    continue;
                }
                Transacted::Canceled(r) => {
                    return Err(PortError::unavailable(
                        "groups",
                        format!("removal canceled: {r:?}"),
                    ))
                }
            }
        }
        Err(contended())
    }

    async fn groups_of(&self, user: &UserId) -> Result<Vec<GroupSummary>, PortError> {
        let ids = self.memberships_of(user).await?;
        let ids: Vec<GroupId> = ids.into_iter().map(|m| m.group).collect();
        self.summaries(&ids).await
    }

    async fn groups_page(
        &self,
        user: &UserId,
        after: Option<&GroupId>,
        limit: usize,
    ) -> Result<(Vec<GroupSummary>, Option<GroupId>), PortError> {
        // The index in group order from after the cursor: one more than the page says whether
        // more follow.
        let mut ids: Vec<GroupId> = Vec::new();
        let mut start = after.map(|g| {
            HashMap::from([
                ("user".to_owned(), s(user.as_str())),
                ("group".to_owned(), s(g.as_str())),
                ("item".to_owned(), s(member_key(user))),
            ])
        });
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(BY_USER)
                .key_condition_expression("#u = :u")
                .expression_attribute_names("#u", "user")
                .expression_attribute_values(":u", s(user.as_str()))
                .limit((limit + 1 - ids.len()) as i32)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(err)?;
            ids.extend(
                out.items()
                    .iter()
                    .filter_map(|i| GroupId::parse(get(i, "group")?).ok()),
            );
            start = out.last_evaluated_key;
            if ids.len() > limit || start.is_none() {
                break;
            }
        }
        let more = ids.len() > limit;
        ids.truncate(limit);
        let next = ids.last().filter(|_| more).cloned();
        let mut page = self.summaries(&ids).await?;
        page.sort_by(|a, b| a.group.cmp(&b.group));
        Ok((page, next))
    }

    async fn summaries(&self, groups: &[GroupId]) -> Result<Vec<GroupSummary>, PortError> {
        let ids: Vec<&str> = groups.iter().map(GroupId::as_str).collect();
        Ok(self
            .meta_items(&ids, false)
            .await?
            .iter()
            .filter_map(summary)
            .collect())
    }

    async fn memberships_of(&self, user: &UserId) -> Result<Vec<Membership>, PortError> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(BY_USER)
            .key_condition_expression("#u = :u")
            .expression_attribute_names("#u", "user")
            .expression_attribute_values(":u", s(user.as_str()));
        Ok(query_all(query)
            .await?
            .iter()
            .filter_map(|i| {
                Some(Membership {
                    group: GroupId::parse(get(i, "group")?).ok()?,
                    since: get_n(i, "since"),
                })
            })
            .collect())
    }

    async fn versions(&self, groups: &[GroupId]) -> Result<Vec<Option<u64>>, PortError> {
        let ids: Vec<&str> = groups.iter().map(GroupId::as_str).collect();
        let found: HashMap<String, u64> = self
            .meta_items(&ids, true)
            .await?
            .iter()
            // Groups written before versions existed count as version 0.
            .filter_map(|item| Some((get(item, "group")?.to_owned(), get_n(item, "version"))))
            .collect();
        Ok(groups
            .iter()
            .map(|g| found.get(g.as_str()).copied())
            .collect())
    }
}

impl DynamoGroups {
    /// The meta items of `groups` (those that exist); `consistent` for reads that must see
    /// every answered write.
    async fn meta_items(
        &self,
        groups: &[&str],
        consistent: bool,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, PortError> {
        let keys = groups
            .iter()
            .map(|g| HashMap::from([("group".to_owned(), s(*g)), ("item".to_owned(), s(META))]))
            .collect();
        crate::batch_get(&self.client, &self.table, keys, consistent).await
    }

    /// The group's membership version and member count, read consistently. A group written
    /// before counts existed is counted once from its members.
    async fn version_and_count(&self, group: &GroupId) -> Result<(u64, u64), PortError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("group", s(group.as_str()))
            .key("item", s(META))
            .consistent_read(true)
            .send()
            .await
            .map_err(err)?;
        let Some(meta) = out.item() else {
            return Err(PortError::unavailable("groups", "the group vanished"));
        };
        let count = match meta.get("count") {
            Some(_) => get_n(meta, "count"),
            None => self.roster(group).await?.len() as u64,
        };
        Ok((get_n(meta, "version"), count))
    }

    /// The meta item's next version and the member count `count`, on the condition that the
    /// version is still `version` (every member write moves it, so `count` is still right).
    fn meta_bump(
        &self,
        group: &GroupId,
        version: u64,
        count: u64,
    ) -> Result<TransactWriteItem, PortError> {
        let bump = Update::builder()
            .table_name(&self.table)
            .key("group", s(group.as_str()))
            .key("item", s(META))
            .update_expression("SET #v = :next, #c = :count")
            // Version 0 is an item written before versions existed (no attribute).
            .condition_expression(
                "attribute_exists(#g) AND (#v = :expected OR (attribute_not_exists(#v) AND :expected = :zero))",
            )
            .expression_attribute_names("#v", "version")
            .expression_attribute_names("#c", "count")
            .expression_attribute_names("#g", "group")
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":expected", n(version))
            .expression_attribute_values(":next", n(version + 1))
            .expression_attribute_values(":count", n(count))
            .build()
            .map_err(unavailable)?;
        Ok(TransactWriteItem::builder().update(bump).build())
    }

    /// Moves `user`'s group count by `by` (+1 or -1); with `max`, only while it is under it.
    fn user_count(
        &self,
        user: &UserId,
        by: i8,
        max: Option<usize>,
    ) -> Result<TransactWriteItem, PortError> {
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(user_count_key(user)))
            .expression_attribute_names("#n", "n")
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1));
        let update = if by > 0 {
            update.update_expression("SET #n = if_not_exists(#n, :zero) + :one")
        } else {
            // Never below zero (memberships written before counts existed were not counted).
            update
                .update_expression("SET #n = if_not_exists(#n, :one) - :one")
                .condition_expression("attribute_not_exists(#n) OR #n > :zero")
        };
        let update = match max {
            Some(max) => update
                .condition_expression("attribute_not_exists(#n) OR #n < :max")
                .expression_attribute_values(":max", n(max as u64)),
            None => update,
        }
        .build()
        .map_err(unavailable)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// Writes `members` of a new group with their group counts, in one transaction, leaving
    /// out those at `caps.groups_per_user` (returned) and writing the rest.
    async fn write_initial(
        &self,
        group: &Group,
        mut members: Vec<UserId>,
        caps: Caps,
    ) -> Result<Vec<UserId>, PortError> {
        let mut left_out = Vec::new();
        for _ in 0..ADD_ATTEMPTS {
            if members.is_empty() {
                return Ok(left_out);
            }
            let mut items = Vec::with_capacity(members.len() * 2);
            for m in &members {
                let put = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(self.member_item(
                        &group.group,
                        m,
                        &group.owner,
                        1,
                        true,
                    )))
                    .build()
                    .map_err(unavailable)?;
                items.push(TransactWriteItem::builder().put(put).build());
                items.push(self.user_count(m, 1, Some(caps.groups_per_user))?);
            }
            match self.transact(items).await? {
                Transacted::Yes => return Ok(left_out),
                Transacted::Canceled(r) if Transacted::conflicted(&r) => continue,
                Transacted::Canceled(r) => {
                    let full: Vec<usize> = (0..members.len())
                        .filter(|i| Transacted::failed(&r, 2 * i + 1))
                        .collect();
                    if full.is_empty() {
                        return Err(PortError::unavailable(
                            "groups",
                            format!("members' write canceled: {r:?}"),
                        ));
                    }
                    if full.contains(&0) && members[0] == group.owner {
                        // Nothing of the group is written when its owner cannot be in it.
                        return Ok(vec![group.owner.clone()]);
                    }
                    for i in full.into_iter().rev() {
                        left_out.push(members.remove(i));
                    }
                }
            }
        }
        Err(contended())
    }

    /// Runs one transaction: written, or canceled with each item's reason.
    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<Transacted, PortError> {
        crate::requested("TransactWriteItems");
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Transacted::Yes),
            Err(e) => {
                let canceled = e.as_service_error().and_then(|s| match s {
                    aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c) => Some(c),
                    _ => None,
                });
                match canceled {
                    Some(c) => Ok(Transacted::Canceled(
                        c.cancellation_reasons()
                            .iter()
                            .map(|r| r.code().map(str::to_owned))
                            .collect(),
                    )),
                    None => Err(err(e)),
                }
            }
        }
    }
}
