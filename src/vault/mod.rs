//! Identity vault: pseudonym issuance, lookup, re-identification, consent.
//!
//! Invariant: only `vault` stores or decrypts an identity or external id, and
//! PostgreSQL sees only blind indexes and ciphertext (see
//! `migrations/postgres/0002_vault.sql`). External ids and identities reach
//! the vault in memory from the API (`api/pseudonyms.rs`, `api/dsr.rs`), the
//! gateway (`learner` objects, xAPI actors) and the CLI; a decrypted identity
//! leaves it only to the resolve handler (after its audit row committed) and
//! to the subject-access archive (`dsr::access`, sealed at rest). Every
//! [`Vault`] method that writes the vault appends its audit rows in the same
//! transaction, so such an operation without its audit row cannot commit.
//! (Erasure's tombstone and crypto-shred steps, `dsr::erasure`, write
//! `tombstones` and `learners` themselves; they are audited by the job's
//! request and completion rows.)

pub mod crypto;
mod issuer;
pub mod keys;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use std::sync::Arc;
use utoipa::ToSchema;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::audit::{self, AuditError, NewEntry};
use crate::domain::{ExternalId, InstitutionId, Invalid, Pseudonym, Purpose};
use keys::{KeyUse, MasterKey};

pub use issuer::Issuer;

/// Largest accepted identity, serialised.
pub const MAX_IDENTITY_BYTES: usize = 8 * 1024;
const MAX_IDENTITY_FIELDS: usize = 32;

/// Pseudonyms newly issued (a counter; single and batch issuance).
pub const ISSUED: &str = "learnvault_pseudonyms_issued_total";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("vault storage error: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("identity ciphertext does not authenticate for pseudonym {0}")]
    Corrupt(Pseudonym),
    #[error("vault writer has stopped")]
    WriterGone,
    /// The learner was erased and collection is suppressed until a DPO lifts it.
    #[error("this learner was erased; collection is suppressed")]
    Suppressed,
}

/// A validated identity: a flat JSON object of scalar fields (name, email, ...).
/// Its `Debug` is redacted.
#[derive(Clone)]
pub struct Identity(Vec<u8>);

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity(<redacted>)")
    }
}

impl Identity {
    pub fn empty() -> Self {
        Identity(b"{}".to_vec())
    }
    pub fn parse(v: Map<String, Value>) -> Result<Self, Invalid> {
        let bad = |m: &str| Invalid { code: "invalid_identity", message: m.to_owned() };
        if v.len() > MAX_IDENTITY_FIELDS {
            return Err(bad("identity has more than 32 fields"));
        }
        if v.values().any(|x| matches!(x, Value::Object(_) | Value::Array(_))) {
            return Err(bad("identity fields must be strings, numbers, booleans or null"));
        }
        let bytes = serde_json::to_vec(&v).expect("json serialises");
        if bytes.len() > MAX_IDENTITY_BYTES {
            return Err(bad("identity is larger than 8 KiB"));
        }
        Ok(Identity(bytes))
    }
}

/// Where a pseudonym stands in the vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Active { institution: String },
    Erased { institution: String, erased_at: DateTime<Utc> },
    Unknown,
}

/// Result of issue-or-get for one learner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Issued {
    pub pseudonym: Pseudonym,
    pub created: bool,
}

/// One learner to issue for.
#[derive(Debug, Clone)]
pub struct NewLearner {
    pub external_id: ExternalId,
    pub identity: Identity,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConsentState {
    pub purpose: String,
    pub granted: bool,
    pub actor: String,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConsentEvent {
    pub id: i64,
    pub purpose: String,
    pub granted: bool,
    pub actor: String,
    pub request_id: Uuid,
    pub recorded_at: DateTime<Utc>,
}

/// One row of the suppression list (after erasure).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Suppression {
    pub pseudonym: uuid::Uuid,
    pub institution: String,
    pub erased_at: chrono::DateTime<chrono::Utc>,
    /// Collection of this learner is refused while true.
    pub suppressed: bool,
    pub lifted_at: Option<chrono::DateTime<chrono::Utc>>,
    pub lifted_by: Option<String>,
}

#[derive(Clone)]
pub struct Vault {
    pool: PgPool,
    master: MasterKey,
    issuer: Issuer,
    /// The blind-index key version each institution had when last read: a lookup computes
    /// its blind indexes with it and the same statement returns the current one (read again
    /// when it changed), so a known learner costs one round trip.
    versions: Arc<std::sync::RwLock<HashMap<String, i32>>>,
}

impl Vault {
    pub fn new(pool: PgPool, master: MasterKey, writers: usize) -> Self {
        let issuer = Issuer::spawn(pool.clone(), master.clone(), writers.max(1));
        Vault { pool, master, issuer, versions: Default::default() }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A process-wide key derived from the master key for a named use (e.g. the keyed
    /// digests of xAPI statements, [`crate::dedup::XapiStatements`]).
    pub fn service_key(&self, name: &str) -> zeroize::Zeroizing<[u8; 32]> {
        self.master.service_key(name)
    }

    /// Issue-or-get one learner's pseudonym; group-committed with other
    /// concurrent calls, each keeping its own audit row.
    ///
    /// An erased learner whose suppression has not been lifted is refused
    /// ([`VaultError::Suppressed`]): no pseudonym is issued for them again.
    pub async fn issue_one(
        &self,
        institution: &InstitutionId,
        learner: NewLearner,
        audit: NewEntry,
    ) -> Result<Issued, VaultError> {
        if self.suppressed(&[(institution, &learner.external_id)]).await?[0] {
            return Err(VaultError::Suppressed);
        }
        self.issuer.submit(institution.clone(), learner, audit).await
    }

    /// Which of `learners` were erased with their collection suppressed (the
    /// tombstone's blind index, see `migrations/postgres/0007_privacy_edges.sql`):
    /// one query; the external ids never leave this process.
    pub async fn suppressed(&self, learners: &[(&InstitutionId, &ExternalId)]) -> Result<Vec<bool>, VaultError> {
        let mut out = vec![false; learners.len()];
        if learners.is_empty() {
            return Ok(out);
        }
        let mut versions: HashMap<&str, Option<i32>> = HashMap::new();
        let (mut insts, mut blinds, mut idx) = (Vec::new(), Vec::new(), Vec::new());
        for (i, (inst, ext)) in learners.iter().enumerate() {
            let version = match versions.get(inst.as_str()) {
                Some(v) => *v,
                None => {
                    let v = sqlx::query_scalar!("SELECT key_version FROM institutions WHERE id = $1", inst.as_str()).fetch_optional(&self.pool).await?;
                    versions.insert(inst.as_str(), v);
                    v
                }
            };
            let Some(version) = version else { continue };
            let key = self.master.institution_key(KeyUse::BlindIndex, inst.as_str(), version);
            insts.push(inst.as_str().to_owned());
            blinds.push(crypto::blind_index(&key, ext).to_vec());
            idx.push(i as i32);
        }
        if idx.is_empty() {
            return Ok(out);
        }
        let hits = sqlx::query_scalar!(
            r#"SELECT w.i AS "i!" FROM UNNEST($1::text[], $2::bytea[], $3::int4[]) AS w(inst, bi, i)
               JOIN tombstones t ON t.suppressed AND t.institution_id = w.inst AND t.blind_index = w.bi"#,
            &insts,
            &blinds,
            &idx
        )
        .fetch_all(&self.pool)
        .await?;
        for i in hits {
            out[i as usize] = true;
        }
        Ok(out)
    }

    /// The suppression list: erased learners of `institutions` (all when `None`)
    /// whose collection is suppressed or was lifted, newest erasure first.
    /// Pseudonyms only (the blind index never leaves the vault).
    pub async fn suppressions(&self, institutions: Option<&[String]>, limit: i64) -> Result<Vec<Suppression>, VaultError> {
        use sqlx::Row;
        let rows = sqlx::query(
            "SELECT pseudonym, institution_id, erased_at, suppressed, lifted_at, lifted_by FROM tombstones
             WHERE blind_index IS NOT NULL AND ($1::text[] IS NULL OR institution_id = ANY($1))
             ORDER BY erased_at DESC LIMIT $2",
        )
        .bind(institutions)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Suppression {
                    pseudonym: r.try_get("pseudonym")?,
                    institution: r.try_get("institution_id")?,
                    erased_at: r.try_get("erased_at")?,
                    suppressed: r.try_get("suppressed")?,
                    lifted_at: r.try_get("lifted_at")?,
                    lifted_by: r.try_get("lifted_by")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(VaultError::from)
    }

    /// Lift the suppression of an erased learner (a DPO's decision, e.g. the
    /// person re-enrolled and consented), audited in the same transaction.
    /// Returns the erased pseudonyms whose suppression was lifted (empty: none was suppressed).
    pub async fn lift_suppression(
        &self,
        institution: &InstitutionId,
        external_id: &ExternalId,
        mut audit: NewEntry,
    ) -> Result<Vec<Pseudonym>, VaultError> {
        let Some(version) = sqlx::query_scalar!("SELECT key_version FROM institutions WHERE id = $1", institution.as_str())
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(Vec::new());
        };
        let key = self.master.institution_key(KeyUse::BlindIndex, institution.as_str(), version);
        let bi = crypto::blind_index(&key, external_id);
        let mut tx = self.pool.begin().await?;
        let lifted = sqlx::query_scalar!(
            "UPDATE tombstones SET suppressed = false, lifted_at = now(), lifted_by = $3
             WHERE institution_id = $1 AND blind_index = $2 AND suppressed RETURNING pseudonym",
            institution.as_str(),
            &bi[..],
            audit.actor
        )
        .fetch_all(&mut *tx)
        .await?;
        if lifted.is_empty() {
            return Ok(Vec::new());
        }
        audit.target = lifted.first().copied();
        audit.detail = serde_json::json!({"erased_pseudonyms": lifted});
        audit::append(&mut tx, std::slice::from_ref(&audit)).await?;
        tx.commit().await?;
        Ok(lifted.into_iter().map(Pseudonym::from_uuid).collect())
    }

    /// Issue-or-get for the ingest gateway, where nearly every learner is
    /// already known: one read finds the existing pseudonyms (blind indexes of
    /// the current key version), and only the rest go through [`Vault::issue_batch`]
    /// (audited with its counts). Nothing is audited when nothing was issued: a
    /// lookup from identity to pseudonym releases nothing the caller lacks.
    /// `None` for a learner who was erased with collection suppressed: nothing is issued for them.
    pub async fn get_or_issue(&self, items: Vec<(InstitutionId, NewLearner)>, audit: NewEntry) -> Result<Vec<Option<Issued>>, VaultError> {
        let mut out: Vec<Option<Issued>> = vec![None; items.len()];
        let mut by_inst: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, (inst, _)) in items.iter().enumerate() {
            by_inst.entry(inst.as_str()).or_default().push(i);
        }
        for (inst, idxs) in by_inst {
            let externals: Vec<&ExternalId> = idxs.iter().map(|&i| &items[i].1.external_id).collect();
            for (&i, p) in idxs.iter().zip(self.known(inst, &externals).await?) {
                out[i] = p.map(|pseudonym| Issued { pseudonym, created: false });
            }
        }
        let mut missing: Vec<usize> = (0..items.len()).filter(|&i| out[i].is_none()).collect();
        // Only learners not in the vault can be suppressed (an erased learner's row is gone).
        let mut refused = vec![false; items.len()];
        if !missing.is_empty() {
            let asked: Vec<(&InstitutionId, &ExternalId)> = missing.iter().map(|&i| (&items[i].0, &items[i].1.external_id)).collect();
            for (&i, s) in missing.iter().zip(self.suppressed(&asked).await?) {
                refused[i] = s;
            }
            missing.retain(|&i| !refused[i]);
        }
        if !missing.is_empty() {
            let todo: Vec<(InstitutionId, NewLearner)> = missing.iter().map(|&i| items[i].clone()).collect();
            for (i, r) in missing.into_iter().zip(self.issue_batch(todo, audit).await?) {
                out[i] = Some(r);
            }
        }
        Ok(out.into_iter().zip(refused).map(|(r, refused)| if refused { None } else { Some(r.expect("found or issued")) }).collect())
    }

    /// The pseudonyms of `externals` already in the vault for `inst` (none for an unknown
    /// institution), in one statement: the institution's current key version and the
    /// blind-index join. The blind indexes are computed with the version last seen; when the
    /// statement reports another, they are computed again with it and the statement repeated.
    async fn known(&self, inst: &str, externals: &[&ExternalId]) -> Result<Vec<Option<Pseudonym>>, sqlx::Error> {
        let mut version = self.versions.read().expect("versions lock").get(inst).copied().unwrap_or(1);
        loop {
            let key = self.master.institution_key(KeyUse::BlindIndex, inst, version);
            let blinds: Vec<Vec<u8>> = externals.iter().map(|e| crypto::blind_index(&key, e).to_vec()).collect();
            // A join, not `= ANY(array)` (see `existing`); one row with NULLs when none is known.
            let rows: Vec<(i32, Option<Vec<u8>>, Option<Uuid>)> = sqlx::query_as(
                r#"SELECT i.key_version, m.blind_index, m.pseudonym
                   FROM institutions i
                   LEFT JOIN LATERAL (
                       SELECT l.blind_index, l.pseudonym
                       FROM UNNEST($2::bytea[]) AS w(bi)
                       JOIN learners l ON l.institution_id = i.id AND l.blind_index = w.bi
                   ) m ON true
                   WHERE i.id = $1"#,
            )
            .bind(inst)
            .bind(&blinds)
            .fetch_all(&self.pool)
            .await?;
            let Some(current) = rows.first().map(|r| r.0) else {
                return Ok(vec![None; externals.len()]);
            };
            if current != version {
                self.versions.write().expect("versions lock").insert(inst.to_owned(), current);
                version = current;
                continue;
            }
            let found: HashMap<Vec<u8>, Uuid> = rows.into_iter().filter_map(|(_, b, p)| Some((b?, p?))).collect();
            return Ok(blinds.iter().map(|b| found.get(b).map(|p| Pseudonym::from_uuid(*p))).collect());
        }
    }

    /// Issue-or-get many learners of several institutions in one transaction,
    /// with one audit row (carrying counts) for the call.
    pub async fn issue_batch(
        &self,
        items: Vec<(InstitutionId, NewLearner)>,
        mut audit: NewEntry,
    ) -> Result<Vec<Issued>, VaultError> {
        let mut by_inst: HashMap<InstitutionId, Vec<usize>> = HashMap::new();
        for (i, (inst, _)) in items.iter().enumerate() {
            by_inst.entry(inst.clone()).or_default().push(i);
        }
        let mut out = vec![None; items.len()];
        let mut tx = self.pool.begin().await?;
        let mut insts: Vec<_> = by_inst.into_iter().collect();
        insts.sort_by(|a, b| a.0.cmp(&b.0)); // stable lock order across concurrent batches
        for (inst, idxs) in insts {
            let learners: Vec<&NewLearner> = idxs.iter().map(|&i| &items[i].1).collect();
            let issued = issue_in_tx(&mut tx, &self.master, &inst, &learners).await?;
            for (i, r) in idxs.into_iter().zip(issued) {
                out[i] = Some(r);
            }
        }
        let out: Vec<Issued> = out.into_iter().map(|r| r.expect("every item issued")).collect();
        let created = out.iter().filter(|r| r.created).count();
        audit.detail = serde_json::json!({"count": out.len(), "created": created});
        audit::append(&mut tx, std::slice::from_ref(&audit)).await?;
        tx.commit().await?;
        metrics::counter!(ISSUED).increment(created as u64);
        Ok(out)
    }

    /// Find the pseudonym of `(institution, external_id)`; `None` if never
    /// issued or erased (the blind index is destroyed on erasure).
    pub async fn lookup(&self, institution: &InstitutionId, external_id: &ExternalId) -> Result<Option<Pseudonym>, VaultError> {
        let Some(version) = sqlx::query_scalar!("SELECT key_version FROM institutions WHERE id = $1", institution.as_str())
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let key = self.master.institution_key(KeyUse::BlindIndex, institution.as_str(), version);
        let bi = crypto::blind_index(&key, external_id);
        let p = sqlx::query_scalar!(
            "SELECT pseudonym FROM learners WHERE institution_id = $1 AND blind_index = $2",
            institution.as_str(),
            &bi[..]
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(p.map(Pseudonym::from_uuid))
    }

    pub async fn subject(&self, pseudonym: Pseudonym) -> Result<Subject, VaultError> {
        let row = sqlx::query!(
            r#"SELECT l.institution_id AS "active?", t.institution_id AS "erased?", t.erased_at AS "erased_at?"
               FROM (SELECT $1::uuid AS p) q
               LEFT JOIN learners l ON l.pseudonym = q.p
               LEFT JOIN tombstones t ON t.pseudonym = q.p"#,
            pseudonym.as_uuid()
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(match (row.active, row.erased, row.erased_at) {
            (Some(institution), _, _) => Subject::Active { institution },
            (None, Some(institution), Some(erased_at)) => Subject::Erased { institution, erased_at },
            _ => Subject::Unknown,
        })
    }

    /// Decrypt a learner's identity. Callers must have audited the access
    /// (with its purpose) before releasing the result.
    pub async fn decrypt_identity(&self, pseudonym: Pseudonym) -> Result<Option<Zeroizing<Vec<u8>>>, VaultError> {
        let Some(r) = sqlx::query!(
            "SELECT institution_id, wrap_key_version, wrapped_dek, identity_ct FROM learners WHERE pseudonym = $1",
            pseudonym.as_uuid()
        )
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let wrap = self.master.institution_key(KeyUse::KeyWrap, &r.institution_id, r.wrap_key_version);
        crypto::open_identity(&wrap, pseudonym, &r.institution_id, &r.wrapped_dek, &r.identity_ct)
            .map(Some)
            .map_err(|_| VaultError::Corrupt(pseudonym))
    }

    /// Append consent decisions (history is never rewritten), audited in the same transaction.
    pub async fn record_consent(
        &self,
        pseudonym: Pseudonym,
        decisions: &[(Purpose, bool)],
        audit: NewEntry,
    ) -> Result<(), VaultError> {
        let purposes: Vec<String> = decisions.iter().map(|(p, _)| p.as_str().to_owned()).collect();
        let granted: Vec<bool> = decisions.iter().map(|(_, g)| *g).collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query!(
            r#"INSERT INTO consent_events (pseudonym, purpose, granted, actor, request_id)
               SELECT $1, u.purpose, u.granted, $4, $5 FROM UNNEST($2::text[], $3::bool[]) AS u(purpose, granted)"#,
            pseudonym.as_uuid(),
            &purposes,
            &granted,
            audit.actor,
            audit.request_id,
        )
        .execute(&mut *tx)
        .await?;
        audit::append(&mut tx, std::slice::from_ref(&audit)).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn consent(&self, pseudonym: Pseudonym) -> Result<(Vec<ConsentState>, Vec<ConsentEvent>), VaultError> {
        let current = sqlx::query_as!(
            ConsentState,
            r#"SELECT purpose AS "purpose!", granted AS "granted!", actor AS "actor!", recorded_at AS "recorded_at!"
               FROM consent_current WHERE pseudonym = $1 ORDER BY purpose"#,
            pseudonym.as_uuid()
        )
        .fetch_all(&self.pool)
        .await?;
        let history = sqlx::query_as!(
            ConsentEvent,
            "SELECT id, purpose, granted, actor, request_id, recorded_at FROM consent_events WHERE pseudonym = $1 ORDER BY id",
            pseudonym.as_uuid()
        )
        .fetch_all(&self.pool)
        .await?;
        Ok((current, history))
    }
}

/// Key version of `institution`, registering it on first use.
async fn institution_version(conn: &mut PgConnection, institution: &InstitutionId) -> Result<i32, sqlx::Error> {
    let id = institution.as_str();
    if let Some(v) = sqlx::query_scalar!("SELECT key_version FROM institutions WHERE id = $1", id)
        .fetch_optional(&mut *conn)
        .await?
    {
        return Ok(v);
    }
    sqlx::query!("INSERT INTO institutions (id) VALUES ($1) ON CONFLICT (id) DO NOTHING", id)
        .execute(&mut *conn)
        .await?;
    sqlx::query_scalar!("SELECT key_version FROM institutions WHERE id = $1", id).fetch_one(&mut *conn).await
}

/// Issue-or-get for learners of one institution, inside the caller's transaction.
/// Idempotent under concurrency: the unique (institution, blind index)
/// constraint decides, losers read the winner's pseudonym.
pub(crate) async fn issue_in_tx(
    conn: &mut PgConnection,
    master: &MasterKey,
    institution: &InstitutionId,
    learners: &[&NewLearner],
) -> Result<Vec<Issued>, sqlx::Error> {
    let inst = institution.as_str();
    let version = institution_version(conn, institution).await?;
    let index_key = master.institution_key(KeyUse::BlindIndex, inst, version);
    let blinds: Vec<[u8; 32]> = learners.iter().map(|l| crypto::blind_index(&index_key, &l.external_id)).collect();
    // Seal each distinct learner once (first occurrence), in blind-index order:
    // concurrent transactions inserting overlapping learners then take row
    // locks in the same order and cannot deadlock.
    let wrap_key = master.institution_key(KeyUse::KeyWrap, inst, version);
    let mut todo: Vec<(&[u8; 32], &&NewLearner)> = blinds.iter().zip(learners).collect();
    todo.sort_by_key(|(b, _)| **b);
    todo.dedup_by_key(|(b, _)| **b);
    let mut rows = Rows::default();
    for (b, l) in todo {
        let p = Pseudonym::new_random();
        let sealed = crypto::seal_identity(&wrap_key, p, inst, &l.identity.0);
        rows.ps.push(p.as_uuid());
        rows.bis.push(b.to_vec());
        rows.wraps.push(sealed.wrapped_dek);
        rows.cts.push(sealed.identity_ct);
    }
    let mut found: HashMap<[u8; 32], Issued> = HashMap::with_capacity(rows.ps.len());

    // Fast path: nobody is in the vault yet (new learners, the common case).
    sqlx::query("SAVEPOINT issue_fast").execute(&mut *conn).await?;
    match insert_plain(conn, inst, version, &rows).await {
        Ok(()) => {
            sqlx::query("RELEASE SAVEPOINT issue_fast").execute(&mut *conn).await?;
            for (p, b) in rows.ps.iter().zip(&rows.bis) {
                let b: [u8; 32] = b.as_slice().try_into().expect("32-byte blind index");
                found.insert(b, Issued { pseudonym: Pseudonym::from_uuid(*p), created: true });
            }
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
            // Some are already issued (or being issued concurrently): slow path.
            sqlx::query("ROLLBACK TO SAVEPOINT issue_fast").execute(&mut *conn).await?;
            for (b, p) in existing(&mut *conn, inst, &rows.bis).await? {
                found.insert(b, Issued { pseudonym: p, created: false });
            }
            rows.retain(|b| !found.contains_key(b));
            if !rows.ps.is_empty() {
                for (b, p) in insert_or_skip(conn, inst, version, &rows).await? {
                    found.insert(b, Issued { pseudonym: p, created: true });
                }
                // Lost races: another transaction inserted them first; read theirs.
                let lost: Vec<Vec<u8>> = rows.bis.iter().filter(|b| !found.contains_key(b.as_slice())).cloned().collect();
                if !lost.is_empty() {
                    for (b, p) in existing(&mut *conn, inst, &lost).await? {
                        found.insert(b, Issued { pseudonym: p, created: false });
                    }
                }
            }
        }
        Err(e) => return Err(e),
    }
    // Within one call, a repeated external id is "created" only at its first occurrence.
    let mut seen = std::collections::HashSet::new();
    Ok(blinds
        .iter()
        .map(|b| {
            let mut r = *found.get(b).expect("issued or found");
            if !seen.insert(*b) {
                r.created = false;
            }
            r
        })
        .collect())
}

/// A stored learner's blind index and pseudonym (what [`existing`] and [`insert_or_skip`] find).
struct Keyed {
    blind_index: Vec<u8>,
    pseudonym: Uuid,
}

impl Keyed {
    fn pair(self) -> ([u8; 32], Pseudonym) {
        (self.blind_index.as_slice().try_into().expect("32-byte blind index"), Pseudonym::from_uuid(self.pseudonym))
    }
}

async fn existing(conn: &mut PgConnection, inst: &str, wanted: &[Vec<u8>]) -> Result<Vec<([u8; 32], Pseudonym)>, sqlx::Error> {
    let rows = sqlx::query_as!(
        Keyed,
        // A join, not `= ANY(array)`: with thousands of keys the latter can be
        // planned as a scan comparing every row with every key.
        r#"SELECT l.blind_index, l.pseudonym
           FROM UNNEST($2::bytea[]) AS w(bi)
           JOIN learners l ON l.institution_id = $1 AND l.blind_index = w.bi"#,
        inst,
        wanted
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Keyed::pair).collect())
}

/// Column arrays of sealed vault rows, for `UNNEST` inserts.
#[derive(Default)]
struct Rows {
    ps: Vec<Uuid>,
    bis: Vec<Vec<u8>>,
    wraps: Vec<Vec<u8>>,
    cts: Vec<Vec<u8>>,
}

impl Rows {
    fn retain(&mut self, keep: impl Fn(&[u8]) -> bool) {
        let old = std::mem::take(self);
        for (((p, b), w), c) in old.ps.into_iter().zip(old.bis).zip(old.wraps).zip(old.cts) {
            if keep(&b) {
                self.ps.push(p);
                self.bis.push(b);
                self.wraps.push(w);
                self.cts.push(c);
            }
        }
    }
}

async fn insert_plain(conn: &mut PgConnection, inst: &str, version: i32, r: &Rows) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"INSERT INTO learners (pseudonym, institution_id, blind_index, index_key_version, wrapped_dek, wrap_key_version, identity_ct)
           SELECT u.p, $1, u.bi, $2, u.w, $2, u.ct
           FROM UNNEST($3::uuid[], $4::bytea[], $5::bytea[], $6::bytea[]) AS u(p, bi, w, ct)"#,
        inst, version, &r.ps, &r.bis, &r.wraps, &r.cts,
    )
    .execute(conn)
    .await
    .map(|_| ())
}

async fn insert_or_skip(conn: &mut PgConnection, inst: &str, version: i32, r: &Rows) -> Result<Vec<([u8; 32], Pseudonym)>, sqlx::Error> {
    let rows = sqlx::query_as!(
        Keyed,
        r#"INSERT INTO learners (pseudonym, institution_id, blind_index, index_key_version, wrapped_dek, wrap_key_version, identity_ct)
           SELECT u.p, $1, u.bi, $2, u.w, $2, u.ct
           FROM UNNEST($3::uuid[], $4::bytea[], $5::bytea[], $6::bytea[]) AS u(p, bi, w, ct)
           ON CONFLICT (institution_id, blind_index) DO NOTHING
           RETURNING blind_index, pseudonym"#,
        inst, version, &r.ps, &r.bis, &r.wraps, &r.cts,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Keyed::pair).collect())
}
