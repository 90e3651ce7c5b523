//! The group table: key (`group`, `item`); `item` = `meta` (name, owner) or `m#<user>` (one per
//! member, with `user`). The sparse global index `by_user` (`user`, `group`) lists a user's
//! groups. Its stream feeds the group-events function.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
use aws_sdk_dynamodb::Client;
use futures_util::stream::{self, StreamExt, TryStreamExt};

use connect_core::groups::{Group, GroupStore, GroupSummary};
use connect_core::PortError;
use connect_protocol::{GroupId, UserId};

use crate::{unavailable, BATCH};

/// The index from user to groups.
pub const BY_USER: &str = "by_user";
const META: &str = "meta";

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn member_key(user: &UserId) -> String {
    format!("m#{user}")
}

fn get<'a>(item: &'a HashMap<String, AttributeValue>, k: &str) -> Option<&'a str> {
    item.get(k)?.as_s().ok().map(String::as_str)
}

fn summary(item: &HashMap<String, AttributeValue>) -> Option<GroupSummary> {
    Some(GroupSummary {
        group: GroupId::parse(get(item, "group")?).ok()?,
        name: get(item, "name")?.to_owned(),
        owner: UserId::parse(get(item, "owner")?).ok()?,
    })
}

fn err<E>(
    e: aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> PortError
where
    E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + Send + Sync + 'static,
{
    unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(e))
}

/// Every item a query matches, page after page.
async fn query_all(
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

    /// A member item; `initial` marks the members written with the group (its `group_created`
    /// event covers them).
    fn member_item(
        &self,
        group: &GroupId,
        user: &UserId,
        by: &UserId,
        initial: bool,
    ) -> HashMap<String, AttributeValue> {
        let mut item = HashMap::from([
            ("group".to_owned(), s(group.as_str())),
            ("item".to_owned(), s(member_key(user))),
            ("user".to_owned(), s(user.as_str())),
            ("by".to_owned(), s(by.as_str())),
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
            .map(|m| self.member_item(&group.group, m, &group.owner, true))
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

    async fn members(&self, group: &GroupId) -> Result<Vec<UserId>, PortError> {
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
        let mut members: Vec<UserId> = query_all(query)
            .await?
            .iter()
            .filter_map(|i| UserId::parse(get(i, "user")?).ok())
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
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(self.member_item(group, user, by, false)))
            .condition_expression("attribute_not_exists(#i)")
            .expression_attribute_names("#i", "item")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Already a member: no change, no event.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(err(e)),
        }
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
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("group", s(group.as_str()))
            .key("item", s(member_key(user)))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(err)?;
        Ok(out.attributes().is_some_and(|a| !a.is_empty()))
    }

    async fn groups_of(&self, user: &UserId) -> Result<Vec<GroupSummary>, PortError> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(BY_USER)
            .key_condition_expression("#u = :u")
            .expression_attribute_names("#u", "user")
            .expression_attribute_values(":u", s(user.as_str()));
        let ids: Vec<String> = query_all(query)
            .await?
            .iter()
            .filter_map(|i| get(i, "group").map(str::to_owned))
            .collect();
        let mut groups = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(100) {
            let keys: Vec<_> = chunk
                .iter()
                .map(|g| HashMap::from([("group".to_owned(), s(g)), ("item".to_owned(), s(META))]))
                .collect();
            let mut request = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .build()
                    .map_err(unavailable)?,
            );
            while let Some(req) = request.take() {
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, req)
                    .send()
                    .await
                    .map_err(err)?;
                if let Some(items) = out.responses().and_then(|r| r.get(&self.table)) {
                    groups.extend(items.iter().filter_map(summary));
                }
                request = out
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .filter(|k| !k.keys().is_empty());
            }
        }
        Ok(groups)
    }
}
