//! Records -> events, on the lander's two decode threads.
//!
//! Invariant: decoding is pure (no I/O): every record read yields its events in
//! order, each either valid (taxonomy, protected attributes, `server_ts` set)
//! or refused with a typed reason and its bytes, never dropped. A record is one
//! event or an envelope of them, plain JSON or a zstd frame
//! ([`crate::envelope`]).

use chrono::{DateTime, Utc};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::governance::check_props_and_clock;
use crate::policy::ProtectedAttributes;
use crate::taxonomy::{Reason, Taxonomy, ValidEvent};

/// A message as read, decoded when its batch is prepared.
pub(super) struct Raw {
    pub(super) offset: i64,
    pub(super) key: Option<Vec<u8>>,
    pub(super) raw: Vec<u8>,
    pub(super) broker_ts: Option<DateTime<Utc>>,
}

/// Decoding and validation: pure, shared by the decode threads.
pub(super) struct Decoder {
    taxonomy: Taxonomy,
    protected: ProtectedAttributes,
    max_event_bytes: usize,
    clock_skew: Duration,
    /// The decode threads' queue (they end when the decoder is dropped).
    jobs: std::sync::mpsc::Sender<DecodeJob>,
}

type DecodeJob = (Arc<Decoder>, Vec<Raw>, tokio::sync::oneshot::Sender<Vec<Item>>);

/// Two long-lived decode threads. A batch's events are always allocated by the
/// same threads, so the allocator reuses the memory of the batches before
/// instead of faulting in fresh pages: spread over tokio's blocking pool (other
/// threads every time) 20k events took 30-460 ms to decode instead of 20-60 ms,
/// most of it zeroing new pages.
fn decode_threads() -> std::sync::mpsc::Sender<DecodeJob> {
    let (tx, rx) = std::sync::mpsc::channel::<DecodeJob>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..2 {
        let rx = rx.clone();
        std::thread::Builder::new()
            .name(format!("lander-decode-{i}"))
            .spawn(move || loop {
                let job = rx.lock().expect("decode queue").recv();
                let Ok((decoder, raws, done)) = job else { return };
                let mut out = Vec::with_capacity(raws.len());
                raws.into_iter().for_each(|r| decoder.decode(r, &mut out));
                let _ = done.send(out);
            })
            .expect("a decode thread starts");
    }
    tx
}

impl Decoder {
    /// A decoder and its decode threads.
    pub(super) fn new(taxonomy: Taxonomy, protected: ProtectedAttributes, max_event_bytes: usize, clock_skew: Duration) -> Arc<Decoder> {
        Arc::new(Decoder { taxonomy, protected, max_event_bytes, clock_skew, jobs: decode_threads() })
    }

    /// The protected attributes events are checked against (and dead letters redacted of).
    pub(super) fn protected(&self) -> &ProtectedAttributes {
        &self.protected
    }

    /// One record -> its events: a record is one event object or an envelope
    /// (a JSON array of events, see [`crate::envelope`]).
    fn decode(&self, m: Raw, out: &mut Vec<Item>) {
        let key: Option<Arc<[u8]>> = m.key.map(Into::into);
        use crate::envelope::{decode_value, DecodeError, MAX_DECODED_RECORD_BYTES};
        let (raw, refused) = match decode_value(&m.raw) {
            Ok(Some(json)) => (json, None),
            Ok(None) => (m.raw, None),
            Err(e) => (
                m.raw,
                Some(match e {
                    DecodeError::Corrupt => (Reason::InvalidEncoding, "payload is a zstd frame that does not decompress".to_string()),
                    DecodeError::Oversized => (Reason::Oversized, format!("compressed payload decodes to more than {MAX_DECODED_RECORD_BYTES} bytes")),
                }),
            ),
        };
        let raw = Arc::new(raw);
        let whole = 0..raw.len();
        let item = |index: Option<u32>, span: std::ops::Range<usize>, outcome| Item { offset: m.offset, index, key: key.clone(), raw: raw.clone(), span, outcome };
        if let Some(refusal) = refused {
            out.push(item(None, whole, Err(refusal)));
            return;
        }
        if raw.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            match serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(&raw) {
                Ok(events) if !events.is_empty() => {
                    for (ix, ev) in events.iter().enumerate() {
                        let start = ev.get().as_ptr() as usize - raw.as_ptr() as usize;
                        let span = start..start + ev.get().len();
                        let outcome = self.decode_event(&raw[span.clone()], m.broker_ts);
                        out.push(item(Some(ix as u32), span, outcome));
                    }
                }
                Ok(_) => out.push(item(None, whole, Err((Reason::SchemaViolation, "an envelope must hold at least one event".into())))),
                Err(_) => out.push(item(None, whole, Err((Reason::InvalidJson, "payload is not valid JSON".into())))),
            }
            return;
        }
        let outcome = self.decode_event(&raw, m.broker_ts);
        out.push(item(None, whole, outcome));
    }

    fn decode_event(&self, bytes: &[u8], broker_ts: Option<DateTime<Utc>>) -> Result<ValidEvent, (Reason, String)> {
        if bytes.len() > self.max_event_bytes {
            return Err((Reason::Oversized, format!("event is larger than {} bytes", self.max_event_bytes)));
        }
        let mut ev = self.taxonomy.validate_bytes(bytes).map_err(|r| (r.reason, r.detail))?;
        ev.server_ts.get_or_insert_with(|| broker_ts.unwrap_or_else(Utc::now));
        check_props_and_clock(&mut ev, &self.protected, self.clock_skew, &Default::default())?;
        Ok(ev)
    }

    /// Decode a batch off the async runtime on the decode threads, split in two
    /// halves by decoded bytes when it is large, keeping order.
    pub(super) async fn decode_all(self: &Arc<Self>, mut raws: Vec<Raw>) -> Vec<Item> {
        let run = |part: Vec<Raw>| {
            let (done, out) = tokio::sync::oneshot::channel();
            self.jobs.send((self.clone(), part, done)).expect("the decode threads run while the decoder lives");
            out
        };
        let size = |r: &Raw| crate::envelope::decoded_len(&r.raw);
        let total: usize = raws.iter().map(size).sum();
        if total < 512 * 1024 || raws.len() < 2 {
            return run(raws).await.expect("decode thread");
        }
        let mut acc = 0;
        let cut = raws.iter().position(|r| {
            acc += size(r);
            acc >= total / 2
        });
        let cut = cut.map_or(raws.len() / 2, |c| (c + 1).min(raws.len() - 1)).max(1);
        let second = raws.split_off(cut);
        let (first, second) = tokio::join!(run(raws), run(second));
        let mut out = first.expect("decode thread");
        out.extend(second.expect("decode thread"));
        out
    }
}

/// One event of a record (a record holds one, or many when it is an envelope).
pub(super) struct Item {
    pub(super) offset: i64,
    /// The event's position in its envelope; `None` for a single-event record.
    pub(super) index: Option<u32>,
    /// The record's key (shared by an envelope's events).
    pub(super) key: Option<Arc<[u8]>>,
    /// The whole record (decompressed); `span` is this event's bytes in it.
    raw: Arc<Vec<u8>>,
    span: std::ops::Range<usize>,
    pub(super) outcome: Result<ValidEvent, (Reason, String)>,
}

impl Item {
    pub(super) fn bytes(&self) -> &[u8] {
        &self.raw[self.span.clone()]
    }

    /// The valid event's deduplication key (its client time and id).
    pub(super) fn event_key(&self) -> Option<crate::dedup::EventKey> {
        self.outcome.as_ref().ok().map(|ev| crate::dedup::EventKey::new(ev.client_ts, ev.event_id))
    }
}
