//! OpenID Connect sign-in (authorization code + PKCE S256) against the
//! configured issuer: `/console/oidc/start` remembers `state` -> (verifier,
//! nonce) hashed in PostgreSQL and sends the browser to the provider;
//! `/console/oidc/callback` takes the state once, exchanges the code (with the
//! verifier), verifies the ID token (signature by the provider's published keys,
//! issuer, audience, expiry, nonce) and starts a session from its claims
//! (`roles`, `institutions`, `courses`: the same claims the API's tokens carry;
//! roles unknown to `policies/roles.yaml` are dropped).

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::Duration;

use super::config::Oidc;
use super::html;
use super::login::session_cookie;
use super::viewer::principal_of;
use super::Console;
use crate::audit::Outcome;
use crate::auth::session::{self, SessionClaims};

/// How long a sign-in at the provider may take.
const IN_FLIGHT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the identity provider did not answer: {0}")]
    Provider(String),
    #[error("the identity provider's answer is not acceptable: {0}")]
    Invalid(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

#[derive(Deserialize)]
struct Discovery {
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct IdClaims {
    sub: String,
    nonce: Option<String>,
    preferred_username: Option<String>,
    email: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    institutions: Vec<String>,
    #[serde(default)]
    courses: Vec<String>,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("a TLS-less client builds")
}

async fn discover(o: &Oidc) -> Result<Discovery, OidcError> {
    let url = format!("{}/.well-known/openid-configuration", o.issuer);
    let r = client().get(url).send().await.map_err(|e| OidcError::Provider(e.to_string()))?;
    r.error_for_status().map_err(|e| OidcError::Provider(e.to_string()))?.json().await.map_err(|e| OidcError::Invalid(e.to_string()))
}

/// The PKCE S256 challenge of a verifier.
pub fn challenge(verifier: &str) -> String {
    B64.encode(Sha256::digest(verifier.as_bytes()))
}

/// Where the provider sends the browser back: the configured public URL, or
/// (unconfigured, development) the host the browser used; the provider accepts
/// only the redirect URIs registered for the client either way.
fn redirect_uri(st: &Console, headers: &HeaderMap) -> String {
    let c = &st.app.console;
    match headers.get(header::HOST).and_then(|h| h.to_str().ok()).filter(|_| !c.base_url_configured) {
        Some(host) => format!("http://{host}/console/oidc/callback"),
        None => format!("{}/console/oidc/callback", c.base_url),
    }
}

fn failed(e: OidcError) -> Response {
    tracing::warn!(error = %e, "console OpenID Connect sign-in failed");
    html::error_page(StatusCode::BAD_GATEWAY, "Sign-in with the identity provider failed; try again.")
}

pub async fn start(State(st): State<Console>, headers: HeaderMap) -> Response {
    let Some(o) = st.app.console.oidc.clone() else {
        return html::error_page(StatusCode::NOT_FOUND, "No identity provider is configured.");
    };
    let d = match discover(&o).await {
        Ok(d) => d,
        Err(e) => return failed(e),
    };
    let (state, verifier, nonce) = (session::random_token(), session::random_token(), session::random_token());
    if let Err(e) = session::begin_oidc(&st.app.pool, &state, &verifier, &nonce, IN_FLIGHT).await {
        return failed(e.into());
    }
    let mut url = match reqwest::Url::parse(&d.authorization_endpoint) {
        Ok(u) => u,
        Err(e) => return failed(OidcError::Invalid(e.to_string())),
    };
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &o.client_id)
        .append_pair("redirect_uri", &redirect_uri(&st, &headers))
        .append_pair("scope", "openid profile email")
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge(&verifier))
        .append_pair("code_challenge_method", "S256");
    Redirect::to(url.as_str()).into_response()
}

#[derive(Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

async fn verify(st: &Console, redirect: String, o: &Oidc, code: &str, verifier: &str, nonce: &str) -> Result<SessionClaims, OidcError> {
    let d = discover(o).await?;
    let mut form = vec![
        ("grant_type", "authorization_code".to_string()),
        ("code", code.to_owned()),
        ("redirect_uri", redirect),
        ("client_id", o.client_id.clone()),
        ("code_verifier", verifier.to_owned()),
    ];
    if let Some(s) = &o.client_secret {
        form.push(("client_secret", s.expose_secret().to_owned()));
    }
    let r = client().post(&d.token_endpoint).form(&form).send().await.map_err(|e| OidcError::Provider(e.to_string()))?;
    if !r.status().is_success() {
        return Err(OidcError::Invalid(format!("token endpoint answered {}", r.status())));
    }
    let tokens: Value = r.json().await.map_err(|e| OidcError::Invalid(e.to_string()))?;
    let id_token = tokens["id_token"].as_str().ok_or_else(|| OidcError::Invalid("no id_token".into()))?;
    let header = jsonwebtoken::decode_header(id_token).map_err(|e| OidcError::Invalid(e.to_string()))?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::PS256 | Algorithm::ES256 | Algorithm::EdDSA) {
        return Err(OidcError::Invalid(format!("algorithm {:?} is not accepted", header.alg)));
    }
    let jwks: JwkSet = client()
        .get(&d.jwks_uri)
        .send()
        .await
        .map_err(|e| OidcError::Provider(e.to_string()))?
        .json()
        .await
        .map_err(|e| OidcError::Invalid(e.to_string()))?;
    let jwk = match &header.kid {
        Some(kid) => jwks.find(kid),
        None => jwks.keys.first(),
    }
    .ok_or_else(|| OidcError::Invalid("the token's key is not among the provider's keys".into()))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| OidcError::Invalid(e.to_string()))?;
    let mut v = Validation::new(header.alg);
    v.set_issuer(&[&o.issuer]);
    v.set_audience(&[&o.client_id]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<IdClaims>(id_token, &key, &v).map_err(|e| OidcError::Invalid(e.to_string()))?.claims;
    if claims.nonce.as_deref() != Some(nonce) {
        return Err(OidcError::Invalid("the nonce does not match".into()));
    }
    let roles: Vec<String> = claims.roles.into_iter().filter(|r| st.app.policies.is_role(r)).collect();
    let sub = claims.preferred_username.or(claims.email).unwrap_or(claims.sub);
    Ok(SessionClaims { sub, roles, institutions: claims.institutions, courses: claims.courses })
}

pub async fn callback(State(st): State<Console>, headers: HeaderMap, Query(q): Query<Callback>) -> Response {
    let Some(o) = st.app.console.oidc.clone() else {
        return html::error_page(StatusCode::NOT_FOUND, "No identity provider is configured.");
    };
    if let Some(e) = q.error {
        return html::error_page(
            StatusCode::UNAUTHORIZED,
            &format!("The identity provider refused the sign-in ({}).", e.chars().take(64).collect::<String>()),
        );
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return html::error_page(StatusCode::BAD_REQUEST, "The identity provider's answer has no code or state.");
    };
    let (verifier, nonce) = match session::take_oidc(&st.app.pool, &state).await {
        Ok(Some(x)) => x,
        Ok(None) => return html::error_page(StatusCode::UNAUTHORIZED, "This sign-in expired or was used already; start again."),
        Err(e) => return failed(e.into()),
    };
    let claims = match verify(&st, redirect_uri(&st, &headers), &o, &code, &verifier, &nonce).await {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let (id, s) = match session::start(&st.app.pool, claims, st.app.console.lifetime).await {
        Ok(x) => x,
        Err(e) => return failed(e.into()),
    };
    let mut e = principal_of(&s).entry("console.login", None, None, Outcome::Success);
    e.detail = serde_json::json!({"method": "oidc", "issuer": o.issuer});
    if let Err(err) = st.app.audit.record(e).await {
        let _ = session::end(&st.app.pool, &id).await;
        return crate::api::Error::from(err).into_response();
    }
    let body = "<h1>Signed in</h1><p><a href=\"/console\">Continue to the console</a></p>";
    let mut r = (StatusCode::OK, html::bare_refresh("Signed in", "/console", body)).into_response();
    r.headers_mut().insert(header::SET_COOKIE, session_cookie(&st, &id, Some(st.app.console.lifetime.as_secs())));
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn pkce_s256_matches_rfc_7636() {
        // RFC 7636, appendix B.
        assert_eq!(super::challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }
}
