//! The hash chain: canonical encoding of an audit row and its hash.
//!
//! `hash = SHA-256(prev_hash || canonical(row))` where `canonical(row)` is the
//! compact JSON array
//! `[seq, at, request_id, actor, roles, institution, action, target, purpose,
//!   justification, outcome, detail]`, `at` as RFC 3339 UTC with microseconds,
//! absent values as `null`, and `detail` with object keys sorted bytewise at
//! every depth. The first row's `prev_hash` is 32 zero bytes.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const GENESIS: [u8; 32] = [0u8; 32];

/// The fields covered by the hash, borrowed from a row.
pub struct Row<'a> {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub request_id: Uuid,
    pub actor: &'a str,
    pub roles: &'a [String],
    pub institution: Option<&'a str>,
    pub action: &'a str,
    pub target: Option<Uuid>,
    pub purpose: Option<&'a str>,
    pub justification: Option<&'a str>,
    pub outcome: &'a str,
    pub detail: &'a Value,
}

pub fn format_at(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k).expect("string serialises");
                out.push(b':');
                write_canonical(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("scalar serialises"),
    }
}

pub fn canonical(row: &Row<'_>) -> Vec<u8> {
    let head = serde_json::json!([
        row.seq,
        format_at(&row.at),
        row.request_id,
        row.actor,
        row.roles,
        row.institution,
        row.action,
        row.target,
        row.purpose,
        row.justification,
        row.outcome,
    ]);
    let mut out = serde_json::to_vec(&head).expect("json serialises");
    out.pop(); // reopen the array to append the canonical detail
    out.push(b',');
    write_canonical(row.detail, &mut out);
    out.push(b']');
    out
}

pub fn hash(prev: &[u8], row: &Row<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical(row));
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(detail: &'a Value, roles: &'a [String]) -> Row<'a> {
        Row {
            seq: 1,
            at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            request_id: Uuid::nil(),
            actor: "dpo-1",
            roles,
            institution: Some("uni"),
            action: "pseudonym.resolve",
            target: None,
            purpose: Some("safeguarding"),
            justification: None,
            outcome: "success",
            detail,
        }
    }

    #[test]
    fn canonical_sorts_detail_keys_and_is_stable() {
        let roles = vec!["dpo".to_string()];
        let a = serde_json::json!({"b": 1, "a": {"z": true, "y": [1, 2]}});
        let c = canonical(&row(&a, &roles));
        let s = String::from_utf8(c).unwrap();
        assert_eq!(
            s,
            r#"[1,"2023-11-14T22:13:20.123456Z","00000000-0000-0000-0000-000000000000","dpo-1",["dpo"],"uni","pseudonym.resolve",null,"safeguarding",null,"success",{"a":{"y":[1,2],"z":true},"b":1}]"#
        );
    }

    #[test]
    fn hash_depends_on_prev_and_every_field() {
        let roles = vec!["dpo".to_string()];
        let d = serde_json::json!({});
        let h1 = hash(&GENESIS, &row(&d, &roles));
        assert_ne!(h1, hash(&[1u8; 32], &row(&d, &roles)));
        let mut r = row(&d, &roles);
        r.outcome = "denied";
        assert_ne!(h1, hash(&GENESIS, &r));
    }
}
