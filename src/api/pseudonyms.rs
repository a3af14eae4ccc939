//! `/v1/pseudonyms`: issuance (LMS), lookup and audited resolve (DPO).

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{AppJson, AppState, Error, ErrorBody, Limits, Principal};
use crate::audit::Outcome;
use crate::domain::{ExternalId, InstitutionId, Invalid, Pseudonym};
use crate::policy::Permission;
use crate::vault::{Identity, NewLearner, Subject};

pub fn router(limits: Limits) -> OpenApiRouter<AppState> {
    super::area([routes!(issue), routes!(lookup), routes!(resolve)])
        .merge(super::area([routes!(issue_batch)]).layer(DefaultBodyLimit::max(limits.batch_body_bytes)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    /// Institution id (`[A-Za-z0-9._:-]{1,128}`).
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    institution: String,
    /// The LMS's own learner id (1-256 characters, no control character). Stored only as a keyed blind index.
    #[schema(max_length = 256, pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$")]
    external_id: String,
    /// Optional identity fields (name, email, ...): a flat object of scalars, at most 8 KiB. Stored encrypted.
    #[schema(value_type = Option<Object>)]
    identity: Option<Map<String, Value>>,
}

#[derive(Serialize, ToSchema)]
pub struct IssueResponse {
    pseudonym: Uuid,
    /// `true` when this call created the pseudonym.
    created: bool,
}

fn learner(external_id: &str, identity: Option<Map<String, Value>>) -> Result<NewLearner, Invalid> {
    Ok(NewLearner {
        external_id: ExternalId::parse(external_id)?,
        identity: identity.map(Identity::parse).transpose()?.unwrap_or_else(Identity::empty),
    })
}

/// Issue-or-get the pseudonym of one learner (idempotent).
#[utoipa::path(post, path = "/v1/pseudonyms", tag = "pseudonyms", request_body = IssueRequest,
    responses((status = 201, description = "Created", body = IssueResponse),
        (status = 200, description = "Already issued", body = IssueResponse)))]
async fn issue(
    State(s): State<AppState>,
    p: Principal,
    AppJson(req): AppJson<IssueRequest>,
) -> Result<(StatusCode, Json<IssueResponse>), Error> {
    s.authorize(&p, Permission::PseudonymIssue, None, None).await?;
    let inst = InstitutionId::parse(&req.institution)?;
    s.authorize(&p, Permission::PseudonymIssue, Some(inst.as_str()), None).await?;
    let l = learner(&req.external_id, req.identity)?;
    let entry = p.entry(Permission::PseudonymIssue.as_str(), Some(inst.as_str()), None, Outcome::Success);
    let r = match s.vault.issue_one(&inst, l, entry).await {
        Err(crate::vault::VaultError::Suppressed) => {
            let mut denied = p.entry(Permission::PseudonymIssue.as_str(), Some(inst.as_str()), None, Outcome::Denied);
            denied.detail = serde_json::json!({"reason": "erased_suppressed"});
            s.audit.record(denied).await?;
            return Err(crate::vault::VaultError::Suppressed.into());
        }
        other => other?,
    };
    let status = if r.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(IssueResponse { pseudonym: r.pseudonym.as_uuid(), created: r.created })))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Up to 10,000 learners (the configured `batch_max_items`).
    #[schema(min_items = 1)]
    items: Vec<IssueRequest>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchItemResult {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pseudonym: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<super::error::ErrorDetail>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchResponse {
    results: Vec<BatchItemResult>,
    created: usize,
    existing: usize,
    rejected: usize,
}

/// Issue-or-get pseudonyms for many learners; one result per item, in order.
/// Invalid items are rejected individually; the others are issued.
#[utoipa::path(post, path = "/v1/pseudonyms/batch", tag = "pseudonyms", request_body = BatchRequest,
    responses((status = 200, body = BatchResponse)))]
async fn issue_batch(
    State(s): State<AppState>,
    p: Principal,
    AppJson(req): AppJson<BatchRequest>,
) -> Result<Json<BatchResponse>, Error> {
    s.authorize(&p, Permission::PseudonymIssue, None, None).await?;
    if req.items.len() > s.limits.batch_items {
        return Err(Error::too_large("batch_too_large", format!("a batch holds at most {} items", s.limits.batch_items)));
    }
    if req.items.is_empty() {
        return Err(Error::bad_request("empty_batch", "items must not be empty"));
    }
    let mut results: Vec<BatchItemResult> = Vec::with_capacity(req.items.len());
    let mut valid = Vec::with_capacity(req.items.len());
    let mut valid_idx = Vec::with_capacity(req.items.len());
    let mut denied_inst: Option<InstitutionId> = None;
    for (index, item) in req.items.into_iter().enumerate() {
        let parsed = InstitutionId::parse(&item.institution).and_then(|i| Ok((i, learner(&item.external_id, item.identity)?)));
        match parsed {
            Ok((inst, l)) => {
                if !p.can_act_in(inst.as_str()) && denied_inst.is_none() {
                    denied_inst = Some(inst.clone());
                }
                valid_idx.push(index);
                valid.push((inst, l));
                results.push(BatchItemResult { index, pseudonym: None, created: None, error: None });
            }
            Err(e) => results.push(BatchItemResult {
                index,
                pseudonym: None,
                created: None,
                error: Some(super::error::ErrorDetail { code: e.code.into(), message: e.message }),
            }),
        }
    }
    if let Some(inst) = denied_inst {
        // The whole call is refused if any item is outside the caller's institutions.
        s.authorize(&p, Permission::PseudonymIssue, Some(inst.as_str()), None).await?;
    }
    // Erased learners whose collection is suppressed get no pseudonym again.
    let suppressed = {
        let asked: Vec<(&InstitutionId, &ExternalId)> = valid.iter().map(|(i, l)| (i, &l.external_id)).collect();
        s.vault.suppressed(&asked).await?
    };
    if suppressed.iter().any(|x| *x) {
        let mut keep = suppressed.iter().map(|x| !x);
        let mut keep_idx = suppressed.iter().map(|x| !x);
        for (&i, &refused) in valid_idx.iter().zip(&suppressed) {
            if refused {
                results[i].error = Some(super::error::ErrorDetail {
                    code: "erased".into(),
                    message: "this learner was erased; collection is suppressed until a DPO lifts it".into(),
                });
            }
        }
        valid.retain(|_| keep.next().unwrap_or(true));
        valid_idx.retain(|_| keep_idx.next().unwrap_or(true));
        let mut entry = p.entry(Permission::PseudonymIssue.as_str(), None, None, Outcome::Denied);
        entry.detail = serde_json::json!({"reason": "erased_suppressed", "items": suppressed.iter().filter(|x| **x).count()});
        s.audit.record(entry).await?;
    }
    let rejected = results.len() - valid.len();
    let (mut created, mut existing) = (0, 0);
    if !valid.is_empty() {
        let single_inst = valid.iter().all(|(i, _)| *i == valid[0].0).then(|| valid[0].0.to_string());
        let mut entry = p.entry(Permission::PseudonymIssue.as_str(), single_inst.as_deref(), None, Outcome::Success);
        entry.action = "pseudonym.issue_batch".into();
        let issued = s.vault.issue_batch(valid, entry).await?;
        for (i, r) in valid_idx.into_iter().zip(issued) {
            if r.created { created += 1 } else { existing += 1 }
            results[i].pseudonym = Some(r.pseudonym.as_uuid());
            results[i].created = Some(r.created);
        }
    }
    Ok(Json(BatchResponse { results, created, existing, rejected }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupRequest {
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    institution: String,
    #[schema(max_length = 256, pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$")]
    external_id: String,
}

#[derive(Serialize, ToSchema)]
pub struct LookupResponse {
    pseudonym: Uuid,
}

/// Find a learner's pseudonym from the LMS id (DPO). Audited.
#[utoipa::path(post, path = "/v1/pseudonyms/lookup", tag = "pseudonyms", request_body = LookupRequest,
    responses((status = 200, body = LookupResponse), (status = 404, body = ErrorBody)))]
async fn lookup(
    State(s): State<AppState>,
    p: Principal,
    AppJson(LookupRequest { institution, external_id }): AppJson<LookupRequest>,
) -> Result<Json<LookupResponse>, Error> {
    s.authorize(&p, Permission::PseudonymLookup, None, None).await?;
    let inst = InstitutionId::parse(&institution)?;
    s.authorize(&p, Permission::PseudonymLookup, Some(inst.as_str()), None).await?;
    let ext = ExternalId::parse(&external_id)?;
    let found = s.vault.lookup(&inst, &ext).await?;
    let outcome = if found.is_some() { Outcome::Success } else { Outcome::NotFound };
    s.audit.record(p.entry(Permission::PseudonymLookup.as_str(), Some(inst.as_str()), found.map(|p| p.as_uuid()), outcome)).await?;
    match found {
        Some(pseudonym) => Ok(Json(LookupResponse { pseudonym: pseudonym.as_uuid() })),
        None => Err(Error::not_found("unknown_learner", "no pseudonym for this learner (never issued, or erased)")),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// One of the re-identification purposes in `policies/purposes.yaml`.
    #[schema(required = true, nullable = false, pattern = r"^\s*[a-z0-9_]{1,64}\s*$")]
    purpose: Option<String>,
    /// Why this re-identification is needed (1-2000 characters). Recorded in the audit log.
    #[schema(required = true, nullable = false, max_length = 2000, pattern = r"\S")]
    justification: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ResolveResponse {
    pseudonym: Uuid,
    institution: String,
    #[schema(value_type = Object)]
    identity: Value,
    purpose: String,
}

/// Re-identify a pseudonym for a declared purpose (DPO). Audited before the identity is released.
#[utoipa::path(post, path = "/v1/pseudonyms/{pseudonym}/resolve", tag = "pseudonyms", request_body = ResolveRequest,
    params(("pseudonym" = Uuid, Path, description = "Learner pseudonym")),
    responses((status = 200, body = ResolveResponse),
        (status = 400, body = ErrorBody, description = "`purpose_required`, `unknown_purpose`, `justification_required`: audited"),
        (status = 404, body = ErrorBody), (status = 410, body = ErrorBody)))]
async fn resolve(
    State(s): State<AppState>,
    p: Principal,
    Path(raw): Path<String>,
    AppJson(req): AppJson<ResolveRequest>,
) -> Result<Json<ResolveResponse>, Error> {
    let action = Permission::PseudonymResolve.as_str();
    s.authorize(&p, Permission::PseudonymResolve, None, None).await?;
    let pseudonym = Pseudonym::parse(&raw)?;
    let target = Some(pseudonym.as_uuid());
    let deny = |code: &'static str, message: &str| {
        let mut e = p.entry(action, None, target, Outcome::Denied);
        e.purpose = req.purpose.clone().filter(|x| x.len() <= 64);
        e.detail = serde_json::json!({"reason": code});
        (e, Error::bad_request(code, message))
    };
    let purpose = match req.purpose.as_deref().map(str::trim) {
        None | Some("") => Some(deny("purpose_required", "a declared `purpose` is required to re-identify")),
        Some(x) => match s.policies.reidentification_purpose(x) {
            None => Some(deny("unknown_purpose", "`purpose` is not a declared re-identification purpose (policies/purposes.yaml)")),
            Some(_) => None,
        },
    };
    if let Some((entry, err)) = purpose {
        s.audit.record(entry).await?;
        return Err(err);
    }
    let purpose = s.policies.reidentification_purpose(req.purpose.as_deref().unwrap_or_default().trim()).expect("checked above");
    let justification = req.justification.as_deref().map(str::trim).unwrap_or_default();
    if justification.is_empty() || justification.chars().count() > 2000 {
        let (entry, _) = deny("justification_required", "");
        s.audit.record(entry).await?;
        return Err(Error::bad_request("justification_required", "a `justification` of 1-2000 characters is required"));
    }
    let mut entry = p.entry(action, None, target, Outcome::Success);
    entry.purpose = Some(purpose.to_string());
    entry.justification = Some(justification.to_owned());
    let institution = match s.vault.subject(pseudonym).await? {
        Subject::Active { institution } => institution,
        Subject::Erased { institution, .. } => {
            entry.institution = Some(institution);
            entry.outcome = Outcome::NotFound;
            entry.detail = serde_json::json!({"reason": "erased"});
            s.audit.record(entry).await?;
            return Err(Error::new(StatusCode::GONE, "erased", "this learner has been erased"));
        }
        Subject::Unknown => {
            entry.outcome = Outcome::NotFound;
            s.audit.record(entry).await?;
            return Err(Error::not_found("unknown_pseudonym", "no such pseudonym"));
        }
    };
    s.authorize(&p, Permission::PseudonymResolve, Some(&institution), target).await?;
    entry.institution = Some(institution.clone());
    let plain = match s.vault.decrypt_identity(pseudonym).await {
        Ok(Some(plain)) => plain,
        Ok(None) => return Err(Error::not_found("unknown_pseudonym", "no such pseudonym")),
        Err(e) => {
            // Integrity failure (e.g. a ciphertext moved between rows): audited, nothing released.
            entry.outcome = Outcome::Error;
            entry.detail = serde_json::json!({"reason": "integrity"});
            s.audit.record(entry).await?;
            return Err(e.into());
        }
    };
    let identity: Value = serde_json::from_slice(&plain).map_err(|e| Error::Internal(format!("identity is not JSON: {e}")))?;
    // Fail closed: the identity leaves only once the audit row is committed.
    s.audit.record(entry).await?;
    metrics::counter!("learnvault_resolves_total", "purpose" => purpose.to_string()).increment(1);
    Ok(Json(ResolveResponse { pseudonym: pseudonym.as_uuid(), institution, identity, purpose: purpose.to_string() }))
}
