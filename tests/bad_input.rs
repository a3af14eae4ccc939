//! Bad input: 4xx with a stable code, nothing written, no identity echoed.
mod common;

use common::TestApp;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn raw(app: &TestApp, path: &str, token: &str, content_type: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let resp = app
        .client
        .post(format!("{}{}", app.base, path))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let s = resp.status();
    (s, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn malformed_bodies_get_a_code_and_write_nothing() {
    let app = TestApp::spawn().await;
    let lms = app.lms("uni-a");
    let secret = "leaky.learner@example.edu";
    let cases: Vec<(&str, &str, Vec<u8>, StatusCode, &str)> = vec![
        ("/v1/pseudonyms", "application/json", b"{\"institution\": \"uni-a\", ".to_vec(), StatusCode::BAD_REQUEST, "invalid_json"),
        ("/v1/pseudonyms", "application/json", b"[1,2,3]".to_vec(), StatusCode::BAD_REQUEST, "invalid_body"),
        ("/v1/pseudonyms", "application/json", br#"{"institution": "uni-a"}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_body"),
        ("/v1/pseudonyms", "application/json", br#"{"institution": 5, "external_id": "x"}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_body"),
        ("/v1/pseudonyms", "application/json", format!(r#"{{"institution": "uni-a", "external_id": "x", "emial": "{secret}"}}"#).into_bytes(), StatusCode::BAD_REQUEST, "invalid_body"),
        ("/v1/pseudonyms", "application/json", format!(r#"{{"institution": "uni-a", "external_id": "x", "identity": "{secret}"}}"#).into_bytes(), StatusCode::BAD_REQUEST, "invalid_body"),
        ("/v1/pseudonyms", "application/json", br#"{"institution": "uni-a", "external_id": 9876543210}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_body"),
        ("/v1/pseudonyms", "text/plain", br#"{"institution": "uni-a", "external_id": "x"}"#.to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        ("/v1/pseudonyms", "application/json", format!(r#"{{"institution": "uni a", "external_id": "{secret}"}}"#).into_bytes(), StatusCode::BAD_REQUEST, "invalid_institution"),
        ("/v1/pseudonyms", "application/json", format!(r#"{{"institution": "uni-a", "external_id": "{}"}}"#, "x".repeat(300)).into_bytes(), StatusCode::BAD_REQUEST, "invalid_external_id"),
        ("/v1/pseudonyms", "application/json", format!(r#"{{"institution": "uni-a", "external_id": "x", "identity": {{"bio": "{}"}}}}"#, "y".repeat(9000)).into_bytes(), StatusCode::BAD_REQUEST, "invalid_identity"),
        ("/v1/pseudonyms", "application/json", format!(r#"{{"institution": "uni-a", "external_id": "x", "identity": {{"bio": "{}"}}}}"#, "y".repeat(70_000)).into_bytes(), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        ("/v1/pseudonyms/batch", "application/json", b"{\"items\": [".to_vec(), StatusCode::BAD_REQUEST, "invalid_json"),
        ("/v1/pseudonyms/batch", "application/json", br#"{"items": {}}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_body"),
        ("/v1/pseudonyms/batch", "application/json", vec![b' '; 17 * 1024 * 1024], StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
    ];
    for (path, ct, body, status, code) in cases {
        let (s, v) = raw(&app, path, &lms, ct, body).await;
        assert_eq!(s, status, "{path} {code}: {v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(!v.to_string().contains(secret), "error echoes an identity: {v}");
        assert!(!v.to_string().contains("9876543210"), "error echoes an LMS id: {v}");
    }
    assert_eq!(app.count("SELECT count(*) FROM learners").await, 0, "nothing written");
    assert_eq!(app.count("SELECT count(*) FROM institutions").await, 0);
}

#[tokio::test]
async fn bad_paths_and_unknown_routes_get_codes() {
    let app = TestApp::spawn().await;
    let dpo = app.dpo("uni-a");
    let (s, v) = app.post("/v1/pseudonyms/not-a-uuid/resolve", &dpo, json!({"purpose": "safeguarding", "justification": "x"})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_pseudonym")));
    let (s, v) = app.get("/v1/pseudonyms/1234/consent", &app.lms("uni-a")).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_pseudonym")));
    let (s, v) = app.get("/v1/nothing-here", &dpo).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("route_not_found")));
    let (s, v) = app.get(&format!("/v1/pseudonyms/{}/consent", uuid::Uuid::new_v4()), &app.lms("uni-a")).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("unknown_pseudonym")));
}
