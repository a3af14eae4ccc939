//! Whether the lander is landing or stalled, and why: what `/readyz` and the
//! `learnvault_lander_stalled` gauge tell an operator.
//!
//! Invariant: a lander that waits on something outside the process (the
//! warehouse, the vault, the broker) says so here from its first failed
//! attempt until the next success of that same call, so "events accepted but
//! not landing" is never silent. Process-wide, as the metrics are (one lander
//! per process in `serve` and `land`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Mutex;

/// 1 while the lander is stalled on `cause` (a gauge).
pub const STALLED: &str = "learnvault_lander_stalled";

/// What a stalled lander waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The warehouse refuses inserts for a reason that is not the data (down, disk
    /// full, read-only, permissions, a missing table, timeouts, an unknown status).
    Warehouse,
    /// PostgreSQL (governance answers or batch intents).
    Vault,
    /// The broker (dead-letter produces, offset commits).
    Broker,
}

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Cause::Warehouse => "warehouse",
            Cause::Vault => "vault",
            Cause::Broker => "broker",
        }
    }
}

/// A stall: its cause, the last error (already free of row data: warehouse
/// messages are cut before their row excerpt), and since when.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Stall {
    pub cause: Cause,
    pub error: String,
    pub since: DateTime<Utc>,
}

static STALLS: Mutex<Vec<Stall>> = Mutex::new(Vec::new());

/// A call for `cause` failed and will be retried.
pub(super) fn stalled(cause: Cause, error: &dyn std::fmt::Display) {
    let mut stalls = STALLS.lock().expect("stalls lock");
    let error: String = error.to_string().chars().take(300).collect();
    match stalls.iter_mut().find(|s| s.cause == cause) {
        Some(s) => s.error = error,
        None => stalls.push(Stall { cause, error, since: Utc::now() }),
    }
    metrics::gauge!(STALLED, "cause" => cause.as_str()).set(1.0);
}

/// A call for `cause` succeeded.
pub(super) fn recovered(cause: Cause) {
    let mut stalls = STALLS.lock().expect("stalls lock");
    if let Some(i) = stalls.iter().position(|s| s.cause == cause) {
        stalls.remove(i);
        metrics::gauge!(STALLED, "cause" => cause.as_str()).set(0.0);
    }
}

/// The stalls of this process's lander, oldest first (empty: landing, or no lander).
pub fn current() -> Vec<Stall> {
    STALLS.lock().expect("stalls lock").clone()
}
