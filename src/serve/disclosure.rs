//! Disclosure control: the pure rules, the released cell type and
//! [`Released`], which only this file constructs.
//!
//! - **Primary**: a count of learners below `min_cell` is withheld
//!   (`small_cell`); a count equal to its whole group (a 100% share) in a group
//!   below `extreme_share_min` is withheld (`extreme_share`; 0% is a count of 0,
//!   already small). Statistics of a group below `min_cell` (means, quantiles,
//!   sums of time) are withheld (`small_group`); a rate whose numerator or
//!   denominator is withheld is withheld (`derived_from_withheld`), and a 0% or
//!   100% rate of a group below `extreme_share_min` is coded (`extreme_share`).
//! - **Complementary**: [`super::suppress::protect`] on each additive layer.
//! - **Audit**: the final release of every layer passed the attacker's audit
//!   (intervals at least `protection_width` wide) before a [`Released`] exists.

use serde::Serialize;
use utoipa::ToSchema;

use super::audit::AuditReport;
use super::suppress::protect;
use super::table::Table;

/// Why a cell is withheld.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    SmallCell,
    ExtremeShare,
    SmallGroup,
    DerivedFromWithheld,
    Complementary,
    /// Live view: withheld earlier in this stream, so withheld for its whole life.
    Sticky,
}

/// The thresholds in force for one institution (policies/disclosure.yaml).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct Thresholds {
    pub min_cell: u64,
    /// Groups below this size get 0%/100% shares coded, not shown.
    pub extreme_share_min: u64,
    /// The narrowest interval an attacker may deduce for a withheld count.
    pub protection_width: f64,
}

/// Primary rule for a count of learners (`group`: the size of the group it is a share of).
pub fn count_rule(count: u64, group: Option<u64>, t: &Thresholds) -> Option<Reason> {
    if count < t.min_cell {
        Some(Reason::SmallCell)
    } else if group.is_some_and(|n| n < t.extreme_share_min && count == n) {
        Some(Reason::ExtremeShare)
    } else {
        None
    }
}

/// Primary rule for a statistic (sum, mean, quantile) of a group of `group` learners.
pub fn group_rule(group: u64, t: &Thresholds) -> Option<Reason> {
    (group < t.min_cell).then_some(Reason::SmallGroup)
}

/// A released value: `{"value": 12}` or `{"value": null, "suppressed": "small_cell"}`.
/// Only this module makes one, so a response can only hold released values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct Cell<T> {
    value: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    suppressed: Option<Reason>,
    /// Live view: the value is the floor of a band this wide (`value..value+band-1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    band: Option<u64>,
}

impl<T: Copy> Cell<T> {
    pub fn value(&self) -> Option<T> {
        self.value
    }
    pub fn suppressed(&self) -> Option<Reason> {
        self.suppressed
    }
    fn withheld(reason: Reason) -> Cell<T> {
        Cell { value: None, suppressed: Some(reason), band: None }
    }
    fn shown(value: T) -> Cell<T> {
        Cell { value: Some(value), suppressed: None, band: None }
    }
}

/// A statistic of a group of `group` learners, withheld for small groups.
pub fn statistic(value: f64, group: u64, t: &Thresholds) -> Cell<f64> {
    match group_rule(group, t) {
        Some(r) => Cell::withheld(r),
        None => Cell::shown(round3(value)),
    }
}

/// `num / den` from two released counts.
pub fn ratio(num: &Cell<u64>, den: &Cell<u64>, t: &Thresholds) -> Cell<f64> {
    match (num.value, den.value) {
        (Some(n), Some(d)) if d > 0 => {
            if (n == 0 || n == d) && d < t.extreme_share_min {
                Cell::withheld(Reason::ExtremeShare)
            } else {
                Cell::shown(round3(n as f64 / d as f64))
            }
        }
        (Some(_), Some(_)) => Cell::withheld(Reason::SmallGroup),
        _ => Cell::withheld(Reason::DerivedFromWithheld),
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// One additive layer of a response, protected: primary marks, complementary
/// cells, and the audit that passed.
#[derive(Debug, Clone)]
pub struct Layer {
    table: Table,
    reasons: Vec<Option<Reason>>,
    audit: AuditReport,
    /// Live view: counts released as the floor of bands this wide.
    band: Option<u64>,
}

impl Layer {
    /// Protect `table` given each cell's primary reason (`None`: publishable).
    pub fn protect(table: Table, primary: Vec<Option<Reason>>, width: f64) -> Layer {
        assert_eq!(table.cells.len(), primary.len());
        let marks: Vec<bool> = primary.iter().map(Option::is_some).collect();
        let p = protect(&table, &marks, width);
        let reasons = primary
            .iter()
            .zip(&p.complementary)
            .map(|(r, c)| r.or(c.then_some(Reason::Complementary)))
            .collect();
        Layer { table, reasons, audit: p.audit, band: None }
    }

    /// The live rule: withhold every cell withheld earlier in the stream
    /// (`sticky`, keys `prefix:label`), remember this release's withheld
    /// cells, release counts as the floor of bands `band` wide, and audit the
    /// banded release again (an attacker knows each band, not the value).
    pub fn live(&mut self, prefix: &str, sticky: &mut std::collections::HashSet<String>, band: u64, width: f64) {
        for (i, cell) in self.table.cells.iter().enumerate() {
            let key = format!("{prefix}:{}", cell.label);
            if self.reasons[i].is_none() && sticky.contains(&key) {
                self.reasons[i] = Some(Reason::Sticky);
            }
            if self.reasons[i].is_some() {
                sticky.insert(key);
            }
        }
        self.band = Some(band.max(1));
        let ranges: Vec<Option<(f64, f64)>> = (0..self.table.cells.len()).map(|i| self.range(i)).collect();
        self.audit = super::audit::audit_ranges(&self.table, &ranges, width);
    }

    /// What an attacker knows of cell `i` from the release: its range, or nothing.
    fn range(&self, i: usize) -> Option<(f64, f64)> {
        let v = self.count(i).value? as f64;
        Some((v, v + self.band.unwrap_or(1) as f64 - 1.0))
    }

    /// The released count of cell `i`.
    pub fn count(&self, i: usize) -> Cell<u64> {
        let v = self.table.cells[i].value.round() as u64;
        match (self.reasons[i], self.band) {
            (Some(r), _) => Cell::withheld(r),
            (None, Some(b)) => Cell { value: Some(v / b * b), suppressed: None, band: Some(b) },
            (None, None) => Cell::shown(v),
        }
    }

    pub fn audit(&self) -> &AuditReport {
        &self.audit
    }

    fn tally(&self, s: &mut Summary) {
        s.cells += self.reasons.len();
        for (r, cell) in self.reasons.iter().zip(&self.table.cells) {
            match r {
                Some(Reason::Complementary) => {
                    s.complementary += 1;
                    s.information_loss.complementary_value += cell.value;
                }
                Some(_) => s.primary += 1,
                None => {}
            }
        }
        s.audit.withheld += self.audit.intervals.len();
        let w = self.audit.min_width();
        if w.is_finite() {
            s.audit.min_interval_width = Some(s.audit.min_interval_width.map_or(w, |m: f64| m.min(w)));
        }
    }
}

/// How a response was protected (every response carries it).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Summary {
    pub thresholds: Thresholds,
    /// Cells of the additive layers (counts and sums).
    pub cells: usize,
    pub primary: usize,
    pub complementary: usize,
    pub information_loss: InformationLoss,
    pub audit: AuditSummary,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InformationLoss {
    /// Share of cells withheld beyond primary suppression.
    pub complementary_share: f64,
    /// Sum of the values withheld beyond primary suppression: for the
    /// benchmark's report only, never serialized (with one complementary cell
    /// it would be that withheld cell's value).
    #[serde(skip)]
    #[schema(ignore)]
    pub complementary_value: f64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditSummary {
    /// Withheld cells audited.
    pub withheld: usize,
    /// The narrowest interval an attacker can deduce (absent: none bounded).
    pub min_interval_width: Option<f64>,
    pub passed: bool,
}

/// Data that went through disclosure control. Only this module constructs
/// one ([`seal`]), after every layer's audit passed; handlers return it.
#[derive(Debug, Clone, Serialize)]
pub struct Released<T> {
    #[serde(flatten)]
    body: T,
    disclosure: Summary,
}

impl<T> Released<T> {
    pub fn body(&self) -> &T {
        &self.body
    }
    pub fn summary(&self) -> &Summary {
        &self.disclosure
    }
}

/// Seal `body` (built only from cells of `layers` and rule functions above).
/// Refuses (`None`) if a layer's audit did not pass: nothing leaves unaudited.
pub(in crate::serve) fn seal<T>(body: T, layers: &[&Layer], thresholds: Thresholds) -> Option<Released<T>> {
    let mut s = Summary {
        thresholds,
        cells: 0,
        primary: 0,
        complementary: 0,
        information_loss: InformationLoss { complementary_share: 0.0, complementary_value: 0.0 },
        audit: AuditSummary { withheld: 0, min_interval_width: None, passed: true },
    };
    for l in layers {
        if !l.audit.ok() {
            tracing::error!(violations = ?l.audit.violations, "a release failed its audit");
            return None;
        }
        l.tally(&mut s);
    }
    if s.cells > 0 {
        s.information_loss.complementary_share = round3(s.complementary as f64 / s.cells as f64);
    }
    Some(Released { body, disclosure: s })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds { min_cell: 10, extreme_share_min: 20, protection_width: 10.0 };

    #[test]
    fn count_rules() {
        // (count, group, expected)
        let cases: [(u64, Option<u64>, Option<Reason>); 7] = [
            (0, None, Some(Reason::SmallCell)),
            (9, None, Some(Reason::SmallCell)),
            (10, None, None),
            (12, Some(12), Some(Reason::ExtremeShare)),
            (12, Some(40), None),
            (25, Some(25), None),
            (3, Some(40), Some(Reason::SmallCell)),
        ];
        for (count, group, expected) in cases {
            assert_eq!(count_rule(count, group, &T), expected, "count {count} of {group:?}");
        }
    }

    #[test]
    fn statistics_and_ratios() {
        assert_eq!(statistic(4.5, 3, &T).suppressed(), Some(Reason::SmallGroup));
        assert_eq!(statistic(4.5, 10, &T).value(), Some(4.5));
        let c = |v: u64| Cell::shown(v);
        let w = Cell::<u64>::withheld(Reason::SmallCell);
        assert_eq!(ratio(&c(10), &c(40), &T).value(), Some(0.25));
        assert_eq!(ratio(&w, &c(40), &T).suppressed(), Some(Reason::DerivedFromWithheld));
        assert_eq!(ratio(&c(12), &c(12), &T).suppressed(), Some(Reason::ExtremeShare));
        assert_eq!(ratio(&c(30), &c(30), &T).value(), Some(1.0));
    }

    #[test]
    fn seal_refuses_a_layer_whose_audit_failed() {
        let mut t = Table::default();
        let a = t.inner("a", 3.0);
        let b = t.inner("b", 40.0);
        t.sum("total", &[a, b]);
        let layer = Layer::protect(t, vec![Some(Reason::SmallCell), None, None], 10.0);
        assert_eq!(layer.count(b).suppressed(), Some(Reason::Complementary));
        let sealed = seal((), &[&layer], T).expect("audited");
        assert_eq!((sealed.summary().primary, sealed.summary().complementary), (1, 1));
        // One complementary cell: the sum of complementary values is its value, so it never leaves.
        assert_eq!(sealed.summary().information_loss.complementary_value, 40.0);
        let sent = serde_json::to_string(sealed.summary()).unwrap();
        assert!(!sent.contains("complementary_value") && !sent.contains("40"), "{sent}");
        let mut broken = layer.clone();
        broken.reasons[b] = None;
        broken.audit = super::super::audit::audit(&broken.table, &[None, Some(40.0), Some(43.0)], 10.0);
        assert!(seal((), &[&broken], T).is_none());
    }
}
