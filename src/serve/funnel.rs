//! The funnel view: enrolled -> started -> completed -> assessed per cohort,
//! with the course total of each measure (the sum of its cohorts: a learner
//! belongs to one cohort of a course).
//!
//! Linear model: one inner cell per cohort and measure, one sum per measure;
//! order relations `started, completed, assessed <= enrolled` per cohort (an
//! attacker knows them, so the audit uses them).

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::live::Rule;
use super::disclosure::{count_rule, ratio, seal, Cell, Layer, Released, Thresholds};
use super::params::DateRange;
use super::table::Table;
use super::view::{CohortRow, RangeView};
use super::{num, ServeError};

pub const MEASURES: [&str; 4] = ["enrolled", "started", "completed", "assessed"];

/// The funnel of a course over a date range, per cohort and in total.
pub type Funnel = RangeView<FunnelCounts>;

/// Learners enrolled and at each later step, and each step's share of `enrolled`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FunnelCounts {
    pub enrolled: Cell<u64>,
    #[serde(flatten)]
    pub steps: Steps<Cell<u64>>,
    pub conversion: Steps<Cell<f64>>,
}

/// The steps after enrolment, each a `T`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Steps<T> {
    pub started: T,
    pub completed: T,
    pub assessed: T,
}

/// The model: `values[k][m]` for cohort `k` and measure `m`; cell `k*4+m`,
/// totals `n*4+m`.
pub fn model(cohorts: &[String], values: &[[f64; 4]]) -> Table {
    let mut t = Table::default();
    for (c, v) in cohorts.iter().zip(values) {
        for (m, name) in MEASURES.iter().enumerate() {
            t.inner(format!("{c}.{name}"), v[m]);
        }
    }
    let n = cohorts.len();
    for (m, name) in MEASURES.iter().enumerate() {
        let members: Vec<usize> = (0..n).map(|k| k * 4 + m).collect();
        t.sum(format!("total.{name}"), &members);
    }
    for k in 0..n {
        for m in 1..4 {
            t.at_most(k * 4 + m, k * 4);
        }
    }
    t
}

/// Build, protect and seal the funnel from the rows of [`super::queries::FUNNEL`].
pub fn release(course: &str, range: &DateRange, rows: &[Value], t: &Thresholds, live: Option<&mut Rule>) -> Result<Released<Funnel>, ServeError> {
    let mut cohorts = Vec::new();
    let mut values = Vec::new();
    for r in rows {
        cohorts.push(r["cohort_id"].as_str().ok_or_else(|| ServeError::Row("funnel: cohort_id".into()))?.to_owned());
        let mut v = [0.0; 4];
        for (m, name) in MEASURES.iter().enumerate() {
            v[m] = num(&r[*name])?;
        }
        values.push(v);
    }
    let table = model(&cohorts, &values);
    let primary = table
        .cells
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (row, m) = (i / 4, i % 4);
            let group = (m > 0).then(|| table.cells[row * 4].value as u64);
            count_rule(c.value as u64, group, t)
        })
        .collect();
    let mut layer = Layer::protect(table, primary, t.protection_width);
    if let Some(rule) = live {
        layer.live("funnel", &mut rule.sticky, rule.band, t.protection_width);
    }
    let counts = |base: usize| {
        let [e, s, c, a] = [0, 1, 2, 3].map(|m| layer.count(base + m));
        let conversion = Steps { started: ratio(&s, &e, t), completed: ratio(&c, &e, t), assessed: ratio(&a, &e, t) };
        FunnelCounts { enrolled: e, steps: Steps { started: s, completed: c, assessed: a }, conversion }
    };
    let rows = cohorts.iter().enumerate().map(|(k, c)| CohortRow::new(c, counts(k * 4))).collect();
    let body = Funnel::new(course, range, rows, counts(cohorts.len() * 4));
    seal(body, &[&layer], *t).ok_or(ServeError::AuditFailed("funnel"))
}

/// What an attacker holding a funnel response knows: the model with the
/// published values (withheld cells `None`).
pub fn attacker_view(response: &Value) -> Result<(Table, Vec<Option<f64>>), ServeError> {
    let bad = || ServeError::Row("not a funnel response".into());
    let rows = response["cohorts"].as_array().ok_or_else(bad)?;
    let cohorts: Vec<String> = rows.iter().map(|r| r["cohort_id"].as_str().unwrap_or_default().to_owned()).collect();
    let pick = |o: &Value| MEASURES.map(|m| o[m]["value"].as_f64());
    let published_rows: Vec<[Option<f64>; 4]> = rows.iter().map(pick).collect();
    let values: Vec<[f64; 4]> = published_rows.iter().map(|r| r.map(|v| v.unwrap_or(0.0))).collect();
    let mut table = model(&cohorts, &values);
    let mut published: Vec<Option<f64>> = published_rows.iter().flat_map(|r| r.iter().copied()).collect();
    published.extend(pick(&response["total"]));
    for (c, p) in table.cells.iter_mut().zip(&published) {
        c.value = p.unwrap_or(f64::NAN);
    }
    Ok((table, published))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_course_of_forty_cohorts_is_released_and_audited_quickly() {
        let t = Thresholds { min_cell: 10, extreme_share_min: 20, protection_width: 10.0 };
        let rows: Vec<Value> = (0..40u64)
            .map(|k| {
                let n = [3, 8, 12, 25, 40, 9, 15][k as usize % 7] + k % 5;
                json!({"cohort_id": format!("c{k:02}"), "enrolled": n, "started": n * 9 / 10, "completed": n / 2, "assessed": n / 4})
            })
            .collect();
        let range = DateRange::parse(Some("2026-11-01"), Some("2026-11-28"), 400).unwrap();
        let started = std::time::Instant::now();
        let released = release("cs101", &range, &rows, &t, None).expect("audited");
        let elapsed = started.elapsed();
        let s = released.summary();
        assert!(s.audit.passed && s.primary > 0, "{s:?}");
        assert!(s.information_loss.complementary_share < 0.2, "{s:?}");
        assert!(elapsed < std::time::Duration::from_secs(20), "{elapsed:?}");
    }
}
