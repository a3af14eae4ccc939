//! A [`ValidEvent`]'s JSON written by hand, for the gateway's records (one per accepted
//! event): the bytes `serde_json::to_writer` writes for it (`tests::the_bytes_serde_writes`),
//! without the serializer's per-key escaping and `collect_str` formatting of timestamps.
//! A string that needs escaping (a quote, a backslash, a control character) is written by
//! `serde_json` itself; every other string is copied as it is.

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use std::collections::BTreeMap;
use uuid::Uuid;

use super::ValidEvent;

impl ValidEvent {
    /// Append this event's JSON to `out`: the same bytes as `serde_json::to_writer(out, self)`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        /// Each field as `"name":value`, in declaration order (serde's).
        macro_rules! fields {
            ($first:ident $(, $field:ident)*) => {
                out.extend_from_slice(concat!("{\"", stringify!($first), "\":").as_bytes());
                self.$first.write(out);
                $(
                    out.extend_from_slice(concat!(",\"", stringify!($field), "\":").as_bytes());
                    self.$field.write(out);
                )*
                out.push(b'}');
            };
        }
        fields!(
            event_id,
            event_version,
            event_type,
            learner_id,
            session_id,
            course_id,
            content_id,
            cohort_id,
            institution_id,
            position_sec,
            client_ts,
            server_ts,
            props
        );
    }
}

/// A field value written as `serde_json` writes it.
trait WriteJson {
    fn write(&self, out: &mut Vec<u8>);
}

impl WriteJson for String {
    fn write(&self, out: &mut Vec<u8>) {
        string(out, self);
    }
}

impl WriteJson for Uuid {
    fn write(&self, out: &mut Vec<u8>) {
        uuid(out, self);
    }
}

impl WriteJson for u32 {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(itoa::Buffer::new().format(*self).as_bytes());
    }
}

impl WriteJson for DateTime<Utc> {
    fn write(&self, out: &mut Vec<u8>) {
        timestamp(out, self);
    }
}

impl<T: WriteJson> WriteJson for Option<T> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Some(v) => v.write(out),
            None => out.extend_from_slice(b"null"),
        }
    }
}

impl WriteJson for BTreeMap<String, String> {
    fn write(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, k);
            out.push(b':');
            string(out, v);
        }
        out.push(b'}');
    }
}

/// `s` as a JSON string: copied when it needs no escaping (what `serde_json` escapes: control
/// characters, `"` and `\`), else written by `serde_json`.
fn string(out: &mut Vec<u8>, s: &str) {
    // Without an early exit, so that the check runs over whole words.
    let escape = s.bytes().fold(false, |acc, b| acc | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if escape {
        serde_json::to_writer(&mut *out, s).expect("a string serialises");
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

fn uuid(out: &mut Vec<u8>, u: &Uuid) {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.push(b'"');
    out.extend_from_slice(u.hyphenated().encode_lower(&mut buf).as_bytes());
    out.push(b'"');
}

/// As chrono serialises a `DateTime<Utc>` (RFC 3339, `Z`, as many fraction digits as needed:
/// none, 3, 6 or 9); chrono writes the rare others (years outside 1000-9999, a leap second).
fn timestamp(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    let (year, nanos) = (t.year(), t.nanosecond());
    if !(1000..=9999).contains(&year) || nanos >= 1_000_000_000 {
        out.push(b'"');
        out.extend_from_slice(t.to_rfc3339_opts(SecondsFormat::AutoSi, true).as_bytes());
        out.push(b'"');
        return;
    }
    let two = |out: &mut Vec<u8>, n: u32| out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]);
    out.push(b'"');
    two(out, year as u32 / 100);
    two(out, year as u32 % 100);
    out.push(b'-');
    two(out, t.month());
    out.push(b'-');
    two(out, t.day());
    out.push(b'T');
    two(out, t.hour());
    out.push(b':');
    two(out, t.minute());
    out.push(b':');
    two(out, t.second());
    let (digits, frac) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (3, n / 1_000_000),
        n if n % 1_000 == 0 => (6, n / 1_000),
        n => (9, n),
    };
    if digits > 0 {
        out.push(b'.');
        let mut buf = [b'0'; 9];
        let mut f = frac;
        for d in buf[..digits].iter_mut().rev() {
            *d = b'0' + (f % 10) as u8;
            f /= 10;
        }
        out.extend_from_slice(&buf[..digits]);
    }
    out.extend_from_slice(b"Z\"");
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use rand::{Rng, SeedableRng};

    #[test]
    fn the_bytes_serde_writes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let strings = [
            "",
            "s-1",
            "uni-north-course-1-cohort-2",
            "2.3",
            "quote\"d",
            "back\\slash",
            "tab\there",
            "nl\n",
            "\u{1}",
            "\u{1f}",
            "\u{7f}",
            "caf\u{e9}",
            "\u{2028}",
            "\u{1F600}",
            "</script>",
            "a/b",
            "0b9e39471234456789abcdef01234567",
        ];
        let pick = |rng: &mut rand::rngs::StdRng| strings[rng.gen_range(0..strings.len())].to_string();
        let times: Vec<DateTime<Utc>> = vec![
            Utc.with_ymd_and_hms(2026, 12, 3, 10, 0, 0).unwrap(),
            Utc.timestamp_millis_opt(1_764_072_000_123).unwrap(),
            Utc.timestamp_millis_opt(1_764_072_000_100).unwrap(),
            Utc.timestamp_nanos(1_764_072_000_123_456_000),
            Utc.timestamp_nanos(1_764_072_000_123_456_789),
            Utc.timestamp_nanos(1_764_072_000_000_000_001),
            Utc.timestamp_nanos(1_764_072_000_000_001_000),
            Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(999, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-5, 1, 1, 0, 0, 0).unwrap(),
            // A leap second.
            chrono::NaiveDate::from_ymd_opt(2016, 12, 31).unwrap().and_hms_milli_opt(23, 59, 59, 1_500).unwrap().and_utc(),
            Utc::now(),
        ];
        for n in 0..5_000 {
            let mut props = BTreeMap::new();
            for _ in 0..rng.gen_range(0..4) {
                props.insert(pick(&mut rng), pick(&mut rng));
            }
            let ev = ValidEvent {
                event_id: Uuid::from_u128(rng.gen()),
                event_version: pick(&mut rng),
                event_type: pick(&mut rng),
                learner_id: Uuid::from_u128(rng.gen()),
                session_id: pick(&mut rng),
                course_id: pick(&mut rng),
                content_id: pick(&mut rng),
                cohort_id: pick(&mut rng),
                institution_id: pick(&mut rng),
                position_sec: [None, Some(0), Some(95), Some(u32::MAX)][n % 4],
                client_ts: times[n % times.len()],
                server_ts: [None, Some(times[(n / 3) % times.len()])][n % 2],
                props,
            };
            let mut got = b"prefix".to_vec();
            ev.write_json(&mut got);
            let mut want = b"prefix".to_vec();
            serde_json::to_writer(&mut want, &ev).unwrap();
            assert_eq!(String::from_utf8(got).unwrap(), String::from_utf8(want).unwrap(), "{ev:?}");
        }
    }
}
