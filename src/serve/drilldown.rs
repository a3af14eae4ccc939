//! The individual view: one learner's pseudonymous timeline in one course,
//! and the per-principal rate limit of drill-downs. Who may drill down, for
//! which purpose, and the audit entry written before data leaves are checked
//! by the caller (`api/serve.rs`) in that order; this file holds the limit
//! and the read.

use serde::Serialize;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use utoipa::ToSchema;

use super::ServeError;

/// Drill-downs admitted per principal in a sliding hour (per process).
pub struct RateLimiter {
    max: u32,
    window: Duration,
    seen: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl RateLimiter {
    pub fn new(max_per_hour: u32) -> RateLimiter {
        RateLimiter { max: max_per_hour, window: Duration::from_secs(3600), seen: Mutex::new(HashMap::new()) }
    }

    /// Admit one drill-down of `principal` now, or refuse it.
    pub fn admit(&self, principal: &str) -> Result<(), ServeError> {
        self.admit_at(principal, Instant::now())
    }

    fn admit_at(&self, principal: &str, now: Instant) -> Result<(), ServeError> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let q = seen.entry(principal.to_owned()).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
            q.pop_front();
        }
        if q.len() >= self.max as usize {
            return Err(ServeError::RateLimited { max_per_hour: self.max });
        }
        q.push_back(now);
        Ok(())
    }
}

/// A learner's pseudonymous timeline (newest first): sessions, content,
/// positions. Never an identity, never event properties.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Timeline {
    pub pseudonym: uuid::Uuid,
    pub course_id: String,
    pub events: Vec<TimelineEvent>,
    /// True when more events exist than the policy's `timeline_limit`.
    pub truncated: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TimelineEvent {
    pub at: String,
    pub event_type: String,
    pub session_id: String,
    pub content_id: String,
    pub cohort_id: String,
    pub position_sec: Option<u64>,
}

pub fn timeline(pseudonym: uuid::Uuid, course: &str, rows: &[Value], limit: u32) -> Timeline {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let events: Vec<TimelineEvent> = rows
        .iter()
        .take(limit as usize)
        .map(|r| TimelineEvent {
            at: s(&r["at"]),
            event_type: s(&r["event_type"]),
            session_id: s(&r["session_id"]),
            content_id: s(&r["content_id"]),
            cohort_id: s(&r["cohort_id"]),
            position_sec: r["position_sec"].as_u64().or_else(|| r["position_sec"].as_str().and_then(|p| p.parse().ok())),
        })
        .collect();
    Timeline { pseudonym, course_id: course.to_owned(), truncated: rows.len() > limit as usize, events }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_slides_per_principal() {
        let l = RateLimiter::new(2);
        let t0 = Instant::now();
        assert!(l.admit_at("a", t0).is_ok());
        assert!(l.admit_at("a", t0).is_ok());
        assert!(matches!(l.admit_at("a", t0), Err(ServeError::RateLimited { max_per_hour: 2 })));
        assert!(l.admit_at("b", t0).is_ok(), "per principal");
        assert!(l.admit_at("a", t0 + Duration::from_secs(3600)).is_ok(), "the window slides");
    }
}
