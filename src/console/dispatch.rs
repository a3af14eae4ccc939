//! The console's one way to data: a request dispatched in-process to the API
//! router with the session's principal attached (`api::Delegated`). The API's
//! handler authorises, audits and answers exactly as for a bearer token with
//! the same claims; the console never calls a context directly.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::Value;
use tower::ServiceExt;

use crate::api::{Delegated, Principal};

/// The largest JSON body a page reads from the API.
const MAX_JSON: usize = 32 * 1024 * 1024;

/// An API answer: status and body (JSON, or a string for a non-JSON body).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// The API's error message (`{"error": {"message"}}`), or the status.
    pub fn message(&self) -> String {
        self.body["error"]["message"].as_str().map(str::to_owned).unwrap_or_else(|| self.status.to_string())
    }
}

fn request(principal: &Principal, method: Method, uri: &str, body: Option<&Value>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri).header("x-request-id", principal.request_id.to_string());
    let body = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            Body::from(serde_json::to_vec(v).expect("a JSON value serialises"))
        }
        None => Body::empty(),
    };
    let mut req = b.body(body).expect("a valid request");
    req.extensions_mut().insert(Delegated(principal.clone()));
    req
}

/// Send a request to the API as `principal`; the raw response (for streams and downloads).
pub async fn raw(api: &Router, principal: &Principal, method: Method, uri: &str, body: Option<&Value>) -> Response {
    match api.clone().oneshot(request(principal, method, uri, body)).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// Send a request to the API as `principal` and read its JSON answer.
pub async fn call(api: &Router, principal: &Principal, method: Method, uri: &str, body: Option<&Value>) -> Answer {
    let resp = raw(api, principal, method, uri, body).await;
    let status = resp.status();
    let body = match axum::body::to_bytes(resp.into_body(), MAX_JSON).await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())),
        Err(_) => Value::Null,
    };
    Answer { status, body }
}

/// GET as `principal`.
pub async fn get(api: &Router, principal: &Principal, uri: &str) -> Answer {
    call(api, principal, Method::GET, uri, None).await
}

/// POST a JSON body as `principal`.
pub async fn post(api: &Router, principal: &Principal, uri: &str, body: &Value) -> Answer {
    call(api, principal, Method::POST, uri, Some(body)).await
}

/// Percent-encode one query-string or path component.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_components() {
        assert_eq!(super::enc("a b/c?d=é"), "a%20b%2Fc%3Fd%3D%C3%A9");
        assert_eq!(super::enc("cs101-x_y.z~"), "cs101-x_y.z~");
    }
}
