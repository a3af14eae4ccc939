//! The signals context's errors (mapped to HTTP in `api/signals.rs`).

use crate::warehouse::WarehouseError;

#[derive(Debug, thiserror::Error)]
pub enum SignalsError {
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// No item with this id in the caller's queues (existence is not revealed).
    #[error("no such item in your queues")]
    NotFound,
    /// The item is held in review by another reviewer until its lease ends.
    #[error("another reviewer holds this item until {until}")]
    Leased { until: chrono::DateTime<chrono::Utc> },
    /// The item was decided already; decisions are final.
    #[error("this item was decided already")]
    Decided,
    #[error("the warehouse did not answer: {0}")]
    Warehouse(#[from] WarehouseError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("unexpected warehouse row: {0}")]
    Row(String),
    #[error("the cohort context failed its disclosure audit; nothing was returned")]
    AuditFailed,
    #[error("invalid signals configuration: {0}")]
    Config(String),
}

impl SignalsError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        SignalsError::Invalid { code, message: message.into() }
    }
}
