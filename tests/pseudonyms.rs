mod common;

use common::TestApp;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

/// `n` calls at once, call `k` being `call(app, token, k)` with an LMS token of uni-a; their
/// answers in the order of `k`.
async fn at_once<T, F>(app: &Arc<TestApp>, n: usize, call: impl Fn(Arc<TestApp>, String, usize) -> F) -> Vec<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let token = app.lms("uni-a");
    let tasks: Vec<_> = (0..n).map(|k| tokio::spawn(call(app.clone(), token.clone(), k))).collect();
    let mut answers = Vec::with_capacity(n);
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

#[tokio::test]
async fn same_learner_gets_the_same_pseudonym_and_institutions_differ() {
    let app = TestApp::spawn().await;
    let body = json!({"institution": "uni-a", "external_id": "S-1", "identity": {"name": "Ada", "email": "ada@example.edu"}});
    let (s1, v1) = app.post("/v1/pseudonyms", &app.lms("uni-a"), body.clone()).await;
    assert_eq!(s1, StatusCode::CREATED, "{v1}");
    assert_eq!(v1["created"], true);
    let (s2, v2) = app.post("/v1/pseudonyms", &app.lms("uni-a"), json!({"institution": "uni-a", "external_id": "  S-1 "})).await;
    assert_eq!(s2, StatusCode::OK);
    assert_eq!(v2["created"], false);
    assert_eq!(v1["pseudonym"], v2["pseudonym"]);
    let other = app.issue("uni-b", "S-1", json!({})).await;
    assert_ne!(v1["pseudonym"].as_str().unwrap(), other);
    let u = uuid::Uuid::parse_str(v1["pseudonym"].as_str().unwrap()).unwrap();
    assert_eq!(u.get_version_num(), 4, "pseudonyms are random v4 UUIDs");
    // The response never carries the identity back.
    assert!(!v1.to_string().contains("ada@example.edu"));
}

#[tokio::test]
async fn two_hundred_concurrent_calls_for_one_learner_yield_one_pseudonym() {
    let app = Arc::new(TestApp::spawn().await);
    let answers = at_once(&app, 200, |app, token, _| async move {
        app.post("/v1/pseudonyms", &token, json!({"institution": "uni-a", "external_id": "same-learner"})).await
    })
    .await;
    let mut pseudonyms = HashSet::new();
    let mut created = 0;
    for (s, v) in answers {
        assert!(s.is_success(), "{s} {v}");
        pseudonyms.insert(v["pseudonym"].as_str().unwrap().to_owned());
        if v["created"] == true {
            created += 1;
        }
    }
    assert_eq!(pseudonyms.len(), 1, "one learner, one pseudonym");
    assert_eq!(created, 1, "exactly one call created it");
    assert_eq!(app.count("SELECT count(*) FROM learners").await, 1);
    // Every call is audited (one row per request), and the chain holds.
    assert_eq!(app.count("SELECT count(*) FROM audit_log WHERE action = 'pseudonym.issue'").await, 200);
    assert_eq!(app.verify().await["intact"], true);
}

#[tokio::test]
async fn batch_of_ten_thousand_is_distinct_and_rerun_returns_the_same() {
    let app = TestApp::spawn().await;
    let items: Vec<Value> = (0..10_000)
        .map(|i| json!({"institution": "uni-a", "external_id": format!("L{i}"), "identity": {"email": format!("l{i}@example.edu")}}))
        .collect();
    let (s, first) = app.post("/v1/pseudonyms/batch", &app.lms("uni-a"), json!({"items": items})).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    assert_eq!(first["created"], 10_000);
    let ps: Vec<&str> = first["results"].as_array().unwrap().iter().map(|r| r["pseudonym"].as_str().unwrap()).collect();
    assert_eq!(ps.iter().collect::<HashSet<_>>().len(), 10_000);
    let (s, again) = app.post("/v1/pseudonyms/batch", &app.lms("uni-a"), json!({"items": items})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["created"], 0);
    assert_eq!(again["existing"], 10_000);
    let ps2: Vec<&str> = again["results"].as_array().unwrap().iter().map(|r| r["pseudonym"].as_str().unwrap()).collect();
    assert_eq!(ps, ps2, "same learners, same pseudonyms, same order");
    // A single call for a batch learner agrees with the batch.
    assert_eq!(app.issue("uni-a", "L42", json!({})).await, ps[42]);
    assert_eq!(app.count("SELECT count(*) FROM learners").await, 10_000);
    // Issuance is audited per request with a count.
    let detail: Value = sqlx::query_scalar("SELECT detail FROM audit_log WHERE action = 'pseudonym.issue_batch' ORDER BY seq LIMIT 1")
        .fetch_one(&app.admin)
        .await
        .unwrap();
    assert_eq!(detail, json!({"count": 10_000, "created": 10_000}));
}

#[tokio::test]
async fn batch_rejects_bad_items_individually_and_dedupes_repeats() {
    let app = TestApp::spawn().await;
    let items = json!([
        {"institution": "uni-a", "external_id": "ok-1"},
        {"institution": "uni-a", "external_id": "   "},
        {"institution": "uni-a", "external_id": "ok-1"},
        {"institution": "bad institution", "external_id": "x"},
        {"institution": "uni-a", "external_id": "ok-2", "identity": {"nested": {"no": 1}}}
    ]);
    let (s, v) = app.post("/v1/pseudonyms/batch", &app.lms("uni-a"), json!({"items": items})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let r = v["results"].as_array().unwrap();
    assert_eq!(r[0]["created"], true);
    assert_eq!(r[1]["error"]["code"], "invalid_external_id");
    assert_eq!(r[2]["pseudonym"], r[0]["pseudonym"]);
    assert_eq!(r[2]["created"], false);
    assert_eq!(r[3]["error"]["code"], "invalid_institution");
    assert_eq!(r[4]["error"]["code"], "invalid_identity");
    assert_eq!((v["created"].as_u64(), v["existing"].as_u64(), v["rejected"].as_u64()), (Some(1), Some(1), Some(3)));
    assert_eq!(app.count("SELECT count(*) FROM learners").await, 1);
}

#[tokio::test]
async fn batch_limits_and_foreign_institutions_are_refused_whole() {
    let app = TestApp::spawn().await;
    let items: Vec<Value> = (0..10_001).map(|i| json!({"institution": "uni-a", "external_id": format!("L{i}")})).collect();
    let (s, v) = app.post("/v1/pseudonyms/batch", &app.lms("uni-a"), json!({"items": items})).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["error"]["code"], "batch_too_large");
    let (s, v) = app.post("/v1/pseudonyms/batch", &app.lms("uni-a"), json!({"items": []})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("empty_batch")));
    let mixed = json!({"items": [{"institution": "uni-a", "external_id": "a"}, {"institution": "uni-b", "external_id": "b"}]});
    let (s, _) = app.post("/v1/pseudonyms/batch", &app.lms("uni-a"), mixed).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(app.count("SELECT count(*) FROM learners").await, 0, "nothing written");
    assert_eq!(app.denials("institution_not_allowed").await, 1);
}

#[tokio::test]
async fn dpo_looks_up_and_resolves_with_a_declared_purpose() {
    let app = TestApp::spawn().await;
    let p = app.issue("uni-a", "S-7", json!({"name": "Grace Hopper", "email": "grace@example.edu"})).await;
    let dpo = app.dpo("uni-a");
    let (s, v) = app.post("/v1/pseudonyms/lookup", &dpo, json!({"institution": "uni-a", "external_id": "S-7"})).await;
    assert_eq!((s, v["pseudonym"].as_str()), (StatusCode::OK, Some(p.as_str())));
    let (s, v) = app.post("/v1/pseudonyms/lookup", &dpo, json!({"institution": "uni-a", "external_id": "S-8"})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("unknown_learner")));

    let (s, v) = app
        .post(&format!("/v1/pseudonyms/{p}/resolve"), &dpo, json!({"purpose": "safeguarding", "justification": "ticket 42"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["identity"], json!({"name": "Grace Hopper", "email": "grace@example.edu"}));
    let row: (String, String, String) = sqlx::query_as(
        "SELECT purpose, justification, outcome FROM audit_log WHERE action = 'pseudonym.resolve' AND target_pseudonym = $1::uuid",
    )
    .bind(&p)
    .fetch_one(&app.admin)
    .await
    .unwrap();
    assert_eq!(row, ("safeguarding".into(), "ticket 42".into(), "success".into()));

    let unknown = uuid::Uuid::new_v4();
    let (s, _) = app
        .post(&format!("/v1/pseudonyms/{unknown}/resolve"), &dpo, json!({"purpose": "safeguarding", "justification": "x"}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn lms_cannot_resolve_and_dpo_needs_a_known_purpose_and_justification() {
    let app = TestApp::spawn().await;
    let p = app.issue("uni-a", "S-1", json!({"name": "Ada"})).await;
    let path = format!("/v1/pseudonyms/{p}/resolve");
    let (s, v) = app.post(&path, &app.lms("uni-a"), json!({"purpose": "safeguarding", "justification": "x"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(!v.to_string().contains("Ada"));
    let dpo = app.dpo("uni-a");
    for (body, code) in [
        (json!({"justification": "x"}), "purpose_required"),
        (json!({"purpose": "", "justification": "x"}), "purpose_required"),
        (json!({"purpose": "marketing", "justification": "x"}), "unknown_purpose"),
        (json!({"purpose": "safeguarding"}), "justification_required"),
    ] {
        let (s, v) = app.post(&path, &dpo, body).await;
        assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some(code)));
        assert!(!v.to_string().contains("Ada"));
    }
    // Another institution's DPO is refused.
    let (s, _) = app.post(&path, &app.dpo("uni-b"), json!({"purpose": "safeguarding", "justification": "x"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(app.count("SELECT count(*) FROM audit_log WHERE action = 'pseudonym.resolve' AND outcome = 'denied'").await, 6);
    assert_eq!(app.count("SELECT count(*) FROM audit_log WHERE action = 'pseudonym.resolve' AND outcome = 'success'").await, 0);
}

#[tokio::test]
async fn concurrent_overlapping_batches_agree_and_do_not_deadlock() {
    let app = Arc::new(TestApp::spawn().await);
    let answers = at_once(&app, 8, |app, token, k| async move {
        // The same 500 learners, half the calls in reverse order.
        let mut ids: Vec<usize> = (0..500).collect();
        if k % 2 == 1 {
            ids.reverse();
        }
        let items: Vec<Value> = ids.iter().map(|i| json!({"institution": "uni-a", "external_id": format!("o-{i}")})).collect();
        let (s, v) = app.post("/v1/pseudonyms/batch", &token, json!({"items": items})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let mut by_id: Vec<(usize, String)> = ids
            .into_iter()
            .zip(v["results"].as_array().unwrap())
            .map(|(i, r)| (i, r["pseudonym"].as_str().unwrap().to_owned()))
            .collect();
        by_id.sort();
        (by_id, v["created"].as_u64().unwrap())
    })
    .await;
    let mut first: Option<Vec<(usize, String)>> = None;
    let mut created = 0;
    for (by_id, c) in answers {
        created += c;
        match &first {
            None => first = Some(by_id),
            Some(f) => assert_eq!(f, &by_id),
        }
    }
    assert_eq!(created, 500, "each learner created exactly once across the calls");
    assert_eq!(app.count("SELECT count(*) FROM learners").await, 500);
}
