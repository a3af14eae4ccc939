//! Extractors whose rejections are [`Error`]: JSON bodies, query strings, and
//! the authenticated [`Principal`] (whose failures are audited).

use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use uuid::Uuid;

use super::{AppState, Error};
use crate::audit::{NewEntry, Outcome};

/// `axum::Json` with our error type.
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Error;
    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(AppJson(v))
    }
}

/// `axum::extract::Query` with our error type.
pub struct AppQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for AppQuery<T>
where
    Query<T>: FromRequestParts<S, Rejection = axum::extract::rejection::QueryRejection>,
    S: Send + Sync,
{
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let Query(v) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(AppQuery(v))
    }
}

/// An authenticated caller. Authorisation is a call on it (see `AppState::authorize`).
#[derive(Debug, Clone)]
pub struct Principal {
    pub sub: String,
    pub roles: Vec<String>,
    /// `None`: every institution (the token's `institutions` claim holds `"*"`).
    pub institutions: Option<Vec<String>>,
    /// The token's `courses` claim (what course-scoped roles may read).
    pub courses: Vec<String>,
    pub request_id: Uuid,
}

impl Principal {
    pub fn can_act_in(&self, institution: &str) -> bool {
        match &self.institutions {
            None => true,
            Some(list) => list.iter().any(|i| i == institution),
        }
    }

    /// A blank audit entry for this principal.
    pub fn entry(&self, action: &str, institution: Option<&str>, target: Option<Uuid>, outcome: Outcome) -> NewEntry {
        NewEntry {
            request_id: self.request_id,
            actor: self.sub.clone(),
            roles: self.roles.clone(),
            institution: institution.map(str::to_owned),
            action: action.to_owned(),
            target,
            purpose: None,
            justification: None,
            outcome,
            detail: serde_json::json!({}),
        }
    }
}

/// A principal the console established from its session, attached to a request
/// the console dispatches to this router in-process (request extensions never
/// come from the wire). The request then goes through the same handlers,
/// authorisation and audit as a bearer token with the same claims.
#[derive(Debug, Clone)]
pub struct Delegated(pub Principal);

fn request_id(parts: &Parts) -> Uuid {
    parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| Uuid::parse_str(s).ok())
        .unwrap_or_else(Uuid::new_v4)
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let rid = request_id(parts);
        if let Some(Delegated(p)) = parts.extensions.get::<Delegated>() {
            return Ok(Principal { request_id: rid, ..p.clone() });
        }
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
        let (code, message) = match token {
            None => ("missing_token", "an `Authorization: Bearer <JWT>` header is required".to_string()),
            Some(t) => match state.auth.verify(t.trim()) {
                Ok(c) => {
                    let all = c.institutions.iter().any(|i| i == "*");
                    return Ok(Principal {
                        sub: c.sub,
                        roles: c.roles,
                        institutions: if all { None } else { Some(c.institutions) },
                        courses: c.courses,
                        request_id: rid,
                    });
                }
                Err(e) => (e.code(), e.to_string()),
            },
        };
        let route = parts.uri.path().chars().take(200).collect::<String>();
        let entry = NewEntry {
            request_id: rid,
            actor: "anonymous".into(),
            roles: vec![],
            institution: None,
            action: "auth.authenticate".into(),
            target: None,
            purpose: None,
            justification: None,
            outcome: Outcome::Denied,
            detail: serde_json::json!({"reason": code, "method": parts.method.as_str(), "route": route}),
        };
        state.audit.record(entry).await?;
        metrics::counter!("learnvault_auth_denied_total", "reason" => code).increment(1);
        Err(Error::new(StatusCode::UNAUTHORIZED, code, message))
    }
}
