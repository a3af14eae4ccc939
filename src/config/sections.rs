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

/// A section's struct, its `Default` and its [`Section`] check, each field's default and
/// least value written beside it: `pub field: Type = default,` or
/// `pub field: Type = default => at_least(min),`. The struct (`Settings.{key}`, the `in "key"`)
/// deserializes with every field optional (`serde(default)`) and refuses unknown keys. A
/// field's least value is checked first, named by its variable in [`super::names::VARS`];
/// then the section's own `check(s, p) { ... }` (`s` the section, `p` the [`Problems`]).
macro_rules! section {
    ($(#[$meta:meta])* pub struct $name:ident in $key:literal {
        $($(#[$field_meta:meta])* pub $field:ident: $ty:ty = $default:expr $(=> at_least($min:expr))?,)*
    } $(check($s:ident, $p:ident) $check:block)?) => {
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

        impl Section for $name {
            #[allow(unused_variables)]
            fn check(&self, p: &mut Problems) {
                $($(p.at_least(var(concat!($key, ".", stringify!($field))), self.$field, $min);)?)*
                $(let ($s, $p) = (self, p); $check)?
            }
        }
    };
}

/// The variable that sets `key` (a field of a section).
fn var(key: &str) -> &'static str {
    super::names::name_of(key).unwrap_or_else(|| panic!("{key} has no LEARNVAULT_* variable in config::names::VARS"))
}

section! {
    /// PostgreSQL (`db`): the two connections and the runtime pool.
    pub struct DatabaseSettings in "database" {
        /// Runtime connection (role `learnvault_app`, which owns nothing).
        pub url: SecretString = "postgres://learnvault_app@127.0.0.1:5432/learnvault".into(),
        /// Owner connection, used only for migrations (creates the database if missing).
        pub admin_url: SecretString = "postgres://postgres@127.0.0.1:5432/learnvault".into(),
        /// Runtime pool size.
        pub max_connections: u32 = 16 => at_least(1),
    }
    check(s, p) {
        use secrecy::ExposeSecret;
        for (var, url) in [("LEARNVAULT_DATABASE_URL", &s.url), ("LEARNVAULT_ADMIN_DATABASE_URL", &s.admin_url)] {
            let url = url.expose_secret();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                // The URL may hold a password: never echoed.
                p.push(format!("{var} must be a postgres:// URL"));
            }
        }
    }
}

section! {
    /// The identity vault (`vault`): its master key and single issuance.
    pub struct VaultSettings in "vault" {
        /// Base64 of the 32-byte master key. Takes precedence over `master_key_file`.
        pub master_key: Option<SecretString> = None,
        /// File holding the base64 master key. In development generated (0600) with a warning if
        /// absent; production reads a key file only when this is set.
        pub master_key_file: Option<PathBuf> = None,
        /// Concurrent group-commit writers for single issuance.
        pub issue_writers: usize = 2 => at_least(1),
    }
}

section! {
    /// Token verification of the API (`auth`).
    pub struct AuthSettings in "auth" {
        /// Required `iss`.
        pub jwt_issuer: String = "learnvault".into(),
        /// Required `aud`.
        pub jwt_audience: String = "learnvault-api".into(),
        /// JWKS file with RS256/EdDSA public keys (`kid` required); when set, HS256 dev tokens and
        /// `token mint` are refused.
        pub jwks_file: Option<PathBuf> = None,
    }
    check(s, p) {
        p.not_blank("LEARNVAULT_JWT_ISSUER", &s.jwt_issuer);
        p.not_blank("LEARNVAULT_JWT_AUDIENCE", &s.jwt_audience);
    }
}

section! {
    /// The HTTP API's request limits (`api::Limits`).
    pub struct ApiSettings in "api" {
        /// Request body limit for ordinary endpoints.
        pub body_limit_bytes: usize = 64 * 1024 => at_least(1),
        /// Request body limit for batch endpoints (batch issuance, ingest).
        pub batch_body_limit_bytes: usize = 16 * 1024 * 1024 => at_least(1),
        /// Maximum items in one batch call (batch issuance, batch erasure).
        pub batch_max_items: usize = 10_000 => at_least(1),
    }
}

section! {
    /// The ingest gateway (`gateway`, `api/ingest.rs`).
    pub struct GatewaySettings in "gateway" {
        /// Events or statements in one `POST /v1/events` or xAPI request (413 `batch_too_large` above).
        pub ingest_max_events: usize = 5_000 => at_least(1),
        /// The gateway gives up on a broker acknowledgement after this (503, retry).
        pub produce_timeout_ms: u64 = 5_000 => at_least(1),
    }
}

section! {
    /// The warehouse (`warehouse`): where it lives and the embedded engine's resources.
    pub struct WarehouseSettings in "warehouse" {
        /// `chdb:///data/path` (embedded engine; `chdb://` = the default path) or `http://user:pw@host:8123`.
        pub url: String = "chdb://".into(),
        /// Path of `libchdb.so` (installed by `ops/install-chdb.sh`; default: its cache).
        pub chdb_lib: Option<PathBuf> = None,
        /// Connections to the embedded engine (one per concurrent worker), plus one the engine keeps
        /// for the individual view's short reads (`Lane::Interactive`).
        pub chdb_connections: usize = 3 => at_least(1),
        /// Threads of the embedded engine's merge and mutation pool (chDB's own default of 2 makes
        /// an erasure's mutations queue behind merges for tens of seconds).
        pub chdb_background_pool: usize = 16 => at_least(1),
        /// Directory of the numbered ClickHouse migrations.
        pub migrations_dir: PathBuf = PathBuf::from("migrations/clickhouse"),
    }
    check(s, p) {
        // The schemes `Warehouse::open` accepts, from the one parser (its message names the variable).
        // (The URL may hold a password: never echoed.)
        match crate::warehouse::Target::parse(&s.url, PathBuf::new()) {
            Err(crate::warehouse::WarehouseError::Config(m)) => p.push(m),
            Err(e) => p.push(e.to_string()),
            Ok(_) => {}
        }
    }
}

section! {
    /// The Kafka spine (`topics`, `envelope`): brokers, topics, and how learnvault's producers
    /// (the gateway, `dlq replay`, `loadgen`, the benches) write the events topic.
    pub struct KafkaSettings in "kafka" {
        /// Kafka bootstrap servers.
        pub brokers: String = "127.0.0.1:9092".into(),
        /// The events topic (partitioned by pseudonym; single events or envelopes).
        pub events_topic: String = crate::topics::EVENTS.into(),
        /// The dead-letter topic.
        pub dlq_topic: String = crate::topics::DEAD_LETTERS.into(),
        /// Partitions of the topics when learnvault creates them.
        pub topic_partitions: i32 = 6 => at_least(1),
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
    check(s, p) {
        p.not_blank("LEARNVAULT_KAFKA_BROKERS", &s.brokers);
        p.not_blank("LEARNVAULT_EVENTS_TOPIC", &s.events_topic);
        p.not_blank("LEARNVAULT_DLQ_TOPIC", &s.dlq_topic);
        if s.events_topic == s.dlq_topic {
            p.push(format!("LEARNVAULT_DLQ_TOPIC must differ from LEARNVAULT_EVENTS_TOPIC (both {:?})", s.dlq_topic));
        }
        if !Self::PRODUCE_COMPRESSIONS.contains(&s.produce_compression.as_str()) {
            p.push(format!(
                "LEARNVAULT_PRODUCE_COMPRESSION must be one of {} (got {:?})",
                Self::PRODUCE_COMPRESSIONS.join(", "),
                s.produce_compression
            ));
        }
    }
}

impl KafkaSettings {
    /// The values librdkafka's `compression.codec` takes.
    pub const PRODUCE_COMPRESSIONS: [&'static str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];
}

section! {
    /// The lander (`lander`, `app::lander`): its consumer group, batches and commits.
    pub struct LanderSettings in "lander" {
        /// Run the lander inside `serve` (the only process that can land on the embedded engine;
        /// `false` for an API-only `serve` beside `learnvault land` on a ClickHouse server).
        pub enabled: bool = true,
        /// The lander's consumer group.
        pub consumer_group: String = "learnvault-lander".into(),
        /// A partition's batch is flushed at this many records...
        pub batch_rows: usize = 20_000 => at_least(1),
        /// ...or this many bytes (an envelope record holds many events)...
        pub batch_bytes: usize = 8 * 1024 * 1024 => at_least(1),
        /// ...or when its oldest event has waited this long (0: at every tick).
        pub batch_ms: u64 = 250,
        /// Attempts of a batch's offset commit (250 ms doubling to 5 s between them) before it is
        /// abandoned and owed (committed when the lander is idle); 10 is ~30 s.
        pub commit_attempts: u32 = 10,
        /// Batches the lander has in flight at most (each decodes, claims its event ids and
        /// inserts while the ones before it finish; they commit in order).
        pub in_flight: usize = 2,
        /// Larger events are dead-lettered as `oversized`.
        pub max_event_bytes: usize = 64 * 1024 => at_least(1),
    }
    check(s, p) {
        p.not_blank("LEARNVAULT_CONSUMER_GROUP", &s.consumer_group);
        p.range("LEARNVAULT_LANDER_COMMIT_ATTEMPTS", s.commit_attempts, 1..=crate::lander::MAX_COMMIT_ATTEMPTS);
        p.range("LEARNVAULT_LANDER_IN_FLIGHT", s.in_flight, 1..=crate::lander::MAX_IN_FLIGHT);
    }
}

impl LanderSettings {
    /// `batch_ms` as a duration.
    pub fn batch_wait(&self) -> Duration {
        Duration::from_millis(self.batch_ms)
    }
}

section! {
    /// May an event land (`governance`, shared by the gateway and the lander).
    pub struct GovernanceSettings in "governance" {
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

section! {
    /// Idempotent ingest (`dedup`, shared by the gateway and the lander).
    pub struct DedupSettings in "dedup" {
        /// An event id lands once within the window. Off only to measure what it costs
        /// (`bench lander --dedup-compare`): no event-id claims, no xAPI conflict check.
        pub enabled: bool = true,
        /// Days an event id (or xAPI statement id) is remembered; at least `dedup::MIN_WINDOW_DAYS`.
        pub window_days: u32 = crate::dedup::MIN_WINDOW_DAYS => at_least(crate::dedup::MIN_WINDOW_DAYS),
    }
}

section! {
    /// Subject requests (`dsr`): the jobs inside `serve` and the access archives.
    pub struct DsrSettings in "dsr" {
        /// Run subject-request jobs and the retention purge inside `serve`.
        pub jobs_enabled: bool = true,
        /// Where subject-access archives are written, sealed (default: under the data home).
        pub archive_dir: Option<PathBuf> = None,
        /// Rows per ClickHouse keyset page when subject access exports a table (the memory bound).
        pub export_page_rows: u64 = 50_000 => at_least(1),
    }
}

section! {
    /// The audit log's checkpoints (`audit::checkpoint`).
    pub struct AuditSettings in "audit" {
        /// The audit checkpoint store: signed heads of the audit chain, outside PostgreSQL
        /// (default: `audit-checkpoints` under the data home).
        pub checkpoint_dir: Option<PathBuf> = None,
        /// `serve` signs a checkpoint of the audit chain's head this often.
        pub checkpoint_interval_secs: u64 = 300 => at_least(1),
    }
}

impl AuditSettings {
    /// `checkpoint_interval_secs` as a duration.
    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_secs(self.checkpoint_interval_secs)
    }
}

section! {
    /// The web console (`console`): sign-in links, sessions, OpenID Connect.
    pub struct ConsoleSettings in "console" {
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
    check(s, p) {
        if let Some(url) = &s.url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                p.push(format!("LEARNVAULT_CONSOLE_URL must be an http(s) URL (got {url:?})"));
            }
        }
        p.range("LEARNVAULT_CONSOLE_IDLE_MINUTES", s.idle_minutes, Self::IDLE_MINUTES);
        if s.lifetime() < s.idle() || s.session_hours > Self::MAX_SESSION_HOURS {
            p.push(format!(
                "LEARNVAULT_CONSOLE_SESSION_HOURS must be at least the idle timeout and at most {} (got {})",
                Self::MAX_SESSION_HOURS,
                s.session_hours
            ));
        }
        p.range("LEARNVAULT_CONSOLE_CODE_TTL_SECS", s.code_ttl_secs, Self::CODE_TTL_SECS);
        if let Some(i) = &s.oidc_issuer {
            if !(i.starts_with("https://") || i.starts_with("http://127.0.0.1") || i.starts_with("http://localhost")) {
                p.push(format!("LEARNVAULT_OIDC_ISSUER must be https (plain http only on loopback; got {i:?})"));
            }
            p.not_blank("LEARNVAULT_OIDC_CLIENT_ID", &s.oidc_client_id);
        }
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

