//! The attacker's audit: for a released table, the tightest interval an
//! attacker can deduce for each withheld cell from everything released (the
//! published values, the table's sums, the known order relations and
//! non-negativity), by linear programming; each interval must be at least the
//! protection width wide.
//!
//! The model is split into independent components (withheld inner cells
//! linked by a relation), so each linear program is small.

use serde::Serialize;

use super::lp::{Cmp, Lp, Outcome};
use super::table::Table;

#[derive(Debug, Clone, Serialize)]
pub struct Interval {
    pub cell: usize,
    pub label: String,
    pub lo: f64,
    /// `None`: unbounded above.
    pub hi: Option<f64>,
}

impl Interval {
    pub fn width(&self) -> f64 {
        self.hi.map(|h| h - self.lo).unwrap_or(f64::INFINITY)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub cell: usize,
    pub label: String,
    /// `too_narrow` (interval below the protection width), `inconsistent`
    /// (the released values contradict the model) or `unsolved`.
    pub reason: &'static str,
    pub lo: f64,
    pub hi: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub protection_width: f64,
    pub intervals: Vec<Interval>,
    pub violations: Vec<Violation>,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// The narrowest interval (infinite when nothing is withheld or all are unbounded).
    pub fn min_width(&self) -> f64 {
        self.intervals.iter().map(Interval::width).fold(f64::INFINITY, f64::min)
    }
}

struct Uf(Vec<usize>);
impl Uf {
    fn find(&mut self, x: usize) -> usize {
        let mut r = x;
        while self.0[r] != r {
            r = self.0[r];
        }
        let mut y = x;
        while self.0[y] != r {
            let n = self.0[y];
            self.0[y] = r;
            y = n;
        }
        r
    }
    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.0[ra] = rb;
        }
    }
}

/// Audit a release: `published[c]` is what the response shows for cell `c`
/// (`None`: withheld). Only published values enter the computation.
pub fn audit(table: &Table, published: &[Option<f64>], width: f64) -> AuditReport {
    let ranges: Vec<Option<(f64, f64)>> = published.iter().map(|p| p.map(|v| (v, v))).collect();
    audit_ranges(table, &ranges, width)
}

/// The audit of a release whose published cells are known only within a
/// range `(lo, hi)` (banded live counts, differences of two releases).
pub fn audit_ranges(table: &Table, published: &[Option<(f64, f64)>], width: f64) -> AuditReport {
    assert_eq!(published.len(), table.cells.len());
    let n = table.n_inner;
    // Inner cells whose value is known exactly.
    let known: Vec<Option<f64>> = (0..n).map(|i| published[i].filter(|(lo, hi)| lo == hi).map(|(lo, _)| lo)).collect();
    // Constraints over unknown inner cells: (coefficients by inner index, cmp, rhs).
    let mut cons: Vec<(Vec<(usize, f64)>, Cmp, f64)> = Vec::new();
    for (c, cell) in table.cells.iter().enumerate() {
        let Some((lo, hi)) = published[c] else { continue };
        if c < n && known[c].is_some() {
            continue;
        }
        let fixed: f64 = cell.members.iter().filter_map(|&i| known[i]).sum();
        let unknown: Vec<(usize, f64)> = cell.members.iter().filter(|&&i| known[i].is_none()).map(|&i| (i, 1.0)).collect();
        if lo == hi {
            cons.push((unknown, Cmp::Eq, lo - fixed));
        } else {
            cons.push((unknown.clone(), Cmp::Ge, lo - fixed));
            cons.push((unknown, Cmp::Le, hi - fixed));
        }
    }
    for &(a, b) in &table.order {
        match (known[a], known[b]) {
            (Some(x), Some(y)) => cons.push((vec![], Cmp::Le, y - x)),
            (None, Some(y)) => cons.push((vec![(a, 1.0)], Cmp::Le, y)),
            (Some(x), None) => cons.push((vec![(b, 1.0)], Cmp::Ge, x)),
            (None, None) => cons.push((vec![(a, 1.0), (b, -1.0)], Cmp::Le, 0.0)),
        }
    }
    let mut uf = Uf((0..n).collect());
    for (terms, _, _) in &cons {
        for w in terms.windows(2) {
            uf.union(w[0].0, w[1].0);
        }
    }
    let mut report = AuditReport { protection_width: width, intervals: Vec::new(), violations: Vec::new() };
    // Constant constraints (no unknowns) must hold: otherwise the release is inconsistent.
    let consistent = cons.iter().filter(|(t, _, _)| t.is_empty()).all(|(_, cmp, rhs)| match cmp {
        Cmp::Eq => rhs.abs() < 1e-6,
        Cmp::Le => *rhs >= -1e-6,
        Cmp::Ge => *rhs <= 1e-6,
    });
    // Variables and constraints of each component, computed once.
    let mut comp_vars: std::collections::HashMap<usize, Vec<usize>> = std::collections::HashMap::new();
    for i in (0..n).filter(|&i| known[i].is_none()) {
        let r = uf.find(i);
        comp_vars.entry(r).or_default().push(i);
    }
    let mut comp_cons: std::collections::HashMap<usize, Vec<usize>> = std::collections::HashMap::new();
    for (k, (terms, _, _)) in cons.iter().enumerate() {
        if let Some(&(i, _)) = terms.first() {
            let r = uf.find(i);
            comp_cons.entry(r).or_default().push(k);
        }
    }
    for (c, cell) in table.cells.iter().enumerate() {
        // A sum of no cells is 0 by construction: it discloses nothing.
        if published[c].is_some() || cell.members.is_empty() {
            continue;
        }
        let fixed: f64 = cell.members.iter().filter_map(|&i| known[i]).sum();
        let vars: Vec<usize> = cell.members.iter().copied().filter(|&i| known[i].is_none()).collect();
        let mut roots: Vec<usize> = vars.iter().map(|&i| uf.find(i)).collect();
        roots.sort_unstable();
        roots.dedup();
        // The variables of the components the cell touches, and their constraints.
        let mut comp: Vec<usize> = roots.iter().flat_map(|r| comp_vars[r].iter().copied()).collect();
        comp.sort_unstable();
        let index = |i: usize| comp.binary_search(&i).ok();
        let mut lp = Lp::new(comp.len());
        for k in roots.iter().flat_map(|r| comp_cons.get(r).into_iter().flatten().copied()) {
            let (terms, cmp, rhs) = &cons[k];
            let mut row = vec![0.0; comp.len()];
            for &(i, a) in terms {
                row[index(i).expect("in component")] += a;
            }
            lp.row(row, *cmp, *rhs);
        }
        let mut obj = vec![0.0; comp.len()];
        for &i in &vars {
            obj[index(i).expect("in component")] = 1.0;
        }
        let label = cell.label.clone();
        let (lo, hi) = if !consistent {
            (Outcome::Infeasible, Outcome::Infeasible)
        } else if vars.is_empty() {
            // Every member is published: the cell is exactly the sum of released cells.
            (Outcome::Optimal(0.0), Outcome::Optimal(0.0))
        } else {
            (lp.minimize(&obj), lp.maximize(&obj))
        };
        let (lo, hi, bad) = match (lo, hi) {
            (Outcome::Optimal(l), Outcome::Optimal(h)) => (l + fixed, Some(h + fixed), None),
            (Outcome::Optimal(l), Outcome::Unbounded) => (l + fixed, None, None),
            (Outcome::Infeasible, _) | (_, Outcome::Infeasible) => (0.0, None, Some("inconsistent")),
            _ => (0.0, None, Some("unsolved")),
        };
        let interval = Interval { cell: c, label: label.clone(), lo, hi };
        let reason = bad.or_else(|| (interval.width() + 1e-6 < width).then_some("too_narrow"));
        if let Some(reason) = reason {
            report.violations.push(Violation { cell: c, label, reason, lo, hi });
        }
        report.intervals.push(interval);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two cohorts and a total; `published` per cell.
    fn two_by_one(a: f64, b: f64) -> Table {
        let mut t = Table::default();
        let x = t.inner("a", a);
        let y = t.inner("b", b);
        t.sum("total", &[x, y]);
        t
    }

    #[test]
    fn a_lone_withheld_cell_beside_its_total_is_disclosed() {
        let t = two_by_one(3.0, 40.0);
        let r = audit(&t, &[None, Some(40.0), Some(43.0)], 10.0);
        assert_eq!(r.violations.len(), 1);
        assert_eq!((r.intervals[0].lo, r.intervals[0].hi), (3.0, Some(3.0)));
    }

    #[test]
    fn two_withheld_cells_share_the_total() {
        let t = two_by_one(3.0, 40.0);
        let r = audit(&t, &[None, None, Some(43.0)], 10.0);
        assert!(r.ok(), "{r:?}");
        assert_eq!((r.intervals[0].lo, r.intervals[0].hi), (0.0, Some(43.0)));
        // Too little mass left to hide in: [0, 4] is narrower than 10.
        let t = two_by_one(3.0, 1.0);
        assert!(!audit(&t, &[None, None, Some(4.0)], 10.0).ok());
    }

    #[test]
    fn order_relations_narrow_the_interval() {
        let mut t = Table::default();
        let e = t.inner("enrolled", 12.0);
        let s = t.inner("started", 3.0);
        t.at_most(s, e);
        let r = audit(&t, &[Some(12.0), None], 10.0);
        assert_eq!((r.intervals[0].lo, r.intervals[0].hi), (0.0, Some(12.0)));
        assert!(r.ok());
        let r = audit(&t, &[Some(5.0), None], 10.0);
        assert!(!r.ok(), "started <= 5 is too narrow");
    }

    #[test]
    fn bands_widen_what_an_attacker_can_deduce() {
        // 3 withheld beside a 40 released as the band 40-59 and a total 43 as 40-59.
        let t = two_by_one(3.0, 40.0);
        let r = audit_ranges(&t, &[None, Some((40.0, 59.0)), Some((40.0, 59.0))], 10.0);
        assert_eq!((r.intervals[0].lo, r.intervals[0].hi), (0.0, Some(19.0)));
        assert!(r.ok());
        // The same cell exactly: disclosed.
        assert!(!audit_ranges(&t, &[None, Some((40.0, 40.0)), Some((43.0, 43.0))], 10.0).ok());
    }

    #[test]
    fn a_withheld_total_of_published_cells_is_disclosed() {
        let t = two_by_one(30.0, 40.0);
        let r = audit(&t, &[Some(30.0), Some(40.0), None], 10.0);
        assert_eq!(r.violations[0].label, "total");
    }
}
