//! Tamper-evident audit log on PostgreSQL.
//!
//! Invariant: every row is appended through [`append`], inside the caller's
//! transaction, under one advisory lock, so the sequence is gap-free and the
//! hash chain linear across processes. Nothing updates or deletes a row (the
//! table's triggers refuse it). Callers that audit an operation do it in the
//! operation's own transaction, or before releasing its result (fail closed).

pub mod chain;
mod recorder;

pub use recorder::Recorder;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

/// Advisory lock key serialising appends ("lvaudit" in ASCII).
const AUDIT_LOCK_KEY: i64 = 0x6c76_6175_6469_74;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log unavailable: {0}")]
    Db(#[from] sqlx::Error),
    #[error("audit writer has stopped")]
    WriterGone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Denied,
    NotFound,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::NotFound => "not_found",
            Outcome::Error => "error",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "success" => Outcome::Success,
            "denied" => Outcome::Denied,
            "not_found" => Outcome::NotFound,
            "error" => Outcome::Error,
            _ => return None,
        })
    }
}

/// An audit entry to append. Never put a raw identity in any field:
/// targets are pseudonyms, details are codes and counts.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub request_id: Uuid,
    pub actor: String,
    pub roles: Vec<String>,
    pub institution: Option<String>,
    pub action: String,
    pub target: Option<Uuid>,
    pub purpose: Option<String>,
    pub justification: Option<String>,
    pub outcome: Outcome,
    pub detail: Value,
}

/// A stored audit row.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Entry {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub request_id: Uuid,
    pub actor: String,
    pub roles: Vec<String>,
    pub institution: Option<String>,
    pub action: String,
    pub target_pseudonym: Option<Uuid>,
    pub purpose: Option<String>,
    pub justification: Option<String>,
    pub outcome: String,
    #[schema(value_type = Object)]
    pub detail: Value,
    /// Hex SHA-256 of the previous row.
    pub prev_hash: String,
    /// Hex SHA-256 of this row.
    pub hash: String,
}

fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).expect("in range")
}

/// Append `entries` in the caller's transaction. Takes the chain lock until
/// that transaction ends: call it last, just before commit.
pub async fn append(conn: &mut PgConnection, entries: &[NewEntry]) -> Result<Vec<i64>, AuditError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query!("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK_KEY).execute(&mut *conn).await?;
    let head = sqlx::query!("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let (mut seq, mut prev) = head.map(|r| (r.seq, r.hash)).unwrap_or((0, chain::GENESIS.to_vec()));
    let at = now_micros();
    let n = entries.len();
    let (mut seqs, mut ats, mut rids, mut actors, mut roles, mut insts) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut actions, mut targets, mut purposes, mut justs, mut outcomes, mut details, mut prevs, mut hashes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for e in entries {
        seq += 1;
        let h = chain::hash(
            &prev,
            &chain::Row {
                seq,
                at,
                request_id: e.request_id,
                actor: &e.actor,
                roles: &e.roles,
                institution: e.institution.as_deref(),
                action: &e.action,
                target: e.target,
                purpose: e.purpose.as_deref(),
                justification: e.justification.as_deref(),
                outcome: e.outcome.as_str(),
                detail: &e.detail,
            },
        );
        seqs.push(seq);
        ats.push(at);
        rids.push(e.request_id);
        actors.push(e.actor.clone());
        roles.push(serde_json::to_string(&e.roles).expect("strings serialise"));
        insts.push(e.institution.clone());
        actions.push(e.action.clone());
        targets.push(e.target);
        purposes.push(e.purpose.clone());
        justs.push(e.justification.clone());
        outcomes.push(e.outcome.as_str().to_owned());
        details.push(e.detail.clone());
        prevs.push(std::mem::replace(&mut prev, h.to_vec()));
        hashes.push(h.to_vec());
    }
    sqlx::query!(
        r#"INSERT INTO audit_log (seq, at, request_id, actor, roles, institution_id, action, target_pseudonym,
                                  purpose, justification, outcome, detail, prev_hash, hash)
           SELECT u.seq, u.at, u.rid, u.actor, ARRAY(SELECT jsonb_array_elements_text(u.roles::jsonb)),
                  u.inst, u.action, u.target, u.purpose, u.just, u.outcome, u.detail, u.prev, u.hash
           FROM UNNEST($1::bigint[], $2::timestamptz[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[],
                       $8::uuid[], $9::text[], $10::text[], $11::text[], $12::jsonb[], $13::bytea[], $14::bytea[])
                AS u(seq, at, rid, actor, roles, inst, action, target, purpose, just, outcome, detail, prev, hash)"#,
        &seqs,
        &ats,
        &rids,
        &actors,
        &roles,
        &insts as &[Option<String>],
        &actions,
        &targets as &[Option<Uuid>],
        &purposes as &[Option<String>],
        &justs as &[Option<String>],
        &outcomes,
        &details,
        &prevs,
        &hashes,
    )
    .execute(&mut *conn)
    .await?;
    metrics::counter!("learnvault_audit_rows_total").increment(n as u64);
    Ok(seqs)
}

/// Filters for listing; `None` means "any".
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<Uuid>,
    pub outcome: Option<Outcome>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Only rows with `seq` greater than this (keyset pagination).
    pub after_seq: i64,
    /// `None`: every institution (platform-wide principals); otherwise rows of these institutions.
    pub institutions: Option<Vec<String>>,
    pub limit: i64,
}

pub async fn list(pool: &PgPool, f: &Filter) -> Result<Vec<Entry>, AuditError> {
    let all = f.institutions.is_none();
    let insts = f.institutions.clone().unwrap_or_default();
    let rows = sqlx::query!(
        r#"SELECT seq, at, request_id, actor, roles, institution_id, action, target_pseudonym, purpose,
                  justification, outcome, detail, prev_hash, hash
           FROM audit_log
           WHERE seq > $1
             AND ($2::text IS NULL OR actor = $2)
             AND ($3::text IS NULL OR action = $3)
             AND ($4::uuid IS NULL OR target_pseudonym = $4)
             AND ($5::text IS NULL OR outcome = $5)
             AND ($6::timestamptz IS NULL OR at >= $6)
             AND ($7::timestamptz IS NULL OR at < $7)
             AND ($8::bool OR institution_id = ANY($9::text[]))
           ORDER BY seq
           LIMIT $10"#,
        f.after_seq,
        f.actor,
        f.action,
        f.target,
        f.outcome.map(|o| o.as_str()),
        f.from,
        f.to,
        all,
        &insts,
        f.limit,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Entry {
            seq: r.seq,
            at: r.at,
            request_id: r.request_id,
            actor: r.actor,
            roles: r.roles,
            institution: r.institution_id,
            action: r.action,
            target_pseudonym: r.target_pseudonym,
            purpose: r.purpose,
            justification: r.justification,
            outcome: r.outcome,
            detail: r.detail,
            prev_hash: hex::encode(r.prev_hash),
            hash: hex::encode(r.hash),
        })
        .collect())
}

/// Result of a chain verification.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct Verification {
    pub intact: bool,
    /// Rows checked.
    pub entries: i64,
    /// Sequence number of the last row when intact.
    pub head_seq: i64,
    /// First sequence number at which the chain breaks.
    pub first_broken_seq: Option<i64>,
    /// `missing_row`, `prev_hash_mismatch` or `hash_mismatch`.
    pub reason: Option<String>,
}

/// Recompute the whole chain, streaming (bounded memory).
pub async fn verify(pool: &PgPool) -> Result<Verification, AuditError> {
    let mut rows = sqlx::query!(
        r#"SELECT seq, at, request_id, actor, roles, institution_id, action, target_pseudonym, purpose,
                  justification, outcome, detail, prev_hash, hash
           FROM audit_log ORDER BY seq"#
    )
    .fetch(pool);
    let mut expected_seq = 1i64;
    let mut prev = chain::GENESIS.to_vec();
    let mut count = 0i64;
    let broken = |seq: i64, reason: &str, count: i64| Verification {
        intact: false,
        entries: count,
        head_seq: seq - 1,
        first_broken_seq: Some(seq),
        reason: Some(reason.to_owned()),
    };
    while let Some(r) = rows.try_next().await? {
        if r.seq != expected_seq {
            return Ok(broken(expected_seq, "missing_row", count));
        }
        if r.prev_hash != prev {
            return Ok(broken(r.seq, "prev_hash_mismatch", count));
        }
        let h = chain::hash(
            &prev,
            &chain::Row {
                seq: r.seq,
                at: r.at,
                request_id: r.request_id,
                actor: &r.actor,
                roles: &r.roles,
                institution: r.institution_id.as_deref(),
                action: &r.action,
                target: r.target_pseudonym,
                purpose: r.purpose.as_deref(),
                justification: r.justification.as_deref(),
                outcome: &r.outcome,
                detail: &r.detail,
            },
        );
        if h.as_slice() != r.hash.as_slice() {
            return Ok(broken(r.seq, "hash_mismatch", count));
        }
        prev = r.hash;
        expected_seq += 1;
        count += 1;
    }
    Ok(Verification { intact: true, entries: count, head_seq: expected_seq - 1, first_broken_seq: None, reason: None })
}
