//! The one API error type. 4xx carry a stable machine `code` and a clear
//! message; 5xx are logged and hidden behind a generic message.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::audit::AuditError;
use crate::domain::Invalid;
use crate::vault::VaultError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A refusal the client can act on: its status (a 4xx, or 503: a dependency is down,
    /// retry later; fail closed), a stable machine `code` and a clear message.
    #[error("{message}")]
    Refused { status: StatusCode, code: &'static str, message: String },
    #[error("internal error: {0}")]
    Internal(String),
}

/// Error body: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code.
    pub code: String,
    pub message: String,
}

impl Error {
    /// A refusal with `status`; see [`Error::Refused`].
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Error::Refused { status, code, message: message.into() }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Error::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Error::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Error::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        Error::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }

    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            Error::Refused { status, code, message } => (*status, code, message.clone()),
            Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log".into()),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        if status.is_server_error() {
            tracing::error!(error = %self, code, "request failed");
        }
        let mut resp = (status, axum::Json(ErrorBody { error: ErrorDetail { code: code.into(), message } })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<Invalid> for Error {
    fn from(e: Invalid) -> Self {
        Error::bad_request(e.code, e.message)
    }
}

impl From<AuditError> for Error {
    fn from(e: AuditError) -> Self {
        tracing::error!(error = %e, "audit log write failed; operation refused");
        Error::new(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable", "the audit log cannot be written; nothing was done, retry later")
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                tracing::error!(error = %e, "database unavailable");
                Error::new(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable", "the vault database is unavailable; retry later")
            }
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<VaultError> for Error {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Invalid(i) => i.into(),
            VaultError::Audit(a) => a.into(),
            VaultError::Db(d) => d.into(),
            VaultError::Suppressed => Error::new(StatusCode::GONE, "erased", "this learner was erased; collection is suppressed until a DPO lifts it"),
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<JsonRejection> for Error {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonSyntaxError(_) => Error::bad_request("invalid_json", "the request body is not valid JSON"),
            JsonRejection::JsonDataError(e) => Error::bad_request("invalid_body", without_values(&e.body_text())),
            JsonRejection::MissingJsonContentType(_) => {
                Error::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "expected `Content-Type: application/json`")
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Error::too_large("payload_too_large", "the request body is larger than this endpoint accepts")
            }
            other => Error::bad_request("invalid_body", other.body_text()),
        }
    }
}

impl From<QueryRejection> for Error {
    fn from(r: QueryRejection) -> Self {
        Error::bad_request("invalid_query", r.body_text())
    }
}

/// serde's "invalid type/value" messages quote the offending value, which may be
/// an identity (an email where an object was expected, a numeric LMS id): keep
/// the field path and what was expected, drop the value.
fn without_values(msg: &str) -> String {
    for marker in ["invalid type: ", "invalid value: "] {
        if let Some(i) = msg.find(marker) {
            let expected = msg[i..].find(", expected").map(|j| &msg[i + j..]).unwrap_or("");
            return format!("{}{}<value withheld>{expected}", &msg[..i], marker);
        }
    }
    msg.to_owned()
}

#[cfg(test)]
mod tests {
    use super::without_values;

    #[test]
    fn data_errors_keep_the_path_and_drop_the_value() {
        let m = without_values("identity: invalid type: string \"ada@example.edu\", expected a map at line 1 column 60");
        assert_eq!(m, "identity: invalid type: <value withheld>, expected a map at line 1 column 60");
        assert!(!without_values("external_id: invalid type: integer `12345678`, expected a string").contains("12345678"));
        assert_eq!(without_values("missing field `institution`"), "missing field `institution`");
    }
}
