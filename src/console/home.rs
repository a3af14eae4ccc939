//! The home page: who is signed in and what their roles may do here.

use axum::http::StatusCode;
use axum::response::Response;

use super::dispatch::enc;
use super::html::{self, esc};
use super::viewer::Viewer;
use crate::policy::Permission;

pub async fn page(v: Viewer) -> Response {
    let mut cards = String::new();
    if v.may(Permission::CohortRead) || v.may(Permission::ContentRead) {
        let courses: String =
            v.principal.courses.iter().map(|c| format!("<li><a href=\"/console/courses/{}\">{}</a></li>", enc(c), esc(c))).collect();
        let list = if courses.is_empty() { "<p>No course in your scope.</p>".to_string() } else { format!("<ul>{courses}</ul>") };
        cards += &format!("<section class=\"card\"><h2>Your courses</h2>{list}</section>");
    }
    if v.may(Permission::SignalsReview) {
        cards += "<section class=\"card\"><h2>Review</h2><p><a href=\"/console/review\">Your review queues</a></p></section>";
    }
    if v.may(Permission::DsrRead) {
        cards += "<section class=\"card\"><h2>Subject requests</h2><p><a href=\"/console/dsr\">Request queue</a></p></section>";
    }
    if v.may(Permission::AuditRead) {
        cards += "<section class=\"card\"><h2>Audit</h2><p><a href=\"/console/audit\">Audit log and chain verification</a></p></section>";
    }
    if v.may(Permission::RetentionRead) {
        cards += "<section class=\"card\"><h2>Retention</h2><p><a href=\"/console/retention\">Retention report</a></p></section>";
    }
    if cards.is_empty() {
        cards = "<p>None of your roles has a page in the console.</p>".into();
    }
    html::page(&v, "Console", &format!("<div class=\"cards\">{cards}</div>"))
}

pub async fn not_found() -> Response {
    html::error_page(StatusCode::NOT_FOUND, "No such console page.")
}
