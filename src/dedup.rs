//! Idempotent ingest: an event (its id and client time, [`EventKey`]; an xAPI statement id
//! is its event's id) lands once within the deduplication window, whatever carried it
//! twice: a client's retry through the gateway, a replayed topic, a producer writing the
//! same event to Kafka twice, a dead letter replayed twice.
//!
//! Invariants:
//! * the lander claims a batch's ids in PostgreSQL (`ingest_event_ids`, one row per event
//!   keyed by its client time and id ([`EventKey`]), naming the claiming batch) after the
//!   batch's intent is recorded and before its insert,
//!   and inserts only the ids it claimed, each once: an id another batch claimed is
//!   dropped (counted, not dead-lettered); an id this same batch claimed (its replay under
//!   its token, after a crash or a failed commit) is kept, so a replay still lands it;
//! * the filter is before the insert: the rollups are materialized views fed by the
//!   insert, so engine-side deduplication of the base table would not reach them;
//! * a batch the warehouse refuses as data (dead-lettered) releases its claims, so a
//!   corrected delivery can land;
//! * an xAPI statement id is recorded with a keyed digest of its content
//!   ([`XapiStatements`]): the same id with the same content is acknowledged again (and
//!   lands once, by the claim above), with other content it is a conflict (409);
//! * claims and digests older than the window (at least [`MIN_WINDOW_DAYS`],
//!   `LEARNVAULT_INGEST_DEDUP_WINDOW_DAYS`) are purged; no learner key is stored.
//!
//! The mechanism was chosen by measurement (BENCHMARKS.md, issue 13).

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The shortest window the settings accept: what issue 13 promises.
pub const MIN_WINDOW_DAYS: u32 = 7;

/// After a COPY met an id claimed already, this many claims are made by `ON CONFLICT`
/// directly (a replayed topic is all duplicates: a COPY would fail on every batch).
const UPSERT_AFTER_CONFLICT: u32 = 16;

/// Events dropped by the lander because their id landed already.
pub const DUPLICATES: &str = "learnvault_lander_duplicates_total";

/// Sets of event ids and of events' keys: foldhash (keyed per process) rather than SipHash,
/// a third of the cost per id on the lander's path (a batch's first occurrences, the claim's
/// answer when it is not all).
pub type IdSet = foldhash::HashSet<Uuid>;
pub type KeySet = foldhash::HashSet<EventKey>;

/// What a claim is keyed by: the event's client time, then its id (the claims' primary key).
/// Every delivery of one event carries both (a client's retry, a replayed topic, a producer
/// writing it twice, a dead letter replayed). Keyed by time first, the claims of new events
/// go into the newest part of the index however many the window holds: keyed by the random
/// id alone, each claim was an insert at a random page of an index of rate x window ids, and
/// the claims' cost grew with the window (BENCHMARKS.md, session 14). An id sent again with
/// another client time is taken for another event (as Snowplow keeps an event whose id
/// repeats with other content), in one batch as across batches, so what lands does not
/// depend on where batches begin; an xAPI statement id is checked on its own, by its content
/// ([`XapiStatements`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventKey {
    client_ts: DateTime<Utc>,
    event_id: Uuid,
}

impl EventKey {
    /// The key of the event `event_id` sent at `client_ts`, to the microsecond (PostgreSQL's
    /// precision: the claims answer with the keys they store).
    pub fn new(client_ts: DateTime<Utc>, event_id: Uuid) -> EventKey {
        use chrono::Timelike;
        // The nanoseconds cut to microseconds in place (a twentieth of the round trip through
        // microseconds since the epoch, which a leap second, PostgreSQL has none, still takes).
        let ns = client_ts.nanosecond();
        let client_ts = match client_ts.with_nanosecond(ns - ns % 1000) {
            Some(t) if ns < 1_000_000_000 => t,
            _ => DateTime::from_timestamp_micros(client_ts.timestamp_micros()).unwrap_or(client_ts),
        };
        EventKey { client_ts, event_id }
    }

    pub fn client_ts(&self) -> DateTime<Utc> {
        self.client_ts
    }

    pub fn event_id(&self) -> Uuid {
        self.event_id
    }
}

/// The size of a claim's `COPY` messages ([`Claims::claim`]).
const COPY_MESSAGE: usize = 64 * 1024;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01), for binary `timestamptz`.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// Whether claims made before the key had a client time may still be held ([`Claims`]).
const LEGACY_UNKNOWN: u8 = 0;
const LEGACY_HELD: u8 = 1;
const LEGACY_NONE: u8 = 2;

/// The answer to a claim: which of the ids the batch may land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// Every id (the common case: all claimed by one COPY), no set built.
    All,
    /// These only (some were claimed by another batch before).
    Only(KeySet),
}

impl Claimed {
    /// Whether the batch may land the event `key` (one of those it claimed for).
    pub fn allows(&self, key: &EventKey) -> bool {
        match self {
            Claimed::All => true,
            Claimed::Only(mine) => mine.contains(key),
        }
    }

    /// The ids of the events among `keys` (those claimed for) that the batch may land.
    pub fn of(&self, keys: &[EventKey]) -> std::collections::HashSet<Uuid> {
        keys.iter().filter(|k| self.allows(k)).map(|k| k.event_id).collect()
    }
}

/// A batch's key in `ingest_event_ids`: the first 8 bytes of SHA-256 of its token.
pub fn batch_key(token: &str) -> i64 {
    let h = Sha256::digest(token.as_bytes());
    i64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
}

/// The lander's claims on event ids.
#[derive(Clone)]
pub struct Claims {
    pool: PgPool,
    window: Duration,
    /// Claims left to make by `ON CONFLICT` before trying a COPY again.
    upsert_left: Arc<AtomicU32>,
    /// Claims made before migration 0013 are keyed by id alone (client time `-infinity`):
    /// while any is held (one window after the upgrade), a claim first looks its ids up among
    /// them. Known after the first claim, and again after each purge.
    legacy: Arc<AtomicU8>,
    /// A lander's claims are made one at a time (its batches in flight claim in turn): in key
    /// order, one batch's claims go mostly onto the claims index's rightmost page, where two
    /// at once would interleave. Taken before the statement; no lock is held while waiting.
    one_at_a_time: Arc<tokio::sync::Mutex<()>>,
}

impl Claims {
    pub fn new(pool: PgPool, window_days: u32) -> Claims {
        Claims {
            pool,
            window: Duration::from_secs(u64::from(window_days) * 86_400),
            upsert_left: Arc::default(),
            legacy: Arc::new(AtomicU8::new(LEGACY_UNKNOWN)),
            one_at_a_time: Arc::default(),
        }
    }

    /// Claim `keys` (distinct) for the batch with deduplication token `token`; returns the
    /// ids the batch may land: those it claimed now, and those it had claimed before (its
    /// own replay). In key order, in one statement (keyed by client time first, a batch's
    /// claims go mostly onto the claims index's rightmost page, which PostgreSQL inserts into
    /// without descending the index; claimed per member partition at once on two connections,
    /// they interleaved there, and the lander landed 0.9x the events per second: BENCHMARKS.md,
    /// session 15). Two landers claiming overlapping ids at once wait on each other in key
    /// order, never in a cycle.
    ///
    /// The keys are first claimed whole by one binary `COPY` (no per-row speculative insertion,
    /// nothing returned: 1.3 times the ids per second of `ON CONFLICT`, BENCHMARKS.md): the
    /// unique key refuses it whole when one of its ids is claimed already (by another batch or
    /// lander, or by this batch: its replay), and then they are claimed by `INSERT ... ON
    /// CONFLICT DO NOTHING`. Either way the unique key decides: atomic across batches and
    /// landers, and a replay keeps its own claims.
    pub async fn claim(&self, token: &str, keys: &[EventKey]) -> Result<Claimed, sqlx::Error> {
        self.claim_by(token, keys, true).await
    }

    /// [`Claims::claim`] without the COPY (`ON CONFLICT` every time): the benchmark's reference.
    pub async fn claim_upsert(&self, token: &str, keys: &[EventKey]) -> Result<Claimed, sqlx::Error> {
        self.claim_by(token, keys, false).await
    }

    async fn claim_by(&self, token: &str, keys: &[EventKey], copy: bool) -> Result<Claimed, sqlx::Error> {
        let batch = batch_key(token);
        let before = self.legacy_taken(batch, keys).await?;
        let mut sorted: Vec<EventKey> = keys.iter().filter(|k| !before.contains(&k.event_id)).copied().collect();
        sorted.sort_unstable();
        let claimed = self.claim_sorted(batch, &sorted, copy).await?;
        Ok(match claimed {
            Claimed::All if before.is_empty() => Claimed::All,
            Claimed::All => Claimed::Only(sorted.iter().copied().collect()),
            only => only,
        })
    }

    /// The ids among `keys` claimed before migration 0013 by another batch than `batch`
    /// (none once no such claim is held: one query per lander, then none).
    async fn legacy_taken(&self, batch: i64, keys: &[EventKey]) -> Result<IdSet, sqlx::Error> {
        if self.legacy.load(Ordering::Relaxed) == LEGACY_UNKNOWN {
            self.check_legacy().await?;
        }
        if self.legacy.load(Ordering::Relaxed) != LEGACY_HELD {
            return Ok(IdSet::default());
        }
        let ids: Vec<Uuid> = keys.iter().map(|k| k.event_id).collect();
        Ok(sqlx::query_scalar!(
            "SELECT event_id FROM ingest_event_ids WHERE client_ts = '-infinity' AND event_id = ANY($1) AND batch <> $2",
            &ids,
            batch
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect())
    }

    async fn check_legacy(&self) -> Result<(), sqlx::Error> {
        let held = sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM ingest_event_ids WHERE client_ts = '-infinity') AS "held!""#)
            .fetch_one(&self.pool)
            .await?;
        self.legacy.store(if held { LEGACY_HELD } else { LEGACY_NONE }, Ordering::Relaxed);
        Ok(())
    }

    async fn claim_sorted(&self, batch: i64, sorted: &[EventKey], copy: bool) -> Result<Claimed, sqlx::Error> {
        if sorted.is_empty() {
            return Ok(Claimed::All);
        }
        let _turn = self.one_at_a_time.lock().await;
        if copy && self.upsert_left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_err() {
            match self.copy_claims(batch, sorted).await {
                Ok(()) => return Ok(Claimed::All),
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
                    self.upsert_left.store(UPSERT_AFTER_CONFLICT, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        let mine = self.upsert_claims(batch, sorted).await?;
        Ok(if mine.len() == sorted.len() { Claimed::All } else { Claimed::Only(mine) })
    }

    /// Claim every key (sorted, distinct) in one binary COPY, or none of them: a
    /// unique violation (`23505`) when one is claimed already.
    async fn copy_claims(&self, batch: i64, keys: &[EventKey]) -> Result<(), sqlx::Error> {
        // PGCOPY binary: signature, flags, header extension; per row 3 fields (timestamptz,
        // uuid, int8); trailer.
        let mut buf = Vec::with_capacity(19 + keys.len() * 46 + 2);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes());
        buf.extend_from_slice(&0i32.to_be_bytes());
        for k in keys {
            buf.extend_from_slice(&3i16.to_be_bytes());
            buf.extend_from_slice(&8i32.to_be_bytes());
            buf.extend_from_slice(&(k.client_ts.timestamp_micros() - PG_EPOCH_US).to_be_bytes());
            buf.extend_from_slice(&16i32.to_be_bytes());
            buf.extend_from_slice(k.event_id.as_bytes());
            buf.extend_from_slice(&8i32.to_be_bytes());
            buf.extend_from_slice(&batch.to_be_bytes());
        }
        buf.extend_from_slice(&(-1i16).to_be_bytes());
        let mut conn = self.pool.acquire().await?;
        let mut copy = conn.copy_in_raw("COPY ingest_event_ids (client_ts, event_id, batch) FROM STDIN (FORMAT binary)").await?;
        // In messages of COPY_MESSAGE bytes: the server buffers one message at a time (a
        // batch's claims in one message would be a buffer of megabytes in the backend).
        for part in buf.chunks(COPY_MESSAGE) {
            if let Err(e) = copy.send(part).await {
                // The connection goes back to the pool only after the server ended the COPY.
                let _ = copy.abort("the claim could not be sent").await;
                return Err(e);
            }
        }
        copy.finish().await?;
        Ok(())
    }

    /// One statement for the keys, and a second only when some key was claimed already.
    async fn upsert_claims(&self, batch: i64, keys: &[EventKey]) -> Result<KeySet, sqlx::Error> {
        let (times, ids): (Vec<DateTime<Utc>>, Vec<Uuid>) = keys.iter().map(|k| (k.client_ts, k.event_id)).unzip();
        let mut mine: KeySet = sqlx::query!(
            r#"INSERT INTO ingest_event_ids (client_ts, event_id, batch) SELECT t, id, $3 FROM UNNEST($1::timestamptz[], $2::uuid[]) AS u(t, id)
               ON CONFLICT (client_ts, event_id) DO NOTHING RETURNING client_ts, event_id"#,
            &times,
            &ids,
            batch
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| EventKey { client_ts: r.client_ts, event_id: r.event_id })
        .collect();
        if mine.len() < keys.len() {
            let (times, ids): (Vec<DateTime<Utc>>, Vec<Uuid>) =
                keys.iter().filter(|k| !mine.contains(k)).map(|k| (k.client_ts, k.event_id)).unzip();
            let own = sqlx::query!(
                r#"SELECT c.client_ts, c.event_id FROM ingest_event_ids c JOIN UNNEST($1::timestamptz[], $2::uuid[]) AS u(t, id)
                     ON c.client_ts = u.t AND c.event_id = u.id WHERE c.batch = $3"#,
                &times,
                &ids,
                batch
            )
            .fetch_all(&self.pool)
            .await?;
            mine.extend(own.into_iter().map(|r| EventKey { client_ts: r.client_ts, event_id: r.event_id }));
        }
        Ok(mine)
    }

    /// Forget the claims of the batch `token` for `keys` (what it claimed for, or more: the warehouse
    /// refused it as data, it was dead-lettered, and a corrected delivery must be able to
    /// land). Read by the key's time range (and the claims from before migration 0013), not
    /// by a scan of the window's claims.
    pub async fn release(&self, token: &str, keys: &[EventKey]) -> Result<u64, sqlx::Error> {
        let (Some(first), Some(last)) = (keys.iter().map(|k| k.client_ts).min(), keys.iter().map(|k| k.client_ts).max()) else {
            return Ok(0);
        };
        Ok(sqlx::query!(
            "DELETE FROM ingest_event_ids WHERE batch = $1 AND (client_ts BETWEEN $2 AND $3 OR client_ts = '-infinity')",
            batch_key(token),
            first,
            last
        )
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Delete the claims and xAPI digests older than the window (a claim: by its claim, and by
    /// its event's client time unless that lies ahead of now); returns the rows deleted.
    /// (Then whether claims keyed by id alone are still held.)
    pub async fn purge(&self) -> Result<u64, sqlx::Error> {
        let secs = self.window.as_secs_f64();
        // By the key's time (its two ends: old, and ahead of now), then the claim's: an event
        // sent late keeps its claim for the window after its delivery (migration 0014).
        let a = sqlx::query!(
            "DELETE FROM ingest_event_ids WHERE (client_ts < now() - make_interval(secs => $1) OR client_ts > now())
               AND seen_at < now() - make_interval(secs => $1)",
            secs
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        let b = sqlx::query!("DELETE FROM xapi_statements WHERE stored_at < now() - make_interval(secs => $1)", secs)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if self.legacy.load(Ordering::Relaxed) != LEGACY_NONE {
            self.check_legacy().await?;
        }
        Ok(a + b)
    }

    /// Purge every hour, for the life of the process (one task per lander; purges are cheap
    /// when nothing is due).
    pub fn spawn_purge(&self) -> tokio::task::JoinHandle<()> {
        let claims = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3600));
            loop {
                every.tick().await;
                match claims.purge().await {
                    Ok(n) if n > 0 => tracing::info!(rows = n, "purged event-id claims older than the deduplication window"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot purge old event-id claims; next hour"),
                }
            }
        })
    }
}

/// What an xAPI statement id already stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// First time seen (now recorded), or seen with the same content.
    Fresh,
    Same,
    /// Seen with other content (or for another institution): 409.
    Conflict,
}

/// The xAPI statements the gateway acknowledged: id -> keyed digest of the content.
pub struct XapiStatements {
    pool: PgPool,
    key: zeroize::Zeroizing<[u8; 32]>,
}

impl XapiStatements {
    /// `key`: a service key of the vault's master key (`Vault::service_key("xapi-statement-digest")`).
    pub fn new(pool: PgPool, key: zeroize::Zeroizing<[u8; 32]>) -> XapiStatements {
        XapiStatements { pool, key }
    }

    /// The keyed digest of a statement's content: HMAC-SHA256 over its JSON with sorted keys,
    /// without what the LRS or a re-sender may set differently (`stored`, `authority`,
    /// `version`).
    pub fn digest(&self, statement: &serde_json::Value) -> Vec<u8> {
        content_digest(&self.key, statement)
    }

    /// Record `statements` (id, digest) of `institution`, all or nothing: when one id is
    /// stored already with another digest (or for another institution), nothing is recorded
    /// and that id's answer is [`Stored::Conflict`]. Answers in order, each with the time the
    /// id was first stored (xAPI's `stored`: the `timestamp` of a statement sent without one,
    /// the same on every retry, so its event's claim key is too).
    pub async fn record(&self, institution: &str, statements: &[(Uuid, Vec<u8>)]) -> Result<Vec<(Stored, DateTime<Utc>)>, sqlx::Error> {
        let ids: Vec<Uuid> = statements.iter().map(|s| s.0).collect();
        let digests: Vec<Vec<u8>> = statements.iter().map(|s| s.1.clone()).collect();
        let mut tx = self.pool.begin().await?;
        let fresh: std::collections::HashMap<Uuid, DateTime<Utc>> = sqlx::query!(
            r#"INSERT INTO xapi_statements (statement_id, institution, digest)
               SELECT id, $2, d FROM UNNEST($1::uuid[], $3::bytea[]) AS t(id, d)
               ON CONFLICT (statement_id) DO NOTHING RETURNING statement_id, stored_at"#,
            &ids,
            institution,
            &digests
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| (r.statement_id, r.stored_at))
        .collect();
        let now = Utc::now();
        let mut out: Vec<(Stored, DateTime<Utc>)> =
            ids.iter().map(|i| fresh.get(i).map_or((Stored::Conflict, now), |at| (Stored::Fresh, *at))).collect();
        if fresh.len() < ids.len() {
            let known: Vec<Uuid> = ids.iter().filter(|i| !fresh.contains_key(i)).copied().collect();
            let rows =
                sqlx::query!("SELECT statement_id, institution, digest, stored_at FROM xapi_statements WHERE statement_id = ANY($1)", &known)
                    .fetch_all(&mut *tx)
                    .await?;
            for r in rows {
                for (ix, (id, d)) in statements.iter().enumerate() {
                    if *id == r.statement_id && !fresh.contains_key(id) && r.institution == institution && r.digest == *d {
                        out[ix] = (Stored::Same, r.stored_at);
                    }
                }
            }
        }
        if out.iter().any(|(s, _)| *s == Stored::Conflict) {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(out)
    }
}

fn content_digest(key: &[u8; 32], statement: &serde_json::Value) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut st = statement.clone();
    if let Some(m) = st.as_object_mut() {
        for k in ["stored", "authority", "version"] {
            m.remove(k);
        }
    }
    let canonical = serde_json::to_vec(&sorted(st)).expect("json");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(&canonical);
    mac.finalize().into_bytes().to_vec()
}

/// `v` with every object's keys sorted (serde_json's map keeps them sorted unless
/// `preserve_order` is on; rebuilding makes the digest independent of that feature).
fn sorted(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let mut pairs: Vec<(String, Value)> = m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(pairs.into_iter().collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_key_is_stable_and_tokens_differ() {
        assert_eq!(batch_key("learning-events:0:1-5"), batch_key("learning-events:0:1-5"));
        assert_ne!(batch_key("learning-events:0:1-5"), batch_key("learning-events:0:1-6"));
    }

    #[test]
    fn a_key_keeps_the_microseconds_postgresql_stores() {
        use chrono::{NaiveDate, TimeZone};
        let id = Uuid::nil();
        let at = |ns: u32| Utc.from_utc_datetime(&NaiveDate::from_ymd_opt(2026, 6, 30).unwrap().and_hms_nano_opt(23, 59, 59, ns).unwrap());
        let by_micros = |t: DateTime<Utc>| DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap();
        let before_1970 = DateTime::from_timestamp(-86_399, 999_999_999).unwrap();
        // A leap second (nanoseconds past 1e9) as PostgreSQL stores it: the next second.
        for t in [at(0), at(123_456_789), at(999_999_999), at(1_000_000_500), before_1970] {
            assert_eq!(EventKey::new(t, id).client_ts(), by_micros(t), "{t:?}");
        }
        assert_eq!(EventKey::new(at(123_456_789), id).client_ts(), at(123_456_000));
    }

    #[test]
    fn a_digest_ignores_key_order_and_what_the_lrs_sets() {
        let key = [7u8; 32];
        let a = serde_json::json!({"id": "1", "verb": {"id": "v", "display": {"en": "x"}}, "stored": "2026-01-01T00:00:00Z"});
        let b = serde_json::json!({"verb": {"display": {"en": "x"}, "id": "v"}, "id": "1", "version": "1.0.3"});
        let c = serde_json::json!({"verb": {"display": {"en": "y"}, "id": "v"}, "id": "1"});
        assert_eq!(content_digest(&key, &a), content_digest(&key, &b));
        assert_ne!(content_digest(&key, &a), content_digest(&key, &c));
    }
}
