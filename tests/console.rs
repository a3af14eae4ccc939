//! The console in a real browser (Debian's headless Chromium through
//! chromedriver, tests/common/browser.rs) against the real services: each role
//! signs in with a one-time link and does its main task end to end; every
//! page passes axe-core (no serious or critical violation); a withheld cell's
//! number is in neither the DOM nor any response the page received; CSRF-less
//! posts and missing sessions are refused. Screenshots per step under
//! `target/test-output/console/<test>/`.
mod common;

use common::browser::{self, Browser};
use common::TestApp;
use learnvault::auth::session::SessionClaims;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const COURSE: &str = "cs101";

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// A one-time sign-in link as `learnvault console login` prints it, for this app.
async fn link(app: &TestApp, sub: &str, roles: &[&str], institutions: &[&str], courses: &[&str]) -> String {
    let mut config = (*app.state.console).clone();
    config.base_url = app.base.clone();
    let claims = SessionClaims { sub: sub.into(), roles: s(roles), institutions: s(institutions), courses: s(courses) };
    learnvault::console::login_link(&app.state.pool, &config, &claims).await.unwrap()
}

fn browser_ready() {
    if let Some(why) = browser::unavailable() {
        panic!("the browser tests need headless Chromium: {why}");
    }
}

/// An app with a warehouse for a browser test, and the axe-core source to audit its pages.
async fn browser_app() -> (TestApp, String) {
    browser_ready();
    (TestApp::spawn_with_warehouse().await, browser::axe_source())
}

async fn sign_in(b: &mut Browser, link: &str, who: &str) {
    b.goto(link).await;
    b.wait_text("#who", who, Duration::from_secs(20)).await;
    b.shot("signed-in").await;
    let cookies = b.cookies().await;
    let c = cookies.iter().find(|c| c["name"] == "lv_console").expect("the session cookie");
    assert_eq!((c["httpOnly"].as_bool(), c["sameSite"].as_str()), (Some(true), Some("Strict")), "{c}");
    assert!(!link.is_empty() && !b.source().await.contains(link.rsplit('=').next().unwrap()), "the code is not echoed");
}

/// A browser (named for its first role) signed in as `sub` with `roles` over `institutions` and `courses`.
async fn signed_in(app: &TestApp, sub: &str, roles: &[&str], institutions: &[&str], courses: &[&str]) -> Browser {
    let mut b = Browser::start(roles[0]).await;
    sign_in(&mut b, &link(app, sub, roles, institutions, courses).await, sub).await;
    b
}

async fn accessible(b: &Browser, axe: &str, page: &str) {
    let v = b.axe(axe).await;
    assert!(v.is_empty(), "{page}: serious or critical accessibility violations: {v:#?}");
}

fn ms_now() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()
}

fn event(learner: &str, cohort: &str, kind: &str, at: chrono::DateTime<chrono::Utc>, position: Option<u32>) -> Value {
    let ts = at.format("%Y-%m-%d %H:%M:%S%.3f").to_string();
    json!({
        "server_ts": ts, "client_ts": ts, "event_id": uuid::Uuid::new_v4(), "event_version": "2.3", "event_type": kind,
        "learner_id": learner, "session_id": format!("s-{}", &learner[..8]), "course_id": COURSE, "content_id": "video-1",
        "cohort_id": cohort, "institution_id": "uni-a", "position_sec": position, "props": {}
    })
}

/// `n` learners of `cohort` active a few minutes ago (start, heartbeats, replays around 1:35).
fn cohort_events(cohort: &str, n: usize, minutes_ago: i64) -> Vec<Value> {
    let now = chrono::Utc::now();
    let mut out = Vec::new();
    for i in 0..n {
        let l = uuid::Uuid::new_v4().to_string();
        let at = |sec: i64| now - chrono::Duration::minutes(minutes_ago + (i % 3) as i64) - chrono::Duration::seconds(sec);
        out.push(event(&l, cohort, "session.start", at(50), None));
        out.push(event(&l, cohort, "content.start", at(45), Some(0)));
        for h in 0..3 {
            out.push(event(&l, cohort, "session.heartbeat", at(40 - h * 10), Some(30 * h as u32)));
        }
        if i % 2 == 0 {
            out.push(event(&l, cohort, "interact.replay", at(20), Some(95)));
        }
        if i % 3 == 0 {
            out.push(event(&l, cohort, "content.complete", at(10), Some(300)));
        }
    }
    out
}

async fn land(app: &TestApp, rows: Vec<Value>) {
    let mut data = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut data, &r).unwrap();
        data.push(b'\n');
    }
    app.warehouse().insert("events.learning_events", "JSONEachRow", Arc::new(data), &[]).await.unwrap();
}

/// Every withheld cell of released JSON is null with a reason.
fn withheld_are_null(v: &Value, path: &str) {
    match v {
        Value::Object(o) => {
            if o.contains_key("suppressed") {
                assert!(o["value"].is_null(), "{path}: a withheld cell carries a value: {v}");
            }
            for (k, x) in o {
                withheld_are_null(x, &format!("{path}.{k}"));
            }
        }
        Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| withheld_are_null(x, &format!("{path}[{i}]"))),
        _ => {}
    }
}

/// The `<td class="withheld" ...>...</td>` cells of an HTML text.
fn withheld_cells(html: &str) -> Vec<&str> {
    html.match_indices("<td class=\"withheld\"").map(|(i, _)| &html[i..i + html[i..].find("</td>").unwrap()]).collect()
}

/// The row of `cohort` in the funnel table of an HTML text.
fn funnel_row<'a>(html: &'a str, cohort: &str) -> Option<&'a str> {
    let table = &html[html.find("id=\"funnel-table\"")?..];
    let i = table.find(&format!("<th scope=\"row\">{cohort}</th>"))?;
    Some(&table[i..i + table[i..].find("</tr>")?])
}

#[tokio::test]
async fn instructor_watches_a_cohort_move_and_withheld_cells_never_reach_the_browser() {
    let (app, axe) = browser_app().await;
    // Cohorts of 40 and 25 learners, and a small one of 4 (withheld: min_cell 10).
    let mut rows = cohort_events("c-large", 40, 3);
    rows.extend(cohort_events("c-mid", 25, 3));
    rows.extend(cohort_events("c-small", 4, 3));
    land(&app, rows).await;

    let mut b = signed_in(&app, "instructor-1", &["instructor"], &["uni-a"], &[COURSE]).await;
    assert!(b.find("a[href='/console/dsr']").await.is_none(), "an instructor is not offered subject requests");
    assert!(b.find("a[href='/console/audit']").await.is_none(), "nor the audit log");
    let t0 = Instant::now();
    b.goto(&format!("{}/console/courses/{COURSE}", app.base)).await;
    let paint = t0.elapsed();
    b.wait_text("#funnel-table", "c-large", Duration::from_secs(10)).await;
    let t = Instant::now();
    while b.attr("#live", "data-updates").await.unwrap_or_default() == "0" {
        assert!(t.elapsed() < Duration::from_secs(20), "the live view never updated");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("instructor dashboard: page loaded (navigation returned) in {} ms", paint.as_millis());
    b.shot("dashboard").await;
    let row = b.text("#funnel-table tbody tr:nth-child(3)").await;
    assert!(row.starts_with("c-small") && row.matches("withheld").count() == 4, "the small cohort is withheld: {row}");
    assert!(!row.chars().any(|c| c.is_ascii_digit()), "no number in the small cohort's row: {row}");
    assert!(b.find("#engagement-chart path").await.is_some(), "the engagement chart is drawn");
    accessible(&b, &axe, "dashboard").await;
    let before = b.attr("#live", "data-funnel-total").await.unwrap();

    // Twenty more learners land: the chart and the funnel move without a reload.
    land(&app, cohort_events("c-large", 20, 0)).await;
    let landed = ms_now();
    let t = Instant::now();
    let after = loop {
        let now = b.attr("#live", "data-funnel-total").await.unwrap();
        if now != before {
            break now;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "the live funnel never moved from {before}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let updated: u128 = b.attr("#live", "data-last-funnel").await.unwrap().parse().unwrap();
    println!("live chart: updated {} ms after the events landed (funnel total {before} -> {after})", updated.saturating_sub(landed));
    assert_eq!(serde_json::from_str::<Value>(&after).unwrap(), json!({"value": 80, "band": 20}), "89 learners: the band 80-99");
    b.shot("dashboard-after-landing").await;

    // The replay hotspots of the video, position on the x axis, with a table view.
    b.type_into("#content", "video-1").await;
    b.click("form[action$='/replays'] button").await;
    b.wait_text("#replay-table", "1:30", Duration::from_secs(10)).await;
    assert!(b.find("#replay-chart rect").await.is_some());
    b.shot("replays").await;
    accessible(&b, &axe, "replays").await;

    // Nothing the browser received holds a withheld number.
    let received = b.received().await;
    assert!(received.iter().any(|(k, _)| k.starts_with("sse:")), "the SSE messages are in the log");
    let mut checked = 0;
    for (what, body) in &received {
        assert!(
            !body.contains("complementary_value") && !body.contains("information_loss"),
            "{what}: a disclosure summary reached the browser"
        );
        if what.starts_with("sse:") {
            let v: Value = serde_json::from_str(body).unwrap();
            withheld_are_null(&v, what);
            if let Some(c) = v["cohorts"].as_array().and_then(|c| c.iter().find(|c| c["cohort_id"] == "c-small")) {
                assert!(c["enrolled"]["value"].is_null(), "{what}: {c}");
            }
            checked += 1;
        }
        for cell in withheld_cells(body) {
            let inner = &cell[cell.find('>').unwrap()..];
            assert!(!inner.chars().any(|c| c.is_ascii_digit()), "{what}: a withheld cell shows a number: {cell}");
        }
        if let Some(r) = funnel_row(body, "c-small") {
            assert!(!r.contains('4'), "{what}: the small cohort's size: {r}");
            checked += 1;
        }
    }
    assert!(checked >= 2, "checked {checked} responses");
    let dom = b.source().await;
    for cell in withheld_cells(&dom) {
        assert!(!cell[cell.find('>').unwrap()..].chars().any(|c| c.is_ascii_digit()), "DOM: {cell}");
    }
    b.quit().await;
}

#[tokio::test]
async fn dpo_files_an_erasure_and_downloads_its_verified_certificate() {
    let (app, axe) = browser_app().await;
    let pseudonym = app.issue("uni-a", "stu-42", json!({"name": "Grace Hopper", "email": "grace@example.edu"})).await;
    land(&app, vec![event(&pseudonym, "c-1", "session.start", chrono::Utc::now(), None)]).await;

    let mut b = signed_in(&app, "dpo-1", &["dpo"], &["uni-a"], &[]).await;
    b.goto(&format!("{}/console/dsr", app.base)).await;
    b.wait_text("main", "New request", Duration::from_secs(10)).await;
    accessible(&b, &axe, "request queue").await;
    b.shot("queue-empty").await;
    b.select("#kind", "erasure").await;
    b.type_into("#institution", "uni-a").await;
    b.type_into("#external_id", "stu-42").await;
    b.type_into("#reference", "CASE-2026-7").await;
    b.shot("erasure-form").await;
    b.click("#new-request button").await;
    b.wait_text("#job", "erasure", Duration::from_secs(10)).await;
    b.shot("job-running").await;
    let status = b.wait_text("#signature-status", "Signature verified", Duration::from_secs(120)).await;
    assert!(status.contains("Ed25519"), "{status}");
    assert_eq!(b.text("#job-state").await, "done");
    b.shot("certificate").await;
    accessible(&b, &axe, "job with certificate").await;
    assert!(!b.source().await.contains("Grace") && !b.source().await.contains("stu-42"), "no identity on the page");

    // Download the certificate as the page offers it; it verifies offline with the published key.
    let href = b.attr("#certificate-download", "href").await.unwrap();
    let cert = b
        .js_async(
            "const done = arguments[arguments.length - 1]; fetch(arguments[0]).then(r => r.json()).then(done).catch(e => done(String(e)));",
            json!([href]),
        )
        .await;
    let (_, key) = app.send("GET", "/v1/dsr/certificate-key", None, None).await;
    let body =
        learnvault::dsr::certificate::verify(&cert, key["public_key"].as_str().unwrap()).expect("the downloaded certificate verifies");
    assert_eq!(body["subject"]["pseudonym"].as_str(), Some(pseudonym.as_str()), "{body}");
    assert_eq!(body["reference"], "CASE-2026-7");

    // The queue shows it done; the suppression list holds the erased pseudonym.
    b.goto(&format!("{}/console/dsr", app.base)).await;
    b.wait_text("#dsr-queue", "done", Duration::from_secs(10)).await;
    b.shot("queue-done").await;
    b.goto(&format!("{}/console/dsr/suppressions", app.base)).await;
    b.wait_text("main", &pseudonym, Duration::from_secs(10)).await;
    accessible(&b, &axe, "suppression list").await;
    b.shot("suppressions").await;

    // A subject-access request: followed to done, its archive downloaded from the page (a tar with its manifest).
    let other = app.issue("uni-a", "stu-43", json!({"name": "Mary Jackson"})).await;
    land(&app, vec![event(&other, "c-1", "session.start", chrono::Utc::now(), None)]).await;
    b.goto(&format!("{}/console/dsr", app.base)).await;
    b.select("#kind", "access").await;
    b.type_into("#pseudonym", &other).await;
    b.click("#new-request button").await;
    b.wait_text("#job", "access", Duration::from_secs(10)).await;
    b.wait_text("#job-state", "done", Duration::from_secs(120)).await;
    b.shot("access-done").await;
    let href = b.attr("#archive-download", "href").await.expect("an archive link");
    let tar = b
        .js_async(
            "const done = arguments[arguments.length - 1]; fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => { const u = new Uint8Array(b); \
             done({len: u.length, magic: String.fromCharCode(...u.slice(257, 262)), first: String.fromCharCode(...u.slice(0, 32))}); }).catch(e => done(String(e)));",
            json!([href]),
        )
        .await;
    assert_eq!(tar["magic"], "ustar", "a tar archive: {tar}");
    assert!(tar["first"].as_str().unwrap().starts_with("manifest.json"), "{tar}");

    // A batch erasure from CSV: one job, a verified certificate per subject.
    let c = app.issue("uni-a", "stu-44", json!({"name": "A"})).await;
    let d = app.issue("uni-a", "stu-45", json!({"name": "B"})).await;
    land(
        &app,
        vec![event(&c, "c-1", "session.start", chrono::Utc::now(), None), event(&d, "c-1", "session.start", chrono::Utc::now(), None)],
    )
    .await;
    b.goto(&format!("{}/console/dsr", app.base)).await;
    b.type_into("#b-institution", "uni-a").await;
    b.type_into("#csv", &format!("external_id\nstu-44\n{d}\n")).await;
    b.click("#batch-request button").await;
    b.wait_text("#job", "erasure_batch", Duration::from_secs(10)).await;
    b.wait_text("#signature-status", "Signature verified", Duration::from_secs(120)).await;
    let page = b.text("main").await;
    assert_eq!(page.matches("Signature verified").count(), 2, "{page}");
    assert!(page.contains(&c) && page.contains(&d), "{page}");
    b.shot("batch-certificates").await;
    accessible(&b, &axe, "batch certificates").await;
    b.quit().await;
}

#[tokio::test]
async fn auditor_sees_a_tampered_chain_reported() {
    let (app, axe) = browser_app().await;
    for i in 0..3 {
        app.issue("uni-a", &format!("stu-{i}"), json!({"name": "x"})).await;
    }
    let mut b = signed_in(&app, "auditor-1", &["auditor"], &["*"], &[]).await;
    b.goto(&format!("{}/console/audit", app.base)).await;
    b.wait_text("#audit-log", "pseudonym.issue", Duration::from_secs(10)).await;
    accessible(&b, &axe, "audit log").await;
    b.shot("audit-log").await;
    // Filter by action (drill-down by principal works the same way).
    b.goto(&format!("{}/console/audit?action=console.login", app.base)).await;
    let filtered = b.text("#audit-log tbody").await;
    assert!(filtered.contains("auditor-1") && !filtered.contains("pseudonym.issue"), "{filtered}");
    b.shot("audit-filtered").await;

    b.goto(&format!("{}/console/audit", app.base)).await;
    b.click("#verify-form button").await;
    b.wait_text("#chain-status", "Chain intact", Duration::from_secs(20)).await;
    b.shot("chain-intact").await;
    accessible(&b, &axe, "verification").await;

    // A superuser rewrites an entry behind the trigger: the console reports it.
    let mut tx = app.admin.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica").execute(&mut *tx).await.unwrap();
    sqlx::query("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    b.goto(&format!("{}/console/audit", app.base)).await;
    b.click("#verify-form button").await;
    let broken = b.wait_text("#chain-status", "BROKEN", Duration::from_secs(20)).await;
    assert!(broken.contains("seq 2"), "{broken}");
    b.shot("chain-broken").await;

    b.goto(&format!("{}/console/retention", app.base)).await;
    b.wait_text("#retention", "events.learning_events", Duration::from_secs(60)).await;
    accessible(&b, &axe, "retention").await;
    b.shot("retention").await;
    b.quit().await;
}

#[tokio::test]
async fn advisor_drills_down_with_a_purpose_and_records_a_decision() {
    use learnvault::signals::finding::ContextCount;
    use learnvault::signals::{Finding, Kind};
    let (app, axe) = browser_app().await;
    let learner = app.issue("uni-a", "stu-7", json!({"name": "Ada"})).await;
    let mut rows = cohort_events("c-large", 30, 60);
    rows.push(event(&learner, "c-large", "session.start", chrono::Utc::now() - chrono::Duration::hours(2), None));
    rows.push(event(&learner, "c-large", "session.heartbeat", chrono::Utc::now() - chrono::Duration::hours(2), Some(30)));
    land(&app, rows).await;
    let id = uuid::Uuid::parse_str(&learner).unwrap();
    let finding = Finding {
        kind: Kind::Disengagement,
        day: chrono::Utc::now().date_naive(),
        institution: "uni-a".into(),
        course: COURSE.into(),
        content: None,
        cohort: None,
        key: format!("disengagement:{COURSE}:uni-a:{id}"),
        subjects: vec![id],
        statistic: 0.93,
        baseline: 0.1,
        band: (0.0, 0.3),
        evidence: json!({"statistic": "silence probability", "last_seen_days": 9}),
        context: vec![
            ContextCount { label: "cohort_learners".into(), learners: 31 },
            ContextCount { label: "silent_like_this".into(), learners: 3 },
        ],
    };
    app.state.signals.clone().unwrap().record(&[finding]).await.unwrap();

    let mut b = signed_in(&app, "advisor-1", &["advisor"], &["uni-a"], &[COURSE]).await;
    b.goto(&format!("{}/console/review", app.base)).await;
    b.wait_text("#queue-advisor", "disengagement", Duration::from_secs(10)).await;
    accessible(&b, &axe, "review queue").await;
    b.shot("queue").await;
    b.click("#queue-advisor a").await;
    b.wait_text("#evidence", "silence probability", Duration::from_secs(10)).await;
    let context = b.text("main").await;
    assert!(context.contains("withheld"), "3 learners are withheld in the cohort context: {context}");
    accessible(&b, &axe, "item").await;
    b.shot("item").await;

    // The drill-down asks for a purpose and a justification; it is audited with them.
    b.select("select[name=purpose]", "learner_support").await;
    b.type_into("textarea[name=justification]", "Silent for nine days before the exam; checking before I write.").await;
    b.click("form.drilldown button").await;
    b.wait_text("#timeline", "session.heartbeat", Duration::from_secs(10)).await;
    b.shot("drilldown").await;
    accessible(&b, &axe, "drill-down").await;
    let (purpose, justification): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT purpose, justification FROM audit_log WHERE action = 'learner.drilldown' AND outcome = 'success' AND actor = 'advisor-1'",
    )
    .fetch_one(&app.admin)
    .await
    .unwrap();
    assert_eq!(purpose.as_deref(), Some("learner_support"));
    assert!(justification.unwrap().contains("nine days"));

    // Back to the item: record the decision.
    b.goto(&format!("{}/console/review", app.base)).await;
    b.click("#queue-advisor a").await;
    b.select("#decision", "contacted").await;
    b.type_into("#note", "Wrote to the learner; offered office hours.").await;
    b.click("#decision-form button").await;
    let decided = b.wait_text("#decision", "Decided: contacted", Duration::from_secs(10)).await;
    assert!(decided.contains("advisor-1") && decided.contains("office hours"), "{decided}");
    b.shot("decided").await;
    let state: String = sqlx::query_scalar("SELECT state::text FROM signal_items").fetch_one(&app.admin).await.unwrap();
    assert_eq!(state, "decided");
    b.quit().await;
}

/// The session cookie of a sign-in link (no browser needed).
async fn session_cookie(app: &TestApp, link: &str) -> String {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let resp = client.get(link).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/console"), "{set}");
    assert!(!set.contains("Secure"), "plain HTTP on loopback: {set}");
    let _ = app;
    set.split(';').next().unwrap().to_owned()
}

fn csrf_of(html: &str) -> String {
    let i = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    html[i..i + html[i..].find('"').unwrap()].to_owned()
}

#[tokio::test]
async fn csrf_less_posts_missing_sessions_reused_codes_and_idle_sessions_are_refused() {
    let app = TestApp::spawn_with_warehouse().await;
    app.issue("uni-a", "stu-1", json!({"name": "x"})).await;
    let c = &app.client;
    let jobs = || app.count("SELECT count(*) FROM dsr_jobs");

    // No session: pages and forms refused.
    let r = c.get(format!("{}/console/dsr", app.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let h = r.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "same-origin");
    let form = [("kind", "erasure"), ("institution", "uni-a"), ("external_id", "stu-1"), ("csrf", "x")];
    assert_eq!(c.post(format!("{}/console/dsr/requests", app.base)).form(&form).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);

    // A code works once.
    let l = link(&app, "dpo-1", &["dpo"], &["uni-a"], &[]).await;
    let cookie = session_cookie(&app, &l).await;
    assert_eq!(c.get(&l).send().await.unwrap().status(), StatusCode::UNAUTHORIZED, "a used code is refused");
    assert!(app.denials("invalid_or_used_code").await >= 1, "and audited");

    // With the session: no CSRF token, a wrong one, a foreign origin: refused, nothing filed.
    let page = c.get(format!("{}/console/dsr", app.base)).header("cookie", &cookie).send().await.unwrap().text().await.unwrap();
    let token = csrf_of(&page);
    let post = |csrf: Option<&str>, origin: Option<&str>| {
        let mut f = vec![("kind", "erasure"), ("institution", "uni-a"), ("external_id", "stu-1")];
        if let Some(t) = csrf {
            f.push(("csrf", t));
        }
        let mut r = c.post(format!("{}/console/dsr/requests", app.base)).header("cookie", &cookie).form(&f);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    assert_eq!(post(None, None).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(post(Some("not-the-token"), None).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(post(Some(&token), Some("http://evil.example")).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(jobs().await, 0, "no request was filed");
    // The right token files it (through the API: audited as the DPO).
    let r = post(Some(&token), Some(&app.base)).await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(jobs().await, 1);
    assert!(
        app.count("SELECT count(*) FROM audit_log WHERE action = 'dsr.erasure.request' OR (action LIKE 'dsr.%' AND actor = 'dpo-1')").await >= 1
    );

    // The queue behind the page, over the API: the caller's institutions only; the suppression list needs dsr.erasure.
    let (s, v) = app.get("/v1/dsr/jobs", &app.auditor()).await;
    assert_eq!((s, v["jobs"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)), "{v}");
    let (s, v) = app.get("/v1/dsr/jobs", &app.dpo("uni-b")).await;
    assert_eq!((s, v["jobs"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)), "another institution's DPO sees none: {v}");
    assert_eq!(app.get("/v1/dsr/suppressions", &app.auditor()).await.0, StatusCode::FORBIDDEN);
    assert_eq!(app.get("/v1/dsr/jobs?limit=0", &app.auditor()).await.0, StatusCode::BAD_REQUEST);

    // The console's authority is the API's: an auditor's session cannot file a request.
    let aud = session_cookie(&app, &link(&app, "auditor-1", &["auditor"], &["*"], &[]).await).await;
    let page = c.get(format!("{}/console/dsr", app.base)).header("cookie", &aud).send().await.unwrap().text().await.unwrap();
    assert!(!page.contains("id=\"new-request\""), "not offered");
    let f = [("kind", "erasure"), ("institution", "uni-a"), ("external_id", "stu-1"), ("csrf", &csrf_of(&page))];
    let r = c.post(format!("{}/console/dsr/requests", app.base)).header("cookie", &aud).form(&f).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "refused by the API's rule");
    assert!(app.denials("role_lacks_permission").await >= 1, "audited as the API audits");

    // An instructor's session reads only the courses of its scope: the API's 403, audited, shown as such.
    let outsider = session_cookie(&app, &link(&app, "instructor-9", &["instructor"], &["uni-a"], &["cs999"]).await).await;
    let r = c.get(format!("{}/console/courses/{COURSE}", app.base)).header("cookie", &outsider).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("not in your token"), "the API's message");
    assert!(app.denials("course_not_in_scope").await >= 1);
    assert_eq!(
        c.get(format!("{}/console/courses/{COURSE}/live", app.base)).header("cookie", &outsider).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );

    // Signing out ends the session (with its CSRF token).
    let page = c.get(format!("{}/console", app.base)).header("cookie", &outsider).send().await.unwrap().text().await.unwrap();
    let out = [("csrf", csrf_of(&page))];
    assert_eq!(
        c.post(format!("{}/console/logout", app.base)).header("cookie", &outsider).form(&[("csrf", "x")]).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let r = c.post(format!("{}/console/logout", app.base)).header("cookie", &outsider).form(&out).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(c.get(format!("{}/console", app.base)).header("cookie", &outsider).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);

    // `learnvault console login` prints a link that signs in once; unknown roles and scope-less course roles are refused.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_learnvault"))
            .args(["console", "login"])
            .args(args)
            .env("LEARNVAULT_DATABASE_URL", secrecy::ExposeSecret::expose_secret(&app.settings.database.url))
            .env("LEARNVAULT_POLICY_DIR", &app.settings.policy_dir)
            .env("LEARNVAULT_CONSOLE_URL", &app.base)
            .env("LEARNVAULT_LOG", "error")
            .output()
            .unwrap()
    };
    let out = cli(&["--role", "auditor", "--institution", "*", "--sub", "cli-auditor"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(printed.starts_with(&format!("{}/console/login?code=", app.base)), "{printed}");
    let cli_cookie = session_cookie(&app, &printed).await;
    let home = c.get(format!("{}/console", app.base)).header("cookie", &cli_cookie).send().await.unwrap().text().await.unwrap();
    assert!(home.contains("cli-auditor"), "{home}");
    assert!(!cli(&["--role", "emperor", "--institution", "uni-a"]).status.success());
    assert!(!cli(&["--role", "instructor", "--institution", "uni-a"]).status.success(), "an instructor needs a --course");

    // Idle sessions end.
    sqlx::query("UPDATE console_sessions SET last_seen = now() - interval '31 minutes'").execute(&app.admin).await.unwrap();
    assert_eq!(c.get(format!("{}/console", app.base)).header("cookie", &cookie).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // Sessions and codes are stored hashed: the cookie's value is not in the table.
    let value = cookie.split('=').nth(1).unwrap();
    assert_eq!(app.count(&format!("SELECT count(*) FROM console_sessions WHERE encode(id_hash, 'escape') LIKE '%{value}%'")).await, 0);
}

/// A Keycloak of the test's own (ops/keycloak.sh), with ops/keycloak/learnvault-realm.json;
/// `LV_KEYCLOAK_URL` reuses a running one with that realm. Stopped on drop.
struct Keycloak {
    base: String,
    child: Option<std::process::Child>,
}

impl Keycloak {
    async fn start() -> Keycloak {
        if let Ok(base) = std::env::var("LV_KEYCLOAK_URL") {
            return Keycloak { base, child: None };
        }
        let out =
            std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/ops/keycloak.sh")).output().expect("ops/keycloak.sh runs");
        assert!(out.status.success(), "ops/keycloak.sh: {}", String::from_utf8_lossy(&out.stderr));
        let dir = std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        std::fs::create_dir_all(dir.join("data/import")).unwrap();
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/ops/keycloak/learnvault-realm.json"),
            dir.join("data/import/learnvault-realm.json"),
        )
        .unwrap();
        let port = common::spine::free_port();
        let log = std::fs::File::create(std::env::temp_dir().join(format!("lv-keycloak-{port}.log"))).unwrap();
        let child = std::process::Command::new(dir.join("bin/kc.sh"))
            .args(["start-dev", "--http-host=127.0.0.1", &format!("--http-port={port}"), "--import-realm", "--db=dev-mem"])
            .env("JAVA_OPTS_KC_HEAP", "-Xms64m -Xmx512m")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("kc.sh starts");
        let kc = Keycloak { base: format!("http://127.0.0.1:{port}"), child: Some(child) };
        let t0 = Instant::now();
        let discovery = format!("{}/realms/learnvault/.well-known/openid-configuration", kc.base);
        loop {
            if reqwest::get(&discovery).await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            // Keycloak builds itself on a first start: minutes on a small machine.
            assert!(t0.elapsed() < Duration::from_secs(600), "Keycloak did not start (see lv-keycloak-{port}.log)");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        println!("Keycloak answered after {} s", t0.elapsed().as_secs());
        kc
    }
}

impl Drop for Keycloak {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test]
async fn a_dpo_signs_in_through_openid_connect_with_pkce_at_keycloak() {
    browser_ready();
    let kc = Keycloak::start().await;
    let issuer = format!("{}/realms/learnvault", kc.base);
    let app = TestApp::spawn_with(|s| {
        s.console.oidc_issuer = Some(issuer.clone());
        s.console.oidc_client_secret = Some("console-secret".to_string().into());
    })
    .await;
    let mut b = Browser::start("oidc").await;
    b.goto(&format!("{}/console", app.base)).await;
    b.click("#oidc-sign-in").await;
    // Keycloak's own login page.
    b.wait_text("body", "Sign in", Duration::from_secs(30)).await;
    assert!(b.attr("#kc-form-login", "action").await.unwrap().starts_with(&kc.base), "the provider's page");
    b.shot("provider-login").await;
    b.submit_form(&[("#username", "dana"), ("#password", "dana-password")], "#kc-login").await;
    let who = b.wait_text("#who", "dana", Duration::from_secs(30)).await;
    assert!(who.contains("roles: dpo") && who.contains("institutions: uni-a"), "the ID token's claims: {who}");
    b.shot("signed-in").await;
    let c = b.cookies().await;
    let c = c.iter().find(|c| c["name"] == "lv_console").expect("the session cookie");
    assert_eq!((c["httpOnly"].as_bool(), c["sameSite"].as_str()), (Some(true), Some("Strict")));
    let (method, actor): (String, String) =
        sqlx::query_as("SELECT detail->>'method', actor FROM audit_log WHERE action = 'console.login' AND outcome = 'success'")
            .fetch_one(&app.admin)
            .await
            .unwrap();
    assert_eq!((method.as_str(), actor.as_str()), ("oidc", "dana"));
    // The state is taken once: nothing is left in flight, and a callback with an unknown state is refused.
    assert_eq!(app.count("SELECT count(*) FROM console_oidc_logins").await, 0, "the sign-in in flight was taken");
    let r = reqwest::get(format!("{}/console/oidc/callback?code=x&state=never-issued", app.base)).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    b.quit().await;
}
