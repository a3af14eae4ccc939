//! Redaction of dead letters: what a refused event may carry that identifies a
//! person is replaced before the dead letter is produced, keeping its JSON path
//! and the reason, so an operator still sees what was wrong and where.
//! Shared by the gateway and the lander (both dead-letter), so a module of its own.
//!
//! Invariant: nothing this module returns holds an email address, a phone
//! number, one of the request's own external ids, an xAPI actor or a
//! `learner` identity object, a value under an identifier-named key (`email`,
//! `phone`, `name`, ...), a `learner_id` that is not a pseudonym, or the
//! value of a protected attribute. What was replaced is listed as
//! `{"path": "$.props.email", "reason": "email"}`.

use regex::Regex;
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::OnceLock;

use crate::policy::ProtectedAttributes;

/// What a redaction replaced, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Redacted {
    /// JSONPath-like location (`$.props.email`, `$[3].actor`).
    pub path: String,
    /// `identity` | `xapi_actor` | `identifier_field` | `email` | `phone` | `external_id` | `not_a_pseudonym` | `protected_attribute`
    pub reason: &'static str,
}

/// What a redaction knows beyond the patterns: the request's own external ids
/// and the protected attributes.
#[derive(Default)]
pub struct Context<'a> {
    pub external_ids: &'a [String],
    pub protected: Option<&'a ProtectedAttributes>,
}

/// Keys whose values identify a person, whatever they hold.
const IDENTIFIER_KEYS: &[&str] = &[
    "email", "e_mail", "mail", "mbox", "mbox_sha1sum", "openid", "phone", "phone_number", "mobile", "telephone", "name",
    "first_name", "last_name", "full_name", "given_name", "family_name", "username", "user_name", "login", "address",
    "external_id", "student_id", "lms_id", "ssn", "account",
];

fn email() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"(?i)[a-z0-9._%+\-]+@[a-z0-9\-]+(\.[a-z0-9\-]+)+").expect("valid regex"))
}

fn phone() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    // 9 or more digits, possibly separated by spaces, dots, dashes or parentheses, optional +.
    R.get_or_init(|| Regex::new(r"\+?\(?\d(?:[\s.\-()]*\d){8,}").expect("valid regex"))
}

fn normalise_key(k: &str) -> String {
    k.trim().to_ascii_lowercase().replace(['-', ' '], "_")
}

/// Replace identifying values in `v` (in place); returns what was replaced.
pub fn redact_value(v: &mut Value, cx: &Context<'_>) -> Vec<Redacted> {
    let mut out = Vec::new();
    walk(v, "$", None, cx, &mut out);
    out
}

fn marker(reason: &str) -> Value {
    Value::String(format!("<redacted:{reason}>"))
}

fn walk(v: &mut Value, path: &str, key: Option<&str>, cx: &Context<'_>, out: &mut Vec<Redacted>) {
    let mut replace = |v: &mut Value, reason: &'static str| {
        *v = marker(reason);
        out.push(Redacted { path: path.to_owned(), reason });
    };
    if let Some(k) = key {
        let nk = normalise_key(k);
        match nk.as_str() {
            "learner" if !v.is_null() => return replace(v, "identity"),
            "actor" | "authority" | "instructor" if v.is_object() => return replace(v, "xapi_actor"),
            "learner_id" => {
                if let Value::String(s) = v {
                    if uuid::Uuid::parse_str(s).is_err() {
                        return replace(v, "not_a_pseudonym");
                    }
                } else if !v.is_null() {
                    return replace(v, "not_a_pseudonym");
                }
                return;
            }
            _ if IDENTIFIER_KEYS.contains(&nk.as_str()) && !v.is_null() => return replace(v, "identifier_field"),
            _ => {}
        }
    }
    match v {
        Value::Object(m) => walk_object(m, path, cx, out),
        Value::Array(a) => {
            for (i, item) in a.iter_mut().enumerate() {
                walk(item, &format!("{path}[{i}]"), None, cx, out);
            }
        }
        Value::String(s) => {
            if let Some(reason) = identifying(s, cx) {
                replace(v, reason);
            }
        }
        // (Numbers are not checked against the phone pattern: millisecond timestamps are long digit runs.)
        Value::Number(n) if cx.external_ids.iter().any(|e| *e == n.to_string()) => replace(v, "external_id"),
        _ => {}
    }
}

fn walk_object(m: &mut Map<String, Value>, path: &str, cx: &Context<'_>, out: &mut Vec<Redacted>) {
    let is_props = path.ends_with(".props");
    // Keys are data too: an identifier used as a key is renamed.
    let bad_keys: Vec<String> = m.keys().filter(|k| identifying(k, cx).is_some()).cloned().collect();
    for (n, k) in bad_keys.into_iter().enumerate() {
        let reason = identifying(&k, cx).expect("filtered above");
        let v = m.remove(&k).expect("present");
        let new = format!("<redacted-key-{n}:{reason}>");
        out.push(Redacted { path: format!("{path}.{new}"), reason });
        m.insert(new, v);
    }
    for (k, v) in m.iter_mut() {
        let p = format!("{path}.{k}");
        if is_props && cx.protected.is_some_and(|pa| pa.matches(k).is_some()) {
            *v = marker("protected_attribute");
            out.push(Redacted { path: p, reason: "protected_attribute" });
            continue;
        }
        walk(v, &p, Some(k), cx, out);
    }
}

fn identifying(s: &str, cx: &Context<'_>) -> Option<&'static str> {
    if cx.external_ids.iter().any(|e| matches_external_id(s, e)) {
        Some("external_id")
    } else if email().is_match(s) {
        Some("email")
    } else if phone().is_match(s) && uuid::Uuid::parse_str(s).is_err() && !looks_like_a_time(s) {
        Some("phone")
    } else {
        None
    }
}

/// What in one of an event's free strings identifies a person, if anything:
/// `email`, `phone` or `external_id` (one of `external_ids`, the request's own).
/// The check every ingest path refuses an event on (`identity_in_event`), stricter
/// about false alarms than redaction: a phone number counts when written as one
/// (a leading `+` or separators between its digits) or as the whole value (9 to 15
/// digits, not an epoch timestamp); a digit run inside an identifier (a block id's
/// hex, `video-123456789`) does not.
///
/// The patterns run only on strings that could match them (most of an event's strings cannot):
/// an email address holds an `@`, a phone number 9 digits (`\d`: any Unicode decimal digit, so
/// outside ASCII every numeric character is counted). Same verdicts as running them on every
/// string (`screening_tests::the_pre_checks_change_no_verdict`).
pub fn identity_in(s: &str, external_ids: &ExternalIds) -> Option<&'static str> {
    if external_ids.found_in(s) {
        return Some("external_id");
    }
    if s.as_bytes().contains(&b'@') && email().is_match(s) {
        return Some("email");
    }
    let digits = if s.is_ascii() { s.bytes().filter(u8::is_ascii_digit).count() } else { s.chars().filter(|c| c.is_numeric()).count() };
    if digits < 9 {
        return None;
    }
    if uuid::Uuid::parse_str(s).is_ok() || looks_like_a_time(s) {
        return None;
    }
    written_as_phone(s).then_some("phone")
}

/// Whether `s` holds a phone number as people write one: separated (`+`, spaces, dashes), or
/// the whole string a run of at most 15 digits that is not an epoch timestamp.
fn written_as_phone(s: &str) -> bool {
    phone().find_iter(s).any(|m| {
        let m = m.as_str();
        let digits = m.chars().filter(char::is_ascii_digit).count();
        let separated = m.starts_with('+') || m.chars().any(|c| !c.is_ascii_digit());
        digits <= 15 && (separated || (m.len() == s.trim().len() && !looks_like_an_epoch(m)))
    })
}

/// A request's external ids, to find in its events' strings: each string is scanned once per
/// distinct id length, whatever the number of ids (a 500-event request names up to 500 learners),
/// and building it costs a hash per id (it is built for every request).
///
/// The ids are in an open-addressing table keyed by a polynomial hash of their bytes and their
/// length (behind a bitset that rules out most lookups with one bit); a string is looked up whole (is it an id?) and, for each length of the ids long enough
/// (6+) not to occur by chance, window by window with the hash rolled along it (does it contain
/// one?). A hit is confirmed by comparing the bytes. Same answers as a set of the ids and an
/// Aho-Corasick automaton of the long ones (`screening_tests::external_ids_are_found_as_before`).
#[derive(Default)]
pub struct ExternalIds {
    /// The distinct ids' bytes, end to end.
    bytes: Vec<u8>,
    /// Each distinct id: (start in `bytes`, length, hash).
    ids: Vec<(usize, usize, u64)>,
    /// Slots (a power of two, at least twice the ids): an index into `ids` plus one, 0 when empty.
    table: Vec<u32>,
    /// The distinct lengths of the ids, ascending.
    lengths: Vec<usize>,
    /// A bit per slot of a table 64 times larger, set for each id's: most windows of a string
    /// are ruled out by one bit, without a probe.
    bits: Vec<u64>,
}

/// The polynomial hash's base (odd, large: every byte moves every bit above it).
const BASE: u64 = 0x100_0000_01b3;

fn poly_hash(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |h, &x| h.wrapping_mul(BASE).wrapping_add(x as u64))
}

impl ExternalIds {
    pub fn new(ids: &[String]) -> ExternalIds {
        let slots = (ids.len() * 2).next_power_of_two().max(8);
        let mut out = ExternalIds { table: vec![0; slots], bits: vec![0; slots], ..ExternalIds::default() };
        for id in ids.iter().filter(|e| !e.is_empty()) {
            let (b, h) = (id.as_bytes(), poly_hash(id.as_bytes()));
            if out.find(b, h) {
                continue;
            }
            out.ids.push((out.bytes.len(), b.len(), h));
            out.bytes.extend_from_slice(b);
            let mask = out.table.len() - 1;
            let mut slot = out.slot(h, b.len());
            while out.table[slot] != 0 {
                slot = (slot + 1) & mask;
            }
            out.table[slot] = out.ids.len() as u32;
            let bit = out.bit(h, b.len());
            out.bits[bit / 64] |= 1 << (bit % 64);
            if let Err(at) = out.lengths.binary_search(&b.len()) {
                out.lengths.insert(at, b.len());
            }
        }
        out
    }

    fn mix(hash: u64, len: usize) -> u64 {
        (hash ^ (len as u64).wrapping_mul(0xff51_afd7_ed55_8ccd)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn slot(&self, hash: u64, len: usize) -> usize {
        (Self::mix(hash, len) >> 32) as usize & (self.table.len() - 1)
    }

    fn bit(&self, hash: u64, len: usize) -> usize {
        (Self::mix(hash, len) >> 40) as usize & (self.bits.len() * 64 - 1)
    }

    /// `b` (whose hash is `hash`) is one of the ids.
    #[inline]
    fn find(&self, b: &[u8], hash: u64) -> bool {
        if self.ids.is_empty() {
            return false;
        }
        let bit = self.bit(hash, b.len());
        if self.bits[bit / 64] & (1 << (bit % 64)) == 0 {
            return false;
        }
        let mask = self.table.len() - 1;
        let mut slot = self.slot(hash, b.len());
        loop {
            match self.table[slot] {
                0 => return false,
                n => {
                    let (start, len, h) = self.ids[n as usize - 1];
                    if h == hash && len == b.len() && &self.bytes[start..start + len] == b {
                        return true;
                    }
                }
            }
            slot = (slot + 1) & mask;
        }
    }

    /// `s` is one of the ids, or contains one long enough (6+) not to occur by chance.
    pub fn found_in(&self, s: &str) -> bool {
        let s = s.as_bytes();
        if self.lengths.binary_search(&s.len()).is_ok() && self.find(s, poly_hash(s)) {
            return true;
        }
        for &len in self.lengths.iter().filter(|l| **l >= 6 && **l < s.len()) {
            // BASE^(len-1): what the window's first byte weighs, removed as the window moves on.
            let top = BASE.wrapping_pow(len as u32 - 1);
            let mut h = poly_hash(&s[..len]);
            for start in 0..=s.len() - len {
                if start > 0 {
                    h = h.wrapping_sub((s[start - 1] as u64).wrapping_mul(top)).wrapping_mul(BASE).wrapping_add(s[start + len - 1] as u64);
                }
                if self.find(&s[start..start + len], h) {
                    return true;
                }
            }
        }
        false
    }
}

/// Seconds or milliseconds since 1970 (10 or 13 digits, 2001 to 2286).
fn looks_like_an_epoch(digits: &str) -> bool {
    matches!(digits.len(), 10 | 13) && digits.starts_with(['1', '2'])
}

/// A key naming an identifier (`email`, `phone`, `name`, `student_id`, ...): its value
/// identifies a person whatever it holds.
pub fn is_identifier_key(k: &str) -> bool {
    IDENTIFIER_KEYS.contains(&normalise_key(k).as_str())
}

/// `s` is, or (for ids long enough not to occur by chance) contains, the external id `e`.
fn matches_external_id(s: &str, e: &str) -> bool {
    !e.is_empty() && (s == e || (e.len() >= 6 && s.contains(e)))
}

/// Timestamps and dates are long digit runs too, and are not identifiers.
fn looks_like_a_time(s: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(s).is_ok() || chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}

/// Text that is not JSON (an unparseable record, a message): identifying
/// substrings replaced by their marker.
pub fn redact_text(s: &str, cx: &Context<'_>) -> (String, Vec<Redacted>) {
    let mut out = Vec::new();
    let mut text = s.to_owned();
    for e in cx.external_ids.iter().filter(|e| e.len() >= 4) {
        if text.contains(e.as_str()) {
            text = text.replace(e.as_str(), "<redacted:external_id>");
            out.push(Redacted { path: "$".into(), reason: "external_id" });
        }
    }
    if email().is_match(&text) {
        text = email().replace_all(&text, "<redacted:email>").into_owned();
        out.push(Redacted { path: "$".into(), reason: "email" });
    }
    if phone().is_match(&text) {
        text = phone().replace_all(&text, "<redacted:phone>").into_owned();
        out.push(Redacted { path: "$".into(), reason: "phone" });
    }
    (text, out)
}

/// A dead letter's payload from raw bytes: JSON redacted in place (as a JSON
/// value), anything else as redacted text.
pub fn redact_bytes(raw: &[u8], cx: &Context<'_>) -> (Value, Vec<Redacted>) {
    match serde_json::from_slice::<Value>(raw) {
        Ok(mut v) => {
            let r = redact_value(&mut v, cx);
            (v, r)
        }
        Err(_) => {
            let (t, r) = redact_text(&String::from_utf8_lossy(raw), cx);
            (Value::String(t), r)
        }
    }
}

/// The Kafka key of a dead letter: the pseudonym when the payload names one, else none.
pub fn dead_letter_key(payload: &Value) -> Option<String> {
    payload.get("learner_id").and_then(Value::as_str).and_then(|s| uuid::Uuid::parse_str(s).ok()).map(|u| u.to_string())
}

#[cfg(test)]
mod screening_tests {
    use super::identity_in;

    #[test]
    fn identities_in_free_strings_are_found_and_identifiers_with_digits_are_not() {
        let ids = super::ExternalIds::new(&["S-100234".to_string(), "ab".to_string()]);
        for (s, want) in [
            ("call ada@example.org", Some("email")),
            ("+44 20 7946 0958", Some("phone")),
            ("ring 555-123-4567 after class", Some("phone")),
            ("5551234567", Some("phone")),
            ("ask S-100234 to re-sit", Some("external_id")),
            ("video-123456789", None),
            ("block-v1:edX+DemoX+type@problem+block@0b9e3947123456789a7a48f74be381fdd", None),
            ("1764072000000", None),
            ("2026-12-03T10:00:00Z", None),
            ("0.85", None),
            ("c1", None),
            ("ab", Some("external_id")),
            ("cabin", None),
        ] {
            assert_eq!(identity_in(s, &ids), want, "{s}");
        }
    }

    /// The external ids' screen as it was: a set of the ids, an automaton of the long ones.
    struct ExternalIdsAsBefore {
        exact: std::collections::HashSet<String>,
        within: Option<aho_corasick::AhoCorasick>,
    }

    impl ExternalIdsAsBefore {
        fn new(ids: &[String]) -> Self {
            let exact = ids.iter().filter(|e| !e.is_empty()).cloned().collect();
            let long: Vec<&String> = ids.iter().filter(|e| e.len() >= 6).collect();
            let within = (!long.is_empty()).then(|| aho_corasick::AhoCorasick::new(long).expect("external ids build an automaton"));
            ExternalIdsAsBefore { exact, within }
        }

        fn found_in(&self, s: &str) -> bool {
            self.exact.contains(s) || self.within.as_ref().is_some_and(|a| a.is_match(s))
        }
    }

    #[test]
    fn external_ids_are_found_as_before() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let alphabet: Vec<char> = "aab-01S\u{e9}\u{1F600}".chars().collect();
        // A random word shorter than `max` characters.
        let word = |rng: &mut rand::rngs::StdRng, max: usize| -> String {
            let n = rng.gen_range(0..max);
            (0..n).map(|_| alphabet[rng.gen_range(0..alphabet.len())]).collect()
        };
        let (mut hits, mut misses) = (0, 0);
        for round in 0..300 {
            // Ids of every length around the 6 that makes an id long enough to be found within a
            // string, duplicates and the empty id included; from none to many.
            let count = [0, 1, 2, 5, 40, 500][round % 6];
            let mut ids: Vec<String> = (0..count).map(|_| word(&mut rng, 10)).collect();
            if count > 1 {
                ids.push(ids[0].clone());
                ids.push(String::new());
            }
            ids.extend(["uni-north-000123", "k12-east-000123"].iter().take(round % 3).map(|s| s.to_string()));
            let (new, old) = (super::ExternalIds::new(&ids), ExternalIdsAsBefore::new(&ids));
            for _ in 0..300 {
                // Random strings, and ids with something before and after (or cut short).
                let s = match rng.gen_range(0..4) {
                    0 => word(&mut rng, 24),
                    _ if ids.is_empty() => String::new(),
                    k => {
                        let id = &ids[rng.gen_range(0..ids.len())];
                        let cut: String = id.chars().take(if k == 1 { id.chars().count().saturating_sub(1) } else { usize::MAX }).collect();
                        format!("{}{cut}{}", word(&mut rng, 4), word(&mut rng, 4))
                    }
                };
                let want = old.found_in(&s);
                assert_eq!(new.found_in(&s), want, "{s:?} in {ids:?}");
                if want {
                    hits += 1;
                } else {
                    misses += 1;
                }
            }
        }
        assert!(hits > 10_000 && misses > 10_000, "{hits} hits, {misses} misses");
    }

    /// `identity_in` as it was before its pre-checks: every pattern on every string.
    fn identity_in_unfiltered(s: &str, external_ids: &super::ExternalIds) -> Option<&'static str> {
        use super::{email, looks_like_a_time, written_as_phone};
        if external_ids.found_in(s) {
            return Some("external_id");
        }
        if email().is_match(s) {
            return Some("email");
        }
        if uuid::Uuid::parse_str(s).is_ok() || looks_like_a_time(s) {
            return None;
        }
        written_as_phone(s).then_some("phone")
    }

    #[test]
    fn the_pre_checks_change_no_verdict() {
        use rand::{Rng, SeedableRng};
        let ids = super::ExternalIds::new(&["S-100234".to_string(), "ab".to_string(), "uni-north-000123".to_string()]);
        let mut corpus: Vec<String> = [
            "", " ", "@", "a@b", "a@b.c", "ADA@EXAMPLE.ORG", "ada\u{FF20}example.org", "ada@\u{212A}elvin.org", "x@y.z@",
            "12345678", "123456789", "1234567890", "12345678901234567", "+12345678", "+123456789", "(555) 123-4567",
            "555.123.4567", "555 123 4567", "555-1234", "+44 20 7946 0958", "0612345678", " 0612345678 ", "\t0612345678\n",
            "1764072000000", "1764072000", "2764072000", "2026-12-03T10:00:00Z", "2026-12-03", "2026-12-03T10:00:00.123+01:00",
            "0b9e3947-1234-4567-89ab-cdef01234567", "0b9e39471234456789abcdef01234567", "{0b9e3947-1234-4567-89ab-cdef01234567}",
            "urn:uuid:0b9e3947-1234-4567-89ab-cdef01234567", "video-123456789", "block-v1:edX+DemoX+type@problem+block@0b9e39",
            // Unicode digits: `\d` matches them, `is_ascii_digit` does not.
            "\u{0661}\u{0662}\u{0663}\u{0664}\u{0665}\u{0666}\u{0667}\u{0668}\u{0669}",
            "+\u{0661}\u{0662}\u{0663} \u{0664}\u{0665}\u{0666} \u{0667}\u{0668}\u{0669}",
            "\u{FF11}\u{FF12}\u{FF13}\u{FF14}\u{FF15}\u{FF16}\u{FF17}\u{FF18}\u{FF19}",
            "\u{0966}\u{0967}\u{0968}-\u{0969}\u{096A}\u{096B}-\u{096C}\u{096D}\u{096E}\u{096F}",
            "12\u{0663}45\u{0666}78\u{0669}", "\u{2460}\u{2461}\u{2462}\u{2463}\u{2464}\u{2465}\u{2466}\u{2467}\u{2468}",
            "\u{00B2}\u{00B3}\u{00B9}123456", "caf\u{00E9} 555-123-4567", "caf\u{00E9}@example.org",
            "S-100234", "re S-100234", "ab", "cabin", "uni-north-000123", "x-uni-north-000123-y",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Random strings over an alphabet that builds emails, phones, times, ids and Unicode digits.
        let alphabet: Vec<char> = "0123456789012345678901234567890123456789abcxyzABS@@.-+() :T_/\u{0663}\u{FF15}\u{096B}\u{00E9}\u{212A}\u{FF20}\t"
            .chars()
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..200_000 {
            let n = rng.gen_range(0..28);
            corpus.push((0..n).map(|_| alphabet[rng.gen_range(0..alphabet.len())]).collect());
        }
        let mut found = std::collections::HashMap::new();
        for s in &corpus {
            let want = identity_in_unfiltered(s, &ids);
            assert_eq!(identity_in(s, &ids), want, "{s:?}");
            *found.entry(want).or_insert(0) += 1;
        }
        // The corpus reaches every verdict (the random part: each pattern's, often).
        for (v, at_least) in [(None, 1000), (Some("email"), 100), (Some("phone"), 1000), (Some("external_id"), 4)] {
            assert!(found.get(&v).copied().unwrap_or(0) >= at_least, "{v:?}: {found:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(mut v: Value, ext: &[&str]) -> (Value, Vec<Redacted>) {
        let ext: Vec<String> = ext.iter().map(|s| s.to_string()).collect();
        let protected = ProtectedAttributes::load(&crate::policy::shipped_dir()).unwrap();
        let r = redact_value(&mut v, &Context { external_ids: &ext, protected: Some(&protected) });
        (v, r)
    }

    #[test]
    fn identifiers_are_replaced_keeping_path_and_reason() {
        let p = uuid::Uuid::new_v4().to_string();
        for (input, ext, want, reasons) in [
            (json!({"learner_id": "ada@example.org"}), vec![], json!({"learner_id": "<redacted:not_a_pseudonym>"}), vec![("$.learner_id", "not_a_pseudonym")]),
            (json!({"learner_id": p}), vec![], json!({"learner_id": p}), vec![]),
            (json!({"email": "ada@example.org", "x": 1}), vec![], json!({"email": "<redacted:identifier_field>", "x": 1}), vec![("$.email", "identifier_field")]),
            (json!({"props": {"note": "call +44 20 7946 0958", "player": "web"}}), vec![], json!({"props": {"note": "<redacted:phone>", "player": "web"}}), vec![("$.props.note", "phone")]),
            (json!({"props": {"ref": "S-1001"}}), vec!["S-1001"], json!({"props": {"ref": "<redacted:external_id>"}}), vec![("$.props.ref", "external_id")]),
            (json!({"props": {"gender": "f"}}), vec![], json!({"props": {"gender": "<redacted:protected_attribute>"}}), vec![("$.props.gender", "protected_attribute")]),
            (json!({"actor": {"mbox": "mailto:ada@example.org"}, "verb": {"id": "x"}}), vec![], json!({"actor": "<redacted:xapi_actor>", "verb": {"id": "x"}}), vec![("$.actor", "xapi_actor")]),
            (json!({"learner": {"institution": "u", "external_id": "S-1"}}), vec![], json!({"learner": "<redacted:identity>"}), vec![("$.learner", "identity")]),
            (json!([{"c": "bob@x.io"}]), vec![], json!([{"c": "<redacted:email>"}]), vec![("$[0].c", "email")]),
            (json!({"client_ts": "2026-11-25T10:00:00Z", "event_date": "2026-11-25", "position_sec": 131, "event_id": p}), vec![],
             json!({"client_ts": "2026-11-25T10:00:00Z", "event_date": "2026-11-25", "position_sec": 131, "event_id": p}), vec![]),
        ] {
            let (got, r) = run(input.clone(), &ext);
            assert_eq!(got, want, "{input}");
            let r: Vec<(&str, &str)> = r.iter().map(|x| (x.path.as_str(), x.reason)).collect();
            assert_eq!(r, reasons, "{input}");
        }
    }

    #[test]
    fn identifying_keys_and_text_are_redacted_too() {
        let (got, r) = run(json!({"props": {"ada@example.org": "1"}}), &[]);
        assert!(!got.to_string().contains("ada@example.org"), "{got}");
        assert_eq!(r[0].reason, "email");
        let (t, r) = redact_text("not json: ada@example.org S-77 0612345678", &Context { external_ids: &["S-77".into()], protected: None });
        assert_eq!(t, "not json: <redacted:email> <redacted:external_id> <redacted:phone>");
        assert_eq!(r.len(), 3);
        assert_eq!(dead_letter_key(&json!({"learner_id": "ada@example.org"})), None);
        let p = uuid::Uuid::new_v4();
        assert_eq!(dead_letter_key(&json!({"learner_id": p.to_string()})), Some(p.to_string()));
    }
}
