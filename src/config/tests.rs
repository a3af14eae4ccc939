//! The name table against the fields and the README; each section's `validate`; the TOML
//! forms. (Environment variables: `tests/config.rs`, in a process of their own, since
//! `figment::Jail` changes the working directory.)

use super::names::{self, VARS};
use super::*;
use figment::Figment;
use serde::de::{self, DeserializeOwned, Visitor};
use std::collections::BTreeSet;

/// A deserializer that records the field names of the struct asked of it, and fails.
struct Probe<'a>(&'a mut &'static [&'static str]);

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = de::value::Error;
    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }
    fn deserialize_struct<V: Visitor<'de>>(self, _: &'static str, fields: &'static [&'static str], _: V) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("probed"))
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

impl de::IntoDeserializer<'_, de::value::Error> for Probe<'_> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

/// The field names serde's derive gives `T` (a struct).
fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    assert!(!fields.is_empty(), "{} is a struct", std::any::type_name::<T>());
    fields
}

/// Every leaf of `Settings` as a dotted key, as serde sees them: a top-level field whose
/// value deserializes as a struct is a section (its fields are leaves), any other is a leaf.
fn leaves() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for top in fields_of::<Settings>() {
        let mut section: &'static [&'static str] = &[];
        let _ = Settings::deserialize(de::value::MapDeserializer::new(std::iter::once((*top, Probe(&mut section)))));
        if section.is_empty() {
            out.insert(top.to_string());
        } else {
            out.extend(section.iter().map(|f| format!("{top}.{f}")));
        }
    }
    out
}

#[test]
fn every_variable_sets_one_field_and_every_field_has_its_variable() {
    let keys: BTreeSet<String> = VARS.iter().map(|(_, k)| k.to_string()).collect();
    assert_eq!(keys.len(), VARS.len(), "a field set by two variables");
    let names: BTreeSet<&str> = VARS.iter().map(|(n, _)| *n).collect();
    assert_eq!(names.len(), VARS.len(), "a variable listed twice");
    assert!(VARS.iter().all(|(n, _)| n.starts_with(names::PREFIX) && *n == n.to_uppercase()));
    let leaves = leaves();
    let unmapped: Vec<_> = leaves.difference(&keys).collect();
    let unknown: Vec<_> = keys.difference(&leaves).collect();
    assert!(unmapped.is_empty(), "fields without a LEARNVAULT_* variable: {unmapped:?}");
    assert!(unknown.is_empty(), "variables naming no field: {unknown:?}");
    assert_eq!(names::key_of("lander_in_flight"), Some("lander.in_flight"));
    assert_eq!(names::key_of("LANDER_IN_FLIGHT"), Some("lander.in_flight"));
    assert_eq!(names::name_of("dedup.window_days"), Some("LEARNVAULT_INGEST_DEDUP_WINDOW_DAYS"));
    assert_eq!(names::key_of("log"), None, "LEARNVAULT_LOG is not a setting");
}

#[test]
fn the_readme_configuration_table_lists_exactly_the_variables() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("\n## Configuration\n").nth(1).expect("a Configuration section").split("\n## ").next().unwrap();
    let documented: BTreeSet<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .filter(|n| n.starts_with(names::PREFIX))
        .collect();
    let known: BTreeSet<&str> = VARS.iter().map(|(n, _)| *n).chain(names::OUTSIDE.iter().copied()).collect();
    let undocumented: Vec<_> = known.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&known).collect();
    assert!(undocumented.is_empty(), "missing from README's Configuration table: {undocumented:?}");
    assert!(unknown.is_empty(), "in README's Configuration table but read by nothing: {unknown:?}");
}

#[test]
fn the_defaults_validate() {
    Settings::default().validate().expect("the defaults are a valid configuration");
}

/// The problems `validate` finds after `tweak`.
fn problems(tweak: impl FnOnce(&mut Settings)) -> Vec<String> {
    let mut s = Settings::default();
    tweak(&mut s);
    s.validate().err().map(|e| e.0).unwrap_or_default()
}

#[test]
fn each_section_refuses_what_cannot_run_naming_its_variable() {
    assert_eq!(problems(|s| s.lander.in_flight = 7), ["LEARNVAULT_LANDER_IN_FLIGHT must be 1..=4 (got 7)"]);
    assert_eq!(problems(|s| s.lander.in_flight = 0), ["LEARNVAULT_LANDER_IN_FLIGHT must be 1..=4 (got 0)"]);
    assert_eq!(problems(|s| s.lander.commit_attempts = 101), ["LEARNVAULT_LANDER_COMMIT_ATTEMPTS must be 1..=100 (got 101)"]);
    assert_eq!(problems(|s| s.dedup.window_days = 6), ["LEARNVAULT_INGEST_DEDUP_WINDOW_DAYS must be at least 7 (got 6)"]);
    assert_eq!(problems(|s| s.warehouse.chdb_connections = 0), ["LEARNVAULT_CHDB_CONNECTIONS must be at least 1 (got 0)"]);
    assert_eq!(problems(|s| s.kafka.topic_partitions = 0), ["LEARNVAULT_TOPIC_PARTITIONS must be at least 1 (got 0)"]);
    assert_eq!(problems(|s| s.audit.checkpoint_interval_secs = 0), ["LEARNVAULT_AUDIT_CHECKPOINT_INTERVAL_SECS must be at least 1 (got 0)"]);
    assert_eq!(problems(|s| s.console.idle_minutes = 0), ["LEARNVAULT_CONSOLE_IDLE_MINUTES must be 1..=1440 (got 0)"]);
    assert_eq!(problems(|s| s.console.code_ttl_secs = 5), ["LEARNVAULT_CONSOLE_CODE_TTL_SECS must be 10..=86400 (got 5)"]);
    assert_eq!(
        problems(|s| s.kafka.dlq_topic = s.kafka.events_topic.clone()),
        ["LEARNVAULT_DLQ_TOPIC must differ from LEARNVAULT_EVENTS_TOPIC (both \"learning-events\")"]
    );
    assert_eq!(problems(|s| s.warehouse.url = "clickhouse://h:9000".into()), ["LEARNVAULT_CLICKHOUSE_URL must start with chdb:// or http(s)://"]);
    // A password in a URL is never echoed.
    let p = problems(|s| s.database.url = "mysql://u:hunter2@h/db".into());
    assert_eq!(p, ["LEARNVAULT_DATABASE_URL must be a postgres:// URL"]);
    // Each zero limit, one sentence each.
    type Tweak = fn(&mut Settings);
    let zeros: [(&str, Tweak); 14] = [
        ("LEARNVAULT_DB_MAX_CONNECTIONS", |s| s.database.max_connections = 0),
        ("LEARNVAULT_ISSUE_WRITERS", |s| s.vault.issue_writers = 0),
        ("LEARNVAULT_BODY_LIMIT_BYTES", |s| s.api.body_limit_bytes = 0),
        ("LEARNVAULT_BATCH_BODY_LIMIT_BYTES", |s| s.api.batch_body_limit_bytes = 0),
        ("LEARNVAULT_BATCH_MAX_ITEMS", |s| s.api.batch_max_items = 0),
        ("LEARNVAULT_INGEST_MAX_EVENTS", |s| s.gateway.ingest_max_events = 0),
        ("LEARNVAULT_PRODUCE_TIMEOUT_MS", |s| s.gateway.produce_timeout_ms = 0),
        ("LEARNVAULT_CHDB_BACKGROUND_POOL", |s| s.warehouse.chdb_background_pool = 0),
        ("LEARNVAULT_LANDER_BATCH_ROWS", |s| s.lander.batch_rows = 0),
        ("LEARNVAULT_LANDER_BATCH_BYTES", |s| s.lander.batch_bytes = 0),
        ("LEARNVAULT_LANDER_COMMIT_ATTEMPTS", |s| s.lander.commit_attempts = 0),
        ("LEARNVAULT_MAX_EVENT_BYTES", |s| s.lander.max_event_bytes = 0),
        ("LEARNVAULT_DSR_EXPORT_PAGE_ROWS", |s| s.dsr.export_page_rows = 0),
        ("LEARNVAULT_CONSOLE_SESSION_HOURS", |s| s.console.session_hours = 0),
    ];
    for (var, tweak) in zeros {
        let p = problems(tweak);
        assert!(p.len() == 1 && p[0].starts_with(var), "{var}: {p:?}");
    }
    type Blank = fn(&mut Settings);
    let blanks: [(&str, Blank); 7] = [
        ("LEARNVAULT_LISTEN", |s| s.listen.clear()),
        ("LEARNVAULT_JWT_ISSUER", |s| s.auth.jwt_issuer.clear()),
        ("LEARNVAULT_JWT_AUDIENCE", |s| s.auth.jwt_audience = " ".into()),
        ("LEARNVAULT_KAFKA_BROKERS", |s| s.kafka.brokers = " ".into()),
        ("LEARNVAULT_EVENTS_TOPIC", |s| s.kafka.events_topic.clear()),
        ("LEARNVAULT_CONSUMER_GROUP", |s| s.lander.consumer_group.clear()),
        ("LEARNVAULT_PRODUCE_COMPRESSION", |s| s.kafka.produce_compression = "brotli".into()),
    ];
    for (var, tweak) in blanks {
        let p = problems(tweak);
        assert!(p.len() == 1 && p[0].starts_with(var), "{var}: {p:?}");
    }
    // OpenID Connect: https, or http on loopback; a client id.
    assert!(problems(|s| s.console.oidc_issuer = Some("http://idp.example.edu".into()))[0].starts_with("LEARNVAULT_OIDC_ISSUER"));
    assert!(problems(|s| s.console.oidc_issuer = Some("http://127.0.0.1:8081/realms/x".into())).is_empty());
    assert!(problems(|s| {
        s.console.oidc_issuer = Some("https://idp.example.edu".into());
        s.console.oidc_client_id.clear();
    })[0]
        .starts_with("LEARNVAULT_OIDC_CLIENT_ID"));
    // Zero waits are allowed: flush at every tick, ask the vault every time.
    assert!(problems(|s| {
        s.lander.batch_ms = 0;
        s.governance.cache_ms = 0;
    })
    .is_empty());
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut s = Settings::default();
    s.lander.in_flight = 7;
    s.warehouse.chdb_connections = 0;
    let e = s.validate().unwrap_err();
    assert_eq!(e.0.len(), 2, "{e}");
    assert_eq!(
        e.to_string(),
        "invalid configuration: LEARNVAULT_CHDB_CONNECTIONS must be at least 1 (got 0); LEARNVAULT_LANDER_IN_FLIGHT must be 1..=4 (got 7)"
    );
    // A section alone, as `Warehouse::open` checks its own.
    assert!(s.warehouse.validate().is_err() && s.kafka.validate().is_ok());
}

fn from_toml(text: &str) -> Result<Settings, figment::Error> {
    Figment::new().merge(names::TomlFile::string(text)).extract()
}

#[test]
fn the_toml_file_takes_sections_and_the_flat_names() {
    let s = from_toml("listen = \"0.0.0.0:9000\"\n[lander]\nin_flight = 3\nbatch_rows = 500\n[kafka]\nevents_topic = \"ev\"\n").unwrap();
    assert_eq!((s.listen.as_str(), s.lander.in_flight, s.lander.batch_rows, s.kafka.events_topic.as_str()), ("0.0.0.0:9000", 3, 500, "ev"));
    assert_eq!(s.lander.batch_ms, LanderSettings::default().batch_ms, "the rest of a section keeps its defaults");
    let flat = from_toml("lander_in_flight = 3\ningest_dedup_window_days = 14\nclickhouse_url = \"http://h:8123\"\n").unwrap();
    assert_eq!((flat.lander.in_flight, flat.dedup.window_days, flat.warehouse.url.as_str()), (3, 14, "http://h:8123"));
    // Both forms in one file: the sectioned key wins; the flat one fills the rest of the section.
    let both = from_toml("lander_in_flight = 1\nlander_batch_rows = 10\n[lander]\nin_flight = 4\n").unwrap();
    assert_eq!((both.lander.in_flight, both.lander.batch_rows), (4, 10));
}

#[test]
fn an_unknown_or_mistyped_key_in_the_file_is_refused() {
    let e = from_toml("[lander]\ninflight = 3\n").unwrap_err().to_string();
    assert!(e.contains("unknown field") && e.contains("inflight"), "{e}");
    let e = from_toml("lander_inflight = 3\n").unwrap_err().to_string();
    assert!(e.contains("unknown field") && e.contains("lander_inflight"), "{e}");
    let e = from_toml("[lander]\nin_flight = \"many\"\n").unwrap_err().to_string();
    assert!(e.contains("lander.in_flight"), "{e}");
}

/// Every default the README's Configuration table states is the default: the file form of each
/// variable (`lander_in_flight = 2`) set to the table's value loads the same settings as
/// nothing at all. Rows whose default is not one literal value (unset, or computed from a
/// directory or another setting) are passed over; the rest must number most of the table.
#[test]
fn the_readme_configuration_table_states_the_defaults() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("\n## Configuration\n").nth(1).expect("a Configuration section").split("\n## ").next().unwrap();
    let defaults = format!("{:?}", Settings::default());
    let (mut checked, mut wrong) = (0, Vec::new());
    for line in section.lines().filter(|l| l.starts_with("| `") && l.contains(names::PREFIX)) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let var = cells[0].trim_matches('`');
        if !VARS.iter().any(|(n, _)| *n == var) {
            continue; // (not a setting)
        }
        let Some(value) = cells[2].strip_prefix('`').and_then(|v| v.strip_suffix('`')) else { continue };
        if value.contains(['`', '$', '~']) {
            continue;
        }
        let typed = match value {
            "true" | "false" => value.to_owned(),
            v if v.parse::<i64>().is_ok() => v.to_owned(),
            v => format!("{v:?}"),
        };
        let flat = var.strip_prefix(names::PREFIX).unwrap().to_ascii_lowercase();
        match from_toml(&format!("{flat} = {typed}\n")) {
            Ok(s) if format!("{s:?}") == defaults => {}
            Ok(_) => wrong.push(format!("{var}: `{value}` is not its default")),
            Err(e) => wrong.push(format!("{var}: `{value}` does not load: {e}")),
        }
        checked += 1;
    }
    assert!(wrong.is_empty(), "README's Configuration table: {wrong:#?}");
    assert!(checked >= VARS.len() * 3 / 4, "only {checked} of {} defaults checked: is the table's form still `| var | field | default | meaning |`?", VARS.len());
}
