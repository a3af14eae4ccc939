//! The signed-in viewer: the session cookie -> `auth::session` -> the same
//! [`Principal`] the API builds from a token with the same claims. CSRF and
//! origin checks for state-changing requests.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use uuid::Uuid;

use super::html;
use super::Console;
use crate::api::Principal;
use crate::auth::session::{self, Session};
use crate::policy::Permission;

pub const COOKIE: &str = "lv_console";

/// A request with a live session.
pub struct Viewer {
    pub principal: Principal,
    pub csrf: String,
    /// The session id (from the cookie), for sign-out.
    pub session_id: String,
    /// Roles' permissions, for offering only what the API would allow.
    pub perms: Vec<Permission>,
    /// The console's public base URL (an accepted `Origin` behind a proxy).
    pub base_url: String,
}

impl Viewer {
    pub fn may(&self, p: Permission) -> bool {
        self.perms.contains(&p)
    }

    /// Refuse a state-changing request whose CSRF token is not the session's,
    /// or that comes from another origin (403; no API call is made).
    pub fn check_csrf(&self, token: &str, headers: &HeaderMap) -> Result<(), Response> {
        if !same_origin(headers, &self.base_url) || !session::same(token, &self.csrf) {
            return Err(html::error_page(
                StatusCode::FORBIDDEN,
                "This form is not from your console session (CSRF check failed). Reload the page and try again.",
            ));
        }
        Ok(())
    }
}

/// A form that carries the session's CSRF token (a hidden field, [`super::html::csrf`]).
pub trait WithCsrf {
    fn csrf(&self) -> &str;
}

/// `WithCsrf` for forms whose token is their `csrf` field.
macro_rules! with_csrf {
    ($($form:ty),*) => {$(
        impl $crate::console::viewer::WithCsrf for $form {
            fn csrf(&self) -> &str {
                &self.csrf
            }
        }
    )*};
}
pub(crate) use with_csrf;

/// A form holding only the CSRF token (a button that changes state).
#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

with_csrf!(CsrfForm);

/// A state-changing form post: the signed-in viewer and its form `T`, whose CSRF token
/// and origin [`Viewer::check_csrf`] has accepted. A handler taking it cannot skip the check.
pub struct Posted<T>(pub Viewer, pub T);

impl<T: DeserializeOwned + WithCsrf + Send> FromRequest<Console> for Posted<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &Console) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let v = Viewer::from_request_parts(&mut parts, state).await?;
        let headers = parts.headers.clone();
        let Form(f) = Form::<T>::from_request(Request::from_parts(parts, body), state).await.map_err(IntoResponse::into_response)?;
        v.check_csrf(f.csrf(), &headers)?;
        Ok(Posted(v, f))
    }
}

/// No `Origin`, or the request's own (its `Host`) or the console's public one (`LEARNVAULT_CONSOLE_URL`, behind a proxy).
pub fn same_origin(headers: &HeaderMap, base_url: &str) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else { return true };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    origin.split_once("://").map(|(_, rest)| rest) == host || origin == base_url.trim_end_matches('/')
}

pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name && !v.is_empty()).then(|| v.to_owned())
    })
}

pub fn principal_of(s: &Session) -> Principal {
    let all = s.claims.institutions.iter().any(|i| i == "*");
    Principal {
        sub: s.claims.sub.clone(),
        roles: s.claims.roles.clone(),
        institutions: if all { None } else { Some(s.claims.institutions.clone()) },
        courses: s.claims.courses.clone(),
        request_id: Uuid::new_v4(),
    }
}

impl FromRequestParts<Console> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Console) -> Result<Self, Response> {
        let Some(id) = cookie_value(&parts.headers, COOKIE) else {
            return Err(signed_out(state));
        };
        match session::touch(&state.app.pool, &id, state.app.console.idle).await {
            Ok(Some(s)) => {
                let principal = principal_of(&s);
                let perms = Permission::ALL.into_iter().filter(|p| state.app.policies.allows(&principal.roles, *p)).collect();
                Ok(Viewer { principal, csrf: s.csrf, session_id: id, perms, base_url: state.app.console.base_url.clone() })
            }
            Ok(None) => Err(signed_out(state)),
            Err(e) => {
                tracing::error!(error = %e, "console session lookup failed");
                Err(html::error_page(StatusCode::SERVICE_UNAVAILABLE, "The session store is unavailable; retry in a moment."))
            }
        }
    }
}

fn signed_out(state: &Console) -> Response {
    let how = if state.app.console.oidc.is_some() {
        "<p><a id=\"oidc-sign-in\" href=\"/console/oidc/start\">Sign in with your identity provider</a></p>"
    } else {
        "<p>Ask for a sign-in link (<code>learnvault console login --role ROLE --institution ID</code>) and open it.</p>"
    };
    let body = html::bare("Sign in", &format!("<h1>Not signed in</h1><p>Your session is missing or has expired.</p>{how}"));
    (StatusCode::UNAUTHORIZED, body).into_response()
}

#[cfg(test)]
mod tests {
    use axum::http::{header, HeaderMap, HeaderValue};

    fn h(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            m.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        m
    }

    #[test]
    fn origins() {
        let base = "https://console.example.edu";
        assert!(super::same_origin(&h(None, "x"), base));
        assert!(super::same_origin(&h(Some("http://127.0.0.1:8080"), "127.0.0.1:8080"), base));
        assert!(super::same_origin(&h(Some("https://console.example.edu"), "10.0.0.5:8080"), base), "behind a proxy");
        assert!(!super::same_origin(&h(Some("https://evil.example"), "127.0.0.1:8080"), base));
        assert!(!super::same_origin(&h(Some("null"), "127.0.0.1:8080"), base));
    }

    #[test]
    fn cookies() {
        let mut m = HeaderMap::new();
        m.insert(header::COOKIE, HeaderValue::from_static("a=1; lv_console=abc; b=2"));
        assert_eq!(super::cookie_value(&m, "lv_console").as_deref(), Some("abc"));
        assert_eq!(super::cookie_value(&m, "lv"), None);
    }
}
