//! Operational endpoints: liveness, readiness, Prometheus metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{AppState, Error, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    super::area([routes!(healthz), routes!(readyz), routes!(metrics), routes!(openapi_json)])
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`: PostgreSQL answers (the API can serve); `degraded`: it does, but this
    /// process's lander is stalled (events are accepted and wait in Kafka).
    status: &'static str,
    /// What this process's lander waits for, oldest first; empty when it lands (or runs elsewhere).
    lander_stalls: Vec<crate::lander::health::Stall>,
}

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops", security(), responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: PostgreSQL answers (else 503). The body also says whether this
/// process's lander is stalled and on what (a stalled lander does not take the API
/// out of rotation: accepted events wait in Kafka).
#[utoipa::path(get, path = "/readyz", tag = "ops", security(),
    responses((status = 200, body = Readiness), (status = 503, body = ErrorBody)))]
async fn readyz(State(s): State<AppState>) -> Result<Json<Readiness>, Error> {
    sqlx::query("SELECT 1").execute(&s.pool).await.map_err(|e| {
        tracing::warn!(error = %e, "readiness check failed");
        Error::new(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable", "PostgreSQL is not reachable")
    })?;
    let lander_stalls = crate::lander::health::current();
    Ok(Json(Readiness { status: if lander_stalls.is_empty() { "ready" } else { "degraded" }, lander_stalls }))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "ops", security(),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}

/// This OpenAPI 3 document, generated from the route definitions.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", security(),
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_json(State(s): State<AppState>) -> Json<serde_json::Value> {
    static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    let mut doc = DOC.get_or_init(super::openapi_document).clone();
    // The purposes this server declares (policy files), so requests naming others are out of contract.
    super::contract::declare_purposes(&mut doc, &s.policies, s.dsr.as_ref().map(|d| &d.erasure_policy));
    Json(doc)
}
