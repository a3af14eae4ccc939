//! Signals that inform humans: disengagement risk, content defects and
//! integrity ("close submitters"), computed over the rollups, stored as
//! learner-level findings and routed to review queues.
//!
//! # Invariants
//! - **Signals inform humans; nothing here acts on a learner.** A finding
//!   becomes a review item in the queue of the role its detector is routed to
//!   (`policies/signals.yaml`) and a row of `signals.findings`; nothing sends a
//!   message, sets a flag in an LMS, calls a webhook or changes what a learner
//!   sees. The only ways out are the review-queue endpoints (`api/signals.rs`)
//!   and the subject's own access export (`tests/signals.rs` enumerates the
//!   OpenAPI routes to keep it so).
//! - An integrity item is a hypothesis with its evidence for a human panel,
//!   never a verdict; only a role holding `integrity.review` sees one.
//! - Findings carry pseudonyms only. An item names its learners only through
//!   `signal_subjects` (deleted with the learner); its evidence calls them
//!   subject 0 and 1. A pair finding's `signals.findings` rows do not name
//!   the other learner.
//! - An item's cohort context is released through the read path's
//!   disclosure rules ([`crate::serve::counts`]): counts of learners below
//!   `min_cell` are withheld.
//! - Detectors are pure functions of a [`Window`] (`evaluate(&Window) ->
//!   Vec<Finding>`); SQL lives in [`window`] as named shapes with `{name:Type}`
//!   parameters. Disengagement and content defects read `agg.*` rollups;
//!   integrity reads `assess.submit` rows of the base table, because no rollup
//!   keeps the second at which each learner submitted each assessment and the
//!   statistic is the seconds between two learners' submissions.
//! - Every view of an item and every decision is audited in the same
//!   PostgreSQL transaction as the lease or decision it records (fail closed).
//! - No HTTP here: errors are [`SignalsError`], mapped to statuses in `api`.
//!
//! # Public API
//! - [`Signals`]: `evaluate_day`, `record`, `enqueue`, `try_run_one` (-> [`Ran`]),
//!   `run_range`, `purge`, and the review queue: `list`, `next`, `view`, `decide`.
//! - [`evaluate`]: every detector over a [`Window`]; [`content`],
//!   [`disengagement`], [`integrity`]: each detector's `evaluate`.
//! - [`Config`] (from `policies/signals.yaml`) with `validate()`.
//! - [`finding`]: [`Finding`], [`Kind`]; [`queue`]: [`Scope`], [`Decision`], the item views.
//! - [`sim`]: the ground-truth cohort of `learnvault bench signals` and the tests.

pub mod config;
pub mod content;
pub mod disengagement;
mod error;
pub mod evidence;
pub mod finding;
pub mod integrity;
pub mod queue;
pub mod sim;
mod store;
pub mod window;

pub use config::Config;
pub use error::SignalsError;
pub use finding::{Finding, Kind};
pub use queue::{Decision, Scope};
pub use store::{Ran, Recorded};
pub use window::{Data, Window};

use chrono::{Duration, NaiveDate};
use sqlx::PgPool;

use crate::warehouse::Warehouse;

/// Seconds per detector query shape (label `shape`).
pub const METRIC_QUERY_SECONDS: &str = "learnvault_signals_query_seconds";
/// Findings recorded as new review items (label `kind`).
pub const METRIC_ITEMS: &str = "learnvault_signals_items_total";
/// Detector runs (label `outcome`).
pub const METRIC_RUNS: &str = "learnvault_signals_runs_total";

/// Every detector over one window.
pub fn evaluate(w: &Window, c: &Config) -> Vec<Finding> {
    let p = &c.policy;
    let mut out = content::evaluate(w, &p.content_defect, p.baseline_days);
    out.extend(disengagement::evaluate(w, &p.disengagement, p.baseline_days));
    out.extend(integrity::evaluate(w, &p.integrity));
    out
}

/// The signals context over one warehouse and the review database.
pub struct Signals {
    warehouse: Warehouse,
    pool: PgPool,
    config: Config,
    disclosure: crate::serve::Config,
}

impl Signals {
    pub fn new(warehouse: Warehouse, pool: PgPool, config: Config, disclosure: crate::serve::Config) -> Result<Signals, SignalsError> {
        config.validate()?;
        Ok(Signals { warehouse, pool, config, disclosure })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The first day of data a window ending on `day` needs (activity, replays), and of submissions.
    pub fn lookback(&self, day: NaiveDate) -> (NaiveDate, NaiveDate) {
        let p = &self.config.policy;
        (day - Duration::days(2 * p.baseline_days as i64), day - Duration::days(p.integrity.window_days as i64 - 1))
    }

    /// Load the data of `day`'s window and run every detector.
    pub async fn evaluate_day(&self, day: NaiveDate) -> Result<Vec<Finding>, SignalsError> {
        let (from, submits_from) = self.lookback(day);
        let data = Data::load(&self.warehouse, from, day, submits_from).await?;
        Ok(evaluate(&Window { day, data: &data }, &self.config))
    }

    /// Evaluate every day of `from..=to` (as durable runs) and drain them.
    pub async fn run_range(&self, from: NaiveDate, to: NaiveDate) -> Result<Vec<Ran>, SignalsError> {
        if to < from || (to - from).num_days() > 366 {
            return Err(SignalsError::invalid("invalid_range", "`to` must be on or after `from`, at most 366 days later"));
        }
        let mut d = from;
        while d <= to {
            self.enqueue(d).await?;
            d += Duration::days(1);
        }
        let mut out = Vec::new();
        loop {
            match self.try_run_one().await? {
                Ran::Empty => return Ok(out),
                ran => out.push(ran),
            }
        }
    }
}
