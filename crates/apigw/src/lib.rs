//! API Gateway Management API adapter: [`ManagementPusher`] implements
//! [`ConnectionPusher`] with `aws-sdk-apigatewaymanagement`'s `PostToConnection`, pointed at the
//! endpoint recorded with each session: a real API Gateway WebSocket API, or a gateway's own
//! `/@connections` (which also wants the internal token header, [`INTERNAL_TOKEN_HEADER`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::{retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Region, SdkConfig};
use aws_sdk_apigatewaymanagement::config::interceptors::InterceptorContext;
use aws_sdk_apigatewaymanagement::config::retry::{ClassifyRetry, RetryAction};
use aws_sdk_apigatewaymanagement::config::Credentials;
use aws_sdk_apigatewaymanagement::error::SdkError;
use aws_sdk_apigatewaymanagement::primitives::Blob;
use aws_sdk_apigatewaymanagement::Client;

use connect_core::ports::{ConnectionPusher, PushError};
use connect_core::PortError;

pub use connect_core::auth::INTERNAL_TOKEN_HEADER;

/// One SDK client per management endpoint, built on first use.
pub struct ManagementPusher {
    sdk: SdkConfig,
    token: Option<String>,
    clients: Mutex<HashMap<String, Client>>,
}

impl ManagementPusher {
    /// `region`: `AWS_REGION`. In production the default credential chain signs the calls;
    /// elsewhere static local credentials do (a gateway does not check SigV4, it checks `token`).
    pub async fn new(region: &str, production: bool, token: Option<String>) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            // Quick retries: the drain is sequential, and a gateway that died (its endpoint
            // refuses connections) must not hold up the next user for seconds of backoff (the
            // SDK's default starts at 1 s; seen: 10 dead endpoints blocked a drain for 16 s).
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(Duration::from_millis(20))
                    .with_max_backoff(Duration::from_millis(200)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(1))
                    .operation_timeout(Duration::from_secs(5))
                    .build(),
            );
        if !production {
            loader = loader.credentials_provider(Credentials::new(
                "local",
                "local",
                None,
                None,
                "connect-local",
            ));
        }
        Self {
            sdk: loader.load().await,
            token,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, endpoint: &str) -> Client {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(endpoint.to_owned())
            .or_insert_with(|| {
                let config = aws_sdk_apigatewaymanagement::config::Builder::from(&self.sdk)
                    .endpoint_url(endpoint)
                    .retry_classifier(BusyIsFinal)
                    .build();
                Client::from_conf(config)
            })
            .clone()
    }
}

/// A 429 is answered to the drain at once, not retried by the SDK (its standard strategy
/// retries throttling): waiting on one slow connection is what the drain must not do.
#[derive(Debug)]
struct BusyIsFinal;

impl ClassifyRetry for BusyIsFinal {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        match ctx.response() {
            Some(response) if response.status().as_u16() == 429 => RetryAction::RetryForbidden,
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "busy connections are not retried"
    }
}

#[async_trait]
impl ConnectionPusher for ManagementPusher {
    async fn post(&self, endpoint: &str, conn: &str, data: &str) -> Result<(), PushError> {
        let call = self
            .client(endpoint)
            .post_to_connection()
            .connection_id(conn)
            .data(Blob::new(data.as_bytes().to_vec()));
        let result = match self.token.clone() {
            Some(token) => {
                call.customize()
                    .mutate_request(move |req| {
                        req.headers_mut()
                            .insert(INTERNAL_TOKEN_HEADER, token.clone());
                    })
                    .send()
                    .await
            }
            None => call.send().await,
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_gone_exception()) => {
                Err(PushError::Gone)
            }
            // The connection is not keeping up: the drain comes back to it later.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_limit_exceeded_exception())
                    || e.raw_response().is_some_and(|r| r.status().as_u16() == 429) =>
            {
                Err(PushError::Busy)
            }
            // The endpoint does not answer: its gateway is gone, and the connection with it.
            // (Failing instead would block every later record of the partition behind one dead
            // gateway; the entries stay in the store for the user's next connection.)
            Err(e @ (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_))) => {
                tracing::warn!(endpoint, conn, cause = %aws_sdk_apigatewaymanagement::error::DisplayErrorContext(e), "management endpoint unreachable; treating the connection as gone");
                Err(PushError::Gone)
            }
            Err(e) => Err(PushError::Failed(PortError::unavailable(
                "apigatewaymanagement",
                aws_sdk_apigatewaymanagement::error::DisplayErrorContext(e),
            ))),
        }
    }
}
