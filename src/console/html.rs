//! HTML building blocks: escaping, the page shell (who is signed in, with
//! which roles and institutions; navigation limited to what the roles may do),
//! released cells, error pages.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use serde_json::Value;

use super::dispatch::Answer;
use super::viewer::Viewer;
use crate::policy::Permission;

/// Escape text for an HTML text node or a quoted attribute.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON scalar as text (strings unquoted).
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => esc(s),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{}", (f * 100.0).round() / 100.0),
            _ => n.to_string(),
        },
        other => esc(&other.to_string()),
    }
}

/// `item`'s fields `keys` as text cells, in order.
pub fn tds(item: &Value, keys: &[&str]) -> String {
    keys.iter().map(|k| format!("<td>{}</td>", text(&item[*k]))).collect()
}

/// Why a cell is withheld, for people.
pub fn reason(code: &str) -> &'static str {
    match code {
        "small_cell" => "fewer learners than the minimum cell size",
        "extreme_share" => "a 0% or 100% share of a small group",
        "small_group" => "a statistic of a group below the minimum size",
        "derived_from_withheld" => "derived from a withheld count",
        "complementary" => "would reveal another withheld cell",
        "sticky" => "withheld earlier in this live view",
        _ => "withheld by disclosure control",
    }
}

/// A released cell `{"value", "suppressed"?, "band"?}` as a table cell. A
/// withheld cell has no value in the API's answer: it shows its reason only.
pub fn cell(c: &Value) -> String {
    if let Some(r) = c.get("suppressed").and_then(Value::as_str) {
        return format!("<td class=\"withheld\" data-withheld=\"{}\"><abbr title=\"{}\">withheld</abbr></td>", esc(r), esc(reason(r)));
    }
    let v = &c["value"];
    match c.get("band").and_then(Value::as_u64) {
        Some(b) if b > 1 => match v.as_u64() {
            Some(lo) => format!("<td class=\"num\">{lo}–{}</td>", lo + b - 1),
            None => format!("<td class=\"num\">{}</td>", text(v)),
        },
        _ => format!("<td class=\"num\">{}</td>", text(v)),
    }
}

/// The value of a released cell, when released.
pub fn value(c: &Value) -> Option<f64> {
    if c.get("suppressed").is_some() {
        return None;
    }
    c["value"].as_f64()
}

fn nav(v: &Viewer) -> String {
    let mut links = vec![("/console", "Home".to_string())];
    if v.may(Permission::CohortRead) || v.may(Permission::ContentRead) {
        for c in &v.principal.courses {
            links.push(("", format!("<a href=\"/console/courses/{0}\">Course {1}</a>", super::dispatch::enc(c), esc(c))));
        }
    }
    if v.may(Permission::SignalsReview) {
        links.push(("/console/review", "Review queue".into()));
    }
    if v.may(Permission::DsrRead) {
        links.push(("/console/dsr", "Subject requests".into()));
    }
    if v.may(Permission::DsrErasure) {
        links.push(("/console/dsr/suppressions", "Suppression list".into()));
    }
    if v.may(Permission::AuditRead) {
        links.push(("/console/audit", "Audit log".into()));
    }
    if v.may(Permission::RetentionRead) {
        links.push(("/console/retention", "Retention".into()));
    }
    let items: String = links
        .into_iter()
        .map(|(href, label)| if href.is_empty() { format!("<li>{label}</li>") } else { format!("<li><a href=\"{href}\">{label}</a></li>") })
        .collect();
    format!("<nav aria-label=\"Console\"><ul>{items}</ul></nav>")
}

fn who(v: &Viewer) -> String {
    let p = &v.principal;
    let insts = match &p.institutions {
        None => "all institutions".to_string(),
        Some(l) => l.iter().map(|i| esc(i)).collect::<Vec<_>>().join(", "),
    };
    let courses = if p.courses.is_empty() {
        String::new()
    } else {
        format!(" · courses: {}", p.courses.iter().map(|c| esc(c)).collect::<Vec<_>>().join(", "))
    };
    format!(
        "<p class=\"who\" id=\"who\">Signed in as <strong>{}</strong> · roles: <span id=\"roles\">{}</span> · institutions: {insts}{courses}</p>\
         <form method=\"post\" action=\"/console/logout\" class=\"logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\">Sign out</button></form>",
        esc(&p.sub),
        p.roles.iter().map(|r| esc(r)).collect::<Vec<_>>().join(", "),
        esc(&v.csrf)
    )
}

/// A full page for a signed-in viewer.
pub fn page(v: &Viewer, title: &str, body: &str) -> Response {
    let doc = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} · learnvault console</title><link rel=\"stylesheet\" href=\"/console/assets/console.css\">\
         <script src=\"/console/assets/console.js\" defer></script></head><body>\
         <header><a class=\"skip\" href=\"#main\">Skip to content</a><p class=\"brand\">learnvault console</p>{who}{nav}</header>\
         <main id=\"main\"><h1>{t}</h1>{body}</main></body></html>",
        t = esc(title),
        who = who(v),
        nav = nav(v),
    );
    Html(doc).into_response()
}

/// A page without a session (sign-in problems).
pub fn bare(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · learnvault console</title>\
         <link rel=\"stylesheet\" href=\"/console/assets/console.css\"></head><body><main id=\"main\">{body}</main></body></html>",
        esc(title)
    ))
}

/// A page without a session that moves on to `to` (same site) at once.
pub fn bare_refresh(title: &str, to: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"0;url={}\">\
         <title>{} · learnvault console</title><link rel=\"stylesheet\" href=\"/console/assets/console.css\"></head>\
         <body><main id=\"main\">{body}</main></body></html>",
        esc(to),
        esc(title)
    ))
}

pub fn error_page(status: StatusCode, message: &str) -> Response {
    (status, bare("Error", &format!("<h1>{}</h1><p class=\"error\" role=\"alert\">{}</p>", status.as_u16(), esc(message)))).into_response()
}

/// The API refused or failed: the same status, its message, in the page.
pub fn api_error(v: &Viewer, a: &Answer) -> Response {
    let mut r =
        page(v, "Refused", &format!("<p class=\"error\" role=\"alert\">The API answered {}: {}</p>", a.status.as_u16(), esc(&a.message())));
    *r.status_mut() = a.status;
    r
}

/// The body of a successful API answer, or (`Err`) the page saying what the API answered instead.
pub fn answered<'a>(v: &Viewer, a: &'a Answer) -> Result<&'a Value, Response> {
    if !a.ok() {
        return Err(api_error(v, a));
    }
    Ok(&a.body)
}

/// The list `key` of an API answer, or (`Err`) the page saying what the API answered instead.
pub fn list(v: &Viewer, a: &Answer, key: &str) -> Result<Vec<Value>, Response> {
    Ok(answered(v, a)?[key].as_array().cloned().unwrap_or_default())
}

/// `items` as a table: `head` (the table up to its `</thead>`), then a row per item;
/// `<p>{empty}</p>` instead when there is no item, if `empty` is given.
pub fn table(items: &[Value], head: &str, empty: Option<&str>, row: impl Fn(&Value) -> String) -> String {
    match empty {
        Some(empty) if items.is_empty() => format!("<p>{empty}</p>"),
        _ => format!("{head}<tbody>{}</tbody></table>", items.iter().map(row).collect::<String>()),
    }
}

/// A hidden CSRF field for the viewer's forms.
pub fn csrf(v: &Viewer) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(&v.csrf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escapes() {
        assert_eq!(esc("<a href='x'>&\"</a>"), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;");
    }

    #[test]
    fn withheld_cells_show_the_reason_not_a_number() {
        let c = cell(&json!({"value": null, "suppressed": "small_cell"}));
        assert!(c.contains("withheld") && c.contains("minimum cell size"));
        assert!(!c.chars().any(|ch| ch.is_ascii_digit()));
        assert_eq!(cell(&json!({"value": 40, "band": 20})), "<td class=\"num\">40–59</td>");
        assert_eq!(cell(&json!({"value": 0.4567})), "<td class=\"num\">0.46</td>");
        assert_eq!(value(&json!({"value": 3, "suppressed": "complementary"})), None);
    }
}
