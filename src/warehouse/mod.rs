//! The warehouse port: the one narrow interface to ClickHouse.
//!
//! Invariant: only `warehouse` (and `migrations/clickhouse`) builds ClickHouse
//! SQL; user values always travel as `{name:Type}` parameters, row data only
//! through the insert channel (never inline in SQL text). Two adapters run the
//! same SQL: the embedded engine (chDB, [`chdb::Engine`]) and a ClickHouse
//! server over HTTP ([`http::Server`]).

pub mod chdb;
pub mod http;
pub mod migrate;

use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Settings;

/// Held for reading by every insert that feeds materialized views (the lander)
/// and for writing while an aggregate partition is rebuilt and swapped in
/// (erasure): a row landing between the rebuild and the swap would be lost.
/// Process-wide, which is the scope of the embedded engine; with a server
/// shared by several processes the rebuild window is documented, not closed.
pub static AGGREGATE_REBUILD: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// The engine is down, overloaded or unreachable: retry with back-off.
    #[error("warehouse unavailable: {0}")]
    Unavailable(String),
    /// The statement or the data was refused: retrying will not help.
    #[error("warehouse refused the statement: {0}")]
    Rejected(String),
    #[error("invalid warehouse configuration: {0}")]
    Config(String),
}

impl WarehouseError {
    /// Classify an engine error message by its ClickHouse error code. The
    /// message is cut at the engine's row excerpt (`: while ...`/`Row ...`) and
    /// to 400 characters: parse errors quote the data, which must not reach a log.
    pub fn classify(msg: String) -> WarehouseError {
        let mut msg: String = msg.lines().next().unwrap_or_default().to_owned();
        for cut in [": while ", "Row 1:", "(at row "] {
            if let Some(i) = msg.find(cut) {
                msg.truncate(i);
            }
        }
        let msg: String = msg.chars().take(400).collect();
        // Codes that clear by themselves: memory limit, too many parts,
        // timeouts, network, shutting down, table being dropped/locked.
        const RETRYABLE: [&str; 9] = [
            "Code: 241.", "Code: 252.", "Code: 159.", "Code: 209.", "Code: 210.", "Code: 202.", "Code: 473.", "Code: 394.", "Code: 999.",
        ];
        if RETRYABLE.iter().any(|c| msg.contains(c)) {
            WarehouseError::Unavailable(msg)
        } else {
            WarehouseError::Rejected(msg)
        }
    }
    pub fn is_retryable(&self) -> bool {
        matches!(self, WarehouseError::Unavailable(_))
    }
}

/// Where the warehouse lives, parsed from `LEARNVAULT_CLICKHOUSE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `chdb:///abs/path` (or `chdb://` for the default data directory).
    Embedded(PathBuf),
    /// `http://user:password@host:8123`.
    Http(String),
}

impl Target {
    pub fn parse(url: &str, default_path: PathBuf) -> Result<Target, WarehouseError> {
        if let Some(rest) = url.strip_prefix("chdb://") {
            return Ok(Target::Embedded(if rest.is_empty() { default_path } else { PathBuf::from(rest) }));
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            return Ok(Target::Http(url.trim_end_matches('/').to_owned()));
        }
        Err(WarehouseError::Config("LEARNVAULT_CLICKHOUSE_URL must start with chdb:// or http(s)://".into()))
    }
}

#[derive(Clone)]
pub enum Warehouse {
    Embedded(Arc<chdb::Engine>),
    Http(http::Server),
}

impl Warehouse {
    pub fn open(settings: &Settings) -> Result<Warehouse, WarehouseError> {
        match Target::parse(&settings.clickhouse_url, settings.default_chdb_path())? {
            Target::Embedded(path) => {
                let lib = settings.chdb_lib_path();
                if !lib.exists() {
                    return Err(WarehouseError::Config(format!(
                        "the embedded engine is not installed at {} (run ops/install-chdb.sh, or set LEARNVAULT_CHDB_LIB)",
                        lib.display()
                    )));
                }
                Ok(Warehouse::Embedded(Arc::new(chdb::Engine::open(&lib, &path, settings.chdb_connections)?)))
            }
            Target::Http(url) => Ok(Warehouse::Http(http::Server::new(&url)?)),
        }
    }

    /// Run a statement, returning its output as `JSONEachRow` objects.
    pub async fn query(&self, sql: &str, params: &[(&str, String)]) -> Result<Vec<Value>, WarehouseError> {
        let out = self.raw(sql, "JSONEachRow", params).await?;
        out.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).map_err(|e| WarehouseError::Rejected(format!("unreadable output: {e}"))))
            .collect()
    }

    /// Run a statement, discarding its output.
    pub async fn execute(&self, sql: &str, params: &[(&str, String)]) -> Result<(), WarehouseError> {
        self.raw(sql, "TabSeparated", params).await.map(|_| ())
    }

    /// Run a statement, returning its raw output in `format`.
    pub async fn raw(&self, sql: &str, format: &str, params: &[(&str, String)]) -> Result<Vec<u8>, WarehouseError> {
        match self {
            Warehouse::Embedded(e) => {
                let (e, sql, format) = (e.clone(), sql.to_owned(), format.to_owned());
                let params: Vec<(String, String)> = params.iter().map(|(n, v)| (n.to_string(), v.clone())).collect();
                tokio::task::spawn_blocking(move || {
                    let p: Vec<(&str, String)> = params.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
                    e.query(&sql, &format, &p)
                })
                .await
                .map_err(|e| WarehouseError::Unavailable(format!("engine task failed: {e}")))?
            }
            Warehouse::Http(s) => s.query(sql, format, params).await,
        }
    }

    /// Insert `data` (in `format`, e.g. `JSONEachRow`) into `table` with
    /// `settings` (names and values must be `[A-Za-z0-9_:.-]`: they are ours,
    /// e.g. a deduplication token, never user data).
    /// Insert `data` (rows in `format`) into `table`. The data is shared, not copied:
    /// a caller that retries or reuses its buffer keeps its `Arc`.
    pub async fn insert(&self, table: &str, format: &str, data: Arc<Vec<u8>>, settings: &[(&str, String)]) -> Result<(), WarehouseError> {
        let safe = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_:.-".contains(&b));
        if !safe(table) || !safe(format) || settings.iter().any(|(k, v)| !safe(k) || !safe(v)) {
            return Err(WarehouseError::Config("insert target and settings must be plain identifiers".into()));
        }
        match self {
            Warehouse::Embedded(e) => {
                let settings_sql = if settings.is_empty() {
                    String::new()
                } else {
                    format!(" SETTINGS {}", settings.iter().map(|(k, v)| format!("{k} = '{v}'")).collect::<Vec<_>>().join(", "))
                };
                let sql = format!("INSERT INTO {table}{settings_sql}");
                let (e, format) = (e.clone(), format.to_owned());
                tokio::task::spawn_blocking(move || e.insert(&sql, &format, &data))
                    .await
                    .map_err(|e| WarehouseError::Unavailable(format!("engine task failed: {e}")))?
            }
            Warehouse::Http(s) => s.insert(table, format, data, settings).await,
        }
    }

    /// Engine name and version, for manifests and `/readyz`.
    pub async fn version(&self) -> Result<String, WarehouseError> {
        let rows = self.query("SELECT version() AS v", &[]).await?;
        let v = rows.first().and_then(|r| r["v"].as_str()).unwrap_or("unknown").to_owned();
        Ok(match self {
            Warehouse::Embedded(e) => format!("chDB {} (ClickHouse {v})", e.version),
            Warehouse::Http(_) => format!("ClickHouse server {v}"),
        })
    }

    /// Close the embedded engine's connections (required before exit).
    pub fn close(&self) {
        if let Warehouse::Embedded(e) = self {
            e.close();
        }
    }
}
