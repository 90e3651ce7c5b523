//! The push function's transport: Web Push itself, APNs and FCM through Amazon SNS.

use async_trait::async_trait;

use connect_core::push::{Payload, PushTransport, Registration, TransportError};

use crate::sns::Sns;
use crate::webpush::{topic, Subscription, Urgency, WebPush, WebPushSender};
use crate::PushError;

/// Sends each registration by its kind.
pub struct Transports {
    pub web: WebPushSender,
    /// None: the deployment has no SNS platform application (no APNs or FCM registration is
    /// taken then).
    pub sns: Option<Sns>,
}

#[async_trait]
impl PushTransport for Transports {
    async fn send(
        &self,
        registration: &Registration,
        payload: &Payload,
        collapse: &str,
    ) -> Result<(), TransportError> {
        match registration {
            Registration::WebPush {
                endpoint,
                p256dh,
                auth,
            } => {
                let to = Subscription {
                    endpoint,
                    p256dh,
                    auth,
                };
                let push = WebPush {
                    body: serde_json::to_vec(payload).unwrap_or_default(),
                    topic: Some(topic(collapse)),
                    urgency: Urgency::High,
                };
                self.web.send(&to, &push).await.map_err(|e| match e {
                    PushError::Gone(status) => TransportError::Gone(format!("HTTP {status}")),
                    e => TransportError::Failed {
                        retryable: e.is_retryable(),
                        message: e.to_string(),
                    },
                })
            }
            Registration::Mobile { arn, platform, .. } => match &self.sns {
                Some(sns) => sns.publish(arn, payload, &topic(collapse)).await,
                None => Err(TransportError::Failed {
                    message: format!("{} push is not enabled here", platform.as_str()),
                    retryable: false,
                }),
            },
        }
    }

    async fn forget(&self, registration: &Registration) {
        if let (Registration::Mobile { arn, .. }, Some(sns)) = (registration, &self.sns) {
            sns.delete(arn).await;
        }
    }
}
