//! Erasure (GDPR Art. 17), step by step, each idempotent:
//!
//! 1. `tombstone`: the pseudonym is tombstoned (the gateway and the lander
//!    refuse its events from now on) with, when `policies/erasure.yaml` says so,
//!    the learner's blind index (the vault then refuses to issue for them
//!    again: suppression); per-store counts and the subject's partitions are recorded;
//! 2. `fence`: erasure waits until every live lander, in this process or
//!    another, has seen the tombstone and has no batch in flight governed
//!    before it ([`crate::fence`]);
//! 3. `delete`: rows of every mapped `delete_rows` ClickHouse table are deleted
//!    physically (`ALTER TABLE ... DELETE`, `mutations_sync = 2`);
//! 4. `recompute`: ClickHouse views never see deletes (a `uniqState` still
//!    counts the learner), so in each affected partition of every
//!    `recompute_aggregate` table the groups the learner fed are rebuilt from
//!    the base table with the table's own materialized-view SELECT: the
//!    partition is hard-linked into a staging table, those groups are removed
//!    there by a mutation (physically) and computed afresh, and the staging
//!    partition is swapped in atomically (`REPLACE PARTITION`), then compared
//!    with a fresh computation;
//! 5. `verify`: 0 rows for the subject in every mapped store; events that the
//!    lander landed after the tombstone (its governance cache) send the job back
//!    to step 2, a bounded number of times;
//! 6. `shred`: the subject's access archives (and any staging files) are
//!    deleted, then the vault row (wrapped key, ciphertext, blind index) and
//!    consent history; the tombstone stays;
//! 7. `certify`: a signed certificate (see [`super::certificate`]) with the
//!    counts before and after and the residual copies stated honestly.

use chrono::Utc;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{ident, num, Dsr, DsrError, Job, Progress};
use crate::datamap::{Erasure, Store, StoreKind};
use crate::warehouse::{Warehouse, AGGREGATE_REBUILD};

const MAX_ROUNDS: u64 = 3;
/// How long erasure waits for the landers' acknowledgement before the attempt fails (and is retried).
const FENCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The subjects of an erasure job: its pseudonym, or (batch erasure) the
/// list in `progress.subjects`, erased together in one pass.
pub fn subjects(job: &Job) -> Vec<Uuid> {
    if job.kind == "erasure_batch" {
        serde_json::from_value(job.progress["subjects"].clone()).unwrap_or_default()
    } else {
        vec![job.pseudonym]
    }
}

/// Where a subject's own progress (counts, times, archives) is kept: the
/// job's progress for a single erasure, `progress.by_subject.{p}` for a batch.
fn slot(job: &mut Job, p: Uuid) -> &mut Value {
    if job.kind == "erasure_batch" {
        &mut job.progress["by_subject"][p.to_string()]
    } else {
        &mut job.progress
    }
}

fn slot_of(job: &Job, p: Uuid) -> &Value {
    if job.kind == "erasure_batch" {
        &job.progress["by_subject"][p.to_string()]
    } else {
        &job.progress
    }
}

/// `['uuid', ...]`: the `{ps:Array(UUID)}` parameter.
fn uuids_param(ps: &[Uuid]) -> String {
    format!("[{}]", ps.iter().map(|p| format!("'{p}'")).collect::<Vec<_>>().join(","))
}

pub async fn run(d: &Dsr, job: &mut Job, progress: Progress<'_>) -> Result<(), DsrError> {
    let ps = subjects(job);
    if ps.is_empty() {
        return Err(DsrError::Verification("an erasure job without subjects".into()));
    }
    let ps = &ps[..];
    loop {
        match job.step.as_str() {
            "start" | "tombstone" => {
                progress("tombstone");
                // With suppression (policies/erasure.yaml), the tombstone keeps the learner's
                // blind index (never the external id), so the vault refuses them from now on.
                let suppress = d.erasure_policy.suppression.enabled;
                sqlx::query!(
                    "INSERT INTO tombstones (pseudonym, institution_id, request_id, blind_index, index_key_version, suppressed)
                     SELECT q.p, $2, $3, CASE WHEN $4 THEN l.blind_index END, CASE WHEN $4 THEN l.index_key_version END,
                            $4 AND l.blind_index IS NOT NULL
                     FROM UNNEST($1::uuid[]) AS q(p) LEFT JOIN learners l ON l.pseudonym = q.p
                     ON CONFLICT (pseudonym) DO NOTHING",
                    ps,
                    &job.institution,
                    job.id,
                    suppress
                )
                .execute(&d.pool)
                .await?;
                for p in ps {
                    crate::governance::note_erased(*p);
                }
                // The erasure fence: a new epoch, after the tombstone committed.
                if job.progress.get("fence_epoch").is_none() {
                    job.progress["fence_epoch"] = json!(crate::fence::advance(&d.pool).await?);
                }
                let missing: Vec<Uuid> = ps.iter().copied().filter(|p| slot_of(job, *p).get("before").is_none()).collect();
                let mut counted = if missing.len() > 1 { d.counts_many(&missing).await? } else { Default::default() };
                for (i, p) in ps.iter().enumerate() {
                    if slot_of(job, *p).get("before").is_none() {
                        let before = match counted.remove(p) {
                            Some(c) => c,
                            None => d.counts(*p).await?,
                        };
                        let sl = slot(job, *p);
                        sl["tombstoned_at"] = json!(Utc::now());
                        sl["before"] = Value::Object(before);
                    }
                    if ps.len() > 1 {
                        progress(&format!("tombstone {}/{}", i + 1, ps.len()));
                    }
                }
                job.progress["partitions"] = json!(partitions(d, ps).await?);
                d.save(job, "fence").await?;
            }
            "fence" => {
                // Every live lander (any process) has seen the tombstone and has no batch in
                // flight governed before it: nothing of the subject lands after the delete.
                progress("fence");
                let epoch = job.progress["fence_epoch"].as_i64().unwrap_or(0);
                if let Err(late) = crate::fence::wait_for_landers(&d.pool, epoch, FENCE_TIMEOUT).await? {
                    return Err(DsrError::Fence(format!("{} lander(s) did not acknowledge erasure epoch {epoch}: {late:?}", late.len())));
                }
                job.progress["fenced_at"] = json!(Utc::now());
                d.save(job, "delete").await?;
            }
            "delete" => {
                // Before the rows go: which keys of each aggregate they feed (recompute only those).
                for s in d.map.stores.iter().filter(|s| s.store == StoreKind::Clickhouse && s.erasure == Erasure::RecomputeAggregate) {
                    let view = view_of(d, s)?;
                    let prev = job.progress["affected"].get(&s.name).cloned();
                    let found = affected_keys(d, s, view, ps).await?;
                    job.progress["affected"][&s.name] = merge_affected(prev, found);
                }
                let targets: Vec<(&Store, &str)> =
                    d.subject_stores(StoreKind::Clickhouse).filter(|(s, _)| s.erasure == Erasure::DeleteRows).collect();
                // Partitions the subject has now (late events included) join the recompute set.
                let mut parts: Vec<String> = serde_json::from_value(job.progress["partitions"].clone()).unwrap_or_default();
                for (s, key) in &targets {
                    parts.extend(subject_partitions(&d.warehouse, &s.name, key, ps).await?);
                }
                parts.sort();
                parts.dedup();
                job.progress["partitions"] = json!(parts);
                progress(&format!("delete from {} tables", targets.len()));
                // One connection each: the tables are rewritten in parallel.
                futures::future::try_join_all(targets.iter().map(|(s, key)| async move {
                    d.warehouse
                        .execute(
                            &format!("ALTER TABLE {} DELETE WHERE {} IN {{ps:Array(UUID)}} SETTINGS mutations_sync = 2", ident(&s.name)?, ident(key)?),
                            &[("ps", uuids_param(ps))],
                        )
                        .await
                        .map_err(DsrError::from)
                }))
                .await?;
                d.save(job, "recompute").await?;
            }
            "recompute" => {
                let parts: Vec<String> = serde_json::from_value(job.progress["partitions"].clone()).unwrap_or_default();
                // Lander inserts wait while partitions are swapped and compared
                // (rows landing between the rebuild and the swap would be lost).
                let _barrier = AGGREGATE_REBUILD.write().await;
                let tables: Vec<&Store> =
                    d.map.stores.iter().filter(|s| s.store == StoreKind::Clickhouse && s.erasure == Erasure::RecomputeAggregate).collect();
                progress(&format!("recompute {} aggregates ({} partitions each)", tables.len(), parts.len()));
                let job_id = job.id;
                let affected = &job.progress["affected"];
                let parts = &parts;
                // Each aggregate at once, [`PARTITIONS_AT_ONCE`] of its partitions at a time (each
                // in a staging table of its own).
                let done = futures::future::try_join_all(tables.iter().map(|s| async move {
                    let view = view_of(d, s)?;
                    let keys = affected.get(&s.name).cloned();
                    // The live schema once per aggregate (three catalogue reads), not once per partition.
                    let sh = shape(&d.warehouse, ident(&s.name)?, ident(&view.name)?).await?;
                    for some in parts.chunks(PARTITIONS_AT_ONCE) {
                        futures::future::try_join_all(some.iter().map(|part| rebuild_partition(&d.warehouse, s, &sh, part, job_id, keys.as_ref())))
                            .await?;
                    }
                    Ok::<_, DsrError>(json!({"table": s.name, "partitions": parts, "keys": keys, "verified_equal_to_fresh_computation": true}))
                }))
                .await;
                // Rows the read path fetched before (shared, warm or live) held the subject: dropped,
                // also when a partition failed (others may have been swapped in).
                crate::warehouse::aggregates_changed();
                let done = done?;
                job.progress["recomputed"] = json!(done);
                d.save(job, "verify").await?;
            }
            "verify" => {
                progress("verify");
                let mut left = Vec::new();
                for (s, key) in d.subject_stores(StoreKind::Clickhouse) {
                    let n = ch_count_all(&d.warehouse, &s.name, key, ps).await?;
                    if n > 0 {
                        left.push(format!("{} ({n} rows)", s.name));
                    }
                }
                if left.is_empty() {
                    d.save(job, "shred").await?;
                } else {
                    // Events the lander accepted before it saw the tombstone.
                    let round = job.progress["rounds"].as_u64().unwrap_or(0) + 1;
                    job.progress["rounds"] = json!(round);
                    if round > MAX_ROUNDS {
                        return Err(DsrError::Verification(format!("rows remain after {MAX_ROUNDS} rounds: {}", left.join(", "))));
                    }
                    tokio::time::sleep(d.settle).await;
                    d.save(job, "delete").await?;
                }
            }
            "shred" => {
                progress("crypto-shred");
                for p in ps {
                    // The subject's access archives hold the decrypted identity: they go first.
                    let access: Vec<Uuid> =
                        sqlx::query_scalar!("SELECT id FROM dsr_jobs WHERE kind = 'access' AND pseudonym = $1 ORDER BY requested_at", p)
                            .fetch_all(&d.pool)
                            .await?;
                    let deleted = super::access::delete_archives(&d.archive_dir, &access)?;
                    let prev = slot_of(job, *p)["access_archives"]["files_deleted"].as_u64().unwrap_or(0);
                    let remaining = access.iter().filter(|j| super::access::archive_path(&d.archive_dir, **j).exists()).count();
                    slot(job, *p)["access_archives"] = json!({"jobs": access, "files_deleted": prev + deleted, "remaining": remaining});
                }
                // Consent history goes with the learner rows (ON DELETE CASCADE).
                sqlx::query!("DELETE FROM learners WHERE pseudonym = ANY($1)", ps).execute(&d.pool).await?;
                let mut counted = if ps.len() > 1 { d.counts_many(ps).await? } else { Default::default() };
                for p in ps {
                    let after = match counted.remove(p) {
                        Some(c) => c,
                        None => d.counts(*p).await?,
                    };
                    let sl = slot(job, *p);
                    sl["after"] = Value::Object(after);
                    sl["shredded_at"] = json!(Utc::now());
                }
                d.save(job, "certify").await?;
            }
            "certify" => {
                progress("certificate");
                if job.kind != "erasure_batch" {
                    let body = certificate_body(d, job, job.pseudonym).await?;
                    let signed = d.signer.sign(&body);
                    let detail = json!({"job": job.id, "stores": body["stores"].as_array().map(Vec::len), "certificate_sha256": super::certificate::digest(&signed)});
                    d.finish(job, json!({"certificate": signed}), detail).await?;
                    return Ok(());
                }
                // A batch: one certificate per subject (the dead-letter topics read once for all).
                let keyed = dead_letters_keyed(d, ps).await?;
                let mut certificates = serde_json::Map::new();
                let mut digests = serde_json::Map::new();
                for p in ps {
                    let signed = d.signer.sign(&certificate_body_with(d, job, *p, Some(&keyed)).await?);
                    digests.insert(p.to_string(), json!(super::certificate::digest(&signed)));
                    certificates.insert(p.to_string(), signed);
                }
                let detail = json!({"job": job.id, "subjects": ps.len(), "certificate_sha256": digests});
                d.finish(job, json!({"certificates": certificates}), detail).await?;
                return Ok(());
            }
            other => return Err(DsrError::Verification(format!("unknown step {other}"))),
        }
    }
}

/// Rows of any of `ps` in `table`.
async fn ch_count_all(wh: &Warehouse, table: &str, key: &str, ps: &[Uuid]) -> Result<u64, DsrError> {
    let rows = wh
        .query(&format!("SELECT count() AS n FROM {} WHERE {} IN {{ps:Array(UUID)}}", ident(table)?, ident(key)?), &[("ps", uuids_param(ps))])
        .await?;
    Ok(rows.first().map(|r| num(&r["n"])).unwrap_or(0))
}

/// Partition ids of the subjects' rows in every `delete_rows` table.
async fn partitions(d: &Dsr, ps: &[Uuid]) -> Result<Vec<String>, DsrError> {
    let mut out = Vec::new();
    for (s, key) in d.subject_stores(StoreKind::Clickhouse).filter(|(s, _)| s.erasure == Erasure::DeleteRows) {
        out.extend(subject_partitions(&d.warehouse, &s.name, key, ps).await?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

async fn subject_partitions(wh: &Warehouse, table: &str, key: &str, ps: &[Uuid]) -> Result<Vec<String>, DsrError> {
    let rows = wh
        .query(
            &format!("SELECT DISTINCT _partition_id AS id FROM {} WHERE {} IN {{ps:Array(UUID)}}", ident(table)?, ident(key)?),
            &[("ps", uuids_param(ps))],
        )
        .await?;
    Ok(rows.iter().filter_map(|r| r["id"].as_str().map(str::to_owned)).collect())
}

struct Shape {
    as_select: String,
    partition_key: String,
    columns: Vec<(String, String, bool)>,
}

async fn shape(wh: &Warehouse, table: &str, view: &str) -> Result<Shape, DsrError> {
    let split = |t: &str| t.split_once('.').map(|(a, b)| (a.to_owned(), b.to_owned())).unwrap_or(("default".into(), t.to_owned()));
    let (vdb, vname) = split(view);
    let (tdb, tname) = split(table);
    let v = wh
        .query(
            "SELECT as_select FROM system.tables WHERE database = {db:String} AND name = {name:String}",
            &[("db", vdb), ("name", vname)],
        )
        .await?;
    let as_select = v.first().and_then(|r| r["as_select"].as_str()).filter(|s| !s.is_empty()).map(str::to_owned);
    let t = wh
        .query(
            "SELECT partition_key FROM system.tables WHERE database = {db:String} AND name = {name:String}",
            &[("db", tdb.clone()), ("name", tname.clone())],
        )
        .await?;
    let partition_key = t.first().and_then(|r| r["partition_key"].as_str()).map(str::to_owned);
    let cols = wh
        .query(
            "SELECT name, type, is_in_sorting_key AS k FROM system.columns WHERE database = {db:String} AND table = {name:String} ORDER BY position",
            &[("db", tdb), ("name", tname)],
        )
        .await?;
    let (Some(as_select), Some(partition_key)) = (as_select, partition_key) else {
        return Err(DsrError::Verification(format!("{table}: its view {view} or its partition key is missing from the live schema")));
    };
    if !partition_key.starts_with("toYYYYMM(") {
        // The subject's partitions are found in the base table (monthly by event time).
        return Err(DsrError::Verification(format!("{table}: partition key {partition_key} is not monthly; cannot map the subject's partitions")));
    }
    let columns = cols
        .iter()
        .map(|c| (c["name"].as_str().unwrap_or_default().to_owned(), c["type"].as_str().unwrap_or_default().to_owned(), num(&c["k"]) == 1))
        .collect();
    Ok(Shape { as_select, partition_key, columns })
}

fn view_of<'a>(d: &'a Dsr, table: &Store) -> Result<&'a Store, DsrError> {
    d.map
        .stores
        .iter()
        .find(|v| v.target.as_deref() == Some(table.name.as_str()))
        .ok_or_else(|| DsrError::Verification(format!("{}: no materialized view in the data map targets it", table.name)))
}

/// The aggregate's sorting-key columns that its source table also has (string
/// or date columns), with the values the subject's rows hold in them:
/// `{"cols": [[name, type]], "values": [[...], ...]}`. Only groups matching
/// these values can contain the subject, so only they are recomputed.
async fn affected_keys(d: &Dsr, table: &Store, view: &Store, ps: &[Uuid]) -> Result<Value, DsrError> {
    let wh = &d.warehouse;
    let sh = shape(wh, ident(&table.name)?, ident(&view.name)?).await?;
    let Some((source, key)) = d
        .subject_stores(StoreKind::Clickhouse)
        .find(|(s, _)| s.erasure == Erasure::DeleteRows && sh.as_select.contains(s.name.as_str()))
    else {
        return Ok(Value::Null);
    };
    let (db, name) = source.name.split_once('.').unwrap_or(("default", &source.name));
    let src_cols = wh
        .query(
            "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {name:String}",
            &[("db", db.to_owned()), ("name", name.to_owned())],
        )
        .await?;
    let kind = |ty: &str| match ty {
        "String" | "LowCardinality(String)" => Some("String"),
        "Date" => Some("Date"),
        _ => None,
    };
    let cols: Vec<(String, &str)> = sh
        .columns
        .iter()
        .filter(|c| c.2)
        .filter_map(|c| {
            let ty = src_cols.iter().find(|s| s["name"].as_str() == Some(c.0.as_str()))?["type"].as_str()?;
            Some((c.0.clone(), kind(ty)?))
        })
        .collect();
    if cols.is_empty() {
        return Ok(Value::Null);
    }
    let select = cols.iter().map(|(c, _)| format!("groupUniqArray(toString(`{c}`)) AS `{c}`")).collect::<Vec<_>>().join(", ");
    let row = wh
        .query(&format!("SELECT {select} FROM {} WHERE {} IN {{ps:Array(UUID)}}", ident(&source.name)?, ident(key)?), &[("ps", uuids_param(ps))])
        .await?;
    let row = row.first().cloned().unwrap_or_default();
    Ok(json!({
        "cols": cols.iter().map(|(c, t)| json!([c, t])).collect::<Vec<_>>(),
        "values": cols.iter().map(|(c, _)| row[c].clone()).collect::<Vec<_>>(),
    }))
}

/// Union of two `affected_keys` results (a later round may find late rows' keys).
fn merge_affected(prev: Option<Value>, found: Value) -> Value {
    match (prev, found) {
        (Some(p), f) if p.is_object() && f.is_object() && p["cols"] == f["cols"] => {
            let values: Vec<Value> = p["values"]
                .as_array()
                .into_iter()
                .flatten()
                .zip(f["values"].as_array().into_iter().flatten())
                .map(|(a, b)| {
                    let mut v: Vec<Value> = a.as_array().cloned().unwrap_or_default();
                    v.extend(b.as_array().cloned().unwrap_or_default());
                    v.sort_by_key(|x| x.to_string());
                    v.dedup();
                    Value::Array(v)
                })
                .collect();
            json!({"cols": p["cols"], "values": values})
        }
        // Different shapes (a migration in between) or nothing known: recompute whole partitions.
        (Some(_), _) => Value::Null,
        (None, f) => f,
    }
}

/// `c0 IN {k0:Array(String)} AND ...` and its parameters, from `affected_keys`.
fn key_filter(keys: Option<&Value>) -> Option<(String, Vec<(String, String)>)> {
    let keys = keys.filter(|k| k.is_object())?;
    let cols = keys["cols"].as_array()?;
    let values = keys["values"].as_array()?;
    let mut sql = Vec::new();
    let mut params = Vec::new();
    for (i, (c, v)) in cols.iter().zip(values).enumerate() {
        let (name, ty) = (c[0].as_str()?, c[1].as_str()?);
        if ident(name).is_err() || !matches!(ty, "String" | "Date") {
            return None;
        }
        let list: Vec<String> =
            v.as_array()?.iter().map(|x| format!("'{}'", x.as_str().unwrap_or_default().replace('\\', "\\\\").replace('\'', "\\'"))).collect();
        sql.push(format!("`{name}` IN {{k{i}:Array({ty})}}"));
        params.push((format!("k{i}"), format!("[{}]", list.join(","))));
    }
    Some((sql.join(" AND "), params))
}

/// Partitions of one aggregate rebuilt at a time: a partition's statements are mostly
/// waits (a mutation's scheduling, catalogue changes), so two overlap on two cores.
const PARTITIONS_AT_ONCE: usize = 2;

/// Rebuild one partition of an aggregate table, swap it in atomically, then check it. With
/// `keys`, only the groups the subject fed are recomputed from the base table; the others
/// are copied as they are.
///
/// The check proves the live partition's recomputed groups equal a fresh computation from
/// the base table without computing it twice: no state of those groups survived the rewrite
/// of the copied partition (else an old state, holding the subject, would merge with the new
/// one), and after the swap the live groups equal the staged ones, which are the computation
/// just made from the base table (the lander's inserts wait on the rebuild barrier, so the
/// base table cannot change in between).
async fn rebuild_partition(wh: &Warehouse, table: &Store, sh: &Shape, part: &str, job: Uuid, keys: Option<&Value>) -> Result<(), DsrError> {
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DsrError::Verification(format!("unexpected partition id {part:?}")));
    }
    let t = ident(&table.name)?;
    let staging = format!("{t}__erasure_{}_p{part}", &job.simple().to_string()[..12]);
    let cols = sh.columns.iter().map(|(n, _, _)| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    let (filter, params) = key_filter(keys).unwrap_or_else(|| ("1".into(), Vec::new()));
    let params: Vec<(&str, String)> = params.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let fresh = format!("(SELECT * FROM ({}) WHERE {} = {part} AND {filter})", sh.as_select, sh.partition_key);
    wh.execute(&format!("DROP TABLE IF EXISTS {staging}"), &[]).await?;
    wh.execute(&format!("CREATE TABLE {staging} AS {t}"), &[]).await?;
    let result = async {
        if filter != "1" {
            // The partition as it is (hard links, no copy), minus the groups the subject fed.
            wh.execute(&format!("ALTER TABLE {staging} ATTACH PARTITION ID '{part}' FROM {t}"), &[]).await?;
            // Rewritten without them (a mutation, not a mask: the superseded states hold the subject's hash).
            wh.execute(&format!("ALTER TABLE {staging} DELETE WHERE {filter} SETTINGS mutations_sync = 2"), &params).await?;
            let left = num(&wh.query(&format!("SELECT count() AS n FROM {staging} WHERE {filter}"), &params).await?[0]["n"]);
            if left != 0 {
                return Err(DsrError::Verification(format!("{t} partition {part}: {left} old states of the subject's groups survived the rewrite")));
            }
        }
        wh.execute(&format!("INSERT INTO {staging} ({cols}) SELECT {cols} FROM {fresh}"), &params).await?;
        let staged = num(&wh.query(&format!("SELECT count() AS n FROM {staging}"), &[]).await?[0]["n"]);
        if staged == 0 {
            wh.execute(&format!("ALTER TABLE {t} DROP PARTITION ID '{part}'"), &[]).await?;
        } else {
            wh.execute(&format!("ALTER TABLE {t} REPLACE PARTITION ID '{part}' FROM {staging}"), &[]).await?;
        }
        let live = format!("(SELECT * FROM {t} WHERE _partition_id = '{part}' AND {filter})");
        let made = format!("(SELECT * FROM {staging} WHERE {filter})");
        if fingerprint(wh, sh, &live, &params).await? != fingerprint(wh, sh, &made, &params).await? {
            return Err(DsrError::Verification(format!("{t} partition {part}: the live aggregate differs from its fresh computation")));
        }
        Ok(())
    }
    .await;
    wh.execute(&format!("DROP TABLE IF EXISTS {staging}"), &[]).await?;
    result
}

/// Order-independent digest of an aggregate table's content: states merged
/// per sorting key, then hashed. Equal content gives equal digests however
/// the rows are split into parts.
async fn fingerprint(wh: &Warehouse, sh: &Shape, source: &str, params: &[(&str, String)]) -> Result<(u64, String), DsrError> {
    let keys: Vec<String> = sh.columns.iter().filter(|c| c.2).map(|c| format!("`{}`", c.0)).collect();
    let vals: Vec<String> = sh.columns.iter().filter(|c| !c.2).map(|(n, ty, _)| merge_expr(n, ty)).collect();
    let sql = format!(
        "SELECT count() AS groups, toString(sum(cityHash64(*))) AS h FROM (SELECT {} FROM {source} GROUP BY {})",
        keys.iter().chain(&vals).cloned().collect::<Vec<_>>().join(", "),
        keys.join(", ")
    );
    let r = wh.query(&sql, params).await?;
    let r = r.first().cloned().unwrap_or_default();
    Ok((num(&r["groups"]), r["h"].as_str().unwrap_or_default().to_owned()))
}

/// `AggregateFunction(uniq, UUID)` -> `uniqMerge(c)`; `AggregateFunction(quantile(0.5), F)`
/// -> `quantileMerge(0.5)(c)`; `SimpleAggregateFunction(sum, T)` -> `sum(c)`; else `any(c)`.
fn merge_expr(col: &str, ty: &str) -> String {
    let first_arg = |prefix: &str| ty.strip_prefix(prefix).map(|rest| rest.split(',').next().unwrap_or("").trim().to_owned());
    if let Some(f) = first_arg("AggregateFunction(") {
        return match f.split_once('(') {
            Some((name, params)) => format!("{name}Merge({params}(`{col}`) AS `{col}`"),
            None => format!("{f}Merge(`{col}`) AS `{col}`"),
        };
    }
    if let Some(f) = first_arg("SimpleAggregateFunction(") {
        return format!("{f}(`{col}`) AS `{col}`");
    }
    format!("any(`{col}`) AS `{col}`")
}

/// Dead-letter records keyed by each subject, per topic, read in one pass per topic.
type KeyedCounts = std::collections::HashMap<String, std::collections::HashMap<String, u64>>;

async fn dead_letters_keyed(d: &Dsr, subjects: &[Uuid]) -> Result<KeyedCounts, DsrError> {
    let keys: std::collections::HashSet<String> = subjects.iter().map(Uuid::to_string).collect();
    let mut out = KeyedCounts::new();
    for s in d.map.stores.iter().filter(|s| s.category == "dead_letters") {
        if let Some(t) = d.topic_of(s) {
            let (brokers, topic, keys) = (d.kafka_brokers.clone(), t.name.clone(), keys.clone());
            let counts = tokio::task::spawn_blocking(move || super::kafka::count_keyed(&brokers, &topic, &keys))
                .await
                .map_err(|e| DsrError::Verification(format!("dead-letter scan: {e}")))??;
            out.insert(t.name.clone(), counts);
        }
    }
    Ok(out)
}

async fn certificate_body(d: &Dsr, job: &Job, subject: Uuid) -> Result<Value, DsrError> {
    certificate_body_with(d, job, subject, None).await
}

async fn certificate_body_with(d: &Dsr, job: &Job, subject: Uuid, keyed: Option<&KeyedCounts>) -> Result<Value, DsrError> {
    let sl = slot_of(job, subject);
    let before = sl["before"].as_object().cloned().unwrap_or_default();
    let after = sl["after"].as_object().cloned().unwrap_or_default();
    let mut stores = Vec::new();
    for s in &d.map.stores {
        let key = format!("{}:{}", store_kind(s), s.name);
        let method = serde_json::to_value(s.erasure).unwrap_or(Value::Null);
        match (before.get(&key), after.get(&key)) {
            (Some(b), Some(a)) => stores.push(json!({"store": key, "method": method, "rows_before": b, "rows_after": a, "reason": s.reason})),
            _ if s.erasure == Erasure::RecomputeAggregate => stores.push(json!({
                "store": key, "method": method, "reason": s.reason,
                "partitions_recomputed": job.progress["partitions"], "verified_equal_to_fresh_computation": true
            })),
            _ => {}
        }
    }
    let tombstoned_at = sl["tombstoned_at"].as_str().unwrap_or_default().to_owned();
    let tombstoned: Option<chrono::DateTime<Utc>> = chrono::DateTime::parse_from_rfc3339(&tombstoned_at).ok().map(|t| t.with_timezone(&Utc));
    let mut residual = Vec::new();
    for s in d.map.stores.iter().filter(|s| matches!(s.erasure, Erasure::Keep | Erasure::Expire) && s.subject_key.is_some()) {
        if after.get(&format!("{}:{}", store_kind(s), s.name)).is_some_and(|n| num(n) == 0) {
            continue;
        }
        let mut r = json!({"store": format!("{}:{}", store_kind(s), s.name), "method": s.erasure, "retention": s.retention, "reason": s.reason});
        if let Some(t) = d.topic_of(s) {
            // Kafka cannot delete a record: what was produced before the tombstone ages out with
            // the topic's retention (whole segments, rolled at least daily). Since the tombstone the
            // gateway and the lander refuse the subject, and refused events are dead-lettered unkeyed.
            r["topic"] = json!(t.name);
            if let (Some(ms), Some(at)) = (t.retention_ms, tombstoned) {
                let segment = ms.min(86_400_000);
                r["until"] = json!((at + chrono::Duration::milliseconds(ms + segment)).to_rfc3339());
            }
            if let Some(counts) = keyed.filter(|_| s.category == "dead_letters").and_then(|k| k.get(&t.name)) {
                r["records_keyed_by_subject"] = json!(counts.get(&subject.to_string()).copied().unwrap_or(0));
            } else if s.category == "dead_letters" {
                let (brokers, topic, key) = (d.kafka_brokers.clone(), t.name.clone(), subject.to_string());
                let n = tokio::task::spawn_blocking(move || super::kafka::scan_keyed(&brokers, &topic, &key, |_| Ok(())))
                    .await
                    .map_err(|e| DsrError::Verification(format!("dead-letter scan: {e}")))??;
                r["records_keyed_by_subject"] = json!(n);
            }
        }
        residual.push(r);
    }
    Ok(json!({
        "type": "learnvault.erasure-certificate/v1",
        "job_id": job.id,
        "subject": {"pseudonym": subject, "institution": job.institution},
        "requested_by": job.requested_by,
        "reference": job.reference,
        "requested_at": job.requested_at,
        "tombstoned_at": tombstoned_at,
        "shredded_at": sl["shredded_at"],
        "issued_at": Utc::now(),
        "stores": stores,
        "vault": {"identity_crypto_shredded": after.get("postgres:learners").is_some_and(|n| num(n) == 0), "tombstone_kept": true,
                  "collection_suppressed": d.erasure_policy.suppression.enabled},
        "residual_copies": residual,
        "access_archives": sl["access_archives"],
        "engines": {"warehouse": d.warehouse.version().await?, "learnvault": env!("CARGO_PKG_VERSION")},
    }))
}

fn store_kind(s: &Store) -> &'static str {
    match s.store {
        StoreKind::Clickhouse => "clickhouse",
        StoreKind::Postgres => "postgres",
        StoreKind::Kafka => "kafka",
        StoreKind::Files => "files",
    }
}

#[cfg(test)]
mod tests {
    use super::{key_filter, merge_affected, merge_expr};
    use serde_json::json;

    #[test]
    fn key_filters_are_parameters_and_escape_quotes() {
        let keys = json!({"cols": [["course_id", "String"], ["event_date", "Date"]], "values": [["it's", "a\\b"], ["2026-11-01"]]});
        let (sql, params) = key_filter(Some(&keys)).unwrap();
        assert_eq!(sql, "`course_id` IN {k0:Array(String)} AND `event_date` IN {k1:Array(Date)}");
        assert_eq!(params[0].1, r"['it\'s','a\\b']");
        assert_eq!(params[1].1, "['2026-11-01']");
        assert!(key_filter(Some(&json!({"cols": [["x; DROP", "String"]], "values": [[]]}))).is_none());
        assert!(key_filter(None).is_none());
        let merged = merge_affected(Some(keys.clone()), json!({"cols": keys["cols"], "values": [["z"], ["2026-11-02"]]}));
        assert_eq!(merged["values"][0].as_array().unwrap().len(), 3);
        assert_eq!(merge_affected(Some(keys), json!(null)), json!(null));
    }

    #[test]
    fn merge_expressions_follow_the_column_type() {
        assert_eq!(merge_expr("l", "AggregateFunction(uniq, UUID)"), "uniqMerge(`l`) AS `l`");
        assert_eq!(merge_expr("q", "AggregateFunction(quantile(0.5), Float64)"), "quantileMerge(0.5)(`q`) AS `q`");
        assert_eq!(merge_expr("s", "SimpleAggregateFunction(sum, UInt64)"), "sum(`s`) AS `s`");
        assert_eq!(merge_expr("x", "UInt32"), "any(`x`) AS `x`");
    }
}
