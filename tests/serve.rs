//! The governed read path on the real services (PostgreSQL, chDB, Kafka for
//! the app's topics): cohorts of 3, 9, 10 and 40 learners; every released
//! number equals a computation from the base table; every response passes the
//! attacker's LP audit (no withheld cell narrower than the protection width,
//! even from totals); scope and drill-down refusals are audited.
mod common;

use common::TestApp;
use learnvault::serve::audit::audit;
use learnvault::serve::table::Table;
use learnvault::serve::{engagement, funnel, queries, replays, time_on_task};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

const COURSE: &str = "cs101";
const OTHER: &str = "cs999";
const COHORTS: [(&str, usize); 4] = [("c03", 3), ("c09", 9), ("c10", 10), ("c40", 40)];

fn num(v: &Value) -> f64 {
    v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or_else(|| panic!("not a number: {v}"))
}

fn event(learner: &str, course: &str, cohort: &str, kind: &str, at: chrono::DateTime<chrono::Utc>, position: Option<u32>) -> Value {
    let ts = at.format("%Y-%m-%d %H:%M:%S%.3f").to_string();
    json!({
        "server_ts": ts, "client_ts": ts, "event_id": uuid::Uuid::new_v4(), "event_version": "2.3", "event_type": kind,
        "learner_id": learner, "session_id": format!("s-{}", &learner[..8]), "course_id": course, "content_id": "video-1",
        "cohort_id": cohort, "institution_id": "uni-a", "position_sec": position, "props": {}
    })
}

/// One learner's events: `i` is their index in a cohort of `n`.
fn learner_events(learner: &str, course: &str, cohort: &str, i: usize, n: usize) -> Vec<Value> {
    let now = chrono::Utc::now();
    let at = |min: i64, sec: i64| now - chrono::Duration::minutes(min) - chrono::Duration::seconds(sec);
    let base = 3 + (i % 4) as i64; // minutes ago
    let mut out = vec![event(learner, course, cohort, "session.start", at(base, 50), None)];
    if i < n - n / 10 {
        out.push(event(learner, course, cohort, "content.start", at(base, 40), Some(0)));
    }
    if i < n * 6 / 10 {
        out.push(event(learner, course, cohort, "content.complete", at(base, 5), Some(300)));
    }
    if i < n * 3 / 10 {
        out.push(event(learner, course, cohort, "assess.submit", at(base, 2), None));
    }
    for h in 0..=(i % 5) {
        out.push(event(learner, course, cohort, "session.heartbeat", at(base, 30 - h as i64 * 5), Some(10 * h as u32)));
    }
    if i % 2 == 0 {
        out.push(event(learner, course, cohort, "interact.replay", at(base, 20), Some(95)));
    }
    if i % 3 == 0 {
        out.push(event(learner, course, cohort, "interact.pause", at(base, 19), Some(42)));
        out.push(event(learner, course, cohort, "interact.replay", at(base, 18), Some(12)));
    }
    out
}

struct Fixture {
    app: TestApp,
    /// A learner of cs101 (cohort c40) and one of cs999, with vault pseudonyms.
    in_course: String,
    in_other: String,
}

async fn fixture() -> Fixture {
    let app = TestApp::spawn_with_warehouse().await;
    let in_course = app.issue("uni-a", "ext-in-course", json!({"name": "Ada Lovelace", "email": "ada@example.edu"})).await;
    let in_other = app.issue("uni-a", "ext-in-other", json!({"name": "Alan Turing", "email": "alan@example.edu"})).await;
    let mut rows = Vec::new();
    for (cohort, n) in COHORTS {
        for i in 0..n {
            let learner = if cohort == "c40" && i == 0 { in_course.clone() } else { uuid::Uuid::new_v4().to_string() };
            rows.extend(learner_events(&learner, COURSE, cohort, i, n));
        }
    }
    for i in 0..12 {
        let learner = if i == 0 { in_other.clone() } else { uuid::Uuid::new_v4().to_string() };
        rows.extend(learner_events(&learner, OTHER, "x12", i, 12));
    }
    let mut data = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut data, &r).unwrap();
        data.push(b'\n');
    }
    app.warehouse().insert("events.learning_events", "JSONEachRow", data.into(), &[]).await.unwrap();
    Fixture { app, in_course, in_other }
}

fn token(app: &TestApp, sub: &str, roles: &[&str], institutions: &[&str], courses: &[&str]) -> String {
    let auth = learnvault::auth::Authenticator::from_settings(&app.settings, &app.master).unwrap();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    auth.mint_scoped(sub, &s(roles), &s(institutions), &s(courses), Duration::from_secs(600)).unwrap()
}

fn instructor(app: &TestApp) -> String {
    token(app, "instructor-1", &["instructor"], &["uni-a"], &[COURSE])
}

async fn base(app: &TestApp, sql: &str, params: &[(&str, String)]) -> Vec<Value> {
    app.warehouse().query(sql, params).await.unwrap()
}

fn range() -> String {
    let today = chrono::Utc::now().date_naive();
    format!("from={}&to={}", today - chrono::Duration::days(1), today)
}

/// The LP audit of one layer: passes, and every withheld cell's true value
/// lies inside its interval (the model is the table's real structure).
fn check_layer(what: &str, table: &Table, published: &[Option<f64>], truth: &[f64], width: f64) {
    let report = audit(table, published, width);
    assert!(report.ok(), "{what}: an attacker narrows a withheld cell below {width}: {:?}", report.violations);
    for iv in &report.intervals {
        let v = truth[iv.cell];
        assert!(v >= iv.lo - 1e-6 && iv.hi.is_none_or(|h| v <= h + 1e-6), "{what}: true value {v} of {} outside {iv:?}", iv.label);
    }
    for (i, p) in published.iter().enumerate() {
        if let Some(p) = p {
            assert!((p - truth[i]).abs() < 1e-6, "{what}: published {p} != base {} for {}", truth[i], table.cells[i].label);
        }
    }
}

fn width(resp: &Value) -> f64 {
    resp["disclosure"]["thresholds"]["protection_width"].as_f64().unwrap()
}

/// Every `{"value", "suppressed"}` cell of a response: withheld ones are null
/// with a reason; released counts of learners are at least `min_cell`.
fn cells<'a>(v: &'a Value, path: String, out: &mut Vec<(String, &'a Value)>) {
    match v {
        Value::Object(o) if o.contains_key("value") => out.push((path, v)),
        Value::Object(o) => o.iter().filter(|(k, _)| *k != "disclosure").for_each(|(k, x)| cells(x, format!("{path}.{k}"), out)),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| cells(x, format!("{path}[{i}]"), out)),
        _ => {}
    }
}

fn check_cells(resp: &Value, learner_counts: &[&str]) {
    let min_cell = resp["disclosure"]["thresholds"]["min_cell"].as_f64().unwrap();
    let mut out = Vec::new();
    cells(resp, String::new(), &mut out);
    assert!(!out.is_empty());
    for (path, c) in out {
        if c["value"].is_null() {
            assert!(c["suppressed"].is_string(), "{path}: withheld without a reason: {c}");
        } else {
            assert!(c.get("suppressed").is_none(), "{path}: {c}");
            if !path.contains("conversion") && learner_counts.iter().any(|f| path.ends_with(&format!(".{f}"))) {
                assert!(c["value"].as_f64().unwrap() >= min_cell, "{path}: a count below min_cell left: {c}");
            }
        }
    }
    assert_eq!(resp["disclosure"]["audit"]["passed"], true);
}

#[tokio::test]
async fn cohort_views_equal_the_base_table_and_pass_the_attackers_audit() {
    let f = fixture().await;
    let app = &f.app;
    let t = instructor(app);

    // Funnel.
    let (s, resp) = app.get(&format!("/v1/courses/{COURSE}/funnel?{}", range()), &t).await;
    assert_eq!(s, StatusCode::OK, "{resp}");
    check_cells(&resp, &["enrolled", "started", "completed", "assessed"]);
    let truth_rows = base(
        app,
        "SELECT cohort_id, uniqExact(learner_id) AS enrolled, uniqExactIf(learner_id, event_type = 'content.start') AS started,
                uniqExactIf(learner_id, event_type = 'content.complete') AS completed, uniqExactIf(learner_id, event_type = 'assess.submit') AS assessed
         FROM events.learning_events WHERE course_id = {c:String} GROUP BY cohort_id ORDER BY cohort_id",
        &[("c", COURSE.into())],
    )
    .await;
    let cohorts: Vec<&str> = resp["cohorts"].as_array().unwrap().iter().map(|c| c["cohort_id"].as_str().unwrap()).collect();
    assert_eq!(cohorts, ["c03", "c09", "c10", "c40"]);
    let mut truth: Vec<f64> = truth_rows.iter().flat_map(|r| funnel::MEASURES.map(|m| num(&r[m]))).collect();
    for m in 0..4 {
        truth.push((0..4).map(|k| truth[k * 4 + m]).sum());
    }
    assert_eq!(truth[..4], [3.0, 3.0, 1.0, 0.0], "fixture: cohort of 3");
    assert_eq!(truth[12..16], [40.0, 36.0, 24.0, 12.0], "fixture: cohort of 40");
    for k in 0..2 {
        for m in funnel::MEASURES {
            assert_eq!(resp["cohorts"][k][m]["value"], Value::Null, "small cohorts are withheld: {}", resp["cohorts"][k]);
        }
        assert_eq!(resp["cohorts"][k]["enrolled"]["suppressed"], "small_cell");
        assert_eq!(resp["cohorts"][k]["conversion"]["completed"]["value"], Value::Null);
    }
    assert_eq!(resp["cohorts"][3]["enrolled"]["value"], 40);
    assert_eq!(resp["total"]["enrolled"]["value"], 62, "the course total is released");
    let (table, published) = funnel::attacker_view(&resp).unwrap();
    check_layer("funnel", &table, &published, &truth, width(&resp));
    // Information loss: two cells beyond primary (c40's assessed 12, which the 0 + 2 + 3 withheld
    // beside it need; c10's enrolled 10, else started <= enrolled pins c10's started to 9-10).
    assert_eq!(resp["disclosure"]["complementary"], 2, "{}", resp["disclosure"]);
    assert_eq!(resp["cohorts"][3]["assessed"]["suppressed"], "complementary");
    assert_eq!(resp["cohorts"][2]["enrolled"]["suppressed"], "complementary");

    // Engagement.
    let (s, resp) = app.get(&format!("/v1/courses/{COURSE}/engagement?minutes=60"), &t).await;
    assert_eq!(s, StatusCode::OK, "{resp}");
    check_cells(&resp, &["active_learners"]);
    let from = resp["from"].as_str().unwrap().to_owned();
    let truth_rows = base(
        app,
        "SELECT toString(toStartOfMinute(toDateTime(server_ts, 'UTC'))) AS minute, cohort_id, uniqExact(learner_id) AS active,
                countIf(event_type = 'session.heartbeat') * 30 AS seconds
         FROM events.learning_events WHERE course_id = {c:String} AND server_ts >= toDateTime({f:String}, 'UTC')
         GROUP BY minute, cohort_id",
        &[("c", COURSE.into()), ("f", from)],
    )
    .await;
    let mut grid: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
    for r in &truth_rows {
        grid.insert((r["minute"].as_str().unwrap().into(), r["cohort_id"].as_str().unwrap().into()), (num(&r["active"]), num(&r["seconds"])));
    }
    let minutes: Vec<String> = resp["rows"].as_array().unwrap().iter().map(|r| r["minute"].as_str().unwrap().to_owned()).collect();
    assert_eq!(minutes.len(), grid.keys().map(|k| &k.0).collect::<std::collections::BTreeSet<_>>().len());
    let [(at, ap), (tt, tp)] = engagement::attacker_view(&resp).unwrap();
    for (layer, (table, published)) in [(0usize, (at, ap)), (1, (tt, tp))] {
        let mut truth: Vec<f64> = Vec::new();
        for m in &minutes {
            for c in ["c03", "c09", "c10", "c40"] {
                let v = grid.get(&(m.clone(), c.to_string())).copied().unwrap_or((0.0, 0.0));
                truth.push(if layer == 0 { v.0 } else { v.1 });
            }
        }
        for i in 0..minutes.len() {
            truth.push((0..4).map(|j| truth[i * 4 + j]).sum());
        }
        let w = if layer == 0 { width(&resp) } else { width(&resp) * engagement::HEARTBEAT_SECONDS };
        check_layer("engagement", &table, &published, &truth, w);
    }
    // The cohort of 3 never shows, in any minute.
    for r in resp["rows"].as_array().unwrap() {
        assert_eq!(r["cohorts"][0]["cohort_id"], "c03");
        assert_eq!(r["cohorts"][0]["active_learners"]["value"], Value::Null);
        assert_eq!(r["cohorts"][0]["time_on_task_seconds"]["value"], Value::Null);
    }

    // Time on task.
    let (s, resp) = app.get(&format!("/v1/courses/{COURSE}/time-on-task?{}", range()), &t).await;
    assert_eq!(s, StatusCode::OK, "{resp}");
    check_cells(&resp, &["learners"]);
    let truth_rows = base(
        app,
        "SELECT cohort_id, uniqExact(learner_id) AS learners, quantilesExact(0.25, 0.5, 0.75)(s / 60) AS q FROM
           (SELECT cohort_id, learner_id, event_date, countIf(event_type = 'session.heartbeat') * 30 AS s
            FROM events.learning_events WHERE course_id = {c:String} GROUP BY cohort_id, learner_id, event_date)
         GROUP BY cohort_id ORDER BY cohort_id",
        &[("c", COURSE.into())],
    )
    .await;
    let mut truth: Vec<f64> = truth_rows.iter().map(|r| num(&r["learners"])).collect();
    truth.push(truth.iter().sum());
    for (k, r) in truth_rows.iter().enumerate() {
        let released = &resp["cohorts"][k]["active_minutes_per_learner_day"];
        for (i, q) in ["p25", "median", "p75"].iter().enumerate() {
            match released[q]["value"].as_f64() {
                Some(v) => assert!((v - num(&r["q"][i])).abs() < 1e-3, "{q} of {}: {v} vs {}", r["cohort_id"], r["q"]),
                None => assert!(num(&r["learners"]) < 10.0, "only small groups lose their quartiles: {released}"),
            }
        }
    }
    assert_eq!(resp["cohorts"][0]["active_minutes_per_learner_day"]["median"]["suppressed"], "small_group", "a median of 3 is one learner's value");
    assert!(resp["cohorts"][3]["active_minutes_per_learner_day"]["median"]["value"].is_number());
    let (table, published) = time_on_task::attacker_view(&resp).unwrap();
    check_layer("time-on-task", &table, &published, &truth, width(&resp));

    // Replays (content author of the course).
    let author = token(app, "author-1", &["content_author"], &["uni-a"], &[COURSE]);
    let (s, resp) = app.get(&format!("/v1/content/video-1/replays?course_id={COURSE}&{}", range()), &author).await;
    assert_eq!(s, StatusCode::OK, "{resp}");
    check_cells(&resp, &["learners"]);
    let truth_rows = base(
        app,
        "SELECT intDiv(assumeNotNull(position_sec), 10) * 10 AS b, countIf(event_type = 'interact.replay') AS replays,
                countIf(event_type = 'interact.pause') AS pauses, uniqExact(learner_id) AS learners
         FROM events.learning_events WHERE course_id = {c:String} AND content_id = 'video-1'
           AND event_type IN ('interact.replay', 'interact.pause', 'interact.speed_change') AND position_sec IS NOT NULL
         GROUP BY b ORDER BY b",
        &[("c", COURSE.into())],
    )
    .await;
    let buckets: Vec<u64> = resp["buckets"].as_array().unwrap().iter().map(|b| b["position_sec"].as_u64().unwrap()).collect();
    assert_eq!(buckets, truth_rows.iter().map(|r| num(&r["b"]) as u64).collect::<Vec<_>>());
    for (k, r) in truth_rows.iter().enumerate() {
        if let Some(l) = resp["buckets"][k]["learners"]["value"].as_f64() {
            assert_eq!(l, num(&r["learners"]));
        }
    }
    let [rep, pau] = replays::attacker_view(&resp).unwrap();
    for (what, (table, published)) in [("replays", rep), ("pauses", pau)] {
        let mut truth: Vec<f64> = truth_rows.iter().map(|r| num(&r[what])).collect();
        truth.push(truth.iter().sum());
        check_layer(what, &table, &published, &truth, width(&resp));
    }
}

#[tokio::test]
async fn scope_is_the_course_and_refusals_are_audited() {
    let f = fixture().await;
    let app = &f.app;
    let url = format!("/v1/courses/{COURSE}/funnel?{}", range());
    let cases: [(&str, String, &str); 5] = [
        ("other course", token(app, "i-2", &["instructor"], &["uni-a"], &[OTHER]), "course_not_in_scope"),
        ("no courses claim", token(app, "i-3", &["instructor"], &["uni-a"], &[]), "course_not_in_scope"),
        ("other institution", token(app, "i-4", &["instructor"], &["uni-b"], &[COURSE]), "institution_not_allowed"),
        ("content author", token(app, "a-1", &["content_author"], &["uni-a"], &[COURSE]), "role_lacks_permission"),
        ("dpo", app.dpo("uni-a"), "role_lacks_permission"),
    ];
    for (what, t, reason) in cases {
        let before = app.denials(reason).await;
        let (s, v) = app.get(&url, &t).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{what}: {v}");
        assert_eq!(app.denials(reason).await, before + 1, "{what}: refusal audited as {reason}");
    }
    let t = instructor(app);
    assert_eq!(app.get(&format!("/v1/courses/{OTHER}/engagement"), &t).await.0, StatusCode::FORBIDDEN);
    assert_eq!(app.get(&format!("/v1/courses/{COURSE}/engagement?minutes=0"), &t).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(app.get("/v1/content/video-1/replays", &t).await.0, StatusCode::BAD_REQUEST);
    let nowhere = token(app, "i-5", &["instructor"], &["uni-a"], &["nowhere"]);
    assert_eq!(app.get("/v1/courses/nowhere/funnel", &nowhere).await.0, StatusCode::NOT_FOUND);
    assert_eq!(app.get(&url, &t).await.0, StatusCode::OK);
}

#[tokio::test]
async fn drilldown_is_role_purpose_and_scope_gated_audited_and_rate_limited() {
    let f = fixture().await;
    let app = &f.app;
    let advisor = token(app, "advisor-1", &["advisor"], &["uni-a"], &[COURSE]);
    let url = |p: &str| format!("/v1/learners/{p}/activity");
    let ok_body = json!({"course_id": COURSE, "purpose": "learner_support", "justification": "missed three sessions; advisor follow-up"});

    // Refusals, each audited.
    let refusals: [(&str, &str, Value, StatusCode, &str); 6] = [
        ("no purpose", &f.in_course, json!({"course_id": COURSE, "justification": "x"}), StatusCode::BAD_REQUEST, "purpose_required"),
        ("undeclared purpose", &f.in_course, json!({"course_id": COURSE, "purpose": "marketing", "justification": "x"}), StatusCode::BAD_REQUEST, "undeclared_purpose"),
        ("no justification", &f.in_course, json!({"course_id": COURSE, "purpose": "learner_support"}), StatusCode::BAD_REQUEST, "justification_required"),
        ("learner of another course", &f.in_other, ok_body.clone(), StatusCode::FORBIDDEN, "learner_not_in_course"),
        ("course outside the token", &f.in_other, json!({"course_id": OTHER, "purpose": "learner_support", "justification": "x"}), StatusCode::FORBIDDEN, "course_not_in_scope"),
        ("unknown learner", &uuid::Uuid::new_v4().to_string(), ok_body.clone(), StatusCode::NOT_FOUND, "unknown_pseudonym"),
    ];
    let mut admitted = 0;
    for (what, p, body, status, reason) in refusals {
        let (s, v) = app.post(&url(p), &advisor, body).await;
        assert_eq!(s, status, "{what}: {v}");
        assert_eq!(v["error"]["code"], if reason == "course_not_in_scope" { "forbidden" } else { reason }, "{what}: {v}");
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'learner.drilldown' AND outcome = 'denied' AND detail->>'reason' = $1")
            .bind(reason)
            .fetch_one(&app.admin)
            .await
            .unwrap();
        assert_eq!(n, 1, "{what}: refusal audited");
        if matches!(reason, "learner_not_in_course" | "unknown_pseudonym") {
            admitted += 1; // past the rate limiter
        }
    }
    // An instructor may not drill down.
    let (s, _) = app.post(&url(&f.in_course), &instructor(app), ok_body.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // The individual view: the pseudonymous timeline, equal to the base table, no identity.
    let (s, v) = app.post(&url(&f.in_course), &advisor, ok_body.clone()).await;
    admitted += 1;
    assert_eq!(s, StatusCode::OK, "{v}");
    let expected = base(app, "SELECT count() AS n FROM events.learning_events WHERE learner_id = {p:UUID} AND course_id = {c:String}", &[("p", f.in_course.clone()), ("c", COURSE.into())]).await;
    assert_eq!(v["events"].as_array().unwrap().len() as f64, num(&expected[0]["n"]));
    assert_eq!(v["pseudonym"], f.in_course.as_str());
    let text = v.to_string();
    for identity in ["Ada", "Lovelace", "ada@example.edu", "ext-in-course"] {
        assert!(!text.contains(identity), "an identity left in a drill-down: {identity}");
    }

    // The auditor sees it, with purpose and justification.
    let (s, log) = app.get("/v1/audit?action=learner.drilldown&outcome=success", &app.auditor()).await;
    assert_eq!(s, StatusCode::OK, "{log}");
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{log}");
    assert_eq!(entries[0]["purpose"], "learner_support");
    assert_eq!(entries[0]["justification"], "missed three sessions; advisor follow-up");
    assert_eq!(entries[0]["actor"], "advisor-1");
    assert_eq!(entries[0]["target_pseudonym"], f.in_course.as_str(), "{}", entries[0]);

    // The rate limit (policies/disclosure.yaml: 10 per hour): refused past it, audited.
    let max = 10;
    while admitted < max {
        let (s, v) = app.post(&url(&f.in_course), &advisor, ok_body.clone()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        admitted += 1;
    }
    let (s, v) = app.post(&url(&f.in_course), &advisor, ok_body.clone()).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(app.denials("rate_limited").await, 1);
    // Another advisor has their own budget.
    let other = token(app, "advisor-2", &["advisor"], &["uni-a"], &[COURSE]);
    assert_eq!(app.post(&url(&f.in_course), &other, ok_body).await.0, StatusCode::OK);
}

/// Cohort views read rollups only: every shape except the individual view is
/// parsed and must read `agg.*` tables and nothing else.
#[test]
fn cohort_views_never_read_the_base_table() {
    use sqlparser::ast::visit_relations;
    use sqlparser::dialect::ClickHouseDialect;
    use sqlparser::parser::Parser;
    let mut individual = 0;
    for shape in queries::SHAPES {
        // Parameters `{name:Type}` become literals for the parser.
        let mut sql = String::new();
        let mut rest = shape.sql;
        while let Some(i) = rest.find('{') {
            let j = rest[i..].find('}').expect("closed parameter") + i;
            sql.push_str(&rest[..i]);
            sql.push_str("'p'");
            rest = &rest[j + 1..];
        }
        sql.push_str(rest);
        let stmts = Parser::parse_sql(&ClickHouseDialect {}, &sql).unwrap_or_else(|e| panic!("{}: {e}", shape.name));
        let mut tables = Vec::new();
        let _ = visit_relations(&stmts, |r| {
            tables.push(r.to_string());
            std::ops::ControlFlow::<()>::Continue(())
        });
        assert!(!tables.is_empty(), "{}: reads nothing?", shape.name);
        // One learner's reads (and only they) take the engine's interactive connection.
        assert_eq!(
            shape.interactive,
            ["learner_in_course", "learner_timeline", "learner_features"].contains(&shape.name),
            "{}: interactive lane",
            shape.name
        );
        if shape.individual {
            individual += 1;
            assert!(["learner_timeline", "learner_features"].contains(&shape.name), "{}: only the individual views are exempt", shape.name);
            if shape.name == "learner_features" {
                assert_eq!(tables, ["features.learner_engagement"], "features come from the feature view");
            }
            continue;
        }
        for t in tables {
            assert!(t.starts_with("agg."), "{} reads {t}: cohort views read rollups only", shape.name);
        }
    }
    assert_eq!(individual, 2);
}

/// `learnvault disclosure audit` over the rollups of an engine holding the
/// fixture: every release audited, none fails, the information loss printed.
#[tokio::test]
async fn disclosure_audit_cli_audits_every_release_of_the_live_rollups() {
    let dir = std::env::temp_dir().join(format!("lv-disc-{}", uuid::Uuid::new_v4().simple()));
    let url = format!("chdb://{}", dir.display());
    let settings = learnvault::config::Settings { warehouse: learnvault::config::WarehouseSettings { url: url.clone(), ..Default::default() }, ..Default::default() };
    let wh = learnvault::warehouse::Warehouse::open(&settings).expect("embedded engine");
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/clickhouse");
    learnvault::warehouse::migrate::run(&wh, &migrations).await.unwrap();
    let mut data = Vec::new();
    for (cohort, n) in COHORTS {
        for i in 0..n {
            for r in learner_events(&uuid::Uuid::new_v4().to_string(), COURSE, cohort, i, n) {
                serde_json::to_writer(&mut data, &r).unwrap();
                data.push(b'\n');
            }
        }
    }
    wh.insert("events.learning_events", "JSONEachRow", data.into(), &[]).await.unwrap();
    wh.close();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_learnvault"))
        .args(["disclosure", "audit"])
        .env("LEARNVAULT_CLICKHOUSE_URL", &url)
        .env("LEARNVAULT_POLICY_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("ok   cs101 funnel [funnel]: 13 withheld"), "{text}");
    assert!(text.contains("4 releases"), "funnel, engagement, time on task, replays of video-1: {text}");
    assert!(text.contains(", 0 violations"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Reads Server-Sent Events from a streaming response.
struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let mut event = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event:") {
                        event = e.trim().to_owned();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                return (event, serde_json::from_str(&data).unwrap_or(Value::String(data)));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.resp.chunk()).await.expect("a live message in time").unwrap().expect("stream open");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let (e, v) = self.next().await;
            assert_ne!(e, "error", "{v}");
            if e == kind {
                return v;
            }
        }
    }
}

#[tokio::test]
async fn live_view_keeps_withheld_cells_withheld_bands_counts_and_audits_each_difference() {
    use learnvault::serve::live::{diff_audit, message_audit};
    use learnvault::serve::View;
    let f = fixture().await;
    let app = &f.app;
    let t = instructor(app);
    let outsider = token(app, "i-9", &["instructor"], &["uni-a"], &[OTHER]);
    assert_eq!(app.get(&format!("/v1/courses/{COURSE}/live"), &outsider).await.0, StatusCode::FORBIDDEN);
    let resp = app.client.get(format!("{}/v1/courses/{COURSE}/live?minutes=60&interval_ms=200&{}", app.base, range())).bearer_auth(&t).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut sse = Sse { resp, buf: String::new() };
    let band = 20;
    let first = sse.next_of("funnel").await;
    let w = width(&first);
    assert!(message_audit(View::Funnel, &first, band, w).unwrap().iter().all(|(_, r)| r.ok()));
    assert_eq!(first["cohorts"][1]["cohort_id"], "c09");
    assert_eq!(first["cohorts"][1]["enrolled"]["value"], Value::Null);
    assert_eq!(first["cohorts"][3]["enrolled"], json!({"value": 40, "band": 20}), "40 learners: the band 40-59");
    assert_eq!(first["total"]["enrolled"], json!({"value": 60, "band": 20}), "62 learners: the band 60-79");
    let engagement = sse.next_of("engagement").await;
    assert!(message_audit(View::Engagement, &engagement, band, w).unwrap().iter().all(|(_, r)| r.ok()));

    // The cohort of 9 grows to 11, the cohort of 40 by twenty.
    let mut data = Vec::new();
    let mut rows = learner_events(&uuid::Uuid::new_v4().to_string(), COURSE, "c09", 9, 11);
    rows.extend(learner_events(&uuid::Uuid::new_v4().to_string(), COURSE, "c09", 10, 11));
    for i in 40..60 {
        rows.extend(learner_events(&uuid::Uuid::new_v4().to_string(), COURSE, "c40", i, 60));
    }
    for r in rows {
        serde_json::to_writer(&mut data, &r).unwrap();
        data.push(b'\n');
    }
    app.warehouse().insert("events.learning_events", "JSONEachRow", data.into(), &[]).await.unwrap();
    let second = loop {
        let v = sse.next_of("funnel").await;
        if v["total"]["enrolled"]["value"] != first["total"]["enrolled"]["value"] {
            break v;
        }
    };
    assert_eq!(second["total"]["enrolled"], json!({"value": 80, "band": 20}), "84 learners");
    // A fresh funnel shows the cohort of 11 (no longer small; the cohort of 10 protects the 3) ...
    let (_, fresh) = app.get(&format!("/v1/courses/{COURSE}/funnel?{}", range()), &t).await;
    assert_eq!(fresh["cohorts"][1]["enrolled"]["value"], 11, "{}", fresh["cohorts"][1]);
    // ... the stream never does: withheld once, withheld for the stream.
    assert_eq!(second["cohorts"][1]["enrolled"]["value"], Value::Null);
    assert_eq!(second["cohorts"][1]["enrolled"]["suppressed"], "sticky", "{}", second["cohorts"][1]);
    for k in 0..4 {
        for m in funnel::MEASURES {
            if first["cohorts"][k][m]["value"].is_null() {
                assert!(second["cohorts"][k][m]["value"].is_null(), "cohort {k} {m} reappeared: {}", second["cohorts"][k]);
            }
        }
    }
    // Each message and the difference of the two pass the attacker's audit.
    assert!(message_audit(View::Funnel, &second, band, w).unwrap().iter().all(|(_, r)| r.ok()));
    for (layer, report, _) in diff_audit(View::Funnel, &first, &second, band, w).unwrap() {
        assert!(report.ok(), "{layer}: the difference narrows a withheld cell: {:?}", report.violations);
        assert!(!report.intervals.is_empty());
    }
}

/// A live stream refreshes when rows land, not only on its interval: with an interval of a
/// minute, the lander's landing (its insert, then `warehouse::rows_landed`, as
/// `lander::service` does) reaches the stream long before the interval would.
#[tokio::test]
async fn a_live_stream_refreshes_when_rows_land_not_only_on_its_interval() {
    let f = fixture().await;
    let app = &f.app;
    let t = instructor(app);
    let resp = app.client.get(format!("{}/v1/courses/{COURSE}/live?minutes=60&interval_ms=60000&{}", app.base, range())).bearer_auth(&t).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut sse = Sse { resp, buf: String::new() };
    let first = sse.next_of("funnel").await;
    let mut data = Vec::new();
    for i in 40..60 {
        for r in learner_events(&uuid::Uuid::new_v4().to_string(), COURSE, "c40", i, 60) {
            serde_json::to_writer(&mut data, &r).unwrap();
            data.push(b'\n');
        }
    }
    app.warehouse().insert("events.learning_events", "JSONEachRow", data.into(), &[]).await.unwrap();
    learnvault::warehouse::rows_landed();
    let second = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let v = sse.next_of("funnel").await;
            if v["total"]["enrolled"]["value"] != first["total"]["enrolled"]["value"] {
                break v;
            }
        }
    })
    .await
    .expect("the stream showed the landed rows within 30 s although its interval is 60 s");
    assert_eq!(second["total"]["enrolled"], json!({"value": 80, "band": 20}), "82 learners");
}

/// Every read-path route is in the OpenAPI document with every status it can answer.
#[test]
fn the_openapi_document_lists_the_read_path_and_its_statuses() {
    let doc = learnvault::api::openapi_document();
    let cohort = ["200", "400", "401", "403", "404", "500", "503"];
    let routes: [(&str, &str, &[&str]); 6] = [
        ("/v1/courses/{course_id}/funnel", "get", &cohort),
        ("/v1/courses/{course_id}/engagement", "get", &cohort),
        ("/v1/courses/{course_id}/time-on-task", "get", &cohort),
        ("/v1/content/{content_id}/replays", "get", &cohort),
        ("/v1/courses/{course_id}/live", "get", &["200", "400", "401", "403", "404", "503"]),
        ("/v1/learners/{pseudonym}/activity", "post", &["200", "400", "401", "403", "404", "410", "413", "415", "429", "503"]),
    ];
    for (path, method, statuses) in routes {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} missing from the OpenAPI document");
        for s in statuses {
            assert!(op["responses"][s].is_object(), "{method} {path}: status {s} not documented");
        }
    }
    // Each view's 200 names its own body: the funnel's total has the steps' conversion, time
    // on task's its statistics (two views sharing `RangeView<T>` must not share one schema).
    let total = |path: &str| {
        let r = doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].as_str().unwrap_or_default();
        doc["components"]["schemas"][r.rsplit('/').next().unwrap()]["properties"]["total"].to_string()
    };
    let (funnel, time) = (total("/v1/courses/{course_id}/funnel"), total("/v1/courses/{course_id}/time-on-task"));
    assert!(funnel.contains("\"conversion\"") && !funnel.contains("active_minutes_per_learner_day"), "{funnel}");
    assert!(time.contains("\"active_minutes_per_learner_day\"") && !time.contains("conversion"), "{time}");
}

/// The released tables for BI tools: every view as the API releases it; no
/// released count of learners below `min_cell`.
#[tokio::test]
async fn released_tables_hold_no_cell_below_min_cell() {
    let f = fixture().await;
    let app = &f.app;
    let serve = app.state.serve.clone().expect("the read path");
    let p = serve.publish(60).await.unwrap();
    assert_eq!(p.courses, 2, "cs101 and cs999");
    let rows = base(app, "SELECT view, course_id, row_key, metric, value, suppressed FROM released.cells", &[]).await;
    assert_eq!(rows.len(), p.cells);
    let counts = ["enrolled", "started", "completed", "assessed", "learners", "active_learners"];
    let mut withheld = 0;
    for r in &rows {
        let metric = r["metric"].as_str().unwrap();
        match r["value"].as_f64() {
            Some(v) if counts.contains(&metric) => assert!(v >= 10.0, "a released count below min_cell: {r}"),
            Some(_) => assert_eq!(r["suppressed"], "", "{r}"),
            None => {
                withheld += 1;
                assert_ne!(r["suppressed"], "", "withheld without a reason: {r}");
            }
        }
    }
    assert_eq!(withheld, p.withheld);
    let cell = |view: &str, row: &str, metric: &str| {
        rows.iter().find(|r| r["view"] == view && r["course_id"] == COURSE && r["row_key"] == row && r["metric"] == metric).cloned().unwrap_or_else(|| panic!("{view} {row} {metric}"))
    };
    assert_eq!(cell("funnel", "c03", "enrolled")["suppressed"], "small_cell");
    assert_eq!(cell("funnel", "c40", "enrolled")["value"], 40.0);
    assert_eq!(cell("funnel", "total", "enrolled")["value"], 62.0);
    assert_eq!(cell("time_on_task", "c03", "active_minutes_per_learner_day.median")["suppressed"], "small_group");
    // A second refresh replaces the first (swapped in whole).
    let again = serve.publish(60).await.unwrap();
    assert_eq!(num(&base(app, "SELECT count() AS n FROM released.cells", &[]).await[0]["n"]) as usize, again.cells);
}
