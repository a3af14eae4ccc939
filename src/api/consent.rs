//! `/v1/pseudonyms/{pseudonym}/consent`: per-purpose consent with append-only history.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{AppJson, AppState, Error, ErrorBody, Principal};
use crate::audit::Outcome;
use crate::domain::Pseudonym;
use crate::policy::Permission;
use crate::vault::{ConsentEvent, ConsentState, Subject};

pub fn router() -> OpenApiRouter<AppState> {
    super::area([routes!(put_consent, get_consent)])
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentRequest {
    /// Decisions by consent purpose, e.g. `{"analytics": true, "research": false}`.
    consents: BTreeMap<String, bool>,
}

#[derive(Serialize, ToSchema)]
pub struct ConsentResponse {
    pseudonym: Uuid,
    /// Current state per purpose; a purpose never decided is absent (= not granted).
    current: Vec<ConsentState>,
    /// Every decision ever recorded, oldest first.
    history: Vec<ConsentEvent>,
}

/// Authorise against the subject's institution; 404/410 for unknown/erased subjects.
async fn subject_institution(s: &AppState, p: &Principal, perm: Permission, pseudonym: Pseudonym) -> Result<String, Error> {
    s.authorize(p, perm, None, Some(pseudonym.as_uuid())).await?;
    match s.vault.subject(pseudonym).await? {
        Subject::Active { institution } => {
            s.authorize(p, perm, Some(&institution), Some(pseudonym.as_uuid())).await?;
            Ok(institution)
        }
        Subject::Erased { .. } => Err(Error::new(StatusCode::GONE, "erased", "this learner has been erased")),
        Subject::Unknown => Err(Error::not_found("unknown_pseudonym", "no such pseudonym")),
    }
}

/// Record consent decisions (LMS). Appends to the history; never rewrites it.
#[utoipa::path(put, path = "/v1/pseudonyms/{pseudonym}/consent", tag = "consent", request_body = ConsentRequest,
    params(("pseudonym" = Uuid, Path, description = "Learner pseudonym")),
    responses((status = 200, body = ConsentResponse), (status = 400, body = ErrorBody, description = "`empty_consent`, `unknown_purpose`"),
        (status = 404, body = ErrorBody), (status = 410, body = ErrorBody)))]
async fn put_consent(
    State(s): State<AppState>,
    p: Principal,
    Path(raw): Path<String>,
    AppJson(ConsentRequest { consents }): AppJson<ConsentRequest>,
) -> Result<Json<ConsentResponse>, Error> {
    let pseudonym = Pseudonym::parse(&raw)?;
    let institution = subject_institution(&s, &p, Permission::ConsentWrite, pseudonym).await?;
    if consents.is_empty() {
        return Err(Error::bad_request("empty_consent", "`consents` must name at least one purpose"));
    }
    let mut decisions = Vec::with_capacity(consents.len());
    for (purpose, granted) in &consents {
        let p = s.policies.consent_purpose(purpose).ok_or_else(|| {
            Error::bad_request("unknown_purpose", "unknown consent purpose (see policies/purposes.yaml `consent`)")
        })?;
        decisions.push((p, *granted));
    }
    let mut entry = p.entry(Permission::ConsentWrite.as_str(), Some(&institution), Some(pseudonym.as_uuid()), Outcome::Success);
    entry.detail = serde_json::json!({"consents": consents});
    s.vault.record_consent(pseudonym, &decisions, entry).await?;
    let (current, history) = s.vault.consent(pseudonym).await?;
    Ok(Json(ConsentResponse { pseudonym: pseudonym.as_uuid(), current, history }))
}

/// Current consent and its full history. Audited.
#[utoipa::path(get, path = "/v1/pseudonyms/{pseudonym}/consent", tag = "consent",
    params(("pseudonym" = Uuid, Path, description = "Learner pseudonym")),
    responses((status = 200, body = ConsentResponse), (status = 404, body = ErrorBody), (status = 410, body = ErrorBody)))]
async fn get_consent(State(s): State<AppState>, p: Principal, Path(raw): Path<String>) -> Result<Json<ConsentResponse>, Error> {
    let pseudonym = Pseudonym::parse(&raw)?;
    let institution = subject_institution(&s, &p, Permission::ConsentRead, pseudonym).await?;
    let (current, history) = s.vault.consent(pseudonym).await?;
    s.audit.record(p.entry(Permission::ConsentRead.as_str(), Some(&institution), Some(pseudonym.as_uuid()), Outcome::Success)).await?;
    Ok(Json(ConsentResponse { pseudonym: pseudonym.as_uuid(), current, history }))
}
