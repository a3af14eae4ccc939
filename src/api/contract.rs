//! The statuses every route can answer because of how it is built, added to its
//! OpenAPI operation so the document lists every status the server can answer
//! (checked by schemathesis in `tests/contract.rs`). A route's own statuses (its
//! 404, 409, 410, 429 ...) stay in its `#[utoipa::path]`; these come from the
//! shared extractors and layers, so they are added here once:
//!
//! - authenticated routes (`Principal`): 401 (`missing_token`, `invalid_token`,
//!   `token_expired`, ...), 403 (`forbidden`: every authorisation is a call on the
//!   principal) and 503 (`audit_unavailable`, `database_unavailable`: every refusal
//!   is audited before it is answered, fail closed);
//! - routes with parameters or a body: 400 (`invalid_query`, `invalid_json`,
//!   `invalid_body`, and the codes of the domain types they parse);
//! - routes with a JSON body (`AppJson`, the body limit layer): 413
//!   (`payload_too_large`), 415 (`unsupported_media_type`).

use utoipa::openapi::path::Operation;
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::Modify;

pub(super) struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, doc: &mut OpenApi) {
        for item in doc.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch].into_iter().flatten() {
                add(op);
            }
        }
    }
}

/// Whether the operation opts out of the document's bearer requirement (`security()`).
fn public(op: &Operation) -> bool {
    op.security.as_ref().is_some_and(|reqs| reqs.iter().all(|r| serde_json::to_value(r).is_ok_and(|v| v == serde_json::json!({}))))
}

fn add(op: &mut Operation) {
    let authenticated = !public(op);
    let json_body = op.request_body.as_ref().is_some_and(|b| b.content.keys().any(|k| k.contains("json")));
    let inputs = op.request_body.is_some() || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let mut common: Vec<(&str, &str)> = Vec::new();
    if inputs {
        common.push(("400", "Invalid input (`invalid_query`, `invalid_json`, `invalid_body`, or the code of the field refused)"));
    }
    if authenticated {
        common.push(("401", "No valid bearer token (`missing_token`, `invalid_token`, `token_expired`, `token_not_yet_valid`, `token_wrong_issuer_or_audience`, `token_algorithm_refused`)"));
        common.push(("403", "Not permitted (`forbidden`), audited"));
    }
    if json_body {
        common.push(("413", "Body over the limit (`payload_too_large`)"));
        common.push(("415", "Not `Content-Type: application/json` (`unsupported_media_type`)"));
    }
    if authenticated {
        common.push(("503", "A dependency is down, retry later (`audit_unavailable`, `database_unavailable`, ...)"));
    }
    for (status, description) in common {
        op.responses.responses.entry(status.to_owned()).or_insert_with(|| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
                    .build(),
            )
        });
    }
}
