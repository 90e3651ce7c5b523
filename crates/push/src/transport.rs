//! The push function's transport: Web Push itself (APNs and FCM, through Amazon SNS, are not
//! wired yet: such a registration is not sent to).

use async_trait::async_trait;

use connect_core::push::{Payload, PushTransport, Registration, TransportError};

use crate::webpush::{topic, Subscription, Urgency, WebPush, WebPushSender};
use crate::PushError;

/// Sends each registration by its kind.
pub struct Transports {
    pub web: WebPushSender,
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
            Registration::Apns { .. } | Registration::Fcm { .. } => Err(TransportError::Failed {
                message: "APNs and FCM (through SNS) are not wired yet".into(),
                retryable: false,
            }),
        }
    }
}
