//! Governance: may an event land? Both gates ask, the gateway before it
//! produces and the lander before it inserts, so it is a module of its own.
//!
//! Invariant: an event lands only if its pseudonym is known, not erased, of
//! the event's institution, its learner has not withdrawn analytics consent,
//! and neither its `props` carry a protected attribute nor its free strings an
//! identity (email, phone, the request's own external ids: [`identity_in_event`])
//! ([`check_props_and_clock`]).
//! The vault's answers are cached for `ttl` (an erasure takes effect within
//! that time; at once for the erasures of this process, [`note_erased`]).

use sqlx::PgPool;
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::policy::ProtectedAttributes;
use crate::taxonomy::{Reason, ValidEvent};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    Active { institution: String, analytics: bool },
    Erased,
    Unknown,
}

impl Standing {
    /// The dead-letter reason for an event of `institution`, or `None` to land it.
    pub fn refusal(&self, institution: &str) -> Option<Reason> {
        match self {
            Standing::Active { institution: i, .. } if i != institution => Some(Reason::UnknownPseudonym),
            Standing::Active { analytics: false, .. } => Some(Reason::NoConsent),
            Standing::Active { .. } => None,
            Standing::Erased => Some(Reason::ErasedSubject),
            Standing::Unknown => Some(Reason::UnknownPseudonym),
        }
    }
}

/// Pseudonyms erased by this process since it started: the lander refuses them
/// at once rather than after its cache expires (another process's erasures
/// take effect within the cache time).
static ERASED_HERE: std::sync::Mutex<Option<std::collections::HashSet<Uuid>>> = std::sync::Mutex::new(None);

/// Record that `id` was just tombstoned (called by the erasure job).
pub fn note_erased(id: Uuid) {
    ERASED_HERE.lock().expect("not poisoned").get_or_insert_with(Default::default).insert(id);
}

/// Pseudonyms' standings, as [`Governance::standings`] answers them.
pub type Standings = foldhash::HashMap<Uuid, Standing>;

/// Shared by the gateway's concurrent requests and the lander: the cache is
/// locked only to read and fill it, never across the vault query.
pub struct Governance {
    pool: PgPool,
    ttl: Duration,
    analytics_default: bool,
    cache: std::sync::Mutex<foldhash::HashMap<Uuid, (Standing, Instant)>>,
    /// Bumped by [`Governance::clear`]: an answer fetched before a clear is not cached after it.
    generation: std::sync::atomic::AtomicU64,
}

impl Governance {
    pub fn new(pool: PgPool, ttl: Duration, analytics_default: bool) -> Self {
        Governance { pool, ttl, analytics_default, cache: Default::default(), generation: Default::default() }
    }

    /// Forget every cached answer (an erasure happened: see [`crate::fence`]).
    pub fn clear(&self) {
        let mut cache = self.cache.lock().expect("governance cache");
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        cache.clear();
    }

    /// Standing of every pseudonym in `ids`, with one query for the cache misses.
    pub async fn standings(&self, ids: impl IntoIterator<Item = Uuid>) -> Result<Standings, sqlx::Error> {
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let (mut out, misses) = self.cached(ids);
        if !misses.is_empty() {
            let fetched = fetch(&self.pool, &misses, self.analytics_default).await?;
            self.remember_if(&fetched, generation);
            out.extend(fetched);
        }
        Ok(out)
    }

    /// The cached standings of `ids`, and the ids to fetch. A lander's batch names each
    /// learner many times: each is looked up once.
    fn cached(&self, ids: impl IntoIterator<Item = Uuid>) -> (Standings, Vec<Uuid>) {
        let now = Instant::now();
        let erased_here = ERASED_HERE.lock().expect("not poisoned");
        let cache = self.cache.lock().expect("governance cache");
        let mut out = Standings::default();
        let mut misses = Vec::new();
        for id in ids {
            if out.contains_key(&id) {
                continue;
            }
            if erased_here.as_ref().is_some_and(|s| s.contains(&id)) {
                out.insert(id, Standing::Erased);
                continue;
            }
            match cache.get(&id) {
                Some((s, at)) if now.duration_since(*at) < self.ttl => {
                    out.insert(id, s.clone());
                }
                _ => misses.push(id),
            }
        }
        misses.sort_unstable();
        misses.dedup();
        (out, misses)
    }

    /// Cache fetched standings.
    #[cfg(test)]
    fn remember(&self, fetched: &[(Uuid, Standing)]) {
        self.remember_if(fetched, self.generation.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Cache fetched standings, unless the cache was cleared since `generation` (the fetch may predate an erasure).
    fn remember_if(&self, fetched: &[(Uuid, Standing)], generation: u64) {
        let now = Instant::now();
        let mut cache = self.cache.lock().expect("governance cache");
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) != generation {
            return;
        }
        for (id, s) in fetched {
            cache.insert(*id, (s.clone(), now));
        }
        if cache.len() > 1_000_000 {
            let ttl = self.ttl;
            cache.retain(|_, (_, at)| now.duration_since(*at) < ttl);
        }
    }
}

/// Standings of `ids` from the vault: one query.
async fn fetch(pool: &PgPool, ids: &[Uuid], analytics_default: bool) -> Result<Vec<(Uuid, Standing)>, sqlx::Error> {
    let rows = sqlx::query!(
                r#"SELECT q.p AS "pseudonym!", l.institution_id AS "institution?", (t.pseudonym IS NOT NULL) AS "erased!", c.granted AS "analytics?"
                   FROM UNNEST($1::uuid[]) AS q(p)
                   LEFT JOIN learners l ON l.pseudonym = q.p
                   LEFT JOIN tombstones t ON t.pseudonym = q.p
                   LEFT JOIN LATERAL (
                       SELECT ce.granted FROM consent_events ce
                       WHERE ce.pseudonym = q.p AND ce.purpose = 'analytics'
                       ORDER BY ce.id DESC LIMIT 1
                   ) c ON true"#,
        ids
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let s = match (r.institution, r.erased) {
                (_, true) => Standing::Erased,
                (Some(institution), false) => Standing::Active { institution, analytics: r.analytics.unwrap_or(analytics_default) },
                (None, false) => Standing::Unknown,
            };
            (r.pseudonym, s)
        })
        .collect())
}

/// The checks every event passes at both gates (gateway and lander), after
/// taxonomy validation and once `server_ts` is set: no protected attribute in
/// `props`; a client clock further than `clock_skew` from server time is kept
/// but flagged in `props.clock_skew_ms`.
/// The first of `ev`'s free strings (session, course, content and cohort ids, `props`
/// keys and values) that identifies a person, as (field, what): an email address, a
/// phone number, one of `external_ids` (the request's own), or a `props` key naming an
/// identifier. Names the field, never the value.
pub fn identity_in_event(ev: &ValidEvent, external_ids: &crate::redact::ExternalIds) -> Option<(String, &'static str)> {
    let fields = [("session_id", &ev.session_id), ("course_id", &ev.course_id), ("content_id", &ev.content_id), ("cohort_id", &ev.cohort_id)];
    for (name, value) in fields {
        if let Some(what) = crate::redact::identity_in(value, external_ids) {
            return Some((name.to_owned(), what));
        }
    }
    for (k, v) in &ev.props {
        if crate::redact::is_identifier_key(k) {
            return Some((format!("props.{k}"), "an identifier field"));
        }
        if let Some(what) = crate::redact::identity_in(k, external_ids).or_else(|| crate::redact::identity_in(v, external_ids)) {
            return Some((format!("props.{k}"), what));
        }
    }
    None
}

/// Refuse protected attributes and identities (the patterns, and `own_ids`: the sending request's
/// external ids, empty in the lander) in one pass over the event's strings, then flag a client clock
/// too far from the server's (`props.clock_skew_ms`: the server's own number, not screened).
pub fn check_props_and_clock(
    ev: &mut ValidEvent,
    protected: &ProtectedAttributes,
    clock_skew: Duration,
    own_ids: &crate::redact::ExternalIds,
) -> Result<(), (Reason, String)> {
    if let Some(attr) = ev.props.keys().find_map(|k| protected.matches(k)) {
        return Err((Reason::ProtectedAttribute, format!("props carry protected attribute `{attr}`")));
    }
    if let Some((field, what)) = identity_in_event(ev, own_ids) {
        return Err((Reason::IdentityInEvent, format!("{field} holds {what} (identities go to the vault, never into events)")));
    }
    if let Some(server) = ev.server_ts {
        let skew = ev.client_ts.signed_duration_since(server).num_milliseconds();
        if skew.unsigned_abs() > clock_skew.as_millis() as u64 {
            ev.props.insert("clock_skew_ms".into(), skew.to_string());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    #[test]
    fn a_standing_refuses_with_its_reason() {
        let active = |institution: &str, analytics| Standing::Active { institution: institution.into(), analytics };
        for (standing, institution, want) in [
            (active("uni", true), "uni", None),
            (active("uni", true), "other", Some(Reason::UnknownPseudonym)),
            (active("uni", false), "uni", Some(Reason::NoConsent)),
            (Standing::Erased, "uni", Some(Reason::ErasedSubject)),
            (Standing::Unknown, "uni", Some(Reason::UnknownPseudonym)),
        ] {
            assert_eq!(standing.refusal(institution), want, "{standing:?} for {institution}");
        }
    }

    #[test]
    fn protected_attributes_are_refused_and_a_skewed_clock_is_flagged() {
        let protected = ProtectedAttributes::load(&crate::policy::shipped_dir()).unwrap();
        let t = |ms| DateTime::from_timestamp_millis(ms).unwrap();
        let event = |prop: &str, client_ms| ValidEvent {
            event_id: Uuid::new_v4(),
            event_version: "2.3".into(),
            event_type: "interact.pause".into(),
            learner_id: Uuid::new_v4(),
            session_id: "s".into(),
            course_id: "c".into(),
            content_id: "v".into(),
            cohort_id: "k".into(),
            institution_id: "uni".into(),
            position_sec: None,
            client_ts: t(client_ms),
            server_ts: Some(t(1_764_072_000_000)),
            props: [(prop.to_string(), "x".to_string())].into(),
        };
        let skew = Duration::from_secs(300);

        let (reason, detail) = check_props_and_clock(&mut event("Date-Of-Birth", 1_764_072_000_000), &protected, skew, &crate::redact::ExternalIds::default()).unwrap_err();
        assert_eq!(reason, Reason::ProtectedAttribute);
        assert!(detail.contains("date_of_birth"), "{detail}");

        let mut near = event("player", 1_764_072_000_000 - 300_000);
        check_props_and_clock(&mut near, &protected, skew, &crate::redact::ExternalIds::default()).unwrap();
        assert_eq!(near.props.get("clock_skew_ms"), None);

        let mut far = event("player", 1_764_072_000_000 - 300_001);
        check_props_and_clock(&mut far, &protected, skew, &crate::redact::ExternalIds::default()).unwrap();
        assert_eq!(far.props.get("clock_skew_ms").map(String::as_str), Some("-300001"));

        // The sender's own external ids are refused with the patterns; the skew the server sets is
        // not screened (a clock ~1.4 days ahead gives a 9-digit number, not a phone number).
        let own = crate::redact::ExternalIds::new(&["S-0001".to_owned()]);
        let mut named = event("player", 1_764_072_000_000);
        named.props.insert("note".into(), "re-sit for S-0001".into());
        let (reason, detail) = check_props_and_clock(&mut named, &protected, skew, &own).unwrap_err();
        assert_eq!((reason, detail.as_str()), (Reason::IdentityInEvent, "props.note holds external_id (identities go to the vault, never into events)"));
        let mut ahead = event("player", 1_764_072_000_000 + 123_456_789);
        check_props_and_clock(&mut ahead, &protected, skew, &own).unwrap();
        assert_eq!(ahead.props.get("clock_skew_ms").map(String::as_str), Some("123456789"));
    }

    #[tokio::test]
    async fn an_erasure_here_is_refused_at_once_and_other_answers_come_from_the_cache() {
        let pool = PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        let g = Governance::new(pool, Duration::from_secs(60), true);
        let (known, erased, missing) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        g.remember(&[(known, Standing::Active { institution: "uni".into(), analytics: true }), (erased, Standing::Active { institution: "uni".into(), analytics: true })]);
        note_erased(erased);
        let (cached, misses) = g.cached([known, erased, missing, missing]);
        assert_eq!(cached.get(&known), Some(&Standing::Active { institution: "uni".into(), analytics: true }));
        assert_eq!(cached.get(&erased), Some(&Standing::Erased));
        assert_eq!(misses, vec![missing]);
    }
}
