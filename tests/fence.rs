//! Erasure fences the landers: it deletes only after every live lander, in any
//! process, has seen the tombstone and has no batch in flight governed before it.
mod common;

use common::TestApp;
use learnvault::fence::{self, Fence};
use learnvault::governance::{Governance, Standing};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

async fn job(app: &TestApp, id: &str) -> Value {
    let (s, job) = app.get(&format!("/v1/dsr/jobs/{id}"), &app.dpo("uni-a")).await;
    assert_eq!(s, StatusCode::OK, "{job}");
    job
}

#[tokio::test]
async fn erasure_waits_for_a_lander_in_another_process_to_acknowledge_before_deleting() {
    let app = TestApp::spawn_with_warehouse().await;
    let a = app.issue("uni-a", "S-A", json!({})).await;
    app.warehouse()
        .execute(
            "INSERT INTO events.learning_events (server_ts, client_ts, event_id, event_version, event_type, learner_id, session_id,
                 course_id, content_id, cohort_id, institution_id, position_sec, props)
             SELECT now64(3), now64(3), generateUUIDv4(), '2.3', 'content.view', {l:UUID}, 's', 'cs101', 'v', 'c1', 'uni-a', 1, map() FROM numbers(10)",
            &[("l", a.clone())],
        )
        .await
        .unwrap();
    // Another process's lander: alive (heartbeat), still holding a batch governed before any erasure.
    let other = uuid::Uuid::new_v4();
    let admin = app.admin.clone();
    let beating = tokio::spawn(async move {
        loop {
            sqlx::query(
                "INSERT INTO lander_fences (lander_id, acked_epoch, heartbeat_at) VALUES ($1, 0, now())
                 ON CONFLICT (lander_id) DO UPDATE SET heartbeat_at = now()",
            )
            .bind(other)
            .execute(&admin)
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, j) = app.post("/v1/dsr/erasure", &app.dpo("uni-a"), json!({"pseudonym": a})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{j}");
    let id = j["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let j = job(&app, &id).await;
    assert_eq!((j["state"].as_str(), j["step"].as_str()), (Some("running"), Some("fence")), "{j}");
    let rows = app.warehouse().query("SELECT count() AS n FROM events.learning_events WHERE learner_id = {p:UUID}", &[("p", a.clone())]).await.unwrap();
    assert_eq!(common::spine::num(&rows[0]["n"]), 10, "nothing deleted before the landers acknowledged");

    // The other lander lands its batch and acknowledges the epoch: the erasure proceeds.
    let epoch = j["progress"]["fence_epoch"].as_i64().unwrap();
    sqlx::query("UPDATE lander_fences SET acked_epoch = $2 WHERE lander_id = $1").bind(other).bind(epoch).execute(&app.admin).await.unwrap();
    let mut done = Value::Null;
    for _ in 0..200 {
        done = job(&app, &id).await;
        if done["state"] == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(done["state"], "done", "{done}");
    assert!(done["progress"]["fenced_at"].is_string(), "{done}");
    let rows = app.warehouse().query("SELECT count() AS n FROM events.learning_events WHERE learner_id = {p:UUID}", &[("p", a.clone())]).await.unwrap();
    assert_eq!(common::spine::num(&rows[0]["n"]), 0);
    beating.abort();
}

#[tokio::test]
async fn a_lander_acknowledges_an_epoch_only_with_no_batch_governed_before_it_and_forgets_stale_standings() {
    let app = TestApp::spawn().await;
    let pool = app.state.pool.clone();
    let a = app.issue("uni-a", "S-A", json!({})).await;
    let p = uuid::Uuid::parse_str(&a).unwrap();
    // A long cache: without the fence, the erasure would go unseen for an hour.
    let governance = Arc::new(Governance::new(pool.clone(), Duration::from_secs(3600), true));
    let fence = Fence::start(pool.clone(), governance.clone());
    assert!(matches!(governance.standings([p]).await.unwrap()[&p], Standing::Active { .. }));

    // A batch is governed (from the cache) before the erasure's epoch.
    let in_flight = fence.enter();
    fence.refresh().await.unwrap();
    sqlx::query("INSERT INTO tombstones (pseudonym, institution_id, request_id) VALUES ($1, 'uni-a', gen_random_uuid())")
        .bind(p)
        .execute(&app.admin)
        .await
        .unwrap();
    let epoch = fence::advance(&pool).await.unwrap();
    assert_eq!(fence.acknowledge().await.unwrap(), epoch - 1, "a batch governed before the epoch is still in flight");
    assert_eq!(fence::laggards(&pool, epoch).await.unwrap(), vec![fence.id()]);
    // The refresh emptied the cache: the next batch sees the tombstone.
    let next = fence.enter();
    assert_eq!(governance.standings([p]).await.unwrap()[&p], Standing::Erased);
    drop(in_flight);
    drop(next);
    assert_eq!(fence.acknowledge().await.unwrap(), epoch);
    assert!(fence::laggards(&pool, epoch).await.unwrap().is_empty());
    assert!(matches!(fence::wait_for_landers(&pool, epoch, Duration::from_secs(1)).await.unwrap(), Ok(())));
}
