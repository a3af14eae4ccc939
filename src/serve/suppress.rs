//! Secondary (complementary) suppression, in two proven steps:
//!
//! 1. **Gaussian elimination** (the method of Statistics Norway's
//!    GaussSuppression, Langsrud 2024): every cell is a vector over the inner
//!    cells. Candidates are visited in priority order (totals first, then
//!    larger values first, so the cells withheld in addition are small ones).
//!    A candidate is published unless adding it to the published set would
//!    put a primary cell's vector in the span of published vectors (then the
//!    primary cell would be an exact linear combination of released numbers);
//!    otherwise it is withheld as complementary. A complementary cell is never
//!    in the final span either (if it were, the primary cell it protects would
//!    be too, which the check excludes), so **no withheld cell is a linear
//!    combination of released cells**. (Reference: `R/GaussSuppression.R` in
//!    statisticsnorway/ssb-ssbtools, MIT: "candidates who completely eliminate
//!    one or more primary suppressed cells are omitted and made secondary
//!    suppressed"; its singleton methods are not reproduced here, step 2 covers
//!    the interval side, see `serve` docs for the insider case.)
//! 2. **Interval protection**: exact non-disclosure is not enough once
//!    non-negativity and order relations are used (a withheld 3 hidden beside
//!    a withheld 0 under a published 3). The attacker's audit
//!    ([`super::audit::audit`]) computes each withheld cell's feasible
//!    interval; while one is narrower than the protection width, one more cell
//!    of a relation touching it is withheld (the smallest that restores the
//!    width, else the largest; if none, the relation itself). Withholding more
//!    never shrinks an interval, and withholding everything leaves every
//!    interval unbounded above, so the loop ends, with the audit passed.
//!
//! Information loss is reported as the number and the total value of the
//! cells withheld beyond primary suppression.

use super::audit::{audit, AuditReport};
use super::table::Table;

const EPS: f64 = 1e-9;

/// Step 1: the complementary cells, by Gaussian elimination.
pub fn gauss(table: &Table, primary: &[bool]) -> Vec<bool> {
    let cells = table.cells.len();
    let mut secondary = vec![false; cells];
    // Residuals of the primary cells against the published span.
    let mut residuals: Vec<Vec<f64>> = (0..cells).filter(|&c| primary[c]).map(|c| table.column(c)).collect();
    if residuals.is_empty() {
        return secondary;
    }
    let mut basis: Vec<(usize, Vec<f64>)> = Vec::new();
    for c in priority_order(table, primary) {
        let mut v = table.column(c);
        for (p, b) in &basis {
            let f = v[*p];
            if f.abs() > EPS {
                for (x, y) in v.iter_mut().zip(b) {
                    *x -= f * y;
                }
            }
        }
        let Some(pivot) = (0..v.len()).max_by(|&a, &b| v[a].abs().total_cmp(&v[b].abs())).filter(|&p| v[p].abs() > EPS) else {
            // Already a combination of published cells: publishing it reveals nothing new.
            continue;
        };
        let scale = v[pivot];
        for x in v.iter_mut() {
            *x /= scale;
        }
        let reveals = residuals.iter().any(|r| {
            let f = r[pivot];
            r.iter().zip(&v).all(|(a, b)| (a - f * b).abs() <= EPS)
        });
        if reveals {
            secondary[c] = true;
            continue;
        }
        for r in residuals.iter_mut() {
            let f = r[pivot];
            if f.abs() > EPS {
                for (a, b) in r.iter_mut().zip(&v) {
                    *a -= f * b;
                }
            }
        }
        basis.push((pivot, v));
    }
    secondary
}

/// Non-primary cells, the ones to keep published first.
fn priority_order(table: &Table, primary: &[bool]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..table.cells.len()).filter(|&c| !primary[c]).collect();
    order.sort_by(|&a, &b| {
        let (ca, cb) = (&table.cells[a], &table.cells[b]);
        cb.members.len().cmp(&ca.members.len()).then(cb.value.total_cmp(&ca.value)).then(a.cmp(&b))
    });
    order
}

/// What [`protect`] decided.
#[derive(Debug, Clone)]
pub struct Protection {
    /// Withheld in addition to the primary cells.
    pub complementary: Vec<bool>,
    /// The attacker's audit of the final release (passed).
    pub audit: AuditReport,
}

/// Both steps: Gaussian elimination, then widen until every withheld cell's
/// interval is at least `width`. Independent parts of the table (cells linked
/// by no sum or order relation, e.g. the minutes of the engagement grid) are
/// protected separately: the work grows with the parts, not the whole.
pub fn protect(table: &Table, primary: &[bool], width: f64) -> Protection {
    let mut secondary = vec![false; table.cells.len()];
    for part in components(table) {
        if !part.iter().any(|&c| primary[c]) {
            continue;
        }
        let (sub, map) = subtable(table, &part);
        let sub_primary: Vec<bool> = map.iter().map(|&c| primary[c]).collect();
        for (local, s) in protect_part(&sub, &sub_primary, width).into_iter().enumerate() {
            secondary[map[local]] = s;
        }
    }
    let published: Vec<Option<f64>> = table.cells.iter().enumerate().map(|(c, cell)| (!primary[c] && !secondary[c]).then_some(cell.value)).collect();
    Protection { complementary: secondary, audit: audit(table, &published, width) }
}

fn protect_part(table: &Table, primary: &[bool], width: f64) -> Vec<bool> {
    let mut secondary = gauss(table, primary);
    loop {
        let withheld: Vec<bool> = (0..table.cells.len()).map(|c| primary[c] || secondary[c]).collect();
        let published: Vec<Option<f64>> = table.cells.iter().zip(&withheld).map(|(c, w)| (!w).then_some(c.value)).collect();
        let report = audit(table, &published, width);
        if report.ok() {
            return secondary;
        }
        // One cell at a time (the part is small): each addition may fix several violations.
        let mut widened = false;
        if let Some(v) = report.violations.first() {
            let need = width - v.hi.map(|h| h - v.lo).unwrap_or(0.0);
            if let Some(c) = widen(table, &withheld, v.cell, need) {
                widened = !secondary[c];
                secondary[c] = true;
            }
        }
        if !widened {
            // Nothing left to withhold around it (cannot happen with a consistent table):
            // withhold every cell rather than release a narrow one; if every cell already is,
            // the audit's verdict stands and the release will be refused (fail closed).
            if (0..table.cells.len()).all(|c| withheld[c]) {
                return secondary;
            }
            for c in 0..table.cells.len() {
                secondary[c] = secondary[c] || !primary[c];
            }
        }
    }
}

/// The cells of each independent part of the table (inner cells linked by a sum or an order relation).
fn components(table: &Table) -> Vec<Vec<usize>> {
    let n = table.n_inner;
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    let union = |a: usize, b: usize, p: &mut Vec<usize>| {
        let (ra, rb) = (find(p, a), find(p, b));
        p[ra] = rb;
    };
    for cell in &table.cells[n..] {
        for w in cell.members.windows(2) {
            union(w[0], w[1], &mut parent);
        }
    }
    for &(a, b) in &table.order {
        union(a, b, &mut parent);
    }
    let mut parts: std::collections::BTreeMap<usize, Vec<usize>> = std::collections::BTreeMap::new();
    for i in 0..n {
        let r = find(&mut parent, i);
        parts.entry(r).or_default().push(i);
    }
    for (c, cell) in table.cells.iter().enumerate().skip(n) {
        if let Some(&m) = cell.members.first() {
            let r = find(&mut parent, m);
            parts.entry(r).or_default().push(c);
        }
    }
    parts.into_values().collect()
}

/// The part as a table of its own, and the map from its cells to the table's.
fn subtable(table: &Table, part: &[usize]) -> (Table, Vec<usize>) {
    let mut sub = Table::default();
    let mut local = std::collections::HashMap::new();
    let mut map = Vec::new();
    for &c in part.iter().filter(|&&c| table.is_inner(c)) {
        local.insert(c, sub.inner(table.cells[c].label.clone(), table.cells[c].value));
        map.push(c);
    }
    for &c in part.iter().filter(|&&c| !table.is_inner(c)) {
        let members: Vec<usize> = table.cells[c].members.iter().map(|m| local[m]).collect();
        sub.sum(table.cells[c].label.clone(), &members);
        map.push(c);
    }
    for &(a, b) in &table.order {
        if let (Some(&la), Some(&lb)) = (local.get(&a), local.get(&b)) {
            sub.at_most(la, lb);
        }
    }
    (sub, map)
}

/// The next cell to withhold to widen the interval of withheld cell `cell`
/// (also used by the live view on the difference of two releases).
pub fn widen(table: &Table, withheld: &[bool], cell: usize, need: f64) -> Option<usize> {
    let targets = &table.cells[cell].members;
    // Published relations (sums, and the order relations) touching the cell's members.
    let touching: Vec<usize> = (table.n_inner..table.cells.len())
        .filter(|&r| !withheld[r] && table.cells[r].members.iter().any(|m| targets.contains(m)))
        .collect();
    let mut candidates: Vec<usize> = touching
        .iter()
        .flat_map(|&r| table.cells[r].members.iter().copied())
        .chain(table.order.iter().filter(|(a, b)| targets.contains(a) || targets.contains(b)).flat_map(|&(a, b)| [a, b]))
        .filter(|&i| !withheld[i])
        .collect();
    if table.is_inner(cell) && !withheld[cell] {
        return Some(cell);
    }
    // A withheld sum whose members are all published: withhold its members.
    candidates.extend(targets.iter().copied().filter(|&i| !withheld[i]));
    candidates.sort_unstable();
    candidates.dedup();
    let value = |i: usize| table.cells[i].value;
    let enough = candidates.iter().copied().filter(|&i| value(i) >= need).min_by(|&a, &b| value(a).total_cmp(&value(b)));
    enough
        .or_else(|| candidates.iter().copied().max_by(|&a, &b| value(a).total_cmp(&value(b))))
        .or_else(|| touching.first().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cohorts x one measure with a total row; values per cohort.
    fn column(values: &[f64]) -> Table {
        let mut t = Table::default();
        let inner: Vec<usize> = values.iter().enumerate().map(|(i, v)| t.inner(format!("c{i}"), *v)).collect();
        t.sum("total", &inner);
        t
    }

    fn marks(t: &Table, min_cell: f64) -> Vec<bool> {
        t.cells.iter().map(|c| c.value < min_cell).collect()
    }

    #[test]
    fn a_single_small_cell_gets_the_smallest_partner() {
        let t = column(&[3.0, 40.0, 12.0, 25.0]);
        let p = marks(&t, 10.0);
        let s = protect(&t, &p, 10.0);
        assert_eq!(s.complementary, vec![false, false, true, false, false], "the 12 is withheld, not the total");
        assert!(s.audit.ok());
    }

    #[test]
    fn two_small_cells_protect_each_other_when_wide_enough() {
        let t = column(&[3.0, 9.0, 10.0, 40.0]);
        let s = protect(&t, &marks(&t, 10.0), 10.0);
        assert!(s.complementary.iter().all(|c| !c), "3 + 9 = 12 >= 10");
        // 1 + 2 = 3 is too narrow: one more cell goes.
        let t = column(&[1.0, 2.0, 10.0, 40.0]);
        let s = protect(&t, &marks(&t, 10.0), 10.0);
        assert_eq!(s.complementary, vec![false, false, true, false, false]);
    }

    #[test]
    fn a_two_way_table_needs_a_rectangle() {
        // 2 cohorts x 2 measures, row and column totals: a small cell needs three partners.
        let mut t = Table::default();
        let a = t.inner("a1", 4.0);
        let b = t.inner("a2", 30.0);
        let c = t.inner("b1", 20.0);
        let d = t.inner("b2", 50.0);
        t.sum("a", &[a, b]);
        t.sum("b", &[c, d]);
        t.sum("1", &[a, c]);
        t.sum("2", &[b, d]);
        t.sum("all", &[a, b, c, d]);
        let p = marks(&t, 10.0);
        let s = protect(&t, &p, 10.0);
        let withheld: Vec<usize> = (0..t.cells.len()).filter(|&i| p[i] || s.complementary[i]).collect();
        assert_eq!(withheld, vec![a, b, c, d], "the whole rectangle of inner cells, margins kept");
        assert!(s.audit.ok(), "{:?}", s.audit);
    }

    #[test]
    fn independent_parts_are_protected_separately() {
        // 60 minutes x 10 cohorts, one total per minute: 60 small problems, not one big one.
        let mut t = Table::default();
        for m in 0..60 {
            for c in 0..10 {
                t.inner(format!("{m}.{c}"), ((m * 7 + c * 13) % 30) as f64);
            }
        }
        for m in 0..60 {
            let members: Vec<usize> = (0..10).map(|c| m * 10 + c).collect();
            t.sum(format!("{m}.total"), &members);
        }
        let p = marks(&t, 10.0);
        let started = std::time::Instant::now();
        let s = protect(&t, &p, 10.0);
        assert!(s.audit.ok());
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
        // Each minute is protected on its own: a minute's suppression never reaches another's cells.
        assert_eq!(components(&t).len(), 60);
    }

    #[test]
    fn an_empty_table_releases_its_zero_total() {
        let mut t = Table::default();
        t.sum("total", &[]);
        let s = protect(&t, &[true], 10.0);
        assert!(s.audit.ok(), "a sum of nothing discloses nothing: {:?}", s.audit);
    }

    #[test]
    fn no_primary_no_loss() {
        let t = column(&[30.0, 40.0]);
        assert!(protect(&t, &marks(&t, 10.0), 10.0).complementary.iter().all(|c| !c));
    }
}
