//! The data map (`policies/data-map.yaml`): every store holding learner data,
//! with its subject key, category, retention and erasure method.
//!
//! Invariant: every live ClickHouse or PostgreSQL object that holds a learner
//! key (a `learner_id`/`pseudonym` column, a view reading one, or the target a
//! materialized view fills from one) is in the map, and every mapped object
//! exists; `learnvault datamap check` enforces it in CI, so subject access and
//! erasure, which are driven by the map, cannot miss a new table.

use serde::Deserialize;
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::path::Path;

use crate::taxonomy::check::tokens;
use crate::policy::PolicyError;
use crate::warehouse::{Warehouse, WarehouseError};

/// Column names that identify a learner.
pub const KEY_COLUMNS: [&str; 3] = ["learner_id", "pseudonym", "target_pseudonym"];

/// A check of the stores against a policy file (`datamap check`, `retention verify`, the
/// subject-request worker's reading of the data map): the file is unreadable or invalid, or a
/// store did not answer.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Clickhouse,
    Postgres,
    Kafka,
    /// Files the service writes (subject-access archives).
    Files,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Erasure {
    DeleteRows,
    RecomputeAggregate,
    CryptoShred,
    Keep,
    Expire,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Store {
    pub store: StoreKind,
    pub name: String,
    pub kind: String,
    pub subject_key: Option<String>,
    pub category: String,
    pub retention: Option<String>,
    pub erasure: Erasure,
    pub reason: Option<String>,
    pub target: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DataMap {
    pub stores: Vec<Store>,
}

impl DataMap {
    pub fn load(path: &Path) -> Result<DataMap, PolicyError> {
        let map: DataMap = crate::policy::read(path)?;
        let invalid = |message: String| PolicyError::invalid(path, message);
        let mut seen = BTreeSet::new();
        for s in &map.stores {
            if !seen.insert((s.store as u8, s.name.clone())) {
                return Err(invalid(format!("{} is mapped twice", s.name)));
            }
            let needs_reason = matches!(s.erasure, Erasure::Keep | Erasure::Expire | Erasure::RecomputeAggregate);
            if needs_reason && s.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
                return Err(invalid(format!("{}: erasure {:?} needs a reason", s.name, s.erasure)));
            }
            if matches!(s.erasure, Erasure::DeleteRows | Erasure::CryptoShred) && s.subject_key.is_none() {
                return Err(invalid(format!("{}: erasure {:?} needs a subject_key", s.name, s.erasure)));
            }
        }
        Ok(map)
    }

    fn mapped(&self, store: StoreKind) -> BTreeSet<&str> {
        self.stores.iter().filter(|s| s.store == store).map(|s| s.name.as_str()).collect()
    }
}

/// A live object that holds learner data, and why we think so.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LiveObject {
    pub name: String,
    pub why: String,
}

/// ClickHouse objects holding a learner key (outside the system databases).
pub async fn live_clickhouse(wh: &Warehouse) -> Result<(BTreeSet<String>, Vec<LiveObject>), CheckError> {
    let tables = wh
        .query(
            "SELECT concat(database, '.', name) AS name, engine, as_select, create_table_query FROM system.tables
             WHERE database NOT IN ('system', 'information_schema', 'INFORMATION_SCHEMA', 'learnvault_meta') AND NOT is_temporary",
            &[],
        )
        .await?;
    let keyed = wh
        .query(
            // Aliases are visible in WHERE: `object`, not `name`, or it would shadow the column name.
            "SELECT DISTINCT concat(database, '.', table) AS object, name AS key_column FROM system.columns
             WHERE database NOT IN ('system', 'information_schema', 'INFORMATION_SCHEMA', 'learnvault_meta') AND name IN {keys:Array(String)}",
            &[("keys", format!("{:?}", KEY_COLUMNS).replace('"', "'"))],
        )
        .await?;
    let all: BTreeSet<String> = tables.iter().filter_map(|t| t["name"].as_str().map(str::to_owned)).collect();
    let mut out: Vec<LiveObject> = keyed
        .iter()
        .map(|r| LiveObject {
            name: r["object"].as_str().unwrap_or_default().to_owned(),
            why: format!("has column {}", r["key_column"].as_str().unwrap_or("?")),
        })
        .collect();
    for t in &tables {
        let engine = t["engine"].as_str().unwrap_or_default();
        if engine != "MaterializedView" && engine != "View" {
            continue;
        }
        let (idents, _) = tokens(t["as_select"].as_str().unwrap_or_default());
        if let Some(k) = KEY_COLUMNS.iter().find(|k| idents.contains(**k)) {
            let name = t["name"].as_str().unwrap_or_default().to_owned();
            out.push(LiveObject { name: name.clone(), why: format!("{engine} reads {k}") });
            // The table a materialized view fills holds what it derives from the key.
            let create = t["create_table_query"].as_str().unwrap_or_default();
            if let Some(target) = create.split(" TO ").nth(1).and_then(|r| r.split_whitespace().next()) {
                out.push(LiveObject { name: target.trim_matches('`').replace("`.`", "."), why: format!("filled by {name} from {k}") });
            }
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.name == b.name);
    Ok((all, out))
}

/// PostgreSQL tables and views (schema `public`) holding a learner key.
pub async fn live_postgres(pool: &PgPool) -> Result<(BTreeSet<String>, Vec<LiveObject>), CheckError> {
    let all: Vec<String> =
        sqlx::query_scalar("SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'").fetch_all(pool).await?;
    let keyed: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = 'public' AND column_name = ANY($1) ORDER BY 1",
    )
    .bind(KEY_COLUMNS.to_vec())
    .fetch_all(pool)
    .await?;
    let mut out: Vec<LiveObject> = keyed.into_iter().map(|(name, col)| LiveObject { name, why: format!("has column {col}") }).collect();
    out.dedup_by(|a, b| a.name == b.name);
    Ok((all.into_iter().collect(), out))
}

/// Problems between the map and the live schemas; empty when they agree.
pub fn compare(
    map: &DataMap,
    ch: &(BTreeSet<String>, Vec<LiveObject>),
    pg: &(BTreeSet<String>, Vec<LiveObject>),
) -> Vec<String> {
    let mut problems = Vec::new();
    for (kind, label, (all, keyed)) in [(StoreKind::Clickhouse, "clickhouse", ch), (StoreKind::Postgres, "postgres", pg)] {
        let mapped = map.mapped(kind);
        for o in keyed {
            if !mapped.contains(o.name.as_str()) {
                problems.push(format!("unmapped: {label} {} holds learner data ({}); add it to policies/data-map.yaml", o.name, o.why));
            }
        }
        for m in mapped {
            if !all.contains(m) {
                problems.push(format!("missing: {label} {m} is mapped in policies/data-map.yaml but does not exist"));
            }
        }
    }
    problems
}
