mod common;

use common::TestApp;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn health_readiness_metrics_and_openapi() {
    let app = TestApp::spawn().await;
    let (s, v) = app.send("GET", "/healthz", None, None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (s, v) = app.send("GET", "/readyz", None, None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ready")));

    let p = app.issue("uni-a", "S-1", json!({"email": "metric.leak@example.edu"})).await;
    app.post(&format!("/v1/pseudonyms/{p}/resolve"), &app.dpo("uni-a"), json!({"purpose": "safeguarding", "justification": "x"})).await;
    let (s, metrics) = app.send("GET", "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let text = metrics.as_str().unwrap();
    assert!(text.contains("learnvault_http_requests_total"), "{text}");
    assert!(text.contains(r#"route="/v1/pseudonyms/{pseudonym}/resolve""#), "routes, not raw paths, label metrics");
    assert!(!text.contains(&p), "no pseudonym in metric labels");
    assert!(!text.contains("metric.leak@example.edu"));

    let (s, doc) = app.send("GET", "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/pseudonyms", "post"),
        ("/v1/pseudonyms/batch", "post"),
        ("/v1/pseudonyms/lookup", "post"),
        ("/v1/pseudonyms/{pseudonym}/resolve", "post"),
        ("/v1/pseudonyms/{pseudonym}/consent", "put"),
        ("/v1/pseudonyms/{pseudonym}/consent", "get"),
        ("/v1/audit", "get"),
        ("/v1/audit/verify", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} missing from the OpenAPI document");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

/// An API-only process (no warehouse, no broker) answers what needs them with 503 and the
/// capability's stable code, after authentication.
#[tokio::test]
async fn capabilities_this_process_lacks_answer_503_with_their_code() {
    let app = TestApp::spawn().await;
    let cases = [
        ("POST", "/v1/events", app.lms("uni-a"), Some(json!([])), "gateway_unavailable"),
        ("GET", "/v1/dsr/jobs", app.dpo("uni-a"), None, "warehouse_unavailable"),
        ("GET", "/v1/retention/report", app.dpo("uni-a"), None, "warehouse_unavailable"),
        ("GET", "/v1/courses/c-1/funnel", app.token("i-1", &["instructor"], &["uni-a"]), None, "warehouse_unavailable"),
        ("GET", "/v1/signals/queues/content_author/items", app.token("a-1", &["content_author"], &["uni-a"]), None, "signals_unavailable"),
    ];
    for (method, path, token, body, code) in cases {
        let (s, v) = app.send(method, path, None, body.clone()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}: {v}");
        let (s, v) = app.send(method, path, Some(&token), body).await;
        assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some(code)), "{path}: {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

/// A configuration section a part cannot run with fails the build, before any database work,
/// naming its setting (the lander's would otherwise be restarted forever by its supervisor).
#[tokio::test]
async fn an_invalid_section_fails_the_build_naming_its_setting() {
    use learnvault::app::{Application, Parts};
    let master = learnvault::vault::keys::MasterKey::generate();
    let mut unreachable = common::settings_for("none", &master);
    unreachable.database.url = "postgres://learnvault_app@127.0.0.1:1/none".into();
    unreachable.database.admin_url = "postgres://postgres@127.0.0.1:1/none".into();
    let mut lander = unreachable.clone();
    lander.lander.batch_rows = 0;
    let e = Application::build_with(lander, Parts::land()).await.err().expect("refused");
    assert!(format!("{e:#}").contains("LEARNVAULT_LANDER_BATCH_ROWS"), "{e:#}");
    let mut api = unreachable;
    api.gateway.ingest_max_events = 0;
    let e = Application::build_with(api, Parts::api_only()).await.err().expect("refused");
    assert!(format!("{e:#}").contains("LEARNVAULT_INGEST_MAX_EVENTS"), "{e:#}");
}
