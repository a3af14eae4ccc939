//! Idempotent ingest (issue 13) on real Apache Kafka, PostgreSQL and the embedded engine:
//! an event id lands once, in the base table and in every rollup, whatever carried it twice.
mod common;

use common::spine::{event, num, Spine};
use rdkafka::producer::FutureRecord;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

use common::spine::{xapi_fixture as fixture, XAPI_EXT as EXT};
use learnvault::dedup::EventKey;

async fn send_xapi(app: &common::TestApp, token: &str, method: &str, query: &str, body: &Value) -> (StatusCode, Value) {
    let url = format!("{}/xapi/statements{query}", app.base);
    let req = if method == "PUT" { app.client.put(url) } else { app.client.post(url) };
    let resp = req.bearer_auth(token).header("X-Experience-API-Version", "1.0.3").json(body).send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Wait until the lander has dropped `n` duplicates (so a second delivery was processed).
async fn wait_duplicates(stats: &learnvault::lander::LanderStats, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = stats.duplicates.load(std::sync::atomic::Ordering::Relaxed);
        if d >= n || Instant::now() > deadline {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn rows_of(s: &Spine, id: &str) -> u64 {
    let r = s.wh.query("SELECT count() AS n FROM events.learning_events WHERE event_id = {e:UUID}", &[("e", id.to_owned())]).await.unwrap();
    num(&r[0]["n"])
}

/// Every rollup counts each event once: the daily activity's event count and heartbeat seconds.
async fn assert_rollups(s: &Spine, events: u64, heartbeats: u64) {
    assert_eq!(s.count("SELECT count() AS n FROM events.learning_events").await, events, "base table");
    assert_eq!(s.count("SELECT sum(events) AS n FROM agg.learner_daily_activity").await, events, "agg.learner_daily_activity");
    assert_eq!(
        s.count("SELECT sum(heartbeat_seconds) AS n FROM agg.engagement_per_minute").await,
        heartbeats * 30,
        "agg.engagement_per_minute"
    );
}

#[tokio::test]
async fn a_gateway_retry_of_an_acknowledged_request_lands_once() {
    let (s, gw, lms) = Spine::with_gateway(true).await;
    let lander = s.start_lander().await;
    let who = json!({"institution": "uni-a", "external_id": "S-1"});
    let mut body = Vec::new();
    for t in ["session.start", "session.heartbeat", "content.view"] {
        let mut e = event("x", t, "cs101", "c1", "uni-a");
        e.as_object_mut().unwrap().remove("learner_id");
        e["learner"] = who.clone();
        body.push(e);
    }
    let (st, v) = gw.post("/v1/events", &lms, json!(body)).await;
    assert_eq!((st, v["accepted"].clone()), (StatusCode::OK, json!(3)), "{v}");
    assert_eq!(s.wait_rows(3, Duration::from_secs(60)).await, 3);
    // The client did not see the answer (a 503 for its neighbours, a timeout): it sends all of it again,
    // once after the first landed and once at once, twice in flight.
    let (st, v) = gw.post("/v1/events", &lms, json!(body)).await;
    assert_eq!((st, v["accepted"].clone()), (StatusCode::OK, json!(3)), "a retry is acknowledged again: {v}");
    let (a, b) = tokio::join!(gw.post("/v1/events", &lms, json!(body)), gw.post("/v1/events", &lms, json!(body)));
    assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK));
    assert_eq!(wait_duplicates(&lander.stats, 9).await, 9, "three more deliveries of three events, each dropped");
    lander.stop().await;
    assert_rollups(&s, 3, 1).await;
    for e in &body {
        assert_eq!(rows_of(&s, e["event_id"].as_str().unwrap()).await, 1, "{e}");
    }
    s.wh.close();
}

#[tokio::test]
async fn a_producer_writing_the_same_envelope_to_kafka_twice_lands_it_once() {
    let s = Spine::new(true).await;
    let learner = s.app.issue("uni-a", "L1", json!({})).await;
    let events: Vec<Value> = ["session.start", "session.heartbeat", "session.heartbeat", "content.view"]
        .iter()
        .map(|t| event(&learner, t, "cs101", "c1", "uni-a"))
        .collect();
    // One event twice inside one envelope too.
    let mut members = events.clone();
    members.push(events[0].clone());
    let envelope = serde_json::to_vec(&json!(members)).unwrap();
    let to = |p: i32| FutureRecord::to(&s.settings.kafka.events_topic).key(&learner).payload(&envelope).partition(p);
    let lander = s.start_lander().await;
    // Twice on one partition and once on another, before the lander reads any: one batch or several.
    for p in [0, 0, 1] {
        s.producer.send(to(p), Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }
    assert_eq!(s.wait_rows(4, Duration::from_secs(60)).await, 4);
    assert_eq!(wait_duplicates(&lander.stats, 11).await, 11, "15 events delivered, 4 distinct");
    // Again later, as a single event per record and as the envelope on the third partition: another batch.
    s.produce(&events).await;
    s.producer.send(to(2), Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    assert_eq!(wait_duplicates(&lander.stats, 20).await, 20);
    lander.stop().await;
    assert_rollups(&s, 4, 2).await;
    for e in &events {
        assert_eq!(rows_of(&s, e["event_id"].as_str().unwrap()).await, 1, "{e}");
    }
    // A new lander replaying the topic from the start (another group) lands nothing again.
    let mut again = s.settings.clone();
    again.lander.consumer_group = format!("{}-again", s.settings.lander.consumer_group);
    let replay = {
        let lander = learnvault::app::lander::build(&again, s.wh.clone()).await.unwrap();
        let stats = lander.stats();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let h = tokio::spawn(lander.run(async move {
            let _ = stopped.await;
        }));
        let d = wait_duplicates(&stats, 24).await;
        let _ = stop.send(());
        h.await.unwrap().unwrap();
        d
    };
    assert_eq!(replay, 24, "every event of the replayed topic is a duplicate");
    assert_rollups(&s, 4, 2).await;
    s.wh.close();
}

/// `n` new events of one client time.
fn events(n: usize) -> Vec<EventKey> {
    let client_ts = chrono::Utc::now();
    (0..n).map(|_| EventKey::new(client_ts, uuid::Uuid::new_v4())).collect()
}

fn ids_of(keys: &[EventKey]) -> std::collections::HashSet<uuid::Uuid> {
    keys.iter().map(|k| k.event_id()).collect()
}

/// An event is its id and client time, in one envelope (one batch) as across batches: the
/// same id at another client time lands beside it, the same event again does not.
#[tokio::test]
async fn an_id_at_another_client_time_lands_beside_it_in_one_batch_as_in_two() {
    let s = Spine::new(true).await;
    let learner = s.app.issue("uni-a", "L1", json!({})).await;
    let first = event(&learner, "content.view", "cs101", "c1", "uni-a");
    let mut later = first.clone();
    later["client_ts"] = json!(first["client_ts"].as_i64().unwrap() + 1000);
    let envelope = serde_json::to_vec(&json!([first, later, first])).unwrap();
    let lander = s.start_lander().await;
    let record = FutureRecord::to(&s.settings.kafka.events_topic).key(&learner).payload(&envelope).partition(0);
    s.producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    assert_eq!(s.wait_rows(2, Duration::from_secs(60)).await, 2);
    assert_eq!(wait_duplicates(&lander.stats, 1).await, 1, "the same event twice in the envelope");
    // The later one again, alone: another batch, a duplicate.
    s.produce(std::slice::from_ref(&later)).await;
    assert_eq!(wait_duplicates(&lander.stats, 2).await, 2);
    lander.stop().await;
    assert_eq!(rows_of(&s, first["event_id"].as_str().unwrap()).await, 2);
    s.wh.close();
}

#[tokio::test]
async fn a_batch_replayed_under_its_own_token_keeps_its_claims_and_another_batch_does_not() {
    let app = common::TestApp::spawn().await;
    let claims = learnvault::dedup::Claims::new(app.admin.clone(), 7);
    let ids = events(5);
    let all = ids_of(&ids);
    assert_eq!(claims.claim("t:0:0-4", &ids).await.unwrap().of(&ids), all, "first claim");
    assert_eq!(claims.claim("t:0:0-4", &ids).await.unwrap().of(&ids), all, "the same batch replayed keeps its ids");
    let more = events(1)[0];
    let got = claims.claim("t:1:0-5", &[ids[0], more]).await.unwrap().of(&[ids[0], more]);
    assert_eq!(got, [more.event_id()].into_iter().collect(), "another batch gets only the new id");
    // A large batch of a lander spanning partitions: the same answers.
    let big = events(12_000);
    let big_all = ids_of(&big);
    assert_eq!(claims.claim("t:4:0-11999", &big).await.unwrap().of(&big), big_all);
    assert_eq!(claims.claim("t:4:0-11999", &big).await.unwrap().of(&big), big_all, "replayed");
    let fresh = events(6_000);
    let half: Vec<EventKey> = big.iter().step_by(2).copied().chain(fresh.iter().copied()).collect();
    assert_eq!(claims.claim("t:5:0-11999", &half).await.unwrap().of(&half), ids_of(&fresh), "only the new ids");
    // A dead-lettered batch releases its claims; the ids can land with a corrected delivery.
    assert_eq!(claims.release("t:0:0-4", &ids).await.unwrap(), 5);
    assert_eq!(claims.claim("t:2:0-4", &ids).await.unwrap().of(&ids), all);
    // Claims older than the window (by their claim and their event's time) are purged; newer
    // ones stay, and so does the claim of an event sent late (its client time weeks old, its
    // claim new). A claim dated ahead of now goes with its claim's age.
    let at = |days: i64| EventKey::new(chrono::Utc::now() + chrono::Duration::days(days), uuid::Uuid::new_v4());
    let (old, late, ahead, recent_but_claimed_long_ago) = (at(-9), at(-30), at(30), at(-1));
    let four = [old, late, ahead, recent_but_claimed_long_ago];
    assert_eq!(claims.claim("t:6:0-3", &four).await.unwrap().of(&four).len(), 4);
    sqlx::query("UPDATE ingest_event_ids SET seen_at = now() - interval '8 days' WHERE event_id = ANY($1)")
        .bind(vec![old.event_id(), ahead.event_id(), recent_but_claimed_long_ago.event_id()])
        .execute(&app.admin)
        .await
        .unwrap();
    assert_eq!(claims.purge().await.unwrap(), 2, "the old one and the one dated ahead");
    let again = [old, late, ahead, recent_but_claimed_long_ago, ids[2]];
    assert_eq!(
        claims.claim("t:3:0-4", &again).await.unwrap().of(&again),
        [old.event_id(), ahead.event_id()].into_iter().collect(),
        "the late event's claim, the one whose client time is within the window, and a recent claim hold"
    );
}

/// A claim is keyed by the event's client time and id: every delivery of one event carries
/// both, and an id sent with another client time is another event.
#[tokio::test]
async fn an_event_is_its_id_and_client_time_and_claims_from_before_that_key_still_hold_until_purged() {
    let app = common::TestApp::spawn().await;
    let claims = learnvault::dedup::Claims::new(app.admin.clone(), 7);
    let first = events(1)[0];
    let again = EventKey::new(first.client_ts(), first.event_id());
    let other_time = EventKey::new(first.client_ts() + chrono::Duration::milliseconds(1), first.event_id());
    assert_eq!(claims.claim("k:0:0-0", &[first]).await.unwrap().of(&[first]).len(), 1);
    assert!(claims.claim("k:1:0-0", &[again]).await.unwrap().of(&[again]).is_empty(), "the same event again");
    assert_eq!(claims.claim("k:2:0-0", &[other_time]).await.unwrap().of(&[other_time]).len(), 1, "the id at another client time");
    // A claim made before migration 0013 (no client time: `-infinity`) by batch `old`.
    let old = uuid::Uuid::new_v4();
    sqlx::query("INSERT INTO ingest_event_ids (client_ts, event_id, batch) VALUES ('-infinity', $1, $2)")
        .bind(old)
        .bind(learnvault::dedup::batch_key("old:0:0-0"))
        .execute(&app.admin)
        .await
        .unwrap();
    let upgraded = learnvault::dedup::Claims::new(app.admin.clone(), 7);
    let delivered = EventKey::new(chrono::Utc::now(), old);
    let (new, with_new) = (events(1)[0], |k: EventKey| [k, delivered]);
    assert_eq!(
        upgraded.claim("k:3:0-1", &with_new(new)).await.unwrap().of(&with_new(new)),
        [new.event_id()].into_iter().collect(),
        "an event claimed before the upgrade is not claimed again"
    );
    assert_eq!(upgraded.claim("old:0:0-0", &[delivered]).await.unwrap().of(&[delivered]).len(), 1, "its own batch's replay keeps it");
    let later = EventKey::new(chrono::Utc::now() + chrono::Duration::seconds(1), old);
    assert!(upgraded.claim("k:4:0-0", &[later]).await.unwrap().of(&[later]).is_empty(), "held whatever the client time");
    sqlx::query("UPDATE ingest_event_ids SET seen_at = now() - interval '8 days' WHERE client_ts = '-infinity'")
        .execute(&app.admin)
        .await
        .unwrap();
    assert_eq!(upgraded.purge().await.unwrap(), 1);
    assert_eq!(upgraded.claim("k:5:0-0", &[later]).await.unwrap().of(&[later]).len(), 1, "until purged after the window");
}

#[tokio::test]
async fn a_claim_by_copy_is_all_or_nothing_and_two_landers_claiming_at_once_split_the_ids() {
    use std::collections::HashSet;
    use uuid::Uuid;
    let app = common::TestApp::spawn().await;
    // A new `Claims` has met no conflict yet: its first claim is a COPY.
    let fresh = || learnvault::dedup::Claims::new(app.admin.clone(), 7);
    // One id claimed by another batch, the last in key order: the COPY is refused whole, and
    // the ids are claimed one by one.
    let mut ids = events(8_000);
    ids.sort();
    let last = *ids.last().unwrap();
    assert_eq!(fresh().claim("c:0:0-0", &[last]).await.unwrap().of(&[last]), [last.event_id()].into_iter().collect());
    let got = fresh().claim("c:1:0-7999", &ids).await.unwrap().of(&ids);
    assert_eq!(got.len(), ids.len() - 1, "every id but the one claimed before");
    assert!(!got.contains(&last.event_id()));
    assert_eq!(fresh().claim("c:1:0-7999", &ids).await.unwrap().of(&ids), got, "a replay keeps its own claims");
    // Two landers claiming overlapping batches at once: each id goes to exactly one of them.
    let a = events(20_000);
    let b: Vec<EventKey> = a.iter().step_by(2).copied().chain(events(10_000)).collect();
    let (ca, cb) = (fresh(), fresh());
    let (ga, gb) = tokio::join!(ca.claim("c:2:0-19999", &a), cb.claim("c:3:0-19999", &b));
    let (ga, gb) = (ga.unwrap().of(&a), gb.unwrap().of(&b));
    assert!(ga.is_disjoint(&gb), "no id claimed by both");
    let union: HashSet<Uuid> = a.iter().chain(b.iter()).map(|k| k.event_id()).collect();
    assert_eq!(ga.len() + gb.len(), union.len(), "every id claimed by one of them");
    for (token, mine) in [("c:2:0-19999", &ga), ("c:3:0-19999", &gb)] {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest_event_ids WHERE batch = $1")
            .bind(learnvault::dedup::batch_key(token))
            .fetch_one(&app.admin)
            .await
            .unwrap();
        assert_eq!(n as usize, mine.len(), "the table names the batch of each claim");
    }
}

#[tokio::test]
async fn an_xapi_statement_sent_again_is_acknowledged_and_lands_once_and_other_content_is_409() {
    let (s, gw, lms) = Spine::with_gateway(true).await;
    let lander = s.start_lander().await;
    let st = fixture("openedx_video_played");
    let id = st["id"].as_str().unwrap().to_owned();
    let (code, ids) = send_xapi(&gw, &lms, "POST", "", &st).await;
    assert_eq!((code, ids.clone()), (StatusCode::OK, json!([id])), "{ids}");
    assert_eq!(s.wait_rows(1, Duration::from_secs(60)).await, 1);

    // Same id, same content (keys in another order, `stored` set): 200 with its id, nothing new.
    let mut same: serde_json::Map<String, Value> = st.as_object().unwrap().clone().into_iter().rev().collect();
    same.insert("stored".into(), json!("2026-12-03T10:00:00.000Z"));
    let (code, ids) = send_xapi(&gw, &lms, "POST", "", &Value::Object(same)).await;
    assert_eq!((code, ids), (StatusCode::OK, json!([id])));
    let (code, _) = send_xapi(&gw, &lms, "PUT", &format!("?statementId={id}"), &st).await;
    assert_eq!(code, StatusCode::NO_CONTENT, "PUT of the same statement");

    // Same id, other content: 409 xapi_id_conflict, alone or in a batch, and nothing of the batch is stored.
    let mut other = st.clone();
    other["result"] = json!({"extensions": {"https://w3id.org/xapi/video/extensions/time": 99.0}});
    let (code, v) = send_xapi(&gw, &lms, "POST", "", &other).await;
    assert_eq!((code, v["error"]["code"].clone()), (StatusCode::CONFLICT, json!("xapi_id_conflict")), "{v}");
    let (code, v) = send_xapi(&gw, &lms, "PUT", &format!("?statementId={id}"), &other).await;
    assert_eq!((code, v["error"]["code"].clone()), (StatusCode::CONFLICT, json!("xapi_id_conflict")), "{v}");
    // (A statement without `timestamp`: it takes the time it was first stored, on every delivery.)
    let mut fresh = fixture("openedx_video_paused");
    let fresh_id = uuid::Uuid::new_v4().to_string();
    fresh["id"] = json!(fresh_id);
    fresh.as_object_mut().unwrap().remove("timestamp");
    let (code, v) = send_xapi(&gw, &lms, "POST", "", &json!([fresh, other])).await;
    assert_eq!(
        (code, v["error"]["code"].clone(), v["error"]["message"].as_str().unwrap().starts_with("[1].id")),
        (StatusCode::CONFLICT, json!("xapi_id_conflict"), true),
        "{v}"
    );
    assert!(!v.to_string().contains(EXT), "no identifier in the answer: {v}");

    assert_eq!(wait_duplicates(&lander.stats, 2).await, 2, "the POST and the PUT sent again were dropped by the lander");
    // The batch's new statement was not stored: sent alone now, it is fresh and lands.
    let (code, ids) = send_xapi(&gw, &lms, "POST", "", &fresh).await;
    assert_eq!((code, ids), (StatusCode::OK, json!([fresh_id])));
    assert_eq!(s.wait_rows(2, Duration::from_secs(60)).await, 2);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (code, ids) = send_xapi(&gw, &lms, "POST", "", &fresh).await;
    assert_eq!((code, ids), (StatusCode::OK, json!([fresh_id])), "sent again later, without a timestamp");
    assert_eq!(wait_duplicates(&lander.stats, 3).await, 3, "dropped by the lander: the same client time as the first delivery");
    lander.stop().await;
    assert_eq!(rows_of(&s, &id).await, 1);
    assert_eq!(rows_of(&s, &fresh_id).await, 1);
    assert_eq!(s.count("SELECT sum(events) AS n FROM agg.learner_daily_activity").await, 2);
    s.wh.close();
}
