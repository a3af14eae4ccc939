//! The replays view (the content-defect signal): per 10-second position
//! bucket of one content item, replays, pauses and distinct learners.
//!
//! Learners per bucket are counts (primary rule; buckets share learners, so
//! they have no additive total). Replays and pauses are event counts of a
//! bucket's learners: withheld when the bucket's learners are below
//! `min_cell`; each is an additive layer (buckets summed into the content's
//! total), protected separately.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::disclosure::{count_rule, group_rule, seal, Cell, Layer, Released, Thresholds};
use super::params::DateRange;
use super::table::Table;
use super::{num, ServeError};

pub const BUCKET_SECONDS: u32 = 10;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Replays {
    pub course_id: String,
    pub content_id: String,
    pub from: String,
    pub to: String,
    pub bucket_seconds: u32,
    pub buckets: Vec<ReplayBucket>,
    pub total: ReplayTotals,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReplayBucket {
    /// Start of the bucket (seconds into the content).
    pub position_sec: u64,
    pub learners: Cell<u64>,
    pub replays: Cell<u64>,
    pub pauses: Cell<u64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReplayTotals {
    pub replays: Cell<u64>,
    pub pauses: Cell<u64>,
}

/// Buckets (cells `0..n`) and their sum (cell `n`); `sum` false: no total (learners).
pub fn model(buckets: &[u64], values: &[f64], what: &str, sum: bool) -> Table {
    let mut t = Table::default();
    let inner: Vec<usize> = buckets.iter().zip(values).map(|(b, v)| t.inner(format!("{b}.{what}"), *v)).collect();
    if sum {
        t.sum(format!("total.{what}"), &inner);
    }
    t
}

pub fn release(course: &str, content: &str, range: &DateRange, rows: &[Value], t: &Thresholds) -> Result<Released<Replays>, ServeError> {
    let mut buckets = Vec::new();
    let (mut learners, mut replays, mut pauses) = (Vec::new(), Vec::new(), Vec::new());
    for r in rows {
        buckets.push(num(&r["position_bucket"])? as u64);
        learners.push(num(&r["learners"])?);
        replays.push(num(&r["replays"])?);
        pauses.push(num(&r["pauses"])?);
    }
    // The content's total is a group at least as large as its largest bucket.
    let largest = learners.iter().copied().fold(0.0, f64::max) as u64;
    let group = |i: usize| if i < buckets.len() { learners[i] as u64 } else { largest };
    let lt = model(&buckets, &learners, "learners", false);
    let lp = lt.cells.iter().map(|c| count_rule(c.value as u64, None, t)).collect();
    let events = |values: &[f64], what: &str| {
        let table = model(&buckets, values, what, true);
        let primary = (0..table.cells.len()).map(|i| group_rule(group(i), t)).collect();
        Layer::protect(table, primary, t.protection_width)
    };
    let learners_layer = Layer::protect(lt, lp, t.protection_width);
    let replays_layer = events(&replays, "replays");
    let pauses_layer = events(&pauses, "pauses");
    let n = buckets.len();
    let body = Replays {
        course_id: course.to_owned(),
        content_id: content.to_owned(),
        from: range.from.to_string(),
        to: range.to.to_string(),
        bucket_seconds: BUCKET_SECONDS,
        buckets: buckets
            .iter()
            .enumerate()
            .map(|(i, b)| ReplayBucket { position_sec: *b, learners: learners_layer.count(i), replays: replays_layer.count(i), pauses: pauses_layer.count(i) })
            .collect(),
        total: ReplayTotals { replays: replays_layer.count(n), pauses: pauses_layer.count(n) },
    };
    seal(body, &[&learners_layer, &replays_layer, &pauses_layer], *t).ok_or(ServeError::AuditFailed("replays"))
}

/// The attacker's view of a replays response: the replays and pauses layers.
pub fn attacker_view(response: &Value) -> Result<[(Table, Vec<Option<f64>>); 2], ServeError> {
    let rows = response["buckets"].as_array().ok_or_else(|| ServeError::Row("not a replays response".into()))?;
    let buckets: Vec<u64> = rows.iter().map(|r| r["position_sec"].as_u64().unwrap_or_default()).collect();
    let layer = |what: &str| {
        let mut published: Vec<Option<f64>> = rows.iter().map(|r| r[what]["value"].as_f64()).collect();
        let table = model(&buckets, &published.iter().map(|v| v.unwrap_or(0.0)).collect::<Vec<_>>(), what, true);
        published.push(response["total"][what]["value"].as_f64());
        (table, published)
    };
    Ok([layer("replays"), layer("pauses")])
}
