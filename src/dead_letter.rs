//! The dead-letter record and its producer: one shape for both writers (the gateway and
//! the lander), so operators, subject access and `dlq replay` read one format.
//!
//! Invariants:
//! * a dead letter is `{reason, detail, stage, failed_at, redacted, payload | payload_base64}`,
//!   plus where the lander read it (`topic`, `partition`, `offset`, `index`);
//! * its payload and detail went through [`crate::redact`] in [`DeadLetter::new`], the one
//!   place a dead letter is built: `payload` is the redacted JSON when the refused bytes were
//!   JSON, the redacted text when they were other UTF-8; `payload_base64` carries bytes that
//!   are not UTF-8 (what the lander could not read at all);
//! * it is keyed by the learner's pseudonym when one is known, else unkeyed (a third-party
//!   producer's record key is kept only when it is a pseudonym).

use chrono::Utc;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use std::time::Duration;

use crate::redact::Context;

/// Which gate refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Gateway,
    Lander,
}

/// Where the lander read a refused event: its record, and its position in an envelope.
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub index: Option<u32>,
}

/// What was refused, as the writer has it.
pub enum Refused<'a> {
    /// The bytes read (the lander).
    Bytes(&'a [u8]),
    /// An event already parsed, identity fields removed (the gateway).
    Json(Value),
}

/// A dead letter built and redacted, ready to produce.
pub struct DeadLetter {
    body: Vec<u8>,
    key: Option<String>,
}

impl DeadLetter {
    /// Build the record of `refused`, redacted with `cx`. Its key: `learner` when known, else
    /// the pseudonym the redacted payload names, else `record_key` when it is a pseudonym.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        reason: &str,
        detail: &str,
        stage: Stage,
        origin: Option<&Origin<'_>>,
        refused: Refused<'_>,
        cx: &Context<'_>,
        learner: Option<uuid::Uuid>,
        record_key: Option<&[u8]>,
    ) -> DeadLetter {
        let (payload, redacted) = match refused {
            Refused::Json(mut v) => {
                let r = crate::redact::redact_value(&mut v, cx);
                (Ok(v), r)
            }
            Refused::Bytes(b) if std::str::from_utf8(b).is_ok() => {
                let (v, r) = crate::redact::redact_bytes(b, cx);
                (Ok(v), r)
            }
            Refused::Bytes(b) => (Err(b), Vec::new()),
        };
        let (detail, _) = crate::redact::redact_text(detail, cx);
        let mut rec = json!({
            "reason": reason,
            "detail": detail,
            "stage": match stage { Stage::Gateway => "gateway", Stage::Lander => "lander" },
            "failed_at": Utc::now().to_rfc3339(),
            "redacted": redacted,
        });
        if let Some(o) = origin {
            rec["topic"] = json!(o.topic);
            rec["partition"] = json!(o.partition);
            rec["offset"] = json!(o.offset);
            rec["index"] = json!(o.index);
        }
        let key = learner.map(|l| l.to_string()).or_else(|| payload.as_ref().ok().and_then(crate::redact::dead_letter_key)).or_else(|| {
            record_key.and_then(|k| std::str::from_utf8(k).ok()).and_then(|k| uuid::Uuid::parse_str(k).ok()).map(|l| l.to_string())
        });
        match payload {
            Ok(v) => rec["payload"] = v,
            Err(bytes) => {
                use base64::Engine;
                rec["payload_base64"] = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
            }
        }
        DeadLetter { body: serde_json::to_vec(&rec).expect("json"), key }
    }

    /// The record's key (a pseudonym), if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

/// The dead-letter topic's producer (acks=all, as every learnvault producer).
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetters {
    pub fn new(producer: FutureProducer, topic: &str) -> DeadLetters {
        DeadLetters { producer, topic: topic.to_owned() }
    }

    /// Produce one dead letter and wait for the broker's acknowledgement (within the
    /// producer's `message.timeout.ms`).
    pub async fn send(&self, dl: &DeadLetter) -> Result<(), KafkaError> {
        let mut record = FutureRecord::to(&self.topic).payload(&dl.body);
        if let Some(k) = &dl.key {
            record = record.key(k);
        }
        self.producer.send(record, Duration::from_secs(0)).await.map(|_| ()).map_err(|(e, _)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(dl: &DeadLetter) -> Value {
        serde_json::from_slice(&dl.body).unwrap()
    }

    #[test]
    fn both_writers_build_one_shape_redacted_and_keyed_by_pseudonym() {
        let p = uuid::Uuid::new_v4();
        let ev = json!({"event_id": "e", "learner_id": p, "props": {"note": "call ada@example.org"}});
        let cx = Context::default();
        let gw = DeadLetter::new("identity_in_event", "props.note holds an email", Stage::Gateway, None, Refused::Json(ev.clone()), &cx, None, None);
        let bytes = serde_json::to_vec(&ev).unwrap();
        let origin = Origin { topic: "t", partition: 2, offset: 7, index: Some(1) };
        let ld = DeadLetter::new("identity_in_event", "x", Stage::Lander, Some(&origin), Refused::Bytes(&bytes), &cx, None, Some(b"not-a-uuid"));
        for (dl, stage) in [(&gw, "gateway"), (&ld, "lander")] {
            let v = built(dl);
            assert_eq!(v["stage"], stage);
            assert_eq!(v["payload"]["learner_id"], json!(p), "the payload is JSON: {v}");
            assert!(!v.to_string().contains("ada@example.org"), "{v}");
            assert_eq!(v["redacted"][0]["path"], "$.props.note", "{v}");
            assert_eq!(dl.key(), Some(p.to_string().as_str()));
        }
        assert_eq!((built(&ld)["partition"].clone(), built(&ld)["index"].clone()), (json!(2), json!(1)));
        // Not UTF-8: kept as base64; a non-pseudonym record key is dropped.
        let raw = DeadLetter::new("invalid_json", "x", Stage::Lander, Some(&origin), Refused::Bytes(&[0xff, 0xfe]), &cx, None, Some(b"ada"));
        assert_eq!(built(&raw)["payload_base64"], "//4=");
        assert_eq!(raw.key(), None);
        // Text that is not JSON: redacted text.
        let text = DeadLetter::new("invalid_json", "x", Stage::Lander, None, Refused::Bytes(b"{oops ada@example.org"), &cx, None, None);
        assert_eq!(built(&text)["payload"], "{oops <redacted:email>");
    }
}
