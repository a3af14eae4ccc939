//! The time-on-task view: per cohort, learners and the quartiles of active
//! minutes (heartbeat-based) per learner-day, and the same for the course.
//!
//! Additive layer: learners per cohort, summed into the course total (a
//! learner belongs to one cohort). Quartiles are statistics of a group:
//! withheld when the group is below `min_cell` (a median of 3 learners is one
//! learner's value), whatever its count's fate.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::disclosure::{count_rule, seal, statistic, Cell, Layer, Released, Thresholds};
use super::params::DateRange;
use super::table::Table;
use super::view::{CohortRow, RangeView};
use super::{num, ServeError};

/// Time on task in a course over a date range, per cohort and in total.
pub type TimeOnTask = RangeView<TimeOnTaskStats>;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TimeOnTaskStats {
    pub learners: Cell<u64>,
    /// Active minutes per learner-day (30 s per heartbeat).
    pub active_minutes_per_learner_day: Quartiles,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Quartiles {
    pub p25: Cell<f64>,
    pub median: Cell<f64>,
    pub p75: Cell<f64>,
}

/// Learners per cohort (cells `0..n`) and their sum (cell `n`).
pub fn model(cohorts: &[String], learners: &[f64]) -> Table {
    let mut t = Table::default();
    let inner: Vec<usize> = cohorts.iter().zip(learners).map(|(c, v)| t.inner(format!("{c}.learners"), *v)).collect();
    t.sum("total.learners", &inner);
    t
}

struct Row {
    cohort: String,
    learners: f64,
    q: [f64; 3],
}

fn parse(r: &Value) -> Result<Row, ServeError> {
    let q = r["q"].as_array().filter(|q| q.len() == 3).ok_or_else(|| ServeError::Row("time_on_task: q".into()))?;
    Ok(Row {
        cohort: r["cohort_id"].as_str().unwrap_or_default().to_owned(),
        learners: num(&r["learners"])?,
        q: [num(&q[0])?, num(&q[1])?, num(&q[2])?],
    })
}

pub fn release(course: &str, range: &DateRange, rows: &[Value], t: &Thresholds) -> Result<Released<TimeOnTask>, ServeError> {
    let mut cohorts = Vec::new();
    let mut total = None;
    for r in rows {
        let row = parse(r)?;
        if num(&r["total"])? > 0.0 {
            total = Some(row);
        } else {
            cohorts.push(row);
        }
    }
    let total = total.unwrap_or(Row { cohort: String::new(), learners: 0.0, q: [0.0; 3] });
    let names: Vec<String> = cohorts.iter().map(|c| c.cohort.clone()).collect();
    let learners: Vec<f64> = cohorts.iter().map(|c| c.learners).collect();
    let table = model(&names, &learners);
    let primary = table.cells.iter().map(|c| count_rule(c.value as u64, None, t)).collect();
    let layer = Layer::protect(table, primary, t.protection_width);
    let stats = |i: usize, row: &Row| TimeOnTaskStats {
        learners: layer.count(i),
        active_minutes_per_learner_day: Quartiles {
            p25: statistic(row.q[0], row.learners as u64, t),
            median: statistic(row.q[1], row.learners as u64, t),
            p75: statistic(row.q[2], row.learners as u64, t),
        },
    };
    let rows = cohorts.iter().enumerate().map(|(i, c)| CohortRow::new(&c.cohort, stats(i, c))).collect();
    let body = TimeOnTask::new(course, range, rows, stats(cohorts.len(), &total));
    seal(body, &[&layer], *t).ok_or(ServeError::AuditFailed("time_on_task"))
}

/// The attacker's view of a time-on-task response (the learners layer).
pub fn attacker_view(response: &Value) -> Result<(Table, Vec<Option<f64>>), ServeError> {
    let rows = response["cohorts"].as_array().ok_or_else(|| ServeError::Row("not a time-on-task response".into()))?;
    let names: Vec<String> = rows.iter().map(|r| r["cohort_id"].as_str().unwrap_or_default().to_owned()).collect();
    let mut published: Vec<Option<f64>> = rows.iter().map(|r| r["learners"]["value"].as_f64()).collect();
    let table = model(&names, &published.iter().map(|v| v.unwrap_or(0.0)).collect::<Vec<_>>());
    published.push(response["total"]["learners"]["value"].as_f64());
    Ok((table, published))
}
