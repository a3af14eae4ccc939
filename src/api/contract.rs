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
//!
//! It also replaces the request schemas a derive cannot state (a subject named one of two
//! ways, batches validated per item) with JSON Schema written here.

use utoipa::openapi::path::Operation;
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::Modify;

pub(super) struct Complete;

impl Modify for Complete {
    fn modify(&self, doc: &mut OpenApi) {
        for item in doc.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch].into_iter().flatten() {
                add(op);
            }
        }
    }
}

/// The published document: [`Complete`]d, with the request shapes a derive cannot state
/// written as JSON Schema (utoipa's types cannot hold every keyword, so this is JSON).
pub(super) fn document(doc: &OpenApi) -> serde_json::Value {
    let mut v = serde_json::to_value(doc).expect("the document serialises");
    let schemas = &mut v["components"]["schemas"];
    schemas["DsrRequest"] = dsr_request();
    schemas["BatchErasureRequest"] = batch_erasure_request();
    schemas["BatchRequest"] = issue_batch_request();
    schemas["IssueRequest"]["properties"]["identity"] = identity();
    v["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"] = events_body();
    v
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

fn schema(v: serde_json::Value) -> serde_json::Value {
    v
}

const INSTITUTION: &str = r"^[A-Za-z0-9._:-]{1,128}$";
/// Trimmed: 1-256 characters, at least one not blank, no control character.
const EXTERNAL_ID: &str = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$";
const REFERENCE: &str = r"^[A-Za-z0-9._:/#-]{1,128}$";

/// `POST /v1/events`: a JSON array of at least one item, each answered in its result.
fn events_body() -> serde_json::Value {
    schema(serde_json::json!({
        "oneOf": [{"type": "array", "minItems": 1, "items": {}}, {"type": "object"}],
        "description": "Taxonomy events: an array of at least one, one event, or NDJSON. Each item is answered in its result: one that is not a valid event \
                        (not an object, an unknown field, ...) is `rejected` with its reason code, its neighbours go through."
    }))
}

/// Identity fields: a flat object of scalars (at most 8 KiB, which JSON Schema cannot count).
fn identity() -> serde_json::Value {
    serde_json::json!({
        "type": ["object", "null"], "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
        "description": "Optional identity fields (name, email, ...): a flat object of scalars, at most 8 KiB. Stored encrypted."
    })
}

/// `POST /v1/dsr/access|erasure`: the subject by `pseudonym`, or by `institution` and `external_id`.
fn dsr_request() -> serde_json::Value {
    let reference =
        serde_json::json!({"type": ["string", "null"], "pattern": REFERENCE, "description": "The DPO's case number (never an identity)"});
    schema(serde_json::json!({
        "description": "The subject, by `pseudonym` or by the LMS's `institution` and `external_id` (not both)",
        "oneOf": [
            {"type": "object", "required": ["pseudonym"], "additionalProperties": false, "properties": {
                "pseudonym": {"type": "string", "format": "uuid"}, "institution": {"type": "null"}, "external_id": {"type": "null"},
                "reference": reference}},
            {"type": "object", "required": ["institution", "external_id"], "additionalProperties": false, "properties": {
                "pseudonym": {"type": "null"}, "institution": {"type": "string", "pattern": INSTITUTION},
                "external_id": {"type": "string", "maxLength": 256, "pattern": EXTERNAL_ID}, "reference": reference}}
        ]
    }))
}

/// `POST /v1/dsr/erasure/batch`.
fn batch_erasure_request() -> serde_json::Value {
    schema(serde_json::json!({
        "type": "object", "required": ["institution", "subjects"], "additionalProperties": false, "properties": {
            "institution": {"type": "string", "pattern": INSTITUTION},
            "subjects": {"type": "array", "minItems": 1, "items": {"oneOf": [
                {"type": "object", "required": ["pseudonym"], "additionalProperties": false,
                 "properties": {"pseudonym": {"type": "string", "format": "uuid"}, "external_id": {"type": "null"}}},
                {"type": "object", "required": ["external_id"], "additionalProperties": false,
                 "properties": {"pseudonym": {"type": "null"}, "external_id": {"type": "string", "maxLength": 256, "pattern": EXTERNAL_ID}}}
            ]}},
            "reference": {"type": ["string", "null"], "pattern": REFERENCE, "description": "The DPO's case number (never an identity)"}
        }
    }))
}

/// `POST /v1/pseudonyms/batch`: the items' shape; their values are checked per item (an item
/// with an invalid institution or external id is answered in its result, its neighbours issued).
fn issue_batch_request() -> serde_json::Value {
    schema(serde_json::json!({
        "type": "object", "required": ["items"], "additionalProperties": false, "properties": {
            "items": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["institution", "external_id"], "additionalProperties": false, "properties": {
                    "institution": {"type": "string"}, "external_id": {"type": "string"},
                    "identity": {"type": ["object", "null"], "description": "a flat object of scalars, at most 8 KiB"}
                }}}
        }
    }))
}

/// Enumerate the purposes declared in the policy files this server loaded: re-identification
/// (`policies/purposes.yaml`), drill-down, and lifting a suppression (`policies/erasure.yaml`).
/// The server trims a purpose before looking it up; the document names the exact values.
pub(super) fn declare_purposes(
    doc: &mut serde_json::Value,
    policies: &crate::policy::Policies,
    erasure: Option<&crate::dsr::policy::ErasurePolicy>,
) {
    let set = |doc: &mut serde_json::Value, schema: &str, values: Vec<&str>| {
        let p = &mut doc["components"]["schemas"][schema]["properties"]["purpose"];
        if p.is_object() {
            p["enum"] = serde_json::json!(values);
            if let Some(o) = p.as_object_mut() {
                o.remove("pattern");
            }
        }
    };
    set(doc, "ResolveRequest", policies.reidentification_purposes().collect());
    set(doc, "DrilldownRequest", policies.drilldown_purposes().collect());
    if let Some(e) = erasure {
        set(doc, "LiftRequest", e.lift_purposes().collect());
    }
}
