//! The one table from `LEARNVAULT_*` names to fields ([`VARS`]), and the two providers that
//! read through it: [`EnvVars`] (flat names -> dotted keys, errors named by variable) and
//! [`TomlFile`] (the sectioned form, and the flat form of the same names).

use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Tag, Value};
use figment::{Error, Metadata, Profile, Provider};

/// The prefix of every variable.
pub const PREFIX: &str = "LEARNVAULT_";

/// Every `LEARNVAULT_*` variable `Settings` reads, and its field: a key of [`super::Settings`]
/// or `section.field`. The README's Configuration table lists exactly these (tested), plus the
/// variables read outside `Settings` ([`OUTSIDE`]).
pub const VARS: &[(&str, &str)] = &[
    ("LEARNVAULT_ENV", "env"),
    ("LEARNVAULT_LISTEN", "listen"),
    ("LEARNVAULT_LOG_FORMAT", "log_format"),
    ("LEARNVAULT_POLICY_DIR", "policy_dir"),
    ("LEARNVAULT_DATABASE_URL", "database.url"),
    ("LEARNVAULT_ADMIN_DATABASE_URL", "database.admin_url"),
    ("LEARNVAULT_DB_MAX_CONNECTIONS", "database.max_connections"),
    ("LEARNVAULT_MASTER_KEY", "vault.master_key"),
    ("LEARNVAULT_MASTER_KEY_FILE", "vault.master_key_file"),
    ("LEARNVAULT_ISSUE_WRITERS", "vault.issue_writers"),
    ("LEARNVAULT_JWT_ISSUER", "auth.jwt_issuer"),
    ("LEARNVAULT_JWT_AUDIENCE", "auth.jwt_audience"),
    ("LEARNVAULT_JWKS_FILE", "auth.jwks_file"),
    ("LEARNVAULT_BODY_LIMIT_BYTES", "api.body_limit_bytes"),
    ("LEARNVAULT_BATCH_BODY_LIMIT_BYTES", "api.batch_body_limit_bytes"),
    ("LEARNVAULT_BATCH_MAX_ITEMS", "api.batch_max_items"),
    ("LEARNVAULT_INGEST_MAX_EVENTS", "gateway.ingest_max_events"),
    ("LEARNVAULT_PRODUCE_TIMEOUT_MS", "gateway.produce_timeout_ms"),
    ("LEARNVAULT_CLICKHOUSE_URL", "warehouse.url"),
    ("LEARNVAULT_CHDB_LIB", "warehouse.chdb_lib"),
    ("LEARNVAULT_CHDB_CONNECTIONS", "warehouse.chdb_connections"),
    ("LEARNVAULT_CHDB_BACKGROUND_POOL", "warehouse.chdb_background_pool"),
    ("LEARNVAULT_CLICKHOUSE_MIGRATIONS_DIR", "warehouse.migrations_dir"),
    ("LEARNVAULT_KAFKA_BROKERS", "kafka.brokers"),
    ("LEARNVAULT_EVENTS_TOPIC", "kafka.events_topic"),
    ("LEARNVAULT_DLQ_TOPIC", "kafka.dlq_topic"),
    ("LEARNVAULT_TOPIC_PARTITIONS", "kafka.topic_partitions"),
    ("LEARNVAULT_PRODUCE_COMPRESSION", "kafka.produce_compression"),
    ("LEARNVAULT_RECORD_FORMAT", "kafka.record_format"),
    ("LEARNVAULT_ENVELOPE_COMPRESSION", "kafka.envelope_compression"),
    ("LEARNVAULT_LANDER_ENABLED", "lander.enabled"),
    ("LEARNVAULT_CONSUMER_GROUP", "lander.consumer_group"),
    ("LEARNVAULT_LANDER_BATCH_ROWS", "lander.batch_rows"),
    ("LEARNVAULT_LANDER_BATCH_BYTES", "lander.batch_bytes"),
    ("LEARNVAULT_LANDER_BATCH_MS", "lander.batch_ms"),
    ("LEARNVAULT_LANDER_COMMIT_ATTEMPTS", "lander.commit_attempts"),
    ("LEARNVAULT_LANDER_IN_FLIGHT", "lander.in_flight"),
    ("LEARNVAULT_MAX_EVENT_BYTES", "lander.max_event_bytes"),
    ("LEARNVAULT_GOVERNANCE_CACHE_MS", "governance.cache_ms"),
    ("LEARNVAULT_CLOCK_SKEW_SECS", "governance.clock_skew_secs"),
    ("LEARNVAULT_INGEST_DEDUP", "dedup.enabled"),
    ("LEARNVAULT_INGEST_DEDUP_WINDOW_DAYS", "dedup.window_days"),
    ("LEARNVAULT_JOBS_ENABLED", "dsr.jobs_enabled"),
    ("LEARNVAULT_ARCHIVE_DIR", "dsr.archive_dir"),
    ("LEARNVAULT_DSR_EXPORT_PAGE_ROWS", "dsr.export_page_rows"),
    ("LEARNVAULT_AUDIT_CHECKPOINT_DIR", "audit.checkpoint_dir"),
    ("LEARNVAULT_AUDIT_CHECKPOINT_INTERVAL_SECS", "audit.checkpoint_interval_secs"),
    ("LEARNVAULT_CONSOLE_URL", "console.url"),
    ("LEARNVAULT_CONSOLE_IDLE_MINUTES", "console.idle_minutes"),
    ("LEARNVAULT_CONSOLE_SESSION_HOURS", "console.session_hours"),
    ("LEARNVAULT_CONSOLE_CODE_TTL_SECS", "console.code_ttl_secs"),
    ("LEARNVAULT_OIDC_ISSUER", "console.oidc_issuer"),
    ("LEARNVAULT_OIDC_CLIENT_ID", "console.oidc_client_id"),
    ("LEARNVAULT_OIDC_CLIENT_SECRET", "console.oidc_client_secret"),
];

/// Variables of the service read outside `Settings`: the configuration file's name, the log
/// filter (`telemetry`) and the cache directory (`Settings::chdb_lib_path`, `ops/`).
pub const OUTSIDE: &[&str] = &["LEARNVAULT_CONFIG", "LEARNVAULT_LOG", "LEARNVAULT_CACHE_DIR"];

/// The field a variable sets, by its name without [`PREFIX`] (any case): `lander_in_flight`
/// -> `lander.in_flight`.
pub fn key_of(unprefixed: &str) -> Option<&'static str> {
    VARS.iter().find(|(name, _)| name[PREFIX.len()..].eq_ignore_ascii_case(unprefixed)).map(|(_, key)| *key)
}

/// The variable that sets a field: `lander.in_flight` -> `LEARNVAULT_LANDER_IN_FLIGHT`.
pub fn name_of(key: &str) -> Option<&'static str> {
    VARS.iter().find(|(_, k)| *k == key).map(|(name, _)| *name)
}

/// The `LEARNVAULT_*` environment variables of [`VARS`] as their dotted keys; any other
/// `LEARNVAULT_*` variable (the test harness's, `ops/`'s) is not configuration and is left
/// out. An error names the variable, not the key.
pub struct EnvVars(Env);

impl EnvVars {
    pub fn new() -> EnvVars {
        EnvVars(Env::prefixed(PREFIX).filter_map(|k| key_of(k.as_str()).map(Into::into)))
    }
}

impl Default for EnvVars {
    fn default() -> Self {
        EnvVars::new()
    }
}

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable").interpolater(|_: &Profile, keys: &[&str]| {
            let key = keys.join(".");
            name_of(&key).map_or(key, str::to_owned)
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        self.0.data()
    }
}

/// The optional TOML file, in the sectioned form (`[lander]` / `in_flight = 3`) or with the
/// flat names of [`VARS`] in lower case (`lander_in_flight = 3`), which are moved to their
/// section (the sectioned key wins when a file has both).
pub struct TomlFile(figment::providers::Data<Toml>);

impl TomlFile {
    pub fn new(path: impl AsRef<std::path::Path>) -> TomlFile {
        TomlFile(Toml::file(path))
    }

    /// A file's text (tests).
    pub fn string(text: &str) -> TomlFile {
        TomlFile(Toml::string(text))
    }
}

impl Provider for TomlFile {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        Ok(self.0.data()?.into_iter().map(|(profile, dict)| (profile, sectioned(dict))).collect())
    }
}

/// `dict` with its flat keys moved under their sections.
fn sectioned(dict: Dict) -> Dict {
    let (mut out, mut flat) = (Dict::new(), Vec::new());
    for (k, v) in dict {
        match key_of(&k) {
            Some(key) if key != k => flat.push((key, v)),
            _ => {
                out.insert(k, v);
            }
        }
    }
    for (key, v) in flat {
        insert_absent(&mut out, key, v);
    }
    out
}

/// Insert `v` at the dotted `key` of `dict` unless a value is there already.
fn insert_absent(dict: &mut Dict, key: &str, v: Value) {
    match key.split_once('.') {
        None => {
            dict.entry(key.to_owned()).or_insert(v);
        }
        Some((head, rest)) => {
            let inner = dict.entry(head.to_owned()).or_insert_with(|| Value::Dict(Tag::Default, Dict::new()));
            // A section given as a scalar is left for deserialisation to refuse.
            if let Value::Dict(_, d) = inner {
                insert_absent(d, rest, v);
            }
        }
    }
}
