//! Errors: [`PortError`] from the ports — retryable ones decide "retry / answer `unavailable`";
//! final ones are answered with the code they carry — and [`ApiError`], an HTTP answer with one
//! of the contract's codes.

use connect_protocol::ErrorCode;

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

/// A request refused with one of the contract's codes (HTTP status from [`ErrorCode`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> u16 {
        self.code.http_status()
    }

    /// `{"error":{"code":"…","message":"…"}}`.
    pub fn body(&self) -> String {
        serde_json::json!({ "error": { "code": self.code.as_str(), "message": self.message } })
            .to_string()
    }
}

impl From<PortError> for ApiError {
    fn from(e: PortError) -> Self {
        tracing::warn!(cause = %e, "backend call failed");
        Self::new(ErrorCode::Unavailable, "a backend is unavailable; retry")
    }
}
