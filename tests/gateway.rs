//! The ingest gateway on real Apache Kafka, PostgreSQL and the embedded engine:
//! `/v1/events` and `/xapi/statements` pseudonymise at the gate, and no actor
//! identifier ever reaches Kafka or ClickHouse.
mod common;

use common::spine::{events_of, num, Broker, Spine};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

use common::spine::{xapi_fixture as fixture, XAPI_EXT as EXT};

async fn xapi(app: &common::TestApp, token: &str, body: &Value, version: Option<&str>) -> (StatusCode, Value) {
    let mut req = app.client.post(format!("{}/xapi/statements", app.base)).bearer_auth(token).json(body);
    if let Some(v) = version {
        req = req.header("X-Experience-API-Version", v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn event(learner: Value, event_type: &str) -> Value {
    let mut e = json!({
        "event_id": uuid::Uuid::new_v4(), "event_version": "2.3", "event_type": event_type,
        "session_id": "s-1", "course_id": "course-v1:LearnX+BIO101+2025_T1", "content_id": "video-1", "cohort_id": "c1",
        "institution_id": "uni-a", "position_sec": 12, "client_ts": chrono::Utc::now().timestamp_millis(), "props": {"player": "web"}
    });
    match learner {
        Value::String(p) => e["learner_id"] = json!(p),
        l => e["learner"] = l,
    }
    e
}

#[tokio::test]
async fn one_learner_three_ways_lands_under_one_pseudonym_and_no_identifier_reaches_kafka_or_clickhouse() {
    let (spine, gw, lms) = Spine::with_gateway(true).await;
    let lander = spine.start_lander().await;

    // 1. /v1/events naming the learner by external id.
    let by_id = json!({"institution": "uni-a", "external_id": EXT});
    let (s, v) = gw.post("/v1/events", &lms, json!([event(by_id.clone(), "session.start"), event(by_id, "content.view")])).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["accepted"], json!(2), "{v}");

    // 2. xAPI statements as Open edX emits them, with the same learner's account.
    let statements = json!([
        fixture("openedx_video_played"),
        fixture("openedx_video_paused"),
        fixture("openedx_video_seeked"),
        fixture("openedx_problem_check"),
        fixture("openedx_video_completed"),
    ]);
    let (s, ids) = xapi(&gw, &lms, &statements, Some("1.0.3")).await;
    assert_eq!(s, StatusCode::OK, "{ids}");
    assert_eq!(ids.as_array().unwrap().len(), 5);
    assert_eq!(ids[0], statements[0]["id"]);
    // PUT with a statement id.
    let mut one = fixture("openedx_video_played");
    let put_id = uuid::Uuid::new_v4();
    one.as_object_mut().unwrap().remove("id");
    let resp = gw
        .client
        .put(format!("{}/xapi/statements?statementId={put_id}", gw.base))
        .bearer_auth(&lms)
        .header("X-Experience-API-Version", "1.0.3")
        .json(&one)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    // 3. The pseudonym issued to the LMS for the same learner.
    let p = gw.issue("uni-a", EXT, json!({"name": "Ada Lovelace"})).await;
    let (s, v) = gw.post("/v1/events", &lms, json!([event(json!(p), "session.heartbeat")])).await;
    assert_eq!((s, v["accepted"].clone()), (StatusCode::OK, json!(1)), "{v}");

    let landed = spine.wait_rows(9, Duration::from_secs(30)).await;
    assert_eq!(landed, 9);
    assert_eq!(spine.count("SELECT uniqExact(learner_id) AS n FROM events.learning_events").await, 1);
    assert_eq!(spine.count(&format!("SELECT count() AS n FROM events.learning_events WHERE learner_id = '{p}'")).await, 9);
    // xAPI verbs became taxonomy events with the content, course and position of the statement.
    let rows = spine
        .wh
        .query(
            "SELECT event_type, content_id, course_id, position_sec, props['xapi_verb'] AS verb, event_id FROM events.learning_events
             WHERE props['xapi_verb'] != '' ORDER BY event_type",
            &[],
        )
        .await
        .unwrap();
    let by_verb = |v: &str| rows.iter().find(|r| r["verb"].as_str().unwrap().ends_with(v)).unwrap_or_else(|| panic!("{v} not landed: {rows:?}")).clone();
    assert_eq!(by_verb("/played")["event_type"], "content.start");
    assert_eq!(by_verb("/paused")["event_type"], "interact.pause");
    let seeked = by_verb("/seeked");
    assert_eq!(seeked["event_type"], "interact.replay");
    assert_eq!(seeked["position_sec"], json!(10));
    assert!(seeked["content_id"].as_str().unwrap().contains("block-v1:LearnX+BIO101"), "{seeked}");
    assert_eq!(seeked["course_id"], "course-v1:LearnX+BIO101+2025_T1");
    // Open edX sends a problem check as acrossx `evaluated`: an assessment score.
    assert_eq!(by_verb("/evaluated")["event_type"], "assess.score");
    assert_eq!(by_verb("/completed")["event_type"], "content.complete");
    assert!(rows.iter().any(|r| r["event_id"] == json!(put_id.to_string())), "the PUT statement id is the event id");

    // No actor identifier anywhere: every message of both topics, every row of every table.
    let mut seen = spine.scan(&spine.settings.kafka.events_topic, Duration::from_secs(3)).await;
    assert_eq!(events_of(&seen).len(), 9, "{seen:?}");
    seen.extend(spine.scan(&spine.settings.kafka.dlq_topic, Duration::from_secs(2)).await);
    for m in &seen {
        assert!(!m.contains(EXT), "identifier in Kafka: {m}");
    }
    for t in ["events.learning_events", "agg.learner_daily_activity", "agg.funnel_by_cohort", "agg.content_replays_daily", "agg.engagement_per_minute"] {
        let dump = spine.wh.raw(&format!("SELECT * FROM {t}"), "JSONEachRow", &[]).await.unwrap();
        assert!(!String::from_utf8_lossy(&dump).contains(EXT), "identifier in {t}");
    }
    lander.stop().await;
}

#[tokio::test]
async fn invalid_xapi_is_refused_with_400_and_nothing_is_produced() {
    let (spine, gw, lms) = Spine::with_gateway(false).await;
    let good = fixture("openedx_video_played");
    let (s, v) = xapi(&gw, &lms, &good, None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("xapi_version")), "{v}");
    let (s, _) = xapi(&gw, &lms, &good, Some("0.95")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    for name in ["invalid_missing_actor", "invalid_missing_verb", "invalid_missing_object", "invalid_wrong_types", "invalid_two_ifis", "invalid_bad_id"] {
        let (s, v) = xapi(&gw, &lms, &fixture(name), Some("1.0.3")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{name}: {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}: {v}");
    }
    // A structurally unusable statement (no verb) in a batch refuses the batch.
    let (s, _) = xapi(&gw, &lms, &json!([good.clone(), fixture("invalid_missing_verb")]), Some("1.0.3")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Not JSON at all.
    let resp = gw.client.post(format!("{}/xapi/statements", gw.base)).bearer_auth(&lms).header("X-Experience-API-Version", "1.0.3").body("{nope").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // An LMS token for several institutions cannot say whose statements these are.
    let multi = gw.token("lms-multi", &["lms"], &["uni-a", "uni-b"]);
    let (s, v) = xapi(&gw, &multi, &good, Some("1.0.3")).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("institution_ambiguous")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(spine.messages_in(&spine.settings.kafka.events_topic), 0);
    assert_eq!(spine.messages_in(&spine.settings.kafka.dlq_topic), 0);
    assert_eq!(gw.count("SELECT count(*) FROM learners").await, 0, "no pseudonym issued for a refused request");
}

#[tokio::test]
async fn events_are_refused_one_by_one_with_reasons_and_dead_lettered_without_identity() {
    let (spine, gw, lms) = Spine::with_gateway(false).await;
    let erased = gw.issue("uni-a", "S-GONE", json!({"name": "Gone"})).await;
    sqlx::query("INSERT INTO tombstones (pseudonym, institution_id, request_id) VALUES ($1::uuid, 'uni-a', gen_random_uuid())")
        .bind(&erased)
        .execute(&gw.admin)
        .await
        .unwrap();
    let who = |ext: &str| json!({"institution": "uni-a", "external_id": ext});
    let mut skewed = event(who("S-1"), "session.heartbeat");
    skewed["client_ts"] = json!(chrono::Utc::now().timestamp_millis() - 20 * 60 * 1000);
    let mut bad_version = event(who("S-2"), "content.view");
    bad_version["event_version"] = json!("9.9");
    let mut protected = event(who("S-3"), "content.view");
    protected["props"] = json!({"Gender": "f"});
    let mut other_inst = event(json!({"institution": "uni-b", "external_id": "S-4"}), "content.view");
    other_inst["institution_id"] = json!("uni-b");
    let bad_learner = event(json!({"institution": "uni-a"}), "content.view");
    let batch = json!([skewed, bad_version, protected, event(json!(erased), "content.view"), event(json!(uuid::Uuid::new_v4()), "content.view"), other_inst, bad_learner]);
    let (s, v) = gw.post("/v1/events", &lms, batch).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let codes: Vec<&str> = v["results"].as_array().unwrap().iter().map(|r| r["code"].as_str().unwrap_or(r["status"].as_str().unwrap())).collect();
    assert_eq!(
        codes,
        ["accepted", "unknown_version", "protected_attribute", "erased_subject", "unknown_pseudonym", "institution_not_allowed", "schema_violation"]
    );
    // NDJSON with an unparseable line: that line is refused, the others go through.
    let good = serde_json::to_string(&event(who("S-5"), "content.start")).unwrap();
    let body = format!("{good}\n{{not json\n{good}\n");
    let resp = gw.client.post(format!("{}/v1/events", gw.base)).bearer_auth(&lms).header("content-type", "application/x-ndjson").body(body).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    assert_eq!((v["accepted"].clone(), v["rejected"].clone()), (json!(2), json!(1)), "{v}");
    assert_eq!(v["results"][1]["code"], "invalid_json");

    // Dead letters carry the reason and no identity.
    let dl = spine.dead_letters(7, Duration::from_secs(10)).await;
    assert_eq!(dl.len(), 7, "{dl:?}");
    let text = serde_json::to_string(&dl).unwrap();
    for ext in ["S-1", "S-2", "S-3", "S-4", "S-5", "\"f\""] {
        assert!(!text.contains(ext), "{ext} in dead letters: {text}");
    }
    let raw = spine.records(&spine.settings.kafka.events_topic, Duration::from_secs(2)).await;
    let records = common::spine::as_text(&raw);
    let accepted = events_of(&records);
    assert_eq!(accepted.len(), 3, "{records:?}");
    // The two NDJSON events of one learner travelled in one envelope record.
    assert_eq!(records.len(), 2, "{records:?}");
    // Each envelope is a zstd frame on the wire (the default `envelope_compression`).
    assert!(raw.iter().all(|(_, v)| v.starts_with(&learnvault::envelope::ZSTD_MAGIC)), "{raw:?}");
    assert!(accepted.iter().any(|e| e["props"]["clock_skew_ms"].is_string()), "{accepted:?}");

    // Limits: too many events, too large a body.
    let many: Vec<Value> = (0..gw.settings.gateway.ingest_max_events + 1).map(|_| json!({})).collect();
    let (s, v) = gw.post("/v1/events", &lms, json!(many)).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("batch_too_large")));
    let huge = "x".repeat(gw.settings.api.batch_body_limit_bytes + 1);
    let resp = gw.client.post(format!("{}/v1/events", gw.base)).bearer_auth(&lms).header("content-type", "application/json").body(huge).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Only LMS tokens may send events.
    let (s, _) = gw.post("/v1/events", &gw.auditor(), json!([event(who("S-1"), "content.view")])).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(num(&json!(spine.messages_in(&spine.settings.kafka.events_topic))), 2, "no record added by refused requests");
}


#[tokio::test]
async fn broker_outage_answers_503_with_retry_and_recovers() {
    let mut broker = Broker::start_new();
    let spine = Spine::with_brokers(false, broker.brokers()).await;
    let mut settings = spine.settings.clone();
    settings.gateway.produce_timeout_ms = 2_000;
    let gw = spine.app.gateway(settings).await;
    let lms = gw.lms("uni-a");
    let who = json!({"institution": "uni-a", "external_id": "S-1"});
    let (s, v) = gw.post("/v1/events", &lms, json!([event(who.clone(), "content.view")])).await;
    assert_eq!((s, v["accepted"].clone()), (StatusCode::OK, json!(1)), "{v}");

    broker.kill();
    let resp = gw.client.post(format!("{}/v1/events", gw.base)).bearer_auth(&lms).json(&json!([event(who.clone(), "content.view")])).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers().get("retry-after").unwrap(), "1");
    let v: Value = resp.json().await.unwrap();
    assert_eq!((v["accepted"].clone(), v["results"][0]["status"].clone()), (json!(0), json!("unavailable")), "{v}");

    broker.start();
    let mut ok = false;
    for _ in 0..30 {
        let (s, v) = gw.post("/v1/events", &lms, json!([event(who.clone(), "content.view")])).await;
        if s == StatusCode::OK && v["accepted"] == json!(1) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(ok, "the gateway did not recover after the broker came back");
}

#[tokio::test]
async fn identifiers_in_refused_events_never_reach_the_dead_letter_topic() {
    let (spine, gw, lms) = Spine::with_gateway(true).await;
    let lander = spine.start_lander().await;
    let known = gw.issue("uni-a", "S-KNOWN-001", json!({})).await;

    // At the gateway: a learner_id that is an email; an extra `email` field; a phone number and
    // the request's own external id tucked into props of a refused (unknown field) event.
    let mut email_as_id = event(json!("ada@example.org"), "content.view");
    email_as_id["learner_id"] = json!("ada@example.org");
    let mut extra_field = event(json!(known), "content.view");
    extra_field["email"] = json!("grace@example.org");
    let mut props = event(json!({"institution": "uni-a", "external_id": "S-SECRET-9981"}), "content.view");
    props["props"] = json!({"note": "call +44 20 7946 0958", "student": "S-SECRET-9981"});
    props["nickname_field"] = json!("x");
    let (s, v) = gw.post("/v1/events", &lms, json!([email_as_id, extra_field, props])).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["rejected"], json!(3), "{v}");

    // At the lander: a third-party producer sends a record keyed by an email, with an email learner_id.
    let mut raw = common::spine::event("hedy@example.org", "content.view", "cs101", "c1", "uni-a");
    raw["props"] = json!({"contact": "hedy@example.org"});
    spine.produce_raw("hedy@example.org", &serde_json::to_vec(&raw).unwrap()).await;

    // Read back every dead letter with a Kafka consumer: no address, phone or external id anywhere
    // (payload, detail or key); the paths and reasons of what was redacted are kept.
    let dl = spine.dead_letters(4, Duration::from_secs(20)).await;
    assert_eq!(dl.len(), 4, "{dl:?}");
    let records = spine.records(&spine.settings.kafka.dlq_topic, Duration::from_secs(2)).await;
    assert_eq!(records.len(), 4);
    for (k, v) in &records {
        let text = format!("{}\t{}", String::from_utf8_lossy(k), String::from_utf8_lossy(v));
        for secret in ["ada@example.org", "grace@example.org", "hedy@example.org", "7946 0958", "S-SECRET-9981"] {
            assert!(!text.contains(secret), "{secret} in a dead letter: {text}");
        }
    }
    let paths: Vec<(String, String)> = dl
        .iter()
        .flat_map(|d| d["redacted"].as_array().cloned().unwrap_or_default())
        .map(|r| (r["path"].as_str().unwrap().to_owned(), r["reason"].as_str().unwrap().to_owned()))
        .collect();
    for want in [("$.learner_id", "not_a_pseudonym"), ("$.email", "identifier_field"), ("$.props.note", "phone"), ("$.props.student", "external_id"), ("$.props.contact", "email")] {
        assert!(paths.iter().any(|(p, r)| p == want.0 && r == want.1), "{want:?} not in {paths:?}");
    }
    // Keyed by the pseudonym when one is known, else no key.
    let keys: Vec<&Value> = dl.iter().map(|d| &d["_key"]).collect();
    let secret = gw.issue("uni-a", "S-SECRET-9981", json!({})).await;
    assert_eq!(keys.iter().filter(|k| **k == &json!(known)).count(), 1, "{keys:?}");
    assert_eq!(keys.iter().filter(|k| **k == &json!(secret)).count(), 1, "{keys:?}");
    assert_eq!(keys.iter().filter(|k| k.is_null()).count(), 2, "{keys:?}");
    lander.stop().await;
}

/// Issue 13, point 5: free strings and `props` of `/v1/events` that hold an email address, a
/// phone number or the request's own external id are refused per event (`identity_in_event`),
/// dead-lettered redacted, never landed; their valid neighbours land.
#[tokio::test]
async fn identities_in_free_strings_are_refused_per_event_and_never_land() {
    let (spine, gw, lms) = Spine::with_gateway(true).await;
    let lander = spine.start_lander().await;
    let who = json!({"institution": "uni-a", "external_id": "S-SCREEN-4410"});
    let mut note = event(who.clone(), "interact.pause");
    note["props"] = json!({"note": "call ada@example.org"});
    let mut phone = event(who.clone(), "interact.pause");
    phone["session_id"] = json!("+1 (555) 123-4567");
    let mut own_id = event(who.clone(), "interact.pause");
    own_id["props"] = json!({"comment": "re-sit for S-SCREEN-4410"});
    let mut field = event(who.clone(), "interact.pause");
    field["props"] = json!({"Student-ID": "x"});
    let mut fine = event(who, "interact.pause");
    fine["content_id"] = json!("block-v1:edX+DemoX+type@video+block@0b9e3947123456789a7a48f74be381fd");
    fine["props"] = json!({"duration_ms": "1764072000000", "score": "0.85"});
    let (s, v) = gw.post("/v1/events", &lms, json!([note, phone, own_id, field, fine])).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["accepted"], json!(1), "{v}");
    let results = v["results"].as_array().unwrap();
    for (i, field) in [(0, "props.note"), (1, "session_id"), (2, "props.comment"), (3, "props.Student-ID")] {
        assert_eq!(results[i]["code"], "identity_in_event", "{v}");
        let detail = results[i]["detail"].as_str().unwrap();
        assert!(detail.starts_with(field), "{detail}");
        for secret in ["ada@example.org", "555", "S-SCREEN-4410"] {
            assert!(!detail.contains(secret), "the refusal names the field, never the value: {detail}");
        }
    }
    assert_eq!(results[4]["status"], "accepted", "{v}");
    assert_eq!(spine.wait_rows(1, Duration::from_secs(30)).await, 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(spine.count("SELECT count() AS n FROM events.learning_events").await, 1, "only the clean event landed");
    let records = spine.records(&spine.settings.kafka.dlq_topic, Duration::from_secs(2)).await;
    assert_eq!(records.len(), 4, "each refused event is dead-lettered");
    for (k, v) in &records {
        let text = format!("{}\t{}", String::from_utf8_lossy(k), String::from_utf8_lossy(v));
        for secret in ["ada@example.org", "123-4567", "S-SCREEN-4410"] {
            assert!(!text.contains(secret), "{secret} in a dead letter: {text}");
        }
    }
    lander.stop().await;
}

/// A learner the vault knows costs the gateway one lookup and no issuance (nothing is audited
/// when nothing is issued), also after the institution's blind-index key version changed under
/// a running gateway: the lookup reports the current version and is repeated with it.
#[tokio::test]
async fn known_learners_are_found_without_issuance_also_after_the_key_version_changed() {
    let spine = Spine::new(true).await;
    let gw = spine.app.gateway(spine.settings.clone()).await;
    let lms = gw.lms("uni-a");
    let issuances = || gw.count("SELECT count(*) FROM audit_log WHERE action = 'pseudonym.issue'");
    let send = |ext: &str| {
        let body = json!([event(json!({"institution": "uni-a", "external_id": ext}), "session.start")]);
        async { gw.post("/v1/events", &lms, body).await }
    };

    let (s, v) = send("s-1001").await;
    assert_eq!((s, v["accepted"].clone()), (StatusCode::OK, json!(1)), "{v}");
    let first = issuances().await;
    assert_eq!(first, 1, "the first sight issues and audits");
    let (s, v) = send("s-1001").await;
    assert_eq!((s, v["accepted"].clone()), (StatusCode::OK, json!(1)), "{v}");
    assert_eq!(issuances().await, first, "a known learner is found, not issued");

    // The key version moves on; a learner issued now is indexed with version 2.
    sqlx::query("UPDATE institutions SET key_version = 2 WHERE id = 'uni-a'").execute(&gw.admin).await.unwrap();
    let p = gw.issue("uni-a", "s-1002", json!({"name": "Grace Hopper"})).await;
    let after_issue = issuances().await;
    assert_eq!(after_issue, first + 1);
    let (s, v) = send("s-1002").await;
    assert_eq!((s, v["accepted"].clone()), (StatusCode::OK, json!(1)), "{v}");
    assert_eq!(issuances().await, after_issue, "found with the current version's blind index, not issued again");
    let learners = gw.count(&format!("SELECT count(*) FROM learners WHERE pseudonym = '{p}'")).await;
    assert_eq!(learners, 1);
}
