mod common;

use common::TestApp;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn consent_is_per_purpose_with_append_only_history() {
    let app = TestApp::spawn().await;
    let p = app.issue("uni-a", "S-1", json!({})).await;
    let path = format!("/v1/pseudonyms/{p}/consent");
    let lms = app.lms("uni-a");
    let (s, v) = app.get(&path, &lms).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["current"], json!([]), "never decided = nothing granted");

    let (s, _) = app.send("PUT", &path, Some(&lms), Some(json!({"consents": {"analytics": true, "research": false}}))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = app.send("PUT", &path, Some(&lms), Some(json!({"consents": {"analytics": false, "recommendations": true}}))).await;
    assert_eq!(s, StatusCode::OK);
    let current: Vec<(String, bool)> = v["current"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["purpose"].as_str().unwrap().to_owned(), c["granted"].as_bool().unwrap()))
        .collect();
    assert_eq!(current, [("analytics".into(), false), ("recommendations".into(), true), ("research".into(), false)]);
    assert_eq!(v["history"].as_array().unwrap().len(), 4, "history keeps every decision");

    // The DPO reads it too; reads are audited.
    let (s, v) = app.get(&path, &app.dpo("uni-a")).await;
    assert_eq!((s, v["history"].as_array().map(Vec::len)), (StatusCode::OK, Some(4)));
    assert_eq!(app.count("SELECT count(*) FROM audit_log WHERE action = 'consent.read'").await, 2);
    assert_eq!(app.count("SELECT count(*) FROM audit_log WHERE action = 'consent.write'").await, 2);

    // Bad input and foreign principals.
    let (s, v) = app.send("PUT", &path, Some(&lms), Some(json!({"consents": {"marketing": true}}))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("unknown_purpose")));
    let (s, v) = app.send("PUT", &path, Some(&lms), Some(json!({"consents": {}}))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("empty_consent")));
    let (s, _) = app.send("PUT", &path, Some(&app.lms("uni-b")), Some(json!({"consents": {"analytics": true}}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app.send("PUT", &path, Some(&app.dpo("uni-a")), Some(json!({"consents": {"analytics": true}}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "DPOs read consent, LMSs record it");
    assert_eq!(app.count("SELECT count(*) FROM consent_events").await, 4, "refused writes wrote nothing");
}
