//! The live view: funnel and engagement pushed as rows land, under a rule
//! that makes consecutive messages safe to compare.
//!
//! **The rule** (`policies/disclosure.yaml`, `live`):
//! 1. *Sticky withholding*: a cell withheld in any message of a stream stays
//!    withheld for the stream's life. A learner joining a cohort of 9 is never
//!    visible as "<10 then 10": the cohort stays withheld.
//! 2. *Bands*: counts are released as the floor of bands `band` learners wide
//!    (time on task: `band` x 30 s), `band` wider than the protection width.
//! 3. *The difference is a release*: before a message leaves, the difference
//!    between it and the previous message of the stream is audited like a
//!    table (each published difference known within the two bands, every
//!    difference non-negative: rows only land, and the stream's range is fixed
//!    at open); while a withheld difference is narrower than the protection
//!    width, one more cell is withheld (sticky from then on).
//!
//! Each message is also a complete release on its own, audited (banded) before
//! it is sealed, like every response of the read path.

use serde_json::Value;
use std::collections::{HashMap, HashSet};

use super::audit::{audit_ranges, AuditReport};
use super::table::Table;
use super::{engagement, funnel, suppress, DateRange, Ident, Serve, ServeError, Thresholds, View};

/// The sticky cells and the band of one stream (applied by the views).
#[derive(Debug, Clone, Default)]
pub struct Rule {
    pub band: u64,
    /// `layer:label` of every cell withheld so far.
    pub sticky: HashSet<String>,
}

/// One stream's state.
pub struct Stream {
    pub rule: Rule,
    range: DateRange,
    minutes: u32,
    thresholds: Thresholds,
    previous: HashMap<&'static str, Value>,
}

/// One Server-Sent Event: `funnel` or `engagement` with a released view.
#[derive(Debug, Clone)]
pub struct Message {
    pub event: &'static str,
    pub data: Value,
}

/// The layers of a live message, as an attacker rebuilds them, with the width
/// each band and protection has.
fn layers(view: View, json: &Value, band: u64, width: f64) -> Result<Vec<(&'static str, Table, Vec<Option<f64>>, f64, f64)>, ServeError> {
    let b = band as f64;
    Ok(match view {
        View::Funnel => {
            let (t, p) = funnel::attacker_view(json)?;
            vec![("funnel", t, p, b, width)]
        }
        _ => {
            let [(a, ap), (s, sp)] = engagement::attacker_view(json)?;
            let h = engagement::HEARTBEAT_SECONDS;
            vec![("engagement.active_learners", a, ap, b, width), ("engagement.time_on_task_seconds", s, sp, b * h, width * h)]
        }
    })
}

/// The attacker's audit of one live message as sent (counts known within their bands).
pub fn message_audit(view: View, json: &Value, band: u64, width: f64) -> Result<Vec<(&'static str, AuditReport)>, ServeError> {
    Ok(layers(view, json, band, width)?
        .into_iter()
        .map(|(name, table, published, b, w)| {
            let ranges: Vec<Option<(f64, f64)>> = published.iter().map(|p| p.map(|v| (v, v + b - 1.0))).collect();
            (name, audit_ranges(&table, &ranges, w))
        })
        .collect())
}

/// The attacker's audit of the difference between two consecutive live
/// messages of `view`. Returns, per layer, the report and the cell to withhold
/// next if it failed (`layer:label`).
pub fn diff_audit(view: View, previous: &Value, next: &Value, band: u64, width: f64) -> Result<Vec<(&'static str, AuditReport, Option<String>)>, ServeError> {
    let before = layers(view, previous, band, width)?;
    let mut out = Vec::new();
    for (name, mut table, published, b, w) in layers(view, next, band, width)? {
        let old: HashMap<String, Option<f64>> = before
            .iter()
            .find(|l| l.0 == name)
            .map(|(_, t, p, _, _)| t.cells.iter().map(|c| c.label.clone()).zip(p.iter().copied()).collect())
            .unwrap_or_default();
        let ranges: Vec<Option<(f64, f64)>> = table
            .cells
            .iter()
            .zip(&published)
            .map(|(c, p)| {
                let (nlo, nhi) = (p.as_ref()?.to_owned(), p.as_ref()? + b - 1.0);
                let (olo, ohi) = match old.get(&c.label) {
                    None => (0.0, 0.0),
                    Some(None) => return None,
                    Some(Some(o)) => (*o, o + b - 1.0),
                };
                Some((nlo - ohi, nhi - olo))
            })
            .collect();
        // Order relations hold for counts, not for their differences.
        table.order.clear();
        let report = audit_ranges(&table, &ranges, w);
        let next_cell = report.violations.first().map(|v| {
            let withheld: Vec<bool> = ranges.iter().map(Option::is_none).collect();
            let need = w - v.hi.map(|h| h - v.lo).unwrap_or(0.0);
            let c = suppress::widen(&table, &withheld, v.cell, need).unwrap_or(v.cell);
            format!("{name}:{}", table.cells[c].label)
        });
        out.push((name, report, next_cell));
    }
    Ok(out)
}

impl Serve {
    /// A live stream over a fixed date range (funnel) and a sliding window of `minutes` (engagement).
    pub fn live_stream(&self, range: DateRange, minutes: u32, thresholds: Thresholds) -> Stream {
        let rule = Rule { band: self.config().policy.live.band, sticky: HashSet::new() };
        Stream { rule, range, minutes, thresholds, previous: HashMap::new() }
    }

    /// One refresh: the views that changed since the previous message, each
    /// audited on its own and as a difference from the previous one.
    pub async fn live_step(&self, course: &Ident, s: &mut Stream) -> Result<Vec<Message>, ServeError> {
        let mut out = Vec::new();
        for (view, event) in [(View::Funnel, "funnel"), (View::Engagement, "engagement")] {
            // At most every cell goes: then nothing is published and every difference is unbounded.
            for _attempt in 0..=256 {
                let json = match view {
                    View::Funnel => serde_json::to_value(self.funnel_with(course, &s.range, &s.thresholds, Some(&mut s.rule)).await?),
                    _ => serde_json::to_value(self.engagement_with(course, s.minutes, &s.thresholds, Some(&mut s.rule)).await?),
                }
                .map_err(|e| ServeError::Row(e.to_string()))?;
                if message_audit(view, &json, s.rule.band, s.thresholds.protection_width)?.iter().any(|(_, r)| !r.ok()) {
                    return Err(ServeError::AuditFailed("live"));
                }
                let failed = match s.previous.get(event) {
                    None => None,
                    Some(prev) => diff_audit(view, prev, &json, s.rule.band, s.thresholds.protection_width)?.into_iter().find_map(|(_, r, next)| (!r.ok()).then_some(next)),
                };
                match failed {
                    Some(Some(key)) if !s.rule.sticky.contains(&key) => {
                        s.rule.sticky.insert(key);
                        continue;
                    }
                    Some(_) => return Err(ServeError::AuditFailed("live difference")),
                    None => {}
                }
                let body = |v: &Value| {
                    let mut v = v.clone();
                    v.as_object_mut().map(|o| o.remove("disclosure"));
                    v
                };
                if s.previous.get(event).map(body) != Some(body(&json)) {
                    out.push(Message { event, data: json.clone() });
                }
                s.previous.insert(event, json);
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T: Thresholds = Thresholds { min_cell: 10, extreme_share_min: 20, protection_width: 10.0 };

    fn message(c09: u64, rule: &mut Rule) -> Value {
        let rows = [("c03", 3), ("c09", c09), ("c10", 10), ("c40", 40)]
            .map(|(c, n)| json!({"cohort_id": c, "enrolled": n, "started": n, "completed": 0, "assessed": 0}));
        let range = DateRange::parse(Some("2026-11-01"), Some("2026-11-28"), 400).unwrap();
        serde_json::to_value(funnel::release("cs101", &range, &rows, &T, Some(rule)).unwrap()).unwrap()
    }

    #[test]
    fn exact_live_counts_leak_a_joiner_by_difference_bands_do_not() {
        // Band 1 (exact counts): the total moves by one while every released cohort stays: the
        // difference pins the withheld cohorts' growth to [0, 1].
        let mut exact = Rule { band: 1, sticky: HashSet::new() };
        let (a, b) = (message(9, &mut exact), message(11, &mut exact));
        assert!(b["cohorts"][1]["enrolled"]["value"].is_null(), "withheld once, withheld for the stream");
        let r = diff_audit(View::Funnel, &a, &b, 1, 10.0).unwrap();
        assert!(!r[0].1.ok(), "the difference of exact counts discloses");
        assert!(r[0].2.is_some(), "and names a cell to withhold");
        // Bands of 20: the same join is invisible to the difference.
        let mut banded = Rule { band: 20, sticky: HashSet::new() };
        let (a, b) = (message(9, &mut banded), message(11, &mut banded));
        assert!(diff_audit(View::Funnel, &a, &b, 20, 10.0).unwrap().iter().all(|(_, r, _)| r.ok()));
        assert!(message_audit(View::Funnel, &b, 20, 10.0).unwrap().iter().all(|(_, r)| r.ok()));
    }
}
