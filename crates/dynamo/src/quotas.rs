//! The quota table: key `key` (`<quota>#<user>#<window>`), the count `n`, and `expires` (the
//! table's TTL attribute: a window's counters are dropped after it ends).

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;

use connect_core::quota::QuotaStore;
use connect_core::PortError;

use crate::groups::{n, s};

/// The attribute the table's TTL reads.
pub const EXPIRES: &str = "expires";

#[derive(Clone)]
pub struct DynamoQuotas {
    client: Client,
    table: String,
}

impl DynamoQuotas {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

#[async_trait]
impl QuotaStore for DynamoQuotas {
    /// One conditional update: the sum is checked and written atomically, whichever instance
    /// takes at the same time.
    async fn take(
        &self,
        key: &str,
        amount: u64,
        limit: u64,
        expires: u64,
    ) -> Result<bool, PortError> {
        let Some(room) = limit.checked_sub(amount) else {
            return Ok(false);
        };
        crate::requested("UpdateItem");
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("key", s(key))
            .update_expression("SET #n = if_not_exists(#n, :zero) + :amount, #e = :expires")
            .condition_expression("attribute_not_exists(#n) OR #n <= :room")
            .expression_attribute_names("#n", "n")
            .expression_attribute_names("#e", EXPIRES)
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":amount", n(amount))
            .expression_attribute_values(":expires", n(expires))
            .expression_attribute_values(":room", n(room))
            .send()
            .await;
        crate::written(result)
    }
}
