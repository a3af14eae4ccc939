//! Retention as a table property: `policies/retention.yaml` is the policy, each
//! ClickHouse table's TTL clause must equal it (read from the live schema), and
//! no row may be older than the policy plus a stated grace.
//!
//! Invariant: the check reads the live engine, never a copy of the DDL, so a
//! migration that changes a TTL without the policy (or the reverse) fails it.

use chrono::{Duration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use sqlx::PgPool;
use std::path::Path;

use crate::policy::PolicyError;
use crate::warehouse::Warehouse;

use crate::datamap::CheckError;

#[derive(Debug, Clone, Deserialize)]
pub struct TablePolicy {
    pub months: u32,
    pub column: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DaysPolicy {
    pub days: u32,
    #[serde(default)]
    pub column: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Policy {
    pub grace_days: u32,
    pub clickhouse: BTreeMap<String, TablePolicy>,
    /// Topic retention by policy name (`learning-events`, `learning-events.dlq`).
    #[serde(default)]
    pub kafka: BTreeMap<String, DaysPolicy>,
    #[serde(default)]
    pub postgres: BTreeMap<String, DaysPolicy>,
    #[serde(default)]
    pub archives: Option<DaysPolicy>,
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let p: Policy = crate::policy::read(path)?;
        let invalid = |message: String| PolicyError::invalid(path, message);
        let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        for (t, tp) in &p.postgres {
            if !ok(t) || !tp.column.as_deref().is_some_and(ok) || tp.days == 0 {
                return Err(invalid(format!("postgres {t}: table and column must be identifiers, days > 0")));
            }
        }
        for (t, tp) in &p.kafka {
            if tp.days == 0 || tp.column.is_some() {
                return Err(invalid(format!("kafka {t}: days > 0 and no column")));
            }
        }
        for (t, tp) in &p.clickhouse {
            if !ok(t) || !ok(&tp.column) || tp.months == 0 {
                return Err(invalid(format!("{t}: table and column must be identifiers, months > 0")));
            }
        }
        Ok(p)
    }
}

/// One table's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: String,
    pub ttl_ok: bool,
    pub expected_ttl: String,
    pub live_ttl: Option<String>,
    pub rows_ok: bool,
    pub limit: String,
    pub oldest: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checked_at: String,
    pub tables: Vec<TableReport>,
    pub grace_days: u32,
    /// Stores whose retention is not an engine property checked here, stated honestly.
    pub not_checked: Vec<String>,
}

/// The TTL expression of a `CREATE TABLE` statement as the engine prints it.
pub fn live_ttl(create: &str) -> Option<String> {
    let i = create.find(" TTL ")?;
    let rest = &create[i + 5..];
    let end = [" SETTINGS ", " DELETE", " COMMENT "].iter().filter_map(|k| rest.find(k)).min().unwrap_or(rest.len());
    Some(rest[..end].trim().to_owned())
}

pub async fn verify(wh: &Warehouse, policy: &Policy) -> Result<Report, CheckError> {
    let now = Utc::now();
    let mut tables = Vec::new();
    for (table, tp) in &policy.clickhouse {
        let (db, name) = table.split_once('.').unwrap_or(("default", table));
        let rows = wh
            .query(
                "SELECT create_table_query AS q FROM system.tables WHERE database = {db:String} AND name = {name:String}",
                &[("db", db.to_owned()), ("name", name.to_owned())],
            )
            .await?;
        let expected = format!("{} + toIntervalMonth({})", tp.column, tp.months);
        let live = rows.first().and_then(|r| r["q"].as_str()).and_then(live_ttl);
        let limit = now - Duration::days(i64::from(tp.months) * 31 + i64::from(policy.grace_days));
        // Identifiers come from the validated policy file, never from a request.
        let oldest = if rows.is_empty() {
            None
        } else {
            wh.query(&format!("SELECT toString(min({c})) AS oldest, count() AS n FROM {table}", c = tp.column), &[])
                .await?
                .first()
                .filter(|r| r["n"].as_u64().or_else(|| r["n"].as_str().and_then(|s| s.parse().ok())).unwrap_or(0) > 0)
                .and_then(|r| r["oldest"].as_str().map(str::to_owned))
        };
        let rows_ok = match &oldest {
            None => true,
            Some(o) => chrono::NaiveDate::parse_from_str(&o[..10.min(o.len())], "%Y-%m-%d").map(|d| d >= limit.date_naive()).unwrap_or(false),
        };
        tables.push(TableReport {
            table: table.clone(),
            ttl_ok: live.as_deref() == Some(expected.as_str()),
            expected_ttl: expected,
            live_ttl: live,
            oldest,
            limit: limit.date_naive().to_string(),
            rows_ok,
        });
    }
    let not_checked = vec![
        "Kafka topics: the live retention.ms, segment.ms and cleanup.policy are checked (verify_topics), not the age of their oldest record; the broker deletes a segment once its newest record is older than retention.ms".into(),
        "dead letters live only in the dead-letter topic (no PostgreSQL copy): its retention is the topic's".into(),
    ];
    let ok = tables.iter().all(|t| t.ttl_ok && t.rows_ok);
    Ok(Report { ok, checked_at: now.to_rfc3339(), grace_days: policy.grace_days, tables, not_checked })
}

/// Add the PostgreSQL tables and the subject-access archives to `report`:
/// no row (by the policy's column) and no archive older than policy + grace.
/// Their retention is a purge job ([`purge`], run by `serve`), not an engine
/// property, so only the age check applies (`ttl_ok` is true by definition).
pub async fn verify_postgres(report: &mut Report, pool: &PgPool, policy: &Policy, archive_dir: &Path) -> Result<(), CheckError> {
    let now = Utc::now();
    for (table, tp) in &policy.postgres {
        let column = tp.column.as_deref().unwrap_or("created_at");
        let limit = now - Duration::days(i64::from(tp.days) + i64::from(policy.grace_days));
        // Identifiers come from the validated policy file.
        let oldest: Option<chrono::DateTime<Utc>> =
            sqlx::query_scalar(&format!("SELECT min({column}) FROM {table}")).fetch_one(pool).await?;
        tables_push(report, format!("postgres:{table}"), format!("purge {column} older than {} days", tp.days), oldest, limit);
    }
    if let Some(tp) = policy.postgres.get("audit_log") {
        // The audit log is pruned (below a signed checkpoint) with the period the owner set in
        // `audit_retention`, which must equal the policy.
        let live: Option<i32> = sqlx::query_scalar("SELECT days FROM audit_retention").fetch_optional(pool).await?;
        report.tables.push(TableReport {
            table: "postgres:audit_retention".into(),
            expected_ttl: format!("{} days", tp.days),
            live_ttl: Some(live.map_or("unset".into(), |d| format!("{d} days"))),
            ttl_ok: live.is_some_and(|d| d as u32 == tp.days),
            oldest: None,
            limit: format!("{} days", tp.days),
            rows_ok: true,
        });
    }
    if let Some(a) = &policy.archives {
        let limit = now - Duration::days(i64::from(a.days) + i64::from(policy.grace_days));
        let mut oldest: Option<chrono::DateTime<Utc>> = None;
        if let Ok(entries) = std::fs::read_dir(archive_dir) {
            for e in entries.flatten() {
                if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
                    let t: chrono::DateTime<Utc> = m.into();
                    oldest = Some(oldest.map_or(t, |o| o.min(t)));
                }
            }
        }
        tables_push(report, format!("files:{}", archive_dir.display()), format!("delete archives older than {} days", a.days), oldest, limit);
    }
    report.ok = report.tables.iter().all(|t| t.ttl_ok && t.rows_ok);
    Ok(())
}

/// Add the Kafka topics of `specs`: each one's live `cleanup.policy`, `retention.ms` and
/// `segment.ms` (read through the admin API) must equal what learnvault creates it with from the
/// policy. A missing topic, or a broker that cannot be asked, is a violation: the retention
/// cannot be shown.
pub async fn verify_topics(report: &mut Report, brokers: &str, specs: &[crate::topics::TopicSpec]) {
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let live = crate::topics::live_configs(brokers, &names).await;
    for spec in specs {
        let expected: Vec<String> = spec.config().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        let found: Option<Vec<String>> = match &live {
            Ok(m) => m.get(&spec.name).cloned().flatten().map(|c| {
                spec.config().iter().map(|(k, _)| format!("{k}={}", c.get(*k).map(String::as_str).unwrap_or("(unset)"))).collect()
            }),
            Err(e) => {
                tracing::warn!(error = %e, topic = %spec.name, "cannot read the topic's configuration");
                None
            }
        };
        report.tables.push(TableReport {
            table: format!("kafka:{}", spec.name),
            expected_ttl: expected.join(", "),
            ttl_ok: found.as_ref() == Some(&expected),
            live_ttl: Some(match (&live, &found) {
                (Err(e), _) => format!("unreadable: {e}"),
                (Ok(_), None) => "no such topic".into(),
                (Ok(_), Some(f)) => f.join(", "),
            }),
            oldest: None,
            limit: spec.retention_ms.map_or("none".into(), |ms| format!("{} days", ms / 86_400_000)),
            rows_ok: true,
        });
    }
    report.ok = report.tables.iter().all(|t| t.ttl_ok && t.rows_ok);
}

fn tables_push(report: &mut Report, table: String, expected: String, oldest: Option<chrono::DateTime<Utc>>, limit: chrono::DateTime<Utc>) {
    report.tables.push(TableReport {
        table,
        // No engine property to compare: retention here is the purge job, judged by the oldest row.
        live_ttl: None,
        expected_ttl: expected,
        ttl_ok: true,
        rows_ok: oldest.is_none_or(|o| o >= limit),
        oldest: oldest.map(|o| o.to_rfc3339()),
        limit: limit.date_naive().to_string(),
    });
}

/// Delete what the policy says has expired outside ClickHouse (which expires
/// its own rows by TTL): finished subject-request records and old archives.
/// The audit log is append-only and hash-chained: `serve` prunes it only below a
/// signed checkpoint (`audit::prune`), which keeps the chain verifiable.
pub async fn purge(pool: &PgPool, policy: &Policy, archive_dir: &Path) -> Result<u64, CheckError> {
    let mut removed = 0;
    if let Some(tp) = policy.postgres.get("dsr_jobs") {
        removed += sqlx::query("DELETE FROM dsr_jobs WHERE completed_at < now() - make_interval(days => $1)")
            .bind(tp.days as i32)
            .execute(pool)
            .await?
            .rows_affected();
    }
    if let Some(a) = &policy.archives {
        let limit = std::time::SystemTime::now() - std::time::Duration::from_secs(u64::from(a.days) * 86_400);
        if let Ok(entries) = std::fs::read_dir(archive_dir) {
            for e in entries.flatten() {
                if e.metadata().and_then(|m| m.modified()).is_ok_and(|m| m < limit) {
                    let p = e.path();
                    let gone = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                    if gone.is_ok() {
                        removed += 1;
                    }
                }
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ttl_clause() {
        let q = "CREATE TABLE events.learning_events (`x` UInt8) ENGINE = MergeTree PARTITION BY toYYYYMM(event_date) ORDER BY x TTL event_date + toIntervalMonth(26) SETTINGS index_granularity = 8192";
        assert_eq!(live_ttl(q).as_deref(), Some("event_date + toIntervalMonth(26)"));
        assert_eq!(live_ttl("CREATE TABLE t (x UInt8) ENGINE = MergeTree ORDER BY x"), None);
    }

    #[test]
    fn shipped_policy_loads() {
        let p = Policy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/retention.yaml")).unwrap();
        assert_eq!(p.clickhouse["events.learning_events"].months, 26);
    }
}
