//! The ClickHouse server adapter, where a server is configured
//! (`LEARNVAULT_TEST_CLICKHOUSE_URL=http://user:pw@host:8123`); none can run on
//! the development machines, so without it the test says so and returns.

use learnvault::config::Settings;
use learnvault::warehouse::{migrate, Warehouse};

#[tokio::test]
async fn the_server_adapter_runs_the_same_migrations_and_parameters() {
    let Ok(url) = std::env::var("LEARNVAULT_TEST_CLICKHOUSE_URL") else {
        println!("SKIPPED: no ClickHouse server configured (set LEARNVAULT_TEST_CLICKHOUSE_URL to run this test)");
        return;
    };
    let settings = Settings {
        clickhouse_url: url,
        clickhouse_migrations_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/clickhouse").into(),
        ..Settings::default()
    };
    let wh = Warehouse::open(&settings).unwrap();
    migrate::run(&wh, &settings.clickhouse_migrations_dir).await.unwrap();
    assert!(migrate::run(&wh, &settings.clickhouse_migrations_dir).await.unwrap().is_empty());
    let hostile = "x'); DROP TABLE events.learning_events; --";
    let rows = wh.query("SELECT {v:String} AS v", &[("v", hostile.into())]).await.unwrap();
    assert_eq!(rows[0]["v"], hostile);
    assert!(wh.version().await.unwrap().starts_with("ClickHouse server"));
}
