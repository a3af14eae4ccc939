//! ClickHouse migrations: `migrations/clickhouse/NNNN_name.sql`, applied in
//! order, once, recorded with their SHA-256 in `learnvault_meta.schema_migrations`.
//! An applied migration whose file changed is an error (never edit one: add one).
//! Every materialized view's migration carries its backfill `INSERT ... SELECT`.

use sha2::{Digest, Sha256};
use std::path::Path;

use super::{Warehouse, WarehouseError};

#[derive(Debug, Clone)]
pub struct Migration {
    pub version: u32,
    pub name: String,
    pub sql: String,
    pub checksum: String,
}

/// Read and order the migration files of `dir`.
pub fn load(dir: &Path) -> Result<Vec<Migration>, WarehouseError> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| WarehouseError::Config(format!("{}: {e}", dir.display())))?;
    for entry in entries {
        let path = entry.map_err(|e| WarehouseError::Config(e.to_string()))?.path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else { continue };
        let Some(stem) = file.strip_suffix(".sql") else { continue };
        let (num, name) = stem.split_once('_').ok_or_else(|| WarehouseError::Config(format!("{file}: expected NNNN_name.sql")))?;
        let version: u32 = num.parse().map_err(|_| WarehouseError::Config(format!("{file}: expected NNNN_name.sql")))?;
        let sql = std::fs::read_to_string(&path).map_err(|e| WarehouseError::Config(format!("{file}: {e}")))?;
        let checksum = hex::encode(Sha256::digest(sql.as_bytes()));
        out.push(Migration { version, name: name.to_owned(), sql, checksum });
    }
    out.sort_by_key(|m| m.version);
    if let Some(w) = out.windows(2).find(|w| w[0].version == w[1].version) {
        return Err(WarehouseError::Config(format!("two migrations numbered {}", w[0].version)));
    }
    Ok(out)
}

/// Split a script into statements on `;` outside strings, identifiers and comments.
pub fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                cur.push(c);
                while let Some(d) = chars.next() {
                    cur.push(d);
                    if d == '\\' {
                        if let Some(e) = chars.next() {
                            cur.push(e);
                        }
                    } else if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        cur.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for d in chars.by_ref() {
                    if prev == '*' && d == '/' {
                        break;
                    }
                    prev = d;
                }
            }
            ';' => {
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_owned());
                }
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_owned());
    }
    out
}

/// Apply pending migrations; returns the versions applied now.
pub async fn run(wh: &Warehouse, dir: &Path) -> Result<Vec<u32>, WarehouseError> {
    let migrations = load(dir)?;
    wh.execute("CREATE DATABASE IF NOT EXISTS learnvault_meta", &[]).await?;
    wh.execute(
        "CREATE TABLE IF NOT EXISTS learnvault_meta.schema_migrations
         (version UInt32, name String, checksum String, applied_at DateTime64(3) DEFAULT now64(3))
         ENGINE = MergeTree ORDER BY version",
        &[],
    )
    .await?;
    let applied = wh.query("SELECT version, checksum FROM learnvault_meta.schema_migrations ORDER BY version", &[]).await?;
    let mut done = Vec::new();
    for m in &migrations {
        if let Some(row) = applied.iter().find(|r| r["version"].as_u64() == Some(m.version as u64)) {
            if row["checksum"].as_str() != Some(m.checksum.as_str()) {
                return Err(WarehouseError::Config(format!(
                    "clickhouse migration {:04}_{} was applied but its file has changed; add a new migration instead",
                    m.version, m.name
                )));
            }
            continue;
        }
        for stmt in statements(&m.sql) {
            wh.execute(&stmt, &[]).await.map_err(|e| match e {
                WarehouseError::Rejected(msg) => WarehouseError::Rejected(format!("migration {:04}_{}: {msg}", m.version, m.name)),
                WarehouseError::Unavailable(msg) => WarehouseError::Unavailable(format!("migration {:04}_{}: {msg}", m.version, m.name)),
                other => other,
            })?;
        }
        wh.execute(
            "INSERT INTO learnvault_meta.schema_migrations (version, name, checksum) VALUES ({v:UInt32}, {n:String}, {c:String})",
            &[("v", m.version.to_string()), ("n", m.name.clone()), ("c", m.checksum.clone())],
        )
        .await?;
        tracing::info!(version = m.version, name = %m.name, "clickhouse migration applied");
        done.push(m.version);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_outside_strings_and_comments() {
        let s = statements("CREATE TABLE a (x String DEFAULT ';'); -- c;\n/* ; */ SELECT 1;\n\nSELECT 'it''s;' ;");
        assert_eq!(s, vec!["CREATE TABLE a (x String DEFAULT ';')", "SELECT 1", "SELECT 'it''s;'"]);
    }

    #[test]
    fn shipped_migrations_are_ordered_and_unique() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/clickhouse");
        let m = load(&dir).unwrap();
        assert!(!m.is_empty());
        assert!(m.windows(2).all(|w| w[0].version < w[1].version));
    }
}
