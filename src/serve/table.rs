//! The linear model of a released table: inner (atomic) cells, published
//! cells as sums of inner cells (totals, margins), and order relations an
//! attacker knows (a cohort's `started` cannot exceed its `enrolled`).
//! Suppression and the attacker's audit both work on this model.

/// A table: `cells[..n_inner]` are the inner cells (each the sum of itself);
/// the following cells are sums of inner cells.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub n_inner: usize,
    pub cells: Vec<TableCell>,
    /// `(a, b)`: inner cell `a` is known to be at most inner cell `b`.
    pub order: Vec<(usize, usize)>,
}

#[derive(Debug, Clone)]
pub struct TableCell {
    pub label: String,
    /// Inner cells summed (sorted, distinct).
    pub members: Vec<usize>,
    pub value: f64,
}

impl Table {
    /// Add an inner cell; all inner cells must come before any sum.
    pub fn inner(&mut self, label: impl Into<String>, value: f64) -> usize {
        assert_eq!(self.n_inner, self.cells.len(), "inner cells come first");
        let i = self.cells.len();
        self.cells.push(TableCell { label: label.into(), members: vec![i], value });
        self.n_inner += 1;
        i
    }

    /// Add a published sum of inner cells; its value is the sum of theirs.
    pub fn sum(&mut self, label: impl Into<String>, members: &[usize]) -> usize {
        let mut m = members.to_vec();
        m.sort_unstable();
        m.dedup();
        assert!(m.iter().all(|&i| i < self.n_inner), "sums are over inner cells");
        let value = m.iter().map(|&i| self.cells[i].value).sum();
        self.cells.push(TableCell { label: label.into(), members: m, value });
        self.cells.len() - 1
    }

    /// Record `x[a] <= x[b]` (both inner).
    pub fn at_most(&mut self, a: usize, b: usize) {
        assert!(a < self.n_inner && b < self.n_inner);
        self.order.push((a, b));
    }

    pub fn is_inner(&self, cell: usize) -> bool {
        cell < self.n_inner
    }

    /// The cell as a vector over inner cells.
    pub fn column(&self, cell: usize) -> Vec<f64> {
        let mut v = vec![0.0; self.n_inner];
        for &i in &self.cells[cell].members {
            v[i] = 1.0;
        }
        v
    }
}
