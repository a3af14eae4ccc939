//! The gateway's typed, borrowed read of one `/v1/events` event: its fields
//! straight from the request's bytes (no `serde_json::Value` tree) into the
//! taxonomy's wire form ([`crate::taxonomy::fast::Wire`]), the learner's
//! identity split off, validated by the taxonomy's fast path
//! ([`crate::taxonomy::fast::check`]) once the gateway has filled in what it
//! sets (pseudonym, institution, `server_ts`).
//!
//! Invariant: like the taxonomy's fast path, this only ever *accepts*. An event
//! it cannot read this way (an unknown or duplicate field, a string with
//! escapes, `null` where absence means something, a `learner` object of another
//! shape, a value of another type) or cannot prove valid goes through the
//! generic path ([`super::split_identity`], [`super::fill`],
//! [`crate::taxonomy::Taxonomy::validate`]), which decides and names the reason.
//! So both paths accept the same events with the same result
//! (`tests::typed_and_generic_paths_agree`).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::taxonomy::fast::{Slot, Ts, Wire};
use crate::taxonomy::{Taxonomy, ValidEvent};

/// One event as an LMS sends it to `/v1/events`, borrowed from the request's bytes: the
/// taxonomy's wire form ([`Wire`]), which reads the `learner` object too.
pub struct Event<'a>(Wire<'a>);

impl<'a> Event<'a> {
    /// The event and its identity (`learner`), when the typed read can take it: `None` sends
    /// it the generic way (including every event `split_identity` refuses).
    pub fn parse(bytes: &'a [u8]) -> Option<(Event<'a>, Option<(&'a str, &'a str)>)> {
        let e: Wire = serde_json::from_slice(bytes).ok()?;
        let identity = match (&e.learner, &e.learner_id) {
            (Slot::Absent, _) => None,
            (Slot::Value(l), Slot::Absent) => Some((l.institution, l.external_id)),
            // `learner: null`, or both `learner` and `learner_id`: refused, the generic way.
            _ => return None,
        };
        Some((Event(e), identity))
    }

    /// The valid event once the gateway filled it in as [`super::fill`] does: `pseudonym` and
    /// `institution` when it named its learner by identity (`institution_id` kept when given),
    /// `server_ts` (millisecond precision, as `fill` writes it). `None` when the fast path cannot
    /// prove it valid: the caller validates it the generic way, from its bytes (this takes the
    /// event's `props`: call it once).
    pub fn validate(&mut self, taxonomy: &Taxonomy, pseudonym: Option<(Uuid, &str)>, server_ts: DateTime<Utc>) -> Option<ValidEvent> {
        let e = &mut self.0;
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let (learner_id, institution_id) = match (pseudonym, &e.learner_id, &e.institution_id) {
            (Some((p, _)), _, Slot::Value(i)) => (&*p.hyphenated().encode_lower(&mut buf), *i),
            (Some((p, inst)), _, Slot::Absent) => (&*p.hyphenated().encode_lower(&mut buf), inst),
            (None, Slot::Value(l), Slot::Value(i)) => (*l, *i),
            // A required field absent or null: the generic validator says so.
            _ => return None,
        };
        crate::taxonomy::fast::check(
            taxonomy,
            Wire {
                // Split off by `parse`: the pseudonym stands for it.
                learner: Slot::Absent,
                learner_id: Slot::Value(learner_id),
                institution_id: Slot::Value(institution_id),
                server_ts: Some(Ts(server_ts)),
                // Read once: a typed event the fast path cannot take is read again from its bytes.
                props: e.props.take(),
                ..*e
            },
        )
    }
}

/// The elements of a JSON array, as byte slices of `body`, which must be valid JSON (checked
/// by the caller) whose first value is an array. `None` when an element is nested deeper than
/// `serde_json` reads when parsing the whole body (128 levels with the array's), so that a body
/// read element by element is refused exactly when the whole would be.
pub fn array_elements(body: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let open = body.iter().position(|b| *b == b'[')?;
    let mut depth = 1usize;
    let mut start: Option<usize> = None;
    let mut i = open + 1;
    while i < body.len() {
        let b = body[i];
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b',' if depth == 1 => {
                let s = start.take()?;
                out.push(trim_end(&body[s..i]));
            }
            b']' | b'}' if depth == 1 => {
                if let Some(s) = start.take() {
                    out.push(trim_end(&body[s..i]));
                }
                return Some(out);
            }
            _ => {
                start.get_or_insert(i);
                match b {
                    // Past the string: most of a body is strings.
                    b'"' => i = string_end(body, i + 1)?,
                    b'[' | b'{' => {
                        depth += 1;
                        if depth >= 128 {
                            return None;
                        }
                    }
                    b']' | b'}' => depth -= 1,
                    _ => {}
                }
            }
        }
        i += 1;
    }
    None
}

/// The position of the quote that closes the string whose contents start at `from` (a
/// backslash escapes the byte after it); `None` when it is not closed.
fn string_end(body: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        i = quote_or_backslash(body, i);
        match body.get(i)? {
            b'\\' => i += 2,
            _ => return Some(i),
        }
    }
}

/// The position of the first `"` or `\` in `body` from `from` (`body.len()` when none), read
/// 8 bytes at a time.
fn quote_or_backslash(body: &[u8], from: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Bytes equal to `b` in `w`, flagged by their high bit; the lowest flag is exact.
    let eq = |w: u64, b: u8| {
        let x = w ^ (ONES * b as u64);
        x.wrapping_sub(ONES) & !x & HIGHS
    };
    let mut i = from;
    while let Some(chunk) = body.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let hit = eq(w, b'"') | eq(w, b'\\');
        if hit != 0 {
            return i + (hit.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < body.len() && body[i] != b'"' && body[i] != b'\\' {
        i += 1;
    }
    i
}

fn trim_end(s: &[u8]) -> &[u8] {
    let end = s.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |p| p + 1);
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::taxonomy::tests::{edge_edits, tax};
    use serde_json::{json, Map, Value};

    /// An event as the load generator sends it (named by identity), every optional field set.
    fn sent() -> Value {
        json!({"event_id": Uuid::new_v4(), "event_version": "2.3", "event_type": "interact.replay",
               "learner": {"institution": "uni-a", "external_id": "S-0001"}, "session_id": "s-1",
               "course_id": "cs101", "content_id": "v1", "cohort_id": "c1", "institution_id": "uni-a",
               "position_sec": 95, "client_ts": "2026-11-25T13:55:03.123Z", "props": {"speed": "1.5"}})
    }

    /// What the generic path makes of `body`: `split_identity`, [`super::super::fill`] (with
    /// `pseudonym` for an identity), `Taxonomy::validate`; `Err` names the stage that refused.
    fn generic(t: &Taxonomy, body: &[u8], pseudonym: Uuid, now: &str) -> Result<ValidEvent, String> {
        let v: Value = serde_json::from_slice(body).map_err(|_| "json".to_string())?;
        let Value::Object(m) = v else { return Err("not an object".into()) };
        let it = super::super::split_identity(m).map_err(|(_, why)| why.to_string())?;
        let mut ev = match it.event {
            super::super::Body::Map(m) => m,
            super::super::Body::Typed { .. } => unreachable!("split_identity keeps the map"),
        };
        let inst = it.identity.as_ref().map(|(i, _)| i.to_string());
        super::super::fill(&mut ev, inst.as_deref().map(|i| (pseudonym, i)), now);
        t.validate(&Value::Object(ev)).map_err(|r| format!("{:?}", r.reason))
    }

    /// The typed path on `body`: `None` when it defers to the generic path.
    fn typed(t: &Taxonomy, body: &[u8], pseudonym: Uuid, now: DateTime<Utc>) -> Option<ValidEvent> {
        let (mut e, identity) = Event::parse(body)?;
        e.validate(t, identity.map(|(i, _)| (pseudonym, i)), now)
    }

    #[test]
    fn typed_and_generic_paths_agree() {
        let t = tax();
        let (now, now_text) = super::super::server_now(chrono::Utc::now());
        let now = now.expect("this year is in range");
        let p = Uuid::new_v4();
        let mut edits = edge_edits();
        let own: Vec<Box<dyn Fn(&mut Value)>> = vec![
            Box::new(|_| {}),
            Box::new(|g| g["institution_id"] = json!("uni-b")),
            Box::new(|g| {
                g.as_object_mut().unwrap().remove("institution_id");
            }),
            Box::new(|g| g["institution_id"] = Value::Null),
            Box::new(|g| g["institution_id"] = json!(7)),
            Box::new(|g| g["learner"] = Value::Null),
            Box::new(|g| g["learner"] = json!({"institution": "uni-a"})),
            Box::new(|g| g["learner"] = json!({"institution": "uni-a", "external_id": 5})),
            Box::new(|g| g["learner"] = json!({"institution": "uni-a", "external_id": "x", "name": "Ada"})),
            Box::new(|g| g["learner"] = json!("S-0001")),
            Box::new(|g| g["learner_id"] = json!(Uuid::new_v4())),
            Box::new(|g| g["learner_id"] = Value::Null),
            Box::new(|g| {
                g.as_object_mut().unwrap().remove("learner");
                g["learner_id"] = json!(Uuid::new_v4());
            }),
            Box::new(|g| {
                g.as_object_mut().unwrap().remove("learner");
                g["learner_id"] = json!("ada@example.org");
            }),
            Box::new(|g| {
                g.as_object_mut().unwrap().remove("learner");
                g["learner_id"] = Value::Null;
            }),
            Box::new(|g| {
                g.as_object_mut().unwrap().remove("learner");
                g["learner_id"] = json!(Uuid::new_v4());
                g.as_object_mut().unwrap().remove("institution_id");
            }),
            Box::new(|g| {
                g.as_object_mut().unwrap().remove("learner");
            }),
            Box::new(|g| g["server_ts"] = json!("2020-01-01T00:00:00Z")),
            Box::new(|g| g["server_ts"] = json!("esc\"aped")),
            Box::new(|g| g["server_ts"] = json!(1_764_000_000_000i64)),
            Box::new(|g| g["server_ts"] = json!(-1)),
            Box::new(|g| g["server_ts"] = json!(1.5)),
            Box::new(|g| g["server_ts"] = json!(true)),
            Box::new(|g| g["server_ts"] = json!({"a": 1})),
            Box::new(|g| g["server_ts"] = json!([])),
            Box::new(|g| g["client_ts"] = json!(1_764_000_000_000i64)),
            Box::new(|g| g["client_ts"] = json!("yesterday")),
            Box::new(|g| g["event_id"] = json!("nope")),
            Box::new(|g| g["props"] = json!({"Gender": "f", "email": "ada@example.org"})),
        ];
        edits.extend(own);
        let mut typed_taken = 0;
        for e in &edits {
            let mut g = sent();
            e(&mut g);
            let bytes = serde_json::to_vec(&g).unwrap();
            let want = generic(&t, &bytes, p, &now_text);
            match (&want, typed(&t, &bytes, p, now)) {
                (Ok(a), Some(b)) => {
                    assert_eq!(format!("{a:?}"), format!("{b:?}"), "{g}");
                    typed_taken += 1;
                }
                (Err(why), Some(b)) => panic!("the typed path accepted what the generic path refuses ({why}): {g} -> {b:?}"),
                (_, None) => {}
            }
        }
        assert!(typed_taken >= 10, "the common shapes take the typed path ({typed_taken})");
        // Duplicate keys: the generic path keeps the last; the typed path defers.
        let dup = br#"{"event_id": "00000000-0000-4000-8000-000000000001", "event_version": "2.3", "event_type": "content.view", "learner": {"institution": "u", "external_id": "x"}, "course_id": "a", "course_id": "b", "cohort_id": "c", "client_ts": 1764000000000}"#;
        assert!(typed(&t, dup, p, now).is_none());
        assert_eq!(generic(&t, dup, p, &now_text).unwrap().course_id, "b");
        // The load generator's event takes the typed path, with the gateway's pseudonym and time.
        let ev = typed(&t, &serde_json::to_vec(&sent()).unwrap(), p, now).expect("typed");
        assert_eq!((ev.learner_id, ev.server_ts, ev.institution_id.as_str()), (p, Some(now), "uni-a"));
    }

    #[test]
    fn array_elements_split_as_serde_json_reads_the_whole() {
        let mut cases: Vec<Value> = vec![
            json!([]),
            json!([{}]),
            json!([1, "a,b", {"k": "]}"}, [1, [2]], null, "q\"uo]te\\", {"a": {"b": [{}]}}]),
            json!([sent(), sent()]),
        ];
        // Strings with a quote or a backslash at every offset of the 8-byte reads, and none.
        for n in 0..20 {
            let plain = "é".repeat(n % 3) + &"x".repeat(n);
            cases.push(json!([format!("{plain}\""), format!("{plain}\\"), format!("\"{plain}"), plain.clone(), {"k": format!("{plain}\\\"]")}, [plain]]));
        }
        for c in &cases {
            for text in [serde_json::to_string(c).unwrap(), serde_json::to_string_pretty(c).unwrap(), format!("  \n{}\t ", serde_json::to_string_pretty(c).unwrap())] {
                let parts = array_elements(text.as_bytes()).expect(&text);
                let got: Vec<Value> = parts.iter().map(|p| serde_json::from_slice(p).unwrap()).collect();
                assert_eq!(&Value::Array(got), c, "{text}");
            }
        }
        // Nesting: refused element by element exactly when serde_json refuses the whole body.
        for depth in 120..135 {
            let text = format!("[{}{}]", "[".repeat(depth), "]".repeat(depth));
            let whole = serde_json::from_str::<Value>(&text).is_ok();
            let split = array_elements(text.as_bytes()).is_some_and(|parts| parts.iter().all(|p| serde_json::from_slice::<Value>(p).is_ok()));
            assert_eq!(whole, split, "depth {depth}");
            let text = format!("[{}1{}]", "{\"a\":".repeat(depth), "}".repeat(depth));
            let whole = serde_json::from_str::<Value>(&text).is_ok();
            let split = array_elements(text.as_bytes()).is_some_and(|parts| parts.iter().all(|p| serde_json::from_slice::<Value>(p).is_ok()));
            assert_eq!(whole, split, "depth {depth}");
        }
        let _ = Map::<String, Value>::new();
    }
}
