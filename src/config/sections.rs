//! The configuration sections, one per context that owns its values, each with its defaults
//! (written beside its fields, through `section!`) and its `validate()` (through [`Section`]).
//! A field's doc comment is its meaning in the README's Configuration table; its
//! `LEARNVAULT_*` name is in [`super::names::VARS`].
//!
//! A limit is written once: the ranges a section accepts are constants here or in the module
//! that enforces them at run time (`lander::MAX_IN_FLIGHT`, `dedup::MIN_WINDOW_DAYS`,
//! `warehouse::Target::parse`), and error messages are formatted from them.

use secrecy::SecretString;
use serde::Deserialize;
use std::fmt::Display;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use super::ConfigError;

/// What a configuration section checks: [`Section::check`] adds one sentence per problem,
/// each naming its `LEARNVAULT_*` variable; [`Section::validate`] turns them into an error.
pub trait Section {
    fn check(&self, p: &mut Problems);

    fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Problems::default();
        self.check(&mut p);
        p.into_result()
    }
}

/// The problems found in a configuration, in the order they were found.
#[derive(Debug, Default)]
pub struct Problems(pub(super) Vec<String>);

impl Problems {
    pub fn push(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    /// `var` must lie in `range`.
    pub fn range<T: PartialOrd + Display>(&mut self, var: &str, got: T, range: RangeInclusive<T>) {
        if !range.contains(&got) {
            self.push(format!("{var} must be {}..={} (got {got})", range.start(), range.end()));
        }
    }

    /// `var` must be at least `min`.
    pub fn at_least<T: PartialOrd + Display>(&mut self, var: &str, got: T, min: T) {
        if got < min {
            self.push(format!("{var} must be at least {min} (got {got})"));
        }
    }

    /// `var` must hold something other than blanks.
    pub fn not_blank(&mut self, var: &str, got: &str) {
        if got.trim().is_empty() {
            self.push(format!("{var} must not be empty"));
        }
    }

    pub fn into_result(self) -> Result<(), ConfigError> {
        match self.0.is_empty() {
            true => Ok(()),
            false => Err(ConfigError(self.0)),
        }
    }
}

/// A section's struct and its `Default`, each field's default written beside it:
/// `pub field: Type = default,`. The struct deserializes with every field optional
/// (`serde(default)`) and refuses unknown keys.
macro_rules! section {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$field_meta:meta])* pub $field:ident: $ty:ty = $default:expr,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $($(#[$field_meta])* pub $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $($field: $default,)* }
            }
        }
    };
}

section! {
    /// PostgreSQL (`db`): the two connections and the runtime pool.
    pub struct DatabaseSettings {
        /// Runtime connection (role `learnvault_app`, which owns nothing).
        pub url: SecretString = "postgres://learnvault_app@127.0.0.1:5432/learnvault".into(),
        /// Owner connection, used only for migrations (creates the database if missing).
        pub admin_url: SecretString = "postgres://postgres@127.0.0.1:5432/learnvault".into(),
        /// Runtime pool size.
        pub max_connections: u32 = 16,
    }
}

impl Section for DatabaseSettings {
    fn check(&self, p: &mut Problems) {
        use secrecy::ExposeSecret;
        for (var, url) in [("LEARNVAULT_DATABASE_URL", &self.url), ("LEARNVAULT_ADMIN_DATABASE_URL", &self.admin_url)] {
            let url = url.expose_secret();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                // The URL may hold a password: never echoed.
                p.push(format!("{var} must be a postgres:// URL"));
            }
        }
        p.at_least("LEARNVAULT_DB_MAX_CONNECTIONS", self.max_connections, 1);
    }
}

section! {
    /// The identity vault (`vault`): its master key and single issuance.
    pub struct VaultSettings {
        /// Base64 of the 32-byte master key. Takes precedence over `master_key_file`.
        pub master_key: Option<SecretString> = None,
        /// File holding the base64 master key. In development generated (0600) with a warning if
        /// absent; production reads a key file only when this is set.
        pub master_key_file: Option<PathBuf> = None,
        /// Concurrent group-commit writers for single issuance.
        pub issue_writers: usize = 2,
    }
}

impl Section for VaultSettings {
    fn check(&self, p: &mut Problems) {
        p.at_least("LEARNVAULT_ISSUE_WRITERS", self.issue_writers, 1);
    }
}

section! {
    /// Token verification of the API (`auth`).
    pub struct AuthSettings {
        /// Required `iss`.
        pub jwt_issuer: String = "learnvault".into(),
        /// Required `aud`.
        pub jwt_audience: String = "learnvault-api".into(),
        /// JWKS file with RS256/EdDSA public keys (`kid` required); when set, HS256 dev tokens and
        /// `token mint` are refused.
        pub jwks_file: Option<PathBuf> = None,
    }
}

impl Section for AuthSettings {
    fn check(&self, p: &mut Problems) {
        p.not_blank("LEARNVAULT_JWT_ISSUER", &self.jwt_issuer);
        p.not_blank("LEARNVAULT_JWT_AUDIENCE", &self.jwt_audience);
    }
}

section! {
    /// The HTTP API's request limits (`api::Limits`).
    pub struct ApiSettings {
        /// Request body limit for ordinary endpoints.
        pub body_limit_bytes: usize = 64 * 1024,
        /// Request body limit for batch endpoints (batch issuance, ingest).
        pub batch_body_limit_bytes: usize = 16 * 1024 * 1024,
        /// Maximum items in one batch call (batch issuance, batch erasure).
        pub batch_max_items: usize = 10_000,
    }
}

impl Section for ApiSettings {
    fn check(&self, p: &mut Problems) {
        p.at_least("LEARNVAULT_BODY_LIMIT_BYTES", self.body_limit_bytes, 1);
        p.at_least("LEARNVAULT_BATCH_BODY_LIMIT_BYTES", self.batch_body_limit_bytes, 1);
        p.at_least("LEARNVAULT_BATCH_MAX_ITEMS", self.batch_max_items, 1);
    }
}

section! {
    /// The ingest gateway (`gateway`, `api/ingest.rs`).
    pub struct GatewaySettings {
        /// Events or statements in one `POST /v1/events` or xAPI request (413 `batch_too_large` above).
        pub ingest_max_events: usize = 5_000,
        /// The gateway gives up on a broker acknowledgement after this (503, retry).
        pub produce_timeout_ms: u64 = 5_000,
    }
}

impl Section for GatewaySettings {
    fn check(&self, p: &mut Problems) {
        p.at_least("LEARNVAULT_INGEST_MAX_EVENTS", self.ingest_max_events, 1);
        p.at_least("LEARNVAULT_PRODUCE_TIMEOUT_MS", self.produce_timeout_ms, 1);
    }
}

section! {
    /// The warehouse (`warehouse`): where it lives and the embedded engine's resources.
    pub struct WarehouseSettings {
        /// `chdb:///data/path` (embedded engine; `chdb://` = the default path) or `http://user:pw@host:8123`.
        pub url: String = "chdb://".into(),
        /// Path of `libchdb.so` (installed by `ops/install-chdb.sh`; default: its cache).
        pub chdb_lib: Option<PathBuf> = None,
        /// Connections to the embedded engine (one per concurrent worker), plus one the engine keeps
        /// for the individual view's short reads (`Lane::Interactive`).
        pub chdb_connections: usize = 3,
        /// Threads of the embedded engine's merge and mutation pool (chDB's own default of 2 makes
        /// an erasure's mutations queue behind merges for tens of seconds).
        pub chdb_background_pool: usize = 16,
        /// Directory of the numbered ClickHouse migrations.
        pub migrations_dir: PathBuf = PathBuf::from("migrations/clickhouse"),
    }
}

impl Section for WarehouseSettings {
    fn check(&self, p: &mut Problems) {
        // The schemes `Warehouse::open` accepts, from the one parser (its message names the variable).
        // (The URL may hold a password: never echoed.)
        match crate::warehouse::Target::parse(&self.url, PathBuf::new()) {
            Err(crate::warehouse::WarehouseError::Config(m)) => p.push(m),
            Err(e) => p.push(e.to_string()),
            Ok(_) => {}
        }
        p.at_least("LEARNVAULT_CHDB_CONNECTIONS", self.chdb_connections, 1);
        p.at_least("LEARNVAULT_CHDB_BACKGROUND_POOL", self.chdb_background_pool, 1);
    }
}

section! {
    /// The Kafka spine (`topics`, `envelope`): brokers, topics, and how learnvault's producers
    /// (the gateway, `dlq replay`, `loadgen`, the benches) write the events topic.
    pub struct KafkaSettings {
        /// Kafka bootstrap servers.
        pub brokers: String = "127.0.0.1:9092".into(),
        /// The events topic (partitioned by pseudonym; single events or envelopes).
        pub events_topic: String = crate::topics::EVENTS.into(),
        /// The dead-letter topic.
        pub dlq_topic: String = crate::topics::DEAD_LETTERS.into(),
        /// Partitions of the topics when learnvault creates them.
        pub topic_partitions: i32 = 6,
        /// Kafka batch compression of event produce requests (gateway, loadgen, benches): `none`
        /// when envelopes are zstd frames already, `lz4` or `zstd` for single-event records.
        pub produce_compression: String = "none".into(),
        /// What a record of the events topic holds when the gateway (and `bench lander`) produce:
        /// `single` (one JSON event keyed by pseudonym) or `envelope`; see `envelope`.
        pub record_format: crate::envelope::RecordFormat = crate::envelope::RecordFormat::Envelope,
        /// Compression of each envelope's value by the gateway and `bench lander`: `zstd`
        /// (default) or `none`; see `envelope`. The lander reads both.
        pub envelope_compression: crate::envelope::Compression = crate::envelope::Compression::Zstd,
    }
}

impl KafkaSettings {
    /// The values librdkafka's `compression.codec` takes.
    pub const PRODUCE_COMPRESSIONS: [&'static str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];
}

impl Section for KafkaSettings {
    fn check(&self, p: &mut Problems) {
        p.not_blank("LEARNVAULT_KAFKA_BROKERS", &self.brokers);
        p.not_blank("LEARNVAULT_EVENTS_TOPIC", &self.events_topic);
        p.not_blank("LEARNVAULT_DLQ_TOPIC", &self.dlq_topic);
        if self.events_topic == self.dlq_topic {
            p.push(format!("LEARNVAULT_DLQ_TOPIC must differ from LEARNVAULT_EVENTS_TOPIC (both {:?})", self.dlq_topic));
        }
        p.at_least("LEARNVAULT_TOPIC_PARTITIONS", self.topic_partitions, 1);
        if !Self::PRODUCE_COMPRESSIONS.contains(&self.produce_compression.as_str()) {
            p.push(format!(
                "LEARNVAULT_PRODUCE_COMPRESSION must be one of {} (got {:?})",
                Self::PRODUCE_COMPRESSIONS.join(", "),
                self.produce_compression
            ));
        }
    }
}

section! {
    /// The lander (`lander`, `app::lander`): its consumer group, batches and commits.
    pub struct LanderSettings {
        /// Run the lander inside `serve` (the only process that can land on the embedded engine;
        /// `false` for an API-only `serve` beside `learnvault land` on a ClickHouse server).
        pub enabled: bool = true,
        /// The lander's consumer group.
        pub consumer_group: String = "learnvault-lander".into(),
        /// A partition's batch is flushed at this many records...
        pub batch_rows: usize = 20_000,
        /// ...or this many bytes (an envelope record holds many events)...
        pub batch_bytes: usize = 8 * 1024 * 1024,
        /// ...or when its oldest event has waited this long (0: at every tick).
        pub batch_ms: u64 = 250,
        /// Attempts of a batch's offset commit (250 ms doubling to 5 s between them) before it is
        /// abandoned and owed (committed when the lander is idle); 10 is ~30 s.
        pub commit_attempts: u32 = 10,
        /// Batches the lander has in flight at most (each decodes, claims its event ids and
        /// inserts while the ones before it finish; they commit in order).
        pub in_flight: usize = 2,
        /// Larger events are dead-lettered as `oversized`.
        pub max_event_bytes: usize = 64 * 1024,
    }
}

impl LanderSettings {
    /// `batch_ms` as a duration.
    pub fn batch_wait(&self) -> Duration {
        Duration::from_millis(self.batch_ms)
    }
}

impl Section for LanderSettings {
    fn check(&self, p: &mut Problems) {
        p.not_blank("LEARNVAULT_CONSUMER_GROUP", &self.consumer_group);
        p.at_least("LEARNVAULT_LANDER_BATCH_ROWS", self.batch_rows, 1);
        p.at_least("LEARNVAULT_LANDER_BATCH_BYTES", self.batch_bytes, 1);
        p.range("LEARNVAULT_LANDER_COMMIT_ATTEMPTS", self.commit_attempts, 1..=crate::lander::MAX_COMMIT_ATTEMPTS);
        p.range("LEARNVAULT_LANDER_IN_FLIGHT", self.in_flight, 1..=crate::lander::MAX_IN_FLIGHT);
        p.at_least("LEARNVAULT_MAX_EVENT_BYTES", self.max_event_bytes, 1);
    }
}

section! {
    /// May an event land (`governance`, shared by the gateway and the lander).
    pub struct GovernanceSettings {
        /// How long the gateway and the lander trust a vault answer (an erasure takes effect
        /// within it; 0: ask every time).
        pub cache_ms: u64 = 2_000,
        /// An event whose client clock is further than this from server time is flagged
        /// (`props.clock_skew_ms`), by the gateway and the lander alike.
        pub clock_skew_secs: u64 = 300,
    }
}

impl GovernanceSettings {
    /// `cache_ms` as a duration.
    pub fn cache_ttl(&self) -> Duration {
        Duration::from_millis(self.cache_ms)
    }

    /// `clock_skew_secs` as a duration.
    pub fn clock_skew(&self) -> Duration {
        Duration::from_secs(self.clock_skew_secs)
    }
}

impl Section for GovernanceSettings {
    fn check(&self, _: &mut Problems) {}
}

section! {
    /// Idempotent ingest (`dedup`, shared by the gateway and the lander).
    pub struct DedupSettings {
        /// An event id lands once within the window. Off only to measure what it costs
        /// (`bench lander --dedup-compare`): no event-id claims, no xAPI conflict check.
        pub enabled: bool = true,
        /// Days an event id (or xAPI statement id) is remembered; at least `dedup::MIN_WINDOW_DAYS`.
        pub window_days: u32 = crate::dedup::MIN_WINDOW_DAYS,
    }
}

impl Section for DedupSettings {
    fn check(&self, p: &mut Problems) {
        p.at_least("LEARNVAULT_INGEST_DEDUP_WINDOW_DAYS", self.window_days, crate::dedup::MIN_WINDOW_DAYS);
    }
}

section! {
    /// Subject requests (`dsr`): the jobs inside `serve` and the access archives.
    pub struct DsrSettings {
        /// Run subject-request jobs and the retention purge inside `serve`.
        pub jobs_enabled: bool = true,
        /// Where subject-access archives are written, sealed (default: under the data home).
        pub archive_dir: Option<PathBuf> = None,
        /// Rows per ClickHouse keyset page when subject access exports a table (the memory bound).
        pub export_page_rows: u64 = 50_000,
    }
}

impl Section for DsrSettings {
    fn check(&self, p: &mut Problems) {
        p.at_least("LEARNVAULT_DSR_EXPORT_PAGE_ROWS", self.export_page_rows, 1);
    }
}

section! {
    /// The audit log's checkpoints (`audit::checkpoint`).
    pub struct AuditSettings {
        /// The audit checkpoint store: signed heads of the audit chain, outside PostgreSQL
        /// (default: `audit-checkpoints` under the data home).
        pub checkpoint_dir: Option<PathBuf> = None,
        /// `serve` signs a checkpoint of the audit chain's head this often.
        pub checkpoint_interval_secs: u64 = 300,
    }
}

impl AuditSettings {
    /// `checkpoint_interval_secs` as a duration.
    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_secs(self.checkpoint_interval_secs)
    }
}

impl Section for AuditSettings {
    fn check(&self, p: &mut Problems) {
        p.at_least("LEARNVAULT_AUDIT_CHECKPOINT_INTERVAL_SECS", self.checkpoint_interval_secs, 1);
    }
}

section! {
    /// The web console (`console`): sign-in links, sessions, OpenID Connect.
    pub struct ConsoleSettings {
        /// The console's public base URL, for sign-in links (default: `http://` + `listen`).
        pub url: Option<String> = None,
        /// A console session ends after this many minutes without a request.
        pub idle_minutes: u64 = 30,
        /// A console session ends this many hours after sign-in, used or not (at least the idle time).
        pub session_hours: u64 = 12,
        /// A one-time sign-in link (`console login`) is valid this many seconds.
        pub code_ttl_secs: u64 = 900,
        /// OpenID Connect issuer of the console's sign-in (authorization code + PKCE): https, or
        /// plain http on loopback; none: not offered.
        pub oidc_issuer: Option<String> = None,
        /// The console's client at the provider (the ID token's audience).
        pub oidc_client_id: String = "learnvault-console".into(),
        /// The console's client secret at the provider (none: a public client, PKCE only).
        pub oidc_client_secret: Option<SecretString> = None,
    }
}

impl ConsoleSettings {
    pub const IDLE_MINUTES: RangeInclusive<u64> = 1..=24 * 60;
    pub const MAX_SESSION_HOURS: u64 = 7 * 24;
    pub const CODE_TTL_SECS: RangeInclusive<u64> = 10..=24 * 3600;

    pub fn idle(&self) -> Duration {
        Duration::from_secs(self.idle_minutes.saturating_mul(60))
    }

    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.session_hours.saturating_mul(3600))
    }

    pub fn code_ttl(&self) -> Duration {
        Duration::from_secs(self.code_ttl_secs)
    }
}

impl Section for ConsoleSettings {
    fn check(&self, p: &mut Problems) {
        if let Some(url) = &self.url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                p.push(format!("LEARNVAULT_CONSOLE_URL must be an http(s) URL (got {url:?})"));
            }
        }
        p.range("LEARNVAULT_CONSOLE_IDLE_MINUTES", self.idle_minutes, Self::IDLE_MINUTES);
        if self.lifetime() < self.idle() || self.session_hours > Self::MAX_SESSION_HOURS {
            p.push(format!(
                "LEARNVAULT_CONSOLE_SESSION_HOURS must be at least the idle timeout and at most {} (got {})",
                Self::MAX_SESSION_HOURS,
                self.session_hours
            ));
        }
        p.range("LEARNVAULT_CONSOLE_CODE_TTL_SECS", self.code_ttl_secs, Self::CODE_TTL_SECS);
        if let Some(i) = &self.oidc_issuer {
            if !(i.starts_with("https://") || i.starts_with("http://127.0.0.1") || i.starts_with("http://localhost")) {
                p.push(format!("LEARNVAULT_OIDC_ISSUER must be https (plain http only on loopback; got {i:?})"));
            }
            p.not_blank("LEARNVAULT_OIDC_CLIENT_ID", &self.oidc_client_id);
        }
    }
}
