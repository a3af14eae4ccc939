//! What the detectors read: [`Data`] loaded from the warehouse for a date
//! range through named query shapes (`{name:Type}` parameters), and a
//! [`Window`]: the data seen from one evaluated day.
//!
//! Disengagement and content defects read rollups (`agg.learner_day_by_cohort`,
//! `agg.content_replays_daily`). Integrity reads `assess.submit` rows of the
//! base table: no rollup keeps the time of each submission (the rollups
//! aggregate to days or minutes), and "close submitters" is a statistic of
//! seconds between two learners' submissions of the same assessment. The shape
//! reads only that event type, only over `integrity.window_days`.

use chrono::NaiveDate;
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

use super::SignalsError;
use crate::warehouse::Warehouse;

/// One named query shape of the detectors.
pub struct Shape {
    pub name: &'static str,
    pub sql: &'static str,
}

/// Distinct learners replaying each position bucket of each content item per day.
pub const REPLAYS: Shape = Shape {
    name: "signals.replays",
    sql: "SELECT toString(event_date) AS d, course_id, content_id, position_bucket,
                 sum(replays) AS replays, uniqMerge(learners) AS learners
          FROM agg.content_replays_daily
          WHERE event_date >= {from:Date} AND event_date <= {to:Date}
          GROUP BY event_date, course_id, content_id, position_bucket",
};

/// Distinct learners interacting with (replaying, pausing at) each content item per day.
pub const VIEWERS: Shape = Shape {
    name: "signals.viewers",
    sql: "SELECT toString(event_date) AS d, course_id, content_id, uniqMerge(learners) AS learners
          FROM agg.content_replays_daily
          WHERE event_date >= {from:Date} AND event_date <= {to:Date}
          GROUP BY event_date, course_id, content_id",
};

/// Each learner's active seconds per day, with cohort and institution.
pub const ACTIVITY: Shape = Shape {
    name: "signals.activity",
    sql: "SELECT toString(event_date) AS d, learner_id, institution_id, course_id, cohort_id,
                 sum(active_seconds) AS active_seconds
          FROM agg.learner_day_by_cohort
          WHERE event_date >= {from:Date} AND event_date <= {to:Date}
          GROUP BY event_date, learner_id, institution_id, course_id, cohort_id",
};

/// Every assessment submission (time to the millisecond, answer hash when the client sent one).
pub const SUBMITS: Shape = Shape {
    name: "signals.submits",
    sql: "SELECT learner_id, institution_id, course_id, cohort_id, content_id,
                 toUnixTimestamp64Milli(server_ts) AS ts, props['answer_hash'] AS answer
          FROM events.learning_events
          WHERE event_type = 'assess.submit' AND event_date >= {from:Date} AND event_date <= {to:Date}",
};

pub const SHAPES: [&Shape; 4] = [&REPLAYS, &VIEWERS, &ACTIVITY, &SUBMITS];

/// Threads each detector query may use. The detectors are batch work (a pass a minute,
/// scanning weeks of rollups and the submissions of the base table): one thread each
/// leaves the other cores to the serving path (the console's first paint queued behind
/// their start-up scans), at the cost of a slower pass.
pub const DETECTOR_THREADS: usize = 1;

#[derive(Debug, Clone, PartialEq)]
pub struct ReplayRow {
    pub date: NaiveDate,
    pub course: String,
    pub content: String,
    pub bucket: u32,
    pub replays: u64,
    pub learners: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ViewerRow {
    pub date: NaiveDate,
    pub course: String,
    pub content: String,
    pub learners: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ActivityRow {
    pub date: NaiveDate,
    pub learner: Uuid,
    pub institution: String,
    pub course: String,
    pub cohort: String,
    pub active_seconds: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SubmitRow {
    pub learner: Uuid,
    pub institution: String,
    pub course: String,
    pub cohort: String,
    pub content: String,
    pub ts_ms: i64,
    pub answer: Option<String>,
}

/// Rows for `from..=to`.
#[derive(Debug, Default)]
pub struct Data {
    pub replays: Vec<ReplayRow>,
    pub viewers: Vec<ViewerRow>,
    pub activity: Vec<ActivityRow>,
    pub submits: Vec<SubmitRow>,
}

/// The data seen from `day`: detectors look at `day` against what precedes it.
pub struct Window<'a> {
    pub day: NaiveDate,
    pub data: &'a Data,
}

fn num(v: &Value) -> Result<f64, SignalsError> {
    v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).ok_or_else(|| SignalsError::Row(format!("not a number: {v}")))
}
fn text(v: &Value) -> Result<String, SignalsError> {
    v.as_str().map(str::to_owned).ok_or_else(|| SignalsError::Row("not a string".into()))
}
fn date(v: &Value) -> Result<NaiveDate, SignalsError> {
    NaiveDate::parse_from_str(v.as_str().unwrap_or_default(), "%Y-%m-%d").map_err(|_| SignalsError::Row("not a date".into()))
}
fn uuid(v: &Value) -> Result<Uuid, SignalsError> {
    Uuid::parse_str(v.as_str().unwrap_or_default()).map_err(|_| SignalsError::Row("not a uuid".into()))
}

impl Data {
    /// Load every shape for `from..=to` (submissions from `submits_from`).
    pub async fn load(wh: &Warehouse, from: NaiveDate, to: NaiveDate, submits_from: NaiveDate) -> Result<Data, SignalsError> {
        let range = |f: NaiveDate| [("from", f.to_string()), ("to", to.to_string())];
        let q = |shape: &'static Shape, f: NaiveDate| {
            let params = range(f);
            async move {
                let started = std::time::Instant::now();
                let rows = wh.query(&format!("{} SETTINGS max_threads = {DETECTOR_THREADS}", shape.sql), &params).await;
                metrics::histogram!(super::METRIC_QUERY_SECONDS, "shape" => shape.name).record(started.elapsed().as_secs_f64());
                rows
            }
        };
        let mut d = Data::default();
        for r in q(&REPLAYS, from).await? {
            d.replays.push(ReplayRow {
                date: date(&r["d"])?,
                course: text(&r["course_id"])?,
                content: text(&r["content_id"])?,
                bucket: num(&r["position_bucket"])? as u32,
                replays: num(&r["replays"])? as u64,
                learners: num(&r["learners"])? as u64,
            });
        }
        for r in q(&VIEWERS, from).await? {
            d.viewers.push(ViewerRow { date: date(&r["d"])?, course: text(&r["course_id"])?, content: text(&r["content_id"])?, learners: num(&r["learners"])? as u64 });
        }
        for r in q(&ACTIVITY, from).await? {
            d.activity.push(ActivityRow {
                date: date(&r["d"])?,
                learner: uuid(&r["learner_id"])?,
                institution: text(&r["institution_id"])?,
                course: text(&r["course_id"])?,
                cohort: text(&r["cohort_id"])?,
                active_seconds: num(&r["active_seconds"])? as u64,
            });
        }
        for r in q(&SUBMITS, submits_from).await? {
            let answer = r["answer"].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
            d.submits.push(SubmitRow {
                ts_ms: num(&r["ts"])? as i64,
                learner: uuid(&r["learner_id"])?,
                institution: text(&r["institution_id"])?,
                course: text(&r["course_id"])?,
                cohort: text(&r["cohort_id"])?,
                content: text(&r["content_id"])?,
                answer,
            });
        }
        Ok(d)
    }

    /// The institutions of each course (from its learners' activity), sorted.
    pub fn course_institutions(&self) -> BTreeMap<String, Vec<String>> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for a in &self.activity {
            let v = m.entry(a.course.clone()).or_default();
            if !v.contains(&a.institution) {
                v.push(a.institution.clone());
            }
        }
        m.values_mut().for_each(|v| v.sort());
        m
    }
}
