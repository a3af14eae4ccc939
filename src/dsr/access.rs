//! Subject access (GDPR Art. 15, FERPA inspection): one archive per request.
//!
//! `{archive_dir}/{job}.tar` holds `manifest.json` (the subject, every mapped
//! store queried with its category, retention and row count, the SHA-256 and
//! size of every file, engine versions, generated time), `identity.json` (the
//! identity decrypted for the subject), and per store `*.jsonl` and `*.csv`
//! (consent history, every event row, every learner-level rollup and feature
//! row, the audit entries about the subject, their requests).
//!
//! Memory stays bounded: ClickHouse rows are read a page at a time (keyset
//! pages of a snapshot at the job's start, [`super::snapshot`]) and PostgreSQL
//! rows as a stream, each written out before the next is read.
//! The step is idempotent: a resumed job starts the export over.
//!
//! At rest everything is sealed ([`super::seal`]: AES-256-GCM chunks under a key
//! derived for this job's archive): the staging files (directory 0700, files
//! 0600) and the archive itself (`{job}.tar.sealed`, 0600). The SHA-256 in the
//! result and the manifest are of the plaintext, as the DPO downloads it.

use chrono::Utc;
use futures::TryStreamExt;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use uuid::Uuid;

use super::seal::{create_private, create_private_dir, SealReader, SealWriter};
use super::snapshot::{self, Bound, Plan};
use super::{ident, Dsr, DsrError, Job, Progress};
use crate::datamap::StoreKind;
use crate::domain::Pseudonym;
use crate::vault::Subject;

pub async fn run(d: &Dsr, job: &mut Job, progress: Progress<'_>) -> Result<(), DsrError> {
    let p = job.pseudonym;
    let dir = d.archive_dir.join(job.id.to_string());
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    create_private_dir(&dir)?;
    let key = d.archive_keys.for_job(job.id);
    let seal = Sealing { key: &key, job: job.id };
    let staging = Staging { d, dir: &dir, seal, progress };
    let mut stores = Vec::new();
    let mut files = Vec::new();

    // The identity, decrypted for its subject (the one place an identity leaves the vault besides re-identification).
    progress("identity");
    let identity = match d.vault.subject(Pseudonym::from_uuid(p)).await? {
        Subject::Active { institution } => {
            let plain = d.vault.decrypt_identity(Pseudonym::from_uuid(p)).await?;
            let identity: Value = plain.as_ref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
            json!({"pseudonym": p, "institution": institution, "status": "active", "identity": identity})
        }
        Subject::Erased { institution, erased_at } => {
            json!({"pseudonym": p, "institution": institution, "status": "erased", "erased_at": erased_at, "identity": null})
        }
        Subject::Unknown => json!({"pseudonym": p, "status": "unknown", "identity": null}),
    };
    let mut out = Out::create(&dir, "identity.json", seal)?;
    out.write_all(&serde_json::to_vec_pretty(&identity).expect("JSON"))?;
    files.push(out.finish()?);

    for (s, key) in d.subject_stores(StoreKind::Clickhouse) {
        let name = format!("clickhouse/{}", s.name);
        let rows = export_clickhouse(staging, &name, &s.name, key, &*job, &mut files).await?;
        stores.push(json!({"store": format!("clickhouse:{}", s.name), "category": s.category, "retention": s.retention, "rows": rows}));
        d.save(job, "export").await?;
    }
    for (s, key) in d.subject_stores(StoreKind::Postgres) {
        if s.category == "identity" {
            // Ciphertext and blind index are not the subject's data in any useful form: identity.json is.
            stores.push(json!({"store": format!("postgres:{}", s.name), "category": s.category, "retention": s.retention,
                               "rows": if identity["status"] == "active" { 1 } else { 0 }, "exported_as": "identity.json"}));
            continue;
        }
        let name = format!("postgres/{}", s.name);
        let rows = export_postgres(staging, &name, &s.name, key, p, &mut files).await?;
        stores.push(json!({"store": format!("postgres:{}", s.name), "category": s.category, "retention": s.retention, "rows": rows}));
    }
    // Dead letters keyed by the subject's pseudonym (within the topic's retention).
    let mut not_included: Vec<Value> = Vec::new();
    for s in d.map.stores.iter().filter(|s| s.store == StoreKind::Kafka) {
        let topic = d.topic_of(s).map(|t| t.name.clone());
        match (s.category.as_str(), topic) {
            ("dead_letters", Some(topic)) => {
                progress("dead letters");
                let brokers = d.kafka_brokers.clone();
                let key = p.to_string();
                let t = topic.clone();
                let records = tokio::task::spawn_blocking(move || {
                    let mut out: Vec<Vec<u8>> = Vec::new();
                    super::kafka::scan_keyed(&brokers, &t, &key, |v| {
                        out.push(v.to_vec());
                        Ok(())
                    })
                    .map(|_| out)
                })
                .await
                .map_err(|e| DsrError::Verification(format!("dead-letter scan: {e}")))??;
                let mut out = StoreFiles::create(&dir, &format!("kafka/{}", s.name), seal)?;
                for r in &records {
                    let v: Value = serde_json::from_slice(r).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(r).into_owned()));
                    let m = match &v {
                        Value::Object(m) => m.clone(),
                        other => [("record".to_owned(), other.clone())].into_iter().collect(),
                    };
                    out.row(&serde_json::to_vec(&v).expect("JSON"), &m)?;
                }
                out.finish(&mut files)?;
                stores.push(json!({"store": format!("kafka:{}", s.name), "topic": topic, "category": s.category, "retention": s.retention,
                                   "rows": records.len(), "selection": "records keyed by the subject's pseudonym, from the start of the topic's retention"}));
            }
            _ => not_included.push(json!({"store": format!("kafka:{}", s.name), "category": s.category, "retention": s.retention,
                         "reason": "a transport buffer: its events are in the tables above once landed, and age out with the topic's retention"})),
        }
    }

    let manifest = json!({
        "type": "learnvault.subject-access/v1",
        "job_id": job.id,
        "subject": {"pseudonym": p, "institution": job.institution},
        "requested_by": job.requested_by,
        "reference": job.reference,
        "requested_at": job.requested_at,
        "generated_at": Utc::now(),
        "engines": {
            "warehouse": d.warehouse.version().await?,
            "postgresql": sqlx::query_scalar::<_, String>("SELECT version()").fetch_one(&d.pool).await?,
            "learnvault": env!("CARGO_PKG_VERSION"),
        },
        "stores": stores,
        "not_included": not_included,
        "files": files,
    });
    let mut out = Out::create(&dir, "manifest.json", seal)?;
    out.write_all(&serde_json::to_vec_pretty(&manifest).expect("JSON"))?;
    let manifest_file = out.finish()?;

    progress("archive");
    let t = std::time::Instant::now();
    let tar_path = archive_path(&d.archive_dir, job.id);
    let tmp = d.archive_dir.join(format!("{}.tar.partial", job.id));
    let (bytes, sha) = {
        // The staging files are opened one at a time and streamed, plaintext only in memory.
        let sink = Hashing::new(SealWriter::new(BufWriter::new(create_private(&tmp)?), &key, job.id)?);
        let mut b = tar::Builder::new(sink);
        for f in std::iter::once(&manifest_file).chain(&files) {
            let rel = f["path"].as_str().expect("path");
            let mut h = tar::Header::new_gnu();
            h.set_size(f["bytes"].as_u64().expect("bytes"));
            h.set_mode(0o600);
            h.set_mtime(0);
            b.append_data(&mut h, rel, SealReader::new(File::open(dir.join(rel))?, &key, job.id)?)?;
        }
        let (sealed, bytes, sha) = b.into_inner()?.finish();
        sealed.finish()?;
        (bytes, sha)
    };
    tracing::debug!(bytes, ms = t.elapsed().as_millis() as u64, "subject access: archive sealed");
    std::fs::rename(&tmp, &tar_path)?;
    std::fs::remove_dir_all(&dir)?;
    let result = json!({"archive": tar_path, "sealed": true, "bytes": bytes, "sha256": sha, "stores": manifest["stores"]});
    let detail = json!({"job": job.id, "archive_sha256": sha, "stores": manifest["stores"].as_array().map(Vec::len)});
    d.finish(job, result, detail).await
}

/// Where a job's sealed archive lives.
pub fn archive_path(archive_dir: &Path, job: Uuid) -> PathBuf {
    archive_dir.join(format!("{job}.tar.sealed"))
}

/// Open a job's sealed archive for reading its plaintext (the download).
pub fn open_archive(path: &Path, keys: &super::seal::ArchiveKeys, job: Uuid) -> std::io::Result<SealReader<std::io::BufReader<File>>> {
    SealReader::new(std::io::BufReader::new(File::open(path)?), &keys.for_job(job), job)
}

/// Every file (staging or archive) of the access jobs `jobs`: deleted by erasure. Returns how many existed.
pub fn delete_archives(archive_dir: &Path, jobs: &[Uuid]) -> std::io::Result<u64> {
    let mut n = 0;
    for job in jobs {
        for f in [archive_path(archive_dir, *job), archive_dir.join(format!("{job}.tar.partial")), archive_dir.join(format!("{job}.tar"))] {
            match std::fs::remove_file(&f) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let staging = archive_dir.join(job.to_string());
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
            n += 1;
        }
    }
    Ok(n)
}

/// A stream on its way into a sealed file (the archive's tar, a staging file), its
/// plaintext hashed and counted as it goes.
struct Hashing<W: Write> {
    inner: W,
    sha: Sha256,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing { inner, sha: Sha256::new(), bytes: 0 }
    }

    /// The inner writer (to finish), the bytes written and their SHA-256 (hex).
    fn finish(self) -> (W, u64, String) {
        (self.inner, self.bytes, hex::encode(self.sha.finalize()))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The job's archive key, for its staging files.
#[derive(Clone, Copy)]
struct Sealing<'a> {
    key: &'a [u8; 32],
    job: Uuid,
}

/// What every store's export works with: the engines, the job's staging directory and
/// key, and its progress line.
#[derive(Clone, Copy)]
struct Staging<'a> {
    d: &'a Dsr,
    dir: &'a Path,
    seal: Sealing<'a>,
    progress: Progress<'a>,
}

/// The subject's rows of one ClickHouse table, as a snapshot at the job's start
/// (see [`super::snapshot`]): keyset pages of `d.export_page_rows`.
async fn export_clickhouse(st: Staging<'_>, name: &str, table: &str, key: &str, job: &Job, files: &mut Vec<Value>) -> Result<u64, DsrError> {
    let Staging { d, dir, seal, progress } = st;
    let plan = Plan::new(&d.warehouse, table, key).await?;
    let mut out = StoreFiles::create(dir, name, seal)?;
    let (p, started, page) = (job.pseudonym, job.requested_at, d.export_page_rows);
    let mut rows = 0u64;
    let (mut read, mut written, mut pages) = (std::time::Duration::ZERO, std::time::Duration::ZERO, 0u32);
    if !plan.by_key() {
        rows += export_group(d, &plan, &mut out, p, started, &[], &mut pages).await?;
    }
    let mut bound = Bound::Start;
    while plan.by_key() {
        let (sql, params) = plan.page_query(p, started, page, &bound);
        let params: Vec<(&str, String)> = params.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let t = std::time::Instant::now();
        let text = d.warehouse.raw(&sql, "JSONEachRow", &params).await?;
        read += t.elapsed();
        pages += 1;
        let t = std::time::Instant::now();
        let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        // A page shorter than asked is the last one: all of it. Otherwise the rows
        // of its last key may go on in the next page: they are written from there.
        let last = match lines.last() {
            Some(l) if lines.len() as u64 >= page => Some(Plan::raw_row(l)?),
            _ => None,
        };
        let last_key = last.as_ref().map(|r| plan.raw_key_of(r));
        let mut n = 0u64;
        for line in &lines {
            let v = Plan::raw_row(line)?;
            if last_key.as_ref().is_some_and(|k| *k == plan.raw_key_of(&v)) {
                break;
            }
            out.raw_row(line, &v)?;
            n += 1;
        }
        let last = last.map(|r| plan.key_values(&r)).transpose()?;
        rows += n;
        written += t.elapsed();
        progress(&format!("{table}: {rows} rows"));
        bound = match last {
            None => break,
            // One key's rows filled the page: that key alone, by hash, then after it.
            Some(k) if n == 0 => {
                rows += export_group(d, &plan, &mut out, p, started, &k, &mut pages).await?;
                Bound::After(k)
            }
            Some(k) => Bound::From(k),
        };
    }
    out.finish(files)?;
    tracing::debug!(table, rows, pages, read_ms = read.as_millis() as u64, written_ms = written.as_millis() as u64, "subject access: a table exported");
    Ok(rows)
}

/// One key group's rows (or a table's, with no usable sorting key), paged by the row's hash.
async fn export_group(
    d: &Dsr,
    plan: &Plan,
    out: &mut StoreFiles,
    p: Uuid,
    started: chrono::DateTime<Utc>,
    key: &[Value],
    pages: &mut u32,
) -> Result<u64, DsrError> {
    let mut rows = 0u64;
    let mut cursor = None;
    loop {
        let (sql, params) = plan.group_query(p, started, d.export_page_rows, key, cursor.as_ref());
        let params: Vec<(&str, String)> = params.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let page = d.warehouse.raw(&sql, "JSONEachRow", &params).await?;
        *pages += 1;
        // Rows equal to the last boundary come first again: skip those already written.
        let skip0 = cursor.as_ref().map_or(0, snapshot::Cursor::seen_rows);
        let mut skip = skip0;
        let mut received = 0u64;
        for line in page.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            received += 1;
            if let Some((line, v)) = plan.step(line, &mut cursor, &mut skip)? {
                out.row(&line, &v)?;
                rows += 1;
            }
        }
        // A page shorter than asked is the last one.
        if received < d.export_page_rows + skip0 {
            return Ok(rows);
        }
    }
}

async fn export_postgres(st: Staging<'_>, name: &str, table: &str, key: &str, p: Uuid, files: &mut Vec<Value>) -> Result<u64, DsrError> {
    let Staging { d, dir, seal, progress } = st;
    let mut out = StoreFiles::create(dir, name, seal)?;
    let sql = format!("SELECT to_jsonb(t) FROM {} t WHERE {} = $1", ident(table)?, ident(key)?);
    let mut stream = sqlx::query_scalar::<_, Value>(&sql).bind(p).fetch(&d.pool);
    let mut rows = 0u64;
    while let Some(v) = stream.try_next().await? {
        if let Value::Object(m) = &v {
            out.row(&serde_json::to_vec(&v).expect("JSON"), m)?;
        }
        rows += 1;
    }
    progress(&format!("{table}: {rows} rows"));
    out.finish(files)?;
    Ok(rows)
}

/// A store's two files: JSONL (rows as the engine gave them) and CSV.
struct StoreFiles {
    jsonl: Out,
    csv: CsvOut,
}

impl StoreFiles {
    fn create(dir: &Path, name: &str, seal: Sealing<'_>) -> Result<StoreFiles, DsrError> {
        Ok(StoreFiles {
            jsonl: Out::create(dir, &format!("{name}.jsonl"), seal)?,
            csv: CsvOut::new(Out::create(dir, &format!("{name}.csv"), seal)?),
        })
    }

    fn row(&mut self, line: &[u8], v: &Map<String, Value>) -> Result<(), DsrError> {
        self.jsonl.write_all(line)?;
        self.jsonl.write_all(b"\n")?;
        self.csv.row(v)
    }

    /// The same for a row borrowed from its line (the CSV cells written from the JSON text).
    fn raw_row(&mut self, line: &[u8], v: &snapshot::RawRow<'_>) -> Result<(), DsrError> {
        self.jsonl.write_all(line)?;
        self.jsonl.write_all(b"\n")?;
        self.csv.raw_row(v)
    }

    fn finish(self, files: &mut Vec<Value>) -> Result<(), DsrError> {
        files.push(self.jsonl.finish()?);
        files.push(self.csv.finish()?);
        Ok(())
    }
}

/// A staging file being written (sealed), its plaintext hashed as it goes.
struct Out {
    rel: String,
    file: Hashing<SealWriter<BufWriter<File>>>,
}

impl Out {
    fn create(dir: &Path, rel: &str, seal: Sealing<'_>) -> Result<Out, DsrError> {
        let path: PathBuf = dir.join(rel);
        if let Some(parent) = path.parent() {
            create_private_dir(parent)?;
        }
        let file = SealWriter::new(BufWriter::new(create_private(&path)?), seal.key, seal.job)?;
        Ok(Out { rel: rel.to_owned(), file: Hashing::new(file) })
    }

    fn finish(self) -> Result<Value, DsrError> {
        let (sealed, bytes, sha256) = self.file.finish();
        sealed.finish()?;
        Ok(json!({"path": self.rel, "sha256": sha256, "bytes": bytes}))
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// RFC 4180 CSV from JSON objects; the header is the first row's keys.
struct CsvOut {
    out: Out,
    header: Option<Vec<String>>,
    buf: Vec<u8>,
}

impl CsvOut {
    fn new(out: Out) -> Self {
        CsvOut { out, header: None, buf: Vec::new() }
    }

    fn row(&mut self, v: &Map<String, Value>) -> Result<(), DsrError> {
        if self.header.is_none() {
            let h: Vec<String> = v.keys().cloned().collect();
            let line = h.iter().map(|k| quote(k)).collect::<Vec<_>>().join(",");
            write!(self.out, "{line}\r\n")?;
            self.header = Some(h);
        }
        let h = self.header.as_ref().expect("set above");
        let line = h.iter().map(|k| value_cell(v.get(k))).collect::<Vec<_>>().join(",");
        write!(self.out, "{line}\r\n")?;
        Ok(())
    }

    /// [`CsvOut::row`] from a row's JSON text: the same cells (strings unquoted, null empty,
    /// anything else as its JSON), without building the row's values.
    fn raw_row(&mut self, v: &snapshot::RawRow<'_>) -> Result<(), DsrError> {
        if self.header.is_none() {
            let h: Vec<String> = v.0.keys().map(|k| k.to_string()).collect();
            let line = h.iter().map(|k| quote(k)).collect::<Vec<_>>().join(",");
            write!(self.out, "{line}\r\n")?;
            self.header = Some(h);
        }
        let h = self.header.as_ref().expect("set above");
        self.buf.clear();
        for (i, k) in h.iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            if let Some(raw) = v.0.get(k.as_str()) {
                raw_cell(raw.get(), &mut self.buf)?;
            }
        }
        self.buf.extend_from_slice(b"\r\n");
        self.out.write_all(&self.buf)?;
        Ok(())
    }

    fn finish(self) -> Result<Value, DsrError> {
        self.out.finish()
    }
}

/// A CSV cell: nothing for null, a string's text, anything else as its JSON.
fn value_cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => quote(s),
        Some(other) => quote(&other.to_string()),
    }
}

/// [`value_cell`] from the value's JSON text, appended to `buf`.
fn raw_cell(raw: &str, buf: &mut Vec<u8>) -> Result<(), DsrError> {
    match raw.as_bytes().first() {
        Some(b'n') if raw == "null" => {}
        // A JSON string without escapes is its text between the quotes.
        Some(b'"') if !raw.contains('\\') => buf.extend_from_slice(quote(&raw[1..raw.len() - 1]).as_bytes()),
        Some(b'"') => {
            let s: String = serde_json::from_str(raw).map_err(|e| DsrError::Verification(format!("unreadable value: {e}")))?;
            buf.extend_from_slice(quote(&s).as_bytes());
        }
        _ => buf.extend_from_slice(quote(raw).as_bytes()),
    }
    Ok(())
}

fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::{quote, raw_cell, value_cell};
    use serde_json::json;

    #[test]
    fn a_cell_from_json_text_equals_the_cell_from_the_value() {
        for v in [
            json!(null),
            json!("plain"),
            json!("a,b"),
            json!("say \"hi\"\nnow"),
            json!("tab\tand \\ back"),
            json!("ünïcode €"),
            json!(""),
            json!(42),
            json!(-1.5),
            json!(true),
            json!({"k": "v, w"}),
            json!(["x", 1]),
        ] {
            let mut buf = Vec::new();
            raw_cell(&serde_json::to_string(&v).unwrap(), &mut buf).unwrap();
            assert_eq!(String::from_utf8(buf).unwrap(), value_cell(Some(&v)), "{v}");
        }
        assert!(raw_cell("\"unterminated \\", &mut Vec::new()).is_err());
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        assert_eq!(quote("plain"), "plain");
        assert_eq!(quote("a,b"), "\"a,b\"");
        assert_eq!(quote("say \"hi\"\n"), "\"say \"\"hi\"\"\n\"");
    }
}
