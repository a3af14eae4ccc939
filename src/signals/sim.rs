//! A simulated cohort with ground truth for the detectors (`learnvault bench
//! signals`, `tests/signals.rs`): learners with their own habits (active on a
//! share of days from daily to weekly, quieter at weekends), a holiday week in
//! which one institution's cohorts go quiet, videos with background replays
//! and a segment every video has that is always hard (the content trap),
//! assessments with a deadline rush; and, when planted: learners who disengage
//! on known days (tapering the week before), a defective segment in one video
//! per course from a known day, colluding pairs (the second submits 2-15 s
//! after the first, copying answers) and study partners (the trap: they work
//! together but submit 40 s to many minutes apart, with their own answers).
//! A clean run plants nothing. Rows are base-table rows (`JSONEachRow`),
//! generated a block of learners at a time so memory stays bounded.

use chrono::{Duration, NaiveDate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::HashMap;
use uuid::Uuid;

pub const VIDEOS: u32 = 8;
pub const VIDEO_SECONDS: u32 = 600;
/// The segment every video has that many learners replay (not a defect).
pub const HARD_SEGMENT: (u32, u32) = (300, 310);

#[derive(Debug, Clone)]
pub struct Plan {
    pub learners: usize,
    pub days: u32,
    pub start: NaiveDate,
    pub seed: u64,
    pub planted: bool,
    /// Institutions are `{prefix}-inst-0`, `-1`; courses `{prefix}-course-0`, `-1` (one per institution).
    pub prefix: String,
    /// Share of learners who disengage (planted runs).
    pub disengage_share: f64,
    /// Share of learners in a colluding pair, and in a study-partner pair.
    pub collude_share: f64,
    pub partner_share: f64,
    /// Days `[a, b)` in which institution 0's cohorts are on holiday.
    pub holiday: Option<(u32, u32)>,
    /// The day each course's defective segment ships (planted runs).
    pub defect_days: [u32; 2],
}

impl Plan {
    pub fn new(learners: usize, days: u32, start: NaiveDate, seed: u64, planted: bool, prefix: &str) -> Plan {
        Plan {
            learners,
            days,
            start,
            seed,
            planted,
            prefix: prefix.to_owned(),
            disengage_share: 0.05,
            collude_share: 0.01,
            partner_share: 0.02,
            holiday: Some((days.saturating_sub(21), days.saturating_sub(14))),
            defect_days: [days.saturating_sub(12), days.saturating_sub(5)],
        }
    }

    pub fn course(&self, c: usize) -> String {
        format!("{}-course-{c}", self.prefix)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Defect {
    pub course: String,
    pub content: String,
    pub from_sec: u32,
    pub to_sec: u32,
    pub day: NaiveDate,
}

#[derive(Debug, Clone, Default)]
pub struct Truth {
    pub learners: Vec<Uuid>,
    pub disengaged: HashMap<Uuid, NaiveDate>,
    pub defects: Vec<Defect>,
    pub colluders: Vec<(Uuid, Uuid)>,
    pub partners: Vec<(Uuid, Uuid)>,
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Plain,
    Disengages(u32),
    /// The first (0) or second (1) of a colluding pair.
    Colluder(u8),
    Partner(u8),
}

pub struct Sim {
    plan: Plan,
    pub truth: Truth,
    roles: Vec<Role>,
    habits: Vec<f64>,
    next: usize,
}

impl Sim {
    pub fn new(plan: Plan) -> Sim {
        let mut rng = StdRng::seed_from_u64(plan.seed);
        let n = plan.learners - plan.learners % 4;
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::from_u128(rng.gen::<u128>() & !(0xF000u128 << 64) | (0x4000u128 << 64))).collect();
        let habits: Vec<f64> = (0..n)
            .map(|_| match rng.gen_range(0..100) {
                0..=29 => rng.gen_range(0.75..0.95),
                30..=64 => rng.gen_range(0.45..0.65),
                65..=89 => rng.gen_range(0.3..0.45),
                _ => rng.gen_range(0.12..0.2),
            })
            .collect();
        let mut roles = vec![Role::Plain; n];
        let mut truth = Truth { learners: ids.clone(), ..Truth::default() };
        if plan.planted {
            // Pairs are (2j, 2j+1): same course and cohort.
            let pairs = n / 2;
            let colluding = ((n as f64 * plan.collude_share) / 2.0).round() as usize;
            let partnering = ((n as f64 * plan.partner_share) / 2.0).round() as usize;
            let mut order: Vec<usize> = (0..pairs).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.gen_range(0..=i));
            }
            for (k, &j) in order.iter().enumerate() {
                let (a, b) = (2 * j, 2 * j + 1);
                if k < colluding {
                    roles[a] = Role::Colluder(0);
                    roles[b] = Role::Colluder(1);
                    truth.colluders.push((ids[a], ids[b]));
                } else if k < colluding + partnering {
                    roles[a] = Role::Partner(0);
                    roles[b] = Role::Partner(1);
                    truth.partners.push((ids[a], ids[b]));
                }
            }
            let lo = 30.min(plan.days.saturating_sub(14));
            for i in 0..n {
                if roles[i] == Role::Plain && rng.gen_bool(plan.disengage_share) {
                    let d = rng.gen_range(lo..plan.days.saturating_sub(12).max(lo + 1));
                    roles[i] = Role::Disengages(d);
                    truth.disengaged.insert(ids[i], plan.start + Duration::days(d as i64));
                }
            }
            for c in 0..2 {
                let d = plan.defect_days[c];
                truth.defects.push(Defect {
                    course: plan.course(c),
                    content: format!("video-{}", current_video(d)),
                    from_sec: 240,
                    to_sec: 270,
                    day: plan.start + Duration::days(d as i64),
                });
            }
        }
        Sim { plan, truth, roles, habits, next: 0 }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Base-table rows (`JSONEachRow`) of the next `block` learners (a multiple of 4); `None` when done.
    pub fn chunk(&mut self, block: usize) -> Option<Vec<u8>> {
        let n = self.truth.learners.len();
        if self.next >= n {
            return None;
        }
        let end = (self.next + block.max(4) / 4 * 4).min(n);
        let mut out = Vec::with_capacity((end - self.next) * 60_000);
        // Assessment submissions of the block's pairs first (the second of a pair follows the first).
        for i in self.next..end {
            self.learner_rows(i, &mut out);
        }
        for j in (self.next..end).step_by(2) {
            self.submit_rows(j, &mut out);
        }
        self.next = end;
        Some(out)
    }

    fn where_of(&self, i: usize) -> (String, String, String) {
        let c = (i / 2) % 2;
        (format!("{}-inst-{c}", self.plan.prefix), self.plan.course(c), format!("{}-cohort-{}", self.plan.course(c), (i / 4) % 4))
    }

    fn learner_rows(&self, i: usize, out: &mut Vec<u8>) {
        let mut rng = StdRng::seed_from_u64(self.plan.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let id = self.truth.learners[i];
        let (inst, course, cohort) = self.where_of(i);
        let c = (i / 2) % 2;
        for day in 0..self.plan.days {
            let date = self.plan.start + Duration::days(day as i64);
            let mut p = self.habits[i];
            let mut minutes = 1.0;
            if let Role::Disengages(d) = self.roles[i] {
                if day >= d {
                    break;
                }
                if day + 7 >= d {
                    p *= 0.7;
                    minutes = 0.5;
                }
            }
            // Weekends are days 5 and 6 of each simulated week (not the calendar's), so a
            // seed gives the same cohort whatever the day it runs.
            if day % 7 >= 5 {
                p *= 0.6;
            }
            if c == 0 && self.plan.holiday.is_some_and(|(a, b)| (a..b).contains(&day)) {
                p *= 0.12;
            }
            if !rng.gen_bool(p.min(1.0)) {
                continue;
            }
            let t0 = date.and_hms_opt(rng.gen_range(8..22), rng.gen_range(0..60), rng.gen_range(0..60)).expect("time").and_utc().timestamp_millis();
            let session = format!("s{}", rng.gen::<u32>());
            let mut seq = 0u128;
            let mut push = |kind: &str, at: i64, content: &str, pos: Option<u32>| {
                let ts = chrono::DateTime::from_timestamp_millis(at).expect("ts").format("%Y-%m-%d %H:%M:%S%.3f").to_string();
                let row = json!({"server_ts": ts, "client_ts": ts, "event_id": Uuid::from_u128({ seq += 1; (at as u128) << 64 | (i as u128) << 24 | seq }), "event_version": "2.3",
                    "event_type": kind, "learner_id": id, "session_id": session, "course_id": course, "content_id": content,
                    "cohort_id": cohort, "institution_id": inst, "position_sec": pos, "props": {}});
                serde_json::to_writer(&mut *out, &row).expect("json");
                out.push(b'\n');
            };
            push("session.start", t0, "", None);
            let beats = ((rng.gen_range(4..=14) as f64) * minutes).max(1.0) as i64;
            for h in 1..=beats {
                push("session.heartbeat", t0 + h * 30_000, "", None);
            }
            if rng.gen_bool(0.5) {
                let video = if rng.gen_bool(0.7) { current_video(day) } else { rng.gen_range(1..=VIDEOS) };
                let content = format!("video-{video}");
                let at = t0 + 5_000;
                push("interact.pause", at, &content, Some(rng.gen_range(0..VIDEO_SECONDS)));
                if rng.gen_bool(0.5) {
                    push("interact.replay", at + 1_000, &content, Some(rng.gen_range(0..VIDEO_SECONDS)));
                }
                if rng.gen_bool(0.2) {
                    push("interact.replay", at + 2_000, &content, Some(rng.gen_range(HARD_SEGMENT.0..HARD_SEGMENT.1)));
                }
                let defect = self.truth.defects.iter().find(|d| d.course == course && d.content == content && d.day <= date);
                if let Some(d) = defect {
                    if rng.gen_bool(0.5) {
                        // Confused learners seek back to where the segment starts.
                        push("interact.replay", at + 3_000, &content, Some(rng.gen_range(d.from_sec..d.from_sec + 10)));
                    }
                }
            }
        }
    }

    /// Submissions of the pair (or two plain learners) `j`, `j + 1`.
    fn submit_rows(&self, j: usize, out: &mut Vec<u8>) {
        let mut rng = StdRng::seed_from_u64(self.plan.seed ^ 0x5EED ^ (j as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
        let (inst, course, cohort) = self.where_of(j);
        let assessments = self.plan.days / 7 * 2;
        for a in 0..assessments {
            let deadline_day = (a / 2) * 7 + if a % 2 == 0 { 3 } else { 6 };
            let deadline = (self.plan.start + Duration::days(deadline_day as i64)).and_hms_opt(23, 59, 0).expect("time").and_utc().timestamp_millis();
            let open = deadline - 3 * 86_400_000;
            let own = |rng: &mut StdRng| (deadline - (rng.gen::<f64>().max(1e-9).ln() * -30.0 * 3_600_000.0) as i64).max(open);
            let mut first: Option<(i64, String)> = None;
            for k in 0..2 {
                let i = j + k;
                if let Role::Disengages(d) = self.roles[i] {
                    if deadline_day >= d {
                        continue;
                    }
                }
                if !rng.gen_bool(0.85) {
                    continue;
                }
                let mut at = own(&mut rng);
                let mut answer = format!("{:x}", rng.gen::<u64>());
                match (self.roles[i], &first) {
                    (Role::Colluder(1), Some((t, ans))) if rng.gen_bool(0.85) => {
                        at = t + rng.gen_range(2_000..15_000);
                        if rng.gen_bool(0.9) {
                            answer = ans.clone();
                        }
                    }
                    (Role::Partner(1), Some((t, _))) if rng.gen_bool(0.8) => {
                        at = t + 40_000 + (rng.gen::<f64>().max(1e-9).ln() * -300_000.0) as i64;
                    }
                    _ => {}
                }
                if k == 0 {
                    first = Some((at, answer.clone()));
                }
                let ts = chrono::DateTime::from_timestamp_millis(at).expect("ts").format("%Y-%m-%d %H:%M:%S%.3f").to_string();
                let row = json!({"server_ts": ts, "client_ts": ts, "event_id": Uuid::from_u128(rng.gen()), "event_version": "2.3",
                    "event_type": "assess.submit", "learner_id": self.truth.learners[i], "session_id": "quiz", "course_id": course,
                    "content_id": format!("quiz-{a}"), "cohort_id": cohort, "institution_id": inst, "position_sec": null,
                    "props": {"answer_hash": answer}});
                serde_json::to_writer(&mut *out, &row).expect("json");
                out.push(b'\n');
            }
        }
    }
}

/// The video most learners watch on `day` (one per week).
pub fn current_video(day: u32) -> u32 {
    (day / 7) % VIDEOS + 1
}
