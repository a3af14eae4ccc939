//! An item's cohort context, released through the read path's disclosure
//! rules ([`crate::serve::counts`]): a count of learners is shown only at or
//! above `min_cell` of the item's institution; below, it is withheld.

use super::finding::ContextCount;
use super::SignalsError;
use crate::serve::counts::Counts;
use crate::serve::{Released, Thresholds};

/// Release `counts` at thresholds `t`.
pub fn release(counts: &[ContextCount], t: &Thresholds) -> Result<Released<Counts>, SignalsError> {
    let pairs: Vec<(String, u64)> = counts.iter().map(|c| (c.label.clone(), c.learners)).collect();
    crate::serve::counts::release(&pairs, t).map_err(|_| SignalsError::AuditFailed)
}
