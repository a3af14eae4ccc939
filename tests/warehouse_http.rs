//! The ClickHouse server adapter against a real server
//! (`LEARNVAULT_TEST_CLICKHOUSE_URL=http://user:pw@host:8123`). None can run on our
//! machines, so the test is ignored there: `cargo nextest run --run-ignored all --test
//! warehouse_http` where a server is configured.

use learnvault::config::Settings;
use learnvault::warehouse::{migrate, Warehouse};

#[tokio::test]
#[ignore = "needs a ClickHouse server (LEARNVAULT_TEST_CLICKHOUSE_URL); none can run on our machines"]
async fn the_server_adapter_runs_the_same_migrations_and_parameters() {
    let url = std::env::var("LEARNVAULT_TEST_CLICKHOUSE_URL").expect("LEARNVAULT_TEST_CLICKHOUSE_URL names a ClickHouse server");
    let settings = Settings {
        warehouse: learnvault::config::WarehouseSettings {
            url,
            migrations_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/clickhouse").into(),
            ..Default::default()
        },
        ..Settings::default()
    };
    let wh = Warehouse::open(&settings).unwrap();
    migrate::run(&wh, &settings.warehouse.migrations_dir).await.unwrap();
    assert!(migrate::run(&wh, &settings.warehouse.migrations_dir).await.unwrap().is_empty());
    let hostile = "x'); DROP TABLE events.learning_events; --";
    let rows = wh.query("SELECT {v:String} AS v", &[("v", hostile.into())]).await.unwrap();
    assert_eq!(rows[0]["v"], hostile);
    assert!(wh.version().await.unwrap().starts_with("ClickHouse server"));
}
