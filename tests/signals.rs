//! Signals on the real services (PostgreSQL, chDB, Kafka for the app's
//! topics): each detector finds its planted case in a simulated cohort and
//! not the traps (an always-hard segment, a holiday week, study partners);
//! the review queues (list, view, decide) are scoped and audited; integrity
//! items are invisible without `integrity.review`; content-defect items
//! withhold counts below `min_cell`; and no route of the OpenAPI document but
//! the review queues carries a signal-derived field.
mod common;

use chrono::{Duration, Utc};
use common::TestApp;
use learnvault::signals::finding::ContextCount;
use learnvault::signals::sim::{Plan, Sim};
use learnvault::signals::{Finding, Kind};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use uuid::Uuid;

fn num(v: &Value) -> u64 {
    v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or_else(|| panic!("not a number: {v}"))
}

fn token(app: &TestApp, sub: &str, roles: &[&str], institutions: &[&str], courses: &[&str]) -> String {
    let auth = learnvault::auth::Authenticator::from_settings(&app.settings, &app.master).unwrap();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    auth.mint_scoped(sub, &s(roles), &s(institutions), &s(courses), std::time::Duration::from_secs(600)).unwrap()
}

async fn items(app: &TestApp, kind: &str) -> Vec<(Uuid, String, Option<String>, Value)> {
    sqlx::query_as::<_, (Uuid, String, Option<String>, Value)>(
        "SELECT id, course_id, content_id, evidence FROM signal_items WHERE kind::text = $1 ORDER BY created_at",
    )
    .bind(kind)
    .fetch_all(&app.admin)
    .await
    .unwrap()
}

async fn subjects(app: &TestApp, item: Uuid) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT pseudonym FROM signal_subjects WHERE item_id = $1 ORDER BY position").bind(item).fetch_all(&app.admin).await.unwrap()
}

#[tokio::test]
async fn detectors_find_the_planted_cases_and_not_the_traps() {
    let app = TestApp::spawn_with_warehouse().await;
    let days = 56;
    let start = Utc::now().date_naive() - Duration::days(days as i64);
    let mut sim = Sim::new(Plan::new(800, days, start, 7, true, "t"));
    while let Some(chunk) = sim.chunk(200) {
        app.warehouse().insert("events.learning_events", "JSONEachRow", Arc::new(chunk), &[]).await.unwrap();
    }
    let truth = sim.truth.clone();
    assert_eq!((truth.defects.len(), truth.colluders.len(), truth.partners.len()), (2, 4, 8));
    let sg = app.state.signals.clone().unwrap();
    let (from, to) = (start + Duration::days(28), start + Duration::days(days as i64 - 1));
    let ran = sg.run_range(from, to).await.unwrap();
    assert_eq!(ran.len(), 28, "one run per day: {ran:?}");
    assert!(ran.iter().all(|r| matches!(r, learnvault::signals::Ran::Ran { .. })), "{ran:?}");
    // Nothing left to run: the queue of runs is drained.
    assert_eq!(sg.try_run_one().await.unwrap(), learnvault::signals::Ran::Empty);

    // Content defects: both planted segments, nothing at the always-hard segment.
    let cd = items(&app, "content_defect").await;
    for d in &truth.defects {
        assert!(
            cd.iter().any(|(_, c, k, e)| *c == d.course && k.as_deref() == Some(d.content.as_str())
                && e["details"]["segment"]["from_sec"].as_u64().unwrap() < d.to_sec as u64
                && e["details"]["segment"]["to_sec"].as_u64().unwrap() > d.from_sec as u64),
            "planted defect {d:?} not found in {cd:?}"
        );
    }
    let hard = learnvault::signals::sim::HARD_SEGMENT;
    assert!(cd.iter().all(|(_, _, _, e)| e["details"]["segment"]["from_sec"].as_u64().unwrap() != hard.0 as u64), "the always-hard segment was flagged: {cd:?}");
    assert_eq!(cd.len(), truth.defects.len(), "false alarms: {cd:?}");

    // Integrity: exactly the colluding pairs; no study partners.
    let pairs = |v: &[(Uuid, Uuid)]| v.iter().map(|(a, b)| ((*a).min(*b), (*a).max(*b))).collect::<BTreeSet<_>>();
    let mut flagged = BTreeSet::new();
    for (id, _, _, e) in items(&app, "integrity").await {
        let s = subjects(&app, id).await;
        assert_eq!(s.len(), 2);
        assert!(e["details"]["hypothesis"].as_str().unwrap().contains("never a verdict"));
        flagged.insert((s[0].min(s[1]), s[0].max(s[1])));
    }
    assert_eq!(flagged, pairs(&truth.colluders), "integrity items are the colluding pairs");
    assert!(flagged.is_disjoint(&pairs(&truth.partners)), "a study-partner pair was flagged");

    // Disengagement: most planted learners, few others, despite the holiday week.
    let mut hits = 0;
    let mut flagged_learners = 0;
    for (id, _, _, _) in items(&app, "disengagement").await {
        flagged_learners += 1;
        if truth.disengaged.contains_key(&subjects(&app, id).await[0]) {
            hits += 1;
        }
    }
    let (precision, recall) = (hits as f64 / flagged_learners as f64, hits as f64 / truth.disengaged.len() as f64);
    assert!(precision >= 0.8 && recall >= 0.7, "disengagement precision {precision:.2} recall {recall:.2} ({hits} of {flagged_learners} flagged, {} planted)", truth.disengaged.len());

    // Learner-level rows in ClickHouse: one per subject (the nil learner for content), none naming another learner.
    let rows = app.warehouse().query("SELECT kind, count() AS n, uniqExact(finding_id) AS f FROM signals.findings GROUP BY kind ORDER BY kind", &[]).await.unwrap();
    let by: std::collections::BTreeMap<String, (u64, u64)> = rows
        .iter()
        .map(|r| (r["kind"].as_str().unwrap().to_owned(), (num(&r["n"]), num(&r["f"]))))
        .collect();
    assert_eq!(by["integrity"], (2 * flagged.len() as u64, flagged.len() as u64));
    assert_eq!(by["content_defect"].1, cd.len() as u64);
    let named = app.warehouse().query("SELECT count() AS n FROM signals.findings WHERE position(evidence, {p:String}) > 0", &[("p", truth.colluders[0].1.to_string())]).await.unwrap();
    assert_eq!(num(&named[0]["n"]), 0, "a finding's evidence names a learner");
    // A learner's own rows say how far apart the pair submitted, not when the other learner did.
    let timed = app.warehouse().query("SELECT count() AS n FROM signals.findings WHERE kind = 'integrity' AND position(evidence, 'at_ms') > 0", &[]).await.unwrap();
    assert_eq!(num(&timed[0]["n"]), 0);
}

fn finding(kind: Kind, institution: &str, course: &str, subjects: Vec<Uuid>, context: &[(&str, u64)]) -> Finding {
    let day = Utc::now().date_naive();
    Finding {
        kind,
        day,
        institution: institution.into(),
        course: course.into(),
        content: (kind == Kind::ContentDefect).then(|| "video-1".to_string()),
        cohort: None,
        key: format!("{}:{course}:{institution}:{}", kind.as_str(), subjects.iter().map(Uuid::to_string).collect::<Vec<_>>().join(":")),
        subjects,
        statistic: 0.5,
        baseline: 0.02,
        band: (0.0, 0.08),
        evidence: json!({"statistic": "test"}),
        context: context.iter().map(|(l, n)| ContextCount { label: l.to_string(), learners: *n }).collect(),
    }
}

async fn audit_rows(app: &TestApp, action: &str) -> Vec<(String, Option<Uuid>, Option<String>, Value)> {
    sqlx::query_as("SELECT outcome, target_pseudonym, justification, detail FROM audit_log WHERE action = $1 ORDER BY seq")
        .bind(action)
        .fetch_all(&app.admin)
        .await
        .unwrap()
}

#[tokio::test]
async fn review_queues_are_scoped_audited_and_withhold_small_counts() {
    let app = TestApp::spawn_with_warehouse().await;
    let sg = app.state.signals.clone().unwrap();
    let learner = Uuid::parse_str(&app.issue("uni-a", "ext-1", json!({"name": "Ada Lovelace"})).await).unwrap();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let rec = sg
        .record(&[
            finding(Kind::ContentDefect, "uni-a", "cs101", vec![], &[("learners_replaying_peak_bucket", 12), ("learners_of_content_that_day", 40)]),
            finding(Kind::ContentDefect, "uni-strict", "cs201", vec![], &[("learners_replaying_peak_bucket", 12), ("learners_of_content_that_day", 40)]),
            finding(Kind::Disengagement, "uni-a", "cs101", vec![learner], &[("cohort_learners", 9), ("active_today", 30)]),
            finding(Kind::Integrity, "uni-a", "cs101", vec![a, b], &[]),
        ])
        .await
        .unwrap();
    assert_eq!(rec.new, 4);
    // The same findings again add nothing while their items are undecided.
    let again = sg.record(&[finding(Kind::Integrity, "uni-a", "cs101", vec![a, b], &[])]).await.unwrap();
    assert_eq!((again.new, again.known), (0, 1));

    // Content authors: their queue, their courses; small counts withheld by the institution's min_cell.
    let author = token(&app, "author-1", &["content_author"], &["uni-a", "uni-strict"], &["cs101", "cs201"]);
    let (s, q) = app.get("/v1/signals/queues/content_author/items", &author).await;
    assert_eq!(s, StatusCode::OK, "{q}");
    assert_eq!(q["items"].as_array().unwrap().len(), 2, "{q}");
    // Two authors taking the next free item get different ones; a third finds none free.
    let mut taken = BTreeSet::new();
    for sub in ["author-3", "author-4"] {
        let t = token(&app, sub, &["content_author"], &["uni-a", "uni-strict"], &["cs101", "cs201"]);
        let (s, v) = app.post("/v1/signals/queues/content_author/next", &t, json!({})).await;
        assert_eq!((s, v["lease_by"].as_str()), (StatusCode::OK, Some(sub)), "{v}");
        taken.insert(v["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(taken.len(), 2);
    let t = token(&app, "author-5", &["content_author"], &["uni-a", "uni-strict"], &["cs101", "cs201"]);
    let (s, v) = app.post("/v1/signals/queues/content_author/next", &t, json!({})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("queue_empty")), "{v}");
    for it in q["items"].as_array().unwrap() {
        assert!(it.get("subjects").is_none() && it.get("evidence").is_none(), "a listing shows no subjects or evidence: {it}");
        let (s, v) = app.get(&format!("/v1/signals/items/{}", it["id"].as_str().unwrap()), &author).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["subjects"], json!([]));
        assert!(v["evidence"].get("context").is_none(), "raw counts never leave: {v}");
        let counts = v["cohort_context"]["counts"].as_array().unwrap();
        let peak = &counts.iter().find(|c| c["label"] == "learners_replaying_peak_bucket").unwrap()["learners"];
        let all = &counts.iter().find(|c| c["label"] == "learners_of_content_that_day").unwrap()["learners"];
        match it["institution_id"].as_str().unwrap() {
            // min_cell 10: 12 is shown.
            "uni-a" => assert_eq!(peak["value"], 12, "{v}"),
            // min_cell 20 (uni-strict): 12 is withheld, 40 shown.
            _ => {
                assert!(peak["value"].is_null() && peak["suppressed"] == "small_cell", "{v}");
                assert_eq!(all["value"], 40, "{v}");
                assert_eq!(v["cohort_context"]["disclosure"]["thresholds"]["min_cell"], 20);
            }
        }
    }
    let (s, _) = app.get("/v1/signals/queues/advisor/items", &author).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(audit_rows(&app, "signals.list").await.iter().any(|r| r.0 == "denied" && r.3["reason"] == "queue_not_yours"));
    // A course outside the token: nothing listed.
    let other = token(&app, "author-2", &["content_author"], &["uni-a"], &["cs999"]);
    let (_, q) = app.get("/v1/signals/queues/content_author/items", &other).await;
    assert_eq!(q["items"], json!([]));

    // Advisors: the disengagement item, viewed (leased, audited with its subject) and decided (audited with the note).
    let advisor = token(&app, "advisor-1", &["advisor"], &["uni-a"], &["cs101"]);
    let (_, q) = app.get("/v1/signals/queues/advisor/items?state=open", &advisor).await;
    let items = q["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{q}");
    assert_eq!(items[0]["kind"], "disengagement");
    let id = items[0]["id"].as_str().unwrap().to_owned();
    let (s, v) = app.get(&format!("/v1/signals/items/{id}"), &advisor).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["subjects"], json!([learner]));
    assert_eq!((v["state"].as_str(), v["lease_by"].as_str()), (Some("in_review"), Some("advisor-1")));
    assert_eq!(v["evidence"]["statistic"], 0.5);
    // cohort of 9 < min_cell: withheld.
    assert!(v["cohort_context"]["counts"][0]["learners"]["value"].is_null(), "{v}");
    let views = audit_rows(&app, "signals.view").await;
    assert!(views.iter().any(|r| r.0 == "success" && r.1 == Some(learner) && r.3["item"] == id.as_str()), "{views:?}");
    // Another advisor may look but not decide while the lease holds.
    let advisor2 = token(&app, "advisor-2", &["advisor"], &["uni-a"], &["cs101"]);
    let body = json!({"decision": "contacted", "note": "called; exam stress, agreed a study plan"});
    let (s, v) = app.post(&format!("/v1/signals/items/{id}/decision"), &advisor2, body.clone()).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("item_leased")));
    let (s, v) = app.post(&format!("/v1/signals/items/{id}/decision"), &advisor, json!({"decision": "contacted", "note": " "})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("note_required")));
    let (s, v) = app.post(&format!("/v1/signals/items/{id}/decision"), &advisor, json!({"decision": "expel", "note": "x"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = app.post(&format!("/v1/signals/items/{id}/decision"), &advisor, body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["state"].as_str(), v["decision"].as_str()), (Some("decided"), Some("contacted")));
    let (s, _) = app.post(&format!("/v1/signals/items/{id}/decision"), &advisor, body).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let decisions = audit_rows(&app, "signals.decide").await;
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!((decisions[0].1, decisions[0].2.as_deref()), (Some(learner), Some("called; exam stress, agreed a study plan")));
    assert_eq!(decisions[0].3["decision"], "contacted");

    // Integrity items: invisible to every role without integrity.review, visible to the panel.
    let integrity = items_of(&app, "integrity").await;
    for t in [&advisor, &author, &token(&app, "instructor-1", &["instructor"], &["uni-a"], &["cs101"])] {
        let (s, _) = app.get(&format!("/v1/signals/items/{integrity}"), t).await;
        assert!(s == StatusCode::NOT_FOUND || s == StatusCode::FORBIDDEN, "{s}");
        let (s, _) = app.get("/v1/signals/queues/integrity_panel/items", t).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
    }
    assert!(audit_rows(&app, "signals.view").await.iter().any(|r| r.0 == "not_found" && r.3["item"] == integrity.to_string()));
    let panel = token(&app, "panel-1", &["integrity_panel"], &["uni-a"], &[]);
    let (_, q) = app.get("/v1/signals/queues/integrity_panel/items", &panel).await;
    assert_eq!(q["items"].as_array().unwrap().len(), 1, "{q}");
    let (s, v) = app.get(&format!("/v1/signals/items/{integrity}"), &panel).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["subjects"], json!([a, b]));
    let view = audit_rows(&app, "signals.view").await.into_iter().rev().find(|r| r.0 == "success").unwrap();
    assert_eq!((view.1, view.3["other_subjects"].clone()), (Some(a), json!([b])));
    // The panel from another institution sees nothing.
    let far = token(&app, "panel-2", &["integrity_panel"], &["uni-b"], &[]);
    let (s, _) = app.get(&format!("/v1/signals/items/{integrity}"), &far).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(app.verify().await["ok"].as_bool().unwrap_or(true));

    // Erasure shreds the vault row: the learner's place in every item goes with it.
    assert_eq!(app.count(&format!("SELECT count(*) FROM signal_subjects WHERE pseudonym = '{learner}'")).await, 1);
    sqlx::query("DELETE FROM learners WHERE pseudonym = $1").bind(learner).execute(&app.admin).await.unwrap();
    assert_eq!(app.count(&format!("SELECT count(*) FROM signal_subjects WHERE pseudonym = '{learner}'")).await, 0);
    let (_, v) = app.get(&format!("/v1/signals/items/{id}"), &advisor).await;
    assert_eq!(v["subjects"], json!([]), "{v}");
}

async fn items_of(app: &TestApp, kind: &str) -> Uuid {
    items(app, kind).await[0].0
}

/// Every schema name and property name reachable from `v`, following `$ref`s into `components`.
fn reach(v: &Value, doc: &Value, seen: &mut BTreeSet<String>, props: &mut BTreeSet<String>) {
    match v {
        Value::Object(o) => {
            if let Some(r) = o.get("$ref").and_then(Value::as_str) {
                let name = r.rsplit('/').next().unwrap().to_owned();
                if seen.insert(name.clone()) {
                    reach(&doc["components"]["schemas"][&name], doc, seen, props);
                }
            }
            if let Some(p) = o.get("properties").and_then(Value::as_object) {
                props.extend(p.keys().cloned());
            }
            o.values().for_each(|x| reach(x, doc, seen, props));
        }
        Value::Array(a) => a.iter().for_each(|x| reach(x, doc, seen, props)),
        _ => {}
    }
}

/// Fields only a signal carries.
const SIGNAL_FIELDS: [&str; 5] = ["evidence", "cohort_context", "subjects", "signals", "risk"];

#[test]
fn no_route_but_the_review_queues_carries_a_signal_derived_field() {
    let doc = learnvault::api::openapi_document();
    assert!(doc.get("webhooks").is_none_or(|w| w.as_object().is_none_or(|o| o.is_empty())), "a webhook could act on a learner");
    let mut checked = 0;
    let mut queue_routes = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            assert!(op.get("callbacks").is_none(), "{method} {path}: a callback could act on a learner");
            // What a route gives out (its responses) must carry no signal field; what it takes in
            // (a request body: batch erasure's own `subjects`, say) is the caller's, and only
            // checked for the signal schemas.
            let (mut schemas, mut props) = (BTreeSet::new(), BTreeSet::new());
            reach(&op["responses"], &doc, &mut schemas, &mut props);
            reach(&op["requestBody"], &doc, &mut schemas, &mut BTreeSet::new());
            let signal_schemas: Vec<&String> = schemas.iter().filter(|s| s.starts_with("Signal")).collect();
            let signal_props: Vec<&String> = props.iter().filter(|p| SIGNAL_FIELDS.contains(&p.as_str())).collect();
            if path.starts_with("/v1/signals/") {
                queue_routes += 1;
                assert!(!signal_schemas.is_empty(), "{method} {path} should carry the queue's schemas");
            } else {
                assert!(signal_schemas.is_empty() && signal_props.is_empty(), "{method} {path} carries a signal-derived field: {signal_schemas:?} {signal_props:?}");
            }
            checked += 1;
        }
    }
    // The subject's own access export is the one other way out (the data map lists
    // `signals.findings` and `signal_subjects`); its archive is not in this document.
    assert_eq!(queue_routes, 4);
    assert!(checked > 20, "{checked} routes");
}
