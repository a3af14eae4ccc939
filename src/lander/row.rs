//! The base table's rows, written by hand in ClickHouse's binary row format, into buffers
//! reused from batch to batch.
//!
//! Invariant: a batch's rows are one [`BINARY_FORMAT`] stream: a header naming the base
//! table's columns the lander writes with their types as in the table, then one row per
//! event, each column as the format holds it (a landed row reads back as sent: tested in
//! `tests/lander.rs`). Row buffers are kept, not freed: on our VMs a page fault costs more
//! than the work done on the page.

use chrono::{DateTime, Utc};
use std::sync::{Arc, Mutex};

use crate::taxonomy::ValidEvent;

/// The format of the lander's inserts: rows in ClickHouse's binary row format, each column
/// named and typed in the header ([`write_binary_header`]), so the engine parses no text (the
/// same rows inserted 1.2-1.5 times as fast as JSONEachRow, and written without escaping or
/// formatting timestamps: BENCHMARKS.md, issues 13 and 11) and the columns omitted
/// (`event_date`) take their defaults.
pub(crate) const BINARY_FORMAT: &str = "RowBinaryWithNamesAndTypes";

/// The base table's columns the lander writes, with their types as in the table (migration
/// 0001): the header of a [`BINARY_FORMAT`] insert.
const BINARY_COLUMNS: [(&str, &str); 13] = [
    ("server_ts", "DateTime64(3, 'UTC')"),
    ("client_ts", "DateTime64(3, 'UTC')"),
    ("event_id", "UUID"),
    ("event_version", "LowCardinality(String)"),
    ("event_type", "LowCardinality(String)"),
    ("learner_id", "UUID"),
    ("session_id", "String"),
    ("course_id", "LowCardinality(String)"),
    ("content_id", "String"),
    ("cohort_id", "LowCardinality(String)"),
    ("institution_id", "LowCardinality(String)"),
    ("position_sec", "Nullable(UInt32)"),
    ("props", "Map(String, String)"),
];

/// The header of a [`BINARY_FORMAT`] insert: the column count, names, then types.
pub(crate) fn write_binary_header(rows: &mut Vec<u8>) {
    push_varint(rows, BINARY_COLUMNS.len() as u64);
    for (name, _) in BINARY_COLUMNS {
        push_bin_str(rows, name.as_bytes());
    }
    for (_, ty) in BINARY_COLUMNS {
        push_bin_str(rows, ty.as_bytes());
    }
}

/// Append `ev` as one [`BINARY_FORMAT`] row (after [`write_binary_header`]), stamped
/// `server`: the columns of [`BINARY_COLUMNS`] in order, without an allocation.
pub(crate) fn write_row_binary(rows: &mut Vec<u8>, ev: &ValidEvent, server: &DateTime<Utc>) {
    rows.extend_from_slice(&server.timestamp_millis().to_le_bytes());
    rows.extend_from_slice(&ev.client_ts.timestamp_millis().to_le_bytes());
    push_bin_uuid(rows, &ev.event_id);
    push_bin_str(rows, ev.event_version.as_bytes());
    push_bin_str(rows, ev.event_type.as_bytes());
    push_bin_uuid(rows, &ev.learner_id);
    for s in [&ev.session_id, &ev.course_id, &ev.content_id, &ev.cohort_id, &ev.institution_id] {
        push_bin_str(rows, s.as_bytes());
    }
    match ev.position_sec {
        Some(p) => {
            rows.push(0);
            rows.extend_from_slice(&p.to_le_bytes());
        }
        None => rows.push(1),
    }
    push_varint(rows, ev.props.len() as u64);
    for (k, v) in &ev.props {
        push_bin_str(rows, k.as_bytes());
        push_bin_str(rows, v.as_bytes());
    }
}

/// A UUID as ClickHouse's binary formats hold it: its two 64-bit halves, each little-endian.
fn push_bin_uuid(out: &mut Vec<u8>, id: &uuid::Uuid) {
    let (hi, lo) = id.as_u64_pair();
    out.extend_from_slice(&hi.to_le_bytes());
    out.extend_from_slice(&lo.to_le_bytes());
}

/// A string of a binary format: its length (LEB128), then its bytes.
fn push_bin_str(out: &mut Vec<u8>, s: &[u8]) {
    push_varint(out, s.len() as u64);
    out.extend_from_slice(s);
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Row buffers of landed batches, kept for the next ones: fresh memory costs a
/// page fault per 4 KiB, which on our VMs cost more than writing the rows.
#[derive(Clone, Default)]
pub(super) struct RowBuffers(Arc<Mutex<Vec<Vec<u8>>>>);

/// Row buffers kept for reuse (one per partition in flight, and one being filled).
const KEPT_BUFFERS: usize = 8;

impl RowBuffers {
    /// An empty row buffer, reused when one is free.
    pub(super) fn take(&self) -> Vec<u8> {
        self.0.lock().expect("buffers lock").pop().unwrap_or_default()
    }

    /// Give a landed batch's row buffer back for reuse.
    pub(super) fn recycle(&self, rows: Arc<Vec<u8>>) {
        if let Ok(mut rows) = Arc::try_unwrap(rows) {
            rows.clear();
            let mut kept = self.0.lock().expect("buffers lock");
            if kept.len() < KEPT_BUFFERS {
                kept.push(rows);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{write_binary_header, write_row_binary};
    use crate::taxonomy::ValidEvent;
    use chrono::{DateTime, Utc};

    #[test]
    fn a_binary_row_holds_each_column_in_order_as_the_format_reads_it() {
        let t = |ms| DateTime::<Utc>::from_timestamp_millis(ms).unwrap();
        let ev = ValidEvent {
            event_id: uuid::Uuid::parse_str("00112233-4455-6677-8899-aabbccddeeff").unwrap(),
            event_version: "2.3".into(),
            event_type: "interact.pause".into(),
            learner_id: uuid::Uuid::nil(),
            session_id: "é".into(),
            course_id: "c".into(),
            content_id: String::new(),
            cohort_id: "k".into(),
            institution_id: "u".into(),
            position_sec: Some(258),
            client_ts: t(1_764_072_000_123),
            server_ts: None,
            props: [("p".to_string(), "v".to_string())].into(),
        };
        let mut rows = Vec::new();
        write_row_binary(&mut rows, &ev, &t(1_764_072_001_007));
        let mut want = Vec::new();
        want.extend_from_slice(&1_764_072_001_007i64.to_le_bytes());
        want.extend_from_slice(&1_764_072_000_123i64.to_le_bytes());
        want.extend_from_slice(&[0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x00, 0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88]);
        want.extend_from_slice(b"\x032.3\x0einteract.pause");
        want.extend_from_slice(&[0; 16]);
        want.extend_from_slice(b"\x02\xc3\xa9\x01c\x00\x01k\x01u");
        want.extend_from_slice(&[0, 2, 1, 0, 0]);
        want.extend_from_slice(b"\x01\x01p\x01v");
        assert_eq!(rows, want);
        let mut none = ev.clone();
        none.position_sec = None;
        none.props.clear();
        let mut rows = Vec::new();
        write_row_binary(&mut rows, &none, &t(0));
        assert_eq!(&rows[rows.len() - 2..], &[1, 0], "a null position is its flag alone, an empty map its zero count");
        let mut header = Vec::new();
        write_binary_header(&mut header);
        assert_eq!(header[0], 13, "13 columns");
        assert!(header.windows(21).any(|w| w == b"\x14DateTime64(3, 'UTC')"));
        let mut long = Vec::new();
        super::push_varint(&mut long, 300);
        assert_eq!(long, [0xac, 0x02], "lengths are LEB128");
    }
}

#[cfg(test)]
mod cost {
    //! `cargo test --release --lib -- --ignored --nocapture decode_cost`: where a lander batch's CPU goes.
    use super::*;
    use crate::governance::check_props_and_clock;
    use crate::policy::ProtectedAttributes;
    use crate::taxonomy::Taxonomy;
    use serde_json::Value;
    use std::time::{Duration, Instant};

    #[test]
    #[ignore = "a measurement that prints the decode cost, not a check: cargo test --release decode_cost -- --ignored --nocapture"]
    fn decode_cost() {
        let root = crate::policy::shipped_dir();
        let taxonomy = Taxonomy::load(&root.join("taxonomy")).unwrap();
        let protected = ProtectedAttributes::load(&root).unwrap();
        let events: Vec<Vec<u8>> = (0..200_000)
            .map(|i| {
                serde_json::to_vec(&serde_json::json!({
                    "event_id": uuid::Uuid::new_v4(), "event_version": "2.3", "event_type": "session.heartbeat",
                    "learner_id": uuid::Uuid::new_v4(), "session_id": format!("s{}", i % 97), "course_id": format!("course-{}", i % 20),
                    "content_id": format!("video-{}", i % 50), "cohort_id": "cohort-3", "institution_id": "bench-uni",
                    "position_sec": i % 600, "client_ts": 1_764_072_000_000i64 + i, "server_ts": "2026-11-25T13:55:03.123Z", "props": {"player": "web"}
                }))
                .unwrap()
            })
            .collect();
        let t = Instant::now();
        let values: Vec<Value> = events.iter().map(|e| serde_json::from_slice(e).unwrap()).collect();
        let parse = t.elapsed();
        let t = Instant::now();
        let mut valid: Vec<ValidEvent> = values.iter().map(|v| taxonomy.validate(v).unwrap()).collect();
        let validate = t.elapsed();
        let t = Instant::now();
        for ev in valid.iter_mut() {
            check_props_and_clock(ev, &protected, Duration::from_secs(300), &Default::default()).unwrap();
        }
        let checks = t.elapsed();
        let t = Instant::now();
        let mut rows = Vec::with_capacity(events.len() * 300);
        for ev in &valid {
            write_row_binary(&mut rows, ev, &ev.server_ts.unwrap());
        }
        let serialise_cold = t.elapsed();
        // Again into the same, already touched buffer: the writer alone, without page faults.
        rows.clear();
        let t = Instant::now();
        for ev in &valid {
            write_row_binary(&mut rows, ev, &ev.server_ts.unwrap());
        }
        let serialise = t.elapsed();
        let t = Instant::now();
        drop(values);
        drop(valid);
        let drop_t = t.elapsed();
        let t = Instant::now();
        let fast: Vec<ValidEvent> = events.iter().map(|e| taxonomy.validate_bytes(e).unwrap()).collect();
        let fast_t = t.elapsed();
        drop(fast);
        let per = |d: Duration| d.as_nanos() as f64 / events.len() as f64;
        println!("per event: validate_bytes (fast path, incl. parse) {:.0} ns", per(fast_t));
        println!(
            "per event: parse {:.0} ns, validate {:.0} ns, checks {:.0} ns, serialise {:.0} ns ({:.0} ns into a fresh buffer), drop {:.0} ns",
            per(parse),
            per(validate),
            per(checks),
            per(serialise),
            per(serialise_cold),
            per(drop_t)
        );
    }
}
