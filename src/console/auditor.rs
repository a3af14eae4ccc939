//! Auditor pages: the audit log (filters, paging, drill-down by principal),
//! chain verification against the latest signed checkpoint, the retention report.

use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;

use super::dispatch::{enc, get};
use super::html::{self, csrf, esc, text};
use super::viewer::{CsrfForm, Posted, Viewer};
use super::Console;
use crate::policy::Permission;

#[derive(Deserialize, Default)]
pub struct LogQuery {
    actor: Option<String>,
    action: Option<String>,
    outcome: Option<String>,
    target: Option<String>,
    from: Option<String>,
    to: Option<String>,
    after: Option<i64>,
}

const FILTERS: [&str; 6] = ["actor", "action", "outcome", "target", "from", "to"];

impl LogQuery {
    fn get(&self, k: &str) -> Option<&str> {
        match k {
            "actor" => self.actor.as_deref(),
            "action" => self.action.as_deref(),
            "outcome" => self.outcome.as_deref(),
            "target" => self.target.as_deref(),
            "from" => self.from.as_deref(),
            _ => self.to.as_deref(),
        }
        .filter(|s| !s.trim().is_empty())
    }

    fn qs(&self) -> String {
        FILTERS.iter().filter_map(|k| self.get(k).map(|v| format!("{k}={}", enc(v.trim())))).collect::<Vec<_>>().join("&")
    }
}

fn filter_form(q: &LogQuery) -> String {
    let field = |k: &str, label: &str, hint: &str| {
        format!(
            "<label for=\"f-{k}\">{label}</label><input type=\"text\" id=\"f-{k}\" name=\"{k}\" value=\"{}\" placeholder=\"{hint}\">",
            esc(q.get(k).unwrap_or(""))
        )
    };
    format!(
        "<form method=\"get\" action=\"/console/audit\" class=\"stack\" id=\"audit-filters\">{}{}{}{}{}{}<p><button type=\"submit\">Filter</button> \
         <a href=\"/console/audit\">Clear</a></p></form>",
        field("actor", "Actor (principal)", "e.g. dpo@uni-a"),
        field("action", "Action", "e.g. learner.drilldown"),
        field("outcome", "Outcome", "success, denied, not_found, error"),
        field("target", "Target pseudonym", ""),
        field("from", "From (RFC 3339)", "2026-01-01T00:00:00Z"),
        field("to", "To (RFC 3339, exclusive)", ""),
    )
}

pub async fn log(State(st): State<Console>, v: Viewer, Query(q): Query<LogQuery>) -> Result<Response, Response> {
    let mut uri = format!("/v1/audit?limit=50&{}", q.qs());
    if let Some(a) = q.after {
        uri += &format!("&after={a}");
    }
    let a = get(&st.api, &v.principal, &uri).await;
    let entries = html::list(&v, &a, "entries")?;
    let head = "<table id=\"audit-log\"><caption>Audit entries (50 a page)</caption><thead><tr>\
                <th scope=\"col\">Seq</th><th scope=\"col\">At</th><th scope=\"col\">Actor</th><th scope=\"col\">Roles</th><th scope=\"col\">Institution</th>\
                <th scope=\"col\">Action</th><th scope=\"col\">Outcome</th><th scope=\"col\">Target</th><th scope=\"col\">Purpose</th><th scope=\"col\">Justification</th>\
                <th scope=\"col\">Detail</th></tr></thead>";
    let table = html::table(&entries, head, None, |e| {
        let actor = e["actor"].as_str().unwrap_or("");
        format!(
            "<tr><td class=\"num\">{}</td><td>{}</td><td><a href=\"/console/audit?actor={}\">{}</a></td><td>{}</td>{}<td><code>{}</code></td></tr>",
            text(&e["seq"]),
            text(&e["at"]),
            enc(actor),
            esc(actor),
            e["roles"].as_array().map(|r| r.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_default(),
            html::tds(e, &["institution", "action", "outcome", "target_pseudonym", "purpose", "justification"]),
            esc(&e["detail"].to_string()),
        )
    });
    let next = match a.body["next_after"].as_i64() {
        Some(n) => {
            let qs = q.qs();
            format!(
                "<p><a id=\"next-page\" href=\"/console/audit?{}{}after={n}\">Next page</a></p>",
                qs,
                if qs.is_empty() { "" } else { "&" }
            )
        }
        None => "<p class=\"hint\">Last page.</p>".into(),
    };
    let verify = if v.may(Permission::AuditVerify) {
        format!(
            "<form method=\"post\" action=\"/console/audit/verify\" id=\"verify-form\">{}<button type=\"submit\">Verify the chain against the latest signed checkpoint</button></form>",
            csrf(&v)
        )
    } else {
        String::new()
    };
    let body = format!("{verify}<details><summary>Filters</summary>{}</details>{table}{next}", filter_form(&q));
    Ok(html::page(&v, "Audit log", &body))
}

fn verification(v: &Value) -> String {
    let cp = &v["checkpoint"];
    let cp = if cp.is_null() {
        "none yet".to_string()
    } else {
        format!("seq {} at {} (hash <code>{}</code>)", text(&cp["seq"]), text(&cp["at"]), text(&cp["hash"]))
    };
    if v["intact"].as_bool() == Some(true) {
        format!(
            "<p class=\"ok\" id=\"chain-status\" role=\"status\">Chain intact: {} entries, head at seq {}; checked against the signed checkpoint {cp}.</p>",
            text(&v["entries"]),
            text(&v["head_seq"])
        )
    } else {
        format!(
            "<p class=\"bad\" id=\"chain-status\" role=\"alert\">Chain BROKEN at seq {}: {}. {}</p><p>Latest signed checkpoint: {cp}.</p>",
            text(&v["first_broken_seq"]),
            text(&v["reason"]),
            text(&v["detail"])
        )
    }
}

pub async fn verify(State(st): State<Console>, Posted(v, _): Posted<CsrfForm>) -> Result<Response, Response> {
    let a = get(&st.api, &v.principal, "/v1/audit/verify").await;
    html::answered(&v, &a)?;
    Ok(html::page(
        &v,
        "Audit chain verification",
        &format!("{}<p><a href=\"/console/audit\">Back to the audit log</a></p>", verification(&a.body)),
    ))
}

pub async fn retention(State(st): State<Console>, v: Viewer) -> Result<Response, Response> {
    let a = get(&st.api, &v.principal, "/v1/retention/report").await;
    let r = html::answered(&v, &a)?;
    let rows: String = r["tables"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let ok = t["ttl_ok"].as_bool() == Some(true) && t["rows_ok"].as_bool() == Some(true);
            format!(
                "<tr{}><th scope=\"row\">{}</th><td><code>{}</code></td><td><code>{}</code></td>{}<td>{}</td></tr>",
                if ok { "" } else { " class=\"bad\"" },
                text(&t["table"]),
                text(&t["expected_ttl"]),
                text(&t["live_ttl"]),
                html::tds(t, &["oldest", "limit"]),
                if ok { "ok" } else { "VIOLATION" },
            )
        })
        .collect();
    let not_checked: String =
        r["not_checked"].as_array().cloned().unwrap_or_default().iter().map(|n| format!("<li>{}</li>", text(n))).collect();
    let verdict = if r["ok"].as_bool() == Some(true) {
        "<p class=\"ok\" id=\"retention-status\">Every store holds its retention policy.</p>".to_string()
    } else {
        "<p class=\"bad\" id=\"retention-status\" role=\"alert\">Retention is violated: see the rows marked VIOLATION.</p>".to_string()
    };
    let body = format!(
        "{verdict}<p>Checked at {} (grace {} days).</p><table id=\"retention\"><thead><tr><th scope=\"col\">Store</th><th scope=\"col\">Policy</th>\
         <th scope=\"col\">Live</th><th scope=\"col\">Oldest</th><th scope=\"col\">Limit</th><th scope=\"col\">Verdict</th></tr></thead><tbody>{rows}</tbody></table>\
         <h2>Not checked here</h2><ul>{not_checked}</ul>",
        text(&r["checked_at"]),
        text(&r["grace_days"]),
    );
    Ok(html::page(&v, "Retention report", &body))
}
