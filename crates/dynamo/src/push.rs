//! The push table (`PUSH_TABLE`, key `user` + `device`): each device's push registration, one
//! item per (user, device), replaced whole by a new registration.
//!
//! Item: `kind` (`webpush` | `apns` | `fcm`), `endpoint`, `p256dh`, `auth` (web push) or
//! `token` and `arn` (APNs, FCM: the token and its SNS platform endpoint), and `at` (ms, when
//! registered).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use connect_core::ports::PushRegistry;
use connect_core::push::{Platform, Registration};
use connect_core::PortError;
use connect_protocol::UserId;

use crate::groups::{get, n, s};

type Item = HashMap<String, AttributeValue>;

fn key(user: &UserId, device: &str) -> Item {
    HashMap::from([
        ("user".to_owned(), s(user.as_str())),
        ("device".to_owned(), s(device)),
    ])
}

fn item(user: &UserId, device: &str, registration: &Registration, at_ms: u64) -> Item {
    let mut item = key(user, device);
    item.insert("kind".into(), s(registration.kind()));
    item.insert("at".into(), n(at_ms));
    match registration {
        Registration::WebPush {
            endpoint,
            p256dh,
            auth,
        } => {
            item.insert("endpoint".into(), s(endpoint));
            item.insert("p256dh".into(), s(p256dh));
            item.insert("auth".into(), s(auth));
        }
        Registration::Mobile { token, arn, .. } => {
            item.insert("token".into(), s(token));
            item.insert("arn".into(), s(arn));
        }
    }
    item
}

fn registration(item: &Item) -> Option<Registration> {
    let field = |name: &str| get(item, name).map(str::to_owned);
    match get(item, "kind")? {
        "webpush" => Some(Registration::WebPush {
            endpoint: field("endpoint")?,
            p256dh: field("p256dh")?,
            auth: field("auth")?,
        }),
        kind => Some(Registration::Mobile {
            platform: Platform::parse(kind)?,
            token: field("token")?,
            arn: field("arn").unwrap_or_default(),
        }),
    }
}

#[derive(Clone)]
pub struct DynamoPush {
    client: Client,
    table: String,
}

impl DynamoPush {
    pub fn new(client: Client, table: &str) -> Self {
        Self {
            client,
            table: table.to_owned(),
        }
    }
}

#[async_trait]
impl PushRegistry for DynamoPush {
    async fn register(
        &self,
        user: &UserId,
        device: &str,
        registration: &Registration,
        at_ms: u64,
    ) -> Result<(), PortError> {
        crate::requested("PutItem");
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item(user, device, registration, at_ms)))
            .send()
            .await
            .map_err(|e| crate::unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
        Ok(())
    }

    async fn unregister(&self, user: &UserId, device: &str) -> Result<(), PortError> {
        crate::requested("DeleteItem");
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(user, device)))
            .send()
            .await
            .map_err(|e| crate::unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
        Ok(())
    }

    async fn get(&self, keys: &[(UserId, String)]) -> Result<Vec<Option<Registration>>, PortError> {
        let found = crate::batch_get(
            &self.client,
            &self.table,
            keys.iter().map(|(u, d)| key(u, d)).collect(),
            true,
        )
        .await?;
        let by_key: HashMap<(String, String), Registration> = found
            .iter()
            .filter_map(|item| {
                let k = (
                    get(item, "user")?.to_owned(),
                    get(item, "device")?.to_owned(),
                );
                Some((k, registration(item)?))
            })
            .collect();
        Ok(keys
            .iter()
            .map(|(u, d)| by_key.get(&(u.to_string(), d.clone())).cloned())
            .collect())
    }
}
