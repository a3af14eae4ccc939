//! The read path over HTTP: cohort analytics (`/v1/courses/{course_id}/...`,
//! `/v1/content/{content_id}/replays`), every body a [`Released`] value, and
//! the drill-down `POST /v1/learners/{pseudonym}/activity`.
//! The work is in [`crate::serve`]; this module authorises and maps statuses.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use axum::Json;
use serde::Deserialize;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{AppJson, AppQuery, AppState, Error, ErrorBody, Principal, ServeCap};
use crate::audit::Outcome;
use crate::domain::Pseudonym;
use crate::policy::Permission;
use crate::serve::drilldown::Timeline;
use crate::serve::engagement::Engagement;
use crate::serve::funnel::{Funnel, FunnelCounts};
use crate::serve::replays::Replays;
use crate::serve::time_on_task::{TimeOnTask, TimeOnTaskStats};
use crate::serve::view::RangeView;
use crate::serve::{Ident, Released, Serve, ServeError, Thresholds};
use crate::vault::Subject;

pub fn router() -> OpenApiRouter<AppState> {
    super::area([routes!(funnel), routes!(engagement), routes!(time_on_task), routes!(replays), routes!(drilldown), routes!(live)])
}

impl From<ServeError> for Error {
    fn from(e: ServeError) -> Self {
        match e {
            ServeError::Invalid { code, message } => Error::bad_request(code, message),
            ServeError::UnknownCourse => Error::not_found("unknown_course", "no activity is recorded for this course"),
            ServeError::RateLimited { max_per_hour } => {
                Error::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", format!("at most {max_per_hour} drill-downs per hour; retry later"))
            }
            ServeError::Warehouse(w) => {
                tracing::error!(error = %w, "warehouse query failed");
                Error::new(StatusCode::SERVICE_UNAVAILABLE, "warehouse_unavailable", "the warehouse did not answer; retry later")
            }
            ServeError::Vault(v) => v.into(),
            other => Error::Internal(other.to_string()),
        }
    }
}

/// The failures of a released view, beside the document's common ones.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // documentation: the statuses are answered through `Error`
enum ReleaseFailures {
    /// `unknown_course`: no activity is recorded for this course.
    #[response(status = 404)]
    UnknownCourse(ErrorBody),
    /// `internal`: a release that fails its attacker's audit returns nothing (fail closed).
    #[response(status = 500)]
    Internal(ErrorBody),
}

/// The course a read names in its path (`/v1/courses/{course_id}/...`).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct CoursePath {
    /// Course: 1-128 of `[A-Za-z0-9_.:/-]`
    #[param(pattern = r"^[A-Za-z0-9_.:/-]{1,128}$")]
    course_id: String,
}

/// Parse `course` and authorise a read of it for `perm`: the role, the course
/// scope of course-scoped roles (the token's `courses`), and the institutions
/// of the course's learners. Every refusal is audited. Returns the course and
/// the thresholds in force.
async fn course_read(s: &AppState, p: &Principal, sv: &Serve, perm: Permission, course: &str) -> Result<(Ident, Thresholds), Error> {
    let course = Ident::parse("course_id", course)?;
    s.authorize(p, perm, None, None).await?;
    if !s.policies.allows_course(&p.roles, perm, course.as_str(), &p.courses) {
        let mut entry = p.entry(perm.as_str(), None, None, Outcome::Denied);
        entry.detail = serde_json::json!({"reason": "course_not_in_scope", "course_id": course.as_str()});
        s.audit.record(entry).await?;
        return Err(Error::forbidden("this course is not in your token's scope"));
    }
    let institutions = sv.course_institutions(&course).await?;
    for i in &institutions {
        s.authorize(p, perm, Some(i), None).await?;
    }
    Ok((course, sv.thresholds(&institutions)))
}

/// A `cohort.read` of the course in the path, with query `Q`: the preamble the
/// course views share, as one extractor. It extracts, in the order separate
/// extractors would (so the same refusal comes first), the [`Principal`], the
/// read path ([`ServeCap`]), the path's course and the query, then authorises
/// the read with [`course_read`].
struct CohortRead<Q> {
    sv: ServeCap,
    course: Ident,
    t: Thresholds,
    q: Q,
}

impl<Q: serde::de::DeserializeOwned + Send> FromRequestParts<AppState> for CohortRead<Q> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Response> {
        let p = Principal::from_request_parts(parts, s).await.map_err(IntoResponse::into_response)?;
        let sv = ServeCap::from_request_parts(parts, s).await.map_err(IntoResponse::into_response)?;
        let Path(path) = Path::<CoursePath>::from_request_parts(parts, s).await.map_err(IntoResponse::into_response)?;
        let AppQuery(q) = AppQuery::<Q>::from_request_parts(parts, s).await.map_err(IntoResponse::into_response)?;
        let (course, t) = course_read(s, &p, &sv, Permission::CohortRead, &path.course_id).await.map_err(IntoResponse::into_response)?;
        Ok(CohortRead { sv, course, t, q })
    }
}

impl CohortRead<RangeQuery> {
    fn range(&self) -> Result<crate::serve::DateRange, Error> {
        Ok(self.sv.range(self.q.from.as_deref(), self.q.to.as_deref())?)
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// First day, YYYY-MM-DD (default: 27 days before `to`).
    from: Option<String>,
    /// Last day, inclusive (default: today, UTC).
    to: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EngagementQuery {
    /// Window in minutes up to now (default 60, at most 1440).
    #[param(minimum = 1, maximum = 1440)]
    minutes: Option<u32>,
}

/// Enrolled -> started -> completed -> assessed per cohort, with course totals
/// and each step's share of enrolled. Released through disclosure control:
/// withheld cells are `{"value": null, "suppressed": "small_cell" | "extreme_share" | "complementary" | ...}`;
/// `disclosure` reports thresholds, information loss and the attacker's audit.
#[utoipa::path(get, path = "/v1/courses/{course_id}/funnel", tag = "analytics",
    params(CoursePath, RangeQuery),
    responses((status = 200, body = RangeView<FunnelCounts>, description = "the released funnel, plus `disclosure`"), ReleaseFailures))]
async fn funnel(r: CohortRead<RangeQuery>) -> Result<Json<Released<Funnel>>, Error> {
    Ok(Json(r.sv.funnel(&r.course, &r.range()?, &r.t).await?))
}

/// Per minute and cohort: active learners and heartbeat-based time on task
/// (30 s per heartbeat), with the course total of each minute. Released
/// through disclosure control.
#[utoipa::path(get, path = "/v1/courses/{course_id}/engagement", tag = "analytics",
    params(CoursePath, EngagementQuery),
    responses((status = 200, body = Engagement, description = "the released grid, plus `disclosure`"), ReleaseFailures))]
async fn engagement(r: CohortRead<EngagementQuery>) -> Result<Json<Released<Engagement>>, Error> {
    Ok(Json(r.sv.engagement(&r.course, r.q.minutes.unwrap_or(60), &r.t).await?))
}

/// Per cohort and for the course: learners, and the quartiles of active
/// minutes per learner-day. Released through disclosure control.
#[utoipa::path(get, path = "/v1/courses/{course_id}/time-on-task", tag = "analytics", params(CoursePath, RangeQuery),
    responses((status = 200, body = RangeView<TimeOnTaskStats>, description = "the released statistics, plus `disclosure`"),
        ReleaseFailures))]
async fn time_on_task(r: CohortRead<RangeQuery>) -> Result<Json<Released<TimeOnTask>>, Error> {
    Ok(Json(r.sv.time_on_task(&r.course, &r.range()?, &r.t).await?))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReplaysQuery {
    /// The course the content belongs to (required: scope and thresholds are per course).
    #[param(required = true, pattern = r"^[A-Za-z0-9_.:/-]{1,128}$")]
    course_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// Replays, pauses and distinct learners per 10-second position bucket of one
/// content item (the content-defect view). Released through disclosure control.
#[utoipa::path(get, path = "/v1/content/{content_id}/replays", tag = "analytics",
    params(("content_id" = String, Path, description = "Content item: 1-128 of `[A-Za-z0-9_.:/-]`", pattern = r"^[A-Za-z0-9_.:/-]{1,128}$"), ReplaysQuery),
    responses((status = 200, body = Replays, description = "the released buckets, plus `disclosure`"), ReleaseFailures))]
async fn replays(
    State(s): State<AppState>,
    p: Principal,
    sv: ServeCap,
    Path(content): Path<String>,
    AppQuery(ReplaysQuery { course_id, from, to }): AppQuery<ReplaysQuery>,
) -> Result<Json<Released<Replays>>, Error> {
    let content = Ident::parse("content_id", &content)?;
    let course = course_id.as_deref().ok_or_else(|| Error::bad_request("invalid_query", "`course_id` is required"))?;
    let (course, t) = course_read(&s, &p, &sv, Permission::ContentRead, course).await?;
    let range = sv.range(from.as_deref(), to.as_deref())?;
    Ok(Json(sv.replays(&course, &content, &range, &t).await?))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LiveQuery {
    /// Engagement window in minutes (default 60).
    minutes: Option<u32>,
    /// Funnel range, fixed for the stream's life (defaults as for the funnel).
    from: Option<String>,
    to: Option<String>,
    /// The longest a stream goes without a refresh, 100-60000 ms (default:
    /// `policies/disclosure.yaml` `live.interval_ms`); it also refreshes as rows land.
    interval_ms: Option<u64>,
}

struct LiveState {
    serve: Arc<Serve>,
    course: Ident,
    stream: crate::serve::live::Stream,
    interval: std::time::Duration,
    pending: Vec<crate::serve::live::Message>,
    done: bool,
}

/// Server-Sent Events: `funnel` and `engagement` messages, each a released
/// view, pushed when it changes as rows land (the stream refreshes when the
/// lander of the same process lands a batch, at most once per `live.coalesce_ms`,
/// and at least every `interval_ms`). The live rule
/// (`policies/disclosure.yaml`, `live`): a cell withheld once stays withheld
/// for the stream; counts are floored to bands (`band` on each cell); the
/// difference between consecutive messages is audited like a release. An
/// `error` event (its data a code) ends the stream.
#[utoipa::path(get, path = "/v1/courses/{course_id}/live", tag = "analytics",
    params(CoursePath, LiveQuery),
    responses((status = 200, content_type = "text/event-stream", description = "`event: funnel|engagement|error`, `data:` a released view (JSON)"),
        (status = 404, body = ErrorBody)))]
async fn live(
    CohortRead { sv, course, t, q }: CohortRead<LiveQuery>,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, Error> {
    let sv = sv.0;
    let range = sv.range(q.from.as_deref(), q.to.as_deref())?;
    let minutes = q.minutes.unwrap_or(60);
    if minutes == 0 || minutes > sv.config().max_engagement_minutes {
        return Err(Error::bad_request("invalid_query", format!("`minutes` must be 1-{}", sv.config().max_engagement_minutes)));
    }
    let interval = q.interval_ms.unwrap_or(sv.config().policy.live.interval_ms);
    if !(100..=60_000).contains(&interval) {
        return Err(Error::bad_request("invalid_query", "`interval_ms` must be 100-60000"));
    }
    let stream = sv.live_stream(range, minutes, t);
    let state = LiveState {
        serve: sv,
        course,
        stream,
        interval: std::time::Duration::from_millis(interval),
        pending: Vec::new(),
        done: false,
    };
    let events = futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(m) = st.pending.pop() {
                let ev = Event::default().event(m.event).json_data(&m.data).unwrap_or_else(|_| Event::default().event("error").data("internal"));
                return Some((Ok(ev), st));
            }
            if st.done {
                return None;
            }
            st.serve.live_wait(&mut st.stream, st.interval).await;
            match st.serve.live_step(&st.course, &mut st.stream).await {
                Ok(messages) => st.pending = messages.into_iter().rev().collect(),
                Err(e) => {
                    tracing::error!(error = %e, "live stream ended");
                    st.done = true;
                    let code = match e {
                        ServeError::Warehouse(_) => "warehouse_unavailable",
                        _ => "internal",
                    };
                    return Some((Ok(Event::default().event("error").data(code)), st));
                }
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

#[derive(Deserialize, ToSchema)]
pub struct DrilldownRequest {
    /// The course the learner is followed in (must be in the token's scope).
    #[schema(required = true, nullable = false, pattern = r"^[A-Za-z0-9_.:/-]{1,128}$")]
    course_id: Option<String>,
    /// A declared drill-down purpose (`policies/purposes.yaml`, `drilldown`).
    purpose: Option<String>,
    /// Why this learner, now (1-2000 characters; recorded in the audit log).
    #[schema(required = true, nullable = false, max_length = 2000, pattern = r"\S")]
    justification: Option<String>,
}

/// The individual view: one learner's pseudonymous timeline in one course.
/// Only `learner.drilldown` (default: advisor), only for a learner of a
/// course and institution in the token's scope, only for a declared purpose
/// with a justification; audited before data leaves (refusals too);
/// rate-limited per principal (429). Never returns an identity.
#[utoipa::path(post, path = "/v1/learners/{pseudonym}/activity", tag = "analytics", request_body = DrilldownRequest,
    params(("pseudonym" = Uuid, Path, description = "Learner pseudonym")),
    responses((status = 200, body = Timeline), (status = 404, body = ErrorBody), (status = 410, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
async fn drilldown(
    State(s): State<AppState>,
    p: Principal,
    sv: ServeCap,
    Path(raw): Path<String>,
    AppJson(req): AppJson<DrilldownRequest>,
) -> Result<Json<Timeline>, Error> {
    let perm = Permission::LearnerDrilldown;
    s.authorize(&p, perm, None, None).await?;
    let pseudonym = Pseudonym::parse(&raw)?;
    let target = Some(pseudonym.as_uuid());
    let declared = req.purpose.as_deref().map(str::trim).and_then(|x| s.policies.drilldown_purpose(x));
    let course_text = req.course_id.as_deref().unwrap_or_default().chars().take(128).collect::<String>();
    let refuse = |reason: &'static str, institution: Option<&str>, err: Error| {
        let mut e = p.entry(perm.as_str(), institution, target, Outcome::Denied);
        e.purpose = req.purpose.clone().filter(|x| x.len() <= 64);
        e.justification = req.justification.clone().filter(|x| x.chars().count() <= 2000);
        e.detail = serde_json::json!({"reason": reason, "course_id": course_text});
        let audit = s.audit.clone();
        async move {
            audit.record(e).await?;
            Err::<Json<Timeline>, Error>(err)
        }
    };
    let course = match Ident::parse("course_id", req.course_id.as_deref().unwrap_or_default()) {
        Ok(c) => c,
        Err(_) => return refuse("course_required", None, Error::bad_request("course_required", "a valid `course_id` is required")).await,
    };
    if !s.policies.allows_course(&p.roles, perm, course.as_str(), &p.courses) {
        return refuse("course_not_in_scope", None, Error::forbidden("this course is not in your token's scope")).await;
    }
    let purpose = match (req.purpose.as_deref().map(str::trim), &declared) {
        (None | Some(""), _) => {
            return refuse("purpose_required", None, Error::bad_request("purpose_required", "a declared `purpose` is required to drill down")).await
        }
        (Some(_), None) => {
            let msg = "`purpose` is not a declared drill-down purpose (policies/purposes.yaml)";
            return refuse("undeclared_purpose", None, Error::bad_request("undeclared_purpose", msg)).await;
        }
        (Some(_), Some(purpose)) => purpose.to_string(),
    };
    let justification = req.justification.as_deref().map(str::trim).unwrap_or_default().to_owned();
    if justification.is_empty() || justification.chars().count() > 2000 {
        let err = Error::bad_request("justification_required", "a `justification` of 1-2000 characters is required");
        return refuse("justification_required", None, err).await;
    }
    if let Err(e) = sv.admit(&p.sub) {
        return refuse("rate_limited", None, e.into()).await;
    }
    let institution = match s.vault.subject(pseudonym).await? {
        Subject::Active { institution } => institution,
        Subject::Erased { institution, .. } => {
            return refuse("erased", Some(&institution), Error::new(StatusCode::GONE, "erased", "this learner has been erased")).await
        }
        Subject::Unknown => return refuse("unknown_pseudonym", None, Error::not_found("unknown_pseudonym", "no such pseudonym")).await,
    };
    if !p.can_act_in(&institution) {
        return refuse("institution_not_allowed", Some(&institution), Error::forbidden("you cannot act for this learner's institution")).await;
    }
    if !sv.is_learner_of(&course, pseudonym.as_uuid()).await? {
        return refuse("learner_not_in_course", Some(&institution), Error::new(StatusCode::FORBIDDEN, "learner_not_in_course", "this learner has no activity in this course")).await;
    }
    // Fail closed: the timeline leaves only once this entry is committed.
    let mut entry = p.entry(perm.as_str(), Some(&institution), target, Outcome::Success);
    entry.purpose = Some(purpose.clone());
    entry.justification = Some(justification);
    entry.detail = serde_json::json!({"course_id": course.as_str()});
    s.audit.record(entry).await?;
    metrics::counter!("learnvault_drilldowns_total", "purpose" => purpose).increment(1);
    Ok(Json(sv.timeline(&course, pseudonym.as_uuid()).await?))
}
