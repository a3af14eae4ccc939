//! `/v1/dsr/*`: subject access and erasure requests (DPO), their jobs, the
//! access archive and the signed erasure certificate.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{AppJson, AppState, DsrCap, Error, ErrorBody, Principal};
use crate::audit::Outcome;
use crate::domain::{ExternalId, InstitutionId, Pseudonym};
use crate::dsr::{Dsr, DsrError, Job, Kind, Request};
use crate::policy::Permission;
use crate::vault::Subject;

pub fn router() -> OpenApiRouter<AppState> {
    super::area([
        routes!(access), routes!(erasure), routes!(erasure_batch), routes!(job), routes!(jobs), routes!(archive),
        routes!(certificate), routes!(certificate_key), routes!(suppressions), routes!(lift_suppression),
    ])
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// At most this many (1-1000, default 200).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

fn list_limit(q: &ListQuery) -> Result<i64, Error> {
    let limit = q.limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) {
        return Err(Error::bad_request("invalid_query", "`limit` must be between 1 and 1000"));
    }
    Ok(limit)
}

#[derive(Serialize, ToSchema)]
pub struct JobList {
    jobs: Vec<Job>,
}

/// The request queue (subject access and erasure) of the caller's
/// institutions: overdue first, then open requests by deadline, then finished
/// ones, newest first. Read is audited.
#[utoipa::path(get, path = "/v1/dsr/jobs", tag = "dsr", params(ListQuery),
    responses((status = 200, body = JobList)))]
async fn jobs(State(s): State<AppState>, p: Principal, d: DsrCap, crate::api::AppQuery(q): crate::api::AppQuery<ListQuery>) -> Result<Json<JobList>, Error> {
    s.authorize(&p, Permission::DsrRead, None, None).await?;
    let limit = list_limit(&q)?;
    let jobs = d.list(p.institutions.as_deref(), limit).await?;
    let mut e = p.entry("dsr.list", None, None, Outcome::Success);
    e.detail = serde_json::json!({"returned": jobs.len()});
    s.audit.record(e).await?;
    Ok(Json(JobList { jobs }))
}

#[derive(Serialize, ToSchema)]
pub struct SuppressionList {
    suppressions: Vec<crate::vault::Suppression>,
}

/// The suppression list after erasure (DPO): erased learners of the caller's
/// institutions whose collection is suppressed (or was lifted, with by whom).
/// Pseudonyms only. Read is audited.
#[utoipa::path(get, path = "/v1/dsr/suppressions", tag = "dsr", params(ListQuery),
    responses((status = 200, body = SuppressionList)))]
async fn suppressions(State(s): State<AppState>, p: Principal, crate::api::AppQuery(q): crate::api::AppQuery<ListQuery>) -> Result<Json<SuppressionList>, Error> {
    s.authorize(&p, Permission::DsrErasure, None, None).await?;
    let limit = list_limit(&q)?;
    let suppressions = s.vault.suppressions(p.institutions.as_deref(), limit).await?;
    let mut e = p.entry("dsr.suppressions.read", None, None, Outcome::Success);
    e.detail = serde_json::json!({"returned": suppressions.len()});
    s.audit.record(e).await?;
    Ok(Json(SuppressionList { suppressions }))
}

/// One subject of a batch erasure: by pseudonym or by the LMS's external id.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchSubject {
    pseudonym: Option<Uuid>,
    #[schema(max_length = 256, pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$")]
    external_id: Option<String>,
}

/// Many subjects of one institution (a graduating cohort, a school leaving).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchErasureRequest {
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    institution: String,
    #[schema(min_items = 1)]
    subjects: Vec<BatchSubject>,
    /// The DPO's case number (letters, digits, `._:/#-`; never an identity).
    #[schema(pattern = r"^[A-Za-z0-9._:/#-]{1,128}$")]
    reference: Option<String>,
}

/// Erase many subjects of one institution in one job (DPO): one pass of
/// deletes and aggregate recomputes for all of them, one signed certificate per
/// subject (`result.certificates`, by pseudonym), progress in the job. 202 with
/// the job; 404 `unknown_learner` naming the first subject not found.
#[utoipa::path(post, path = "/v1/dsr/erasure/batch", tag = "dsr", request_body = BatchErasureRequest,
    responses((status = 202, body = Job), (status = 404, body = ErrorBody)))]
async fn erasure_batch(State(s): State<AppState>, p: Principal, d: DsrCap, AppJson(req): AppJson<BatchErasureRequest>) -> Result<Response, Error> {
    s.authorize(&p, Permission::DsrErasure, None, None).await?;
    let inst = InstitutionId::parse(&req.institution)?;
    s.authorize(&p, Permission::DsrErasure, Some(inst.as_str()), None).await?;
    if req.subjects.is_empty() {
        return Err(Error::bad_request("empty_batch", "subjects must not be empty"));
    }
    if req.subjects.len() > s.limits.batch_items {
        return Err(Error::too_large("batch_too_large", format!("a batch erasure holds at most {} subjects", s.limits.batch_items)));
    }
    if let Some(r) = &req.reference {
        let ok = !r.is_empty() && r.len() <= 128 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:/#-".contains(&b));
        if !ok {
            return Err(Error::bad_request("invalid_reference", "reference: 1-128 letters, digits or ._:/#- (a case number, never an identity)"));
        }
    }
    let mut subjects = Vec::with_capacity(req.subjects.len());
    for (i, subj) in req.subjects.iter().enumerate() {
        let pseudonym = match (subj.pseudonym, &subj.external_id) {
            (Some(ps), None) => Pseudonym::from_uuid(ps),
            (None, Some(e)) => s
                .vault
                .lookup(&inst, &ExternalId::parse(e)?)
                .await?
                .ok_or_else(|| Error::not_found("unknown_learner", format!("subjects[{i}]: no learner with this external id in this institution")))?,
            _ => return Err(Error::bad_request("invalid_subject", format!("subjects[{i}]: name it by `pseudonym` or by `external_id`"))),
        };
        match s.vault.subject(pseudonym).await? {
            Subject::Active { institution } | Subject::Erased { institution, .. } if institution == inst.as_str() => {}
            _ => return Err(Error::not_found("unknown_pseudonym", format!("subjects[{i}]: no such pseudonym in this institution"))),
        }
        subjects.push(pseudonym.as_uuid());
    }
    subjects.sort();
    subjects.dedup();
    let (job, _) = d
        .submit(&Request {
            kind: Kind::ErasureBatch,
            pseudonym: Uuid::nil(),
            institution: inst.as_str().to_owned(),
            requested_by: p.sub.clone(),
            roles: p.roles.clone(),
            request_id: p.request_id,
            reference: req.reference,
            subjects,
        })
        .await?;
    let mut resp = (StatusCode::ACCEPTED, Json(job.clone())).into_response();
    resp.headers_mut().insert(header::LOCATION, HeaderValue::from_str(&format!("/v1/dsr/jobs/{}", job.id)).expect("ascii"));
    Ok(resp)
}

/// Lift the suppression of an erased learner.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LiftRequest {
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    institution: String,
    /// The LMS's learner id (matched through the tombstone's blind index, never stored).
    #[schema(max_length = 256, pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$")]
    external_id: String,
    /// One of `suppression.lift_purposes` in `policies/erasure.yaml`.
    purpose: String,
    /// Why (1-2000 characters, recorded in the audit log; a case number, never an identity).
    #[schema(max_length = 2000, pattern = r"\S")]
    justification: String,
}

#[derive(Serialize, ToSchema)]
pub struct LiftResponse {
    /// The erased pseudonyms whose suppression was lifted (the learner gets a new one when next seen).
    lifted: Vec<Uuid>,
}

/// Lift the suppression after erasure of one learner (DPO, `dsr.erasure`): from
/// now on the learner may be collected again under a new pseudonym. Purpose and
/// justification required; audited. 404 `not_suppressed` when there is none.
#[utoipa::path(post, path = "/v1/dsr/suppressions/lift", tag = "dsr", request_body = LiftRequest,
    responses((status = 200, body = LiftResponse), (status = 404, body = ErrorBody)))]
async fn lift_suppression(State(s): State<AppState>, p: Principal, d: DsrCap, AppJson(req): AppJson<LiftRequest>) -> Result<Json<LiftResponse>, Error> {
    s.authorize(&p, Permission::DsrErasure, None, None).await?;
    let inst = InstitutionId::parse(&req.institution)?;
    s.authorize(&p, Permission::DsrErasure, Some(inst.as_str()), None).await?;
    let ext = ExternalId::parse(&req.external_id)?;
    if !d.erasure_policy.may_lift_for(&req.purpose) {
        return Err(Error::bad_request("unknown_purpose", "purpose must be one of suppression.lift_purposes in policies/erasure.yaml"));
    }
    let j = req.justification.trim();
    if j.is_empty() || j.chars().count() > 2000 {
        return Err(Error::bad_request("justification_required", "a justification of 1-2000 characters is required"));
    }
    let mut entry = p.entry("suppression.lift", Some(inst.as_str()), None, Outcome::Success);
    entry.purpose = Some(req.purpose.clone());
    entry.justification = Some(j.to_owned());
    let lifted = s.vault.lift_suppression(&inst, &ext, entry).await?;
    if lifted.is_empty() {
        let mut miss = p.entry("suppression.lift", Some(inst.as_str()), None, Outcome::NotFound);
        miss.purpose = Some(req.purpose);
        s.audit.record(miss).await?;
        return Err(Error::not_found("not_suppressed", "no suppressed erased learner with this external id in this institution"));
    }
    Ok(Json(LiftResponse { lifted: lifted.into_iter().map(|p| p.as_uuid()).collect() }))
}

/// The subject, by pseudonym or by the LMS's `{institution, external_id}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DsrRequest {
    pseudonym: Option<Uuid>,
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    institution: Option<String>,
    #[schema(max_length = 256, pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$")]
    external_id: Option<String>,
    /// The DPO's ticket or case number (letters, digits, `._:/#-`; never an identity).
    #[schema(pattern = r"^[A-Za-z0-9._:/#-]{1,128}$")]
    reference: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CertificateKey {
    algorithm: &'static str,
    /// Base64 of the raw Ed25519 public key that signs erasure certificates.
    public_key: String,
}

impl From<DsrError> for Error {
    fn from(e: DsrError) -> Self {
        match e {
            DsrError::NotFound => Error::not_found("unknown_job", "no such job"),
            DsrError::Db(d) => d.into(),
            DsrError::Audit(a) => a.into(),
            DsrError::Vault(v) => v.into(),
            other => Error::Internal(other.to_string()),
        }
    }
}

async fn submit(s: &AppState, p: &Principal, d: &Dsr, kind: Kind, req: DsrRequest) -> Result<Response, Error> {
    let perm = if kind == Kind::Access { Permission::DsrAccess } else { Permission::DsrErasure };
    s.authorize(p, perm, None, req.pseudonym).await?;
    if let Some(r) = &req.reference {
        let ok = !r.is_empty() && r.len() <= 128 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:/#-".contains(&b));
        if !ok {
            return Err(Error::bad_request("invalid_reference", "reference: 1-128 letters, digits or ._:/#- (a case number, never an identity)"));
        }
    }
    let pseudonym = match (req.pseudonym, &req.institution, &req.external_id) {
        (Some(p), None, None) => Pseudonym::from_uuid(p),
        (None, Some(i), Some(e)) => {
            let inst = InstitutionId::parse(i)?;
            s.authorize(p, perm, Some(inst.as_str()), None).await?;
            let ext = ExternalId::parse(e)?;
            s.vault
                .lookup(&inst, &ext)
                .await?
                .ok_or_else(|| Error::not_found("unknown_learner", "no learner with this external id in this institution"))?
        }
        _ => {
            return Err(Error::bad_request(
                "invalid_subject",
                "name the subject by `pseudonym`, or by `institution` and `external_id` (not both)",
            ))
        }
    };
    let institution = match s.vault.subject(pseudonym).await? {
        Subject::Active { institution } | Subject::Erased { institution, .. } => institution,
        Subject::Unknown => return Err(Error::not_found("unknown_pseudonym", "no such pseudonym")),
    };
    s.authorize(p, perm, Some(&institution), Some(pseudonym.as_uuid())).await?;
    let (job, created) = d
        .submit(&Request {
            kind,
            pseudonym: pseudonym.as_uuid(),
            institution,
            requested_by: p.sub.clone(),
            roles: p.roles.clone(),
            request_id: p.request_id,
            reference: req.reference,
            subjects: Vec::new(),
        })
        .await?;
    let status = if created { StatusCode::ACCEPTED } else { StatusCode::OK };
    let mut resp = (status, Json(job.clone())).into_response();
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_str(&format!("/v1/dsr/jobs/{}", job.id)).expect("ascii"));
    Ok(resp)
}

/// Open a subject-access request (Art. 15). 202 with the job; poll it, then download the archive.
#[utoipa::path(post, path = "/v1/dsr/access", tag = "dsr", request_body = DsrRequest,
    responses((status = 202, body = Job), (status = 404, body = ErrorBody)))]
async fn access(State(s): State<AppState>, p: Principal, d: DsrCap, AppJson(req): AppJson<DsrRequest>) -> Result<Response, Error> {
    submit(&s, &p, &d, Kind::Access, req).await
}

/// Open an erasure request (Art. 17). Idempotent: an open or finished erasure
/// of the same subject is returned (200) instead of a new one (202).
#[utoipa::path(post, path = "/v1/dsr/erasure", tag = "dsr", request_body = DsrRequest,
    responses((status = 202, body = Job), (status = 200, body = Job), (status = 404, body = ErrorBody)))]
async fn erasure(State(s): State<AppState>, p: Principal, d: DsrCap, AppJson(req): AppJson<DsrRequest>) -> Result<Response, Error> {
    submit(&s, &p, &d, Kind::Erasure, req).await
}

async fn visible_job(s: &AppState, p: &Principal, d: &Dsr, perm: Permission, id: &str) -> Result<Job, Error> {
    s.authorize(p, perm, None, None).await?;
    let id = Uuid::parse_str(id).map_err(|_| Error::bad_request("invalid_job_id", "a job id is a UUID"))?;
    let job = d.job(id).await?;
    s.authorize(p, perm, Some(&job.institution), Some(job.pseudonym)).await?;
    Ok(job)
}

/// A job's state, step, progress, deadline and result.
#[utoipa::path(get, path = "/v1/dsr/jobs/{id}", tag = "dsr", params(("id" = Uuid, Path, description = "Job id")),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)))]
async fn job(State(s): State<AppState>, p: Principal, d: DsrCap, Path(id): Path<String>) -> Result<Json<Job>, Error> {
    Ok(Json(visible_job(&s, &p, &d, Permission::DsrRead, &id).await?))
}

/// The subject-access archive (tar: manifest.json, identity.json, JSONL and CSV per store), decrypted
/// as it streams (sealed at rest). Audited. 410 `erased` once its subject was erased (erasure deletes
/// it), 410 `archive_expired` after `retention.yaml` `archives`.
#[utoipa::path(get, path = "/v1/dsr/jobs/{id}/archive", tag = "dsr", params(("id" = Uuid, Path, description = "Job id")),
    responses((status = 200, description = "tar archive", content_type = "application/x-tar"), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 410, body = ErrorBody)))]
async fn archive(State(s): State<AppState>, p: Principal, d: DsrCap, Path(id): Path<String>) -> Result<Response, Error> {
    let job = visible_job(&s, &p, &d, Permission::DsrAccess, &id).await?;
    let path = match (&job.kind[..], &job.state[..], job.result.as_ref().and_then(|r| r["archive"].as_str())) {
        ("access", "done", Some(path)) => std::path::PathBuf::from(path),
        ("access", _, _) => return Err(Error::new(StatusCode::CONFLICT, "job_not_done", format!("the job is {}", job.state))),
        _ => return Err(Error::not_found("no_archive", "only subject-access jobs have an archive")),
    };
    if let Subject::Erased { .. } = s.vault.subject(Pseudonym::from_uuid(job.pseudonym)).await? {
        return Err(Error::new(StatusCode::GONE, "erased", "the subject was erased; its access archives were deleted with it"));
    }
    let reader = crate::dsr::access::open_archive(&path, &d.archive_keys, job.id)
        .map_err(|_| Error::new(StatusCode::GONE, "archive_expired", "the archive has expired (retention.yaml `archives`); open a new request"))?;
    let mut entry = p.entry("dsr.archive.download", Some(&job.institution), Some(job.pseudonym), Outcome::Success);
    entry.detail = serde_json::json!({"job": job.id, "sha256": job.result.as_ref().map(|r| r["sha256"].clone())});
    s.audit.record(entry).await?;
    // Decrypted on a blocking thread, a chunk at a time, as the client reads.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            let n = match read_full(&mut reader, &mut buf) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "sealed archive does not open");
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            if n == 0 {
                return;
            }
            buf.truncate(n);
            if tx.blocking_send(Ok(bytes_of(buf))).is_err() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&format!("attachment; filename=\"subject-access-{}.tar\"", job.id)).expect("ascii"),
    );
    Ok(resp)
}

fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn bytes_of(v: Vec<u8>) -> axum::body::Bytes {
    axum::body::Bytes::from(v)
}

/// The signed erasure certificate of a finished erasure job.
#[utoipa::path(get, path = "/v1/dsr/jobs/{id}/certificate", tag = "dsr", params(("id" = Uuid, Path, description = "Job id")),
    responses((status = 200, description = "signed certificate", body = Object), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn certificate(State(s): State<AppState>, p: Principal, d: DsrCap, Path(id): Path<String>) -> Result<Json<serde_json::Value>, Error> {
    let job = visible_job(&s, &p, &d, Permission::DsrRead, &id).await?;
    match (&job.kind[..], job.result.as_ref().map(|r| r["certificate"].clone())) {
        ("erasure", Some(c)) if !c.is_null() => Ok(Json(c)),
        // A batch: `{pseudonym: signed certificate}`.
        ("erasure_batch", _) if job.state == "done" => Ok(Json(job.result.as_ref().map(|r| r["certificates"].clone()).unwrap_or_default())),
        ("erasure" | "erasure_batch", _) => Err(Error::new(StatusCode::CONFLICT, "job_not_done", format!("the job is {}", job.state))),
        _ => Err(Error::not_found("no_certificate", "only erasure jobs have a certificate")),
    }
}

/// The public key that signs erasure certificates (verify offline with `learnvault dsr verify-certificate`).
#[utoipa::path(get, path = "/v1/dsr/certificate-key", tag = "dsr", security(), responses((status = 200, body = CertificateKey)))]
async fn certificate_key(d: DsrCap) -> Result<Json<CertificateKey>, Error> {
    Ok(Json(CertificateKey { algorithm: "Ed25519", public_key: d.signer.public_key() }))
}
