//! The SDK client, built once per process.

use std::time::Duration;

use aws_config::{retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Region};
use aws_sdk_dynamodb::config::Credentials;
use aws_sdk_dynamodb::Client;

/// Where DynamoDB is.
#[derive(Debug, Clone)]
pub struct DynamoConfig {
    /// `AWS_REGION`.
    pub region: String,
    /// `DYNAMODB_ENDPOINT`: set for DynamoDB Local (then static local credentials are used);
    /// unset in AWS (the default credential chain applies).
    pub endpoint: Option<String>,
    /// `DYNAMODB_TIMEOUT_MS`: one operation, retries included.
    pub timeout: Duration,
}

pub async fn client(cfg: &DynamoConfig) -> Client {
    Client::new(&sdk_config(cfg).await)
}

/// The SDK config behind [`client`], for other clients of the same endpoint (DynamoDB Streams).
pub async fn sdk_config(cfg: &DynamoConfig) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(cfg.region.clone()))
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(cfg.timeout)
                .build(),
        );
    if let Some(endpoint) = &cfg.endpoint {
        loader = loader
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new(
                "local",
                "local",
                None,
                None,
                "connect-local",
            ));
    }
    loader.load().await
}

impl DynamoConfig {
    /// From `AWS_REGION` (us-east-1), `DYNAMODB_ENDPOINT` (unset = AWS), `DYNAMODB_TIMEOUT_MS` (3000).
    pub fn from_settings(
        s: &connect_config::Settings,
    ) -> Result<Self, connect_config::ConfigError> {
        let get = |name: &str| s.optional(name);
        let timeout_ms: u64 = match get("DYNAMODB_TIMEOUT_MS") {
            Some(v) => v.parse().map_err(|_| {
                connect_config::ConfigError::new(
                    "DYNAMODB_TIMEOUT_MS",
                    format!("{v:?} is not a whole number"),
                )
            })?,
            None => 3000,
        };
        Ok(Self {
            region: get("AWS_REGION").unwrap_or_else(|| "us-east-1".into()),
            endpoint: get("DYNAMODB_ENDPOINT"),
            timeout: Duration::from_millis(timeout_ms),
        })
    }
}
