//! Access archives at rest: AES-256-GCM in fixed-size chunks, so an archive of
//! any size is written and read back as a stream with bounded memory.
//!
//! ```text
//! file  = MAGIC (8 bytes) || prefix (8 random bytes) || chunk*
//! chunk = AES-256-GCM(key, nonce = prefix || counter (u32 BE), plaintext <= 64 KiB,
//!                     AAD = "learnvault/dsr-archive/v1" || job id (16) || last (1))
//! ```
//!
//! Every chunk but the last holds exactly [`CHUNK`] plaintext bytes; the last
//! one (possibly empty) carries `last = 1` in its AAD, so a truncated, reordered
//! or extended file does not open. The key is derived for this one use and this
//! one job (`HKDF(master, "learnvault/v1/service/dsr-archive/{job}")`): a copied
//! disk holds nothing readable, and one archive's key opens no other.
//!
//! Invariant: a plaintext byte of an archive exists only in memory, on its way
//! into a sealed file or out to an authorised download.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use rand::RngCore;
use std::io::{Read, Write};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::vault::keys::MasterKey;

/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
const MAGIC: &[u8; 8] = b"LVSEAL1\n";
const AAD_LABEL: &[u8] = b"learnvault/dsr-archive/v1";
/// Bytes before the first chunk.
pub const HEADER: usize = 16;

/// Derives the per-job archive keys; holds the master key for nothing else.
#[derive(Clone)]
pub struct ArchiveKeys(MasterKey);

impl std::fmt::Debug for ArchiveKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArchiveKeys(<secret>)")
    }
}

impl ArchiveKeys {
    pub fn new(master: MasterKey) -> Self {
        ArchiveKeys(master)
    }

    /// The key of one job's archive (and its staging files).
    pub fn for_job(&self, job: Uuid) -> Zeroizing<[u8; 32]> {
        self.0.service_key(&format!("dsr-archive/{job}"))
    }
}

fn aad(job: Uuid, last: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(AAD_LABEL.len() + 17);
    v.extend_from_slice(AAD_LABEL);
    v.extend_from_slice(job.as_bytes());
    v.push(last as u8);
    v
}

/// AES-256-GCM (ring's, several times the throughput of a portable implementation on AES-NI/VAES).
fn cipher(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte key"))
}

fn nonce(prefix: &[u8; 8], counter: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(prefix);
    n[8..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// A `Write` that seals what it is given. Call [`SealWriter::finish`]: without
/// the last chunk the file does not open.
pub struct SealWriter<W: Write> {
    inner: W,
    cipher: LessSafeKey,
    job: Uuid,
    prefix: [u8; 8],
    counter: u32,
    buf: Zeroizing<Vec<u8>>,
}

impl<W: Write> SealWriter<W> {
    pub fn new(mut inner: W, key: &[u8; 32], job: Uuid) -> std::io::Result<Self> {
        let mut prefix = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut prefix);
        inner.write_all(MAGIC)?;
        inner.write_all(&prefix)?;
        Ok(SealWriter {
            inner,
            cipher: cipher(key),
            job,
            prefix,
            counter: 0,
            buf: Zeroizing::new(Vec::with_capacity(CHUNK)),
        })
    }

    fn seal_chunk(&mut self, last: bool) -> std::io::Result<()> {
        if self.counter == u32::MAX {
            return Err(std::io::Error::other("archive too large for one sealed file"));
        }
        // Sealed in place: the copy is ciphertext (and tag) when the call returns.
        let mut ct = Vec::with_capacity(self.buf.len() + TAG);
        ct.extend_from_slice(&self.buf);
        self.cipher
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce(&self.prefix, self.counter)), Aad::from(aad(self.job, last)), &mut ct)
            .map_err(|_| std::io::Error::other("sealing failed"))?;
        self.counter += 1;
        self.buf.clear();
        self.inner.write_all(&ct)
    }

    /// Seal the last chunk and flush; returns the inner writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.seal_chunk(true)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            if self.buf.len() == CHUNK {
                self.seal_chunk(false)?;
            }
            let n = (CHUNK - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Only whole chunks are sealed; the rest waits for more data or `finish`.
        self.inner.flush()
    }
}

/// Opens a sealed stream chunk by chunk (see [`SealReader`] for a `Read`).
pub struct Opener {
    cipher: LessSafeKey,
    job: Uuid,
    prefix: [u8; 8],
    counter: u32,
    done: bool,
}

fn corrupt(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("sealed archive: {what}"))
}

impl Opener {
    /// From the file's first [`HEADER`] bytes.
    pub fn new(header: &[u8], key: &[u8; 32], job: Uuid) -> std::io::Result<Opener> {
        if header.len() != HEADER || &header[..8] != MAGIC {
            return Err(corrupt("not a sealed archive"));
        }
        Ok(Opener {
            cipher: cipher(key),
            job,
            prefix: header[8..16].try_into().expect("8 bytes"),
            counter: 0,
            done: false,
        })
    }

    /// Ciphertext bytes of a full chunk.
    pub const SEALED_CHUNK: usize = CHUNK + TAG;

    /// Open the next chunk; `last` when no bytes follow it in the file.
    pub fn open(&mut self, ct: &[u8], last: bool) -> std::io::Result<Zeroizing<Vec<u8>>> {
        if self.done {
            return Err(corrupt("data after the last chunk"));
        }
        let mut pt = Zeroizing::new(ct.to_vec());
        let n = self
            .cipher
            .open_in_place(Nonce::assume_unique_for_key(nonce(&self.prefix, self.counter)), Aad::from(aad(self.job, last)), &mut pt)
            .map_err(|_| corrupt("a chunk does not authenticate (altered, truncated, or another job's key)"))?
            .len();
        pt.truncate(n);
        self.counter += 1;
        self.done = last;
        Ok(pt)
    }

    pub fn finished(&self) -> bool {
        self.done
    }
}

/// A `Read` of a sealed file's plaintext; fails on any alteration or truncation.
pub struct SealReader<R: Read> {
    inner: R,
    opener: Opener,
    /// Ciphertext read ahead (one chunk plus one byte tells whether it is the last).
    pending: Vec<u8>,
    plain: Zeroizing<Vec<u8>>,
    pos: usize,
}

impl<R: Read> SealReader<R> {
    pub fn new(mut inner: R, key: &[u8; 32], job: Uuid) -> std::io::Result<Self> {
        let mut header = [0u8; HEADER];
        inner.read_exact(&mut header).map_err(|_| corrupt("shorter than its header"))?;
        Ok(SealReader { inner, opener: Opener::new(&header, key, job)?, pending: Vec::new(), plain: Zeroizing::new(Vec::new()), pos: 0 })
    }

    fn fill(&mut self) -> std::io::Result<()> {
        // Read up to one sealed chunk plus one byte: if the extra byte exists, this chunk is not the last.
        let want = Opener::SEALED_CHUNK + 1;
        while self.pending.len() < want {
            let mut tmp = vec![0u8; want - self.pending.len()];
            let n = self.inner.read(&mut tmp)?;
            if n == 0 {
                break;
            }
            self.pending.extend_from_slice(&tmp[..n]);
        }
        let last = self.pending.len() <= Opener::SEALED_CHUNK;
        let take = self.pending.len().min(Opener::SEALED_CHUNK);
        let ct: Vec<u8> = self.pending.drain(..take).collect();
        self.plain = self.opener.open(&ct, last)?;
        self.pos = 0;
        Ok(())
    }
}

impl<R: Read> Read for SealReader<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.opener.finished() {
                return Ok(0);
            }
            self.fill()?;
        }
        let n = out.len().min(self.plain.len() - self.pos);
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Create a file readable and writable by its owner only (0600).
pub fn create_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)
}

/// Create a directory (and its parents) accessible by its owner only (0700).
pub fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(key: &[u8; 32], job: Uuid, data: &[u8]) -> Vec<u8> {
        let mut w = SealWriter::new(Vec::new(), key, job).unwrap();
        // Odd write sizes cross chunk boundaries.
        for part in data.chunks(7_919) {
            w.write_all(part).unwrap();
        }
        w.finish().unwrap()
    }

    fn open(key: &[u8; 32], job: Uuid, sealed: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        SealReader::new(sealed, key, job)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trips_any_length_and_hides_the_plaintext() {
        let keys = ArchiveKeys::new(MasterKey::generate());
        let job = Uuid::new_v4();
        let key = keys.for_job(job);
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let data: Vec<u8> = (0..len).map(|i| b"ada@example.org "[i % 16]).collect();
            let sealed = seal(&key, job, &data);
            assert_eq!(open(&key, job, &sealed).unwrap(), data, "length {len}");
            if len > 0 {
                assert!(!sealed.windows(15).any(|w| w == b"ada@example.org"), "plaintext visible at length {len}");
            }
        }
    }

    /// Archives sealed before the cipher moved to ring (by the `aes-gcm` crate) still open:
    /// the format is AES-256-GCM's, whoever computes it.
    #[test]
    fn an_archive_sealed_by_another_aes_gcm_implementation_opens() {
        use aes_gcm::aead::{Aead, KeyInit, Payload};
        let job = Uuid::new_v4();
        let key = ArchiveKeys::new(MasterKey::generate()).for_job(job);
        let data: Vec<u8> = (0..CHUNK + 5).map(|i| (i % 251) as u8).collect();
        let other = aes_gcm::Aes256Gcm::new_from_slice(&key[..]).unwrap();
        let prefix = [9u8; 8];
        let mut sealed = [MAGIC.as_slice(), &prefix].concat();
        for (i, (part, last)) in [(&data[..CHUNK], false), (&data[CHUNK..], true)].into_iter().enumerate() {
            let n = nonce(&prefix, i as u32);
            sealed.extend(other.encrypt(aes_gcm::Nonce::from_slice(&n), Payload { msg: part, aad: &aad(job, last) }).unwrap());
        }
        assert_eq!(open(&key, job, &sealed).unwrap(), data);
        // And what this one seals, the other opens (first chunk).
        let ours = seal(&key, job, &data);
        let n = nonce(ours[8..16].try_into().unwrap(), 0);
        let first = &ours[HEADER..HEADER + CHUNK + TAG];
        assert_eq!(other.decrypt(aes_gcm::Nonce::from_slice(&n), Payload { msg: first, aad: &aad(job, false) }).unwrap(), data[..CHUNK]);
    }

    #[test]
    fn truncation_alteration_and_other_keys_are_refused() {
        let keys = ArchiveKeys::new(MasterKey::generate());
        let job = Uuid::new_v4();
        let key = keys.for_job(job);
        let data = vec![7u8; 2 * CHUNK + 100];
        let sealed = seal(&key, job, &data);
        // Cut at a chunk boundary: the last whole chunk was not sealed as the last.
        assert!(open(&key, job, &sealed[..HEADER + 2 * Opener::SEALED_CHUNK]).is_err());
        assert!(open(&key, job, &sealed[..sealed.len() - 1]).is_err());
        let mut altered = sealed.clone();
        altered[HEADER + 5] ^= 1;
        assert!(open(&key, job, &altered).is_err());
        // Another job's key, or the right key under another job id, opens nothing.
        let other = Uuid::new_v4();
        assert!(open(&keys.for_job(other), job, &sealed).is_err());
        assert!(open(&key, other, &sealed).is_err());
        assert_ne!(*keys.for_job(job), *ArchiveKeys::new(MasterKey::generate()).for_job(job));
    }
}
