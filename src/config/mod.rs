//! Typed settings, loaded in layers: built-in defaults -> optional TOML file
//! (`LEARNVAULT_CONFIG`, default `learnvault.toml` if present) -> `LEARNVAULT_*`
//! environment variables; then [`Settings::validate`]. Secrets are `SecretString`s: never printed.
//!
//! # Layout
//! - [`Settings`]: the process-wide values (`env`, `listen`, `log_format`, `policy_dir`) and
//!   one section per context that owns its values (`settings.lander.in_flight`), each with its
//!   defaults and its `validate()` ([`sections`]).
//! - [`names`]: the one table from every `LEARNVAULT_*` name to its field ([`names::VARS`]):
//!   the variables keep their flat names (`LEARNVAULT_LANDER_IN_FLIGHT` sets
//!   `lander.in_flight`), and the TOML file takes the sectioned form or the flat names.
//!
//! The sections live here, not in their modules: a section is the configuration surface a
//! deployment sees (one table of names, one README table, one `validate` run before anything
//! opens), and keeping them together keeps `serde`/`figment` out of the contexts. A context
//! turns its section into what it runs with (`LanderConfig::from_settings`,
//! `console::Config::from_settings`, `api::Limits`), and the limits a section enforces are
//! written once, as constants of the module that relies on them (`lander::MAX_IN_FLIGHT`,
//! `dedup::MIN_WINDOW_DAYS`) or of the section.

pub mod names;
pub mod sections;
#[cfg(test)]
mod tests;

use figment::Figment;
use serde::Deserialize;
use std::path::PathBuf;

pub use sections::{
    ApiSettings, AuditSettings, AuthSettings, ConsoleSettings, DatabaseSettings, DedupSettings, DsrSettings, GatewaySettings,
    GovernanceSettings, KafkaSettings, LanderSettings, Problems, Section, VaultSettings, WarehouseSettings,
};

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

/// Every setting, in sections (see the module doc). `LEARNVAULT_<NAME>` sets the field
/// [`names::VARS`] maps it to.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `development` (generated dev key allowed, HS256 dev tokens) or `production`.
    pub env: Environment,
    /// Address the HTTP API (and the console) listens on.
    pub listen: String,
    /// `pretty` or `json` logs.
    pub log_format: LogFormat,
    /// Directory of `roles.yaml`, `purposes.yaml`, `disclosure.yaml`, ... (policy, validated at load).
    pub policy_dir: PathBuf,
    pub database: DatabaseSettings,
    pub vault: VaultSettings,
    pub auth: AuthSettings,
    pub api: ApiSettings,
    pub gateway: GatewaySettings,
    pub warehouse: WarehouseSettings,
    pub kafka: KafkaSettings,
    pub lander: LanderSettings,
    pub governance: GovernanceSettings,
    pub dedup: DedupSettings,
    pub dsr: DsrSettings,
    pub audit: AuditSettings,
    pub console: ConsoleSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            env: Environment::Development,
            listen: "127.0.0.1:8080".into(),
            log_format: LogFormat::Pretty,
            policy_dir: PathBuf::from("policies"),
            database: Default::default(),
            vault: Default::default(),
            auth: Default::default(),
            api: Default::default(),
            gateway: Default::default(),
            warehouse: Default::default(),
            kafka: Default::default(),
            lander: Default::default(),
            governance: Default::default(),
            dedup: Default::default(),
            dsr: Default::default(),
            audit: Default::default(),
            console: Default::default(),
        }
    }
}

/// A configuration that cannot run: one sentence per problem, each naming its variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid configuration: {}", self.0.join("; "))
    }
}

impl std::error::Error for ConfigError {}

impl Settings {
    /// Defaults -> the TOML file (`LEARNVAULT_CONFIG`, default `learnvault.toml`, if present)
    /// -> `LEARNVAULT_*` variables. Not validated: see [`Settings::validate`].
    pub fn load() -> Result<Settings, figment::Error> {
        let file = std::env::var("LEARNVAULT_CONFIG").unwrap_or_else(|_| "learnvault.toml".into());
        Self::figment(names::TomlFile::new(file)).extract()
    }

    /// The layers of [`Settings::load`] over `file`.
    pub fn figment(file: names::TomlFile) -> Figment {
        Figment::new().merge(file).merge(names::EnvVars::new())
    }

    /// Every section's [`Section::validate`], all problems at once. `serve`, `land` and every
    /// CLI command run it after loading; `Application::build_with` runs it again (the tests
    /// build settings by hand).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Problems::default();
        let sections: [&dyn Section; 13] = [
            &self.database,
            &self.vault,
            &self.auth,
            &self.api,
            &self.gateway,
            &self.warehouse,
            &self.kafka,
            &self.lander,
            &self.governance,
            &self.dedup,
            &self.dsr,
            &self.audit,
            &self.console,
        ];
        p.not_blank("LEARNVAULT_LISTEN", &self.listen);
        for s in sections {
            s.check(&mut p);
        }
        p.into_result()
    }

    pub fn is_production(&self) -> bool {
        self.env == Environment::Production
    }

    /// The console's base URL (no trailing slash).
    pub fn console_base_url(&self) -> String {
        match &self.console.url {
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

    /// Data directory of the embedded engine when `warehouse.url` is `chdb://`.
    pub fn default_chdb_path(&self) -> PathBuf {
        Self::data_home().join("learnvault").join("chdb")
    }

    /// `libchdb.so`: configured, or where `ops/install-chdb.sh` caches it.
    pub fn chdb_lib_path(&self) -> PathBuf {
        if let Some(p) = &self.warehouse.chdb_lib {
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
        self.dsr.archive_dir.clone().unwrap_or_else(|| Self::data_home().join("learnvault").join("dsr-archives"))
    }

    /// The audit checkpoint store: configured, or under the data home.
    pub fn audit_checkpoint_path(&self) -> PathBuf {
        self.audit.checkpoint_dir.clone().unwrap_or_else(|| Self::data_home().join("learnvault").join("audit-checkpoints"))
    }

    /// Where the development master key lives when none is configured.
    pub fn dev_key_path(&self) -> PathBuf {
        if let Some(p) = &self.vault.master_key_file {
            return p.clone();
        }
        Self::data_home().join("learnvault").join("dev-master.key")
    }
}
