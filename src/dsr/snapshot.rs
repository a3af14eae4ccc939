//! Subject access reads a snapshot: ClickHouse rows of the subject are paged
//! by keyset on the table's sorting key (never LIMIT/OFFSET, which skips or
//! repeats rows while the lander inserts), and bounded above by the job's start
//! on the table's time column (rows stamped after it are not half-included).
//!
//! Pages hold whole key groups: a page ordered by the sorting key alone (which
//! the engine reads in order and stops at the limit) is written up to, not
//! including, the rows equal to its last key, and the next page starts at that
//! key. Only when one key's rows fill a page alone (or the table has no usable
//! sorting key) are that key's rows paged by the row's hash as tiebreaker; rows
//! equal in every column hash equally, so that cursor remembers how many rows
//! equal to its boundary were already written and skips exactly those, and such
//! duplicates come out as often as they are stored.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
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

/// Where a key group's last page ended (by hash).
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
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

/// One row as the engine wrote it: each column's JSON text, by column name.
pub struct RawRow<'a>(pub BTreeMap<&'a str, &'a RawValue>);

/// Where the next page of key groups starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    Start,
    /// At this key, its rows included (none of them written yet).
    From(Vec<Value>),
    /// After this key (all its rows written).
    After(Vec<Value>),
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

    /// Whether the table pages by key groups (else by hash alone: [`Plan::group_query`] with no key).
    pub fn by_key(&self) -> bool {
        !self.order.is_empty()
    }

    /// The sorting-key values of a row (as the engine writes them in JSON).
    pub fn key_of(&self, row: &Map<String, Value>) -> Vec<Value> {
        self.order.iter().map(|(c, _)| row.get(c).cloned().unwrap_or(Value::Null)).collect()
    }

    /// The sorting key of a borrowed row, as the engine's JSON text of each value
    /// (equal values are written equally: comparing the text compares the key).
    pub fn raw_key_of<'a>(&self, row: &RawRow<'a>) -> Vec<&'a str> {
        self.order.iter().map(|(c, _)| row.0.get(c.as_str()).map_or("null", |v| v.get())).collect()
    }

    /// A borrowed row's key, decoded (for the next page's bound).
    pub fn key_values(&self, row: &RawRow<'_>) -> Result<Vec<Value>, DsrError> {
        self.raw_key_of(row)
            .into_iter()
            .map(|t| serde_json::from_str(t).map_err(|e| DsrError::Verification(format!("unreadable key value: {e}"))))
            .collect()
    }

    fn base(&self, p: Uuid, started: DateTime<Utc>, hash: bool) -> (String, Vec<(String, String)>) {
        let extra = if hash { format!(", toString(cityHash64(toString(tuple(*)))) AS {HASH_COL}") } else { String::new() };
        let mut sql = format!("SELECT *{extra} FROM {} WHERE {} = {{p:UUID}}", self.table, self.key);
        let mut params = vec![("p".to_owned(), p.to_string())];
        if let Some(c) = &self.cut {
            sql.push_str(&format!(" AND {c} <= fromUnixTimestamp64Milli({{cut:Int64}})"));
            params.push(("cut".into(), started.timestamp_millis().to_string()));
        }
        (sql, params)
    }

    fn key_params(key: &[Value], params: &mut Vec<(String, String)>) {
        for (i, v) in key.iter().enumerate() {
            params.push((format!("k{i}"), match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }));
        }
    }

    /// The next page of whole key groups: up to `page` rows from `bound` on, in
    /// sorting-key order. The bound is spelled as comparisons of the key's columns
    /// (lexicographic), the form the engine's primary-key analysis reads: a page
    /// skips the granules before it and stops reading at its limit.
    pub fn page_query(&self, p: Uuid, started: DateTime<Utc>, page: u64, bound: &Bound) -> (String, Vec<(String, String)>) {
        let (mut sql, mut params) = self.base(p, started, false);
        let (key, inclusive) = match bound {
            Bound::Start => (None, false),
            Bound::From(k) => (Some(k), true),
            Bound::After(k) => (Some(k), false),
        };
        if let Some(key) = key {
            let col = |i: usize| (self.order[i].0.as_str(), format!("{{k{i}:{}}}", self.order[i].1));
            let equal = |n: usize| (0..n).map(col).map(|(c, k)| format!("{c} = {k}")).collect::<Vec<_>>();
            let mut terms: Vec<String> = (0..self.order.len())
                .map(|i| {
                    let (c, k) = col(i);
                    equal(i).into_iter().chain([format!("{c} > {k}")]).collect::<Vec<_>>().join(" AND ")
                })
                .collect();
            if inclusive {
                terms.push(equal(self.order.len()).join(" AND "));
            }
            sql.push_str(&format!(" AND (({}))", terms.join(") OR (")));
            Self::key_params(key, &mut params);
        }
        let order_by = self.order.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(", ");
        sql.push_str(&format!(" ORDER BY {order_by} LIMIT {page}"));
        (sql, params)
    }

    /// The next page of one key group's rows (all rows when the table pages by
    /// hash alone: `key` empty), ordered by the row's hash: up to `page` new rows after `after`.
    pub fn group_query(&self, p: Uuid, started: DateTime<Utc>, page: u64, key: &[Value], after: Option<&Cursor>) -> (String, Vec<(String, String)>) {
        let (mut sql, mut params) = self.base(p, started, true);
        for (i, (c, ty)) in self.order.iter().enumerate().take(key.len()) {
            sql.push_str(&format!(" AND {c} = {{k{i}:{ty}}}"));
        }
        Self::key_params(key, &mut params);
        let mut limit = page;
        if let Some(cur) = after {
            sql.push_str(" AND cityHash64(toString(tuple(*))) >= {h:UInt64}");
            params.push(("h".into(), cur.hash.clone()));
            limit += cur.seen;
        }
        sql.push_str(&format!(" ORDER BY cityHash64(toString(tuple(*))) LIMIT {limit}"));
        (sql, params)
    }

    /// Read one row of a page into a map.
    pub fn row(line: &[u8]) -> Result<Map<String, Value>, DsrError> {
        serde_json::from_slice(line).map_err(|e| DsrError::Verification(format!("unreadable row: {e}")))
    }

    /// Read one row of a key-group page, borrowed from its line (no value copied).
    pub fn raw_row(line: &[u8]) -> Result<RawRow<'_>, DsrError> {
        serde_json::from_slice(line).map(RawRow).map_err(|e| DsrError::Verification(format!("unreadable row: {e}")))
    }

    /// Read one row of a hash-ordered page ([`Plan::group_query`]): the row's own
    /// JSON (hash column removed), and the cursor after it given the cursor before
    /// it. `None` when the row is one the previous page already wrote (a duplicate
    /// of the boundary).
    pub fn step(&self, line: &[u8], before: &mut Option<Cursor>, skip: &mut u64) -> Result<Option<(Vec<u8>, Map<String, Value>)>, DsrError> {
        let mut row = Self::row(line)?;
        let hash = match row.remove(HASH_COL) {
            Some(Value::String(h)) => h,
            other => return Err(DsrError::Verification(format!("{}: row without its hash ({:?}; columns {:?})", self.table, other.map(|v| v.to_string().len()), row.keys().collect::<Vec<_>>()))),
        };
        let same = before.as_ref().is_some_and(|c| c.hash == hash);
        if same && *skip > 0 {
            *skip -= 1;
            return Ok(None);
        }
        *skip = 0;
        match before {
            Some(c) if same => c.seen += 1,
            _ => *before = Some(Cursor { hash, seen: 1 }),
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
    fn pages_hold_whole_key_groups_and_start_at_the_last_key() {
        let plan = Plan {
            table: "t".into(),
            key: "learner_id".into(),
            order: vec![("course_id".into(), "String".into()), ("server_ts".into(), "DateTime64(3, 'UTC')".into())],
            cut: Some("server_ts".into()),
        };
        let p = Uuid::nil();
        let start = DateTime::from_timestamp_millis(1_764_072_000_000).unwrap();
        let (sql, params) = plan.page_query(p, start, 2, &Bound::Start);
        assert_eq!(
            sql,
            "SELECT * FROM t WHERE learner_id = {p:UUID} AND server_ts <= fromUnixTimestamp64Milli({cut:Int64}) ORDER BY course_id, server_ts LIMIT 2"
        );
        assert_eq!(params[1], ("cut".to_owned(), "1764072000000".to_owned()));
        let key = vec![json!("b"), json!("2026-01-05 10:00:00.000")];
        let (sql, params) = plan.page_query(p, start, 2, &Bound::From(key.clone()));
        assert!(
            sql.ends_with(
                " AND ((course_id > {k0:String}) OR (course_id = {k0:String} AND server_ts > {k1:DateTime64(3, 'UTC')}) \
                 OR (course_id = {k0:String} AND server_ts = {k1:DateTime64(3, 'UTC')})) ORDER BY course_id, server_ts LIMIT 2"
            ),
            "from the key, its rows included: {sql}"
        );
        assert_eq!(params[2..], [("k0".to_owned(), "b".to_owned()), ("k1".to_owned(), "2026-01-05 10:00:00.000".to_owned())]);
        let (sql, _) = plan.page_query(p, start, 2, &Bound::After(key.clone()));
        assert!(
            sql.ends_with(
                " AND ((course_id > {k0:String}) OR (course_id = {k0:String} AND server_ts > {k1:DateTime64(3, 'UTC')})) \
                 ORDER BY course_id, server_ts LIMIT 2"
            ),
            "after the key: {sql}"
        );
        assert_eq!(plan.key_of(&Plan::row(br#"{"course_id":"b","server_ts":"2026-01-05 10:00:00.000","x":1}"#).unwrap()), key);
    }

    #[test]
    fn a_key_group_pages_by_hash_and_skips_only_what_was_written() {
        let plan = Plan { table: "t".into(), key: "learner_id".into(), order: vec![("course_id".into(), "String".into())], cut: None };
        let (p, start) = (Uuid::nil(), DateTime::from_timestamp_millis(0).unwrap());
        let (sql, _) = plan.group_query(p, start, 2, &[json!("b")], None);
        assert_eq!(
            sql,
            "SELECT *, toString(cityHash64(toString(tuple(*)))) AS __lv_row_hash FROM t WHERE learner_id = {p:UUID} \
             AND course_id = {k0:String} ORDER BY cityHash64(toString(tuple(*))) LIMIT 2"
        );
        // Page 1 ends with two identical rows (same hash).
        let row = |h: &str| format!(r#"{{"course_id":"b","x":1,"{HASH_COL}":"{h}"}}"#).into_bytes();
        let (mut cur, mut skip) = (None, 0);
        for l in [row("1"), row("7"), row("7")] {
            assert!(plan.step(&l, &mut cur, &mut skip).unwrap().is_some());
        }
        assert_eq!(cur, Some(Cursor { hash: "7".into(), seen: 2 }));
        let (sql, params) = plan.group_query(p, start, 2, &[json!("b")], cur.as_ref());
        assert!(sql.ends_with("AND cityHash64(toString(tuple(*))) >= {h:UInt64} ORDER BY cityHash64(toString(tuple(*))) LIMIT 4"), "{sql}");
        assert_eq!(params[1..], [("k0".to_owned(), "b".to_owned()), ("h".to_owned(), "7".to_owned())]);
        // Page 2 starts with the boundary rows again (and a third copy that was not written yet).
        skip = cur.as_ref().unwrap().seen;
        let mut written = Vec::new();
        for l in [row("7"), row("7"), row("7"), row("9")] {
            if let Some((line, _)) = plan.step(&l, &mut cur, &mut skip).unwrap() {
                written.push(String::from_utf8(line).unwrap());
            }
        }
        assert_eq!(written, [r#"{"course_id":"b","x":1}"#, r#"{"course_id":"b","x":1}"#]);
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
