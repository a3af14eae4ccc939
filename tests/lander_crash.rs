//! Crash safety of the lander: SIGKILL mid-batch, broker restarts.
mod common;

use common::spine::{event, num, Broker, Spine};
use serde_json::json;
use std::process::{Child, Command};

use std::time::{Duration, Instant};

/// A `learnvault land` child process, SIGKILLed if the test fails.
struct Lander(Option<Child>);

impl Lander {
    fn spawn(s: &Spine) -> Lander {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_learnvault"));
        cmd.arg("land").envs(s.child_env()).stdout(std::process::Stdio::null());
        if let Some(log) = std::env::var_os("LV_DEBUG_LOG") {
            let f = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
            cmd.env("LEARNVAULT_LOG", "info,learnvault=debug").stderr(f);
        }
        Lander(Some(cmd.spawn().unwrap()))
    }
    fn sigkill(&mut self) {
        if let Some(mut c) = self.0.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
    fn sigterm(&mut self) -> bool {
        let mut c = self.0.take().unwrap();
        Command::new("kill").arg("-TERM").arg(c.id().to_string()).status().unwrap();
        c.wait().unwrap().success()
    }
}

impl Drop for Lander {
    fn drop(&mut self) {
        self.sigkill();
    }
}

#[tokio::test]
async fn sigkill_mid_batch_repeatedly_loses_nothing_and_duplicates_nothing() {
    // A child process owns the embedded engine; this process opens it only at the end.
    let mut s = Spine::new(false).await;
    let mut ls = Vec::new();
    for i in 0..24 {
        ls.push(s.app.issue("uni-a", &format!("K{i}"), json!({})).await);
    }
    let total = 6_000;
    let types = ["content.start", "session.heartbeat", "content.complete", "interact.pause", "assess.submit"];
    let events: Vec<_> = (0..total).map(|i| event(&ls[i % ls.len()], types[i % types.len()], "cs101", &format!("c{}", i % 3), "uni-a")).collect();

    let mut child = Lander::spawn(&s);
    let mut kills = 0u64;
    // Kills are spaced beyond the group's session timeout (6 s), so each dead member has
    // left the group before the next one dies (tansu does not always recover from a
    // pile of dead members in one rebalance).
    let mut next_kill = Instant::now() + Duration::from_millis(2_500);
    for chunk in events.chunks(150) {
        s.produce(chunk).await;
        tokio::time::sleep(Duration::from_millis(550)).await;
        if Instant::now() >= next_kill && kills < 3 {
            child.sigkill(); // mid-batch or mid-insert: whatever it was doing
            kills += 1;
            child = Lander::spawn(&s);
            next_kill = Instant::now() + Duration::from_millis(7_000 + 300 * kills);
        }
    }
    assert!(kills >= 3, "killed {kills} times");
    let deadline = Instant::now() + Duration::from_secs(180);
    while !s.caught_up() {
        assert!(Instant::now() < deadline, "lander did not catch up");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(child.sigterm(), "SIGTERM drains and exits cleanly");

    s.wh = learnvault::warehouse::Warehouse::open(&s.settings).unwrap();
    assert_eq!(s.count("SELECT count() AS n FROM events.learning_events").await, total as u64, "exactly the produced count");
    assert_eq!(s.count("SELECT uniqExact(event_id) AS n FROM events.learning_events").await, total as u64, "no duplicate event ids");
    // Every rollup equals a recomputation from the base table.
    let checks = [
        ("SELECT sum(events) AS n FROM agg.learner_daily_activity", "SELECT count() AS n FROM events.learning_events"),
        (
            "SELECT sum(heartbeat_seconds) AS n FROM agg.engagement_per_minute",
            "SELECT countIf(event_type = 'session.heartbeat') * 30 AS n FROM events.learning_events",
        ),
        ("SELECT sum(pauses) AS n FROM agg.content_replays_daily", "SELECT countIf(event_type = 'interact.pause') AS n FROM events.learning_events"),
        (
            "SELECT sum(c) AS n FROM (SELECT cohort_id, uniqMerge(started) AS c FROM agg.funnel_by_cohort GROUP BY cohort_id)",
            "SELECT sum(c) AS n FROM (SELECT cohort_id, uniqIf(learner_id, event_type = 'content.start') AS c FROM events.learning_events GROUP BY cohort_id)",
        ),
    ];
    for (rollup, fresh) in checks {
        assert_eq!(s.count(rollup).await, s.count(fresh).await, "{rollup}");
    }
    assert_eq!(s.count("SELECT sum(events) AS n FROM agg.engagement_per_minute").await, total as u64);
    s.wh.close();
}

#[tokio::test]
async fn the_lander_resumes_by_itself_after_a_broker_restart() {
    let mut broker = Broker::start_new();
    let s = Spine::with_brokers(true, broker.brokers()).await;
    let l = s.app.issue("uni-a", "R1", json!({})).await;
    let lander = s.start_lander().await;
    let batch = |n: usize| (0..n).map(|_| event(&l, "session.heartbeat", "cs101", "c1", "uni-a")).collect::<Vec<_>>();
    s.produce(&batch(100)).await;
    assert_eq!(s.wait_rows(100, Duration::from_secs(30)).await, 100);
    broker.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.start();
    s.produce(&batch(100)).await;
    let landed = s.wait_rows(200, Duration::from_secs(90)).await;
    if landed != 200 {
        panic!("resumed without a manual step? landed {landed}; the lander ended with {}", lander.outcome().await);
    }
    lander.stop().await;
    assert_eq!(num(&s.wh.query("SELECT uniqExact(event_id) AS n FROM events.learning_events", &[]).await.unwrap()[0]["n"]), 200);
    s.wh.close();
}

#[tokio::test]
async fn serve_runs_the_api_and_the_lander_in_one_process_and_drains_on_sigterm() {
    let s = Spine::new(false).await;
    let port = 30_000 + (uuid::Uuid::new_v4().as_u128() % 20_000) as u16;
    let key = s.app.master.to_base64();
    let mut child = Command::new(env!("CARGO_BIN_EXE_learnvault"))
        .arg("serve")
        .envs(s.child_env())
        .env("LEARNVAULT_LANDER_ENABLED", "true")
        .env("LEARNVAULT_LISTEN", format!("127.0.0.1:{port}"))
        .env("LEARNVAULT_MASTER_KEY", secrecy::ExposeSecret::expose_secret(&key))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/readyz")).send().await.map(|r| !r.status().is_success()).unwrap_or(true) {
        assert!(Instant::now() < deadline, "serve did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The LMS gets a pseudonym from the API of the same process that lands its events.
    let r: serde_json::Value = client
        .post(format!("{base}/v1/pseudonyms"))
        .bearer_auth(s.app.lms("uni-a"))
        .json(&json!({"institution": "uni-a", "external_id": "served-1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let p = r["pseudonym"].as_str().unwrap().to_owned();
    s.produce(&(0..50).map(|_| event(&p, "session.heartbeat", "cs101", "c1", "uni-a")).collect::<Vec<_>>()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !s.caught_up() {
        assert!(Instant::now() < deadline, "lander inside serve did not land");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("learnvault_lander_rows_total"), "lander metrics are served");
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(child.wait().unwrap().success(), "SIGTERM stops the API and drains the lander");

    let wh = learnvault::warehouse::Warehouse::open(&s.settings).unwrap();
    let rows = wh.query("SELECT count() AS n FROM events.learning_events WHERE learner_id = {p:UUID}", &[("p", p)]).await.unwrap();
    assert_eq!(num(&rows[0]["n"]), 50);
    wh.close();
}
