//! The versioned event taxonomy (`policies/taxonomy/*.yaml`) and validation at
//! the gate.
//!
//! Invariant: an event reaches the warehouse only as a [`ValidEvent`], produced
//! by [`Taxonomy::validate`] (or [`Taxonomy::validate_bytes`], whose fast path
//! accepts only what `validate` accepts) against the schema of the version it declares.

pub mod check;
pub mod fast;
pub mod json;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum TaxonomyError {
    #[error("cannot read {path}: {message}")]
    Load { path: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    Uuid,
    String,
    EventType,
    Uint32,
    TimestampMs,
    Map,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Field {
    #[serde(rename = "type")]
    pub ty: FieldType,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub nullable: bool,
    pub max_len: Option<usize>,
    pub max_keys: Option<usize>,
    pub max_key_len: Option<usize>,
    pub max_value_len: Option<usize>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Schema {
    pub version: String,
    pub event_types: BTreeSet<String>,
    pub fields: BTreeMap<String, Field>,
}

/// Every known version.
#[derive(Debug, Clone)]
pub struct Taxonomy {
    pub versions: BTreeMap<String, Schema>,
    /// Versions the fast path ([`fast`]) can validate.
    fast: BTreeSet<String>,
}

/// Why an event was refused: the dead-letter reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    InvalidJson,
    /// A compressed record that does not decompress (see `envelope`).
    InvalidEncoding,
    SchemaViolation,
    UnknownVersion,
    UnknownEventType,
    UnknownPseudonym,
    ErasedSubject,
    NoConsent,
    ProtectedAttribute,
    /// A free string or a `props` value holds an email address, a phone number or the
    /// request's own external id (identities go to the vault, never into events).
    IdentityInEvent,
    Oversized,
    WarehouseRejected,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidJson => "invalid_json",
            Reason::InvalidEncoding => "invalid_encoding",
            Reason::SchemaViolation => "schema_violation",
            Reason::UnknownVersion => "unknown_version",
            Reason::UnknownEventType => "unknown_event_type",
            Reason::UnknownPseudonym => "unknown_pseudonym",
            Reason::ErasedSubject => "erased_subject",
            Reason::NoConsent => "no_consent",
            Reason::ProtectedAttribute => "protected_attribute",
            Reason::IdentityInEvent => "identity_in_event",
            Reason::Oversized => "oversized",
            Reason::WarehouseRejected => "warehouse_rejected",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    /// Names fields and rules, never values.
    pub detail: String,
}

fn reject(reason: Reason, detail: impl Into<String>) -> Rejection {
    Rejection { reason, detail: detail.into() }
}

/// A validated event, ready to land.
#[derive(Debug, Clone, Serialize)]
pub struct ValidEvent {
    pub event_id: Uuid,
    pub event_version: String,
    pub event_type: String,
    pub learner_id: Uuid,
    pub session_id: String,
    pub course_id: String,
    pub content_id: String,
    pub cohort_id: String,
    pub institution_id: String,
    pub position_sec: Option<u32>,
    pub client_ts: DateTime<Utc>,
    pub server_ts: Option<DateTime<Utc>>,
    pub props: BTreeMap<String, String>,
}

pub fn parse_ts(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::Number(n) => n.as_i64().and_then(ts_from_ms),
        Value::String(s) => ts_from_rfc3339(s),
        _ => None,
    }
}

fn ts_in_range(t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    Some(t).filter(|t| t.timestamp() > 946_684_800 && t.timestamp() < 4_102_444_800) // 2000..2100
}

fn ts_from_ms(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single().and_then(ts_in_range)
}

fn ts_from_rfc3339(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc)).and_then(ts_in_range)
}

impl Taxonomy {
    pub fn load(dir: &Path) -> Result<Taxonomy, TaxonomyError> {
        let err = |path: &Path, message: String| TaxonomyError::Load { path: path.display().to_string(), message };
        let mut versions = BTreeMap::new();
        let entries = std::fs::read_dir(dir).map_err(|e| err(dir, e.to_string()))?;
        for entry in entries {
            let path = entry.map_err(|e| err(dir, e.to_string()))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| err(&path, e.to_string()))?;
            let schema: Schema = serde_yaml::from_str(&text).map_err(|e| err(&path, e.to_string()))?;
            if path.file_stem().and_then(|s| s.to_str()) != Some(schema.version.as_str()) {
                return Err(err(&path, format!("file name must be {}.yaml", schema.version)));
            }
            for required in ["event_id", "event_version", "event_type", "learner_id", "client_ts"] {
                if !schema.fields.get(required).is_some_and(|f| f.required) {
                    return Err(err(&path, format!("field {required} must be present and required")));
                }
            }
            versions.insert(schema.version.clone(), schema);
        }
        if versions.is_empty() {
            return Err(err(dir, "no taxonomy versions".into()));
        }
        let fast = versions.values().filter(|s| fast::eligible(s)).map(|s| s.version.clone()).collect();
        Ok(Taxonomy { versions, fast })
    }

    /// Validate an event from its JSON bytes: the fast path when it can prove
    /// the event valid, else the generic validator (which names the reason).
    pub fn validate_bytes(&self, bytes: &[u8]) -> Result<ValidEvent, Rejection> {
        if let Some(ev) = fast::validate(self, bytes) {
            return Ok(ev);
        }
        let v: Value = serde_json::from_slice(bytes).map_err(|_| reject(Reason::InvalidJson, "payload is not valid JSON"))?;
        self.validate(&v)
    }

    pub fn latest(&self) -> &Schema {
        self.versions.values().max_by(|a, b| version_key(&a.version).cmp(&version_key(&b.version))).expect("non-empty")
    }

    /// Validate one decoded event against the schema of the version it declares.
    pub fn validate(&self, v: &Value) -> Result<ValidEvent, Rejection> {
        let obj = v.as_object().ok_or_else(|| reject(Reason::SchemaViolation, "an event must be a JSON object"))?;
        let version = match obj.get("event_version") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(reject(Reason::SchemaViolation, "event_version must be a string")),
            None => return Err(reject(Reason::SchemaViolation, "event_version is required")),
        };
        let schema = self.versions.get(version).ok_or_else(|| reject(Reason::UnknownVersion, "event_version is not a known taxonomy version"))?;
        if let Some(extra) = obj.keys().find(|k| !schema.fields.contains_key(*k)) {
            let shown: String = extra.chars().take(64).collect();
            return Err(reject(Reason::SchemaViolation, format!("unknown field {shown:?} (put long-tail properties in props)")));
        }
        for (name, field) in &schema.fields {
            match obj.get(name) {
                None | Some(Value::Null) if field.required && !(field.nullable && obj.contains_key(name)) => {
                    return Err(reject(Reason::SchemaViolation, format!("{name} is required")))
                }
                None | Some(Value::Null) => {}
                Some(value) => check_field(name, field, value, schema)?,
            }
        }
        let s = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let props = match obj.get("props") {
            Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect(),
            _ => BTreeMap::new(),
        };
        Ok(ValidEvent {
            event_id: Uuid::parse_str(&s("event_id")).expect("checked"),
            event_version: version.clone(),
            event_type: s("event_type"),
            learner_id: Uuid::parse_str(&s("learner_id")).expect("checked"),
            session_id: s("session_id"),
            course_id: s("course_id"),
            content_id: s("content_id"),
            cohort_id: s("cohort_id"),
            institution_id: s("institution_id"),
            position_sec: obj.get("position_sec").and_then(Value::as_u64).map(|p| p as u32),
            client_ts: parse_ts(&obj["client_ts"]).expect("checked"),
            server_ts: obj.get("server_ts").and_then(parse_ts),
            props,
        })
    }
}

fn check_field(name: &str, f: &Field, v: &Value, schema: &Schema) -> Result<(), Rejection> {
    let bad = |what: &str| Err(reject(Reason::SchemaViolation, format!("{name} {what}")));
    match f.ty {
        FieldType::Uuid => match v.as_str().map(Uuid::parse_str) {
            Some(Ok(_)) => Ok(()),
            _ => bad("must be a UUID"),
        },
        FieldType::String => match v.as_str() {
            Some(s) if f.max_len.is_some_and(|m| s.len() > m) => bad("is too long"),
            Some(s) if s.chars().any(char::is_control) => bad("contains control characters"),
            Some(_) => Ok(()),
            None => bad("must be a string"),
        },
        FieldType::EventType => match v.as_str() {
            Some(t) if schema.event_types.contains(t) => Ok(()),
            Some(_) => Err(reject(Reason::UnknownEventType, format!("{name} is not an event type of taxonomy {}", schema.version))),
            None => bad("must be a string"),
        },
        FieldType::Uint32 => match v.as_u64() {
            Some(n) if n <= u32::MAX as u64 => Ok(()),
            _ => bad("must be an unsigned 32-bit integer"),
        },
        FieldType::TimestampMs => match parse_ts(v) {
            Some(_) => Ok(()),
            None => bad("must be an RFC 3339 timestamp or epoch milliseconds (years 2000-2100)"),
        },
        FieldType::Map => {
            let Some(m) = v.as_object() else { return bad("must be an object of strings") };
            check_map(name, f, m)
        }
    }
}

fn check_map(name: &str, f: &Field, m: &Map<String, Value>) -> Result<(), Rejection> {
    let bad = |what: &str| Err(reject(Reason::SchemaViolation, format!("{name} {what}")));
    if f.max_keys.is_some_and(|k| m.len() > k) {
        return bad("has too many keys");
    }
    for (k, v) in m {
        if k.is_empty() || f.max_key_len.is_some_and(|l| k.len() > l) {
            return bad("has an empty or too long key");
        }
        match v.as_str() {
            Some(s) if f.max_value_len.is_some_and(|l| s.len() > l) => return bad("has a value that is too long"),
            Some(_) => {}
            None => return bad("values must be strings"),
        }
    }
    Ok(())
}

/// "2.10" sorts after "2.9".
pub fn version_key(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// The repository's taxonomy (for every module's tests).
    pub(crate) fn tax() -> Taxonomy {
        Taxonomy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/taxonomy")).unwrap()
    }

    fn good() -> Value {
        json!({"event_id": Uuid::new_v4(), "event_version": "2.3", "event_type": "interact.replay",
               "learner_id": Uuid::new_v4(), "course_id": "cs101", "content_id": "v1", "cohort_id": "c1",
               "institution_id": "uni", "position_sec": 95, "client_ts": 1_764_000_000_000i64, "props": {"speed": "1.5"}})
    }

    #[test]
    fn accepts_a_good_event_and_nullable_position() {
        let t = tax();
        let e = t.validate(&good()).unwrap();
        assert_eq!(e.position_sec, Some(95));
        let mut g = good();
        g["position_sec"] = Value::Null;
        assert_eq!(t.validate(&g).unwrap().position_sec, None);
    }

    #[test]
    fn refuses_with_typed_reasons() {
        let t = tax();
        let case = |f: &dyn Fn(&mut Value)| {
            let mut g = good();
            f(&mut g);
            t.validate(&g).unwrap_err().reason
        };
        assert_eq!(case(&|g| g["event_version"] = json!("9.9")), Reason::UnknownVersion);
        assert_eq!(case(&|g| g["event_type"] = json!("content.teleport")), Reason::UnknownEventType);
        assert_eq!(case(&|g| g["position_sec"] = json!("ninety")), Reason::SchemaViolation);
        assert_eq!(case(&|g| g["learner_id"] = json!("bob@example.edu")), Reason::SchemaViolation);
        assert_eq!(case(&|g| g["course_id"] = json!("x".repeat(500))), Reason::SchemaViolation);
        assert_eq!(case(&|g| g["client_ts"] = json!("yesterday")), Reason::SchemaViolation);
        assert_eq!(case(&|g| g["props"] = json!({"k": 1})), Reason::SchemaViolation);
        assert_eq!(
            case(&|g| {
                let c = g["course_id"].take();
                g.as_object_mut().unwrap().remove("course_id");
                g["courseId"] = c;
            }),
            Reason::SchemaViolation,
            "a renamed field is refused"
        );
        assert_eq!(t.validate(&json!([1])).unwrap_err().reason, Reason::SchemaViolation);
    }

    #[test]
    fn rejection_details_never_echo_values() {
        let t = tax();
        let mut g = good();
        g["learner_id"] = json!("leak@example.edu");
        assert!(!t.validate(&g).unwrap_err().detail.contains("leak@"));
    }

    /// Edits of a valid event at the edges of the fields both wire forms share: the cases
    /// on which two readings of an event (the fast path and the generic validator, the
    /// gateway's typed read and its generic one) must agree. Each test adds its own.
    pub(crate) fn edge_edits() -> Vec<Box<dyn Fn(&mut Value)>> {
        vec![
            Box::new(|g| g["position_sec"] = Value::Null),
            Box::new(|g| {
                g.as_object_mut().unwrap().remove("position_sec");
            }),
            Box::new(|g| g["position_sec"] = json!(4_294_967_296u64)),
            Box::new(|g| g["position_sec"] = json!(-1)),
            Box::new(|g| g["position_sec"] = json!(5.0)),
            Box::new(|g| g["client_ts"] = Value::Null),
            Box::new(|g| g["server_ts"] = Value::Null),
            Box::new(|g| g["server_ts"] = json!("not a time")),
            Box::new(|g| g["course_id"] = json!("x".repeat(129))),
            Box::new(|g| g["course_id"] = json!("tab\there")),
            Box::new(|g| g["course_id"] = json!("quote\"d")),
            Box::new(|g| g["course_id"] = json!("é-ünïcode")),
            Box::new(|g| g["course_id"] = Value::Null),
            Box::new(|g| g["session_id"] = Value::Null),
            Box::new(|g| g["event_type"] = json!("content.teleport")),
            Box::new(|g| g["event_version"] = json!("9.9")),
            Box::new(|g| g["props"] = Value::Null),
            Box::new(|g| g["props"] = json!({"k": 1})),
            Box::new(|g| g["props"] = json!({"": "v"})),
            Box::new(|g| g["props"] = json!({"k": "v".repeat(1025)})),
            Box::new(|g| g["extra"] = json!("field")),
        ]
    }

    /// `good()` with every optional field set.
    fn full() -> Value {
        let mut g = good();
        g["session_id"] = json!("s-1");
        g["server_ts"] = json!("2026-11-25T13:55:03.123Z");
        g
    }

    /// The fast path accepts exactly what the generic validator accepts, with the same result.
    #[test]
    fn fast_and_generic_paths_agree() {
        let t = tax();
        assert!(t.fast.contains("2.3"), "the shipped version takes the fast path");
        let mut cases: Vec<Value> = vec![full()];
        let mut edits = edge_edits();
        let own: Vec<Box<dyn Fn(&mut Value)>> = vec![
            Box::new(|g| g["position_sec"] = json!("5")),
            Box::new(|g| g["client_ts"] = json!("2026-11-25T13:55:03+01:00")),
            Box::new(|g| g["client_ts"] = json!(1.5e12)),
            Box::new(|g| g["client_ts"] = json!(1)),
            Box::new(|g| g["course_id"] = json!("x".repeat(128))),
            Box::new(|g| {
                g.as_object_mut().unwrap().remove("content_id");
            }),
            Box::new(|g| g["event_version"] = json!(2.3)),
            Box::new(|g| g["learner_id"] = json!("not-a-uuid")),
            Box::new(|g| g["learner_id"] = json!(Uuid::new_v4().simple().to_string())),
            Box::new(|g| g["props"] = json!({})),
            Box::new(|g| g["props"] = json!((0..65).map(|i| (i.to_string(), json!("v"))).collect::<Map<String, Value>>())),
        ];
        edits.extend(own);
        for e in &edits {
            let mut g = full();
            e(&mut g);
            cases.push(g);
        }
        for case in &cases {
            let bytes = serde_json::to_vec(case).unwrap();
            let generic = t.validate(case).map_err(|r| r.reason);
            let fast = fast::validate(&t, &bytes);
            match (&generic, &fast) {
                (Ok(a), Some(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "{case}"),
                (Err(_), Some(b)) => panic!("fast path accepted what the generic validator refuses: {case} -> {b:?}"),
                (_, None) => {}
            }
            assert_eq!(t.validate_bytes(&bytes).map_err(|r| r.reason).map(|e| format!("{e:?}")), generic.map(|e| format!("{e:?}")), "{case}");
        }
        // Duplicate keys: both keep the last value (the fast path defers).
        let dup = br#"{"event_id": "00000000-0000-4000-8000-000000000001", "event_version": "2.3", "event_type": "content.view", "learner_id": "00000000-0000-4000-8000-000000000002", "course_id": "a", "course_id": "b", "cohort_id": "c", "institution_id": "u", "client_ts": 1764000000000}"#;
        assert_eq!(t.validate_bytes(dup).unwrap().course_id, "b");
        assert_eq!(t.validate_bytes(b"{not json").unwrap_err().reason, Reason::InvalidJson);
        // The good event does take the fast path.
        assert!(fast::validate(&t, &serde_json::to_vec(&full()).unwrap()).is_some());
    }
}
