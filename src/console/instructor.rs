//! Instructor and content author pages: the live cohort dashboard of a course
//! (funnel per cohort, engagement per minute, time on task) and the replay
//! hotspots of a video (position on the x axis). Every number comes from the
//! API's released views; a withheld cell shows its reason only.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;

use super::charts;
use super::dispatch::{enc, get};
use super::html::{self, cell, esc, text, value};
use super::viewer::Viewer;
use super::Console;
use crate::policy::Permission;

#[derive(Deserialize)]
pub struct DashQuery {
    from: Option<String>,
    to: Option<String>,
    minutes: Option<u32>,
}

fn range_qs(from: &Option<String>, to: &Option<String>) -> String {
    let mut q = Vec::new();
    if let Some(f) = from.as_deref().filter(|s| !s.is_empty()) {
        q.push(format!("from={}", enc(f)));
    }
    if let Some(t) = to.as_deref().filter(|s| !s.is_empty()) {
        q.push(format!("to={}", enc(t)));
    }
    q.join("&")
}

/// A table row per cohort of a released view (`cohorts`, named by `cohort_id`), then one for
/// its course total ("All cohorts"): the row's header, then `cells` of the cohort's object.
fn cohort_rows(view: &Value, cells: impl Fn(&Value) -> Vec<&Value>) -> String {
    let cohorts = view["cohorts"].as_array().cloned().unwrap_or_default().into_iter().map(|c| (c["cohort_id"].as_str().unwrap_or("").to_owned(), c));
    let mut rows = String::new();
    for (name, c) in cohorts.chain(std::iter::once(("All cohorts".to_owned(), view["total"].clone()))) {
        rows += &format!("<tr><th scope=\"row\">{}</th>{}</tr>", esc(&name), cells(&c).into_iter().map(cell).collect::<String>());
    }
    rows
}

pub fn funnel_table(f: &Value) -> String {
    let rows = cohort_rows(f, |c| vec![&c["enrolled"], &c["started"], &c["completed"], &c["assessed"]]);
    format!(
        "<table id=\"funnel-table\"><caption>Learners at each step, per cohort</caption><thead><tr><th scope=\"col\">Cohort</th>\
         <th scope=\"col\">Enrolled</th><th scope=\"col\">Started</th><th scope=\"col\">Completed</th><th scope=\"col\">Assessed</th></tr></thead>\
         <tbody>{rows}</tbody></table>"
    )
}

fn engagement_section(e: &Value) -> String {
    let rows = e["rows"].as_array().cloned().unwrap_or_default();
    let cohorts: Vec<String> =
        e["cohorts"].as_array().cloned().unwrap_or_default().iter().filter_map(|c| c.as_str().map(str::to_owned)).collect();
    let minutes: Vec<String> = rows.iter().map(|r| r["minute"].as_str().unwrap_or("").chars().skip(11).take(5).collect()).collect();
    let mut series = vec![("All cohorts".to_string(), rows.iter().map(|r| value(&r["total"]["active_learners"])).collect::<Vec<_>>())];
    for (j, c) in cohorts.iter().enumerate() {
        series.push((c.clone(), rows.iter().map(|r| value(&r["cohorts"][j]["active_learners"])).collect()));
    }
    let chart = charts::lines("engagement-chart", "Active learners per minute", &minutes, &series, "minute (UTC)", "active learners");
    let head: String = cohorts.iter().map(|c| format!("<th scope=\"col\">{} active</th>", esc(c))).collect();
    let body: String = rows
        .iter()
        .zip(&minutes)
        .map(|(r, m)| {
            let per: String = (0..cohorts.len()).map(|j| cell(&r["cohorts"][j]["active_learners"])).collect();
            format!(
                "<tr><th scope=\"row\">{}</th>{}{}{per}</tr>",
                esc(m),
                cell(&r["total"]["active_learners"]),
                cell(&r["total"]["time_on_task_seconds"])
            )
        })
        .collect();
    format!(
        "{chart}<details><summary>Table view: engagement per minute</summary><table id=\"engagement-table\"><thead><tr><th scope=\"col\">Minute</th>\
         <th scope=\"col\">Active learners</th><th scope=\"col\">Time on task (s)</th>{head}</tr></thead><tbody>{body}</tbody></table></details>"
    )
}

fn time_on_task_table(t: &Value) -> String {
    let rows = cohort_rows(t, |c| {
        let q = &c["active_minutes_per_learner_day"];
        vec![&c["learners"], &q["p25"], &q["median"], &q["p75"]]
    });
    format!(
        "<table id=\"tot-table\"><caption>Active minutes per learner-day</caption><thead><tr><th scope=\"col\">Cohort</th><th scope=\"col\">Learners</th>\
         <th scope=\"col\">25th percentile</th><th scope=\"col\">Median</th><th scope=\"col\">75th percentile</th></tr></thead><tbody>{rows}</tbody></table>"
    )
}

fn replay_form(course: &str) -> String {
    format!(
        "<form method=\"get\" action=\"/console/courses/{}/replays\" class=\"stack\"><label for=\"content\">Video (content id)</label>\
         <input type=\"text\" id=\"content\" name=\"content\" required maxlength=\"128\"> <button type=\"submit\">Show replay hotspots</button></form>",
        enc(course)
    )
}

fn min_cell_note(v: &Value) -> String {
    match v["disclosure"]["thresholds"]["min_cell"].as_u64() {
        Some(m) => format!("<p class=\"hint\">Cells about fewer than {m} learners, and cells that would reveal them, are withheld: they show why, never a number.</p>"),
        None => String::new(),
    }
}

pub async fn dashboard(State(st): State<Console>, v: Viewer, Path(course): Path<String>, Query(q): Query<DashQuery>) -> Result<Response, Response> {
    let c = enc(&course);
    let range = range_qs(&q.from, &q.to);
    let minutes = q.minutes.unwrap_or(60);
    let mut body = String::new();
    if v.may(Permission::CohortRead) {
        // The three views at once (each authorised and released by the API).
        let uris = [
            format!("/v1/courses/{c}/funnel?{range}"),
            format!("/v1/courses/{c}/engagement?minutes={minutes}"),
            format!("/v1/courses/{c}/time-on-task?{range}"),
        ];
        let (f, e, t) =
            tokio::join!(get(&st.api, &v.principal, &uris[0]), get(&st.api, &v.principal, &uris[1]), get(&st.api, &v.principal, &uris[2]));
        for a in [&f, &e, &t] {
            html::answered(&v, a)?;
        }
        let live_src =
            format!("/console/courses/{c}/live?minutes={minutes}{}", if range.is_empty() { String::new() } else { format!("&{range}") });
        body += &format!(
            "<div id=\"live\" data-src=\"{}\" data-updates=\"0\"><p id=\"live-status\" role=\"status\" aria-live=\"polite\">Live view: connecting…</p></div>\
             {}<h2>Funnel <span class=\"hint\">({} to {})</span></h2>{}<h2>Engagement, last {minutes} minutes</h2>{}<h2>Time on task</h2>{}",
            esc(&live_src),
            min_cell_note(&f.body),
            text(&f.body["from"]),
            text(&f.body["to"]),
            funnel_table(&f.body),
            engagement_section(&e.body),
            time_on_task_table(&t.body),
        );
    }
    if v.may(Permission::ContentRead) {
        body += &format!("<h2>Replay hotspots</h2>{}", replay_form(&course));
    }
    Ok(html::page(&v, &format!("Course {course}"), &body))
}

#[derive(Deserialize)]
pub struct ReplayQuery {
    content: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

pub async fn replays(State(st): State<Console>, v: Viewer, Path(course): Path<String>, Query(q): Query<ReplayQuery>) -> Result<Response, Response> {
    let content = q.content.unwrap_or_default();
    let range = range_qs(&q.from, &q.to);
    let uri = format!("/v1/content/{}/replays?course_id={}&{range}", enc(&content), enc(&course));
    let a = get(&st.api, &v.principal, &uri).await;
    html::answered(&v, &a)?;
    let buckets = a.body["buckets"].as_array().cloned().unwrap_or_default();
    let positions: Vec<u64> = buckets.iter().map(|b| b["position_sec"].as_u64().unwrap_or(0)).collect();
    let replays: Vec<Option<f64>> = buckets.iter().map(|b| value(&b["replays"])).collect();
    let chart =
        charts::bars("replay-chart", "Replays per position in the video", &positions, &replays, "position in the video (m:ss)", "replays");
    let rows: String = buckets
        .iter()
        .map(|b| {
            let p = b["position_sec"].as_u64().unwrap_or(0);
            format!(
                "<tr><th scope=\"row\">{}:{:02}</th>{}{}{}</tr>",
                p / 60,
                p % 60,
                cell(&b["replays"]),
                cell(&b["pauses"]),
                cell(&b["learners"])
            )
        })
        .collect();
    let body = format!(
        "{}<p>Course {} · {} to {} · buckets of {} s</p>{chart}<details open><summary>Table view</summary><table id=\"replay-table\"><thead><tr>\
         <th scope=\"col\">Position</th><th scope=\"col\">Replays</th><th scope=\"col\">Pauses</th><th scope=\"col\">Learners</th></tr></thead>\
         <tbody>{rows}</tbody><tfoot><tr><th scope=\"row\">Total</th>{}{}<td></td></tr></tfoot></table></details>{}",
        min_cell_note(&a.body),
        esc(&course),
        text(&a.body["from"]),
        text(&a.body["to"]),
        text(&a.body["bucket_seconds"]),
        cell(&a.body["total"]["replays"]),
        cell(&a.body["total"]["pauses"]),
        replay_form(&course),
    );
    Ok(html::page(&v, &format!("Replay hotspots: {content}"), &body))
}
