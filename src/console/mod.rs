//! The console: one web application for instructors, content authors,
//! advisors, DPOs and auditors, served by `learnvault serve` at `/console`.
//! Server-rendered HTML, a little JavaScript (the live chart, table views) and
//! inline SVG charts; assets embedded in the binary.
//!
//! # Invariants
//! - The console holds no privilege of its own: every page and action goes
//!   through the same API endpoints, contexts and authorisation as the JSON
//!   API. A page dispatches its reads and writes in-process to the API router
//!   ([`dispatch`]) with the session's principal attached (`api::Delegated`):
//!   the handler, its `authorize` calls and its audit rows are the API's. The
//!   console calls no context and runs no SQL (sessions are `auth::session`).
//! - A withheld cell's number never reaches the browser: pages render only what
//!   the API released (`serve::Released`), a withheld cell as "withheld" with
//!   its reason; the live stream relays the API's released messages without
//!   their `disclosure` summary ([`live`]).
//! - Sessions are server-side (`auth::session`), in an HttpOnly,
//!   SameSite=Strict cookie (Secure outside loopback) with an idle timeout;
//!   every state-changing request carries the session's CSRF token (and no
//!   foreign `Origin`); every response carries a strict Content-Security-Policy
//!   (scripts and styles only from `/console/assets/`, nothing inline),
//!   `frame-ancestors 'none'`, `Referrer-Policy: same-origin` (a sign-in code never leaves in a Referer; with `no-referrer` browsers send `Origin: null`), `no-store`.
//! - No CDN, no third-party request: assets are `include_str!`ed.
//! - What a role may not do is not offered: navigation and forms follow the
//!   same `Policies::allows` the API enforces (and the API refuses anyway).
//!
//! # Public API
//! - [`router`]: the `/console` routes in front of the API router (which
//!   answers everything else), built by `app::serve`.
//! - [`Config`] (`from_settings`, `validate`): base URL, idle timeout, lifetime, code TTL.
//! - [`login_link`]: a one-time sign-in link (`learnvault console login`, the demo).
//!
//! Sign-in: a verified identity becomes [`auth::session::SessionClaims`] and
//! `auth::session::start`: in development by a one-time code ([`login`]), in
//! production through OpenID Connect, authorization code + PKCE ([`oidc`]).

mod advisor;
mod assets;
mod auditor;
mod charts;
mod config;
mod dispatch;
mod dpo;
mod home;
mod html;
mod instructor;
mod live;
mod login;
mod oidc;
mod viewer;

pub use config::{Config, ConfigError, Oidc};

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use std::time::Duration;

use crate::api::AppState;
use crate::auth;

/// What every console handler gets: the application (for policies, sessions,
/// settings) and the API router it dispatches to.
#[derive(Clone)]
pub struct Console {
    app: AppState,
    api: Router,
}

/// The console's routes under `/console`; every other path goes to `api`.
pub fn router(app: AppState, api: Router) -> Router {
    let state = Console { app, api: api.clone() };
    let console = Router::new()
        .route("/console", get(home::page))
        .route("/console/", get(home::page))
        .route("/console/login", get(login::exchange))
        .route("/console/logout", post(login::logout))
        .route("/console/oidc/start", get(oidc::start))
        .route("/console/oidc/callback", get(oidc::callback))
        .route("/console/assets/{file}", get(assets::serve))
        .route("/console/courses/{course}", get(instructor::dashboard))
        .route("/console/courses/{course}/live", get(live::relay))
        .route("/console/courses/{course}/replays", get(instructor::replays))
        .route("/console/review", get(advisor::queues))
        .route("/console/review/items/{id}", get(advisor::item))
        .route("/console/review/items/{id}/decision", post(advisor::decide))
        .route("/console/learners/{pseudonym}/activity", post(advisor::drilldown))
        .route("/console/dsr", get(dpo::queue))
        .route("/console/dsr/requests", post(dpo::submit))
        .route("/console/dsr/batch", post(dpo::batch))
        .route("/console/dsr/jobs/{id}", get(dpo::job))
        .route("/console/dsr/jobs/{id}/archive", get(dpo::archive))
        .route("/console/dsr/jobs/{id}/certificate", get(dpo::certificate))
        .route("/console/dsr/suppressions", get(dpo::suppressions))
        .route("/console/audit", get(auditor::log))
        .route("/console/audit/verify", post(auditor::verify))
        .route("/console/retention", get(auditor::retention))
        .fallback(home::not_found)
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state);
    console.fallback_service(api)
}

/// A one-time sign-in link for `claims` (stored hashed, valid for the configured TTL).
pub async fn login_link(pool: &sqlx::PgPool, config: &Config, claims: &auth::session::SessionClaims) -> Result<String, sqlx::Error> {
    let code = auth::session::issue_code(pool, claims, config.code_ttl).await?;
    Ok(format!("{}/console/login?code={code}", config.base_url))
}

/// Delete expired sign-in codes and sessions every few minutes (in `serve`).
pub async fn purge_loop(app: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if let Err(e) = auth::session::purge(&app.pool, app.console.idle).await {
            tracing::warn!(error = %e, "purging console sessions failed; retrying later");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(300)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}
