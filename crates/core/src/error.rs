//! Errors the ports return. Retryable ones decide "retry / answer `unavailable`"; final ones are
//! answered with the code they carry.

/// A port call that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PortError {
    /// The backend did not answer or is overloaded: the same call may succeed later.
    #[error("{backend} unavailable: {message}")]
    Unavailable {
        backend: &'static str,
        message: String,
    },
    /// The backend refused the call for good (bad data, wrong schema, ...).
    #[error("{backend} refused the call: {message}")]
    Rejected {
        backend: &'static str,
        message: String,
    },
    /// The conversation's sequence is owned by another region (multi-region homing).
    #[error("conversation {conversation} is homed in region {home}")]
    NotHome { conversation: String, home: String },
}

impl PortError {
    pub fn unavailable(backend: &'static str, err: impl std::fmt::Display) -> Self {
        Self::Unavailable {
            backend,
            message: err.to_string(),
        }
    }

    pub fn rejected(backend: &'static str, err: impl std::fmt::Display) -> Self {
        Self::Rejected {
            backend,
            message: err.to_string(),
        }
    }

    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}
