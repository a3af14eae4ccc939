//! Labelled counts of learners released on their own (the cohort context of
//! a signal item, `signals::evidence`): each count is an inner cell of one
//! table, protected like any cohort view (primary suppression below
//! `min_cell`, complementary suppression, the attacker's audit) and sealed.

use serde::Serialize;
use utoipa::ToSchema;

use super::disclosure::{count_rule, seal, Cell, Layer, Released, Thresholds};
use super::table::Table;
use super::ServeError;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Counts {
    pub counts: Vec<LabelledCount>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LabelledCount {
    pub label: String,
    /// Learners; withheld (`{"value": null, "suppressed": "small_cell"}`) below `min_cell`.
    pub learners: Cell<u64>,
}

/// Release `(label, learners)` pairs at thresholds `t`.
pub fn release(counts: &[(String, u64)], t: &Thresholds) -> Result<Released<Counts>, ServeError> {
    let mut table = Table::default();
    for (label, n) in counts {
        table.inner(label.clone(), *n as f64);
    }
    let primary = table.cells.iter().map(|c| count_rule(c.value as u64, None, t)).collect();
    let layer = Layer::protect(table, primary, t.protection_width);
    let body = Counts { counts: counts.iter().enumerate().map(|(i, (l, _))| LabelledCount { label: l.clone(), learners: layer.count(i) }).collect() };
    seal(body, &[&layer], *t).ok_or(ServeError::AuditFailed("counts"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(counts: &[(&str, u64)], min_cell: u64, expect: &[Option<u64>]) {
        let t = Thresholds { min_cell, extreme_share_min: 20, protection_width: 10.0 };
        let input: Vec<(String, u64)> = counts.iter().map(|(l, n)| (l.to_string(), *n)).collect();
        let r = release(&input, &t).unwrap();
        let got: Vec<Option<u64>> = r.body().counts.iter().map(|c| c.learners.value()).collect();
        assert_eq!(got, expect, "{counts:?} at min_cell {min_cell}");
    }

    #[test]
    fn counts_below_min_cell_are_withheld() {
        check(&[("a", 9), ("b", 10), ("c", 250)], 10, &[None, Some(10), Some(250)]);
        check(&[("a", 12)], 20, &[None]);
        check(&[("a", 0)], 10, &[None]);
        check(&[], 10, &[]);
    }
}
