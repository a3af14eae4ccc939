//! Tamper-evident audit log on PostgreSQL.
//!
//! Invariant: every row is appended through [`append`], inside the caller's
//! transaction, under one advisory lock, so the sequence is gap-free and the
//! hash chain linear across processes. Nothing updates or deletes a row (the
//! table's triggers refuse it). Callers that audit an operation do it in the
//! operation's own transaction, or before releasing its result (fail closed).

pub mod chain;
pub mod checkpoint;
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
const AUDIT_LOCK_KEY: i64 = 0x006c_7661_7564_6974;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log unavailable: {0}")]
    Db(#[from] sqlx::Error),
    #[error("audit writer has stopped")]
    WriterGone,
    #[error("audit checkpoints: {0}")]
    Checkpoint(String),
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

/// What an audit entry records: appended as it is, and stored in an `Entry` with its sequence
/// number, time and hashes. Never put a raw identity in any field: targets are pseudonyms,
/// details are codes and counts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NewEntry {
    pub request_id: Uuid,
    pub actor: String,
    pub roles: Vec<String>,
    pub institution: Option<String>,
    pub action: String,
    #[serde(rename = "target_pseudonym")]
    pub target: Option<Uuid>,
    pub purpose: Option<String>,
    pub justification: Option<String>,
    pub outcome: Outcome,
    #[schema(value_type = Object)]
    pub detail: Value,
}

impl NewEntry {
    /// The entry as PostgreSQL can store it: `text` and `jsonb` cannot hold U+0000, which a
    /// caller's free text (a justification, a purpose, a course id in `detail`) may carry; it
    /// becomes U+FFFD. Without this one such request failed its whole group commit (every
    /// caller in the batch refused with 503 `audit_unavailable`).
    pub fn storable(mut self) -> NewEntry {
        fn clean(s: &mut String) {
            if s.contains('\0') {
                *s = s.replace('\0', "\u{FFFD}");
            }
        }
        fn clean_json(v: &mut Value) {
            match v {
                Value::String(s) => clean(s),
                Value::Array(a) => a.iter_mut().for_each(clean_json),
                Value::Object(m) => {
                    if m.keys().any(|k| k.contains('\0')) {
                        *m = std::mem::take(m).into_iter().map(|(mut k, v)| (clean_return(&mut k), v)).collect();
                    }
                    m.values_mut().for_each(clean_json);
                }
                _ => {}
            }
        }
        fn clean_return(s: &mut String) -> String {
            clean(s);
            std::mem::take(s)
        }
        clean(&mut self.actor);
        self.roles.iter_mut().for_each(clean);
        clean(&mut self.action);
        for s in [&mut self.institution, &mut self.purpose, &mut self.justification].into_iter().flatten() {
            clean(s);
        }
        clean_json(&mut self.detail);
        self
    }
}

/// A stored audit row.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Entry {
    pub seq: i64,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    #[schema(inline)]
    pub entry: NewEntry,
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
    let entries: Vec<NewEntry> = entries.iter().cloned().map(NewEntry::storable).collect();
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
    for e in &entries {
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
    rows.into_iter()
        .map(|r| {
            // The table's CHECK admits exactly the outcomes `Outcome` names.
            let outcome = Outcome::parse(&r.outcome)
                .ok_or_else(|| AuditError::Db(sqlx::Error::Decode(format!("audit row {}: outcome {:?}", r.seq, r.outcome).into())))?;
            let entry = NewEntry {
                request_id: r.request_id,
                actor: r.actor,
                roles: r.roles,
                institution: r.institution_id,
                action: r.action,
                target: r.target_pseudonym,
                purpose: r.purpose,
                justification: r.justification,
                outcome,
                detail: r.detail,
            };
            Ok(Entry { seq: r.seq, at: r.at, entry, prev_hash: hex::encode(r.prev_hash), hash: hex::encode(r.hash) })
        })
        .collect()
}

/// Result of a chain verification.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct Verification {
    pub intact: bool,
    /// `missing_row`, `prev_hash_mismatch`, `hash_mismatch`; against the signed
    /// checkpoints: `truncated` (rows a checkpoint covers are gone),
    /// `checkpoint_mismatch` (rows rewritten and rehashed), `checkpoint_untrusted`
    /// (a checkpoint not signed by this deployment's key).
    pub reason: Option<String>,
    /// What is missing or differs, in words (sequence numbers and times, never data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Rows checked.
    pub entries: i64,
    /// Sequence number of the last row when intact.
    pub head_seq: i64,
    /// First sequence number at which the chain breaks.
    pub first_broken_seq: Option<i64>,
    /// The latest signed checkpoint the chain was checked against (or, when
    /// intact, the one signed for its head).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<checkpoint::Head>,
    /// Rows up to this sequence number were pruned (retention) below a signed checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruned_below: Option<i64>,
}

impl Verification {
    fn broken(seq: i64, reason: &str, count: i64) -> Verification {
        Verification {
            intact: false,
            entries: count,
            head_seq: seq - 1,
            first_broken_seq: Some(seq),
            reason: Some(reason.to_owned()),
            detail: None,
            checkpoint: None,
            pruned_below: None,
        }
    }
}

/// Recompute the whole chain, streaming (bounded memory). The chain alone:
/// see [`verify_anchored`] for the check against the signed checkpoints.
pub async fn verify(pool: &PgPool) -> Result<Verification, AuditError> {
    Ok(walk(pool, 0, chain::GENESIS.to_vec(), &std::collections::BTreeMap::new()).await?.0)
}

/// Walk the rows after `after_seq` (whose hash is `prev`), checking each
/// link and, where a checkpoint exists (`anchors`: seq -> hash), that the row
/// still has the hash that was signed. Returns the verification and the head.
async fn walk(
    pool: &PgPool,
    after_seq: i64,
    mut prev: Vec<u8>,
    anchors: &std::collections::BTreeMap<i64, Vec<u8>>,
) -> Result<(Verification, Option<checkpoint::Head>), AuditError> {
    let mut rows = sqlx::query!(
        r#"SELECT seq, at, request_id, actor, roles, institution_id, action, target_pseudonym, purpose,
                  justification, outcome, detail, prev_hash, hash
           FROM audit_log WHERE seq > $1 ORDER BY seq"#,
        after_seq
    )
    .fetch(pool);
    let mut expected_seq = after_seq + 1;
    let mut count = 0i64;
    let mut head = None;
    let mut pruned_below = None;
    while let Some(r) = rows.try_next().await? {
        if r.seq != expected_seq {
            // The first rows may have been pruned (retention) below a signed checkpoint
            // whose hash is this row's `prev_hash`.
            let anchored = count == 0 && after_seq == 0 && anchors.get(&(r.seq - 1)) == Some(&r.prev_hash);
            if !anchored {
                return Ok((Verification::broken(expected_seq, "missing_row", count), head));
            }
            pruned_below = Some(r.seq - 1);
            prev = r.prev_hash.clone();
            expected_seq = r.seq;
        }
        if r.prev_hash != prev {
            return Ok((Verification::broken(r.seq, "prev_hash_mismatch", count), head));
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
            return Ok((Verification::broken(r.seq, "hash_mismatch", count), head));
        }
        if let Some(signed) = anchors.get(&r.seq) {
            if signed != &r.hash {
                // Self-consistent, but not the chain that was signed: rows up to here were rewritten and rehashed.
                let since = anchors.range(..r.seq).next_back().map(|(s, _)| *s).unwrap_or(0);
                let mut v = Verification::broken(since + 1, "checkpoint_mismatch", count);
                v.detail = Some(format!(
                    "the row at seq {} no longer has the hash signed in its checkpoint: rows {}..={} were rewritten and rehashed",
                    r.seq,
                    since + 1,
                    r.seq
                ));
                return Ok((v, head));
            }
        }
        head = Some(checkpoint::Head { seq: r.seq, hash: hex::encode(&r.hash), at: r.at });
        prev = r.hash;
        expected_seq += 1;
        count += 1;
    }
    let v = Verification {
        intact: true,
        entries: count,
        head_seq: expected_seq - 1,
        first_broken_seq: None,
        reason: None,
        detail: None,
        checkpoint: None,
        pruned_below,
    };
    Ok((v, head))
}

/// Verify the chain against the signed checkpoints of `anchor`'s store: every
/// link, every row a checkpoint covers still present (a truncated tail fails,
/// naming the missing sequence numbers) and still hashing to what was signed
/// (a rewritten-and-rehashed chain fails). When intact, the head is signed
/// into a new checkpoint.
pub async fn verify_anchored(pool: &PgPool, anchor: &checkpoint::Anchor) -> Result<Verification, AuditError> {
    let checkpoints = match anchor.load_all() {
        Ok(c) => c,
        Err(checkpoint::CheckpointError::Untrusted { file, why }) => {
            let mut v = Verification::broken(0, "checkpoint_untrusted", 0);
            v.first_broken_seq = None;
            v.head_seq = 0;
            v.detail = Some(format!("{file}: {why}"));
            return Ok(v);
        }
        Err(e) => return Err(AuditError::Checkpoint(e.to_string())),
    };
    let anchors: std::collections::BTreeMap<i64, Vec<u8>> =
        checkpoints.iter().filter_map(|c| Some((c.head.seq, hex::decode(&c.head.hash).ok()?))).collect();
    let latest = checkpoints.last().map(|c| c.head.clone());
    let (mut v, head) = walk(pool, 0, chain::GENESIS.to_vec(), &anchors).await?;
    if v.intact {
        if let Some(cp) = checkpoints.last().filter(|c| c.head.seq > v.head_seq) {
            let mut t = Verification::broken(v.head_seq + 1, "truncated", v.entries);
            t.detail = Some(format!(
                "rows {}..={} are missing: the checkpoint signed at {} covers the chain up to seq {}",
                v.head_seq + 1,
                cp.head.seq,
                cp.signed_at,
                cp.head.seq
            ));
            t.checkpoint = latest;
            return Ok(t);
        }
        if let Some(h) = head {
            v.checkpoint = Some(anchor.store(&h).map_err(|e| AuditError::Checkpoint(e.to_string()))?.head);
        }
    } else {
        v.checkpoint = latest;
    }
    Ok(v)
}

/// Sign the current head if the rows since the latest checkpoint chain onto
/// it (an incremental check, run at an interval by `serve` and by
/// `GET /v1/audit/checkpoint`). Returns the latest checkpoint document, or the
/// verification that refused to sign.
pub async fn checkpoint_now(pool: &PgPool, anchor: &checkpoint::Anchor) -> Result<Result<Option<Value>, Verification>, AuditError> {
    let latest = anchor.load_all().map_err(|e| AuditError::Checkpoint(e.to_string()))?.pop();
    let (after, prev) = match &latest {
        Some(c) => (c.head.seq, hex::decode(&c.head.hash).map_err(|_| AuditError::Checkpoint("unreadable hash".into()))?),
        None => (0, chain::GENESIS.to_vec()),
    };
    let (mut v, head) = walk(pool, after, prev.clone(), &std::collections::BTreeMap::new()).await?;
    if v.intact && after > 0 {
        // The row the latest checkpoint signed must still be there, with the signed hash.
        let at_cp: Option<Vec<u8>> = sqlx::query_scalar!("SELECT hash FROM audit_log WHERE seq = $1", after).fetch_optional(pool).await?;
        match at_cp {
            None => {
                let last: Option<i64> = sqlx::query_scalar!("SELECT max(seq) FROM audit_log").fetch_one(pool).await?;
                v = Verification::broken(last.unwrap_or(0) + 1, "truncated", 0);
                v.detail = Some(format!("rows {}..={after} are missing: the latest checkpoint covers them", last.unwrap_or(0) + 1));
            }
            Some(h) if h != prev => {
                v = Verification::broken(after, "checkpoint_mismatch", 0);
                v.detail = Some(format!("the row at seq {after} no longer has the hash signed in the latest checkpoint"));
            }
            Some(_) => {}
        }
    }
    if !v.intact {
        tracing::error!(first_broken_seq = ?v.first_broken_seq, reason = ?v.reason, "AUDIT CHAIN BROKEN since the latest checkpoint; not signing");
        return Ok(Err(v));
    }
    match head {
        Some(h) => Ok(Ok(Some(anchor.store(&h).map_err(|e| AuditError::Checkpoint(e.to_string()))?.doc))),
        None => Ok(Ok(latest.map(|c| c.doc))),
    }
}

/// `serve`'s anchoring loop: a checkpoint every `every` until `stop`.
pub async fn anchor_loop(pool: PgPool, anchor: std::sync::Arc<checkpoint::Anchor>, every: std::time::Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if let Err(e) = checkpoint_now(&pool, &anchor).await {
            tracing::warn!(error = %e, "cannot write an audit checkpoint now; retrying at the next interval");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Audit retention (`policies/retention.yaml` `postgres.audit_log`): delete the
/// rows past retention up to the newest signed checkpoint they reach, so the
/// chain stays verifiable from that checkpoint (`pruned_below`). Only through
/// `audit_log_prune` (the table stays append-only for everyone else), whose
/// retention period the owner sets. Returns `(up_to_seq, rows)` when it pruned.
pub async fn prune(pool: &PgPool, anchor: &checkpoint::Anchor) -> Result<Option<(i64, i64)>, AuditError> {
    let days: i32 = sqlx::query_scalar!("SELECT days FROM audit_retention").fetch_one(pool).await?;
    let cutoff = Utc::now() - chrono::Duration::days(i64::from(days));
    let checkpoints = anchor.load_all().map_err(|e| AuditError::Checkpoint(e.to_string()))?;
    let Some(cp) = checkpoints.iter().rev().find(|c| c.head.at < cutoff) else {
        return Ok(None);
    };
    // Prune only onto the chain that was signed: the next row links to the checkpoint's hash.
    let next = sqlx::query!("SELECT seq, prev_hash FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT 1", cp.head.seq)
        .fetch_optional(pool)
        .await?;
    match next {
        Some(n) if n.seq == cp.head.seq + 1 && hex::encode(&n.prev_hash) == cp.head.hash => {}
        _ => {
            tracing::error!(seq = cp.head.seq, "the chain does not continue from the checkpoint; not pruning");
            return Ok(None);
        }
    }
    let first: Option<i64> = sqlx::query_scalar!("SELECT min(seq) FROM audit_log").fetch_one(pool).await?;
    if first.is_some_and(|f| f > cp.head.seq) {
        return Ok(None);
    }
    let n: Option<i64> = sqlx::query_scalar!("SELECT audit_log_prune($1)", cp.head.seq).fetch_one(pool).await?;
    tracing::info!(up_to_seq = cp.head.seq, rows = n.unwrap_or(0), "audit log pruned below a signed checkpoint");
    Ok(Some((cp.head.seq, n.unwrap_or(0))))
}

#[cfg(test)]
mod storable_tests {
    use super::*;

    #[test]
    fn nul_characters_become_replacement_characters_everywhere_and_nothing_else_changes() {
        let e = NewEntry {
            request_id: Uuid::nil(),
            actor: "a\0b".into(),
            roles: vec!["dpo".into()],
            institution: Some("uni-a".into()),
            action: "pseudonym.resolve".into(),
            target: None,
            purpose: Some("x\0".into()),
            justification: Some("case\0 17 \u{e9}".into()),
            outcome: Outcome::Denied,
            detail: serde_json::json!({"k\0": ["v\0", 1, {"n": "ok"}]}),
        }
        .storable();
        assert_eq!(e.actor, "a\u{FFFD}b");
        assert_eq!(e.purpose.as_deref(), Some("x\u{FFFD}"));
        assert_eq!(e.justification.as_deref(), Some("case\u{FFFD} 17 \u{e9}"));
        assert_eq!(e.detail, serde_json::json!({"k\u{FFFD}": ["v\u{FFFD}", 1, {"n": "ok"}]}));
        assert_eq!(e.institution.as_deref(), Some("uni-a"));
    }
}
