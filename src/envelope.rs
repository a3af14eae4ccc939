//! The `learning-events` record contract.
//!
//! A record's value is either **one event** (a JSON object) keyed by its
//! learner's pseudonym, or an **envelope**: a JSON array of events whose
//! learners all map to the record's partition, keyed by the first event's
//! pseudonym. Both put every event of a learner on the partition Kafka's Java
//! client (and librdkafka's `murmur2_random`) picks for the pseudonym, so
//! per-learner order holds whichever form a producer uses.
//!
//! Envelopes exist because a Kafka broker's cost is per record far more than
//! per byte: the gateway packs each request's events into one record per
//! partition (what Snowplow's collector does with its payloads), so the
//! broker sees tens of records per request instead of hundreds. The lander
//! reads both forms; a refused event of an envelope is dead-lettered alone,
//! with its index in the record.

/// The configuration every learnvault producer starts from: `acks=all`, the
/// given compression, and Java-compatible murmur2 partitioning, so keyed single
/// events and envelopes agree on partitions. Callers add their own tuning.
pub fn producer_config(brokers: &str, compression: &str) -> rdkafka::config::ClientConfig {
    let mut c = rdkafka::config::ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("acks", "all")
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
/// (a single larger event gets an envelope of its own), events in input order.
pub fn pack<'a>(
    events: impl IntoIterator<Item = (usize, &'a str, &'a [u8])>,
    partitions: i32,
) -> Vec<Envelope> {
    let mut open: std::collections::BTreeMap<i32, Envelope> = std::collections::BTreeMap::new();
    let mut done = Vec::new();
    for (ix, key, body) in events {
        let p = partition_for(key.as_bytes(), partitions);
        if let Some(env) = open.get(&p) {
            if env.value.len() + body.len() + 2 > MAX_ENVELOPE_BYTES {
                done.push(close(open.remove(&p).expect("present")));
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
    done.extend(open.into_values().map(close));
    done
}

fn close(mut env: Envelope) -> Envelope {
    env.value.push(b']');
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
        let envs = pack(evs, 6);
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
}
