//! The fast path of validation: an event read straight from its bytes into
//! borrowed fields (no `serde_json::Value` tree), for schema versions whose
//! fields are exactly the ones [`Wire`] knows with the types it expects.
//!
//! It only ever *accepts*: anything it cannot prove valid (a parse error, an
//! unknown or duplicate field, a string with escapes, a required field absent
//! or null, any failed rule) returns `None`, and the caller runs the generic
//! validator, which decides and names the reason. So the two paths accept the
//! same events (`tests::fast_and_generic_paths_agree`).

use chrono::{DateTime, Utc};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use uuid::Uuid;

use super::{FieldType, Schema, Taxonomy, ValidEvent};

/// The fields of the wire form and their types, in schema terms.
pub const WIRE_FIELDS: [(&str, FieldType); 13] = {
    use FieldType::{EventType, Map, String as Text, TimestampMs, Uint32, Uuid as Id};
    [
        // the event itself
        ("event_id", Id), ("event_version", Text), ("event_type", EventType),
        // who, in which session
        ("learner_id", Id), ("session_id", Text), ("institution_id", Text),
        // where in the catalogue
        ("course_id", Text), ("content_id", Text), ("cohort_id", Text), ("position_sec", Uint32),
        // when, and the rest
        ("client_ts", TimestampMs), ("server_ts", TimestampMs), ("props", Map),
    ]
};

/// Whether `schema` has exactly the wire fields, with the same types.
pub fn eligible(schema: &Schema) -> bool {
    schema.fields.len() == WIRE_FIELDS.len() && WIRE_FIELDS.iter().all(|(name, ty)| schema.fields.get(*name).is_some_and(|f| f.ty == *ty))
}

/// A field that tells absent (the default) from `null`.
#[derive(Default, Clone, Copy)]
pub enum Slot<T> {
    #[default]
    Absent,
    Null,
    Value(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Slot<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Slot<T>, D::Error> {
        Ok(Option::<T>::deserialize(d)?.map_or(Slot::Null, Slot::Value))
    }
}

impl<T: Copy> Slot<T> {
    /// The value; `None` when absent or null.
    pub fn value(&self) -> Option<T> {
        match self {
            Slot::Value(v) => Some(*v),
            Slot::Absent | Slot::Null => None,
        }
    }
}

/// `learner: {institution, external_id}`, exactly (the form the gateway's `split_identity` accepts).
#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct Learner<'a> {
    pub institution: &'a str,
    pub external_id: &'a str,
}

/// One event's fields as borrowed from its JSON, in taxonomy terms: `None` (or a [`Slot`]
/// absent or null) is a field absent or null; a timestamp already read (epoch milliseconds
/// or RFC 3339, years 2000-2100). One form serves both readers: [`validate`] reads the wire
/// form straight from bytes (an event with a `learner` object is not valid as it stands:
/// `None`); the gateway reads the same struct, splits the `learner` identity off and fills in
/// what it sets (`learner_id`, `institution_id` when absent, `server_ts`) before [`check`],
/// and gets the same answer as [`validate`] would give on the equivalent bytes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wire<'a> {
    /// The gateway's identity form; never a schema field.
    #[serde(default, borrow)]
    pub learner: Slot<Learner<'a>>,
    #[serde(default, borrow)]
    pub learner_id: Slot<&'a str>,
    #[serde(default, borrow)]
    pub institution_id: Slot<&'a str>,
    pub event_id: Option<&'a str>,
    pub event_version: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub course_id: Option<&'a str>,
    pub content_id: Option<&'a str>,
    pub cohort_id: Option<&'a str>,
    pub position_sec: Option<u64>,
    pub client_ts: Option<Ts>,
    pub server_ts: Option<Ts>,
    #[serde(borrow)]
    pub props: Option<BTreeMap<&'a str, &'a str>>,
}

/// A timestamp as the taxonomy reads it: epoch milliseconds or RFC 3339, years 2000-2100.
#[derive(Clone, Copy)]
pub struct Ts(pub DateTime<Utc>);

impl<'de> Deserialize<'de> for Ts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ts, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Ts;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("epoch milliseconds or an RFC 3339 timestamp")
            }
            fn visit_i64<E: de::Error>(self, ms: i64) -> Result<Ts, E> {
                super::ts_from_ms(ms).map(Ts).ok_or_else(|| E::custom("out of range"))
            }
            fn visit_u64<E: de::Error>(self, ms: u64) -> Result<Ts, E> {
                let ms = i64::try_from(ms).map_err(|_| E::custom("out of range"))?;
                self.visit_i64(ms)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Ts, E> {
                super::ts_from_rfc3339(s).map(Ts).ok_or_else(|| E::custom("not a timestamp"))
            }
        }
        d.deserialize_any(V)
    }
}

/// The event, when the fast path can prove it valid against the schema of
/// the version it declares (and that version is [`eligible`]).
pub fn validate(taxonomy: &Taxonomy, bytes: &[u8]) -> Option<ValidEvent> {
    check(taxonomy, serde_json::from_slice(bytes).ok()?)
}

/// The event, when `w` is provably valid against the schema of the version it declares
/// (and that version is [`eligible`]); `None` leaves the decision to the generic validator.
pub fn check(taxonomy: &Taxonomy, w: Wire<'_>) -> Option<ValidEvent> {
    if !matches!(w.learner, Slot::Absent) {
        return None;
    }
    let (learner_id, institution_id) = (w.learner_id.value(), w.institution_id.value());
    let schema = taxonomy.versions.get(w.event_version?)?;
    if !taxonomy.fast.contains(&schema.version) {
        return None;
    }
    let present = |name: &str| match name {
        "event_id" => w.event_id.is_some(),
        "event_version" => w.event_version.is_some(),
        "event_type" => w.event_type.is_some(),
        "learner_id" => learner_id.is_some(),
        "session_id" => w.session_id.is_some(),
        "course_id" => w.course_id.is_some(),
        "content_id" => w.content_id.is_some(),
        "cohort_id" => w.cohort_id.is_some(),
        "institution_id" => institution_id.is_some(),
        "position_sec" => w.position_sec.is_some(),
        "client_ts" => w.client_ts.is_some(),
        "server_ts" => w.server_ts.is_some(),
        "props" => w.props.is_some(),
        _ => false,
    };
    // A required field absent or null: the generic validator decides (nullable rules).
    if schema.fields.iter().any(|(name, f)| f.required && !present(name)) {
        return None;
    }
    let string_ok = |name: &str, v: Option<&str>| match v {
        None => true,
        Some(s) => schema.fields[name].max_len.is_none_or(|m| s.len() <= m) && !s.chars().any(char::is_control),
    };
    let strings = [
        ("event_version", w.event_version),
        ("session_id", w.session_id),
        ("course_id", w.course_id),
        ("content_id", w.content_id),
        ("cohort_id", w.cohort_id),
        ("institution_id", institution_id),
    ];
    if !strings.iter().all(|(n, v)| string_ok(n, *v)) {
        return None;
    }
    let event_type = w.event_type?;
    if !schema.event_types.contains(event_type) {
        return None;
    }
    let event_id = Uuid::parse_str(w.event_id?).ok()?;
    let learner_id = Uuid::parse_str(learner_id?).ok()?;
    let position_sec = match w.position_sec {
        Some(p) => Some(u32::try_from(p).ok()?),
        None => None,
    };
    let props = match w.props {
        None => BTreeMap::new(),
        Some(m) => {
            let f = &schema.fields["props"];
            if f.max_keys.is_some_and(|k| m.len() > k) {
                return None;
            }
            let mut out = BTreeMap::new();
            for (k, v) in m {
                if k.is_empty() || f.max_key_len.is_some_and(|l| k.len() > l) || f.max_value_len.is_some_and(|l| v.len() > l) {
                    return None;
                }
                out.insert(k.to_owned(), v.to_owned());
            }
            out
        }
    };
    Some(ValidEvent {
        event_id,
        event_version: schema.version.clone(),
        event_type: event_type.to_owned(),
        learner_id,
        session_id: w.session_id.unwrap_or_default().to_owned(),
        course_id: w.course_id.unwrap_or_default().to_owned(),
        content_id: w.content_id.unwrap_or_default().to_owned(),
        cohort_id: w.cohort_id.unwrap_or_default().to_owned(),
        institution_id: institution_id.unwrap_or_default().to_owned(),
        position_sec,
        client_ts: w.client_ts?.0,
        server_ts: w.server_ts.map(|t| t.0),
        props,
    })
}
