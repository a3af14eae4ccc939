//! The engagement view: per minute and cohort, active learners and
//! heartbeat-based time on task (heartbeats, not start/end events), with the
//! course total of each minute.
//!
//! Two additive layers over the same grid (minute x cohort, one sum per
//! minute), protected separately: active learners (counts, protection width
//! in learners) and time on task (seconds, withheld for groups below
//! `min_cell`, protection width in heartbeats: `protection_width` x 30 s).
//! Every cohort seen in the window has a cell in every minute with activity
//! (no activity is a count of 0: withheld like any small count).

use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;

use super::live::Rule;
use super::disclosure::{count_rule, group_rule, seal, Cell, Layer, Released, Thresholds};
use super::table::Table;
use super::view::CohortRow;
use super::{num, ServeError};

/// Seconds of activity one heartbeat stands for.
pub const HEARTBEAT_SECONDS: f64 = 30.0;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Engagement {
    pub course_id: String,
    /// The cohorts, in the order of each row's `cohorts`.
    pub cohorts: Vec<String>,
    /// The window: `minutes` from `from` (UTC, inclusive), a row per minute.
    pub minutes: u32,
    pub from: String,
    pub rows: Vec<EngagementMinute>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EngagementMinute {
    pub minute: String,
    pub cohorts: Vec<CohortRow<EngagementCounts>>,
    pub total: EngagementCounts,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EngagementCounts {
    pub active_learners: Cell<u64>,
    pub time_on_task_seconds: Cell<u64>,
}

/// The grid model: cell `i*k+j` for minute `i` and cohort `j`, then one sum per minute.
pub fn model(minutes: &[String], cohorts: &[String], values: &[Vec<f64>]) -> Table {
    let mut t = Table::default();
    for (i, m) in minutes.iter().enumerate() {
        for (j, c) in cohorts.iter().enumerate() {
            t.inner(format!("{m}.{c}"), values[i][j]);
        }
    }
    let k = cohorts.len();
    for (i, m) in minutes.iter().enumerate() {
        let members: Vec<usize> = (0..k).map(|j| i * k + j).collect();
        t.sum(format!("{m}.total"), &members);
    }
    t
}

pub fn release(course: &str, minutes: u32, from: &str, rows: &[Value], t: &Thresholds, live: Option<&mut Rule>) -> Result<Released<Engagement>, ServeError> {
    let mut grid: BTreeMap<String, BTreeMap<String, (f64, f64)>> = BTreeMap::new();
    let mut cohorts: Vec<String> = Vec::new();
    for r in rows {
        let minute = r["at"].as_str().ok_or_else(|| ServeError::Row("engagement: minute".into()))?.to_owned();
        let cohort = r["cohort_id"].as_str().ok_or_else(|| ServeError::Row("engagement: cohort_id".into()))?.to_owned();
        if !cohorts.contains(&cohort) {
            cohorts.push(cohort.clone());
        }
        grid.entry(minute).or_default().insert(cohort, (num(&r["active"])?, num(&r["seconds"])?));
    }
    cohorts.sort();
    let minute_list: Vec<String> = grid.keys().cloned().collect();
    let cell = |i: usize, j: usize| grid[&minute_list[i]].get(&cohorts[j]).copied().unwrap_or((0.0, 0.0));
    let active: Vec<Vec<f64>> = (0..minute_list.len()).map(|i| (0..cohorts.len()).map(|j| cell(i, j).0).collect()).collect();
    let seconds: Vec<Vec<f64>> = (0..minute_list.len()).map(|i| (0..cohorts.len()).map(|j| cell(i, j).1).collect()).collect();
    let counts = model(&minute_list, &cohorts, &active);
    let time = model(&minute_list, &cohorts, &seconds);
    let count_primary = counts.cells.iter().map(|c| count_rule(c.value as u64, None, t)).collect();
    let time_primary = counts.cells.iter().map(|c| group_rule(c.value as u64, t)).collect();
    let mut counts = Layer::protect(counts, count_primary, t.protection_width);
    let mut time = Layer::protect(time, time_primary, t.protection_width * HEARTBEAT_SECONDS);
    if let Some(rule) = live {
        counts.live("engagement.active_learners", &mut rule.sticky, rule.band, t.protection_width);
        let seconds_band = rule.band * HEARTBEAT_SECONDS as u64;
        time.live("engagement.time_on_task_seconds", &mut rule.sticky, seconds_band, t.protection_width * HEARTBEAT_SECONDS);
    }
    let k = cohorts.len();
    let n_inner = minute_list.len() * k;
    let both = |i: usize| EngagementCounts { active_learners: counts.count(i), time_on_task_seconds: time.count(i) };
    let rows = minute_list
        .iter()
        .enumerate()
        .map(|(i, m)| EngagementMinute {
            minute: m.clone(),
            cohorts: cohorts.iter().enumerate().map(|(j, c)| CohortRow::new(c, both(i * k + j))).collect(),
            total: both(n_inner + i),
        })
        .collect();
    let body = Engagement { course_id: course.to_owned(), minutes, from: from.to_owned(), cohorts, rows };
    seal(body, &[&counts, &time], *t).ok_or(ServeError::AuditFailed("engagement"))
}

/// The attacker's view of an engagement response: (active learners, time on task) models.
pub fn attacker_view(response: &Value) -> Result<[(Table, Vec<Option<f64>>); 2], ServeError> {
    let bad = || ServeError::Row("not an engagement response".into());
    let cohorts: Vec<String> = response["cohorts"].as_array().ok_or_else(bad)?.iter().map(|c| c.as_str().unwrap_or_default().to_owned()).collect();
    let rows = response["rows"].as_array().ok_or_else(bad)?;
    let minutes: Vec<String> = rows.iter().map(|r| r["minute"].as_str().unwrap_or_default().to_owned()).collect();
    let layer = |field: &str| {
        let inner: Vec<Vec<Option<f64>>> =
            rows.iter().map(|r| r["cohorts"].as_array().map(|cs| cs.iter().map(|c| c[field]["value"].as_f64()).collect()).unwrap_or_default()).collect();
        let values: Vec<Vec<f64>> = inner.iter().map(|r| r.iter().map(|v| v.unwrap_or(0.0)).collect()).collect();
        let table = model(&minutes, &cohorts, &values);
        let mut published: Vec<Option<f64>> = inner.into_iter().flatten().collect();
        published.extend(rows.iter().map(|r| r["total"][field]["value"].as_f64()));
        (table, published)
    };
    Ok([layer("active_learners"), layer("time_on_task_seconds")])
}
