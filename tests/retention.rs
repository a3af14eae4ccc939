//! Retention proof on the live embedded engine.
mod common;

use common::spine::num;
use learnvault::config::Settings;
use learnvault::retention::{verify, Policy};
use learnvault::warehouse::{migrate, Warehouse};

#[tokio::test]
async fn ttls_match_the_policy_expired_rows_go_and_a_drifted_ttl_fails() {
    let dir = std::env::temp_dir().join(format!("lv-ch-{}", uuid::Uuid::new_v4().simple()));
    let settings = Settings {
        warehouse: learnvault::config::WarehouseSettings {
            url: format!("chdb://{}", dir.display()),
            migrations_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/clickhouse").into(),
            ..Default::default()
        },
        ..Settings::default()
    };
    let wh = Warehouse::open(&settings).unwrap();
    migrate::run(&wh, &settings.warehouse.migrations_dir).await.unwrap();
    let policy = Policy::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/retention.yaml")).unwrap();

    let r = verify(&wh, &policy).await.unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.tables.len(), 7); // six event-spine tables and signals.findings

    // Rows from three years ago arrive with today's: the engine drops the expired ones as it
    // writes them (and at merges): retention needs no script.
    let insert = "INSERT INTO events.learning_events (server_ts, client_ts, event_id, event_version, event_type, learner_id, session_id,
                       course_id, content_id, cohort_id, institution_id, position_sec, props)
         SELECT ts, ts, generateUUIDv4(), '2.3', 'session.heartbeat', generateUUIDv4(), 's', 'cs101', 'v', 'c1', 'uni', NULL, map()
         FROM (SELECT if(number % 2 = 0, now64(3) - toIntervalYear(3), now64(3)) AS ts FROM numbers(1000))";
    wh.execute(insert, &[]).await.unwrap();
    // Every table under the policy (a list here missed agg.learner_day_by_cohort once it came,
    // and the test then passed only when a merge had run in time).
    for t in r.tables.iter().map(|t| t.table.clone()) {
        wh.execute(&format!("OPTIMIZE TABLE {t} FINAL"), &[]).await.unwrap();
    }
    assert_eq!(num(&wh.query("SELECT count() AS n FROM events.learning_events", &[]).await.unwrap()[0]["n"]), 500);
    let r = verify(&wh, &policy).await.unwrap();
    assert!(r.ok, "{r:?}");

    // A migration lengthens the base table's TTL without the policy: the TTL check fails,
    // and the rows it now keeps beyond the policy are reported with the oldest date.
    wh.execute("ALTER TABLE events.learning_events MODIFY TTL event_date + INTERVAL 60 MONTH", &[]).await.unwrap();
    wh.execute(insert, &[]).await.unwrap();
    let r = verify(&wh, &policy).await.unwrap();
    assert!(!r.ok);
    let base = r.tables.iter().find(|t| t.table == "events.learning_events").unwrap();
    assert!(!base.ttl_ok && !base.rows_ok, "{base:?}");
    assert_eq!(base.live_ttl.as_deref(), Some("event_date + toIntervalMonth(60)"));
    assert!(base.oldest.as_deref().is_some_and(|o| o < base.limit.as_str()), "{base:?}");
    wh.execute("ALTER TABLE events.learning_events MODIFY TTL event_date + INTERVAL 26 MONTH", &[]).await.unwrap();
    wh.execute("OPTIMIZE TABLE events.learning_events FINAL", &[]).await.unwrap();
    let r = verify(&wh, &policy).await.unwrap();
    assert!(r.tables.iter().find(|t| t.table == "events.learning_events").unwrap().rows_ok, "{r:?}");

    // A migration that shortens a TTL without the policy fails the check, naming the table.
    wh.execute("ALTER TABLE agg.content_replays_daily MODIFY TTL event_date + INTERVAL 12 MONTH", &[]).await.unwrap();
    let r = verify(&wh, &policy).await.unwrap();
    assert!(!r.ok);
    let drifted: Vec<_> = r.tables.iter().filter(|t| !t.ttl_ok).map(|t| (t.table.as_str(), t.live_ttl.clone())).collect();
    assert_eq!(drifted, vec![("agg.content_replays_daily", Some("event_date + toIntervalMonth(12)".to_string()))]);
    wh.close();
}

#[tokio::test]
async fn topics_are_created_with_the_policys_retention_and_a_drifted_topic_fails() {
    use learnvault::retention::{verify_topics, Report};
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;

    let id = uuid::Uuid::new_v4().simple().to_string();
    let settings = Settings {
        kafka: learnvault::config::KafkaSettings {
            brokers: common::spine::brokers(),
            events_topic: format!("ret-{id}"),
            dlq_topic: format!("ret-{id}.dlq"),
            topic_partitions: 2,
            ..Default::default()
        },
        policy_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/policies").into(),
        ..Settings::default()
    };
    let specs = learnvault::topics::specs(&settings).unwrap();
    let empty = || Report { ok: true, checked_at: String::new(), grace_days: 2, tables: vec![], not_checked: vec![] };

    // Before the topics exist, their retention cannot be shown: a violation.
    let mut r = empty();
    verify_topics(&mut r, &settings.kafka.brokers, &specs).await;
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.tables[0].live_ttl.as_deref(), Some("no such topic"));

    learnvault::topics::ensure(&settings.kafka.brokers, &specs).await.unwrap();
    let live = learnvault::topics::live_configs(&settings.kafka.brokers, &[&settings.kafka.events_topic, &settings.kafka.dlq_topic]).await.unwrap();
    let dlq = live[&settings.kafka.dlq_topic].as_ref().unwrap();
    assert_eq!(dlq["retention.ms"], (14 * 86_400_000i64).to_string(), "dead letters: 14 days, from policies/retention.yaml");
    assert_eq!(dlq["cleanup.policy"], "delete");
    assert_eq!(live[&settings.kafka.events_topic].as_ref().unwrap()["retention.ms"], (7 * 86_400_000i64).to_string());
    let mut r = empty();
    verify_topics(&mut r, &settings.kafka.brokers, &specs).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.tables.len(), 2);

    // An operator sets the dead letters to be kept forever: the report names the topic and
    // what it found, and `ensure` (a restart) does not silently rewrite it.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &settings.kafka.brokers).create().unwrap();
    let alter = AlterConfig::new(ResourceSpecifier::Topic(&settings.kafka.dlq_topic)).set("retention.ms", "-1");
    for res in admin.alter_configs([&alter], &AdminOptions::new()).await.unwrap() {
        res.unwrap();
    }
    learnvault::topics::ensure(&settings.kafka.brokers, &specs).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let r = loop {
        let mut r = empty();
        verify_topics(&mut r, &settings.kafka.brokers, &specs).await;
        if !r.ok || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(!r.ok, "{r:?}");
    let bad: Vec<_> = r.tables.iter().filter(|t| !t.ttl_ok).collect();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0].table, format!("kafka:{}", settings.kafka.dlq_topic));
    assert!(bad[0].live_ttl.as_deref().unwrap().contains("retention.ms=-1"), "{bad:?}");
}
