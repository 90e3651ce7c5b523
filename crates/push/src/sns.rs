//! APNs and FCM through Amazon SNS mobile push (`aws-sdk-sns`).
//!
//! A registration makes (or finds) the token's platform endpoint on the deployment's platform
//! application for its kind (`CreatePlatformEndpoint`, idempotent for the same token; an
//! endpoint SNS had disabled is enabled again with the token). A push is one `Publish` to that
//! endpoint with `MessageStructure=json`: an `APNS` / `APNS_SANDBOX` body (an alert from the
//! sender with the preview, `thread-id` the conversation, the payload under `connect`) with the
//! collapse id as `AWS.SNS.MOBILE.APNS.COLLAPSE_ID`, and a `GCM` body in the FCM v1 shape (the
//! payload as `data`, `android.collapse_key`). SNS's `EndpointDisabled` (APNs or FCM said the
//! token is unregistered) and `NotFound` say the registration is dead: it is removed, and its
//! endpoint deleted.
//!
//! The platform applications (the APNs key or certificate, the FCM service account) are made
//! by ops and named by ARN in the configuration; a kind without one answers registrations 400.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::{retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Region};
use aws_sdk_sns::config::Credentials;
use aws_sdk_sns::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sns::types::MessageAttributeValue;
use aws_sdk_sns::Client;

use connect_core::push::{Payload, Platform, PlatformEndpoints, PlatformError, TransportError};

/// Where SNS is and which platform applications a deployment has.
#[derive(Debug, Clone, Default)]
pub struct SnsConfig {
    /// `AWS_REGION`.
    pub region: String,
    /// `SNS_ENDPOINT`: a local SNS API (the local stack's moto server; static local
    /// credentials then). Unset: AWS.
    pub endpoint: Option<String>,
    /// `SNS_APNS_APPLICATION_ARN`: the APNs (or APNs sandbox) platform application.
    pub apns_application: Option<String>,
    /// `SNS_FCM_APPLICATION_ARN`: the FCM platform application.
    pub fcm_application: Option<String>,
    /// `SNS_TIMEOUT_MS`: each call's limit, retries included.
    pub timeout: Duration,
}

impl SnsConfig {
    /// From the binary's settings, looked up by name (`AWS_REGION`, `SNS_ENDPOINT`,
    /// `SNS_APNS_APPLICATION_ARN`, `SNS_FCM_APPLICATION_ARN`, `SNS_TIMEOUT_MS` (3000)); empty
    /// values count as unset.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, connect_config::ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let timeout = match get("SNS_TIMEOUT_MS") {
            Some(ms) => ms.parse::<u64>().map_err(|e| {
                connect_config::ConfigError::new("SNS_TIMEOUT_MS", format!("{ms}: {e}"))
            })?,
            None => 3000,
        };
        Ok(Self {
            region: get("AWS_REGION").unwrap_or_else(|| "us-east-1".into()),
            endpoint: get("SNS_ENDPOINT"),
            apns_application: get("SNS_APNS_APPLICATION_ARN"),
            fcm_application: get("SNS_FCM_APPLICATION_ARN"),
            timeout: Duration::from_millis(timeout),
        })
    }

    /// Whether any kind is enabled (otherwise no client is made).
    pub fn enabled(&self) -> bool {
        self.apns_application.is_some() || self.fcm_application.is_some()
    }
}

/// SNS mobile push: platform endpoints at registration, `Publish` at send.
#[derive(Clone)]
pub struct Sns {
    client: Client,
    apns: Option<String>,
    fcm: Option<String>,
}

fn retryable<E, R>(e: &SdkError<E, R>) -> bool {
    matches!(
        e,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
    )
}

impl Sns {
    pub async fn new(config: &SnsConfig) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(config.timeout)
                    .build(),
            );
        if let Some(endpoint) = &config.endpoint {
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
        Self {
            client: Client::new(&loader.load().await),
            apns: config.apns_application.clone(),
            fcm: config.fcm_application.clone(),
        }
    }

    fn application(&self, platform: Platform) -> Option<&str> {
        match platform {
            Platform::Apns => self.apns.as_deref(),
            Platform::Fcm => self.fcm.as_deref(),
        }
    }

    /// Publishes `payload` to the platform endpoint `arn`; `collapse` replaces an older push
    /// with the same id the service still holds.
    pub async fn publish(
        &self,
        arn: &str,
        payload: &Payload,
        collapse: &str,
    ) -> Result<(), TransportError> {
        if arn.is_empty() {
            return Err(TransportError::Failed {
                message: "registration has no platform endpoint".into(),
                retryable: false,
            });
        }
        let attribute = |value: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .expect("data type is set")
        };
        let result = self
            .client
            .publish()
            .target_arn(arn)
            .message_structure("json")
            .message(message(payload, collapse))
            .message_attributes("AWS.SNS.MOBILE.APNS.COLLAPSE_ID", attribute(collapse))
            .message_attributes("AWS.SNS.MOBILE.APNS.PUSH_TYPE", attribute("alert"))
            .message_attributes("AWS.SNS.MOBILE.APNS.PRIORITY", attribute("10"))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_endpoint_disabled_exception() || s.is_not_found_exception()
                }) =>
            {
                Err(TransportError::Gone(
                    e.as_service_error()
                        .and_then(|s| s.code())
                        .unwrap_or("EndpointDisabled")
                        .to_owned(),
                ))
            }
            Err(e) => Err(TransportError::Failed {
                retryable: retryable(&e)
                    || e.as_service_error().is_some_and(|s| {
                        s.is_internal_error_exception() || s.code() == Some("Throttling")
                    })
                    || e.raw_response().is_some_and(|r| {
                        r.status().as_u16() == 429 || r.status().is_server_error()
                    }),
                message: DisplayErrorContext(e).to_string(),
            }),
        }
    }

    /// Deletes a platform endpoint (best effort: one already gone is fine).
    pub async fn delete(&self, arn: &str) {
        if arn.is_empty() {
            return;
        }
        if let Err(e) = self.client.delete_endpoint().endpoint_arn(arn).send().await {
            tracing::warn!(arn, cause = %DisplayErrorContext(e), "deleting a platform endpoint failed");
        }
    }
}

/// The ARN in SNS's "Endpoint <arn> already exists with the same Token, but different
/// attributes." (CreatePlatformEndpoint's InvalidParameter for a token it has an endpoint for).
fn existing_endpoint(message: &str) -> Option<&str> {
    let rest = message.split("Endpoint ").nth(1)?;
    let arn = rest.split_whitespace().next()?;
    (arn.starts_with("arn:") && rest.contains("already exists")).then_some(arn)
}

/// The `Publish` message: one body per platform (`MessageStructure=json`).
pub fn message(payload: &Payload, collapse: &str) -> String {
    let connect = serde_json::to_value(payload).unwrap_or_default();
    let apns = serde_json::json!({
        "aps": {
            "alert": {"title": payload.from, "body": payload.preview},
            "sound": "default",
            "thread-id": payload.conversation,
            "mutable-content": 1,
        },
        "connect": connect,
    })
    .to_string();
    // FCM's data values are strings.
    let data: serde_json::Map<String, serde_json::Value> = connect
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            (k.clone(), serde_json::Value::String(text))
        })
        .collect();
    let gcm = serde_json::json!({
        "fcmV1Message": {
            "message": {
                "data": data,
                "android": {"collapse_key": collapse, "priority": "high"},
            }
        }
    })
    .to_string();
    serde_json::json!({
        "default": payload.preview,
        "APNS": apns,
        "APNS_SANDBOX": apns,
        "GCM": gcm,
    })
    .to_string()
}

#[async_trait]
impl PlatformEndpoints for Sns {
    async fn endpoint(&self, platform: Platform, token: &str) -> Result<String, PlatformError> {
        let application = self
            .application(platform)
            .ok_or(PlatformError::NotEnabled(platform))?;
        let failed = |e: &dyn std::fmt::Display, retryable: bool| PlatformError::Failed {
            message: e.to_string(),
            retryable,
        };
        // Idempotent for the same token (no custom data, so the same attributes every time).
        let arn = match self
            .client
            .create_platform_endpoint()
            .platform_application_arn(application)
            .token(token)
            .send()
            .await
        {
            Ok(out) => out.endpoint_arn.unwrap_or_default(),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_invalid_parameter_exception()) =>
            {
                let message = e
                    .as_service_error()
                    .and_then(|s| s.message())
                    .unwrap_or("invalid token");
                // The token's endpoint exists with other attributes (disabled, say): SNS names
                // it in the message, and it is set right below (AWS's documented way).
                match existing_endpoint(message) {
                    Some(arn) => arn.to_owned(),
                    None => return Err(PlatformError::Refused(message.to_owned())),
                }
            }
            Err(e) => {
                let again = retryable(&e);
                return Err(failed(&DisplayErrorContext(e), again));
            }
        };
        // An endpoint SNS disabled (the token was unregistered, then registered again) or one
        // left with another token is set right.
        let attributes = self
            .client
            .get_endpoint_attributes()
            .endpoint_arn(&arn)
            .send()
            .await
            .map_err(|e| {
                let again = retryable(&e);
                failed(&DisplayErrorContext(e), again)
            })?
            .attributes
            .unwrap_or_default();
        let enabled = attributes.get("Enabled").is_some_and(|v| v == "true");
        let same = attributes.get("Token").is_some_and(|v| v == token);
        if !enabled || !same {
            self.client
                .set_endpoint_attributes()
                .endpoint_arn(&arn)
                .attributes("Token", token)
                .attributes("Enabled", "true")
                .send()
                .await
                .map_err(|e| {
                    let again = retryable(&e);
                    failed(&DisplayErrorContext(e), again)
                })?;
        }
        Ok(arn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_endpoint_is_found_in_snss_message() {
        let m = "Invalid parameter: Token Reason: Endpoint arn:aws:sns:us-east-1:1:endpoint/GCM/app/e1 already exists with the same Token, but different attributes.";
        assert_eq!(
            existing_endpoint(m),
            Some("arn:aws:sns:us-east-1:1:endpoint/GCM/app/e1")
        );
        assert_eq!(existing_endpoint("Invalid parameter: Token"), None);
        assert_eq!(existing_endpoint("Endpoint x already exists"), None);
    }

    #[test]
    fn settings_come_from_the_lookup_and_empty_ones_count_as_unset() {
        let vars = std::collections::HashMap::from([
            ("SNS_FCM_APPLICATION_ARN", "arn:fcm"),
            ("SNS_APNS_APPLICATION_ARN", ""),
            ("SNS_TIMEOUT_MS", "700"),
        ]);
        let c = SnsConfig::from_lookup(|k| vars.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(c.fcm_application.as_deref(), Some("arn:fcm"));
        assert_eq!(c.apns_application, None);
        assert_eq!(c.timeout, Duration::from_millis(700));
        assert!(c.enabled());
        assert!(!SnsConfig::from_lookup(|_| None).unwrap().enabled());
        assert!(SnsConfig::from_lookup(|_| Some("x".into())).is_err());
    }

    #[test]
    fn each_platform_gets_its_body_with_the_collapse_key() {
        let payload = Payload {
            conversation: "g:g_1".into(),
            seq: 17,
            from: "alice".into(),
            preview: "hello".into(),
            unread: 3,
            group: Some("g_1".into()),
        };
        let m: serde_json::Value = serde_json::from_str(&message(&payload, "k1")).unwrap();
        assert_eq!(m["default"], "hello");
        let apns: serde_json::Value = serde_json::from_str(m["APNS"].as_str().unwrap()).unwrap();
        assert_eq!(apns["aps"]["alert"]["title"], "alice");
        assert_eq!(apns["aps"]["thread-id"], "g:g_1");
        assert_eq!(apns["connect"], serde_json::to_value(&payload).unwrap());
        assert_eq!(m["APNS_SANDBOX"], m["APNS"]);
        let gcm: serde_json::Value = serde_json::from_str(m["GCM"].as_str().unwrap()).unwrap();
        let fcm = &gcm["fcmV1Message"]["message"];
        assert_eq!(fcm["android"]["collapse_key"], "k1");
        assert_eq!(fcm["data"]["seq"], "17");
        assert_eq!(fcm["data"]["unread"], "3");
        assert_eq!(fcm["data"]["group"], "g_1");
        assert_eq!(fcm["data"]["preview"], "hello");
    }
}
