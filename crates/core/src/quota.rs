//! Per-user quotas over a fixed window (group creations and member additions per hour): one
//! counter per (quota, user, window) in a store every instance shares, taken before the work is
//! done and answered `rate_limited` (429) past its limit. A refused take adds nothing.

use async_trait::async_trait;

use connect_protocol::{ErrorCode, UserId};

use crate::{ApiError, PortError};

/// A named limit per user and window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Names the counter and the refusal ("group creations").
    pub name: &'static str,
    pub limit: u64,
    pub window_secs: u64,
}

/// The shared counters (DynamoDB: an item per counter that expires with its window).
#[async_trait]
pub trait QuotaStore: Send + Sync {
    /// Adds `amount` to the counter `key` if the sum stays within `limit` (false: it would
    /// not; nothing is added). The counter may be dropped after `expires` (seconds since the
    /// epoch).
    async fn take(
        &self,
        key: &str,
        amount: u64,
        limit: u64,
        expires: u64,
    ) -> Result<bool, PortError>;
}

impl Quota {
    /// An hourly quota.
    pub const fn per_hour(name: &'static str, limit: u64) -> Self {
        Self {
            name,
            limit,
            window_secs: 3600,
        }
    }

    /// Takes `amount` of `user`'s quota in the window of `now_ms`, or answers 429 saying when
    /// the window ends.
    pub async fn take(
        &self,
        store: &dyn QuotaStore,
        user: &UserId,
        amount: u64,
        now_ms: u64,
    ) -> Result<(), ApiError> {
        if amount == 0 {
            return Ok(());
        }
        let now = now_ms / 1000;
        let window = now / self.window_secs.max(1);
        let ends = (window + 1) * self.window_secs.max(1);
        let refused = || {
            ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "at most {} {} per {} s; this one would need {amount}, try again in {} s",
                    self.limit,
                    self.name,
                    self.window_secs,
                    ends - now
                ),
            )
        };
        if amount > self.limit {
            return Err(refused());
        }
        let key = format!("{}#{user}#{window}", self.name.replace(' ', "_"));
        if store.take(&key, amount, self.limit, ends + 60).await? {
            Ok(())
        } else {
            Err(refused())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Memory;

    #[tokio::test]
    async fn a_quota_takes_up_to_its_limit_per_window_and_user() {
        let mem = Memory::default();
        let q = Quota::per_hour("group creations", 3);
        let alice = UserId::parse("alice").unwrap();
        let bob = UserId::parse("bob").unwrap();
        let hour = 3_600_000;
        let t = 10 * hour + 5;
        for _ in 0..3 {
            q.take(&mem, &alice, 1, t).await.unwrap();
        }
        let refused = q.take(&mem, &alice, 1, t + 1000).await.unwrap_err();
        assert_eq!(refused.status(), 429);
        assert!(
            refused.message.contains("at most 3 group creations"),
            "{}",
            refused.message
        );
        // A refusal took nothing; others have their own; the next window starts afresh.
        q.take(&mem, &bob, 3, t).await.unwrap();
        q.take(&mem, &alice, 2, t + hour).await.unwrap();
        assert_eq!(
            q.take(&mem, &alice, 2, t + hour)
                .await
                .unwrap_err()
                .status(),
            429
        );
        q.take(&mem, &alice, 1, t + hour).await.unwrap();
        // More than the limit at once never fits; nothing is nothing.
        assert_eq!(
            q.take(&mem, &bob, 4, t + 5 * hour)
                .await
                .unwrap_err()
                .status(),
            429
        );
        q.take(&mem, &bob, 0, t).await.unwrap();
    }
}
