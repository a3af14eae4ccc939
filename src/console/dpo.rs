//! DPO pages: the request queue (overdue first), new requests (one subject by
//! `{institution, external_id}` or pseudonym; a batch erasure from CSV), a
//! request's progress, its archive and its certificate (signature verified
//! here, against the API's certificate key), the suppression list.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::dispatch::{enc, get, post, raw};
use super::html::{self, csrf, esc, text};
use super::viewer::{with_csrf, Posted, Viewer};
use super::Console;
use crate::policy::Permission;

/// A job's progress at a glance: its scalar fields, and how many items its lists hold.
fn progress(p: &Value) -> String {
    let parts: Vec<String> = p
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| match v {
                    Value::Array(a) => Some(format!("{}: {} item{}", esc(k), a.len(), if a.len() == 1 { "" } else { "s" })),
                    Value::Object(_) => None,
                    v => Some(format!("{}: {}", esc(k), text(v))),
                })
                .collect()
        })
        .unwrap_or_default();
    if parts.is_empty() {
        "—".into()
    } else {
        parts.join("; ")
    }
}

/// The whole progress record, folded.
fn progress_detail(p: &Value) -> String {
    match p.as_object() {
        Some(o) if !o.is_empty() => format!(
            "<details><summary>Every step's record</summary><pre>{}</pre></details>",
            esc(&serde_json::to_string_pretty(p).unwrap_or_default())
        ),
        _ => String::new(),
    }
}

fn request_forms(v: &Viewer) -> String {
    let mut kinds = String::new();
    if v.may(Permission::DsrErasure) {
        kinds += "<option value=\"erasure\">Erasure (Art. 17)</option>";
    }
    if v.may(Permission::DsrAccess) {
        kinds += "<option value=\"access\">Subject access (Art. 15)</option>";
    }
    if kinds.is_empty() {
        return String::new();
    }
    let c = csrf(v);
    let mut out = format!(
        "<h2>New request</h2><form method=\"post\" action=\"/console/dsr/requests\" class=\"stack\" id=\"new-request\">{c}\
         <label for=\"kind\">Kind</label><select id=\"kind\" name=\"kind\">{kinds}</select>\
         <fieldset><legend>Subject: institution and the LMS's learner id, or a pseudonym</legend>\
         <label for=\"institution\">Institution</label><input type=\"text\" id=\"institution\" name=\"institution\" maxlength=\"64\">\
         <label for=\"external_id\">LMS learner id</label><input type=\"text\" id=\"external_id\" name=\"external_id\" maxlength=\"256\" autocomplete=\"off\">\
         <label for=\"pseudonym\">or pseudonym</label><input type=\"text\" id=\"pseudonym\" name=\"pseudonym\" maxlength=\"36\" autocomplete=\"off\"></fieldset>\
         <label for=\"reference\">Case number (optional; never an identity)</label><input type=\"text\" id=\"reference\" name=\"reference\" maxlength=\"128\">\
         <p><button type=\"submit\">File request</button></p></form>"
    );
    if v.may(Permission::DsrErasure) {
        out += &format!(
            "<h2>Batch erasure</h2><form method=\"post\" action=\"/console/dsr/batch\" class=\"stack\" id=\"batch-request\">{c}\
             <label for=\"b-institution\">Institution</label><input type=\"text\" id=\"b-institution\" name=\"institution\" maxlength=\"64\" required>\
             <label for=\"csv\">Subjects, CSV: one per line, a pseudonym or an LMS learner id (a header line <code>pseudonym</code> or <code>external_id</code> is skipped)</label>\
             <textarea id=\"csv\" name=\"csv\" rows=\"6\" required></textarea>\
             <label for=\"b-reference\">Case number (optional)</label><input type=\"text\" id=\"b-reference\" name=\"reference\" maxlength=\"128\">\
             <p><button type=\"submit\">File batch erasure</button></p></form>"
        );
    }
    out
}

pub async fn queue(State(st): State<Console>, v: Viewer) -> Result<Response, Response> {
    let a = get(&st.api, &v.principal, "/v1/dsr/jobs").await;
    let jobs = html::list(&v, &a, "jobs")?;
    let head = "<table id=\"dsr-queue\"><caption>Requests, overdue first, then by deadline</caption><thead><tr><th scope=\"col\">Kind</th><th scope=\"col\">State</th>\
                <th scope=\"col\">Step</th><th scope=\"col\">Progress</th><th scope=\"col\">Deadline</th><th scope=\"col\">Overdue</th><th scope=\"col\">Institution</th>\
                <th scope=\"col\">Case</th></tr></thead>";
    let table = html::table(&jobs, head, Some("No requests."), |j| {
        let overdue = j["overdue"].as_bool() == Some(true);
        format!(
            "<tr{}><td><a href=\"/console/dsr/jobs/{id}\">{kind}</a></td>{}<td>{}</td><td>{}</td><td>{}</td>{}</tr>",
            if overdue { " class=\"overdue\"" } else { "" },
            html::tds(j, &["state", "step"]),
            progress(&j["progress"]),
            text(&j["deadline"]),
            if overdue { "overdue" } else { "" },
            html::tds(j, &["institution", "reference"]),
            id = esc(j["id"].as_str().unwrap_or("")),
            kind = text(&j["kind"]),
        )
    });
    Ok(html::page(&v, "Subject requests", &format!("{table}{}", request_forms(&v))))
}

#[derive(Deserialize)]
pub struct RequestForm {
    #[serde(default)]
    csrf: String,
    kind: String,
    #[serde(default)]
    institution: String,
    #[serde(default)]
    external_id: String,
    #[serde(default)]
    pseudonym: String,
    #[serde(default)]
    reference: String,
}

fn opt(s: &str) -> Value {
    match s.trim() {
        "" => Value::Null,
        t => Value::String(t.to_owned()),
    }
}

fn to_job(v: &Viewer, a: &super::dispatch::Answer) -> Response {
    match a.body["id"].as_str() {
        Some(id) if a.ok() => Redirect::to(&format!("/console/dsr/jobs/{}", enc(id))).into_response(),
        _ => html::api_error(v, a),
    }
}

pub async fn submit(State(st): State<Console>, Posted(v, f): Posted<RequestForm>) -> Result<Response, Response> {
    let path = match f.kind.as_str() {
        "erasure" => "/v1/dsr/erasure",
        "access" => "/v1/dsr/access",
        _ => return Err(html::error_page(StatusCode::BAD_REQUEST, "Unknown request kind.")),
    };
    let body = if f.pseudonym.trim().is_empty() {
        json!({"institution": opt(&f.institution), "external_id": opt(&f.external_id), "reference": opt(&f.reference)})
    } else {
        json!({"pseudonym": opt(&f.pseudonym), "reference": opt(&f.reference)})
    };
    let a = post(&st.api, &v.principal, path, &body).await;
    Ok(to_job(&v, &a))
}

#[derive(Deserialize)]
pub struct BatchForm {
    #[serde(default)]
    csrf: String,
    institution: String,
    csv: String,
    #[serde(default)]
    reference: String,
}

with_csrf!(RequestForm, BatchForm);

/// The subjects of a CSV: one per line (first column), a UUID as a pseudonym,
/// anything else as an LMS learner id; a header line is skipped.
pub fn csv_subjects(csv: &str) -> Vec<Value> {
    csv.lines()
        .filter_map(|l| l.split(',').next().map(|c| c.trim().trim_matches('"').to_owned()))
        .filter(|c| !c.is_empty() && c != "pseudonym" && c != "external_id")
        .map(|c| match uuid::Uuid::parse_str(&c) {
            Ok(u) => json!({"pseudonym": u}),
            Err(_) => json!({"external_id": c}),
        })
        .collect()
}

pub async fn batch(State(st): State<Console>, Posted(v, f): Posted<BatchForm>) -> Result<Response, Response> {
    let body = json!({"institution": f.institution.trim(), "subjects": csv_subjects(&f.csv), "reference": opt(&f.reference)});
    let a = post(&st.api, &v.principal, "/v1/dsr/erasure/batch", &body).await;
    Ok(to_job(&v, &a))
}

fn certificate_view(cert: &Value, key: &Value) -> String {
    let public_key = key["public_key"].as_str().unwrap_or("");
    let docs: Vec<(String, &Value)> = if cert.get("certificate").is_some() {
        vec![(String::new(), cert)]
    } else {
        cert.as_object().map(|o| o.iter().map(|(k, v)| (k.clone(), v)).collect()).unwrap_or_default()
    };
    let mut out = String::new();
    for (k, (who, doc)) in docs.into_iter().enumerate() {
        let sid = if k == 0 { "signature-status".to_string() } else { format!("signature-status-{k}") };
        let verdict = match crate::dsr::certificate::verify(doc, public_key) {
            Ok(_) => {
                format!("<p class=\"ok\" id=\"{sid}\">Signature verified: Ed25519, key <code>{}</code></p>", esc(public_key))
            }
            Err(e) => {
                format!("<p class=\"bad\" id=\"{sid}\" role=\"alert\">Signature NOT verified: {}</p>", esc(&e.to_string()))
            }
        };
        let fields: String = doc["certificate"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        format!(
                            "<tr><th scope=\"row\">{}</th><td>{}</td></tr>",
                            esc(k),
                            if v.is_object() || v.is_array() { format!("<code>{}</code>", esc(&v.to_string())) } else { text(v) }
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let title = if who.is_empty() { String::new() } else { format!("<h3>Subject {}</h3>", esc(&who)) };
        out += &format!("{title}{verdict}<table class=\"certificate\"><tbody>{fields}</tbody></table>");
    }
    out
}

pub async fn job(State(st): State<Console>, v: Viewer, Path(id): Path<String>) -> Result<Response, Response> {
    let a = get(&st.api, &v.principal, &format!("/v1/dsr/jobs/{}", enc(&id))).await;
    let j = html::answered(&v, &a)?;
    let state = j["state"].as_str().unwrap_or("");
    let kind = j["kind"].as_str().unwrap_or("");
    let mut body = format!(
        "<table id=\"job\"><tbody><tr><th scope=\"row\">Kind</th><td>{}</td></tr><tr><th scope=\"row\">State</th><td id=\"job-state\">{}</td></tr>\
         <tr><th scope=\"row\">Step</th><td>{}</td></tr><tr><th scope=\"row\">Progress</th><td>{}{}</td></tr><tr><th scope=\"row\">Requested</th><td>{}</td></tr>\
         <tr><th scope=\"row\">Deadline</th><td>{}{}</td></tr><tr><th scope=\"row\">Subject</th><td>{}</td></tr><tr><th scope=\"row\">Institution</th><td>{}</td></tr>\
         <tr><th scope=\"row\">Case</th><td>{}</td></tr><tr><th scope=\"row\">Error</th><td>{}</td></tr></tbody></table>",
        text(&j["kind"]),
        text(&j["state"]),
        text(&j["step"]),
        progress(&j["progress"]),
        progress_detail(&j["progress"]),
        text(&j["requested_at"]),
        text(&j["deadline"]),
        if j["overdue"].as_bool() == Some(true) { " <span class=\"overdue\">overdue</span>" } else { "" },
        text(&j["pseudonym"]),
        text(&j["institution"]),
        text(&j["reference"]),
        text(&j["error"]),
    );
    let eid = enc(&id);
    if state == "done" && kind.starts_with("erasure") {
        let cert = get(&st.api, &v.principal, &format!("/v1/dsr/jobs/{eid}/certificate")).await;
        let key = get(&st.api, &v.principal, "/v1/dsr/certificate-key").await;
        if cert.ok() && key.ok() {
            body += &format!(
                "<h2>Erasure certificate</h2>{}<p><a href=\"/console/dsr/jobs/{eid}/certificate\" download id=\"certificate-download\">Download the signed certificate (JSON)</a></p>",
                certificate_view(&cert.body, &key.body)
            );
        } else {
            body += &format!("<p class=\"error\">Certificate unavailable: {}</p>", esc(&cert.message()));
        }
    } else if state == "done" && kind == "access" && v.may(Permission::DsrAccess) {
        body += &format!(
            "<p><a href=\"/console/dsr/jobs/{eid}/archive\" id=\"archive-download\">Download the subject-access archive (tar)</a></p>"
        );
    }
    let mut r = html::page(&v, "Subject request", &body);
    if state == "pending" || state == "running" {
        // The page follows the job until it ends (no script needed).
        r.headers_mut().insert("refresh", HeaderValue::from_static("2"));
    }
    Ok(r)
}

/// Relay a download from the API (the archive streams as it decrypts).
async fn download(st: &Console, v: &Viewer, uri: &str) -> Response {
    let resp = raw(&st.api, &v.principal, Method::GET, uri, None).await;
    if !resp.status().is_success() {
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        return html::api_error(v, &super::dispatch::Answer { status, body });
    }
    resp
}

pub async fn archive(State(st): State<Console>, v: Viewer, Path(id): Path<String>) -> Response {
    download(&st, &v, &format!("/v1/dsr/jobs/{}/archive", enc(&id))).await
}

pub async fn certificate(State(st): State<Console>, v: Viewer, Path(id): Path<String>) -> Response {
    let mut r = download(&st, &v, &format!("/v1/dsr/jobs/{}/certificate", enc(&id))).await;
    if r.status().is_success() {
        let name = format!(
            "attachment; filename=\"erasure-certificate-{}.json\"",
            id.chars().filter(|c| c.is_ascii_hexdigit() || *c == '-').collect::<String>()
        );
        r.headers_mut().insert(header::CONTENT_DISPOSITION, HeaderValue::from_str(&name).expect("ascii"));
    }
    r
}

pub async fn suppressions(State(st): State<Console>, v: Viewer) -> Result<Response, Response> {
    let a = get(&st.api, &v.principal, "/v1/dsr/suppressions").await;
    let list = html::list(&v, &a, "suppressions")?;
    let head = "<table id=\"suppressions\"><caption>Erased learners whose collection is refused</caption><thead><tr><th scope=\"col\">Erased pseudonym</th>\
                <th scope=\"col\">Institution</th><th scope=\"col\">Erased</th><th scope=\"col\">State</th><th scope=\"col\">Lifted</th></tr></thead>";
    let body = html::table(&list, head, Some("No erased learner is suppressed."), |s| {
        format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            text(&s["pseudonym"]),
            text(&s["institution"]),
            text(&s["erased_at"]),
            if s["suppressed"].as_bool() == Some(true) { "suppressed" } else { "lifted" },
            if s["lifted_at"].is_null() { String::new() } else { format!("{} by {}", text(&s["lifted_at"]), text(&s["lifted_by"])) },
        )
    });
    Ok(html::page(&v, "Suppression list", &body))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_certificate_view_verifies_the_signature() {
        let signer = crate::dsr::certificate::Signer::derive(&crate::vault::keys::MasterKey::generate());
        let key = serde_json::json!({"public_key": signer.public_key()});
        let mut doc = signer.sign(&serde_json::json!({"subject": {"pseudonym": "p"}, "reference": "CASE-1"}));
        assert!(super::certificate_view(&doc, &key).contains("Signature verified"));
        doc["certificate"]["reference"] = "CASE-2".into();
        let html = super::certificate_view(&doc, &key);
        assert!(html.contains("Signature NOT verified") && html.contains("role=\"alert\""), "{html}");
    }

    #[test]
    fn csv_lines_become_subjects() {
        let s = super::csv_subjects("external_id\nstu-1, x\n\n\"stu-2\"\n6f1d8c5e-0000-4000-8000-000000000001\n");
        assert_eq!(s.len(), 3);
        assert_eq!(s[0]["external_id"], "stu-1");
        assert_eq!(s[1]["external_id"], "stu-2");
        assert!(s[2]["pseudonym"].is_string());
    }
}
