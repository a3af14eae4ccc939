//! Subject access and erasure on the real engines: PostgreSQL (vault, jobs,
//! audit) and the embedded ClickHouse engine (events, rollups, features).
mod common;

use common::spine::num;
use common::TestApp;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

/// Land `n` events of each type in `types` for `learner`, half today and half 40 days ago
/// (two monthly partitions when today is past the 10th; always two distinct dates).
async fn land(app: &TestApp, learner: &str, cohort: &str, n: u32, types: &[&str]) {
    let sql = "INSERT INTO events.learning_events (server_ts, client_ts, event_id, event_version, event_type, learner_id, session_id,
                   course_id, content_id, cohort_id, institution_id, position_sec, props)
               SELECT ts, ts, generateUUIDv4(), '2.3', t, {l:UUID}, 's-1', 'cs101', 'video-7', {c:String}, 'uni-a', toUInt32(number % 600),
                      map('player', 'web')
               FROM (SELECT number, if(number % 2 = 0, now64(3), now64(3) - toIntervalDay(40)) AS ts FROM numbers({n:UInt32}))
               ARRAY JOIN {types:Array(String)} AS t";
    app.warehouse()
        .execute(
            sql,
            &[
                ("l", learner.to_owned()),
                ("c", cohort.to_owned()),
                ("n", n.to_string()),
                ("types", format!("{types:?}").replace('"', "'")),
            ],
        )
        .await
        .unwrap();
}

async fn ch(app: &TestApp, sql: &str, p: &str) -> u64 {
    let rows = app.warehouse().query(sql, &[("p", p.to_owned())]).await.unwrap();
    num(&rows[0]["n"])
}

/// Cohort funnel and per-minute engagement as the dashboards read them.
async fn dashboards(app: &TestApp) -> Value {
    let f = app
        .warehouse()
        .query(
            "SELECT cohort_id, uniqMerge(learners) AS enrolled, uniqMerge(started) AS started, uniqMerge(completed) AS completed
             FROM agg.funnel_by_cohort GROUP BY cohort_id ORDER BY cohort_id",
            &[],
        )
        .await
        .unwrap();
    let e = app
        .warehouse()
        .query("SELECT cohort_id, uniqMerge(active_learners) AS active FROM agg.engagement_per_minute GROUP BY cohort_id ORDER BY cohort_id", &[])
        .await
        .unwrap();
    let r = app
        .warehouse()
        .query("SELECT content_id, uniqMerge(learners) AS replayers FROM agg.content_replays_daily GROUP BY content_id", &[])
        .await
        .unwrap();
    json!({"funnel": f, "engagement": e, "replays": r})
}

/// The files of a subject-access archive (a tar), by path.
fn archive_files(tar: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in tar::Archive::new(tar).entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        files.insert(name, data);
    }
    files
}

/// One file of a subject-access archive as text ("" when the archive has no such file).
fn archive_text(tar: &[u8], path: &str) -> String {
    archive_files(tar).remove(path).map(|data| String::from_utf8(data).unwrap()).unwrap_or_default()
}

async fn wait_job(app: &TestApp, id: &str) -> Value {
    let dpo = app.dpo("uni-a");
    for _ in 0..300 {
        let (s, job) = app.get(&format!("/v1/dsr/jobs/{id}"), &dpo).await;
        assert_eq!(s, StatusCode::OK, "{job}");
        if job["state"] == "done" || job["state"] == "failed" {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {id} did not finish");
}

#[tokio::test]
async fn erasure_reaches_rows_rollups_and_the_vault_and_is_certified() {
    let app = TestApp::spawn_with_warehouse().await;
    let a = app.issue("uni-a", "S-A", json!({"name": "Ada Erased", "email": "ada@example.edu"})).await;
    let b = app.issue("uni-a", "S-B", json!({"name": "Bob Kept"})).await;
    let c = app.issue("uni-a", "S-C", json!({"name": "Cy Kept"})).await;
    let types = ["content.start", "content.complete", "interact.replay", "session.heartbeat", "session.start"];
    land(&app, &a, "c1", 20, &types).await;
    land(&app, &b, "c1", 20, &types).await;
    land(&app, &c, "c2", 10, &types).await;
    let (s, _) = app.send("PUT", &format!("/v1/pseudonyms/{a}/consent"), Some(&app.lms("uni-a")), Some(json!({"consents": {"research": true}}))).await;
    assert_eq!(s, StatusCode::OK);

    let before = dashboards(&app).await;
    assert_eq!(num(&before["funnel"][0]["enrolled"]), 2, "{before}");
    let others_rows = ch(&app, "SELECT count() AS n FROM events.learning_events WHERE learner_id != {p:UUID}", &a).await;
    let others_daily = ch(&app, "SELECT count() AS n FROM agg.learner_daily_activity WHERE learner_id != {p:UUID}", &a).await;
    assert_eq!(others_rows, 150);

    // Only a DPO of the learner's institution may ask.
    let (s, v) = app.post("/v1/dsr/erasure", &app.lms("uni-a"), json!({"pseudonym": a})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = app.post("/v1/dsr/erasure", &app.dpo("uni-b"), json!({"pseudonym": a})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = app.post("/v1/dsr/erasure", &app.dpo("uni-a"), json!({"pseudonym": a, "reference": "ada@example.edu"})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_reference")));

    let (s, job) = app.post("/v1/dsr/erasure", &app.dpo("uni-a"), json!({"pseudonym": a, "reference": "CASE-2026-17"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    // Asking again returns the same job.
    let (s, again) = app.post("/v1/dsr/erasure", &app.dpo("uni-a"), json!({"institution": "uni-a", "external_id": "S-A"})).await;
    assert_eq!((s, again["id"].as_str()), (StatusCode::OK, Some(id.as_str())), "{again}");

    let job = wait_job(&app, &id).await;
    assert_eq!(job["state"], "done", "{job}");

    // Every mapped ClickHouse table holds nothing of the subject; the others' rows are untouched.
    for t in ["events.learning_events", "agg.learner_daily_activity", "features.learner_engagement"] {
        assert_eq!(ch(&app, &format!("SELECT count() AS n FROM {t} WHERE learner_id = {{p:UUID}}"), &a).await, 0, "{t}");
    }
    assert_eq!(ch(&app, "SELECT count() AS n FROM events.learning_events WHERE learner_id != {p:UUID}", &a).await, others_rows);
    assert_eq!(ch(&app, "SELECT count() AS n FROM agg.learner_daily_activity WHERE learner_id != {p:UUID}", &a).await, others_daily);
    // Deleted physically, not only masked.
    assert_eq!(ch(&app, "SELECT count() AS n FROM events.learning_events SETTINGS apply_deleted_mask = 0", "").await, others_rows);

    // The superseded aggregate states are gone physically too (no masked rows left behind).
    for t in ["agg.funnel_by_cohort", "agg.engagement_per_minute", "agg.content_replays_daily"] {
        let all = ch(&app, &format!("SELECT count() AS n FROM {t} SETTINGS apply_deleted_mask = 0"), "").await;
        assert_eq!(all, ch(&app, &format!("SELECT count() AS n FROM {t}"), "").await, "{t} keeps masked rows");
    }
    // The rollups no longer count the learner (uniq states rebuilt), the other cohort is unchanged.
    let after = dashboards(&app).await;
    assert_eq!(num(&after["funnel"][0]["enrolled"]), 1, "{after}");
    assert_eq!(num(&after["funnel"][0]["completed"]), 1, "{after}");
    assert_eq!(after["funnel"][1], before["funnel"][1]);
    assert_eq!(num(&after["engagement"][0]["active"]), 1, "{after}");
    assert_eq!(after["engagement"][1], before["engagement"][1]);
    assert_eq!(num(&after["replays"][0]["replayers"]), 2, "{after}");

    // Vault: identity crypto-shredded, consent gone, tombstone kept; resolve says erased.
    assert_eq!(app.count(&format!("SELECT count(*) FROM learners WHERE pseudonym = '{a}'")).await, 0);
    assert_eq!(app.count(&format!("SELECT count(*) FROM consent_events WHERE pseudonym = '{a}'")).await, 0);
    assert_eq!(app.count(&format!("SELECT count(*) FROM tombstones WHERE pseudonym = '{a}'")).await, 1);
    assert_eq!(app.count("SELECT count(*) FROM learners").await, 2);

    // The certificate: signed, counts before and after, residual copies stated.
    let (s, cert) = app.get(&format!("/v1/dsr/jobs/{id}/certificate"), &app.auditor()).await;
    assert_eq!(s, StatusCode::OK, "{cert}");
    let (_, key) = app.send("GET", "/v1/dsr/certificate-key", None, None).await;
    let key = key["public_key"].as_str().unwrap();
    let body = learnvault::dsr::certificate::verify(&cert, key).expect("valid signature");
    assert_eq!(body["subject"]["pseudonym"], json!(a));
    let stores: BTreeMap<String, Value> =
        body["stores"].as_array().unwrap().iter().map(|s| (s["store"].as_str().unwrap().to_owned(), s.clone())).collect();
    assert_eq!(stores["clickhouse:events.learning_events"]["rows_before"], json!(100));
    assert_eq!(stores["clickhouse:events.learning_events"]["rows_after"], json!(0));
    assert_eq!(stores["postgres:learners"]["rows_before"], json!(1));
    assert_eq!(stores["postgres:learners"]["rows_after"], json!(0));
    assert_eq!(stores["postgres:consent_events"]["rows_after"], json!(0));
    assert_eq!(stores["clickhouse:agg.funnel_by_cohort"]["verified_equal_to_fresh_computation"], json!(true));
    let residual: Vec<&str> = body["residual_copies"].as_array().unwrap().iter().map(|r| r["store"].as_str().unwrap()).collect();
    for r in ["kafka:learning-events", "kafka:learning-events.dlq", "postgres:audit_log", "postgres:tombstones"] {
        assert!(residual.contains(&r), "{r} missing from {residual:?}");
    }
    let mut forged = cert.clone();
    forged["certificate"]["stores"][0]["rows_after"] = json!(0);
    forged["certificate"]["subject"]["pseudonym"] = json!(b);
    assert!(learnvault::dsr::certificate::verify(&forged, key).is_err());

    // The CLI verifies the file against this deployment's key.
    let file = std::env::temp_dir().join(format!("cert-{id}.json"));
    std::fs::write(&file, serde_json::to_vec_pretty(&cert).unwrap()).unwrap();
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_learnvault"))
        .args(["dsr", "verify-certificate", file.to_str().unwrap(), "--public-key", key])
        .env("LEARNVAULT_LOG", "warn")
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    std::fs::write(&file, serde_json::to_vec_pretty(&forged).unwrap()).unwrap();
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_learnvault"))
        .args(["dsr", "verify-certificate", file.to_str().unwrap(), "--public-key", key])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));

    // Audited: the request by the DPO, the completion by the worker; the chain holds.
    assert_eq!(app.count(&format!("SELECT count(*) FROM audit_log WHERE action = 'dsr.erasure.request' AND target_pseudonym = '{a}'")).await, 1);
    assert_eq!(app.count(&format!("SELECT count(*) FROM audit_log WHERE action = 'dsr.erasure.complete' AND target_pseudonym = '{a}'")).await, 1);
    assert_eq!(app.verify().await["intact"], json!(true));
    // DPOs can alert on open and overdue requests.
    let metrics = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("learnvault_dsr_jobs_open{kind=\"erasure\"}"), "{metrics}");
    assert!(metrics.contains("learnvault_dsr_jobs_overdue"), "{metrics}");
    assert!(metrics.contains("learnvault_dsr_jobs_total{kind=\"erasure\",outcome=\"done\"} 1"), "{metrics}");
    // Nothing in the job record or the certificate names the learner.
    let text = format!("{job}{cert}");
    assert!(!text.contains("Ada") && !text.contains("ada@example.edu") && !text.contains("S-A"));
}

/// No cohort view outlives an erasure: the read path keeps the rows of a view warm for
/// minutes (`stale_query_ms`), and a dashboard read just before an erasure must not show
/// the erased learner just after it.
#[tokio::test]
async fn cohort_views_read_before_an_erasure_are_not_served_after_it() {
    let app = TestApp::spawn_with_warehouse().await;
    let types = ["session.start", "content.start"];
    let mut learners = Vec::new();
    for i in 0..12 {
        let p = app.issue("uni-a", &format!("S-{i}"), json!({"name": format!("Learner {i}")})).await;
        land(&app, &p, "c1", 2, &types).await;
        learners.push(p);
    }
    let serve = app.state.serve.clone().expect("the read path");
    let course = learnvault::serve::Ident::parse("course_id", "cs101").unwrap();
    let t = serve.thresholds(&["uni-a".to_owned()]);
    let range = serve.range(None, None).unwrap();
    let enrolled = |f: &Value| f["total"]["enrolled"]["value"].clone();
    let before = serde_json::to_value(serve.funnel(&course, &range, &t).await.unwrap()).unwrap();
    assert_eq!(enrolled(&before), json!(12), "{before}");

    let (s, job) = app.post("/v1/dsr/erasure", &app.dpo("uni-a"), json!({"pseudonym": learners[0]})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    let job = wait_job(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "done", "{job}");
    let after = serde_json::to_value(serve.funnel(&course, &range, &t).await.unwrap()).unwrap();
    assert_eq!(enrolled(&after), json!(11), "the view read before the erasure was served after it: {after}");
}

#[tokio::test]
async fn a_job_that_died_mid_way_resumes_at_its_step() {
    let app = TestApp::spawn_with_warehouse().await;
    let a = app.issue("uni-a", "S-A", json!({"name": "Ada"})).await;
    let b = app.issue("uni-a", "S-B", json!({"name": "Bob"})).await;
    land(&app, &a, "c1", 10, &["content.start", "session.heartbeat"]).await;
    land(&app, &b, "c1", 10, &["content.start", "session.heartbeat"]).await;
    // A worker tombstoned the subject, recorded its counts, deleted its base rows, and died
    // before rebuilding the rollups: its lease has expired, its step is `recompute`.
    app.warehouse()
        .execute("ALTER TABLE events.learning_events DELETE WHERE learner_id = {p:UUID} SETTINGS mutations_sync = 2", &[("p", a.clone())])
        .await
        .unwrap();
    app.warehouse()
        .execute("ALTER TABLE agg.learner_daily_activity DELETE WHERE learner_id = {p:UUID} SETTINGS mutations_sync = 2", &[("p", a.clone())])
        .await
        .unwrap();
    let parts: Vec<String> = app
        .warehouse()
        .query("SELECT DISTINCT _partition_id AS id FROM agg.funnel_by_cohort", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    sqlx::query("INSERT INTO tombstones (pseudonym, institution_id, request_id) VALUES ($1::uuid, 'uni-a', gen_random_uuid())")
        .bind(&a)
        .execute(&app.admin)
        .await
        .unwrap();
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO dsr_jobs (id, kind, pseudonym, institution_id, requested_by, request_id, state, step, progress, attempts, lease_until, deadline)
         VALUES ($1, 'erasure', $2::uuid, 'uni-a', 'dpo-test', gen_random_uuid(), 'running', 'recompute', $3, 1, now() - interval '1 second', now() + interval '30 days')",
    )
    .bind(id)
    .bind(&a)
    .bind(json!({"before": {"clickhouse:events.learning_events": 20}, "partitions": parts, "tombstoned_at": "2026-11-25T00:00:00Z"}))
    .execute(&app.admin)
    .await
    .unwrap();
    assert_eq!(num(&dashboards(&app).await["funnel"][0]["enrolled"]), 2, "the rollup still counts the erased learner");

    let job = wait_job(&app, &id.to_string()).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["attempts"], json!(2));
    assert_eq!(num(&dashboards(&app).await["funnel"][0]["enrolled"]), 1);
    assert_eq!(app.count(&format!("SELECT count(*) FROM learners WHERE pseudonym = '{a}'")).await, 0);
    assert_eq!(app.count(&format!("SELECT count(*) FROM learners WHERE pseudonym = '{b}'")).await, 1);
}

#[tokio::test]
async fn subject_access_archive_holds_everything_about_the_subject_and_nothing_else() {
    let app = TestApp::spawn_with_warehouse().await;
    let a = app.issue("uni-a", "S-A", json!({"name": "Ada Lovelace", "email": "ada@example.edu"})).await;
    let b = app.issue("uni-a", "S-B", json!({"name": "Bob Other"})).await;
    land(&app, &a, "c1", 30, &["content.start", "session.heartbeat", "assess.submit"]).await;
    land(&app, &b, "c1", 30, &["content.start", "session.heartbeat"]).await;
    // A signal about each learner (issue 15: signals are the subject's data too, in their access export).
    for (learner, kind) in [(&a, "disengagement"), (&b, "disengagement"), (&a, "integrity")] {
        app.warehouse()
            .execute(
                "INSERT INTO signals.findings (event_date, detected_at, finding_id, kind, learner_id, institution_id, course_id, content_id,
                        cohort_id, statistic, baseline, band_lo, band_hi, route, evidence)
                 VALUES (today(), now64(3), generateUUIDv4(), {k:String}, {l:UUID}, 'uni-a', 'course-1', '', 'c1', 0.001, 0.4, 0.2, 0.6, 'advisor', '{}')",
                &[("k", kind.to_string()), ("l", learner.to_string())],
            )
            .await
            .unwrap();
    }
    let (s, _) = app.send("PUT", &format!("/v1/pseudonyms/{a}/consent"), Some(&app.lms("uni-a")), Some(json!({"consents": {"research": true}}))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.send("PUT", &format!("/v1/pseudonyms/{a}/consent"), Some(&app.lms("uni-a")), Some(json!({"consents": {"research": false}}))).await;
    assert_eq!(s, StatusCode::OK);

    let (s, v) = app.post("/v1/dsr/access", &app.auditor(), json!({"pseudonym": a})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = app.post("/v1/dsr/access", &app.dpo("uni-a"), json!({"institution": "uni-a", "external_id": "S-NOPE"})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("unknown_learner")));
    let (s, job) = app.post("/v1/dsr/access", &app.dpo("uni-a"), json!({"institution": "uni-a", "external_id": "S-A", "reference": "SAR-9"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    assert!(job["deadline"].as_str().unwrap() > job["requested_at"].as_str().unwrap());
    let id = job["id"].as_str().unwrap().to_owned();
    let job = wait_job(&app, &id).await;
    assert_eq!(job["state"], "done", "{job}");

    let resp = app.client.get(format!("{}/v1/dsr/jobs/{id}/archive", app.base)).bearer_auth(app.dpo("uni-a")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.bytes().await.unwrap();
    let files = archive_files(&bytes);
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    // Every file is listed with its hash.
    for f in manifest["files"].as_array().unwrap() {
        let data = &files[f["path"].as_str().unwrap()];
        assert_eq!(f["sha256"].as_str().unwrap(), hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data)));
    }
    let rows: BTreeMap<&str, u64> =
        manifest["stores"].as_array().unwrap().iter().map(|s| (s["store"].as_str().unwrap(), s["rows"].as_u64().unwrap())).collect();
    assert_eq!(rows["clickhouse:events.learning_events"], 90);
    assert_eq!(rows["clickhouse:signals.findings"], 2, "the subject's signals, not the other learner's: {rows:?}");
    assert_eq!(rows["postgres:consent_events"], 2);
    assert!(rows["clickhouse:agg.learner_daily_activity"] >= 2);
    assert!(rows["postgres:audit_log"] >= 3, "{rows:?}");
    assert!(manifest["engines"]["warehouse"].as_str().unwrap().contains("chDB"));
    let events = String::from_utf8(files["clickhouse/events.learning_events.jsonl"].clone()).unwrap();
    assert_eq!(events.lines().count(), 90);
    assert_eq!(String::from_utf8_lossy(&files["clickhouse/events.learning_events.csv"]).lines().count(), 91);
    let identity: Value = serde_json::from_slice(&files["identity.json"]).unwrap();
    assert_eq!(identity["identity"]["email"], "ada@example.edu");
    // Nothing about anyone else.
    let all: Vec<u8> = files.values().flatten().copied().collect();
    let all = String::from_utf8_lossy(&all);
    assert!(!all.contains(&b) && !all.contains("Bob Other"));

    // The download and the completion are audited.
    assert_eq!(app.count(&format!("SELECT count(*) FROM audit_log WHERE action = 'dsr.archive.download' AND target_pseudonym = '{a}'")).await, 1);
    assert_eq!(app.count(&format!("SELECT count(*) FROM audit_log WHERE action = 'dsr.access.complete' AND target_pseudonym = '{a}'")).await, 1);
}

#[tokio::test]
async fn features_need_recommendations_consent_and_retention_report_is_served() {
    let app = TestApp::spawn_with_warehouse().await;
    let a = app.issue("uni-a", "S-A", json!({"name": "Ada"})).await;
    land(&app, &a, "c1", 10, &["content.start", "content.complete", "interact.pause", "session.start", "session.heartbeat"]).await;
    let rec = app.recommender("uni-a");

    let (s, v) = app.get(&format!("/v1/features/{a}"), &rec).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("consent_required")), "{v}");
    assert_eq!(app.denials("no_recommendations_consent").await, 1);
    let (s, _) = app.get(&format!("/v1/features/{a}"), &app.lms("uni-a")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let (s, _) = app.send("PUT", &format!("/v1/pseudonyms/{a}/consent"), Some(&app.lms("uni-a")), Some(json!({"consents": {"recommendations": true}}))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = app.get(&format!("/v1/features/{a}"), &rec).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["features"]["completion_rate"].as_f64(), Some(1.0), "{v}");
    assert!(v["features"]["sessions_28d"].as_u64().or_else(|| v["features"]["sessions_28d"].as_str().and_then(|s| s.parse().ok())).unwrap() > 0);
    assert!(v["features"].get("learner_id").is_none());

    // Retention report for auditors: passes, then fails on an expired request record, which the purge removes.
    let (s, r) = app.get("/v1/retention/report", &app.auditor()).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["ok"], json!(true), "{r}");
    assert!(r["tables"].as_array().unwrap().iter().any(|t| t["table"] == "postgres:dsr_jobs"));
    sqlx::query(
        "INSERT INTO dsr_jobs (id, kind, pseudonym, institution_id, requested_by, request_id, state, step, requested_at, deadline, completed_at)
         VALUES (gen_random_uuid(), 'access', gen_random_uuid(), 'uni-a', 'dpo', gen_random_uuid(), 'done', 'done',
                 now() - interval '7 years', now() - interval '7 years', now() - interval '7 years')",
    )
    .execute(&app.admin)
    .await
    .unwrap();
    let (_, r) = app.get("/v1/retention/report", &app.auditor()).await;
    assert_eq!(r["ok"], json!(false), "{r}");
    let d = app.state.dsr.as_ref().unwrap();
    assert_eq!(learnvault::retention::purge(&d.pool, &d.retention, &d.archive_dir).await.unwrap(), 1);
    let (_, r) = app.get("/v1/retention/report", &app.auditor()).await;
    assert_eq!(r["ok"], json!(true), "{r}");
    let (s, _) = app.get("/v1/retention/report", &app.lms("uni-a")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn subject_access_exports_more_than_one_page_completely_across_tied_sorting_keys() {
    let app = TestApp::spawn_with_warehouse().await;
    let a = app.issue("uni-a", "S-MANY", json!({})).await;
    // 60,000 events (more than one 50,000-row page) sharing two `server_ts` values,
    // as a gateway request's events do: the sorting key alone has ties across the
    // page boundary. SQL leaves the order of ties open (this layout happens to keep
    // it), so the exporter breaks them with the row's hash; here every row must
    // come out exactly once over two pages.
    land(&app, &a, "c1", 30_000, &["session.heartbeat", "content.view"]).await;
    let (s, job) = app.post("/v1/dsr/access", &app.dpo("uni-a"), json!({"pseudonym": a})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let job = wait_job(&app, &id).await;
    assert_eq!(job["state"], "done", "{job}");
    let resp = app.client.get(format!("{}/v1/dsr/jobs/{id}/archive", app.base)).bearer_auth(app.dpo("uni-a")).send().await.unwrap();
    let bytes = resp.bytes().await.unwrap();
    let events = archive_text(&bytes, "clickhouse/events.learning_events.jsonl");
    // (`land` repeats an event id across its event types: a row is (event_id, event_type).)
    let ids: std::collections::HashSet<(String, String)> = events
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["event_id"].as_str().unwrap().to_owned(), v["event_type"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(events.lines().count(), 60_000);
    assert_eq!(ids.len(), 60_000, "every event exactly once");
}

#[tokio::test]
async fn an_access_archive_is_sealed_at_rest_and_does_not_outlive_the_erasure() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::spawn_with_warehouse().await;
    let a = app.issue("uni-a", "S-A", json!({"name": "Ada Lovelace", "email": "ada@example.edu"})).await;
    land(&app, &a, "c1", 5, &["content.start"]).await;
    let (s, job) = app.post("/v1/dsr/access", &app.dpo("uni-a"), json!({"pseudonym": a})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    let access = job["id"].as_str().unwrap().to_owned();
    let job = wait_job(&app, &access).await;
    assert_eq!(job["state"], "done", "{job}");

    // At rest: 0600, sealed (the identity is not in the file), the directory 0700.
    let path = std::path::PathBuf::from(job["result"]["archive"].as_str().unwrap());
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    let at_rest = std::fs::read(&path).unwrap();
    for needle in ["ada@example.edu", "Ada Lovelace", "manifest.json", a.as_str()] {
        assert!(!at_rest.windows(needle.len()).any(|w| w == needle.as_bytes()), "{needle} readable at rest");
    }
    // Nothing else is left in the archive directory (no plaintext staging).
    let names: Vec<String> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec![path.file_name().unwrap().to_string_lossy().into_owned()]);

    // Streamed decrypted to the DPO: a tar with the identity, matching the recorded hash.
    let resp = app.client.get(format!("{}/v1/dsr/jobs/{access}/archive", app.base)).bearer_auth(app.dpo("uni-a")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)), job["result"]["sha256"].as_str().unwrap());
    let identity = archive_text(&bytes, "identity.json");
    assert!(identity.contains("ada@example.edu"), "{identity}");

    // Erasure deletes the archive and says so; the download answers 410 `erased`.
    let (s, er) = app.post("/v1/dsr/erasure", &app.dpo("uni-a"), json!({"pseudonym": a})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{er}");
    let er = wait_job(&app, er["id"].as_str().unwrap()).await;
    assert_eq!(er["state"], "done", "{er}");
    assert!(!path.exists(), "the access archive outlived the erasure");
    let (s, v) = app.get(&format!("/v1/dsr/jobs/{access}/archive"), &app.dpo("uni-a")).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::GONE, Some("erased")), "{v}");
    let cert = &er["result"]["certificate"]["certificate"];
    assert_eq!(cert["access_archives"]["jobs"], json!([access]), "{cert}");
    assert_eq!(cert["access_archives"]["remaining"], json!(0), "{cert}");
    assert!(cert["access_archives"]["files_deleted"].as_u64().unwrap() >= 1, "{cert}");
}

#[tokio::test]
async fn subject_access_is_a_snapshot_at_the_job_start_under_concurrent_inserts() {
    let app = std::sync::Arc::new(TestApp::spawn_with_warehouse_tweaked(|s| s.dsr.export_page_rows = 500).await);
    let a = app.issue("uni-a", "S-SNAP", json!({})).await;
    // 3,000 rows before the job (many pages), plus rows stored three times over, identical in every column.
    land(&app, &a, "c1", 1_500, &["session.heartbeat", "content.view"]).await;
    // (One block: identical blocks are deduplicated on insert.)
    app.warehouse()
        .execute(
            "INSERT INTO events.learning_events (server_ts, client_ts, event_id, event_version, event_type, learner_id, session_id,
                 course_id, content_id, cohort_id, institution_id, position_sec, props)
             SELECT toDateTime64('2026-01-05 10:00:00.000', 3, 'UTC'), toDateTime64('2026-01-05 10:00:00.000', 3, 'UTC'),
                    toUUID('00000000-0000-4000-8000-000000000001'), '2.3', 'content.view',
                    {l:UUID}, 's-1', 'cs101', 'video-7', 'c1', 'uni-a', 1, map() FROM numbers(3)",
            &[("l", a.clone())],
        )
        .await
        .unwrap();
    // And one sorting key held by more rows than a page (600 > 500): that key is paged by the row's hash.
    app.warehouse()
        .execute(
            "INSERT INTO events.learning_events (server_ts, client_ts, event_id, event_version, event_type, learner_id, session_id,
                 course_id, content_id, cohort_id, institution_id, position_sec, props)
             SELECT toDateTime64('2026-01-06 10:00:00.000', 3, 'UTC'), toDateTime64('2026-01-06 10:00:00.000', 3, 'UTC'),
                    generateUUIDv4(number), '2.3', 'content.view', {l:UUID}, 's-1', 'cs101', 'video-7', 'c1', 'uni-a', 1, map()
             FROM numbers(600)",
            &[("l", a.clone())],
        )
        .await
        .unwrap();
    let mut expected: Vec<(String, String)> = app
        .warehouse()
        .query("SELECT toString(event_id) AS id, event_type AS t FROM events.learning_events WHERE learner_id = {p:UUID}", &[("p", a.clone())])
        .await
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_owned(), r["t"].as_str().unwrap().to_owned()))
        .collect();
    expected.sort();
    assert_eq!(expected.len(), 3_603);

    // While the job runs, the learner's events keep landing: some sort before every existing row
    // (cohort c0), some after (c9); all stamped after the job started.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s, job) = app.post("/v1/dsr/access", &app.dpo("uni-a"), json!({"pseudonym": a})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    let inserter = {
        let (app, a, stop) = (app.clone(), a.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for cohort in ["c0", "c9"] {
                    app.warehouse()
                        .execute(
                            "INSERT INTO events.learning_events (server_ts, client_ts, event_id, event_version, event_type, learner_id, session_id,
                                 course_id, content_id, cohort_id, institution_id, position_sec, props)
                             SELECT now64(3), now64(3), generateUUIDv4(), '2.3', 'session.heartbeat', {l:UUID}, 's-2', 'cs101', 'video-7', {c:String},
                                    'uni-a', 1, map() FROM numbers(50)",
                            &[("l", a.clone()), ("c", cohort.to_owned())],
                        )
                        .await
                        .unwrap();
                    n += 50;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        })
    };
    let id = job["id"].as_str().unwrap().to_owned();
    let job = wait_job(&app, &id).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let inserted = inserter.await.unwrap();
    assert_eq!(job["state"], "done", "{job}");
    assert!(inserted > 0);

    let resp = app.client.get(format!("{}/v1/dsr/jobs/{id}/archive", app.base)).bearer_auth(app.dpo("uni-a")).send().await.unwrap();
    let bytes = resp.bytes().await.unwrap();
    let events = archive_text(&bytes, "clickhouse/events.learning_events.jsonl");
    let mut got: Vec<(String, String)> = events
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["event_id"].as_str().unwrap().to_owned(), v["event_type"].as_str().unwrap().to_owned()))
        .collect();
    got.sort();
    let missing: Vec<_> = expected.iter().filter(|e| !got.contains(e)).take(5).collect();
    let extra: Vec<_> = got.iter().filter(|e| !expected.contains(e)).take(5).collect();
    assert_eq!(got.len(), expected.len(), "{inserted} rows inserted during the export; missing {missing:?}, extra {extra:?}");
    assert_eq!(got, expected, "exactly the rows stored when the job started, duplicates included");
    assert!(!events.contains("__lv_row_hash"));
}

#[tokio::test]
async fn the_subjects_dead_letters_are_in_its_access_archive_and_the_certificate_says_until_when_they_remain() {
    let app = TestApp::spawn_with_warehouse().await;
    let gw = app.gateway(app.settings.clone()).await;
    let a = app.issue("uni-a", "S-DL", json!({})).await;
    // Refused at the gate (a protected attribute): dead-lettered, keyed by the pseudonym.
    let ev = json!({
        "event_id": uuid::Uuid::new_v4(), "event_version": "2.3", "event_type": "content.view", "learner_id": a,
        "session_id": "s-1", "course_id": "cs101", "content_id": "video-1", "cohort_id": "c1",
        "institution_id": "uni-a", "position_sec": 12, "client_ts": chrono::Utc::now().timestamp_millis(), "props": {"gender": "f"}
    });
    let (s, v) = gw.post("/v1/events", &gw.lms("uni-a"), json!([ev])).await;
    assert_eq!((s, v["rejected"].as_u64()), (StatusCode::OK, Some(1)), "{v}");

    let (_, job) = app.post("/v1/dsr/access", &app.dpo("uni-a"), json!({"pseudonym": a})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    let job = wait_job(&app, &id).await;
    assert_eq!(job["state"], "done", "{job}");
    let resp = app.client.get(format!("{}/v1/dsr/jobs/{id}/archive", app.base)).bearer_auth(app.dpo("uni-a")).send().await.unwrap();
    let bytes = resp.bytes().await.unwrap();
    let files = archive_files(&bytes);
    let dl = String::from_utf8(files["kafka/learning-events.dlq.jsonl"].clone()).unwrap();
    assert_eq!(dl.lines().count(), 1, "{dl}");
    let rec: Value = serde_json::from_str(dl.lines().next().unwrap()).unwrap();
    assert_eq!(rec["reason"], "protected_attribute");
    assert_eq!(rec["payload"]["learner_id"], json!(a));
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let store = manifest["stores"].as_array().unwrap().iter().find(|s| s["store"] == "kafka:learning-events.dlq").unwrap();
    assert_eq!(store["rows"], json!(1), "{store}");

    let (_, er) = app.post("/v1/dsr/erasure", &app.dpo("uni-a"), json!({"pseudonym": a})).await;
    let er = wait_job(&app, er["id"].as_str().unwrap()).await;
    assert_eq!(er["state"], "done", "{er}");
    let cert = &er["result"]["certificate"]["certificate"];
    let dlq = cert["residual_copies"].as_array().unwrap().iter().find(|r| r["store"] == "kafka:learning-events.dlq").unwrap();
    assert_eq!(dlq["records_keyed_by_subject"], json!(1), "{dlq}");
    assert_eq!(dlq["topic"], json!(app.settings.kafka.dlq_topic));
    // 14 days of retention plus at most a day until the segment rolls.
    let until = chrono::DateTime::parse_from_rfc3339(dlq["until"].as_str().unwrap()).unwrap();
    let days = (until.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours() as f64 / 24.0;
    assert!((14.5..=15.1).contains(&days), "{dlq}");
}

#[tokio::test]
async fn a_batch_erasure_erases_many_subjects_in_one_pass_with_a_certificate_each() {
    let app = TestApp::spawn_with_warehouse().await;
    let a = app.issue("uni-a", "S-A", json!({"name": "Ada"})).await;
    let b = app.issue("uni-a", "S-B", json!({"name": "Bob"})).await;
    let c = app.issue("uni-a", "S-C", json!({"name": "Cy"})).await;
    let types = ["content.start", "content.complete", "session.heartbeat"];
    land(&app, &a, "c1", 10, &types).await;
    land(&app, &b, "c1", 10, &types).await;
    land(&app, &c, "c1", 10, &types).await;
    assert_eq!(num(&dashboards(&app).await["funnel"][0]["enrolled"]), 3);

    let dpo = app.dpo("uni-a");
    let (s, v) = app.post("/v1/dsr/erasure/batch", &app.dpo("uni-b"), json!({"institution": "uni-a", "subjects": [{"pseudonym": a}]})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = app.post("/v1/dsr/erasure/batch", &dpo, json!({"institution": "uni-a", "subjects": [{"pseudonym": a}, {"external_id": "S-NOPE"}]})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("unknown_learner")), "{v}");
    let (s, job) = app
        .post("/v1/dsr/erasure/batch", &dpo, json!({"institution": "uni-a", "subjects": [{"pseudonym": a}, {"external_id": "S-B"}], "reference": "COHORT-2026"}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["kind"], "erasure_batch");
    assert_eq!(job["progress"]["subjects"].as_array().unwrap().len(), 2, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let job = wait_job(&app, &id).await;
    assert_eq!(job["state"], "done", "{job}");

    for p in [&a, &b] {
        assert_eq!(ch(&app, "SELECT count() AS n FROM events.learning_events WHERE learner_id = {p:UUID}", p).await, 0);
        assert_eq!(app.count(&format!("SELECT count(*) FROM learners WHERE pseudonym = '{p}'")).await, 0);
        assert_eq!(app.count(&format!("SELECT count(*) FROM tombstones WHERE pseudonym = '{p}'")).await, 1);
    }
    assert_eq!(ch(&app, "SELECT count() AS n FROM events.learning_events WHERE learner_id = {p:UUID}", &c).await, 30);
    assert_eq!(num(&dashboards(&app).await["funnel"][0]["enrolled"]), 1, "rollups recomputed once for both");

    // One certificate per subject, each signed and naming its own subject and counts.
    let (s, certs) = app.get(&format!("/v1/dsr/jobs/{id}/certificate"), &app.auditor()).await;
    assert_eq!(s, StatusCode::OK, "{certs}");
    let (_, key) = app.send("GET", "/v1/dsr/certificate-key", None, None).await;
    let key = key["public_key"].as_str().unwrap();
    for p in [&a, &b] {
        let body = learnvault::dsr::certificate::verify(&certs[p.as_str()], key).expect("valid signature");
        assert_eq!(body["subject"]["pseudonym"], json!(p));
        let events = body["stores"].as_array().unwrap().iter().find(|s| s["store"] == "clickhouse:events.learning_events").unwrap().clone();
        assert_eq!((events["rows_before"].clone(), events["rows_after"].clone()), (json!(30), json!(0)), "{body}");
    }
    assert_eq!(app.count("SELECT count(*) FROM audit_log WHERE action = 'dsr.erasure_batch.complete'").await, 1);
    assert_eq!(app.verify().await["intact"], json!(true));
}

#[tokio::test]
async fn the_cli_erases_a_file_of_subjects_as_one_batch() {
    let spine = common::spine::Spine::new(false).await;
    let app = &spine.app;
    let a = app.issue("uni-a", "S-CSV-1", json!({"name": "One"})).await;
    let b = app.issue("uni-a", "S-CSV-2", json!({"name": "Two"})).await;
    let keep = app.issue("uni-a", "S-CSV-3", json!({"name": "Three"})).await;
    let dir = std::env::temp_dir().join(format!("lv-cli-batch-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("subjects.csv");
    std::fs::write(&csv, format!("external_id\nS-CSV-1\n{b}\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_learnvault"))
        .args(["dsr", "erase", "--institution", "uni-a", "--reference", "COHORT-7", "--file", csv.to_str().unwrap()])
        .envs(spine.child_env())
        .env("LEARNVAULT_MASTER_KEY", secrecy::ExposeSecret::expose_secret(&app.master.to_base64()))
        .env("LEARNVAULT_ARCHIVE_DIR", dir.join("archives"))
        .env("LEARNVAULT_AUDIT_CHECKPOINT_DIR", dir.join("checkpoints"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let certs: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = learnvault::dsr::certificate::Signer::derive(&app.master).public_key();
    for p in [&a, &b] {
        let body = learnvault::dsr::certificate::verify(&certs[p.as_str()], &key).expect("signed");
        assert_eq!(body["reference"], "COHORT-7");
        assert_eq!(app.count(&format!("SELECT count(*) FROM learners WHERE pseudonym = '{p}'")).await, 0);
    }
    assert_eq!(certs.as_object().unwrap().len(), 2);
    assert_eq!(app.count(&format!("SELECT count(*) FROM learners WHERE pseudonym = '{keep}'")).await, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
