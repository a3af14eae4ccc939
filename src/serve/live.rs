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
//!
//! **Shared streams**: the streams of one course over the same range, window and
//! thresholds are one group with one sequence of messages (one query, release and
//! audits per refresh, at most once per `live.coalesce_ms`). A subscriber delivers
//! the group's messages in order from its current views on, so what it shows as
//! consecutive messages are consecutive messages of the group (their difference was
//! audited), and the rule's sticky set is the group's (it only grows: a later
//! subscriber withholds at least what the group withholds). A subscriber more than
//! `LOG` messages behind skips the oldest (as if it had reconnected: differencing
//! across separate requests is stated in `serve/mod.rs`, not solved).

use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

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

/// One subscriber's stream: which group's messages it follows and the last one it got.
pub struct Stream {
    range: DateRange,
    minutes: u32,
    thresholds: Thresholds,
    /// The sequence number of the last group message this stream delivered (0: none yet).
    seen: u64,
    /// Landings of this process's lander ([`crate::warehouse::landings`]): a stream waits
    /// on them ([`Serve::live_wait`]).
    landings: tokio::sync::watch::Receiver<u64>,
    /// When this stream last stepped.
    stepped: Option<Instant>,
    /// Unix milliseconds before which every landed batch is in what this stream shows (0: none).
    as_of_ms: i64,
}

impl Stream {
    /// Unix milliseconds before which every landed batch is in the views this stream shows:
    /// `live.coalesce_ms` before the start of the refresh behind them, whose queries may share
    /// rows that old (0 before its first views).
    pub fn as_of_ms(&self) -> i64 {
        self.as_of_ms
    }
}

/// The streams of one course over the same range, window and thresholds share one
/// sequence of messages: one query, one release and one audit (of the message and of
/// its difference from the previous one) per refresh, whoever asks. Every subscriber
/// delivers the group's messages in order, so consecutive messages it delivers are
/// consecutive messages of the group, whose difference was audited; a subscriber that
/// joins starts from the group's current views (withholding at least what the group
/// withholds: the sticky set only grows).
#[derive(Default)]
pub(super) struct Group {
    state: tokio::sync::Mutex<GroupState>,
}

#[derive(Default)]
struct GroupState {
    rule: Option<Rule>,
    previous: HashMap<&'static str, Value>,
    /// The group's recent messages with their sequence numbers (oldest first).
    log: VecDeque<(u64, Message)>,
    seq: u64,
    /// When the last refresh started, and when it ended.
    stepped: Option<Instant>,
    finished: Option<Instant>,
    /// Unix milliseconds `live.coalesce_ms` before the refresh whose views are `previous`
    /// started (its queries may share rows that old): its rows hold every batch landed before.
    as_of_ms: i64,
}

/// Messages a group keeps for subscribers that are behind (2 per refresh at most).
const LOG: usize = 64;

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
        Stream { range, minutes, thresholds, seen: 0, landings: crate::warehouse::landings(), stepped: None, as_of_ms: 0 }
    }

    /// Wait until a stream's next step is due: at once for its first; then when rows land
    /// in this process (the lander's inserts) or `interval` after its last step, whichever
    /// comes first, and never sooner than `live.coalesce_ms` after its last step (rows land
    /// several times a second). What a viewer sees then trails a landing by about one
    /// group refresh, not by the interval.
    pub async fn live_wait(&self, s: &mut Stream, interval: std::time::Duration) {
        let Some(last) = s.stepped else { return };
        let due = tokio::time::Instant::from_std(last + interval);
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            changed = s.landings.changed() => {
                if changed.is_err() {
                    tokio::time::sleep_until(due).await;
                }
            }
        }
        let floor = last + std::time::Duration::from_millis(self.config().policy.live.coalesce_ms);
        tokio::time::sleep_until(tokio::time::Instant::from_std(floor)).await;
    }

    /// One refresh of a stream: the group's messages it has not delivered yet. The group
    /// refreshes (query, release, audits) when its last refresh started more than
    /// `live.coalesce_ms` ago and ended before this step asked; otherwise the stream takes
    /// what that refresh published (a step that waited for a refresh in flight takes it
    /// rather than queueing another behind it: the landings it missed wake the stream again).
    pub async fn live_step(&self, course: &Ident, s: &mut Stream) -> Result<Vec<Message>, ServeError> {
        let asked = Instant::now();
        s.stepped = Some(asked);
        s.landings.borrow_and_update();
        let window = std::time::Duration::from_millis(self.config().policy.live.coalesce_ms);
        let t = &s.thresholds;
        let key = format!(
            "{}|{:?}|{}|{}|{}|{}",
            course.as_str(),
            s.range.params(),
            s.minutes,
            t.min_cell,
            t.extreme_share_min,
            t.protection_width
        );
        let group = {
            let mut map = self.live_groups.lock().expect("not poisoned");
            if map.len() > 1024 {
                // Forget groups nobody refreshed for a minute (a later subscriber starts a new one).
                map.retain(|_, g| g.state.try_lock().map_or(true, |st| st.stepped.is_some_and(|t| t.elapsed().as_secs() < 60)));
            }
            map.entry(key).or_default().clone()
        };
        let mut g = group.state.lock().await;
        if g.stepped.is_none_or(|t| t + window < asked) && g.finished.is_none_or(|f| f < asked) {
            g.stepped = Some(Instant::now());
            // Its views may take rows of a query up to the window older than itself (shared).
            let as_of_ms = chrono::Utc::now().timestamp_millis() - window.as_millis() as i64;
            // On a copy: a refresh that fails half-way publishes nothing and changes nothing.
            let mut rule = g.rule.clone().unwrap_or_else(|| Rule { band: self.config().policy.live.band, sticky: HashSet::new() });
            let mut previous = g.previous.clone();
            let published = self.live_refresh(course, &s.range, s.minutes, t, &mut rule, &mut previous).await?;
            let st = &mut *g;
            (st.rule, st.previous, st.finished, st.as_of_ms) = (Some(rule), previous, Some(Instant::now()), as_of_ms);
            for m in published {
                st.seq += 1;
                st.log.push_back((st.seq, m));
                if st.log.len() > LOG {
                    st.log.pop_front();
                }
            }
            metrics::counter!("learnvault_serve_live_refreshes_total").increment(1);
        } else {
            metrics::counter!("learnvault_serve_live_shared_total").increment(1);
        }
        let out = if s.seen == 0 {
            // A new subscriber: the group's current views.
            ["funnel", "engagement"].into_iter().filter_map(|e| g.previous.get(e).map(|v| Message { event: e, data: v.clone() })).collect()
        } else {
            g.log.iter().filter(|(n, _)| *n > s.seen).map(|(_, m)| m.clone()).collect()
        };
        // A subscriber stays new until the group has views (its first refresh may have failed).
        if s.seen != 0 || !g.previous.is_empty() {
            s.seen = g.seq.max(1);
            s.as_of_ms = g.as_of_ms;
        }
        Ok(out)
    }

    /// One refresh of a group: the views that changed since its previous message, each
    /// audited on its own and as a difference from the previous one.
    async fn live_refresh(
        &self,
        course: &Ident,
        range: &DateRange,
        minutes: u32,
        thresholds: &Thresholds,
        rule: &mut Rule,
        previous: &mut HashMap<&'static str, Value>,
    ) -> Result<Vec<Message>, ServeError> {
        let mut out = Vec::new();
        for (view, event) in [(View::Funnel, "funnel"), (View::Engagement, "engagement")] {
            // At most every cell goes: then nothing is published and every difference is unbounded.
            for _attempt in 0..=256 {
                let json = match view {
                    View::Funnel => serde_json::to_value(self.funnel_with(course, range, thresholds, Some(&mut *rule)).await?),
                    _ => serde_json::to_value(self.engagement_with(course, minutes, thresholds, Some(&mut *rule)).await?),
                }
                .map_err(|e| ServeError::Row(e.to_string()))?;
                if message_audit(view, &json, rule.band, thresholds.protection_width)?.iter().any(|(_, r)| !r.ok()) {
                    return Err(ServeError::AuditFailed("live"));
                }
                let failed = match previous.get(event) {
                    None => None,
                    Some(prev) => diff_audit(view, prev, &json, rule.band, thresholds.protection_width)?.into_iter().find_map(|(_, r, next)| (!r.ok()).then_some(next)),
                };
                match failed {
                    Some(Some(key)) if !rule.sticky.contains(&key) => {
                        rule.sticky.insert(key);
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
                if previous.get(event).map(body) != Some(body(&json)) {
                    out.push(Message { event, data: json.clone() });
                }
                previous.insert(event, json);
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
