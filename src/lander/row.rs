//! The base table's rows: JSONEachRow written by hand, into buffers reused
//! from batch to batch.
//!
//! Invariant: a row is the JSON object of its event's base-table columns, one
//! line each, strings escaped as serde_json escapes them and timestamps as
//! ClickHouse's DateTime64(3) reads them. Row buffers are kept, not freed: on
//! our VMs a page fault costs more than the work done on the page.

use chrono::{DateTime, Utc};
use std::sync::{Arc, Mutex};

use crate::taxonomy::ValidEvent;

/// Append `ev` as one JSONEachRow line of the base table, stamped `server`.
/// Written by hand, without serde or an allocation: it runs once per landed
/// event (2.5 us per event through serde_json and chrono's formatter, measured
/// by `decode_cost`). Strings are escaped as serde_json escapes them.
pub(super) fn write_row(rows: &mut Vec<u8>, ev: &ValidEvent, server: &DateTime<Utc>) {
    let mut uuid = [0u8; 36];
    rows.extend_from_slice(b"{\"server_ts\":\"");
    push_ts(rows, server);
    rows.extend_from_slice(b"\",\"client_ts\":\"");
    push_ts(rows, &ev.client_ts);
    rows.extend_from_slice(b"\",\"event_id\":\"");
    rows.extend_from_slice(ev.event_id.hyphenated().encode_lower(&mut uuid).as_bytes());
    rows.extend_from_slice(b"\",\"learner_id\":\"");
    rows.extend_from_slice(ev.learner_id.hyphenated().encode_lower(&mut uuid).as_bytes());
    rows.push(b'"');
    for (key, value) in [
        (&b",\"event_version\":"[..], &ev.event_version),
        (b",\"event_type\":", &ev.event_type),
        (b",\"session_id\":", &ev.session_id),
        (b",\"course_id\":", &ev.course_id),
        (b",\"content_id\":", &ev.content_id),
        (b",\"cohort_id\":", &ev.cohort_id),
        (b",\"institution_id\":", &ev.institution_id),
    ] {
        rows.extend_from_slice(key);
        push_str(rows, value);
    }
    rows.extend_from_slice(b",\"position_sec\":");
    match ev.position_sec {
        Some(p) => rows.extend_from_slice(itoa::Buffer::new().format(p).as_bytes()),
        None => rows.extend_from_slice(b"null"),
    }
    rows.extend_from_slice(b",\"props\":{");
    for (i, (k, v)) in ev.props.iter().enumerate() {
        if i > 0 {
            rows.push(b',');
        }
        push_str(rows, k);
        rows.push(b':');
        push_str(rows, v);
    }
    rows.extend_from_slice(b"}}\n");
}

/// The format of the lander's inserts: rows in ClickHouse's binary row format, each column
/// named and typed in the header ([`write_binary_header`]), so the engine parses no text
/// (JSONEachRow cost it more than the rest of the insert, BENCHMARKS.md) and the columns
/// omitted (`event_date`) take their defaults, as with JSONEachRow.
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

/// `s` as a JSON string.
fn push_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a string serialises");
    }
}

/// `YYYY-MM-DD hh:mm:ss.mmm`, as ClickHouse's DateTime64(3) reads it.
fn push_ts(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    use chrono::{Datelike, Timelike};
    fn digits(out: &mut Vec<u8>, v: u32, width: u32) {
        for i in (0..width).rev() {
            out.push(b'0' + (v / 10u32.pow(i) % 10) as u8);
        }
    }
    digits(out, t.year().clamp(0, 9999) as u32, 4);
    out.push(b'-');
    digits(out, t.month(), 2);
    out.push(b'-');
    digits(out, t.day(), 2);
    out.push(b' ');
    digits(out, t.hour(), 2);
    out.push(b':');
    digits(out, t.minute(), 2);
    out.push(b':');
    digits(out, t.second(), 2);
    out.push(b'.');
    digits(out, t.timestamp_subsec_millis().min(999), 3);
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
    use super::{push_ts, write_row};
    use crate::taxonomy::ValidEvent;
    use chrono::{DateTime, Utc};

    #[test]
    fn timestamps_format_as_strftime_does() {
        for ms in [0i64, 1_764_072_000_123, 946_684_799_999, 4_102_444_800_007] {
            let t: DateTime<Utc> = DateTime::from_timestamp_millis(ms).unwrap();
            let mut out = Vec::new();
            push_ts(&mut out, &t);
            assert_eq!(String::from_utf8(out).unwrap(), t.format("%Y-%m-%d %H:%M:%S%.3f").to_string());
        }
    }

    #[test]
    fn a_row_is_the_json_object_of_its_event_whatever_its_strings_hold() {
        let t = |ms| DateTime::<Utc>::from_timestamp_millis(ms).unwrap();
        for (text, position) in [("plain", Some(42)), ("quote \" back\\slash \u{1} tab\t nl\n del\u{7f} é 学 😀", None)] {
            let ev = ValidEvent {
                event_id: uuid::Uuid::new_v4(),
                event_version: "2.3".into(),
                event_type: "interact.pause".into(),
                learner_id: uuid::Uuid::new_v4(),
                session_id: text.into(),
                course_id: format!("c-{text}"),
                content_id: text.into(),
                cohort_id: text.into(),
                institution_id: "uni".into(),
                position_sec: position,
                client_ts: t(1_764_072_000_123),
                server_ts: None,
                props: [("player".to_string(), text.to_string()), (text.to_string(), "v".to_string())].into(),
            };
            let mut rows = Vec::new();
            write_row(&mut rows, &ev, &t(1_764_072_001_007));
            write_row(&mut rows, &ev, &t(1_764_072_001_007));
            let lines: Vec<&[u8]> = rows.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
            assert_eq!(lines.len(), 2, "one line per row");
            let got: serde_json::Value = serde_json::from_slice(lines[0]).unwrap();
            let want = serde_json::json!({
                "server_ts": "2025-11-25 12:00:01.007", "client_ts": "2025-11-25 12:00:00.123",
                "event_id": ev.event_id, "event_version": "2.3", "event_type": "interact.pause", "learner_id": ev.learner_id,
                "session_id": text, "course_id": format!("c-{text}"), "content_id": text, "cohort_id": text,
                "institution_id": "uni", "position_sec": position, "props": {"player": text, text: "v"},
            });
            assert_eq!(got, want);
        }
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
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
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
            write_row(&mut rows, ev, &ev.server_ts.unwrap());
        }
        let serialise_cold = t.elapsed();
        // Again into the same, already touched buffer: the writer alone, without page faults.
        rows.clear();
        let t = Instant::now();
        for ev in &valid {
            write_row(&mut rows, ev, &ev.server_ts.unwrap());
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
