//! A small dense two-phase simplex (Bland's rule, so it never cycles) for the
//! attacker's audit. The tables the serving layer releases are small (a few
//! hundred cells, split into independent components of a handful), so a dense
//! tableau is enough and keeps the crate free of a solver dependency.
//!
//! Problem: minimise `c . x` subject to rows `a . x (<=|=|>=) b` and `x >= 0`.

const EPS: f64 = 1e-9;
/// Bland's rule terminates; the cap only guards against a numerical surprise.
const MAX_PIVOTS: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Le,
    Eq,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Optimal(f64),
    Unbounded,
    Infeasible,
    /// The pivot cap was reached: callers treat it as a failed audit (fail closed).
    Unknown,
}

/// A linear program over `n` non-negative variables.
#[derive(Debug, Clone, Default)]
pub struct Lp {
    pub n: usize,
    pub rows: Vec<(Vec<f64>, Cmp, f64)>,
}

impl Lp {
    pub fn new(n: usize) -> Lp {
        Lp { n, rows: Vec::new() }
    }

    pub fn row(&mut self, coeffs: Vec<f64>, cmp: Cmp, rhs: f64) {
        debug_assert_eq!(coeffs.len(), self.n);
        self.rows.push((coeffs, cmp, rhs));
    }

    pub fn minimize(&self, c: &[f64]) -> Outcome {
        solve(self, c)
    }

    pub fn maximize(&self, c: &[f64]) -> Outcome {
        let neg: Vec<f64> = c.iter().map(|v| -v).collect();
        match solve(self, &neg) {
            Outcome::Optimal(v) => Outcome::Optimal(-v),
            other => other,
        }
    }
}

struct Tableau {
    t: Vec<Vec<f64>>,
    obj: Vec<f64>,
    basis: Vec<usize>,
    cols: usize,
}

impl Tableau {
    fn pivot(&mut self, r: usize, c: usize) {
        let p = self.t[r][c];
        for v in self.t[r].iter_mut() {
            *v /= p;
        }
        let row = std::mem::take(&mut self.t[r]);
        for other in self.t.iter_mut() {
            if other.is_empty() {
                continue; // the pivot row, taken out
            }
            let f = other[c];
            if f.abs() > EPS {
                for (o, v) in other.iter_mut().zip(&row) {
                    *o -= f * v;
                }
            }
        }
        let f = self.obj[c];
        if f.abs() > EPS {
            for (o, v) in self.obj.iter_mut().zip(&row) {
                *o -= f * v;
            }
        }
        self.t[r] = row;
        self.basis[r] = c;
    }

    /// Run the simplex on the current objective row; `allowed(j)` says which
    /// columns may enter. Returns false when unbounded.
    fn run(&mut self, allowed: &dyn Fn(usize) -> bool) -> Option<bool> {
        for _ in 0..MAX_PIVOTS {
            let Some(enter) = (0..self.cols).find(|&j| allowed(j) && self.obj[j] < -EPS) else { return Some(true) };
            let mut leave: Option<(usize, f64)> = None;
            for (i, row) in self.t.iter().enumerate() {
                if row[enter] > EPS {
                    let ratio = row[self.cols] / row[enter];
                    leave = match leave {
                        None => Some((i, ratio)),
                        Some((li, lr)) => {
                            if ratio < lr - EPS || ((ratio - lr).abs() <= EPS && self.basis[i] < self.basis[li]) {
                                Some((i, ratio))
                            } else {
                                Some((li, lr))
                            }
                        }
                    };
                }
            }
            let Some((r, _)) = leave else { return Some(false) };
            self.pivot(r, enter);
        }
        None
    }

    fn set_objective(&mut self, costs: &[f64]) {
        self.obj = costs.to_vec();
        self.obj.push(0.0);
        for i in 0..self.t.len() {
            let cb = costs[self.basis[i]];
            if cb.abs() > EPS {
                for (o, v) in self.obj.iter_mut().zip(&self.t[i]) {
                    *o -= cb * v;
                }
            }
        }
    }
}

fn solve(lp: &Lp, c: &[f64]) -> Outcome {
    let n = lp.n;
    // Normalise right-hand sides to be non-negative.
    let rows: Vec<(Vec<f64>, Cmp, f64)> = lp
        .rows
        .iter()
        .map(|(a, cmp, b)| {
            if *b < 0.0 {
                let flipped = match cmp {
                    Cmp::Le => Cmp::Ge,
                    Cmp::Ge => Cmp::Le,
                    Cmp::Eq => Cmp::Eq,
                };
                (a.iter().map(|v| -v).collect(), flipped, -b)
            } else {
                (a.clone(), *cmp, *b)
            }
        })
        .collect();
    let slacks = rows.iter().filter(|r| r.1 != Cmp::Eq).count();
    let arts = rows.iter().filter(|r| r.1 != Cmp::Le).count();
    let cols = n + slacks + arts;
    let first_art = n + slacks;
    let mut t = Vec::with_capacity(rows.len());
    let mut basis = Vec::with_capacity(rows.len());
    let (mut s, mut a) = (n, first_art);
    for (coeffs, cmp, b) in &rows {
        let mut row = vec![0.0; cols + 1];
        row[..n].copy_from_slice(coeffs);
        row[cols] = *b;
        match cmp {
            Cmp::Le => {
                row[s] = 1.0;
                basis.push(s);
                s += 1;
            }
            Cmp::Ge => {
                row[s] = -1.0;
                s += 1;
                row[a] = 1.0;
                basis.push(a);
                a += 1;
            }
            Cmp::Eq => {
                row[a] = 1.0;
                basis.push(a);
                a += 1;
            }
        }
        t.push(row);
    }
    let mut tab = Tableau { t, obj: Vec::new(), basis, cols };
    if arts > 0 {
        let phase1: Vec<f64> = (0..cols).map(|j| if j >= first_art { 1.0 } else { 0.0 }).collect();
        tab.set_objective(&phase1);
        if tab.run(&|_| true).is_none() {
            return Outcome::Unknown;
        }
        if -tab.obj[cols] > 1e-7 {
            return Outcome::Infeasible;
        }
        // Drive artificial variables out of the basis; drop redundant rows.
        let mut i = 0;
        while i < tab.t.len() {
            if tab.basis[i] >= first_art {
                match (0..first_art).find(|&j| tab.t[i][j].abs() > EPS) {
                    Some(j) => tab.pivot(i, j),
                    None => {
                        tab.t.remove(i);
                        tab.basis.remove(i);
                        continue;
                    }
                }
            }
            i += 1;
        }
    }
    let mut costs = vec![0.0; cols];
    costs[..n].copy_from_slice(c);
    tab.set_objective(&costs);
    match tab.run(&|j| j < first_art) {
        None => Outcome::Unknown,
        Some(false) => Outcome::Unbounded,
        Some(true) => Outcome::Optimal(-tab.obj[cols]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approx(o: Outcome, v: f64) {
        match o {
            Outcome::Optimal(x) => assert!((x - v).abs() < 1e-6, "{x} != {v}"),
            other => panic!("expected {v}, got {other:?}"),
        }
    }

    #[test]
    fn interval_of_a_cell_in_a_sum() {
        // x0 + x1 = 12, x1 + x2 = 20: x0 in [0, 12].
        let mut lp = Lp::new(3);
        lp.row(vec![1.0, 1.0, 0.0], Cmp::Eq, 12.0);
        lp.row(vec![0.0, 1.0, 1.0], Cmp::Eq, 20.0);
        approx(lp.minimize(&[1.0, 0.0, 0.0]), 0.0);
        approx(lp.maximize(&[1.0, 0.0, 0.0]), 12.0);
        approx(lp.maximize(&[0.0, 0.0, 1.0]), 20.0);
        approx(lp.minimize(&[0.0, 0.0, 1.0]), 8.0);
    }

    #[test]
    fn inequalities_unbounded_and_infeasible() {
        let mut lp = Lp::new(2);
        lp.row(vec![1.0, -1.0], Cmp::Le, 0.0); // x0 <= x1
        lp.row(vec![0.0, 1.0], Cmp::Le, 7.0);
        approx(lp.maximize(&[1.0, 0.0]), 7.0);
        lp.row(vec![1.0, 0.0], Cmp::Ge, 3.0);
        approx(lp.minimize(&[0.0, 1.0]), 3.0);
        assert_eq!(Lp::new(1).maximize(&[1.0]), Outcome::Unbounded);
        let mut bad = Lp::new(1);
        bad.row(vec![1.0], Cmp::Eq, -2.0);
        assert_eq!(bad.minimize(&[1.0]), Outcome::Infeasible);
    }

    #[test]
    fn redundant_equalities_are_dropped() {
        let mut lp = Lp::new(2);
        lp.row(vec![1.0, 1.0], Cmp::Eq, 5.0);
        lp.row(vec![2.0, 2.0], Cmp::Eq, 10.0);
        approx(lp.maximize(&[1.0, 0.0]), 5.0);
    }
}
