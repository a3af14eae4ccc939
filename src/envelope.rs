//! The `learning-events` record contract.
//!
//! A record's value is either **one event** (a JSON object) keyed by its
//! learner's pseudonym, or an **envelope**: a JSON array of events whose
//! learners all map to the record's partition, keyed by the first event's
//! pseudonym. Both put every event of a learner on the partition Kafka's Java
//! client (and librdkafka's `murmur2_random`) picks for the pseudonym, so
//! per-learner order holds whichever form a producer uses.
//!
//! What a third-party producer sends is the first form: one JSON event per
//! record, keyed by pseudonym, with Kafka's own batch compression if it wants
//! (lz4 or zstd). The gateway produces envelopes by default
//! (`LEARNVAULT_RECORD_FORMAT=envelope`; `single` produces the first form):
//! it packs each request's events into one record per partition (what
//! Snowplow's collector does with its payloads), so the broker and the lander
//! handle tens of records per request instead of hundreds. Measured again on
//! Apache Kafka 4.1.1 (BENCHMARKS.md, session 5), envelopes still land 23-35%
//! more events per second than single records with lz4 or zstd batch
//! compression, with lower freshness. The lander reads both forms, whatever
//! the setting; a refused event of an envelope is dead-lettered alone, with its
//! index in the record.
//!
//! Either form may be sent as one **zstd frame** (recognised by its magic
//! number, `28 b5 2f fd`; JSON never starts with that byte): the gateway and
//! learnvault's producers compress each envelope (`LEARNVAULT_ENVELOPE_COMPRESSION`,
//! `zstd` by default), so the broker stores, copies and serves a sixth of the
//! bytes. This is compression of the record's value, not Kafka's batch
//! compression (set `LEARNVAULT_PRODUCE_COMPRESSION=none` with it: nothing is
//! compressed twice). A frame that does
//! not decompress, or that holds more than [`MAX_DECODED_RECORD_BYTES`], is
//! dead-lettered whole (`invalid_encoding`, `oversized`).

/// The configuration every learnvault producer starts from: `acks=all`, the
/// given compression, and Java-compatible murmur2 partitioning, so keyed single
/// events and envelopes agree on partitions. Callers add their own tuning.
pub fn producer_config(brokers: &str, compression: &str) -> rdkafka::config::ClientConfig {
    let mut c = rdkafka::config::ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("acks", "all")
        // A retried produce (a broker restarted, a lost acknowledgement) is written once.
        .set("enable.idempotence", "true")
        .set("compression.type", compression)
        .set("partitioner", "murmur2_random");
    c
}

/// Largest envelope value the gateway builds (the broker default limit is 1 MB).
pub const MAX_ENVELOPE_BYTES: usize = 512 * 1024;

/// Kafka's murmur2 (as `org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() == 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default (Java) partitioner gives `key` among `partitions`.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// What one record of `learning-events` holds, as the gateway and `bench lander` produce it.
/// The lander reads both forms (and either compression) whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordFormat {
    /// One JSON event per record, keyed by its pseudonym: what kcat, ClickHouse's Kafka
    /// engine, Kafka Connect and any third-party producer or consumer expect.
    Single,
    /// One record per partition per request holding a JSON array of events (see the module doc).
    Envelope,
}

impl std::fmt::Display for RecordFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RecordFormat::Single => "single",
            RecordFormat::Envelope => "envelope",
        })
    }
}

/// How learnvault's producers encode a record's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Plain JSON.
    None,
    /// One zstd frame (level 1) holding the JSON, its size in the frame header.
    Zstd,
}

/// zstd's frame magic number as it starts a record's value.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Largest value a compressed record may decompress to.
pub const MAX_DECODED_RECORD_BYTES: usize = 16 * 1024 * 1024;

/// Why a compressed record's value cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame does not decompress.
    Corrupt,
    /// It decompresses to more than [`MAX_DECODED_RECORD_BYTES`].
    Oversized,
}

/// A record's value as JSON bytes: `Some` with the decompressed bytes of a zstd
/// frame, `None` when the value is not compressed (use it as it is).
pub fn decode_value(raw: &[u8]) -> Result<Option<Vec<u8>>, DecodeError> {
    if !raw.starts_with(&ZSTD_MAGIC) {
        return Ok(None);
    }
    let declared = match zstd::zstd_safe::get_frame_content_size(raw) {
        Ok(Some(n)) if n > MAX_DECODED_RECORD_BYTES as u64 => return Err(DecodeError::Oversized),
        Ok(Some(n)) => n as usize,
        // No size in the header (learnvault's producers always write it): read at most one byte past the bound.
        Ok(None) => {
            use std::io::Read;
            let mut out = Vec::new();
            zstd::stream::read::Decoder::with_buffer(raw)
                .map_err(|_| DecodeError::Corrupt)?
                .take(MAX_DECODED_RECORD_BYTES as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|_| DecodeError::Corrupt)?;
            return if out.len() > MAX_DECODED_RECORD_BYTES { Err(DecodeError::Oversized) } else { Ok(Some(out)) };
        }
        Err(_) => return Err(DecodeError::Corrupt),
    };
    thread_local! {
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
    }
    let decompressor = || zstd::bulk::Decompressor::new().map_err(|_| DecodeError::Corrupt);
    // A frame holding more than its header declares does not fit: corrupt.
    with_cached(&DCTX, decompressor, |d| d.decompress(raw, declared).map(Some).map_err(|_| DecodeError::Corrupt))?
}

/// `f` on this thread's `T` in `slot`, made by `init` at its first use (a zstd context
/// is worth keeping: making one costs more than compressing a small record).
fn with_cached<T, E, R>(
    slot: &'static std::thread::LocalKey<std::cell::RefCell<Option<T>>>,
    init: impl FnOnce() -> Result<T, E>,
    f: impl FnOnce(&mut T) -> R,
) -> Result<R, E> {
    slot.with(|cell| {
        let mut cell = cell.borrow_mut();
        let t = match &mut *cell {
            Some(t) => t,
            empty => empty.insert(init()?),
        };
        Ok(f(t))
    })
}

/// The size a record's value takes once decoded (from the zstd frame header; a frame
/// without one counts as the largest it may decode to), for bounding batches in memory.
pub fn decoded_len(raw: &[u8]) -> usize {
    if !raw.starts_with(&ZSTD_MAGIC) {
        return raw.len();
    }
    match zstd::zstd_safe::get_frame_content_size(raw) {
        Ok(Some(n)) => (n as usize).min(MAX_DECODED_RECORD_BYTES),
        _ => MAX_DECODED_RECORD_BYTES,
    }
}

/// `value` encoded as `compression` says.
pub fn encode_value(value: Vec<u8>, compression: Compression) -> Vec<u8> {
    if compression == Compression::None {
        return value;
    }
    thread_local! {
        static CCTX: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
    }
    with_cached(&CCTX, || zstd::bulk::Compressor::new(1), |c| c.compress(&value))
        .expect("a zstd context")
        .expect("zstd compresses any input")
}

/// One record to produce: an envelope of events for `partition`.
#[derive(Debug)]
pub struct Envelope {
    pub partition: i32,
    /// The first event's pseudonym (it maps to `partition`).
    pub key: String,
    /// A JSON array of the events' serialised objects.
    pub value: Vec<u8>,
    /// Positions (caller's indices) of the events in this envelope, in order.
    pub members: Vec<usize>,
}

/// Pack serialised events `(caller index, pseudonym, json object)` into
/// envelopes: one or more per partition, each at most [`MAX_ENVELOPE_BYTES`]
/// of JSON (a single larger event gets an envelope of its own), events in
/// input order, each value encoded as `compression` says.
pub fn pack<'a>(
    events: impl IntoIterator<Item = (usize, &'a str, &'a [u8])>,
    partitions: i32,
    compression: Compression,
) -> Vec<Envelope> {
    let mut open: std::collections::BTreeMap<i32, Envelope> = std::collections::BTreeMap::new();
    let mut done = Vec::new();
    for (ix, key, body) in events {
        let p = partition_for(key.as_bytes(), partitions);
        if let Some(env) = open.get(&p) {
            if env.value.len() + body.len() + 2 > MAX_ENVELOPE_BYTES {
                done.push(close(open.remove(&p).expect("present"), compression));
            }
        }
        let env = open.entry(p).or_insert_with(|| Envelope {
            partition: p,
            key: key.to_owned(),
            value: vec![b'['],
            members: Vec::new(),
        });
        if !env.members.is_empty() {
            env.value.push(b',');
        }
        env.value.extend_from_slice(body);
        env.members.push(ix);
    }
    done.extend(open.into_values().map(|e| close(e, compression)));
    done
}

fn close(mut env: Envelope, compression: Compression) -> Envelope {
    env.value.push(b']');
    env.value = encode_value(env.value, compression);
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Vectors from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58897971
        );
        assert_eq!(murmur2(b"abc"), 479470107);
    }

    #[test]
    fn pack_groups_by_partition_and_bounds_size() {
        let keys: Vec<String> = (0..200).map(|i| format!("learner-{i}")).collect();
        let big = vec![b'x'; 200 * 1024];
        let evs = keys.iter().enumerate().map(|(i, k)| {
            (
                i,
                k.as_str(),
                if i % 50 == 0 { &big[..] } else { &b"{}"[..] },
            )
        });
        let envs = pack(evs, 6, Compression::None);
        let mut seen = vec![false; keys.len()];
        for e in &envs {
            assert!(e.value.len() <= MAX_ENVELOPE_BYTES + 2, "bounded");
            assert_eq!(partition_for(e.key.as_bytes(), 6), e.partition);
            assert!(
                e.members.windows(2).all(|w| w[0] < w[1]),
                "input order kept"
            );
            for &m in &e.members {
                assert_eq!(partition_for(keys[m].as_bytes(), 6), e.partition);
                seen[m] = true;
            }
            assert_eq!(e.value.first(), Some(&b'['));
            assert_eq!(e.value.last(), Some(&b']'));
        }
        assert!(seen.iter().all(|s| *s), "every event packed once");
        assert!(
            envs.len() >= 6 && envs.len() < 20,
            "{} envelopes",
            envs.len()
        );
    }

    #[test]
    fn zstd_envelopes_round_trip_and_shrink() {
        let keys: Vec<String> = (0..500).map(|i| format!("{:08x}-0000-4000-8000-{:012x}", i, i * 7919)).collect();
        let bodies: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| format!(r#"{{"event_version":"2.3","event_type":"session.heartbeat","learner_id":"{k}","course_id":"cs101","props":{{}}}}"#).into_bytes())
            .collect();
        let plain = pack(keys.iter().zip(&bodies).enumerate().map(|(i, (k, b))| (i, k.as_str(), b.as_slice())), 6, Compression::None);
        let packed = pack(keys.iter().zip(&bodies).enumerate().map(|(i, (k, b))| (i, k.as_str(), b.as_slice())), 6, Compression::Zstd);
        assert_eq!(plain.len(), packed.len());
        for (p, z) in plain.iter().zip(&packed) {
            assert!(z.value.starts_with(&ZSTD_MAGIC));
            assert!(z.value.len() * 3 < p.value.len(), "{} vs {} bytes", z.value.len(), p.value.len());
            assert_eq!(decoded_len(&z.value), p.value.len());
            assert_eq!(decode_value(&z.value).unwrap().as_deref(), Some(&p.value[..]));
            assert_eq!(decode_value(&p.value).unwrap(), None, "plain JSON passes through");
        }
    }

    #[test]
    fn hostile_frames_are_refused() {
        // Truncated frame.
        let z = encode_value(br#"[{"a":1},{"b":2}]"#.repeat(100), Compression::Zstd);
        assert_eq!(decode_value(&z[..z.len() / 2]), Err(DecodeError::Corrupt));
        // Magic number followed by garbage.
        let mut junk = ZSTD_MAGIC.to_vec();
        junk.extend_from_slice(b"not a frame at all");
        assert_eq!(decode_value(&junk), Err(DecodeError::Corrupt));
        // A bomb: 64 MiB of zeros is a few KiB compressed, and is refused by its header.
        let bomb = encode_value(vec![0u8; 64 * 1024 * 1024], Compression::Zstd);
        assert!(bomb.len() < 64 * 1024);
        assert_eq!(decode_value(&bomb), Err(DecodeError::Oversized));
        // The same bomb without a size in its header is refused while decompressing.
        let mut c = zstd::bulk::Compressor::new(1).unwrap();
        c.include_contentsize(false).unwrap();
        let bomb = c.compress(&vec![0u8; 64 * 1024 * 1024]).unwrap();
        assert_eq!(decoded_len(&bomb), MAX_DECODED_RECORD_BYTES);
        assert_eq!(decode_value(&bomb), Err(DecodeError::Oversized));
    }
}
