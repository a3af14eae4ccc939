//! Governance at the gate: is the pseudonym known, not erased, of the event's
//! institution, and has its learner not withdrawn analytics consent?
//! Answers are cached for `ttl` (an erasure takes effect within that time).

use sqlx::PgPool;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::taxonomy::Reason;

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

fn erased_here(id: &Uuid) -> bool {
    ERASED_HERE.lock().expect("not poisoned").as_ref().is_some_and(|s| s.contains(id))
}

/// Shared by the gateway's concurrent requests and the lander: the cache is
/// locked only to read and fill it, never across the vault query.
pub struct Governance {
    pool: PgPool,
    ttl: Duration,
    analytics_default: bool,
    cache: std::sync::Mutex<HashMap<Uuid, (Standing, Instant)>>,
}

impl Governance {
    pub fn new(pool: PgPool, ttl: Duration, analytics_default: bool) -> Self {
        Governance { pool, ttl, analytics_default, cache: std::sync::Mutex::new(HashMap::new()) }
    }

    /// Standing of every pseudonym in `ids`, with one query for the cache misses.
    pub async fn standings(&self, ids: impl IntoIterator<Item = Uuid>) -> Result<HashMap<Uuid, Standing>, sqlx::Error> {
        let (mut out, misses) = self.cached(ids);
        if !misses.is_empty() {
            let fetched = fetch(&self.pool, &misses, self.analytics_default).await?;
            self.remember(&fetched);
            out.extend(fetched);
        }
        Ok(out)
    }

    /// The cached standings of `ids`, and the ids to fetch.
    fn cached(&self, ids: impl IntoIterator<Item = Uuid>) -> (HashMap<Uuid, Standing>, Vec<Uuid>) {
        let now = Instant::now();
        let cache = self.cache.lock().expect("governance cache");
        let mut out = HashMap::new();
        let mut misses = Vec::new();
        for id in ids {
            if erased_here(&id) {
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
    fn remember(&self, fetched: &[(Uuid, Standing)]) {
        let now = Instant::now();
        let mut cache = self.cache.lock().expect("governance cache");
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
