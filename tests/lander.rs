//! The governed lander on real Apache Kafka, chDB and PostgreSQL.
mod common;

use common::spine::{event, num, Running, Spine};
use learnvault::envelope;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

async fn learners(s: &Spine, n: usize, institution: &str) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(s.app.issue(institution, &format!("L{i}"), json!({})).await);
    }
    out
}

/// A spine with `n` learners of uni-a issued and its lander running.
async fn landing(n: usize) -> (Spine, Vec<String>, Running) {
    let s = Spine::new(true).await;
    let ls = learners(&s, n, "uni-a").await;
    let lander = s.start_lander().await;
    (s, ls, lander)
}

#[tokio::test]
async fn valid_events_land_exactly_once_with_right_rollups() {
    let s = Spine::new(true).await;
    let ls = learners(&s, 6, "uni-a").await;
    let types = ["content.start", "content.complete", "assess.submit", "session.heartbeat", "interact.replay", "session.heartbeat"];
    let mut events = Vec::new();
    for i in 0..900 {
        let l = &ls[i % ls.len()];
        // learner k does the first k+1 funnel steps at most
        let t = types[(i / ls.len()) % types.len()];
        events.push(event(l, t, "cs101", if i % 2 == 0 { "c1" } else { "c2" }, "uni-a"));
    }
    let lander = s.start_lander().await;
    s.produce(&events).await;
    assert_eq!(s.wait_rows(900, Duration::from_secs(60)).await, 900);
    lander.stop().await;
    assert_eq!(s.count("SELECT uniqExact(event_id) AS n FROM events.learning_events").await, 900, "no duplicates");

    // Rollups equal a recomputation from the base table.
    let funnel = s
        .wh
        .query(
            "SELECT cohort_id, uniqMerge(learners) AS enrolled, uniqMerge(started) AS started, uniqMerge(completed) AS completed, uniqMerge(assessed) AS assessed
             FROM agg.funnel_by_cohort WHERE course_id = {c:String} GROUP BY cohort_id ORDER BY cohort_id",
            &[("c", "cs101".into())],
        )
        .await
        .unwrap();
    let fresh = s
        .wh
        .query(
            "SELECT cohort_id, uniq(learner_id) AS enrolled, uniqIf(learner_id, event_type = 'content.start') AS started,
                    uniqIf(learner_id, event_type = 'content.complete') AS completed, uniqIf(learner_id, event_type = 'assess.submit') AS assessed
             FROM events.learning_events WHERE course_id = {c:String} GROUP BY cohort_id ORDER BY cohort_id",
            &[("c", "cs101".into())],
        )
        .await
        .unwrap();
    assert_eq!(funnel.len(), 2);
    for (a, b) in funnel.iter().zip(&fresh) {
        for k in ["enrolled", "started", "completed", "assessed"] {
            assert_eq!(num(&a[k]), num(&b[k]), "{k}");
        }
    }
    assert_eq!(num(&funnel[0]["enrolled"]), 3);
    let hb = s.count("SELECT sum(heartbeat_seconds) AS n FROM agg.engagement_per_minute").await;
    assert_eq!(hb, 300 * 30, "300 heartbeats x 30 s");
    let act = s.count("SELECT sum(events) AS n FROM agg.learner_daily_activity").await;
    assert_eq!(act, 900);
    let replays = s.count("SELECT sum(replays) AS n FROM agg.content_replays_daily WHERE position_bucket = 40").await;
    assert_eq!(replays, 150);
    // The recommendation features read the landed behaviour.
    let f = s
        .wh
        .query("SELECT sessions_28d, replay_rate, completion_rate FROM features.learner_engagement WHERE learner_id = {l:UUID}", &[("l", ls[0].clone())])
        .await
        .unwrap();
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0]["replay_rate"].as_f64().unwrap() > 0.0, "{f:?}");
    s.wh.close();
}

#[tokio::test]
async fn a_hostile_corpus_is_dead_lettered_with_reasons_and_the_rest_lands() {
    let s = Spine::new(true).await;
    let ls = learners(&s, 3, "uni-a").await;
    // Learner 2 withdrew analytics consent.
    let (st, _) = s
        .app
        .send("PUT", &format!("/v1/pseudonyms/{}/consent", ls[2]), Some(&s.app.lms("uni-a")), Some(json!({"consents": {"analytics": false}})))
        .await;
    assert!(st.is_success());
    let good = |i: usize| event(&ls[i % 2], "content.view", "cs101", "c1", "uni-a");
    let mut expected: HashMap<&str, usize> = HashMap::new();
    let lander = s.start_lander().await;
    let mut produce_bad = |payload: Vec<u8>, reason: &'static str| {
        *expected.entry(reason).or_default() += 1;
        payload
    };
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    corpus.push(produce_bad(b"{not json".to_vec(), "invalid_json"));
    corpus.push(produce_bad(vec![0xff, 0xfe, 0x00], "invalid_json"));
    let mut wrong_type = good(0);
    wrong_type["position_sec"] = json!("forty-two");
    corpus.push(produce_bad(serde_json::to_vec(&wrong_type).unwrap(), "schema_violation"));
    let mut huge = good(0);
    huge["course_id"] = json!("x".repeat(10_000));
    corpus.push(produce_bad(serde_json::to_vec(&huge).unwrap(), "schema_violation"));
    let mut oversized = good(0);
    oversized["props"] = json!({"blob": "y".repeat(1000)});
    let mut big = serde_json::to_vec(&oversized).unwrap();
    big.extend(std::iter::repeat_n(b' ', 70_000));
    corpus.push(produce_bad(big, "oversized"));
    let mut unknown_type = good(0);
    unknown_type["event_type"] = json!("content.teleport");
    corpus.push(produce_bad(serde_json::to_vec(&unknown_type).unwrap(), "unknown_event_type"));
    let mut unknown_version = good(0);
    unknown_version["event_version"] = json!("9.1");
    corpus.push(produce_bad(serde_json::to_vec(&unknown_version).unwrap(), "unknown_version"));
    let mut renamed = good(0);
    let c = renamed.as_object_mut().unwrap().remove("cohort_id").unwrap();
    renamed["cohort"] = c;
    corpus.push(produce_bad(serde_json::to_vec(&renamed).unwrap(), "schema_violation"));
    let mut protected = good(0);
    protected["props"] = json!({"Gender": "F", "player": "web"});
    corpus.push(produce_bad(serde_json::to_vec(&protected).unwrap(), "protected_attribute"));
    let unknown = event(&uuid::Uuid::new_v4().to_string(), "content.view", "cs101", "c1", "uni-a");
    corpus.push(produce_bad(serde_json::to_vec(&unknown).unwrap(), "unknown_pseudonym"));
    let other_inst = event(&ls[0], "content.view", "cs101", "c1", "uni-b");
    corpus.push(produce_bad(serde_json::to_vec(&other_inst).unwrap(), "unknown_pseudonym"));
    let no_consent = event(&ls[2], "content.view", "cs101", "c1", "uni-a");
    corpus.push(produce_bad(serde_json::to_vec(&no_consent).unwrap(), "no_consent"));
    let bad_total = corpus.len();
    // Valid events around every bad one.
    let mut all = Vec::new();
    for (i, bad) in corpus.into_iter().enumerate() {
        all.push(serde_json::to_vec(&good(i)).unwrap());
        all.push(bad);
    }
    all.push(serde_json::to_vec(&good(99)).unwrap());
    for p in &all {
        s.produce_raw(&ls[0], p).await;
    }
    let valid = (all.len() - bad_total) as u64;
    assert_eq!(s.wait_rows(valid, Duration::from_secs(60)).await, valid);
    let dl = s.dead_letters(bad_total, Duration::from_secs(30)).await;
    lander.stop().await;
    assert_eq!(dl.len(), bad_total);
    let mut got: HashMap<String, usize> = HashMap::new();
    for d in &dl {
        *got.entry(d["reason"].as_str().unwrap().to_owned()).or_default() += 1;
        assert!(!d["payload"].is_null() || d["payload_base64"].is_string(), "original payload kept: {d}");
        assert!(d["offset"].is_i64());
    }
    let expected: HashMap<String, usize> = expected.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    assert_eq!(got, expected);
    // The protected value itself never travels on, not even to the dead-letter topic.
    let prot = dl.iter().find(|d| d["reason"] == "protected_attribute").unwrap();
    assert!(!prot["payload"].to_string().contains("\"F\""), "{prot}");
    assert_eq!(s.count("SELECT count() AS n FROM events.learning_events WHERE mapContains(props, 'Gender')").await, 0);
    s.wh.close();
}

#[tokio::test]
async fn an_erased_learner_is_refused_within_seconds() {
    let (s, ls, lander) = landing(2).await;
    s.produce(&[event(&ls[0], "content.view", "cs101", "c1", "uni-a"), event(&ls[1], "content.view", "cs101", "c1", "uni-a")]).await;
    assert_eq!(s.wait_rows(2, Duration::from_secs(30)).await, 2);
    // Erase learner 0 in the vault (tombstone + crypto-shred, as the DSR job does).
    let mut tx = s.app.admin.begin().await.unwrap();
    sqlx::query("INSERT INTO tombstones (pseudonym, institution_id, request_id) SELECT pseudonym, institution_id, gen_random_uuid() FROM learners WHERE pseudonym = $1::uuid")
        .bind(&ls[0])
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("DELETE FROM learners WHERE pseudonym = $1::uuid").bind(&ls[0]).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let erased_at = std::time::Instant::now();
    // The governance cache trusts an answer for 2 s: from then on, every event is refused.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    s.produce(&[event(&ls[0], "content.view", "cs101", "c1", "uni-a"), event(&ls[1], "content.view", "cs101", "c1", "uni-a")]).await;
    assert_eq!(s.wait_rows(3, Duration::from_secs(30)).await, 3);
    let dl = s.dead_letters(1, Duration::from_secs(30)).await;
    lander.stop().await;
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0]["reason"], "erased_subject");
    assert!(erased_at.elapsed() < Duration::from_secs(30));
    let rows = s.wh.query("SELECT count() AS n FROM events.learning_events WHERE learner_id = {l:UUID}", &[("l", ls[0].clone())]).await.unwrap();
    assert_eq!(num(&rows[0]["n"]), 1, "only the event before the erasure");
    s.wh.close();
}

#[tokio::test]
async fn envelopes_land_their_events_and_dead_letter_bad_members_alone() {
    let (s, ls, lander) = landing(2).await;
    let good: Vec<serde_json::Value> = (0..3).map(|i| event(&ls[i % 2], "content.view", "cs101", "c1", "uni-a")).collect();
    let mut wrong_type = event(&ls[0], "content.view", "cs101", "c1", "uni-a");
    wrong_type["position_sec"] = json!("forty-two");
    let mut protected = event(&ls[1], "content.view", "cs101", "c1", "uni-a");
    protected["props"] = json!({"ethnicity": "x"});
    let envelope = json!([good[0], wrong_type, good[1], protected, good[2]]);
    s.produce_raw(&ls[0], &serde_json::to_vec(&envelope).unwrap()).await;
    s.produce_raw(&ls[0], b"[]").await;
    s.produce_raw(&ls[0], b"[{\"event_type\": \"content.view\"},").await;
    let single = event(&ls[1], "content.view", "cs101", "c1", "uni-a");
    s.produce(std::slice::from_ref(&single)).await;
    // The same forms compressed as learnvault's producers send them (zstd frames).
    let zipped: Vec<serde_json::Value> = (0..2).map(|i| event(&ls[i % 2], "content.view", "cs101", "c1", "uni-a")).collect();
    let mut zipped_bad = event(&ls[0], "content.view", "cs101", "c1", "uni-a");
    zipped_bad.as_object_mut().unwrap().remove("cohort_id");
    let zstd = |v: Vec<u8>| envelope::encode_value(v, envelope::Compression::Zstd);
    s.produce_raw(&ls[0], &zstd(serde_json::to_vec(&json!([zipped[0], zipped_bad, zipped[1]])).unwrap())).await;
    let mut corrupt = envelope::ZSTD_MAGIC.to_vec();
    corrupt.extend_from_slice(b"\x00 not a frame");
    s.produce_raw(&ls[0], &corrupt).await;
    // A decompression bomb: 20 MiB of spaces in a few hundred bytes.
    s.produce_raw(&ls[0], &zstd(vec![b' '; 20 * 1024 * 1024])).await;

    assert_eq!(s.wait_rows(6, Duration::from_secs(60)).await, 6);
    let dl = s.dead_letters(7, Duration::from_secs(30)).await;
    lander.stop().await;
    let mut got: Vec<(String, Option<u64>)> = dl.iter().map(|d| (d["reason"].as_str().unwrap().to_owned(), d["index"].as_u64())).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("invalid_encoding".to_owned(), None),
            ("invalid_json".to_owned(), None),
            ("oversized".to_owned(), None),
            ("protected_attribute".to_owned(), Some(3)),
            ("schema_violation".to_owned(), None),
            ("schema_violation".to_owned(), Some(1)),
            ("schema_violation".to_owned(), Some(1)),
        ]
    );
    // A refused member of a compressed envelope is dead-lettered as JSON, decompressed.
    let zmember = dl.iter().find(|d| d["index"] == 1 && d["payload"].to_string().contains(zipped_bad["event_id"].as_str().unwrap())).unwrap();
    assert!(!zmember["payload"].to_string().contains("cohort_id"), "{zmember}");
    // A frame that does not decompress keeps its original bytes.
    let bad_frame = dl.iter().find(|d| d["reason"] == "invalid_encoding").unwrap();
    assert!(bad_frame["payload_base64"].is_string(), "{bad_frame}");
    // A refused member is dead-lettered alone: its own payload, not the envelope.
    let member = dl.iter().find(|d| d["index"] == 1).unwrap();
    let payload: serde_json::Value = member["payload"].clone();
    assert_eq!(payload["event_id"], wrong_type["event_id"]);
    let prot = dl.iter().find(|d| d["reason"] == "protected_attribute").unwrap();
    assert!(!prot["payload"].to_string().contains("\"x\""), "{prot}");
    // Keyed by its own learner, not by the envelope's first one.
    assert_eq!(prot["_key"], json!(ls[1]), "{prot}");
    for ev in good.iter().chain([&single]).chain(&zipped) {
        let id = ev["event_id"].as_str().unwrap().to_owned();
        let n = s.wh.query("SELECT count() AS n FROM events.learning_events WHERE event_id = {e:UUID}", &[("e", id)]).await.unwrap();
        assert_eq!(num(&n[0]["n"]), 1, "{ev}");
    }
    s.wh.close();
}

/// Issue 13, point 4: a warehouse failure that is not the data's fault (here a missing table, as
/// during a migration's rename) stalls the lander, visibly, instead of dead-lettering good rows;
/// once the table is back every row lands exactly once and the dead-letter topic stays empty.
#[tokio::test]
async fn a_missing_table_stalls_the_lander_visibly_and_dead_letters_nothing() {
    let s = Spine::new(true).await;
    let ls = learners(&s, 4, "uni-a").await;
    let batch = |from: usize| -> Vec<serde_json::Value> {
        (from..from + 200).map(|i| event(&ls[i % ls.len()], "session.heartbeat", "cs101", "c1", "uni-a")).collect()
    };
    let lander = s.start_lander().await;
    s.produce(&batch(0)).await;
    assert_eq!(s.wait_rows(200, Duration::from_secs(60)).await, 200);
    let (status, ready) = s.app.get("/readyz", "").await;
    assert_eq!(status, 200);
    assert_eq!(ready["status"], "ready", "{ready}");

    s.wh.execute("RENAME TABLE events.learning_events TO events.learning_events_away", &[]).await.unwrap();
    s.produce(&batch(200)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let stall = loop {
        let stalls = learnvault::lander::health::current();
        if let Some(st) = stalls.into_iter().find(|st| st.cause == learnvault::lander::health::Cause::Warehouse) {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "the lander never reported the missing table");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(stall.error.contains("Code: 60"), "{}", stall.error);
    let (status, ready) = s.app.get("/readyz", "").await;
    assert_eq!(status, 200, "a stalled lander does not take the API out of rotation");
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["lander_stalls"][0]["cause"], "warehouse", "{ready}");
    let metrics = s.app.client.get(format!("{}/metrics", s.app.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("learnvault_lander_stalled{cause=\"warehouse\"} 1"), "gauge set while stalled");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(s.records(&s.settings.kafka.dlq_topic, Duration::from_secs(2)).await.is_empty(), "good rows were dead-lettered");

    s.wh.execute("RENAME TABLE events.learning_events_away TO events.learning_events", &[]).await.unwrap();
    assert_eq!(s.wait_rows(400, Duration::from_secs(60)).await, 400);
    lander.stop().await;
    assert_eq!(s.count("SELECT uniqExact(event_id) AS n FROM events.learning_events").await, 400, "no duplicates");
    assert_eq!(s.count("SELECT count() AS n FROM events.learning_events").await, 400);
    assert!(learnvault::lander::health::current().is_empty(), "recovered");
    assert!(s.records(&s.settings.kafka.dlq_topic, Duration::from_secs(2)).await.is_empty());
    s.wh.close();
}

#[tokio::test]
async fn a_landed_row_holds_every_column_as_sent() {
    // The lander writes its rows in a binary format by hand: each column must read back as sent
    // (ids' byte order, millisecond timestamps, nulls, escapes and non-ASCII text, the props map).
    let s = Spine::new(true).await;
    let ls = learners(&s, 2, "uni-a").await;
    let mut a = event(&ls[0], "content.start", "cs-\"101\"", "c\\1", "uni-a");
    a["session_id"] = json!("sé-学-😀 \"x\" \\ é");
    a["client_ts"] = json!(chrono::Utc::now().timestamp_millis() - 1_234);
    a["props"] = json!({"player": "wéb \"9\""});
    let mut b = event(&ls[1], "session.heartbeat", "cs101", "c2", "uni-a");
    b.as_object_mut().unwrap().remove("position_sec");
    b["props"] = json!({});
    let lander = s.start_lander().await;
    s.produce(&[a.clone(), b.clone()]).await;
    assert_eq!(s.wait_rows(2, Duration::from_secs(60)).await, 2);
    lander.stop().await;
    for ev in [&a, &b] {
        let rows = s
            .wh
            .query(
                "SELECT toString(event_id) AS eid, toString(learner_id) AS lid, event_version, event_type, session_id, course_id,
                        content_id, cohort_id, institution_id, position_sec, toUnixTimestamp64Milli(client_ts) AS client_ms,
                        toUnixTimestamp64Milli(server_ts) AS server_ms, toString(event_date) AS event_date, props
                 FROM events.learning_events WHERE event_id = {id:UUID}",
                &[("id", ev["event_id"].as_str().unwrap().to_string())],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{ev}");
        let r = &rows[0];
        assert_eq!(r["eid"], ev["event_id"], "event_id");
        assert_eq!(r["lid"], ev["learner_id"], "learner_id");
        for k in ["event_version", "event_type", "session_id", "course_id", "content_id", "cohort_id", "institution_id"] {
            assert_eq!(r[k], ev[k], "{k}");
        }
        assert_eq!(r["position_sec"].as_u64(), ev["position_sec"].as_u64(), "position_sec");
        assert_eq!(num(&r["client_ms"]), ev["client_ts"].as_i64().unwrap() as u64, "client_ts");
        let server = num(&r["server_ms"]) as i64;
        assert!((chrono::Utc::now().timestamp_millis() - server).abs() < 120_000, "server_ts is the landing's clock: {server}");
        let day = chrono::DateTime::from_timestamp_millis(server).unwrap().format("%Y-%m-%d").to_string();
        assert_eq!(r["event_date"], json!(day), "event_date takes its default");
        assert_eq!(r["props"], ev["props"], "props");
    }
    s.wh.close();
}
