//! Reviewer pages (advisor, content author, integrity panel): the review
//! queues, an item's evidence, recording a decision, and the drill-down into
//! one learner's pseudonymous timeline behind a purpose and justification.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::dispatch::{enc, get, post};
use super::html::{self, cell, csrf, esc, text};
use super::viewer::{with_csrf, Posted, Viewer};
use super::Console;
use crate::policy::Permission;

const DECISIONS: [(&str, &str); 5] = [
    ("contacted", "Contacted the learner"),
    ("monitoring", "Keep monitoring"),
    ("dismissed", "Dismissed"),
    ("escalated_to_human_panel", "Escalated to a human panel"),
    ("content_fixed", "Content fixed"),
];

pub async fn queues(State(st): State<Console>, v: Viewer) -> Result<Response, Response> {
    let mut body = String::new();
    let roles: Vec<String> =
        v.principal.roles.iter().filter(|r| st.app.policies.allows(std::slice::from_ref(*r), Permission::SignalsReview)).cloned().collect();
    for role in roles {
        let a = get(&st.api, &v.principal, &format!("/v1/signals/queues/{}/items", enc(&role))).await;
        if a.status.as_u16() == 403 {
            continue; // no detector routes to this role
        }
        let items = html::list(&v, &a, "items")?;
        let head = format!(
            "<table class=\"queue\" id=\"queue-{}\"><thead><tr><th scope=\"col\">Kind</th><th scope=\"col\">State</th><th scope=\"col\">Course</th>\
             <th scope=\"col\">Content</th><th scope=\"col\">Day</th><th scope=\"col\">Found</th></tr></thead>",
            esc(&role)
        );
        let table = html::table(&items, &head, Some("No items."), |i| {
            format!(
                "<tr><td><a href=\"/console/review/items/{}\">{}</a></td>{}</tr>",
                esc(i["id"].as_str().unwrap_or("")),
                text(&i["kind"]),
                html::tds(i, &["state", "course_id", "content_id", "event_date", "created_at"]),
            )
        });
        body += &format!("<h2>Queue: {}</h2>{table}", esc(&role));
    }
    if body.is_empty() {
        body = "<p>None of your roles has a review queue.</p>".into();
    }
    body += "<p class=\"hint\">Signals inform people; nothing here acts on a learner. Opening an item is recorded in the audit log.</p>";
    Ok(html::page(&v, "Review queues", &body))
}

fn drilldown_form(v: &Viewer, st: &Console, subject: &str, course: &str) -> String {
    let options: String = st.app.policies.drilldown_purposes().map(|p| format!("<option value=\"{0}\">{0}</option>", esc(p))).collect();
    let id = esc(subject);
    format!(
        "<form method=\"post\" action=\"/console/learners/{}/activity\" class=\"stack drilldown\">{}<input type=\"hidden\" name=\"course_id\" value=\"{}\">\
         <label for=\"purpose-{id}\">Purpose</label><select id=\"purpose-{id}\" name=\"purpose\" required><option value=\"\">choose a declared purpose</option>{options}</select>\
         <label for=\"justification-{id}\">Justification (recorded in the audit log)</label><textarea id=\"justification-{id}\" name=\"justification\" rows=\"2\" maxlength=\"2000\" required></textarea>\
         <p><button type=\"submit\">View this learner's activity</button></p></form>",
        enc(subject),
        csrf(v),
        esc(course)
    )
}

pub async fn item(State(st): State<Console>, v: Viewer, Path(id): Path<String>) -> Result<Response, Response> {
    let a = get(&st.api, &v.principal, &format!("/v1/signals/items/{}", enc(&id))).await;
    let i = html::answered(&v, &a)?;
    let course = i["course_id"].as_str().unwrap_or("");
    let context: String = i["cohort_context"]["counts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| format!("<tr><th scope=\"row\">{}</th>{}</tr>", text(&c["label"]), cell(&c["learners"])))
        .collect();
    let subjects: String = i["subjects"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let p = s.as_str().unwrap_or("");
            let form = if v.may(Permission::LearnerDrilldown) { drilldown_form(&v, &st, p, course) } else { String::new() };
            format!("<li>Subject {k}: <code>{}</code>{form}</li>", esc(p))
        })
        .collect();
    let decided = i["decision"].as_str().is_some();
    let decision = if decided {
        format!(
            "<p id=\"decision\" class=\"ok\">Decided: {} by {} at {}. Note: {}</p>",
            text(&i["decision"]),
            text(&i["decided_by"]),
            text(&i["decided_at"]),
            text(&i["note"])
        )
    } else {
        let options: String = DECISIONS.iter().map(|(k, l)| format!("<option value=\"{k}\">{l}</option>")).collect();
        format!(
            "<form method=\"post\" action=\"/console/review/items/{}/decision\" class=\"stack\" id=\"decision-form\">{}\
             <label for=\"decision\">Decision (a record of what a person did or will do)</label><select id=\"decision\" name=\"decision\">{options}</select>\
             <label for=\"note\">Note</label><textarea id=\"note\" name=\"note\" rows=\"3\" maxlength=\"4000\" required></textarea>\
             <p><button type=\"submit\">Record decision</button></p></form>",
            enc(&id),
            csrf(&v)
        )
    };
    let body = format!(
        "<table id=\"item\"><tbody><tr><th scope=\"row\">Kind</th><td>{}</td></tr><tr><th scope=\"row\">State</th><td id=\"item-state\">{}</td></tr>\
         <tr><th scope=\"row\">Course</th><td>{}</td></tr><tr><th scope=\"row\">Content</th><td>{}</td></tr><tr><th scope=\"row\">Day</th><td>{}</td></tr>\
         <tr><th scope=\"row\">Held by</th><td>{} until {}</td></tr></tbody></table>\
         <h2>Evidence</h2><p id=\"evidence-summary\">{}</p><details open><summary>The detector's record</summary><pre id=\"evidence\">{}</pre></details><h2>Cohort context</h2><table><thead><tr><th scope=\"col\">Group</th><th scope=\"col\">Learners</th></tr></thead><tbody>{context}</tbody></table>\
         <h2>Subjects</h2><ul>{subjects}</ul><h2>Decision</h2>{decision}",
        text(&i["kind"]),
        text(&i["state"]),
        esc(course),
        text(&i["content_id"]),
        text(&i["event_date"]),
        text(&i["lease_by"]),
        text(&i["lease_until"]),
        evidence_summary(&i["evidence"]),
        esc(&serde_json::to_string_pretty(&i["evidence"]).unwrap_or_default()),
    );
    Ok(html::page(&v, "Review item", &body))
}

/// The statistic against its baseline and expected band, in a sentence.
fn evidence_summary(e: &Value) -> String {
    let band = e["band"]
        .as_array()
        .filter(|b| b.len() == 2)
        .map(|b| format!(" (expected band {} to {})", text(&b[0]), text(&b[1])))
        .unwrap_or_default();
    format!("Statistic <strong>{}</strong> against a baseline of {}{band}.", text(&e["statistic"]), text(&e["baseline"]))
}

#[derive(Deserialize)]
pub struct DecisionForm {
    #[serde(default)]
    csrf: String,
    decision: String,
    note: String,
}

pub async fn decide(State(st): State<Console>, Path(id): Path<String>, Posted(v, f): Posted<DecisionForm>) -> Result<Response, Response> {
    let a =
        post(&st.api, &v.principal, &format!("/v1/signals/items/{}/decision", enc(&id)), &json!({"decision": f.decision, "note": f.note}))
            .await;
    html::answered(&v, &a)?;
    Ok(Redirect::to(&format!("/console/review/items/{}", enc(&id))).into_response())
}

#[derive(Deserialize)]
pub struct DrilldownForm {
    #[serde(default)]
    csrf: String,
    course_id: String,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    justification: String,
}

with_csrf!(DecisionForm, DrilldownForm);

fn timeline(t: &Value) -> String {
    let rows: String = t["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            format!(
                "<tr>{}<td class=\"num\">{}</td></tr>",
                html::tds(e, &["at", "event_type", "content_id", "session_id"]),
                text(&e["position_sec"])
            )
        })
        .collect();
    format!(
        "<table id=\"timeline\"><caption>Pseudonymous activity (no identity)</caption><thead><tr><th scope=\"col\">At</th><th scope=\"col\">Event</th>\
         <th scope=\"col\">Content</th><th scope=\"col\">Session</th><th scope=\"col\">Position (s)</th></tr></thead><tbody>{rows}</tbody></table>{}",
        if t["truncated"].as_bool() == Some(true) { "<p class=\"hint\">Truncated at the policy's limit.</p>" } else { "" }
    )
}

pub async fn drilldown(
    State(st): State<Console>,
    Path(pseudonym): Path<String>,
    Posted(v, f): Posted<DrilldownForm>,
) -> Result<Response, Response> {
    let body = json!({"course_id": f.course_id, "purpose": f.purpose, "justification": f.justification});
    let a = post(&st.api, &v.principal, &format!("/v1/learners/{}/activity", enc(&pseudonym)), &body).await;
    html::answered(&v, &a)?;
    let page = format!(
        "<p>Learner <code>{}</code> in course {} · purpose {} (recorded in the audit log with your justification).</p>{}",
        esc(&pseudonym),
        esc(&f.course_id),
        esc(&f.purpose),
        timeline(&a.body)
    );
    Ok(html::page(&v, "Learner activity", &page))
}
