//! Subject access reads a snapshot: ClickHouse rows of the subject are paged
//! by keyset on the table's sorting key plus the row's hash as tiebreaker
//! (never LIMIT/OFFSET, which skips or repeats rows while the lander inserts),
//! and bounded above by the job's start on the table's time column (rows
//! stamped after it are not half-included).
//!
//! Rows equal in every column hash equally; the cursor remembers how many
//! rows equal to its boundary were already written and skips exactly those,
//! so such duplicates come out as often as they are stored.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{ident, DsrError};
use crate::warehouse::Warehouse;

/// The hash column appended to each row (and removed before the row is written).
pub const HASH_COL: &str = "__lv_row_hash";
/// Time columns bounding the snapshot, in order of preference: when the row was
/// stamped, or (aggregates) when its contribution started.
const TIME_COLS: &[&str] = &["server_ts", "first_seen"];

/// How one table is paged.
#[derive(Debug, Clone)]
pub struct Plan {
    table: String,
    key: String,
    /// Sorting-key columns and their parameter types (empty: by hash alone).
    order: Vec<(String, String)>,
    /// Column bounding the snapshot by the job's start.
    cut: Option<String>,
}

/// Where the last page ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    values: Vec<Value>,
    hash: String,
    /// Rows equal to the boundary already written.
    seen: u64,
}

impl Cursor {
    /// Rows equal to the boundary already written (the next page skips them).
    pub fn seen_rows(&self) -> u64 {
        self.seen
    }
}

/// A parameter type for a column type, if the keyset can compare it.
fn param_type(ty: &str) -> Option<String> {
    let inner = ty.strip_prefix("LowCardinality(").and_then(|t| t.strip_suffix(')')).unwrap_or(ty);
    let plain = ["String", "UUID", "Date", "Date32", "DateTime", "UInt8", "UInt16", "UInt32", "UInt64", "Int8", "Int16", "Int32", "Int64"];
    if plain.contains(&inner) || inner.starts_with("DateTime64(") || inner.starts_with("DateTime(") {
        Some(inner.to_owned())
    } else {
        None
    }
}

impl Plan {
    /// Read the table's sorting key and columns from the live schema.
    pub async fn new(wh: &Warehouse, table: &str, key: &str) -> Result<Plan, DsrError> {
        let (db, t) = table.split_once('.').unwrap_or(("default", table));
        let sorting = wh
            .query(
                "SELECT sorting_key FROM system.tables WHERE database = {db:String} AND name = {name:String}",
                &[("db", db.to_owned()), ("name", t.to_owned())],
            )
            .await?
            .first()
            .and_then(|r| r["sorting_key"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let cols = wh
            .query(
                "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {name:String}",
                &[("db", db.to_owned()), ("name", t.to_owned())],
            )
            .await?;
        let type_of = |c: &str| cols.iter().find(|r| r["name"].as_str() == Some(c)).and_then(|r| r["type"].as_str()).map(str::to_owned);
        // Plain columns only; an expression or an uncomparable type: by hash alone.
        let order: Option<Vec<(String, String)>> = sorting
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| Some((ident(c).ok()?.to_owned(), param_type(&type_of(c)?)?)))
            .collect();
        let cut = TIME_COLS.iter().find(|c| type_of(c).is_some()).map(|c| c.to_string());
        Ok(Plan { table: ident(table)?.to_owned(), key: ident(key)?.to_owned(), order: order.unwrap_or_default(), cut })
    }

    /// The next page's query and parameters: up to `page` new rows after `after`.
    pub fn query(&self, p: Uuid, started: DateTime<Utc>, page: u64, after: Option<&Cursor>) -> (String, Vec<(String, String)>) {
        let cols: Vec<&str> = self.order.iter().map(|(c, _)| c.as_str()).collect();
        let order_by = cols.iter().map(|c| c.to_string()).chain(["cityHash64(toString(tuple(*)))".to_owned()]).collect::<Vec<_>>().join(", ");
        let mut sql = format!("SELECT *, toString(cityHash64(toString(tuple(*)))) AS {HASH_COL} FROM {} WHERE {} = {{p:UUID}}", self.table, self.key);
        let mut params = vec![("p".to_owned(), p.to_string())];
        if let Some(c) = &self.cut {
            sql.push_str(&format!(" AND {c} <= fromUnixTimestamp64Milli({{cut:Int64}})"));
            params.push(("cut".into(), started.timestamp_millis().to_string()));
        }
        let mut limit = page;
        if let Some(cur) = after {
            let bound: Vec<String> = self.order.iter().enumerate().map(|(i, (_, ty))| format!("{{k{i}:{ty}}}")).chain(["{h:UInt64}".to_owned()]).collect();
            sql.push_str(&format!(" AND tuple({order_by}) >= tuple({})", bound.join(", ")));
            // The same bound on the sorting key alone, spelled as comparisons of its columns
            // (implied by the line above, so no row changes): the engine's primary-key analysis
            // reads this form and skips the granules before the cursor, where a tuple with the
            // hash makes every page read all of the subject's rows again.
            if !self.order.is_empty() {
                let col = |i: usize| (self.order[i].0.as_str(), format!("{{k{i}:{}}}", self.order[i].1));
                let equal = |n: usize| (0..n).map(col).map(|(c, k)| format!("{c} = {k}")).collect::<Vec<_>>();
                let mut terms: Vec<String> = (0..self.order.len())
                    .map(|i| {
                        let (c, k) = col(i);
                        equal(i).into_iter().chain([format!("{c} > {k}")]).collect::<Vec<_>>().join(" AND ")
                    })
                    .collect();
                terms.push(equal(self.order.len()).join(" AND "));
                sql.push_str(&format!(" AND (({}))", terms.join(") OR (")));
            }
            for (i, v) in cur.values.iter().enumerate() {
                params.push((format!("k{i}"), match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }));
            }
            params.push(("h".into(), cur.hash.clone()));
            limit += cur.seen;
        }
        sql.push_str(&format!(" ORDER BY {order_by} LIMIT {limit}"));
        (sql, params)
    }

    /// Read one row of a page: the row's own JSON (hash column removed), and the
    /// cursor after it given the cursor before it. `None` when the row is one the
    /// previous page already wrote (a duplicate of the boundary).
    pub fn step(&self, line: &[u8], before: &mut Option<Cursor>, skip: &mut u64) -> Result<Option<(Vec<u8>, Map<String, Value>)>, DsrError> {
        let mut row: Map<String, Value> = serde_json::from_slice(line).map_err(|e| DsrError::Verification(format!("unreadable row: {e}")))?;
        let hash = match row.remove(HASH_COL) {
            Some(Value::String(h)) => h,
            other => return Err(DsrError::Verification(format!("{}: row without its hash ({:?}; columns {:?})", self.table, other.map(|v| v.to_string().len()), row.keys().collect::<Vec<_>>()))),
        };
        let values: Vec<Value> = self.order.iter().map(|(c, _)| row.get(c).cloned().unwrap_or(Value::Null)).collect();
        let same = before.as_ref().is_some_and(|c| c.values == values && c.hash == hash);
        if same && *skip > 0 {
            *skip -= 1;
            return Ok(None);
        }
        *skip = 0;
        match before {
            Some(c) if same => c.seen += 1,
            _ => *before = Some(Cursor { values, hash, seen: 1 }),
        }
        Ok(Some((strip_hash(line), row)))
    }
}

/// The row's JSON line without the trailing hash column (it is the last one).
fn strip_hash(line: &[u8]) -> Vec<u8> {
    let marker = format!(",\"{HASH_COL}\":");
    let text = String::from_utf8_lossy(line);
    match text.rfind(&marker) {
        Some(i) => format!("{}}}", &text[..i]).into_bytes(),
        None => line.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_resume_after_the_boundary_and_skip_only_what_was_written() {
        let plan = Plan { table: "t".into(), key: "learner_id".into(), order: vec![("course_id".into(), "String".into())], cut: Some("server_ts".into()) };
        let p = Uuid::nil();
        let start = DateTime::from_timestamp_millis(1_764_072_000_000).unwrap();
        let (sql, params) = plan.query(p, start, 2, None);
        assert_eq!(
            sql,
            "SELECT *, toString(cityHash64(toString(tuple(*)))) AS __lv_row_hash FROM t WHERE learner_id = {p:UUID} AND server_ts <= fromUnixTimestamp64Milli({cut:Int64}) ORDER BY course_id, cityHash64(toString(tuple(*))) LIMIT 2"
        );
        assert_eq!(params[1], ("cut".to_owned(), "1764072000000".to_owned()));

        // Page 1 ends with two identical rows (same key, same hash).
        let row = |c: &str, h: &str| format!(r#"{{"course_id":"{c}","x":1,"{HASH_COL}":"{h}"}}"#).into_bytes();
        let (mut cur, mut skip) = (None, 0);
        for l in [row("a", "1"), row("b", "7"), row("b", "7")] {
            assert!(plan.step(&l, &mut cur, &mut skip).unwrap().is_some());
        }
        assert_eq!(cur, Some(Cursor { values: vec![json!("b")], hash: "7".into(), seen: 2 }));
        let (sql, params) = plan.query(p, start, 2, cur.as_ref());
        assert!(
            sql.ends_with(
                "AND tuple(course_id, cityHash64(toString(tuple(*)))) >= tuple({k0:String}, {h:UInt64}) \
                 AND ((course_id > {k0:String}) OR (course_id = {k0:String})) ORDER BY course_id, cityHash64(toString(tuple(*))) LIMIT 4"
            ),
            "{sql}"
        );
        let two = Plan { order: vec![("course_id".into(), "String".into()), ("server_ts".into(), "DateTime64(3, 'UTC')".into())], ..plan.clone() };
        let (sql, _) = two.query(p, start, 2, cur.as_ref());
        assert!(
            sql.contains(
                " AND ((course_id > {k0:String}) OR (course_id = {k0:String} AND server_ts > {k1:DateTime64(3, 'UTC')}) \
                 OR (course_id = {k0:String} AND server_ts = {k1:DateTime64(3, 'UTC')})) ORDER BY"
            ),
            "the key-only bound, lexicographic over the sorting key: {sql}"
        );
        assert_eq!(params[2..], [("k0".to_owned(), "b".to_owned()), ("h".to_owned(), "7".to_owned())]);
        // Page 2 starts with the boundary rows again (and a third copy that was not written yet).
        skip = cur.as_ref().unwrap().seen;
        let mut written = Vec::new();
        for l in [row("b", "7"), row("b", "7"), row("b", "7"), row("c", "2")] {
            if let Some((line, _)) = plan.step(&l, &mut cur, &mut skip).unwrap() {
                written.push(String::from_utf8(line).unwrap());
            }
        }
        assert_eq!(written, [r#"{"course_id":"b","x":1}"#, r#"{"course_id":"c","x":1}"#]);
    }

    use serde_json::json;

    #[test]
    fn only_comparable_plain_types_page_by_keyset() {
        assert_eq!(param_type("LowCardinality(String)").as_deref(), Some("String"));
        assert_eq!(param_type("DateTime64(3, 'UTC')").as_deref(), Some("DateTime64(3, 'UTC')"));
        assert_eq!(param_type("Nullable(UInt32)"), None);
        assert_eq!(param_type("Map(String, String)"), None);
    }
}
