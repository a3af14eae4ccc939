//! Suppression after erasure: an erased learner is not collected again through
//! any ingest path (pseudonym API, `/v1/events`, xAPI) until a DPO lifts it.
mod common;

use common::spine::records_of;
use common::TestApp;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const EXT: &str = "edx-erased-7731";

async fn wait_job(app: &TestApp, id: &str) -> Value {
    for _ in 0..300 {
        let (s, job) = app.get(&format!("/v1/dsr/jobs/{id}"), &app.dpo("uni-a")).await;
        assert_eq!(s, StatusCode::OK, "{job}");
        if job["state"] == "done" || job["state"] == "failed" {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {id} did not finish");
}

fn event(learner: Value) -> Value {
    json!({
        "event_id": uuid::Uuid::new_v4(), "event_version": "2.3", "event_type": "content.view", "learner": learner,
        "session_id": "s-1", "course_id": "cs101", "content_id": "video-1", "cohort_id": "c1",
        "institution_id": "uni-a", "position_sec": 12, "client_ts": chrono::Utc::now().timestamp_millis(), "props": {"player": "web"}
    })
}

fn statement() -> Value {
    let path = format!("{}/tests/fixtures/xapi/openedx_video_played.json", env!("CARGO_MANIFEST_DIR"));
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["actor"]["account"]["name"] = json!(EXT);
    v["id"] = json!(uuid::Uuid::new_v4());
    v
}

#[tokio::test]
async fn an_erased_learner_is_refused_on_every_ingest_path_until_a_dpo_lifts_it() {
    let app = TestApp::spawn_with_warehouse().await;
    let gw = app.gateway(app.settings.clone()).await;
    let lms = app.lms("uni-a");
    let a = app.issue("uni-a", EXT, json!({"name": "Ada Erased"})).await;
    let (s, job) = app.post("/v1/dsr/erasure", &app.dpo("uni-a"), json!({"pseudonym": a, "reference": "CASE-1"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    let job = wait_job(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["result"]["certificate"]["certificate"]["vault"]["collection_suppressed"], json!(true));
    // The tombstone keeps a blind index (32 bytes), never the external id.
    let kept: Option<Vec<u8>> = sqlx::query_scalar("SELECT blind_index FROM tombstones WHERE pseudonym = $1::uuid").bind(&a).fetch_one(&app.admin).await.unwrap();
    assert_eq!(kept.map(|b| b.len()), Some(32));

    // 1. The pseudonym API: single (410 erased) and batch (per item).
    let (s, v) = app.post("/v1/pseudonyms", &lms, json!({"institution": "uni-a", "external_id": EXT})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::GONE, Some("erased")), "{v}");
    let (s, v) = app
        .post("/v1/pseudonyms/batch", &lms, json!({"items": [{"institution": "uni-a", "external_id": EXT}, {"institution": "uni-a", "external_id": "S-NEW"}]}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["results"][0]["error"]["code"], json!("erased"), "{v}");
    assert!(v["results"][0]["pseudonym"].is_null(), "{v}");
    assert!(v["results"][1]["pseudonym"].is_string(), "{v}");

    // 2. /v1/events naming the learner by external id: refused `erased`.
    let (s, v) = gw.post("/v1/events", &lms, json!([event(json!({"institution": "uni-a", "external_id": EXT}))])).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["rejected"].as_u64(), v["results"][0]["code"].as_str()), (Some(1), Some("erased")), "{v}");

    // 3. xAPI: the statement is acknowledged (the LRS contract) but refused: dead-lettered `erased`.
    let resp = gw
        .client
        .post(format!("{}/xapi/statements", gw.base))
        .bearer_auth(&lms)
        .header("X-Experience-API-Version", "1.0.3")
        .json(&statement())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // Nobody was issued a pseudonym for the erased learner, nothing reached the events topic,
    // and both refusals are dead letters without identity or pseudonym.
    assert_eq!(app.count("SELECT count(*) FROM learners").await, 1, "only S-NEW");
    assert!(records_of(&app.settings.kafka.brokers, &app.settings.kafka.events_topic, Duration::from_secs(2)).await.is_empty());
    let dead = records_of(&app.settings.kafka.brokers, &app.settings.kafka.dlq_topic, Duration::from_secs(2)).await;
    let reasons: Vec<String> = dead.iter().map(|(_, v)| serde_json::from_slice::<Value>(v).unwrap()["reason"].as_str().unwrap().to_owned()).collect();
    assert_eq!(reasons, ["erased", "erased"], "{reasons:?}");
    for (k, v) in &dead {
        assert!(k.is_empty(), "a refused erased learner's dead letter has no key");
        let text = String::from_utf8_lossy(v);
        assert!(!text.contains(EXT) && !text.contains(&a), "{text}");
    }
    // The refusals at the pseudonym API are audited.
    assert!(app.denials("erased_suppressed").await >= 2);

    // A DPO lifts it: a declared purpose and a justification, audited; then the learner is collected again.
    let dpo = app.dpo("uni-a");
    let lift = |purpose: &str, justification: &str| json!({"institution": "uni-a", "external_id": EXT, "purpose": purpose, "justification": justification});
    let (s, v) = app.post("/v1/dsr/suppressions/lift", &lms, lift("re_enrolment", "CASE-2")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = app.post("/v1/dsr/suppressions/lift", &dpo, lift("curiosity", "CASE-2")).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("unknown_purpose")), "{v}");
    let (s, v) = app.post("/v1/dsr/suppressions/lift", &dpo, lift("re_enrolment", " ")).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("justification_required")), "{v}");
    let (s, v) = app.post("/v1/dsr/suppressions/lift", &dpo, lift("re_enrolment", "CASE-2: re-enrolled, consent on file")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["lifted"], json!([a]));
    let (s, v) = app.post("/v1/dsr/suppressions/lift", &dpo, lift("re_enrolment", "again")).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_suppressed")), "{v}");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM audit_log WHERE action = 'suppression.lift' AND outcome = 'success' AND target_pseudonym = '{a}'
             AND purpose = 're_enrolment' AND justification LIKE 'CASE-2%'"
        ))
        .await,
        1
    );
    let (s, v) = app.post("/v1/pseudonyms", &lms, json!({"institution": "uni-a", "external_id": EXT})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_ne!(v["pseudonym"], json!(a), "a new pseudonym, never the erased one");
}

#[tokio::test]
async fn without_suppression_in_the_policy_the_tombstone_keeps_no_index() {
    let dir = std::env::temp_dir().join(format!("lv-policies-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let copy = std::process::Command::new("cp").arg("-r").arg(format!("{}/.", src.display())).arg(&dir).status().unwrap();
    assert!(copy.success());
    std::fs::write(dir.join("erasure.yaml"), "suppression:\n  enabled: false\n").unwrap();
    let app = TestApp::spawn_with_warehouse_tweaked(|s| s.policy_dir = dir.clone()).await;
    let a = app.issue("uni-a", EXT, json!({})).await;
    let (_, job) = app.post("/v1/dsr/erasure", &app.dpo("uni-a"), json!({"pseudonym": a})).await;
    let job = wait_job(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(app.count("SELECT count(*) FROM tombstones WHERE blind_index IS NOT NULL OR suppressed").await, 0);
    let (s, v) = app.post("/v1/pseudonyms", &app.lms("uni-a"), json!({"institution": "uni-a", "external_id": EXT})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}
