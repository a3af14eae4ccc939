//! The data map agrees with the live schemas, and a new table holding learner data cannot hide.
mod common;

use common::TestApp;
use learnvault::datamap::{compare, live_clickhouse, live_postgres, DataMap};
use learnvault::warehouse::{migrate, Warehouse};

#[tokio::test]
async fn the_shipped_map_covers_every_live_store_and_a_new_table_is_named() {
    let app = TestApp::spawn().await;
    let mut settings = app.settings.clone();
    let dir = std::env::temp_dir().join(format!("lv-ch-{}", uuid::Uuid::new_v4().simple()));
    settings.warehouse.url = format!("chdb://{}", dir.display());
    settings.warehouse.migrations_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/clickhouse").into();
    let wh = Warehouse::open(&settings).unwrap();
    migrate::run(&wh, &settings.warehouse.migrations_dir).await.unwrap();
    let map = DataMap::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/data-map.yaml")).unwrap();

    let ch = live_clickhouse(&wh).await.unwrap();
    let pg = live_postgres(&app.admin).await.unwrap();
    assert!(ch.1.iter().any(|o| o.name == "agg.funnel_by_cohort" && o.why.contains("filled by")), "{:?}", ch.1);
    assert_eq!(compare(&map, &ch, &pg), Vec::<String>::new());

    // Someone adds a feature table and a shadow copy without mapping them.
    wh.execute("CREATE TABLE agg.sneaky_features (learner_id UUID, score Float64) ENGINE = MergeTree ORDER BY learner_id", &[]).await.unwrap();
    wh.execute(
        "CREATE MATERIALIZED VIEW agg.replay_copy ENGINE = MergeTree ORDER BY tuple() AS SELECT learner_id AS who FROM events.learning_events",
        &[],
    )
    .await
    .unwrap();
    sqlx::query("CREATE TABLE shadow_learners (pseudonym uuid)").execute(&app.admin).await.unwrap();
    let live = live_clickhouse(&wh).await.unwrap();
    let problems = compare(&map, &live, &live_postgres(&app.admin).await.unwrap());
    let text = problems.join("\n");
    assert!(text.contains("unmapped: clickhouse agg.sneaky_features holds learner data (has column learner_id)"), "{text}");
    assert!(text.contains("unmapped: clickhouse agg.replay_copy holds learner data (MaterializedView reads learner_id)"), "{text}");
    assert!(text.contains("unmapped: postgres shadow_learners"), "{text}");

    // A mapped table that disappears is named too.
    wh.execute("DROP TABLE agg.learner_daily_activity_mv", &[]).await.unwrap();
    let text = compare(&map, &live_clickhouse(&wh).await.unwrap(), &live_postgres(&app.admin).await.unwrap()).join("\n");
    assert!(text.contains("missing: clickhouse agg.learner_daily_activity_mv"), "{text}");
    wh.close();
}

#[test]
fn a_keep_without_reason_is_refused() {
    let f = std::env::temp_dir().join(format!("lv-map-{}.yaml", uuid::Uuid::new_v4()));
    std::fs::write(&f, "stores:\n  - {store: postgres, name: t, kind: table, subject_key: pseudonym, category: x, erasure: keep}\n").unwrap();
    let err = DataMap::load(&f).unwrap_err().to_string();
    assert!(err.contains("needs a reason"), "{err}");
    std::fs::remove_file(f).unwrap();
}
