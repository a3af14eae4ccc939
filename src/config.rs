//! Typed settings, loaded in layers: built-in defaults -> optional TOML file
//! (`LEARNVAULT_CONFIG`, default `learnvault.toml` if present) -> `LEARNVAULT_*`
//! environment variables. Secrets are `SecretString`s: never printed.

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::SecretString;
use serde::Deserialize;
use std::path::PathBuf;

/// The pinned embedded-engine version (`ops/install-chdb.sh`).
pub const CHDB_VERSION: &str = "26.7.3-stable.1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// `development` (generated dev key allowed, HS256 dev tokens) or `production`.
    pub env: Environment,
    /// Address the HTTP API listens on.
    pub listen: String,
    /// Runtime connection (role `learnvault_app`, which owns nothing).
    pub database_url: SecretString,
    /// Owner connection used only to run migrations.
    pub admin_database_url: SecretString,
    pub db_max_connections: u32,
    /// Base64 of the 32-byte master key. Takes precedence over `master_key_file`.
    pub master_key: Option<SecretString>,
    /// File holding the base64 master key. In development, generated (0600) if missing.
    pub master_key_file: Option<PathBuf>,
    /// Directory of `roles.yaml`, `purposes.yaml`, ...
    pub policy_dir: PathBuf,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    /// JWKS file with RS256/EdDSA public keys. When set, HS256 dev tokens are refused.
    pub jwks_file: Option<PathBuf>,
    pub log_format: LogFormat,
    /// Request body limit for ordinary endpoints.
    pub body_limit_bytes: usize,
    /// Request body limit for batch endpoints.
    pub batch_body_limit_bytes: usize,
    /// Maximum items in one batch call.
    pub batch_max_items: usize,
    /// Concurrent group-commit writers for single issuance.
    pub issue_writers: usize,
    /// `chdb:///data/path` (embedded engine; `chdb://` = the default path) or `http://user:pw@host:8123`.
    pub clickhouse_url: String,
    /// Path of `libchdb.so` (installed by `ops/install-chdb.sh`).
    pub chdb_lib: Option<PathBuf>,
    /// Connections to the embedded engine (one per concurrent worker).
    pub chdb_connections: usize,
    /// Threads of the embedded engine's merge and mutation pool (chDB's own default of 2 makes
    /// an erasure's mutations queue behind merges for tens of seconds).
    pub chdb_background_pool: usize,
    /// Directory of the numbered ClickHouse migrations.
    pub clickhouse_migrations_dir: PathBuf,
    /// Kafka bootstrap servers.
    pub kafka_brokers: String,
    pub events_topic: String,
    pub dlq_topic: String,
    pub consumer_group: String,
    /// Partitions of the topics when the lander creates them.
    pub topic_partitions: i32,
    /// A partition's batch is flushed at this many records...
    pub lander_batch_rows: usize,
    /// ...or this many bytes (an envelope record holds many events)...
    pub lander_batch_bytes: usize,
    /// ...or when its oldest event has waited this long.
    pub lander_batch_ms: u64,
    /// Attempts of a batch's offset commit (250 ms doubling to 5 s between them) before it is
    /// abandoned and owed (committed when the lander is idle); 10 is ~30 s.
    pub lander_commit_attempts: u32,
    /// Batches the lander has in flight at most (each decodes, claims its event ids and
    /// inserts while the ones before it finish; they commit in order): 1..=4.
    pub lander_in_flight: usize,
    /// Larger events are dead-lettered as `oversized`.
    pub max_event_bytes: usize,
    /// How long the lander trusts a vault answer (an erasure takes effect within it).
    pub governance_cache_ms: u64,
    /// Run the lander inside `serve`.
    pub lander_enabled: bool,
    /// Idempotent ingest: an event id lands once within the window (see `dedup`). Off only
    /// to measure what it costs (`bench lander --dedup-compare`).
    pub ingest_dedup: bool,
    /// Days an event id (or xAPI statement id) is remembered; at least 7.
    pub ingest_dedup_window_days: u32,
    /// An event whose client clock is further than this from server time is flagged
    /// (`props.clock_skew_ms`), by the gateway and the lander alike.
    pub clock_skew_secs: u64,
    /// The gateway gives up on a broker acknowledgement after this (503, retry).
    pub produce_timeout_ms: u64,
    /// Kafka batch compression of event produce requests (gateway, loadgen, benches): `none`
    /// when envelopes are zstd frames already, `lz4` or `zstd` for single-event records.
    pub produce_compression: String,
    /// What a record of the events topic holds when the gateway (and `bench lander`) produce:
    /// `single` (one JSON event keyed by pseudonym) or `envelope`; see `envelope`.
    pub record_format: crate::envelope::RecordFormat,
    /// Compression of each envelope's value by the gateway and `bench lander`: `zstd`
    /// (default) or `none`; see `envelope`. The lander reads both.
    pub envelope_compression: crate::envelope::Compression,
    /// Events in one `POST /v1/events` or xAPI request.
    pub ingest_max_events: usize,
    /// Run subject-request jobs and the retention purge inside `serve`.
    pub jobs_enabled: bool,
    /// Where subject-access archives are written (default: beside the data directory).
    pub archive_dir: Option<PathBuf>,
    /// The audit checkpoint store: signed heads of the audit chain, outside PostgreSQL
    /// (default: `audit-checkpoints` under the data directory).
    pub audit_checkpoint_dir: Option<PathBuf>,
    /// `serve` signs a checkpoint of the audit chain's head this often.
    pub audit_checkpoint_interval_secs: u64,
    /// Rows per ClickHouse page when subject access exports a table (memory bound).
    pub dsr_export_page_rows: u64,
    /// The console's public base URL, for sign-in links (default: `http://` + `listen`).
    pub console_url: Option<String>,
    /// A console session ends after this many minutes without a request.
    pub console_idle_minutes: u64,
    /// A console session ends this many hours after sign-in, used or not.
    pub console_session_hours: u64,
    /// A one-time sign-in link (`console login`) is valid this many seconds.
    pub console_code_ttl_secs: u64,
    /// OpenID Connect issuer of the console's sign-in (authorization code + PKCE); none: not offered.
    pub oidc_issuer: Option<String>,
    pub oidc_client_id: String,
    /// The console's client secret at the provider (none: a public client, PKCE only).
    pub oidc_client_secret: Option<SecretString>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            env: Environment::Development,
            listen: "127.0.0.1:8080".into(),
            database_url: "postgres://learnvault_app@127.0.0.1:5432/learnvault".into(),
            admin_database_url: "postgres://postgres@127.0.0.1:5432/learnvault".into(),
            db_max_connections: 16,
            master_key: None,
            master_key_file: None,
            policy_dir: PathBuf::from("policies"),
            jwt_issuer: "learnvault".into(),
            jwt_audience: "learnvault-api".into(),
            jwks_file: None,
            log_format: LogFormat::Pretty,
            body_limit_bytes: 64 * 1024,
            batch_body_limit_bytes: 16 * 1024 * 1024,
            batch_max_items: 10_000,
            issue_writers: 2,
            clickhouse_url: "chdb://".into(),
            chdb_lib: None,
            chdb_connections: 3,
            chdb_background_pool: 16,
            clickhouse_migrations_dir: PathBuf::from("migrations/clickhouse"),
            kafka_brokers: "127.0.0.1:9092".into(),
            ingest_dedup: true,
            ingest_dedup_window_days: 7,
            clock_skew_secs: 300,
            events_topic: "learning-events".into(),
            dlq_topic: "learning-events.dlq".into(),
            consumer_group: "learnvault-lander".into(),
            topic_partitions: 6,
            lander_batch_rows: 20_000,
            lander_batch_bytes: 8 * 1024 * 1024,
            lander_batch_ms: 250,
            lander_commit_attempts: 10,
            lander_in_flight: 2,
            max_event_bytes: 64 * 1024,
            governance_cache_ms: 2_000,
            lander_enabled: true,
            produce_timeout_ms: 5_000,
            produce_compression: "none".into(),
            envelope_compression: crate::envelope::Compression::Zstd,
            record_format: crate::envelope::RecordFormat::Envelope,
            ingest_max_events: 5_000,
            jobs_enabled: true,
            archive_dir: None,
            audit_checkpoint_dir: None,
            audit_checkpoint_interval_secs: 300,
            dsr_export_page_rows: 50_000,
            console_url: None,
            console_idle_minutes: 30,
            console_session_hours: 12,
            console_code_ttl_secs: 900,
            oidc_issuer: None,
            oidc_client_id: "learnvault-console".into(),
            oidc_client_secret: None,
        }
    }
}

impl Settings {
    pub fn load() -> Result<Settings, figment::Error> {
        let file = std::env::var("LEARNVAULT_CONFIG").unwrap_or_else(|_| "learnvault.toml".into());
        Figment::new()
            .merge(Toml::file(file))
            .merge(Env::prefixed("LEARNVAULT_").ignore(&["config"]))
            .extract()
    }

    pub fn is_production(&self) -> bool {
        self.env == Environment::Production
    }

    /// The console's base URL (no trailing slash).
    pub fn console_base_url(&self) -> String {
        match &self.console_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.listen.replace("0.0.0.0", "127.0.0.1")),
        }
    }

    fn data_home() -> PathBuf {
        std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// Data directory of the embedded engine when `clickhouse_url` is `chdb://`.
    pub fn default_chdb_path(&self) -> PathBuf {
        Self::data_home().join("learnvault").join("chdb")
    }

    /// `libchdb.so`: configured, or where `ops/install-chdb.sh` caches it.
    pub fn chdb_lib_path(&self) -> PathBuf {
        if let Some(p) = &self.chdb_lib {
            return p.clone();
        }
        let cache = std::env::var_os("LEARNVAULT_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from("."))
                .join("learnvault")
        });
        cache.join("chdb").join(CHDB_VERSION).join("libchdb.so")
    }

    /// Subject-access archives: configured, or under the data home.
    pub fn archive_path(&self) -> PathBuf {
        self.archive_dir.clone().unwrap_or_else(|| Self::data_home().join("learnvault").join("dsr-archives"))
    }

    /// The audit checkpoint store: configured, or under the data home.
    pub fn audit_checkpoint_path(&self) -> PathBuf {
        self.audit_checkpoint_dir.clone().unwrap_or_else(|| Self::data_home().join("learnvault").join("audit-checkpoints"))
    }

    /// Where the development master key lives when none is configured.
    pub fn dev_key_path(&self) -> PathBuf {
        if let Some(p) = &self.master_key_file {
            return p.clone();
        }
        Self::data_home().join("learnvault").join("dev-master.key")
    }
}
