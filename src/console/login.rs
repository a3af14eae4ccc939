//! Sign-in (development): a one-time code from `learnvault console login`,
//! exchanged once at `/console/login?code=...` for a session cookie; sign-out.
//! Both are audited as `console.login` / `console.logout`.

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::html;
use super::viewer::{principal_of, CsrfForm, Posted, COOKIE};
use super::Console;
use crate::audit::Outcome;
use crate::auth::session;

#[derive(Deserialize)]
pub struct CodeQuery {
    code: Option<String>,
}

/// The session cookie (`value` empty and `max_age` 0: cleared).
pub fn session_cookie(state: &Console, value: &str, max_age: Option<u64>) -> HeaderValue {
    let secure = if state.app.console.secure_cookie { "; Secure" } else { "" };
    let age = max_age.map(|a| format!("; Max-Age={a}")).unwrap_or_default();
    HeaderValue::from_str(&format!("{COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict{secure}{age}")).expect("a token is ASCII")
}

pub async fn exchange(State(state): State<Console>, Query(q): Query<CodeQuery>) -> Response {
    if !state.app.console.dev_login {
        return html::error_page(
            StatusCode::NOT_FOUND,
            "One-time sign-in links are for development; sign in through your identity provider.",
        );
    }
    let code = q.code.unwrap_or_default();
    if code.is_empty() || code.len() > 128 {
        return html::error_page(StatusCode::BAD_REQUEST, "This sign-in link has no valid code.");
    }
    let app = &state.app;
    match session::exchange(&app.pool, &code, app.console.lifetime).await {
        Ok(Some((id, s))) => {
            let p = principal_of(&s);
            let mut e = p.entry("console.login", None, None, Outcome::Success);
            e.detail = serde_json::json!({"method": "one_time_code"});
            if let Err(err) = app.audit.record(e).await {
                let _ = session::end(&app.pool, &id).await;
                return crate::api::Error::from(err).into_response();
            }
            // A page of our own site moves on to the console, so the SameSite=Strict
            // cookie is sent even when the link was opened from another site (mail, chat).
            let body = "<h1>Signed in</h1><p><a href=\"/console\">Continue to the console</a></p>";
            let mut r = (StatusCode::OK, html::bare_refresh("Signed in", "/console", body)).into_response();
            r.headers_mut().insert(header::SET_COOKIE, session_cookie(&state, &id, Some(app.console.lifetime.as_secs())));
            r
        }
        Ok(None) => {
            let e = crate::audit::NewEntry {
                request_id: uuid::Uuid::new_v4(),
                actor: "anonymous".into(),
                roles: vec![],
                institution: None,
                action: "console.login".into(),
                target: None,
                purpose: None,
                justification: None,
                outcome: Outcome::Denied,
                detail: serde_json::json!({"reason": "invalid_or_used_code"}),
            };
            if let Err(err) = app.audit.record(e).await {
                return crate::api::Error::from(err).into_response();
            }
            html::error_page(StatusCode::UNAUTHORIZED, "This sign-in link is invalid, expired or was used already. Ask for a new one.")
        }
        Err(e) => {
            tracing::error!(error = %e, "console sign-in failed");
            html::error_page(StatusCode::SERVICE_UNAVAILABLE, "Sign-in is unavailable; retry in a moment.")
        }
    }
}

pub async fn logout(State(state): State<Console>, Posted(v, _): Posted<CsrfForm>) -> Response {
    if let Err(e) = session::end(&state.app.pool, &v.session_id).await {
        tracing::error!(error = %e, "console sign-out failed");
        return html::error_page(StatusCode::SERVICE_UNAVAILABLE, "Sign-out failed; retry.");
    }
    let _ = state.app.audit.record(v.principal.entry("console.logout", None, None, Outcome::Success)).await;
    let mut r = (StatusCode::OK, html::bare("Signed out", "<h1>Signed out</h1><p>Your console session has ended.</p>")).into_response();
    r.headers_mut().insert(header::SET_COOKIE, session_cookie(&state, "", Some(0)));
    r
}
