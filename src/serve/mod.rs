//! The governed read path: cohort analytics from the rollups, released only
//! through disclosure control, and the role-gated individual view.
//!
//! # Invariants
//! - **Nothing leaves below `min_cell`.** Every cohort view is a
//!   [`Released<T>`], which only [`disclosure`] constructs, after primary
//!   suppression, complementary suppression ([`suppress`]) and the attacker's
//!   audit ([`audit`]: the tightest interval deducible for each withheld cell
//!   from everything the response releases is at least `protection_width`).
//!   A release whose audit fails is refused, never sent.
//! - Cohort views read `agg.*` rollups only; SQL lives in [`queries`] as named
//!   shapes with `{name:Type}` parameters. The individual views are the
//!   exceptions: the drill-down timeline (the one shape reading the base
//!   table) and a learner's recommendation features (`features.*`, behind consent).
//! - The individual view returns pseudonyms, never an identity; who may call
//!   it, for which purpose, the audit entry before data leaves and the rate
//!   limit are enforced by its handler (`api/serve.rs`) with [`Serve::admit`].
//! - No HTTP here: errors are [`ServeError`], mapped to statuses in `api`.
//!
//! # What the audit does not cover (stated, not solved)
//! - Differencing across separate requests with different parameters (two
//!   funnel ranges one day apart, two engagement windows): each response is
//!   protected and audited on its own; only consecutive messages of one live
//!   stream are audited as a difference.
//! - Non-linear statistics: quartiles of a cohort and of the course are each
//!   withheld below `min_cell`, but their combination is not modelled.
//! - An insider who knows their own contribution (a member of a withheld
//!   cohort): intervals assume the attacker knows only what was released.
//! - Distinct counts are modelled as additive across cohorts (a learner
//!   belongs to one cohort of a course), which is how the totals are computed.
//!
//! # Public API
//! - [`Serve`]: `course_institutions`, `thresholds`, `funnel`, `engagement`,
//!   `time_on_task`, `replays`, `admit`, `is_learner_of`, `timeline`.
//! - [`Config`] (from `policies/disclosure.yaml`) with `validate()`.
//! - [`disclosure`]: the rules, [`disclosure::Cell`], [`Released`], `seal`.
//! - [`audit::audit`]: the attacker's audit of any released table; each view's
//!   `attacker_view(json)` rebuilds the model an attacker holding a response has.
//! - [`audit_response`]: that audit on a response as sent (`learnvault disclosure audit`).
//! - [`live`]: the live view's rule (sticky withholding, bands, the difference
//!   of consecutive messages audited as a release): `Serve::live_stream`, `Serve::live_step`;
//!   streams with the same course, range, window and thresholds share one sequence of messages.
//! - [`features`]: `Serve::features`, a learner's recommendation features behind consent.
//! - [`publish`]: `Serve::publish`, the released tables for BI tools (`released.cells`).
//! - [`lp`]: the small simplex behind the audit.

pub mod audit;
pub mod config;
pub mod counts;
pub mod disclosure;
pub mod drilldown;
pub mod engagement;
pub mod features;
mod error;
pub mod funnel;
pub mod live;
pub mod lp;
pub mod params;
pub mod publish;
pub mod queries;
pub mod replays;
pub mod suppress;
pub mod table;
pub mod time_on_task;
pub mod view;

pub use config::Config;
pub use disclosure::{Released, Thresholds};
pub use error::ServeError;
pub use params::{DateRange, Ident};

use chrono::Utc;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

use crate::warehouse::Warehouse;
use drilldown::{RateLimiter, Timeline};
use queries::Shape;

/// The views whose responses [`audit_response`] knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Funnel,
    Engagement,
    TimeOnTask,
    Replays,
}

/// The attacker's audit of a response as sent (its JSON): every additive
/// layer rebuilt from what the response shows, audited at the response's own
/// protection width (time on task in heartbeats).
pub fn audit_response(view: View, response: &Value) -> Result<Vec<(&'static str, audit::AuditReport)>, ServeError> {
    let width = response["disclosure"]["thresholds"]["protection_width"]
        .as_f64()
        .ok_or_else(|| ServeError::Row("the response has no disclosure summary".into()))?;
    let one = |name, (t, p): (table::Table, Vec<Option<f64>>), w| (name, audit::audit(&t, &p, w));
    Ok(match view {
        View::Funnel => vec![one("funnel", funnel::attacker_view(response)?, width)],
        View::TimeOnTask => vec![one("time_on_task.learners", time_on_task::attacker_view(response)?, width)],
        View::Engagement => {
            let [a, t] = engagement::attacker_view(response)?;
            vec![one("engagement.active_learners", a, width), one("engagement.time_on_task_seconds", t, width * engagement::HEARTBEAT_SECONDS)]
        }
        View::Replays => {
            let [r, p] = replays::attacker_view(response)?;
            vec![one("replays.replays", r, width), one("replays.pauses", p, width)]
        }
    })
}

/// The read path over one warehouse.
pub struct Serve {
    warehouse: Warehouse,
    config: Config,
    limiter: RateLimiter,
    /// Shared queries (cohort views and live streams), by shape and parameters.
    shared: std::sync::Mutex<HashMap<(&'static str, String), Arc<Slot>>>,
    /// Live streams sharing their messages, by course, range, window and thresholds.
    live_groups: std::sync::Mutex<HashMap<String, Arc<live::Group>>>,
}

/// Rows of one query, with when it started, and their releases.
struct SharedRows {
    started: std::time::Instant,
    /// The aggregates' generation when the query started ([`crate::warehouse::aggregates_generation`]):
    /// rows of an older one may hold a subject erased since, and are never served.
    generation: u64,
    rows: Vec<Value>,
    /// Releases of these rows by thresholds and part: a cohort view's release is a function
    /// of its rows (the slot's key holds every parameter, the part says which of the rows it
    /// takes: the engagement window's first minute) and the thresholds, so a request sharing
    /// the rows shares the release (suppression and audit done once, the same cells).
    released: std::sync::Mutex<Vec<((Thresholds, i64), Arc<dyn std::any::Any + Send + Sync>)>>,
}

impl SharedRows {
    fn new(started: std::time::Instant, generation: u64, rows: Vec<Value>) -> Arc<SharedRows> {
        Arc::new(SharedRows { started, generation, rows, released: Default::default() })
    }

    /// Whether these rows may still be served: no aggregate was rebuilt since they were fetched.
    fn current(&self) -> bool {
        self.generation == crate::warehouse::aggregates_generation()
    }
}

/// One shared query: the last rows, whether a refresh runs, and the lock a fetch holds.
#[derive(Default)]
struct Slot {
    current: std::sync::Mutex<Option<Arc<SharedRows>>>,
    refreshing: std::sync::atomic::AtomicBool,
    fetch: tokio::sync::Mutex<()>,
}

/// Run one named shape, timed per shape.
async fn run_on(wh: &Warehouse, shape: &Shape, params: &[(&str, String)]) -> Result<Vec<Value>, ServeError> {
    let started = std::time::Instant::now();
    let rows = if shape.interactive { wh.query_interactive(shape.sql, params).await? } else { wh.query(shape.sql, params).await? };
    metrics::histogram!("learnvault_serve_query_seconds", "shape" => shape.name).record(started.elapsed().as_secs_f64());
    Ok(rows)
}

/// A 64-bit count as ClickHouse prints it (number or quoted string).
pub(crate) fn num(v: &Value) -> Result<f64, ServeError> {
    v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).ok_or_else(|| ServeError::Row(format!("not a number: {v}")))
}

impl Serve {
    pub fn new(warehouse: Warehouse, config: Config) -> Result<Serve, ServeError> {
        config.validate()?;
        let limiter = RateLimiter::new(config.policy.drilldown.max_per_hour);
        Ok(Serve { warehouse, config, limiter, shared: Default::default(), live_groups: Default::default() })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    async fn run(&self, shape: &Shape, params: &[(&str, String)]) -> Result<Vec<Value>, ServeError> {
        run_on(&self.warehouse, shape, params).await
    }

    /// [`Serve::run`] shared by requests with the same parameters: the rows
    /// of a query that started at most `window` before this call, or a new
    /// query (callers meanwhile wait for it). Cohort views (`stale_ok`) also take
    /// rows up to `stale_query_ms` (at least twice the window) old while one refresh runs in the background
    /// (stale-while-revalidate: no viewer waits for the refresh). The caller
    /// releases and audits the rows ([`Serve::release_shared`]). Cohort views share
    /// within `shared_query_ms`, a course's live streams within `live.coalesce_ms`.
    async fn run_shared(&self, shape: &Shape, params: &[(&'static str, String)], window_ms: u64, stale_ok: bool) -> Result<Arc<SharedRows>, ServeError> {
        if window_ms == 0 {
            return Ok(SharedRows::new(std::time::Instant::now(), crate::warehouse::aggregates_generation(), self.run(shape, params).await?));
        }
        let window = std::time::Duration::from_millis(window_ms);
        let asked = std::time::Instant::now();
        let key = params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let stale_keep = (2 * window).max(std::time::Duration::from_millis(self.config.policy.stale_query_ms));
        let slot = {
            let mut map = self.shared.lock().expect("not poisoned");
            if map.len() > 4096 {
                // Forget idle entries (no fetch in flight, nothing fresh).
                map.retain(|_, s| {
                    s.fetch.try_lock().is_err() || s.current.lock().expect("not poisoned").as_ref().is_some_and(|r| r.started + stale_keep >= asked)
                });
            }
            map.entry((shape.name, key)).or_default().clone()
        };
        let current = slot.current.lock().expect("not poisoned").clone();
        if let Some(c) = current.filter(|c| c.current() && (c.started + window >= asked || (stale_ok && c.started + stale_keep >= asked))) {
            metrics::counter!("learnvault_serve_shared_queries_total", "shape" => shape.name).increment(1);
            if c.started + window < asked && !slot.refreshing.swap(true, std::sync::atomic::Ordering::AcqRel) {
                let (slot, wh, shape) = (slot.clone(), self.warehouse.clone(), *shape);
                let params: Vec<(&'static str, String)> = params.to_vec();
                tokio::spawn(async move {
                    let _fetch = slot.fetch.lock().await;
                    let (started, generation) = (std::time::Instant::now(), crate::warehouse::aggregates_generation());
                    match run_on(&wh, &shape, &params).await {
                        Ok(rows) => *slot.current.lock().expect("not poisoned") = Some(SharedRows::new(started, generation, rows)),
                        Err(e) => tracing::warn!(error = %e, shape = shape.name, "background refresh of a shared query failed; the next request queries"),
                    }
                    slot.refreshing.store(false, std::sync::atomic::Ordering::Release);
                });
            }
            return Ok(c);
        }
        let _fetch = slot.fetch.lock().await;
        // Another caller may have fetched while this one waited.
        if let Some(c) = slot.current.lock().expect("not poisoned").clone().filter(|c| c.current() && c.started + window >= asked) {
            metrics::counter!("learnvault_serve_shared_queries_total", "shape" => shape.name).increment(1);
            return Ok(c);
        }
        let started = std::time::Instant::now();
        let generation = crate::warehouse::aggregates_generation();
        let fresh = SharedRows::new(started, generation, self.run(shape, params).await?);
        *slot.current.lock().expect("not poisoned") = Some(fresh.clone());
        Ok(fresh)
    }

    /// The release of shared rows (or of the `part` of them the release takes) at thresholds
    /// `t`: made once per rows, part and thresholds, then shared (cloned) by every request
    /// holding the same rows.
    fn release_shared<T: Clone + Send + Sync + 'static>(
        shared: &SharedRows,
        t: &Thresholds,
        part: i64,
        release: impl FnOnce(&[Value]) -> Result<Released<T>, ServeError>,
    ) -> Result<Released<T>, ServeError> {
        let key = (*t, part);
        let made = shared.released.lock().expect("not poisoned").iter().find(|(k, _)| *k == key).map(|(_, r)| r.clone());
        if let Some(r) = made.as_ref().and_then(|r| r.downcast_ref::<Released<T>>()) {
            return Ok(r.clone());
        }
        // Not under the lock (the audit takes milliseconds): two first requests may both release.
        let r = release(&shared.rows)?;
        shared.released.lock().expect("not poisoned").push((key, Arc::new(r.clone())));
        Ok(r)
    }

    /// How long a request may share a query: a live stream's or a cohort view's window.
    fn share_window(&self, live: bool) -> u64 {
        if live {
            self.config.policy.live.coalesce_ms
        } else {
            self.config.policy.shared_query_ms
        }
    }

    /// The institutions of a course's learners; [`ServeError::UnknownCourse`] when none.
    pub async fn course_institutions(&self, course: &Ident) -> Result<Vec<String>, ServeError> {
        let shared = self.run_shared(&queries::COURSE_INSTITUTIONS, &[("course", course.as_str().to_owned())], self.share_window(false), true).await?;
        let out: Vec<String> = shared.rows.iter().filter_map(|r| r["institution_id"].as_str().map(str::to_owned)).collect();
        if out.is_empty() {
            return Err(ServeError::UnknownCourse);
        }
        Ok(out)
    }

    /// The thresholds in force for a course of these institutions.
    pub fn thresholds(&self, institutions: &[String]) -> Thresholds {
        self.config.thresholds(institutions)
    }

    pub fn range(&self, from: Option<&str>, to: Option<&str>) -> Result<DateRange, ServeError> {
        DateRange::parse(from, to, self.config.max_window_days)
    }

    pub async fn funnel(&self, course: &Ident, range: &DateRange, t: &Thresholds) -> Result<Released<funnel::Funnel>, ServeError> {
        self.funnel_with(course, range, t, None).await
    }

    pub async fn engagement(&self, course: &Ident, minutes: u32, t: &Thresholds) -> Result<Released<engagement::Engagement>, ServeError> {
        self.engagement_with(course, minutes, t, None).await
    }

    async fn funnel_with(&self, course: &Ident, range: &DateRange, t: &Thresholds, live: Option<&mut live::Rule>) -> Result<Released<funnel::Funnel>, ServeError> {
        let [f, to] = range.params();
        let params = [("course", course.as_str().to_owned()), f, to];
        let shared = self.run_shared(&queries::FUNNEL, &params, self.share_window(live.is_some()), live.is_none()).await?;
        match live {
            Some(rule) => funnel::release(course.as_str(), range, &shared.rows, t, Some(rule)),
            None => Self::release_shared(&shared, t, 0, |rows| funnel::release(course.as_str(), range, rows, t, None)),
        }
    }

    async fn engagement_with(&self, course: &Ident, minutes: u32, t: &Thresholds, live: Option<&mut live::Rule>) -> Result<Released<engagement::Engagement>, ServeError> {
        if minutes == 0 || minutes > self.config.max_engagement_minutes {
            return Err(ServeError::invalid("invalid_query", format!("`minutes` must be 1-{}", self.config.max_engagement_minutes)));
        }
        let now = Utc::now().timestamp();
        let from = (now - now % 60) - (minutes as i64 - 1) * 60;
        // A cohort view queries from the hour of the window's first minute and releases the
        // window's minutes: one query (and one warm slot) per course an hour, not a minute, so
        // a dashboard opened in a new minute paints from rows the released tables' refresh or
        // another viewer fetched. A live stream queries its window exactly.
        let queried = if live.is_some() { from } else { from - from.rem_euclid(3600) };
        let params = [("course", course.as_str().to_owned()), ("from", queried.to_string())];
        let shared = self.run_shared(&queries::ENGAGEMENT, &params, self.share_window(live.is_some()), live.is_none()).await?;
        let from_text = chrono::DateTime::from_timestamp(from, 0).map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default();
        match live {
            Some(rule) => engagement::release(course.as_str(), minutes, &from_text, &shared.rows, t, Some(rule)),
            None => Self::release_shared(&shared, t, from, |rows| {
                let window: Vec<Value> = rows.iter().filter(|r| r["at"].as_str().is_some_and(|at| at >= from_text.as_str())).cloned().collect();
                engagement::release(course.as_str(), minutes, &from_text, &window, t, None)
            }),
        }
    }

    pub async fn time_on_task(&self, course: &Ident, range: &DateRange, t: &Thresholds) -> Result<Released<time_on_task::TimeOnTask>, ServeError> {
        let [f, to] = range.params();
        let shared = self.run_shared(&queries::TIME_ON_TASK, &[("course", course.as_str().to_owned()), f, to], self.share_window(false), true).await?;
        Self::release_shared(&shared, t, 0, |rows| time_on_task::release(course.as_str(), range, rows, t))
    }

    pub async fn replays(&self, course: &Ident, content: &Ident, range: &DateRange, t: &Thresholds) -> Result<Released<replays::Replays>, ServeError> {
        let [f, to] = range.params();
        let params = [("course", course.as_str().to_owned()), ("content", content.as_str().to_owned()), f, to];
        let shared = self.run_shared(&queries::REPLAYS, &params, self.share_window(false), true).await?;
        Self::release_shared(&shared, t, 0, |rows| replays::release(course.as_str(), content.as_str(), range, rows, t))
    }

    /// Every course with activity and its institutions.
    pub async fn courses(&self) -> Result<Vec<(String, Vec<String>)>, ServeError> {
        let rows = self.run(&queries::COURSES, &[]).await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let c = r["course_id"].as_str()?.to_owned();
                let i = r["institutions"].as_array()?.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect();
                Some((c, i))
            })
            .collect())
    }

    /// The content items of a course with replay activity.
    pub async fn contents(&self, course: &Ident) -> Result<Vec<String>, ServeError> {
        let rows = self.run(&queries::CONTENTS, &[("course", course.as_str().to_owned())]).await?;
        Ok(rows.iter().filter_map(|r| r["content_id"].as_str().map(str::to_owned)).collect())
    }

    /// Admit one drill-down of `principal` (the policy's hourly limit).
    pub fn admit(&self, principal: &str) -> Result<(), ServeError> {
        self.limiter.admit(principal)
    }

    /// Whether the learner has activity in the course.
    pub async fn is_learner_of(&self, course: &Ident, learner: uuid::Uuid) -> Result<bool, ServeError> {
        let rows = self.run(&queries::LEARNER_IN_COURSE, &[("course", course.as_str().to_owned()), ("learner", learner.to_string())]).await?;
        Ok(rows.first().map(|r| num(&r["n"])).transpose()?.unwrap_or(0.0) > 0.0)
    }

    /// The learner's pseudonymous timeline in the course (call only after the
    /// drill-down was authorised and audited).
    pub async fn timeline(&self, course: &Ident, learner: uuid::Uuid) -> Result<Timeline, ServeError> {
        let limit = self.config.policy.drilldown.timeline_limit;
        let params = [("course", course.as_str().to_owned()), ("learner", learner.to_string()), ("limit", (limit + 1).to_string())];
        let rows = self.run(&queries::LEARNER_TIMELINE, &params).await?;
        Ok(drilldown::timeline(learner, course.as_str(), &rows, limit))
    }
}
