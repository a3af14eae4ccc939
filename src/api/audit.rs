//! `/v1/audit`: list (filtered, keyset-paginated) and verify.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{AppQuery, AppState, Error, ErrorBody, Principal};
use crate::audit::{self, Entry, Filter, Outcome, Verification};
use crate::domain::Pseudonym;
use crate::policy::Permission;

pub fn router() -> OpenApiRouter<AppState> {
    super::area([routes!(list), routes!(verify), routes!(checkpoint)])
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Exact actor (token `sub`).
    #[param(pattern = r"^[^\x00]*$")]
    actor: Option<String>,
    /// Exact action, e.g. `pseudonym.resolve`.
    #[param(pattern = r"^[^\x00]*$")]
    action: Option<String>,
    /// Target pseudonym.
    #[param(format = Uuid)]
    target: Option<String>,
    /// `success`, `denied`, `not_found` or `error`.
    #[param(pattern = "^(success|denied|not_found|error)$")]
    outcome: Option<String>,
    /// RFC 3339 lower bound (inclusive).
    #[param(format = DateTime)]
    from: Option<String>,
    /// RFC 3339 upper bound (exclusive).
    #[param(format = DateTime)]
    to: Option<String>,
    /// Return entries with `seq` greater than this (use `next_after` of the previous page).
    after: Option<i64>,
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct ListResponse {
    entries: Vec<Entry>,
    /// Pass as `after` to fetch the next page; absent on the last page.
    next_after: Option<i64>,
}

fn time(v: Option<&str>, name: &str) -> Result<Option<DateTime<Utc>>, Error> {
    v.map(|s| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| Error::bad_request("invalid_query", format!("`{name}` must be an RFC 3339 timestamp")))
    })
    .transpose()
}

/// List audit entries within the caller's institutions (all, for `*` principals).
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(ListQuery),
    responses((status = 200, body = ListResponse)))]
async fn list(State(s): State<AppState>, p: Principal, AppQuery(q): AppQuery<ListQuery>) -> Result<Json<ListResponse>, Error> {
    s.authorize(&p, Permission::AuditRead, None, None).await?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Error::bad_request("invalid_query", "`limit` must be between 1 and 1000"));
    }
    let outcome = q
        .outcome
        .as_deref()
        .map(|o| Outcome::parse(o).ok_or_else(|| Error::bad_request("invalid_query", "`outcome` must be success, denied, not_found or error")))
        .transpose()?;
    let target = q.target.as_deref().map(Pseudonym::parse).transpose()?.map(|p| p.as_uuid());
    // PostgreSQL text cannot hold U+0000: such a filter is refused rather than failing the query (503).
    if [&q.actor, &q.action].into_iter().flatten().any(|v| v.contains('\0')) {
        return Err(Error::bad_request("invalid_query", "`actor` and `action` cannot contain U+0000"));
    }
    let filter = Filter {
        actor: q.actor,
        action: q.action,
        target,
        outcome,
        from: time(q.from.as_deref(), "from")?,
        to: time(q.to.as_deref(), "to")?,
        after_seq: q.after.unwrap_or(0).max(0),
        institutions: p.institutions.clone(),
        limit,
    };
    let entries = audit::list(&s.pool, &filter).await.map_err(Error::from)?;
    let next_after = (entries.len() as i64 == limit).then(|| entries.last().map(|e| e.seq)).flatten();
    let mut read = p.entry("audit.read", None, None, Outcome::Success);
    read.detail = serde_json::json!({"returned": entries.len()});
    s.audit.record(read).await?;
    Ok(Json(ListResponse { entries, next_after }))
}

/// Recompute the whole hash chain, check it against the signed checkpoints
/// (a truncated tail or a rewritten-and-rehashed chain fails, naming what is
/// missing) and report the first broken sequence number; when intact, the head
/// is signed into a new checkpoint.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit",
    responses((status = 200, body = Verification)))]
async fn verify(State(s): State<AppState>, p: Principal) -> Result<Json<Verification>, Error> {
    s.authorize(&p, Permission::AuditVerify, None, None).await?;
    let v = audit::verify_anchored(&s.pool, &s.anchor).await.map_err(Error::from)?;
    if !v.intact {
        tracing::error!(first_broken_seq = ?v.first_broken_seq, reason = ?v.reason, detail = ?v.detail, "AUDIT CHAIN BROKEN");
    }
    Ok(Json(v))
}

#[derive(Serialize, ToSchema)]
pub struct CheckpointResponse {
    /// `{"checkpoint": {type, seq, hash, at, signed_at}, "signature": {algorithm, public_key, value}}`;
    /// null while the log is empty.
    #[schema(value_type = Object)]
    checkpoint: Option<serde_json::Value>,
    algorithm: &'static str,
    /// Base64 of the raw Ed25519 public key that signs checkpoints (keep it with them).
    public_key: String,
}

/// The latest signed checkpoint of the audit chain's head (signed now if the
/// chain grew since, after checking the new rows chain onto the previous one).
/// Keep them: `learnvault audit verify` checks the chain against them.
#[utoipa::path(get, path = "/v1/audit/checkpoint", tag = "audit",
    responses((status = 200, body = CheckpointResponse), (status = 409, body = ErrorBody)))]
async fn checkpoint(State(s): State<AppState>, p: Principal) -> Result<Json<CheckpointResponse>, Error> {
    s.authorize(&p, Permission::AuditVerify, None, None).await?;
    match audit::checkpoint_now(&s.pool, &s.anchor).await.map_err(Error::from)? {
        Ok(doc) => Ok(Json(CheckpointResponse { checkpoint: doc, algorithm: "Ed25519", public_key: s.anchor.public_key() })),
        Err(v) => Err(Error::new(
            StatusCode::CONFLICT,
            "audit_chain_broken",
            format!(
                "the chain does not extend the latest checkpoint ({} at seq {}); not signing",
                v.reason.as_deref().unwrap_or("broken"),
                v.first_broken_seq.unwrap_or_default()
            ),
        )),
    }
}
