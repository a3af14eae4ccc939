//! `/v1/features/{pseudonym}`: behaviour-only recommendation features (the
//! `features.*` views, whose lineage CI checks against protected attributes),
//! served only for learners who granted `recommendations` consent (the check
//! and the query are `serve::Serve::features`).
//! `/v1/retention/report`: the retention proof, for auditors.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{AppState, DsrCap, Error, ErrorBody, Principal, ServeCap};
use crate::audit::Outcome;
use crate::domain::Pseudonym;
use crate::policy::Permission;
use crate::vault::Subject;

pub fn router() -> OpenApiRouter<AppState> {
    super::area([routes!(features), routes!(retention_report)])
}

#[derive(Serialize, ToSchema)]
pub struct Features {
    pseudonym: Uuid,
    /// The feature set (the view it comes from).
    feature_set: &'static str,
    /// Feature name -> value; empty when the learner has no activity in the window.
    #[schema(value_type = Object)]
    features: serde_json::Map<String, serde_json::Value>,
}

/// A learner's engagement features (activity cadence, completion, replay and
/// pause rates, assessment timing). 403 `consent_required` without
/// `recommendations` consent (denied by default; the refusal is audited).
#[utoipa::path(get, path = "/v1/features/{pseudonym}", tag = "features",
    params(("pseudonym" = Uuid, Path, description = "Learner pseudonym")),
    responses((status = 200, body = Features), (status = 404, body = ErrorBody), (status = 410, body = ErrorBody)))]
async fn features(State(s): State<AppState>, p: Principal, serve: ServeCap, Path(raw): Path<String>) -> Result<Json<Features>, Error> {
    let pseudonym = Pseudonym::parse(&raw)?;
    s.authorize(&p, Permission::FeaturesRead, None, Some(pseudonym.as_uuid())).await?;
    let institution = match s.vault.subject(pseudonym).await? {
        Subject::Active { institution } => institution,
        Subject::Erased { .. } => return Err(Error::new(StatusCode::GONE, "erased", "this learner has been erased")),
        Subject::Unknown => return Err(Error::not_found("unknown_pseudonym", "no such pseudonym")),
    };
    s.authorize(&p, Permission::FeaturesRead, Some(&institution), Some(pseudonym.as_uuid())).await?;
    let features = match serve.features(&s.vault, s.policies.consent_default("recommendations"), pseudonym).await? {
        crate::serve::features::Features::Granted(f) => f,
        crate::serve::features::Features::ConsentRequired => {
            let mut entry = p.entry(Permission::FeaturesRead.as_str(), Some(&institution), Some(pseudonym.as_uuid()), Outcome::Denied);
            entry.detail = serde_json::json!({"reason": "no_recommendations_consent"});
            s.audit.record(entry).await?;
            return Err(Error::new(StatusCode::FORBIDDEN, "consent_required", "this learner has not granted `recommendations` consent"));
        }
    };
    Ok(Json(Features { pseudonym: pseudonym.as_uuid(), feature_set: crate::serve::features::FEATURE_SET, features }))
}

/// The retention proof (same as `learnvault retention verify`): live TTLs and topic
/// configurations equal `policies/retention.yaml`, no row or archive older than policy plus grace.
#[utoipa::path(get, path = "/v1/retention/report", tag = "retention",
    responses((status = 200, description = "the report; `ok` false on any violation", body = Object)))]
async fn retention_report(State(s): State<AppState>, p: Principal, d: DsrCap) -> Result<Json<crate::retention::Report>, Error> {
    s.authorize(&p, Permission::RetentionRead, None, None).await?;
    let unavailable =
        |e: crate::datamap::CheckError| Error::new(StatusCode::SERVICE_UNAVAILABLE, "retention_check_failed", e.to_string());
    let mut report = crate::retention::verify(&d.warehouse, &d.retention).await.map_err(unavailable)?;
    crate::retention::verify_postgres(&mut report, &d.pool, &d.retention, &d.archive_dir).await.map_err(unavailable)?;
    crate::retention::verify_topics(&mut report, &d.kafka_brokers, &d.topics).await;
    Ok(Json(report))
}
