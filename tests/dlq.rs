//! `learnvault dlq replay` (issue 13) on real Apache Kafka, PostgreSQL and the embedded engine:
//! dead letters re-injected after a fix go through the normal gate and land once, however
//! often they are replayed; what was redacted is never replayed; every replay is audited.
mod common;

use common::spine::{event, Spine};
use learnvault::dlq::{replay, Replay};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

async fn consent(s: &Spine, learner: &str, analytics: bool) {
    let path = format!("/v1/pseudonyms/{learner}/consent");
    let (st, v) = s.app.send("PUT", &path, Some(&s.app.lms("uni-a")), Some(json!({"consents": {"analytics": analytics}}))).await;
    assert!(st.is_success(), "{v}");
}

#[tokio::test]
async fn dead_letters_replayed_after_a_fix_land_once_and_redacted_ones_never() {
    let mut s = Spine::new(true).await;
    s.settings.governance.cache_ms = 100;
    let since = chrono::Utc::now() - chrono::Duration::minutes(1);
    let a = s.app.issue("uni-a", "L0", json!({})).await;
    let b = s.app.issue("uni-a", "L1", json!({})).await;
    consent(&s, &a, false).await;
    let lander = s.start_lander().await;
    let refused: Vec<_> = ["session.start", "session.heartbeat", "content.view"].iter().map(|t| event(&a, t, "cs101", "c1", "uni-a")).collect();
    let good = event(&b, "content.view", "cs101", "c1", "uni-a");
    let mut protected = event(&b, "content.view", "cs101", "c1", "uni-a");
    protected["props"] = json!({"Gender": "F"});
    s.produce(&refused).await;
    s.produce(&[good, protected]).await;
    assert_eq!(s.wait_rows(1, Duration::from_secs(60)).await, 1);
    assert_eq!(s.dead_letters(4, Duration::from_secs(30)).await.len(), 4);

    // Nothing fixed yet: a dry run counts, produces and audits nothing.
    let ask = |reason: &str, since, dry_run| Replay { reason: reason.into(), since, dry_run, actor: "cli:test".into() };
    let before = s.messages_in(&s.settings.kafka.events_topic);
    let r = replay(&s.settings, &ask("no_consent", since, true)).await.unwrap();
    assert_eq!((r.matched, r.replayed), (3, 3), "{r:?}");
    assert_eq!(s.messages_in(&s.settings.kafka.events_topic), before, "a dry run produces nothing");

    // The fix: the learner gives consent. Replayed, the three land; replayed again, nothing more.
    consent(&s, &a, true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = replay(&s.settings, &ask("no_consent", since, false)).await.unwrap();
    assert_eq!((r.read, r.matched, r.replayed), (4, 3, 3), "{r:?}");
    assert_eq!(s.wait_rows(4, Duration::from_secs(60)).await, 4);
    let r = replay(&s.settings, &ask("no_consent", since, false)).await.unwrap();
    assert_eq!(r.replayed, 3, "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while lander.stats.duplicates.load(Ordering::Relaxed) < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lander.stats.duplicates.load(Ordering::Relaxed), 3, "the second replay is dropped by the lander");
    // A dead letter that had its identity or protected value redacted cannot be restored: skipped.
    let r = replay(&s.settings, &ask("protected_attribute", since, false)).await.unwrap();
    assert_eq!((r.matched, r.replayed, r.skipped.get("redacted").copied()), (1, 0, Some(1)), "{r:?}");
    // Nothing before --since.
    let r = replay(&s.settings, &ask("no_consent", chrono::Utc::now() + chrono::Duration::hours(1), false)).await.unwrap();
    assert_eq!((r.matched, r.replayed), (0, 0), "{r:?}");
    lander.stop().await;

    assert_eq!(s.count("SELECT count() AS n FROM events.learning_events").await, 4);
    assert_eq!(s.count("SELECT sum(events) AS n FROM agg.learner_daily_activity").await, 4);
    for e in &refused {
        let id = e["event_id"].as_str().unwrap().to_owned();
        assert_eq!(s.count(&format!("SELECT count() AS n FROM events.learning_events WHERE event_id = '{id}'")).await, 1, "{e}");
    }
    // Audited: one row per replay that was not a dry run, with its counts.
    let rows: Vec<(String, serde_json::Value)> =
        sqlx::query_as("SELECT actor, detail FROM audit_log WHERE action = 'dlq.replay' ORDER BY seq").fetch_all(&s.app.admin).await.unwrap();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(rows[0].0, "cli:test");
    assert_eq!((rows[0].1["reason"].clone(), rows[0].1["replayed"].clone()), (json!("no_consent"), json!(3)));
    assert_eq!(rows[2].1["skipped"], json!({"redacted": 1}));
    s.wh.close();
}
