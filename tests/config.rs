//! `Settings::load` from the environment and the file, in `figment::Jail`s (which set
//! variables and change the working directory: a test binary of its own).

use figment::Jail;
use learnvault::config::Settings;

#[test]
fn each_variable_keeps_its_name_and_lands_in_its_section() {
    Jail::expect_with(|jail| {
        jail.set_env("LEARNVAULT_LANDER_IN_FLIGHT", 3);
        jail.set_env("LEARNVAULT_LANDER_BATCH_MS", 40);
        jail.set_env("LEARNVAULT_CONSUMER_GROUP", "g-1");
        jail.set_env("LEARNVAULT_KAFKA_BROKERS", "k1:9092,k2:9092");
        jail.set_env("LEARNVAULT_CLICKHOUSE_URL", "http://ch:8123");
        jail.set_env("LEARNVAULT_INGEST_DEDUP", "false");
        jail.set_env("LEARNVAULT_INGEST_DEDUP_WINDOW_DAYS", 14);
        jail.set_env("LEARNVAULT_CONSOLE_IDLE_MINUTES", 5);
        jail.set_env("LEARNVAULT_OIDC_CLIENT_ID", "c-1");
        jail.set_env("LEARNVAULT_DB_MAX_CONNECTIONS", 4);
        jail.set_env("LEARNVAULT_RECORD_FORMAT", "single");
        jail.set_env("LEARNVAULT_ENV", "production");
        // Not settings: the log filter, the test harness's and ops/'s variables.
        jail.set_env("LEARNVAULT_LOG", "debug");
        jail.set_env("LEARNVAULT_TEST_PG_PORT", 1);
        jail.set_env("LEARNVAULT_KAFKA_PORT", 9);
        let s = Settings::load()?;
        assert_eq!(s.lander.in_flight, 3);
        assert_eq!(s.lander.batch_ms, 40);
        assert_eq!(s.lander.consumer_group, "g-1");
        assert_eq!(s.kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(s.warehouse.url, "http://ch:8123");
        assert!(!s.dedup.enabled);
        assert_eq!(s.dedup.window_days, 14);
        assert_eq!(s.console.idle_minutes, 5);
        assert_eq!(s.console.oidc_client_id, "c-1");
        assert_eq!(s.database.max_connections, 4);
        assert_eq!(s.kafka.record_format, learnvault::envelope::RecordFormat::Single);
        assert!(s.is_production());
        // Everything else keeps its default.
        assert_eq!(s.lander.batch_rows, learnvault::config::LanderSettings::default().batch_rows);
        s.validate().expect("valid");
        Ok(())
    });
}

#[test]
fn a_bad_value_is_refused_naming_its_variable() {
    Jail::expect_with(|jail| {
        jail.set_env("LEARNVAULT_LANDER_IN_FLIGHT", "many");
        let e = Settings::load().unwrap_err().to_string();
        assert!(e.contains("LEARNVAULT_LANDER_IN_FLIGHT"), "{e}");
        jail.set_env("LEARNVAULT_LANDER_IN_FLIGHT", 7);
        let e = Settings::load()?.validate().unwrap_err().to_string();
        assert_eq!(e, "invalid configuration: LEARNVAULT_LANDER_IN_FLIGHT must be 1..=4 (got 7)");
        Ok(())
    });
}

#[test]
fn the_file_is_read_in_either_form_and_the_environment_wins() {
    Jail::expect_with(|jail| {
        jail.create_file("learnvault.toml", "lander_batch_rows = 100\n[lander]\nin_flight = 3\n[warehouse]\nchdb_connections = 5\n")?;
        let s = Settings::load()?;
        assert_eq!((s.lander.batch_rows, s.lander.in_flight, s.warehouse.chdb_connections), (100, 3, 5));
        jail.set_env("LEARNVAULT_LANDER_IN_FLIGHT", 1);
        jail.set_env("LEARNVAULT_LANDER_BATCH_ROWS", 200);
        let s = Settings::load()?;
        assert_eq!((s.lander.batch_rows, s.lander.in_flight, s.warehouse.chdb_connections), (200, 1, 5));
        // LEARNVAULT_CONFIG names another file (and is not a setting itself).
        jail.create_file("other.toml", "[kafka]\ntopic_partitions = 2\n")?;
        jail.set_env("LEARNVAULT_CONFIG", "other.toml");
        let s = Settings::load()?;
        assert_eq!((s.kafka.topic_partitions, s.warehouse.chdb_connections), (2, 3));
        Ok(())
    });
}
