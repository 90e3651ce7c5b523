//! The group table: key (`group`, `item`); `item` = `meta` (name, owner) or `m#<user>` (one per
//! member, with `user` and `since`). The sparse global index `by_user` (`user`, `group`,
//! projecting `since`) lists a user's groups. Its stream feeds the group-events function. The
//! meta item's `version` is the membership version: every member write bumps it in the same
//! transaction, and an added member's `since` is the version their add bumped it to.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};
use aws_sdk_dynamodb::Client;
use futures_util::stream::{self, StreamExt, TryStreamExt};

use connect_core::groups::{Group, GroupStore, GroupSummary, Member, Membership};
use connect_core::PortError;
use connect_protocol::{GroupId, UserId};

use crate::{unavailable, BATCH};

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

/// Attempts of an add whose version read was overtaken by another member write.
const ADD_ATTEMPTS: usize = 20;

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
    /// every initial member in place.
    async fn create(&self, group: &Group) -> Result<(), PortError> {
        let items: Vec<_> = group
            .members
            .iter()
            .map(|m| self.member_item(&group.group, m, &group.owner, 1, true))
            .collect();
        let writes: Vec<_> = items
            .chunks(BATCH)
            .map(|chunk| crate::batch_put(&self.client, &self.table, chunk.to_vec()))
            .collect();
        stream::iter(writes)
            .buffer_unordered(8)
            .try_collect::<()>()
            .await?;
        self.client
            .put_item()
            .table_name(&self.table)
            .item("group", s(group.group.as_str()))
            .item("item", s(META))
            .item("name", s(&group.name))
            .item("owner", s(group.owner.as_str()))
            .item("version", AttributeValue::N("1".into()))
            .condition_expression("attribute_not_exists(#g)")
            .expression_attribute_names("#g", "group")
            .send()
            .await
            .map_err(err)?;
        Ok(())
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
    ) -> Result<(), PortError> {
        // The member joins at the version their add bumps the group to: read the version,
        // then write the member and the next version on the condition that it is unchanged
        // (another member write in between: read again).
        for _ in 0..ADD_ATTEMPTS {
            let Some(version) = self
                .versions(std::slice::from_ref(group))
                .await?
                .pop()
                .flatten()
            else {
                return Err(PortError::unavailable("groups", "the group vanished"));
            };
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(self.member_item(group, user, by, version + 1, false)))
                .condition_expression("attribute_not_exists(#i)")
                .expression_attribute_names("#i", "item")
                .build()
                .map_err(unavailable)?;
            match self
                .with_version_bump(
                    group,
                    Some(version),
                    TransactWriteItem::builder().put(put).build(),
                )
                .await?
            {
                // Already a member: no change, no event.
                Written::Yes | Written::ConditionFailed => return Ok(()),
                Written::Overtaken => continue,
            }
        }
        Err(PortError::unavailable(
            "groups",
            "too many concurrent membership changes; retry",
        ))
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
        let delete = Delete::builder()
            .table_name(&self.table)
            .key("group", s(group.as_str()))
            .key("item", s(member_key(user)))
            .condition_expression("attribute_exists(#i)")
            .expression_attribute_names("#i", "item")
            .build()
            .map_err(unavailable)?;
        let deleted = self
            .with_version_bump(
                group,
                None,
                TransactWriteItem::builder().delete(delete).build(),
            )
            .await?;
        Ok(matches!(deleted, Written::Yes))
    }

    async fn groups_of(&self, user: &UserId) -> Result<Vec<GroupSummary>, PortError> {
        let ids = self.memberships_of(user).await?;
        let ids: Vec<GroupId> = ids.into_iter().map(|m| m.group).collect();
        self.summaries(&ids).await
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

/// How a conditional write in a transaction went.
enum Written {
    Yes,
    /// Its condition did not hold (nothing was written, the version not bumped).
    ConditionFailed,
    /// The version was not the one expected: another member write came first.
    Overtaken,
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

    /// Writes `member` (a conditional put or delete of a member item) and bumps the group's
    /// membership version, in one transaction: when the admin call answers, a consistent read
    /// of the version shows the change. With `expected`, only from that version.
    async fn with_version_bump(
        &self,
        group: &GroupId,
        expected: Option<u64>,
        member: TransactWriteItem,
    ) -> Result<Written, PortError> {
        let bump = Update::builder()
            .table_name(&self.table)
            .key("group", s(group.as_str()))
            .key("item", s(META))
            .update_expression("SET #v = if_not_exists(#v, :zero) + :one")
            .expression_attribute_names("#v", "version")
            .expression_attribute_names("#g", "group")
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1));
        let bump = match expected {
            // Version 0 is an item written before versions existed (no attribute).
            Some(v) => bump
                .condition_expression(
                    "attribute_exists(#g) AND (#v = :expected OR (attribute_not_exists(#v) AND :expected = :zero))",
                )
                .expression_attribute_values(":expected", n(v)),
            None => bump.condition_expression("attribute_exists(#g)"),
        }
        .build()
        .map_err(unavailable)?;
        crate::requested("TransactWriteItems");
        let result = self
            .client
            .transact_write_items()
            .transact_items(member)
            .transact_items(TransactWriteItem::builder().update(bump).build())
            .send()
            .await;
        match result {
            Ok(_) => Ok(Written::Yes),
            Err(e) => {
                let reasons: Vec<Option<String>> = e
                    .as_service_error()
                    .and_then(|s| match s {
                        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c) => Some(c),
                        _ => None,
                    })
                    .map(|c| {
                        c.cancellation_reasons()
                            .iter()
                            .map(|r| r.code().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let failed = |i: usize| {
                    reasons.get(i).and_then(Option::as_deref) == Some("ConditionalCheckFailed")
                };
                if failed(0) {
                    Ok(Written::ConditionFailed)
                } else if failed(1) && expected.is_some() {
                    Ok(Written::Overtaken)
                } else {
                    Err(err(e))
                }
            }
        }
    }
}
