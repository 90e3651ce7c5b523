//! Fault injection for the end-to-end tests: a [`ChatStore`] that fails writes touching one
//! conversation a set number of times, after writing the rest of the batch (as when one chunk of
//! a batch write fails and the others land). Turned on only by the services' `*_FAULT_*`
//! settings; never in production configuration.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use connect_protocol::ConversationId;

use crate::model::StoredMessage;
use crate::ports::ChatStore;
use crate::PortError;

/// Fails the next `times` writes that include a message of `conversation`.
pub struct FailingWrites {
    inner: Arc<dyn ChatStore>,
    conversation: String,
    remaining: AtomicU32,
}

impl FailingWrites {
    pub fn new(inner: Arc<dyn ChatStore>, conversation: impl Into<String>, times: u32) -> Self {
        Self {
            inner,
            conversation: conversation.into(),
            remaining: AtomicU32::new(times),
        }
    }

    /// Parses `<conversation>=<times>` (e.g. `dm:a:b=1`).
    pub fn parse(
        inner: Arc<dyn ChatStore>,
        spec: &str,
    ) -> Result<Self, connect_config::ConfigError> {
        let bad = |reason: String| {
            connect_config::ConfigError::new("MESSAGING_FAULT_FAIL_WRITES", reason)
        };
        let (conversation, times) = spec
            .rsplit_once('=')
            .ok_or_else(|| bad(format!("expected <conversation>=<times>, got {spec:?}")))?;
        let times = times
            .parse()
            .map_err(|_| bad(format!("not a count: {times:?}")))?;
        Ok(Self::new(inner, conversation, times))
    }

    fn hits(&self, m: &StoredMessage) -> bool {
        m.conversation.to_string() == self.conversation
    }

    /// Takes one failure if any is left.
    fn fire(&self) -> bool {
        self.remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn failure(&self) -> PortError {
        PortError::unavailable("fault-injection", "write failed on purpose")
    }
}

#[async_trait]
impl ChatStore for FailingWrites {
    async fn put_batch(&self, messages: &[StoredMessage]) -> Result<(), PortError> {
        if messages.iter().any(|m| self.hits(m)) && self.fire() {
            let others: Vec<StoredMessage> =
                messages.iter().filter(|m| !self.hits(m)).cloned().collect();
            self.inner.put_batch(&others).await?;
            return Err(self.failure());
        }
        self.inner.put_batch(messages).await
    }

    async fn put_if_absent(&self, message: &StoredMessage) -> Result<bool, PortError> {
        if self.hits(message) && self.fire() {
            return Err(self.failure());
        }
        self.inner.put_if_absent(message).await
    }

    async fn get_many(
        &self,
        keys: &[(ConversationId, u64)],
    ) -> Result<Vec<Option<StoredMessage>>, PortError> {
        self.inner.get_many(keys).await
    }
}
