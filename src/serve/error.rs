//! The serving layer's errors (mapped to HTTP in `api/serve.rs`).

use crate::warehouse::WarehouseError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A parameter is malformed or out of range.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// No rollup row names this course.
    #[error("no such course")]
    UnknownCourse,
    /// The drill-down rate limit of this principal is reached.
    #[error("drill-down limit reached: at most {max_per_hour} per hour")]
    RateLimited { max_per_hour: u32 },
    /// The warehouse did not answer: retry.
    #[error("the warehouse did not answer: {0}")]
    Warehouse(#[from] WarehouseError),
    /// The vault (consent) failed.
    #[error("vault: {0}")]
    Vault(#[from] crate::vault::VaultError),
    /// The warehouse answered rows of an unexpected shape.
    #[error("unexpected warehouse row: {0}")]
    Row(String),
    /// A release failed its attacker's audit: nothing is returned (fail closed).
    #[error("the release of {0} failed its disclosure audit; nothing was returned")]
    AuditFailed(&'static str),
    #[error("invalid serving configuration: {0}")]
    Config(String),
}

impl ServeError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        ServeError::Invalid { code, message: message.into() }
    }
}
