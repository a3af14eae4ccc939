//! Ingest: `POST /v1/events` (taxonomy events as a JSON array or NDJSON) and
//! the xAPI statement resource (`POST|PUT /xapi/statements`, `GET /xapi/about`).
//! The work is in [`crate::gateway`]; this module parses HTTP and maps statuses.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{AppState, Error, ErrorBody, GatewayCap, Limits, Principal};
use crate::audit::Outcome;
use crate::gateway::{self, xapi, Gateway, Incoming, Status};
use crate::policy::Permission;

pub fn router(limits: Limits) -> OpenApiRouter<AppState> {
    super::area([routes!(events), routes!(xapi_post, xapi_put), routes!(xapi_about)]).layer(DefaultBodyLimit::max(limits.batch_body_bytes))
}

#[derive(Serialize, ToSchema)]
pub struct EventResult {
    index: usize,
    /// `accepted`, `rejected` or `unavailable` (retry).
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<uuid::Uuid>,
    /// The dead-letter reason code of a rejected event.
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct IngestResponse {
    accepted: usize,
    rejected: usize,
    unavailable: usize,
    results: Vec<EventResult>,
}

fn unavailable() -> Error {
    Error::new(StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable", "the event broker did not acknowledge the events; nothing unacknowledged was accepted, retry")
}

impl From<gateway::GatewayError> for Error {
    fn from(e: gateway::GatewayError) -> Self {
        match e {
            gateway::GatewayError::Vault(v) => v.into(),
            gateway::GatewayError::Db(d) => d.into(),
            // Start-up errors: a running gateway does not answer with them.
            other => Error::Internal(other.to_string()),
        }
    }
}

/// A read event, or the reason it is refused alone; `Err(not_json)` when it is not JSON.
#[allow(clippy::type_complexity)]
fn read<'a>(r: gateway::Read<'a>, not_json: &'static str) -> Result<Result<Incoming<'a>, (Map<String, Value>, &'static str)>, &'static str> {
    match r {
        gateway::Read::Event(it) => Ok(Ok(it)),
        gateway::Read::Refused(m, why) => Ok(Err((m, why))),
        gateway::Read::NotJson => Err(not_json),
    }
}

/// Run the gateway for a request's events; the issuance audit row names the caller.
async fn run(gw: &Gateway, p: &Principal, items: Vec<Incoming<'_>>) -> Result<Vec<Status>, Error> {
    let mut entry = p.entry(Permission::PseudonymIssue.as_str(), None, None, Outcome::Success);
    entry.detail = json!({"via": "gateway"});
    let may = |i: &str| p.can_act_in(i);
    Ok(gw.ingest(items, &may, entry).await?)
}

/// Send learning events (LMS). A JSON array (or one object) of taxonomy events,
/// or newline-delimited JSON (`Content-Type: application/x-ndjson`). Each event
/// names its learner by `learner_id` (a pseudonym) or by
/// `learner: {institution, external_id}` (pseudonymised here; the identity never
/// reaches Kafka). `server_ts` is set here. 200 with a result per event
/// (accepted, or rejected with its dead-letter reason code); 503 with
/// `Retry-After` when the broker did not acknowledge (those events say `unavailable`).
#[utoipa::path(post, path = "/v1/events", tag = "ingest",
    request_body(content = Vec<Object>, description = "taxonomy events", content_type = "application/json"),
    responses((status = 200, body = IngestResponse), (status = 503, body = IngestResponse)))]
async fn events(State(s): State<AppState>, p: Principal, gw: GatewayCap, headers: HeaderMap, body: Bytes) -> Result<Response, Error> {
    s.authorize(&p, Permission::EventsIngest, None, None).await?;
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-ndjson") || ct.starts_with("application/jsonl"));
    let max = s.limits.ingest_events;
    // Each event is read the typed, borrowed way when it can be (`gateway::read_event`), else as
    // a JSON object; either way the same answers.
    let mut parsed: Vec<Result<Incoming<'_>, (Map<String, Value>, &'static str)>> = Vec::new();
    if ndjson {
        for line in body.split(|b| *b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)) {
            if parsed.len() == max {
                return Err(Error::too_large("batch_too_large", format!("a request holds at most {max} events")));
            }
            parsed.push(read(gateway::read_event(line), "line is not valid JSON").unwrap_or_else(|why| Err((Map::new(), why))));
        }
    } else {
        let invalid_json = || Error::bad_request("invalid_json", "the body is not valid JSON (send an array of events, or NDJSON with Content-Type: application/x-ndjson)");
        // The whole body must be JSON (checked without building it), then each element is read alone.
        serde_json::from_slice::<serde::de::IgnoredAny>(&body).map_err(|_| invalid_json())?;
        let elements = match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'[') => gateway::wire::array_elements(&body).ok_or_else(invalid_json)?,
            Some(b'{') => vec![&body[..]],
            _ => return Err(Error::bad_request("invalid_body", "send an array of event objects")),
        };
        for e in &elements {
            // An element that does not read as JSON alone: the body is not JSON either.
            parsed.push(read(gateway::read_event(e), "").map_err(|_| invalid_json())?);
        }
        if parsed.len() > max {
            return Err(Error::too_large("batch_too_large", format!("a request holds at most {max} events")));
        }
    }
    if parsed.is_empty() {
        return Err(Error::bad_request("empty_batch", "no events in the body"));
    }
    // Events that cannot even be split from their identity are refused here, by position.
    let mut pre: Vec<Option<(String, &'static str)>> = Vec::with_capacity(parsed.len());
    let mut items = Vec::with_capacity(parsed.len());
    for r in parsed {
        match r {
            Ok(it) => {
                pre.push(None);
                items.push(it);
            }
            Err((event, why)) => {
                let code = if why.contains("JSON") { "invalid_json" } else { "schema_violation" };
                // Identity fields were removed by split_identity; an unparseable line is not kept at all.
                if !gw.dead_letter(code, why, Value::Object(event)).await {
                    return Err(unavailable());
                }
                pre.push(Some((code.into(), why)));
            }
        }
    }
    let mut statuses = run(&gw, &p, items).await?.into_iter();
    let mut results = Vec::with_capacity(pre.len());
    let (mut accepted, mut rejected, mut unavail) = (0, 0, 0);
    for (index, pre) in pre.into_iter().enumerate() {
        let st = match pre {
            Some((code, why)) => Status::Rejected { code, detail: why.into() },
            None => statuses.next().expect("a status per event"),
        };
        results.push(match st {
            Status::Accepted { event_id } => {
                accepted += 1;
                EventResult { index, status: "accepted", event_id: Some(event_id), code: None, detail: None }
            }
            Status::Rejected { code, detail } => {
                rejected += 1;
                EventResult { index, status: "rejected", event_id: None, code: Some(code), detail: Some(detail) }
            }
            Status::Unavailable => {
                unavail += 1;
                EventResult { index, status: "unavailable", event_id: None, code: Some("broker_unavailable".into()), detail: None }
            }
        });
    }
    let body = IngestResponse { accepted, rejected, unavailable: unavail, results };
    if unavail > 0 {
        let mut resp = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Ok(resp);
    }
    Ok((StatusCode::OK, Json(body)).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PutParams {
    /// The statement's id, a UUID in standard form (36 characters).
    #[serde(rename = "statementId")]
    #[param(pattern = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")]
    statement_id: String,
}

fn xapi_error(e: xapi::XapiError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    with_version((status, Json(json!({"error": {"code": e.code, "message": e.to_string()}}))).into_response())
}

fn with_version(mut r: Response) -> Response {
    r.headers_mut().insert("X-Experience-API-Version", HeaderValue::from_static(xapi::LRS_VERSION));
    r
}

/// The institution xAPI statements belong to: the caller's only institution.
fn xapi_institution(p: &Principal) -> Result<String, Error> {
    match p.institutions.as_deref() {
        Some([one]) => Ok(one.clone()),
        _ => Err(Error::new(StatusCode::FORBIDDEN, "institution_ambiguous", "xAPI statements carry no institution: use a token scoped to exactly one institution")),
    }
}

async fn statements(s: AppState, p: Principal, gw: GatewayCap, headers: HeaderMap, body: Bytes, put_id: Option<uuid::Uuid>) -> Result<Response, Error> {
    s.authorize(&p, Permission::EventsIngest, None, None).await?;
    if let Err(e) = xapi::check_version(headers.get("X-Experience-API-Version").and_then(|v| v.to_str().ok())) {
        return Ok(xapi_error(e));
    }
    let institution = xapi_institution(&p)?;
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return Ok(xapi_error(xapi::XapiError { code: "xapi_invalid", path: "$".into(), message: "the body is not valid JSON".into() })),
    };
    if let Value::Array(a) = &v {
        if a.len() > s.limits.ingest_events {
            return Err(Error::too_large("batch_too_large", format!("a request holds at most {} statements", s.limits.ingest_events)));
        }
    }
    let answers = match xapi::map_body(&v, put_id, chrono::Utc::now()) {
        Ok(a) => a,
        Err(e) => return Ok(xapi_error(e)),
    };
    let bodies = xapi::split_body(&v).map_err(|_| Error::Internal("a mapped body splits".into()))?;
    // One answer per statement: acknowledged (mapped, or valid but unmapped), or refused alone.
    let mut acked: Vec<uuid::Uuid> = Vec::new();
    // The position in the body of each acknowledged statement.
    let mut acked_at: Vec<usize> = Vec::new();
    let mut items = Vec::new();
    // For each item, its statement's place in `acked`, when the statement has no `timestamp`.
    let mut untimed: Vec<(usize, usize)> = Vec::new();
    let mut unmapped: Vec<(uuid::Uuid, String, &'static str)> = Vec::new();
    let mut refused: Vec<(usize, xapi::Refused)> = Vec::new();
    for (i, a) in answers.into_iter().enumerate() {
        let o = match a {
            Ok(o) => o,
            Err(r) => {
                refused.push((i, r));
                continue;
            }
        };
        // `account.homePage` must be an LMS declared for the token's institution (policies/lms.yaml).
        let Some(external_id) = gw.xapi_external_id(&institution, o.actor()) else {
            let (statement_id, verb) = match &o {
                xapi::Outcome::Mapped(m) => (m.statement_id, m.event["props"]["xapi_verb"].as_str().unwrap_or_default().to_owned()),
                xapi::Outcome::Unmapped { statement_id, verb, .. } => (*statement_id, verb.clone()),
            };
            let path = if v.is_array() { format!("[{i}].actor.account.homePage") } else { "actor.account.homePage".into() };
            let error = xapi::XapiError {
                code: "xapi_home_page",
                path,
                message: "is not an LMS home page declared for this institution (policies/lms.yaml)".into(),
            };
            refused.push((i, xapi::Refused { statement_id: Some(statement_id), verb, error }));
            continue;
        };
        acked.push(o.statement_id());
        acked_at.push(i);
        match o {
            xapi::Outcome::Mapped(m) => {
                if bodies[i].get("timestamp").is_none() {
                    untimed.push((items.len(), acked.len() - 1));
                }
                items.push(Incoming { event: gateway::Body::Map(m.event), identity: Some((institution.clone().into(), external_id.into())) })
            }
            xapi::Outcome::Unmapped { statement_id, verb, reason, .. } => unmapped.push((statement_id, verb, reason)),
        }
    }
    // Nothing usable: the request is refused as a whole, nothing produced (the first refusal says why).
    if acked.is_empty() && !refused.is_empty() {
        return Ok(xapi_error(refused.swap_remove(0).1.error));
    }
    // A statement id is stored once: the same content again is acknowledged again (and lands
    // once: the lander keeps one row per event id), other content is a conflict (409, nothing stored).
    let recorded: Vec<(uuid::Uuid, &Value)> = acked.iter().zip(&acked_at).map(|(id, i)| (*id, bodies[*i])).collect();
    let stored = gw.xapi_record(&institution, &recorded).await?;
    if let Some(k) = stored.iter().position(|s| s.0 == crate::dedup::Stored::Conflict) {
        let path = if v.is_array() { format!("[{}].id", acked_at[k]) } else { "id".into() };
        let message = "a statement with this id is stored already with other content".to_string();
        return Ok(xapi_error(xapi::XapiError { code: "xapi_id_conflict", path, message }));
    }
    let again: std::collections::HashSet<uuid::Uuid> =
        acked.iter().zip(&stored).filter(|(_, s)| s.0 == crate::dedup::Stored::Same).map(|(id, _)| *id).collect();
    // A statement sent without `timestamp` takes the time it was first stored (xAPI 1.0.3,
    // 2.4.7: "set to the value of stored"), on every retry the same: its event's client time,
    // and so its deduplication key, do not change with the delivery.
    for (item, k) in untimed {
        if let gateway::Body::Map(ev) = &mut items[item].event {
            ev.insert("client_ts".into(), stored[k].1.to_rfc3339_opts(chrono::SecondsFormat::Millis, true).into());
        }
    }
    // Valid xAPI with no event: acknowledged, dead-lettered with its id and verb, without the actor
    // (once: not again when the same statement comes again).
    for (statement_id, verb, reason) in unmapped.into_iter().filter(|u| !again.contains(&u.0)) {
        if !gw.dead_letter(reason, "statement acknowledged, not landed", json!({"statement_id": statement_id, "verb": verb})).await {
            return Err(unavailable());
        }
    }
    // Refused alone while its neighbours are acknowledged: dead-lettered with its code, id and path.
    let mut refused_header = Vec::new();
    for (i, r) in &refused {
        let payload = json!({"statement_id": r.statement_id, "verb": r.verb, "path": r.error.path});
        if !gw.dead_letter(r.error.code, &r.error.message, payload).await {
            return Err(unavailable());
        }
        refused_header.push(format!("{i}:{}", r.error.code));
    }
    let statuses = if items.is_empty() { Vec::new() } else { run(&gw, &p, items).await? };
    if statuses.contains(&Status::Unavailable) {
        return Err(unavailable());
    }
    // Statements refused by governance or the taxonomy are in the dead-letter topic with their
    // reason; the LRS contract acknowledges every valid statement.
    let mut resp = match put_id {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => (StatusCode::OK, Json(acked)).into_response(),
    };
    if !refused_header.is_empty() {
        let value = HeaderValue::from_str(&refused_header.join(",")).expect("indices and codes are ASCII");
        resp.headers_mut().insert("X-Learnvault-Refused", value);
    }
    Ok(with_version(resp))
}

/// xAPI 1.0.3 statements (a statement or an array), for LMSs that already emit
/// xAPI (Open edX event-routing-backends, Moodle logstore_xapi). Requires
/// `X-Experience-API-Version: 1.0.x`; answers 200 with the ids of the statements
/// acknowledged (mapped, or valid but unmapped and dead-lettered). A statement
/// unusable alone (invalid xAPI, `account.homePage` not declared for the institution)
/// is left out of the ids, dead-lettered with its code and id, and listed in the
/// `X-Learnvault-Refused` header (`index:code,...`); its neighbours go through.
/// 400, nothing produced: not statements, a statement without actor, verb or object,
/// duplicate ids, or no statement acknowledged. A statement id is stored once: sent again
/// with the same content it is acknowledged again and lands once; with other content the
/// request is answered 409 `xapi_id_conflict`, nothing produced.
#[utoipa::path(post, path = "/xapi/statements", tag = "ingest", params(("X-Experience-API-Version" = String, Header, description = "`1.0` or `1.0.<patch>`", pattern = r"^\s*1\.0(\.[0-9]+)?\s*$")),
    request_body(content = Object, description = "an xAPI statement or an array of them"),
    responses((status = 200, description = "the ids of the statements acknowledged", body = Vec<uuid::Uuid>,       headers(("X-Learnvault-Refused" = String, description = "statements refused alone, `<index>:<code>,...` (absent when none)"))),
        (status = 409, body = ErrorBody, description = "`xapi_id_conflict`: a statement id stored already with other content")))]
async fn xapi_post(State(s): State<AppState>, p: Principal, gw: GatewayCap, headers: HeaderMap, body: Bytes) -> Result<Response, Error> {
    statements(s, p, gw, headers, body, None).await
}

/// One xAPI statement with its id in the query (`?statementId=`); 204 (also when the same
/// statement is stored already), 409 `xapi_id_conflict` when the id is stored with other
/// content or the body names another id.
#[utoipa::path(put, path = "/xapi/statements", tag = "ingest", params(PutParams, ("X-Experience-API-Version" = String, Header, description = "`1.0` or `1.0.<patch>`", pattern = r"^\s*1\.0(\.[0-9]+)?\s*$")),
    request_body(content = Object, description = "one xAPI statement"),
    responses((status = 204, description = "stored"), (status = 409, body = ErrorBody, description = "`xapi_id_conflict`")))]
async fn xapi_put(
    State(s): State<AppState>,
    p: Principal,
    gw: GatewayCap,
    q: Result<Query<PutParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let Ok(Query(q)) = q else {
        return Ok(xapi_error(xapi::XapiError { code: "xapi_invalid", path: "statementId".into(), message: "PUT needs the statementId query parameter".into() }));
    };
    let id = match xapi::parse_statement_id(&q.statement_id) {
        Ok(id) => id,
        Err(e) => return Ok(xapi_error(e)),
    };
    statements(s, p, gw, headers, body, Some(id)).await
}

/// The LRS "about" resource: supported xAPI versions.
#[utoipa::path(get, path = "/xapi/about", tag = "ingest", security(), responses((status = 200, body = Object)))]
async fn xapi_about() -> Response {
    with_version(Json(json!({"version": [xapi::LRS_VERSION]})).into_response())
}
