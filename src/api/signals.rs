//! The review queues over HTTP: `GET /v1/signals/queues/{queue}/items`,
//! `POST /v1/signals/queues/{queue}/next`, `GET /v1/signals/items/{id}`,
//! `POST /v1/signals/items/{id}/decision`.
//! The only routes a signal-derived field leaves by (besides the subject's
//! own access export); none of them acts on a learner. A caller sees the
//! queue of each role they hold that has `signals.review` (integrity items
//! only through a role that also has `integrity.review`), inside their
//! institutions and, for course-scoped roles, their token's courses. Every
//! listing, view and decision is audited; the work is in [`crate::signals`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{AppJson, AppQuery, AppState, Error, ErrorBody, Principal, SignalsCap};
use crate::audit::Outcome;
use crate::policy::Permission;
use crate::signals::queue::{SignalItem, SignalItemSummary, State as ItemState};
use crate::signals::{Decision, Kind, Scope, Signals, SignalsError};

pub fn router() -> OpenApiRouter<AppState> {
    super::area([routes!(list), routes!(next), routes!(view), routes!(decide)])
}

impl From<SignalsError> for Error {
    fn from(e: SignalsError) -> Self {
        match e {
            SignalsError::Invalid { code, message } => Error::bad_request(code, message),
            SignalsError::NotFound => Error::not_found("unknown_item", "no such item in your queues"),
            SignalsError::Leased { until } => Error::new(StatusCode::CONFLICT, "item_leased", format!("another reviewer holds this item until {until}")),
            SignalsError::Decided => Error::new(StatusCode::CONFLICT, "item_decided", "this item was decided already; decisions are final"),
            SignalsError::Warehouse(w) => {
                tracing::error!(error = %w, "warehouse query failed");
                Error::new(StatusCode::SERVICE_UNAVAILABLE, "warehouse_unavailable", "the warehouse did not answer; retry later")
            }
            SignalsError::Db(d) => d.into(),
            other => Error::Internal(other.to_string()),
        }
    }
}

/// The queues `p` may read: one per role with `signals.review` that a detector is routed to.
fn scopes(s: &AppState, sg: &Signals, p: &Principal) -> Vec<Scope> {
    p.roles
        .iter()
        .filter(|r| s.policies.allows(std::slice::from_ref(*r), Permission::SignalsReview))
        .filter_map(|r| {
            let one = std::slice::from_ref(r);
            let kinds: Vec<Kind> = sg
                .config()
                .kinds_of(r)
                .into_iter()
                .filter(|k| *k != Kind::Integrity || s.policies.allows(one, Permission::IntegrityReview))
                .collect();
            (!kinds.is_empty()).then(|| Scope {
                queue: r.clone(),
                kinds,
                institutions: p.institutions.clone(),
                courses: s.policies.is_course_scoped(r).then(|| p.courses.clone()),
            })
        })
        .collect()
}

/// Authorise `signals.review`, then the caller's scopes (none: refused, audited).
async fn authorised(s: &AppState, p: &Principal, sg: SignalsCap, action: &str) -> Result<(Arc<Signals>, Vec<Scope>), Error> {
    s.authorize(p, Permission::SignalsReview, None, None).await?;
    let sg = sg.0;
    let sc = scopes(s, &sg, p);
    if sc.is_empty() {
        let mut e = p.entry(action, None, None, Outcome::Denied);
        e.detail = serde_json::json!({"reason": "no_review_queue"});
        s.audit.record(e).await?;
        return Err(Error::forbidden("none of your roles has a review queue you may read"));
    }
    Ok((sg, sc))
}

/// The caller's scope of `queue`, when it is one of the caller's queues (otherwise
/// refused, audited as `action`).
async fn own_queue<'a>(s: &AppState, p: &Principal, scopes: &'a [Scope], queue: &str, action: &str) -> Result<&'a Scope, Error> {
    if let Some(scope) = scopes.iter().find(|x| x.queue == queue) {
        return Ok(scope);
    }
    let mut e = p.entry(action, None, None, Outcome::Denied);
    e.detail = serde_json::json!({"reason": "queue_not_yours", "queue": queue.chars().take(64).collect::<String>()});
    s.audit.record(e).await?;
    Err(Error::forbidden("this is not one of your review queues"))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `open`, `in_review` or `decided` (default: all).
    state: Option<ItemState>,
}

#[derive(Serialize, ToSchema)]
pub struct SignalQueue {
    pub queue: String,
    pub items: Vec<SignalItemSummary>,
}

/// The items of one review queue (a role the caller holds), newest first,
/// within the caller's institutions and courses. No subjects, no evidence:
/// open an item to see them (audited). Integrity items need `integrity.review`.
#[utoipa::path(get, path = "/v1/signals/queues/{queue}/items", tag = "signals",
    params(("queue" = String, Path, description = "Queue: a role routed to by policies/signals.yaml"), ListQuery),
    responses((status = 200, body = SignalQueue)))]
async fn list(State(s): State<AppState>, p: Principal, sg: SignalsCap, Path(queue): Path<String>, AppQuery(q): AppQuery<ListQuery>) -> Result<Json<SignalQueue>, Error> {
    let (sg, sc) = authorised(&s, &p, sg, "signals.list").await?;
    let scope = own_queue(&s, &p, &sc, &queue, "signals.list").await?;
    let items = sg.list(scope, q.state).await?;
    let mut e = p.entry("signals.list", None, None, Outcome::Success);
    e.detail = serde_json::json!({"queue": scope.queue, "items": items.len()});
    s.audit.record(e).await?;
    Ok(Json(SignalQueue { queue: scope.queue.clone(), items }))
}

/// Take the oldest free item of one of your queues (open, or whose review
/// lease expired) with its evidence, leased to you; two reviewers asking at
/// once get different items. Audited like a view. 404 `queue_empty` when none is free.
#[utoipa::path(post, path = "/v1/signals/queues/{queue}/next", tag = "signals",
    params(("queue" = String, Path, description = "Queue: a role routed to by policies/signals.yaml")),
    responses((status = 200, body = SignalItem), (status = 404, body = ErrorBody)))]
async fn next(State(s): State<AppState>, p: Principal, sg: SignalsCap, Path(queue): Path<String>) -> Result<Json<SignalItem>, Error> {
    let (sg, sc) = authorised(&s, &p, sg, "signals.view").await?;
    let scope = own_queue(&s, &p, &sc, &queue, "signals.view").await?;
    let entry = p.entry("signals.view", None, None, Outcome::Success);
    match sg.next(scope, &p.sub, entry).await? {
        Some(item) => Ok(Json(item)),
        None => Err(Error::not_found("queue_empty", "no free item in this queue")),
    }
}

/// One item with its evidence: the statistic, baseline and band, the
/// pseudonymous events behind it, the subjects (pseudonyms), and the cohort
/// context released through disclosure control. Viewing takes the review
/// lease when the item is free; every view is audited before it is returned.
#[utoipa::path(get, path = "/v1/signals/items/{id}", tag = "signals",
    params(("id" = Uuid, Path, description = "Item")),
    responses((status = 200, body = SignalItem), (status = 404, body = ErrorBody)))]
async fn view(State(s): State<AppState>, p: Principal, sg: SignalsCap, Path(id): Path<String>) -> Result<Json<SignalItem>, Error> {
    let (sg, sc) = authorised(&s, &p, sg, "signals.view").await?;
    let id = Uuid::parse_str(&id).map_err(|_| Error::bad_request("invalid_id", "the item id is not a UUID"))?;
    let entry = p.entry("signals.view", None, None, Outcome::Success);
    match sg.view(id, &sc, &p.sub, entry).await {
        Err(SignalsError::NotFound) => Err(not_found(&s, &p, "signals.view", id).await),
        other => Ok(Json(other?)),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    /// What the reviewer decided (recorded, never carried out by learnvault).
    decision: Decision,
    /// Why (1-4000 characters; recorded in the audit log).
    #[schema(max_length = 4000, pattern = r"\S")]
    note: String,
}

/// Record a decision on an item with a note; final, audited. A decision is a
/// record of what a human did or will do: learnvault carries none out.
#[utoipa::path(post, path = "/v1/signals/items/{id}/decision", tag = "signals", request_body = DecisionRequest,
    params(("id" = Uuid, Path, description = "Item")),
    responses((status = 200, body = SignalItem), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn decide(State(s): State<AppState>, p: Principal, sg: SignalsCap, Path(id): Path<String>, AppJson(req): AppJson<DecisionRequest>) -> Result<Json<SignalItem>, Error> {
    let (sg, sc) = authorised(&s, &p, sg, "signals.decide").await?;
    let id = Uuid::parse_str(&id).map_err(|_| Error::bad_request("invalid_id", "the item id is not a UUID"))?;
    let entry = p.entry("signals.decide", None, None, Outcome::Success);
    match sg.decide(id, &sc, &p.sub, req.decision, &req.note, entry).await {
        Err(SignalsError::NotFound) => Err(not_found(&s, &p, "signals.decide", id).await),
        other => Ok(Json(other?)),
    }
}

async fn not_found(s: &AppState, p: &Principal, action: &str, id: Uuid) -> Error {
    let mut e = p.entry(action, None, None, Outcome::NotFound);
    e.detail = serde_json::json!({"item": id});
    if let Err(a) = s.audit.record(e).await {
        return a.into();
    }
    Error::not_found("unknown_item", "no such item in your queues")
}
