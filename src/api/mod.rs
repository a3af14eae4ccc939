//! HTTP API (axum). Invariant: only `api` serves HTTP: routes, status codes,
//! headers and extractors live here (`app::serve` only binds a listener to
//! [`router`]); the HTTP clients elsewhere are `warehouse::http` (ClickHouse's
//! HTTP interface) and the CLI's demo, load generator and benchmarks.
//! Handlers are thin: they parse, authorise (every denial audited) and call a
//! context.
//! The OpenAPI document is generated from the same route definitions.

mod audit;
mod capability;
mod consent;
mod contract;
mod dsr;
mod error;
mod extract;
mod features;
mod ingest;
mod ops;
mod pseudonyms;
mod serve;
mod signals;

pub use capability::{DsrCap, GatewayCap, ServeCap, SignalsCap};
pub use error::{Error, ErrorBody};
pub use extract::{AppJson, AppQuery, Delegated, Principal};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Instant;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use uuid::Uuid;

use crate::audit::{Outcome, Recorder};
use crate::auth::Authenticator;
use crate::policy::{Permission, Policies};
use crate::dsr::Dsr;
use crate::vault::Vault;
use crate::warehouse::Warehouse;

/// Request limits, from `Settings`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub body_bytes: usize,
    pub batch_body_bytes: usize,
    pub batch_items: usize,
    /// Events (or xAPI statements) in one ingest request.
    pub ingest_events: usize,
}

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub auth: Arc<Authenticator>,
    pub policies: Arc<Policies>,
    pub vault: Vault,
    pub audit: Recorder,
    pub metrics: PrometheusHandle,
    pub limits: Limits,
    /// The warehouse, when this process owns it (`serve`); `None` in API-only processes.
    /// Handlers take the capabilities below through their extractors (`DsrCap`, `ServeCap`,
    /// `SignalsCap`, `GatewayCap`), which answer 503 when this process lacks them.
    pub warehouse: Option<Warehouse>,
    /// Subject requests (needs the warehouse).
    pub dsr: Option<Arc<Dsr>>,
    /// The ingest gateway (needs Kafka): `None` in processes that do not ingest.
    pub gateway: Option<Arc<crate::gateway::Gateway>>,
    /// The governed read path (needs the warehouse).
    pub serve: Option<Arc<crate::serve::Serve>>,
    /// Signs and keeps the audit chain's checkpoints.
    pub anchor: Arc<crate::audit::checkpoint::Anchor>,
    /// Signals and their review queues (needs the warehouse).
    pub signals: Option<Arc<crate::signals::Signals>>,
    /// The console's settings (sessions, sign-in links).
    pub console: Arc<crate::console::Config>,
}

impl AppState {
    /// Authorise `principal` for `perm` (inside `institution` when given).
    /// A refusal is audited (fail closed: if the audit write fails the caller
    /// gets 503, and is refused either way).
    pub async fn authorize(
        &self,
        principal: &Principal,
        perm: Permission,
        institution: Option<&str>,
        target: Option<Uuid>,
    ) -> Result<(), Error> {
        let reason = if !self.policies.allows(&principal.roles, perm) {
            "role_lacks_permission"
        } else if institution.is_some_and(|i| !principal.can_act_in(i)) {
            "institution_not_allowed"
        } else {
            return Ok(());
        };
        let mut entry = principal.entry(perm.as_str(), institution, target, Outcome::Denied);
        entry.detail = serde_json::json!({"reason": reason});
        self.audit.record(entry).await?;
        metrics::counter!("learnvault_authz_denied_total", "permission" => perm.as_str()).increment(1);
        Err(Error::forbidden(match reason {
            "role_lacks_permission" => format!("none of your roles grants {}", perm.as_str()),
            _ => "you cannot act for this institution".to_string(),
        }))
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "learnvault",
        description = "Identity vault, pseudonym API and tamper-evident audit log for learner telemetry. \
                       Every error body is `{\"error\": {\"code\", \"message\"}}` with a stable code."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "pseudonyms", description = "Pseudonym issuance, lookup and audited re-identification"),
        (name = "consent", description = "Per-purpose consent, append-only history"),
        (name = "audit", description = "Tamper-evident audit log"),
        (name = "ingest", description = "Learning events and xAPI statements, pseudonymised at the gate"),
        (name = "dsr", description = "Subject access and erasure requests, archives, erasure certificates"),
        (name = "features", description = "Behaviour-only recommendation features (recommendations consent)"),
        (name = "analytics", description = "Cohort analytics released through disclosure control, and the audited drill-down"),
        (name = "signals", description = "Review queues of signals that inform humans (disengagement, content defects, integrity); nothing here acts on a learner"),
        (name = "retention", description = "Retention proof"),
        (name = "ops", description = "Health, readiness, metrics, this document")
    )
)]
struct ApiDoc;

struct BearerAuth;
impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// The OpenAPI document as published at `/openapi.json` (see `contract`).
pub fn openapi_document() -> serde_json::Value {
    contract::document(&openapi())
}

/// The OpenAPI document, generated from the routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = routes(Limits { body_bytes: 0, batch_body_bytes: 0, batch_items: 0, ingest_events: 0 }).split_for_parts().1;
    contract::Complete.modify(&mut doc);
    doc
}

/// One API area's routes: each element one `routes!(...)` (a path and its methods).
fn area<const N: usize>(routes: [UtoipaMethodRouter<AppState>; N]) -> OpenApiRouter<AppState> {
    routes.into_iter().fold(OpenApiRouter::new(), OpenApiRouter::routes)
}

fn routes(limits: Limits) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(pseudonyms::router(limits))
        .merge(consent::router())
        .merge(audit::router())
        .merge(ingest::router(limits))
        .merge(dsr::router())
        .merge(features::router())
        .merge(serve::router())
        .merge(signals::router())
        .merge(ops::router())
}

pub fn router(state: AppState) -> Router {
    let (router, _doc) = routes(state.limits).split_for_parts();
    router
        .fallback(|| async { Error::not_found("route_not_found", "no such route") })
        .layer(axum::middleware::from_fn(track))
        .layer(DefaultBodyLimit::max(state.limits.body_bytes))
        .with_state(state)
}

/// Request metrics by matched route (never by raw path: paths carry pseudonyms).
async fn track(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("learnvault_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("learnvault_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}
