//! The warehouse port: the one narrow interface to ClickHouse.
//!
//! Invariant: every statement reaches ClickHouse through [`Warehouse`]
//! (`query`, `execute`, `raw`, `insert`); nothing else opens a connection. The
//! SQL text is written where its knowledge lives: here (the migration ledger),
//! `migrations/clickhouse`, the named shapes of `serve::queries` and
//! `signals::window`, the fixed statements of `serve::publish`, the map-driven
//! statements of `dsr` (`mod.rs`, `snapshot.rs`, `erasure.rs`), `datamap` and
//! `retention` (identifiers only from the validated policy files or the live
//! schema, checked as plain identifiers), and the benchmarks and demos of `tools`.
//! Everywhere, values always travel as `{name:Type}` parameters and row data
//! only through the insert channel (never inline in SQL text); the one value
//! written into SQL text is a partition id in `dsr::erasure`, read from the
//! live table and checked to be digits. Two adapters run the same SQL: the
//! embedded engine (chDB, [`chdb::Engine`]) and a ClickHouse server over HTTP
//! ([`http::Server`]).

pub mod chdb;
pub mod http;
pub mod migrate;

use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Section, Settings};

/// Held for reading by every insert that feeds materialized views (the lander)
/// and for writing while an aggregate partition is rebuilt and swapped in
/// (erasure): a row landing between the rebuild and the swap would be lost.
/// Process-wide, which is the scope of the embedded engine; with a server
/// shared by several processes the rebuild window is documented, not closed.
pub static AGGREGATE_REBUILD: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Batches of the base table this process landed (a count): the lander bumps it after
/// each insert ([`rows_landed`]), live views wait on it ([`landings`]) so a stream
/// refreshes when rows land rather than on its interval alone. Process-wide, like
/// [`AGGREGATE_REBUILD`]: with a server shared by several processes the streams of
/// another process than the lander's fall back on their interval.
static LANDED: std::sync::LazyLock<tokio::sync::watch::Sender<u64>> = std::sync::LazyLock::new(|| tokio::sync::watch::Sender::new(0));

/// Rebuilds of aggregate partitions this process swapped in (a count): erasure bumps it
/// ([`aggregates_changed`]) and the read path drops every row it fetched before
/// ([`aggregates_generation`]), so no cached cohort view outlives an erasure.
static AGGREGATES_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Aggregate partitions were rebuilt: rows fetched before may hold an erased subject.
pub fn aggregates_changed() {
    AGGREGATES_GENERATION.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
}

/// The generation of the aggregates: rows fetched under an older one are not served.
pub fn aggregates_generation() -> u64 {
    AGGREGATES_GENERATION.load(std::sync::atomic::Ordering::Acquire)
}

/// Tell the live views of this process that rows of the base table landed.
pub fn rows_landed() {
    LANDED.send_modify(|n| *n = n.wrapping_add(1));
}

/// A receiver that sees every [`rows_landed`] from now on.
pub fn landings() -> tokio::sync::watch::Receiver<u64> {
    LANDED.subscribe()
}

#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// Anything but the data: the engine down, overloaded, out of disk, read-only,
    /// refusing our credentials, missing a table (mid-migration), a timeout, an unknown
    /// status, a statement it does not understand. Retried with back-off: the
    /// data is good and waits, visibly, until the warehouse is fixed.
    #[error("warehouse unavailable: {0}")]
    Unavailable(String),
    /// The data itself was refused (it does not parse as the table's columns):
    /// retrying will not help, the rows go to the dead-letter topic.
    #[error("warehouse refused the data: {0}")]
    Rejected(String),
    #[error("invalid warehouse configuration: {0}")]
    Config(String),
}

/// ClickHouse error codes that mean "this data does not fit the table": the only
/// errors the lander treats as bad data. Everything else is the warehouse's state
/// and is retried (an allowlist of retryable codes would dead-letter good rows on
/// the first disk-full or permission error; see issue 13).
const DATA_ERRORS: [u32; 20] = [
    6,   // CANNOT_PARSE_TEXT
    25,  // CANNOT_PARSE_ESCAPE_SEQUENCE
    26,  // CANNOT_PARSE_QUOTED_STRING
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    32,  // ATTEMPT_TO_READ_AFTER_EOF
    33,  // CANNOT_READ_ALL_DATA
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    131, // TOO_LARGE_STRING_SIZE
    190, // SIZES_OF_ARRAYS_DONT_MATCH
    321, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349, // CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    376, // CANNOT_PARSE_UUID
    377, // CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING
    691, // UNKNOWN_ELEMENT_OF_ENUM
];

impl WarehouseError {
    /// Classify an engine error message by its ClickHouse error code: a code of
    /// [`DATA_ERRORS`] is the data's fault ([`WarehouseError::Rejected`]), anything
    /// else, a message without a code included, is the warehouse's
    /// ([`WarehouseError::Unavailable`]). The message is cut at the engine's row
    /// excerpt (`: while ...`/`Row ...`/` before: ...`) and to 400 characters: parse errors quote
    /// the data, which must not reach a log.
    pub fn classify(msg: String) -> WarehouseError {
        if let Some(code) = error_code(&msg).filter(|c| DATA_ERRORS.contains(c)) {
            // The data's fault: its text quotes the data, so only the code and its name are kept.
            let name = error_name(&msg).unwrap_or("data error");
            return WarehouseError::Rejected(format!("Code: {code}. the rows do not fit the table ({name})"));
        }
        let mut msg: String = msg.lines().next().unwrap_or_default().to_owned();
        for cut in [": while ", "Row 1:", "(at row ", " before: "] {
            if let Some(i) = msg.find(cut) {
                msg.truncate(i);
            }
        }
        WarehouseError::Unavailable(msg.chars().take(400).collect())
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, WarehouseError::Unavailable(_))
    }
}

/// The error's name, `(CANNOT_PARSE_UUID)`, as ClickHouse ends its messages with it.
fn error_name(msg: &str) -> Option<&str> {
    msg.match_indices('(').rev().find_map(|(i, _)| {
        let rest = &msg[i + 1..];
        let name = &rest[..rest.find(')')?];
        (!name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')).then_some(name)
    })
}

/// The `Code: N.` of a ClickHouse error message.
fn error_code(msg: &str) -> Option<u32> {
    let rest = &msg[msg.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
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
    /// Open the warehouse of `settings.warehouse` (checked first: its `validate`).
    pub fn open(settings: &Settings) -> Result<Warehouse, WarehouseError> {
        settings.warehouse.validate().map_err(|e| WarehouseError::Config(e.0.join("; ")))?;
        match Target::parse(&settings.warehouse.url, settings.default_chdb_path())? {
            Target::Embedded(path) => {
                let lib = settings.chdb_lib_path();
                if !lib.exists() {
                    return Err(WarehouseError::Config(format!(
                        "the embedded engine is not installed at {} (run ops/install-chdb.sh, or set LEARNVAULT_CHDB_LIB)",
                        lib.display()
                    )));
                }
                Ok(Warehouse::Embedded(Arc::new(chdb::Engine::open(&lib, &path, settings.warehouse.chdb_connections, settings.warehouse.chdb_background_pool)?)))
            }
            Target::Http(url) => Ok(Warehouse::Http(http::Server::new(&url)?)),
        }
    }

    /// Statements taking at least this long are logged at info (their text, never their parameters).
    pub const SLOW_STATEMENT_MS: u64 = 1_000;

    /// Run a statement, returning its output as `JSONEachRow` objects.
    pub async fn query(&self, sql: &str, params: &[(&str, String)]) -> Result<Vec<Value>, WarehouseError> {
        self.query_in(chdb::Lane::General, sql, params).await
    }

    /// [`Warehouse::query`] for a short read a person waits for (the individual view): on the
    /// embedded engine it has a connection of its own, never held by an insert or a scan.
    pub async fn query_interactive(&self, sql: &str, params: &[(&str, String)]) -> Result<Vec<Value>, WarehouseError> {
        self.query_in(chdb::Lane::Interactive, sql, params).await
    }

    async fn query_in(&self, lane: chdb::Lane, sql: &str, params: &[(&str, String)]) -> Result<Vec<Value>, WarehouseError> {
        let out = self.raw_in(lane, sql, "JSONEachRow", params).await?;
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
        self.raw_in(chdb::Lane::General, sql, format, params).await
    }

    async fn raw_in(&self, lane: chdb::Lane, sql: &str, format: &str, params: &[(&str, String)]) -> Result<Vec<u8>, WarehouseError> {
        let started = std::time::Instant::now();
        let out = self.raw_untimed(lane, sql, format, params).await;
        // The statement's text only (parameters are values, never logged); a slow one at info.
        let ms = started.elapsed().as_millis() as u64;
        // The text is cut and flattened only when it is logged (every query passes here).
        let text = || sql.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(160).collect::<String>();
        if ms >= Self::SLOW_STATEMENT_MS {
            tracing::info!(ms, sql = %text(), "slow warehouse statement");
        } else if tracing::enabled!(tracing::Level::TRACE) {
            tracing::trace!(ms, sql = %text(), "warehouse statement");
        }
        out
    }

    async fn raw_untimed(&self, lane: chdb::Lane, sql: &str, format: &str, params: &[(&str, String)]) -> Result<Vec<u8>, WarehouseError> {
        match self {
            Warehouse::Embedded(e) => {
                let (e, sql, format) = (e.clone(), sql.to_owned(), format.to_owned());
                let params: Vec<(String, String)> = params.iter().map(|(n, v)| (n.to_string(), v.clone())).collect();
                tokio::task::spawn_blocking(move || {
                    let p: Vec<(&str, String)> = params.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
                    e.query(&sql, &format, &p, lane)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_errors_are_the_datas_fault() {
        let retried = [
            "Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space. (NOT_ENOUGH_SPACE)",
            "Code: 242. DB::Exception: Table is in readonly mode. (TABLE_IS_READ_ONLY)",
            "Code: 516. DB::Exception: default: Authentication failed. (AUTHENTICATION_FAILED)",
            "Code: 60. DB::Exception: Table events.learning_events does not exist. (UNKNOWN_TABLE)",
            "Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS)",
            "Code: 497. DB::Exception: Not enough privileges. (ACCESS_DENIED)",
            "Code: 1001. DB::Exception: std::exception. (STD_EXCEPTION)",
            "connection reset by peer",
        ];
        for m in retried {
            assert!(WarehouseError::classify(m.into()).is_retryable(), "{m}");
        }
        let refused = [
            "Code: 27. DB::Exception: Cannot parse input: expected '\"' before: 'x': (at row 1)",
            "Code: 117. DB::Exception: Incorrect data: ... (INCORRECT_DATA)",
            "Code: 376. DB::Exception: Cannot parse uuid ada@example.org: while executing ... (CANNOT_PARSE_UUID) (version 26.7.2.1)",
        ];
        for m in refused {
            let e = WarehouseError::classify(m.into());
            assert!(matches!(e, WarehouseError::Rejected(_)), "{m}");
            // The row excerpt (which may hold the data) is cut from the message.
            assert!(!e.to_string().contains("ada@example.org") && !e.to_string().contains("before: 'x'"), "{e}");
        }
        match WarehouseError::classify("Code: 376. DB::Exception: Cannot parse uuid x (CANNOT_PARSE_UUID) (version 26.7)".into()) {
            WarehouseError::Rejected(m) => assert_eq!(m, "Code: 376. the rows do not fit the table (CANNOT_PARSE_UUID)"),
            e => panic!("{e}"),
        }
    }
}
