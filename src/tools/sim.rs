//! A simulated cohort for the load generator and the live demo: several
//! institutions, courses and cohorts; sessions with heartbeats (~60% of the
//! volume, as the seed reports), pauses and replays clustered around one
//! confusing video segment, abandoned tabs (sessions that never end), mobile
//! clients whose clocks are minutes off, quizzes.
//!
//! Learners are named by LMS external ids (`{institution}-{n}`); the gateway
//! turns them into pseudonyms.

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

pub const INSTITUTIONS: [&str; 3] = ["uni-north", "uni-south", "k12-east"];
/// The video whose segment confuses learners, and the segment (seconds).
pub const CONFUSING_VIDEO: &str = "video-3";
pub const CONFUSING_SEGMENT: (u32, u32) = (120, 150);

#[derive(Debug, Clone)]
pub struct Learner {
    pub institution: &'static str,
    pub external_id: String,
    pub course: String,
    pub cohort: String,
    mobile_skew_ms: i64,
    abandons: bool,
    session: Option<String>,
    video: usize,
    position: u32,
}

pub struct Cohort {
    pub learners: Vec<Learner>,
    rng: StdRng,
}

/// One simulated event: the learner (by index) and the taxonomy event, which
/// names the learner by `learner: {institution, external_id}`.
pub struct SimEvent {
    pub learner: usize,
    pub event: Value,
}

impl Cohort {
    pub fn new(learners: usize, seed: u64) -> Cohort {
        let mut rng = StdRng::seed_from_u64(seed);
        let learners = (0..learners)
            .map(|i| {
                let institution = INSTITUTIONS[i % INSTITUTIONS.len()];
                let course = format!("{institution}-course-{}", (i / INSTITUTIONS.len()) % 2 + 1);
                let cohort = format!("{course}-cohort-{}", (i / (INSTITUTIONS.len() * 2)) % 3 + 1);
                Learner {
                    institution,
                    external_id: format!("{institution}-{i:06}"),
                    course,
                    cohort,
                    // One learner in ten is on a phone whose clock is 3-15 minutes off.
                    mobile_skew_ms: if rng.gen_bool(0.1) { rng.gen_range(3..=15) * 60_000 * if rng.gen_bool(0.5) { 1 } else { -1 } } else { 0 },
                    // Three in ten leave their tab open and never end the session.
                    abandons: rng.gen_bool(0.3),
                    session: None,
                    video: rng.gen_range(1..=5),
                    position: 0,
                }
            })
            .collect();
        Cohort { learners, rng }
    }

    /// The next event of a random learner, advancing its session.
    pub fn next(&mut self, now: DateTime<Utc>) -> SimEvent {
        let s = self.step(now);
        let l = &self.learners[s.learner];
        let mut props = json!({"platform": s.platform});
        if let Some(score) = &s.score {
            props["score"] = json!(score);
        }
        let event = json!({
            "event_id": s.event_id,
            "event_version": "2.3",
            "event_type": s.event_type,
            "learner": {"institution": l.institution, "external_id": l.external_id},
            "session_id": l.session.as_deref().unwrap_or("ended"),
            "course_id": l.course,
            "content_id": format!("video-{}", l.video),
            "cohort_id": l.cohort,
            "institution_id": l.institution,
            "position_sec": s.position,
            "client_ts": s.client_ts,
            "props": props,
        });
        SimEvent { learner: s.learner, event }
    }

    /// The next event, as [`Cohort::next`] makes it (same random sequence), written as JSON
    /// to `out` (the same bytes `serde_json` writes for `next`'s value), without building a
    /// `serde_json::Value`; the learner's index. For load generators.
    pub fn next_json(&mut self, now: DateTime<Utc>, out: &mut Vec<u8>) -> usize {
        let s = self.step(now);
        let l = &self.learners[s.learner];
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let event_id = s.event_id.hyphenated().encode_lower(&mut id);
        // Written by hand, in the order and form `serde_json` writes `next`'s value (keys sorted,
        // compact): every string here is made by the simulation (ids, names, timestamps, numbers
        // formatted above) and needs no escaping (`next_json_writes_what_next_makes` checks the bytes).
        out.extend_from_slice(b"{\"client_ts\":");
        raw_str(out, &s.client_ts);
        out.extend_from_slice(b",\"cohort_id\":");
        raw_str(out, &l.cohort);
        out.extend_from_slice(b",\"content_id\":\"video-");
        out.extend_from_slice(itoa::Buffer::new().format(l.video).as_bytes());
        out.push(b'"');
        out.extend_from_slice(b",\"course_id\":");
        raw_str(out, &l.course);
        out.extend_from_slice(b",\"event_id\":");
        raw_str(out, event_id);
        out.extend_from_slice(b",\"event_type\":");
        raw_str(out, s.event_type);
        out.extend_from_slice(b",\"event_version\":\"2.3\",\"institution_id\":");
        raw_str(out, l.institution);
        out.extend_from_slice(b",\"learner\":{\"external_id\":");
        raw_str(out, &l.external_id);
        out.extend_from_slice(b",\"institution\":");
        raw_str(out, l.institution);
        out.extend_from_slice(b"},\"position_sec\":");
        match s.position {
            Some(p) => out.extend_from_slice(itoa::Buffer::new().format(p).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"props\":{\"platform\":");
        raw_str(out, s.platform);
        if let Some(score) = &s.score {
            out.extend_from_slice(b",\"score\":");
            raw_str(out, score);
        }
        out.extend_from_slice(b"},\"session_id\":");
        raw_str(out, l.session.as_deref().unwrap_or("ended"));
        out.push(b'}');
        s.learner
    }

    /// Advance a random learner's session: what its next event is.
    fn step(&mut self, now: DateTime<Utc>) -> Step {
        let i = self.rng.gen_range(0..self.learners.len());
        let roll: f64 = self.rng.gen();
        let l = &mut self.learners[i];
        let (event_type, position): (&'static str, Option<u32>) = if l.session.is_none() {
            l.session = Some(random_uuid().simple().to_string());
            l.position = 0;
            ("session.start", None)
        } else if roll < 0.60 {
            l.position += 30;
            ("session.heartbeat", Some(l.position))
        } else if roll < 0.68 {
            // Pauses cluster in the confusing segment of the confusing video.
            if self.rng.gen_bool(0.6) {
                l.video = 3;
                l.position = self.rng.gen_range(CONFUSING_SEGMENT.0..CONFUSING_SEGMENT.1);
            }
            ("interact.pause", Some(l.position))
        } else if roll < 0.75 {
            if self.rng.gen_bool(0.7) {
                l.video = 3;
                l.position = self.rng.gen_range(CONFUSING_SEGMENT.0..CONFUSING_SEGMENT.1);
            } else {
                l.position = l.position.saturating_sub(self.rng.gen_range(5..60));
            }
            ("interact.replay", Some(l.position))
        } else if roll < 0.77 {
            ("interact.speed_change", Some(l.position))
        } else if roll < 0.82 {
            l.video = self.rng.gen_range(1..=5);
            l.position = 0;
            ("content.view", Some(0))
        } else if roll < 0.86 {
            ("content.start", Some(l.position))
        } else if roll < 0.89 {
            ("content.complete", Some(l.position))
        } else if roll < 0.92 {
            ("assess.attempt", None)
        } else if roll < 0.95 {
            ("assess.submit", Some(self.rng.gen_range(20..400)))
        } else if roll < 0.97 {
            ("assess.score", None)
        } else {
            if l.abandons {
                // An abandoned tab: the session just stops, with no end event.
                l.session = None;
                l.position += 30;
                ("session.heartbeat", Some(l.position))
            } else {
                l.session = None;
                ("session.end", None)
            }
        };
        let l = &self.learners[i];
        let client = now + Duration::milliseconds(l.mobile_skew_ms - self.rng.gen_range(0..400));
        let platform = if l.mobile_skew_ms != 0 { "mobile" } else { "web" };
        let score = (event_type == "assess.score").then(|| format!("{:.2}", self.rng.gen_range(0.3..1.0)));
        Step {
            learner: i,
            event_type,
            position,
            client_ts: client.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            platform,
            score,
            event_id: random_uuid(),
        }
    }
}

/// A random (version 4) UUID from the thread's generator, not a system call per id as
/// `Uuid::new_v4` makes: a load generator makes one per event.
fn random_uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rand::thread_rng().gen()).into_uuid()
}

/// One step of the simulation: what [`Cohort::next`] and [`Cohort::next_json`] write.
struct Step {
    learner: usize,
    event_type: &'static str,
    position: Option<u32>,
    client_ts: String,
    platform: &'static str,
    score: Option<String>,
    event_id: uuid::Uuid,
}

/// `s` as a JSON string, without escaping: the simulation's strings need none (no quote,
/// backslash or control character), as a debug build checks.
fn raw_str(out: &mut Vec<u8>, s: &str) {
    debug_assert!(s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\'), "{s:?} needs escaping");
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// The same event as an xAPI statement (video and ADL verbs), for `--via xapi`.
/// `None` for event types xAPI clients do not emit (heartbeats become `progressed`).
pub fn to_xapi(e: &Value, home_page: &str) -> Option<Value> {
    let video = |v: &str| format!("https://w3id.org/xapi/video/verbs/{v}");
    let adl = |v: &str| format!("http://adlnet.gov/expapi/verbs/{v}");
    let pos = e["position_sec"].as_u64().unwrap_or(0);
    let (verb, result) = match e["event_type"].as_str()? {
        "content.start" => (video("played"), json!({"extensions": {"https://w3id.org/xapi/video/extensions/time": pos}})),
        "interact.pause" => (video("paused"), json!({"extensions": {"https://w3id.org/xapi/video/extensions/time": pos}})),
        "interact.replay" => (
            video("seeked"),
            json!({"extensions": {"https://w3id.org/xapi/video/extensions/time-from": pos + 20, "https://w3id.org/xapi/video/extensions/time-to": pos}}),
        ),
        "content.complete" => (video("completed"), json!({"completion": true, "extensions": {"https://w3id.org/xapi/video/extensions/time": pos}})),
        "assess.submit" => (adl("answered"), json!({"success": true})),
        "session.heartbeat" => (adl("progressed"), json!({})),
        _ => return None,
    };
    let content = e["content_id"].as_str()?;
    Some(json!({
        "id": e["event_id"],
        "actor": {"objectType": "Agent", "account": {"homePage": home_page, "name": e["learner"]["external_id"]}},
        "verb": {"id": verb, "display": {"en": "event"}},
        "object": {"objectType": "Activity", "id": format!("{home_page}/xblock/{content}"),
                   "definition": {"type": "https://w3id.org/xapi/video/activity-type/video"}},
        "result": result,
        "context": {
            "registration": uuid::Uuid::new_v4(),
            "contextActivities": {"parent": [{"objectType": "Activity", "id": format!("{home_page}/course/{}", e["course_id"].as_str()?)}]},
            "extensions": {"https://learnvault.dev/xapi/cohort": e["cohort_id"]}
        },
        "timestamp": e["client_ts"],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_dominate_and_replays_cluster_in_the_confusing_segment() {
        let mut c = Cohort::new(500, 7);
        let now = Utc::now();
        let events: Vec<Value> = (0..50_000).map(|_| c.next(now).event).collect();
        let share = |t: &str| events.iter().filter(|e| e["event_type"] == t).count() as f64 / events.len() as f64;
        assert!((0.50..0.70).contains(&share("session.heartbeat")), "{}", share("session.heartbeat"));
        let replays: Vec<&Value> = events.iter().filter(|e| e["event_type"] == "interact.replay").collect();
        let in_segment = replays
            .iter()
            .filter(|e| e["content_id"] == CONFUSING_VIDEO && (120..150).contains(&e["position_sec"].as_u64().unwrap()))
            .count();
        assert!(in_segment * 2 > replays.len(), "{in_segment} of {}", replays.len());
        assert!(events.iter().any(|e| e["props"]["platform"] == "mobile"));
        assert!(to_xapi(events.iter().find(|e| e["event_type"] == "interact.replay").unwrap(), "https://lms.example").is_some());
    }

    #[test]
    fn next_json_writes_what_next_makes() {
        let (mut a, mut b) = (Cohort::new(50, 3), Cohort::new(50, 3));
        let now = Utc::now();
        for _ in 0..5_000 {
            let e = a.next(now);
            let mut out = Vec::new();
            let learner = b.next_json(now, &mut out);
            assert_eq!(learner, e.learner);
            // The same bytes (event and session ids are random in both).
            let v: Value = serde_json::from_slice(&out).unwrap();
            let mut text = String::from_utf8(out).unwrap();
            for k in ["event_id", "session_id"] {
                text = text.replace(v[k].as_str().unwrap(), e.event[k].as_str().unwrap());
            }
            assert_eq!(text, serde_json::to_string(&e.event).unwrap());
        }
    }
}
