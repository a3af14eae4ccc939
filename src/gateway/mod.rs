//! The ingest gateway: where identities become pseudonyms. Taxonomy events
//! (`POST /v1/events`) and xAPI statements (`POST|PUT /xapi/statements`) are
//! pseudonymised through the vault (issue-or-get, one batch per request),
//! stamped with server time, validated and governed, and produced to
//! `learning-events` keyed by pseudonym with `acks=all`.
//!
//! Invariants:
//! * nothing with a raw identifier reaches a topic: the `learner` object
//!   (`{institution, external_id}`) and the xAPI actor are removed before
//!   anything is produced; dead letters are redacted by [`crate::redact`]
//!   (emails, phones, the request's external ids, identifier fields, path and
//!   reason kept) and keyed by the pseudonym when one is known, else unkeyed;
//! * an event is reported `accepted` only after the broker acknowledged it;
//!   when the broker cannot be reached the request fails with 503 and
//!   `Retry-After` (what was not written is not acknowledged);
//! * a refused event is in the dead-letter topic with the same reason code the
//!   caller sees;
//! * an xAPI `account` actor gets a pseudonym only when its `homePage` is an LMS
//!   declared for the token's institution (`policies/lms.yaml`, [`Gateway::xapi_external_id`]),
//!   in that LMS's id space (its `external_id_prefix`);
//! * a learner erased with collection suppressed gets no pseudonym again: their
//!   events are refused `erased` (see `Vault::suppressed`).

pub mod wire;
pub mod xapi;

use chrono::{DateTime, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

use crate::audit::NewEntry;
use crate::config::Settings;
use crate::dead_letter::{DeadLetter, DeadLetters, Refused, Stage};
use crate::domain::{ExternalId, InstitutionId};
use crate::governance::Governance;
use crate::policy::lms::LmsHomePages;
use crate::policy::ProtectedAttributes;
use crate::taxonomy::Taxonomy;
use crate::vault::{Identity, NewLearner, Vault, VaultError};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The deduplication claims (PostgreSQL).
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    /// Issuing pseudonyms, or an identity refused.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// At start-up: the producer could not be made.
    #[error("kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// At start-up: the taxonomy or a policy file the gateway reads.
    #[error(transparent)]
    Taxonomy(#[from] crate::taxonomy::TaxonomyError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
}

/// One event as received, its identity (if named by one) already split off.
pub struct Incoming<'a> {
    /// The event without identity fields.
    pub event: Body<'a>,
    /// `{institution, external_id}` when the event names its learner that way.
    pub identity: Option<(Cow<'a, str>, Cow<'a, str>)>,
}

/// An event's fields: read the typed way from the request's bytes, or as a JSON object.
pub enum Body<'a> {
    /// Read the generic way ([`split_identity`]), or mapped from xAPI.
    Map(Map<String, Value>),
    /// Read the typed way ([`wire::Event`]); `raw` is its JSON, read again the generic way
    /// when the typed path cannot decide or the event is refused (for its dead letter).
    Typed { raw: &'a [u8], event: wire::Event<'a> },
}

/// One event of a `/v1/events` body, read by [`read_event`].
pub enum Read<'a> {
    Event(Incoming<'a>),
    /// Not JSON at all.
    NotJson,
    /// JSON, but not an event the gateway can take (not an object, a malformed `learner`):
    /// refused with this reason, the object without its identity fields.
    Refused(Map<String, Value>, &'static str),
}

/// Read one event from its JSON: the typed borrowed read when it can take it, else
/// `serde_json::Value` and [`split_identity`] (which refuse and say why).
pub fn read_event(bytes: &[u8]) -> Read<'_> {
    if let Some((event, identity)) = wire::Event::parse(bytes) {
        let identity = identity.map(|(i, e)| (Cow::Borrowed(i), Cow::Borrowed(e)));
        return Read::Event(Incoming { event: Body::Typed { raw: bytes, event }, identity });
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => match split_identity(m) {
            Ok(it) => Read::Event(it),
            Err((m, why)) => Read::Refused(m, why),
        },
        Ok(_) => Read::Refused(Map::new(), "an event must be a JSON object"),
        Err(_) => Read::NotJson,
    }
}

/// The request's server time as [`fill`] writes it (RFC 3339, milliseconds) and as the
/// taxonomy reads that text back (`None` outside the taxonomy's years).
pub(crate) fn server_now(now: DateTime<Utc>) -> (Option<DateTime<Utc>>, String) {
    let text = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    (crate::taxonomy::parse_ts(&Value::String(text.clone())), text)
}

/// What the gateway sets on an event before it is validated: the pseudonym and (unless the
/// event names one) the institution of a learner named by identity, and `server_ts`.
pub(crate) fn fill(ev: &mut Map<String, Value>, learner: Option<(Uuid, &str)>, server_ts: &str) {
    if let Some((pseudonym, inst)) = learner {
        ev.insert("learner_id".into(), json!(pseudonym));
        ev.entry("institution_id").or_insert_with(|| json!(inst));
    }
    ev.insert("server_ts".into(), json!(server_ts));
}

/// What a refused event is dead-lettered with: what the generic path holds of it.
enum Held {
    /// Refused before it was read any further.
    Nothing,
    Json(Value),
    /// Read the typed way: its JSON without identity fields, filled in when `filled`.
    Typed { filled: bool },
}

/// A typed event's JSON as the generic path would hold it: the object without `learner`.
fn reread(raw: &[u8]) -> Map<String, Value> {
    match serde_json::from_slice::<Value>(raw) {
        Ok(Value::Object(mut m)) => {
            m.remove("learner");
            m
        }
        // The typed read took it: it is a JSON object.
        _ => Map::new(),
    }
}

/// What became of one event.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    Accepted { event_id: Uuid },
    /// `code` is the dead-letter reason (or `institution_not_allowed` / `invalid_learner`).
    Rejected { code: String, detail: String },
    /// The broker did not acknowledge it: retry.
    Unavailable,
}

/// How long the gateway trusts the events topic's partition count.
const PARTITIONS_REFRESH: Duration = Duration::from_secs(300);

/// Events the gateway refused, by reason (a counter).
pub const REJECTS: &str = "learnvault_gateway_rejects_total";

pub struct Gateway {
    producer: FutureProducer,
    topic: String,
    /// Dead letters (the events producer, the dead-letter topic).
    dead: DeadLetters,
    taxonomy: Taxonomy,
    protected: ProtectedAttributes,
    /// `policies/lms.yaml`: the LMS home pages of each institution (xAPI `account.homePage`).
    lms: LmsHomePages,
    governance: Governance,
    vault: Vault,
    clock_skew: Duration,
    produce_timeout_ms: u64,
    compression: crate::envelope::Compression,
    format: crate::envelope::RecordFormat,
    /// The events topic's partition count and when it was read.
    partitions: std::sync::Mutex<Option<(i32, std::time::Instant)>>,
    /// xAPI statement ids and the digests of their content (409 on other content);
    /// `None` when `LEARNVAULT_INGEST_DEDUP=false`.
    statements: Option<crate::dedup::XapiStatements>,
}

impl Gateway {
    pub fn new(settings: &Settings, vault: Vault, analytics_default: bool) -> Result<Gateway, GatewayError> {
        let producer: FutureProducer = crate::envelope::producer_config(&settings.kafka.brokers, &settings.kafka.produce_compression)
            .set("linger.ms", "2")
            .set("queue.buffering.max.messages", "1000000")
            // Fail a request within seconds when the broker is gone (503, retry), not minutes.
            .set("message.timeout.ms", settings.gateway.produce_timeout_ms.to_string())
            .create()?;
        let pool = vault.pool().clone();
        let statements =
            settings.dedup.enabled.then(|| crate::dedup::XapiStatements::new(pool.clone(), vault.service_key("xapi-statement-digest")));
        Ok(Gateway {
            dead: DeadLetters::new(producer.clone(), &settings.kafka.dlq_topic),
            producer,
            topic: settings.kafka.events_topic.clone(),
            taxonomy: Taxonomy::load(&settings.policy_dir.join("taxonomy"))?,
            protected: ProtectedAttributes::load(&settings.policy_dir)?,
            lms: LmsHomePages::load(&settings.policy_dir)?,
            governance: Governance::new(pool, Duration::from_millis(settings.governance.cache_ms), analytics_default),
            vault,
            clock_skew: Duration::from_secs(settings.governance.clock_skew_secs),
            produce_timeout_ms: settings.gateway.produce_timeout_ms,
            compression: settings.kafka.envelope_compression,
            format: settings.kafka.record_format,
            partitions: std::sync::Mutex::new(None),
            statements,
        })
    }

    /// The events topic's partition count, re-read from the broker every 5
    /// minutes (as Kafka clients refresh metadata; partitions can be added);
    /// the last known count serves while a refresh fails. `None` while the
    /// broker has never told (unreachable, or the topic does not exist yet).
    async fn partitions(&self) -> Option<i32> {
        let known = *self.partitions.lock().expect("partitions lock");
        if let Some((n, at)) = known {
            if at.elapsed() < PARTITIONS_REFRESH {
                return Some(n);
            }
        }
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let timeout = Duration::from_millis(if known.is_some() { 1_000 } else { self.produce_timeout_ms });
        let read = tokio::task::spawn_blocking(move || {
            let md = producer.client().fetch_metadata(Some(&topic), timeout).ok()?;
            let n = md.topics().iter().find(|t| t.name() == topic && t.error().is_none()).map_or(0, |t| t.partitions().len());
            (n > 0).then_some(n as i32)
        })
        .await
        .ok()
        .flatten();
        let mut slot = self.partitions.lock().expect("partitions lock");
        match read {
            Some(n) => {
                *slot = Some((n, std::time::Instant::now()));
                Some(n)
            }
            None => {
                // Keep serving the last known count; try again at the next interval.
                if let Some((n, _)) = known {
                    *slot = Some((n, std::time::Instant::now()));
                }
                known.map(|(n, _)| n)
            }
        }
    }

    /// Pseudonymise, validate, govern and produce `items`; one status each, in order.
    /// `may_act_in` says whether the caller may send events of an institution;
    /// `audit` is the issuance audit entry (one per request, with counts).
    pub async fn ingest(
        &self,
        mut items: Vec<Incoming<'_>>,
        may_act_in: &(dyn Fn(&str) -> bool + Sync),
        audit: NewEntry,
    ) -> Result<Vec<Status>, GatewayError> {
        let (server_ts, server_text) = server_now(Utc::now());
        let mut out: Vec<Option<Status>> = vec![None; items.len()];

        // The request's own external ids: redacted from anything dead-lettered.
        let external_ids: Vec<String> = items.iter().filter_map(|it| it.identity.as_ref().map(|(_, e)| e.to_string())).collect();
        // 1. Identities -> pseudonyms, one vault batch for the request.
        let mut wanted: Vec<(InstitutionId, NewLearner)> = Vec::new();
        let mut slot: Vec<Option<usize>> = vec![None; items.len()];
        let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, it) in items.iter().enumerate() {
            if let Some((inst, ext)) = &it.identity {
                match (InstitutionId::parse(inst), ExternalId::parse(ext)) {
                    (Ok(inst_id), Ok(ext_id)) => {
                        if !may_act_in(inst_id.as_str()) {
                            out[i] = Some(rejected("institution_not_allowed", "the caller cannot send events for this institution"));
                            continue;
                        }
                        let n = *seen.entry((inst, ext)).or_insert_with(|| {
                            wanted.push((inst_id, NewLearner { external_id: ext_id, identity: Identity::empty() }));
                            wanted.len() - 1
                        });
                        slot[i] = Some(n);
                    }
                    _ => out[i] = Some(rejected("invalid_learner", "learner.institution and learner.external_id must be valid ids")),
                }
            }
        }
        drop(seen);
        let issued = if wanted.is_empty() { Vec::new() } else { self.vault.get_or_issue(wanted, audit).await? };

        // 2. Fill in, validate (the typed path when it can prove the event valid, else the
        // generic validator on the filled-in JSON), screen.
        let screen = crate::redact::ExternalIds::new(&external_ids);
        let mut held: Vec<Held> = Vec::with_capacity(items.len());
        let mut valid = Vec::with_capacity(items.len());
        for (i, it) in items.iter_mut().enumerate() {
            if out[i].is_some() {
                held.push(Held::Nothing);
                valid.push(None);
                continue;
            }
            let mut learner = None;
            if let (Some(n), Some((inst, _))) = (slot[i], &it.identity) {
                let Some(issued) = issued[n] else {
                    // Erased, collection suppressed: refused, dead-lettered without identity or pseudonym.
                    out[i] = Some(rejected("erased", "this learner was erased; collection is suppressed until a DPO lifts it"));
                    held.push(match &mut it.event {
                        Body::Map(m) => Held::Json(Value::Object(std::mem::take(m))),
                        Body::Typed { .. } => Held::Typed { filled: false },
                    });
                    valid.push(None);
                    continue;
                };
                learner = Some((issued.pseudonym.as_uuid(), inst.as_ref()));
            }
            let typed = match (&mut it.event, server_ts) {
                (Body::Typed { event, .. }, Some(ts)) => event.validate(&self.taxonomy, learner, ts),
                _ => None,
            };
            let checked = match typed {
                Some(v) => {
                    held.push(Held::Typed { filled: true });
                    Ok(v)
                }
                None => {
                    let mut ev = match &mut it.event {
                        Body::Map(m) => std::mem::take(m),
                        Body::Typed { raw, .. } => reread(raw),
                    };
                    fill(&mut ev, learner, &server_text);
                    let ev = Value::Object(ev);
                    let r = self.taxonomy.validate(&ev);
                    held.push(Held::Json(ev));
                    r
                }
            };
            match checked {
                Ok(mut v) => {
                    // Beyond the patterns: none of the request's own external ids in a free string.
                    if let Err((reason, detail)) = crate::governance::check_props_and_clock(&mut v, &self.protected, self.clock_skew, &screen) {
                        out[i] = Some(rejected(reason.as_str(), &detail));
                        valid.push(None);
                        continue;
                    }
                    if !may_act_in(&v.institution_id) {
                        out[i] = Some(rejected("institution_not_allowed", "the caller cannot send events for this institution"));
                        valid.push(None);
                        continue;
                    }
                    valid.push(Some(v));
                }
                Err(r) => {
                    out[i] = Some(rejected(r.reason.as_str(), &r.detail));
                    valid.push(None);
                }
            }
        }

        // 3. Govern: known, not erased, of the event's institution, analytics consent.
        let ids: Vec<Uuid> = valid.iter().flatten().map(|v| v.learner_id).collect();
        let standings = if ids.is_empty() { Default::default() } else { self.governance.standings(ids).await? };
        for (i, v) in valid.iter_mut().enumerate() {
            if let Some(ev) = v {
                let refusal = standings.get(&ev.learner_id).map_or(Some(crate::taxonomy::Reason::UnknownPseudonym), |s| s.refusal(&ev.institution_id));
                if let Some(reason) = refusal {
                    out[i] = Some(rejected(reason.as_str(), "refused by governance"));
                    *v = None;
                }
            }
        }

        // 4. Produce the accepted, one event per record or as envelopes (one record per
        // partition, see `envelope`), dead-letter the refused; then wait for every acknowledgement.
        let partitions = self.partitions().await;
        let bodies: Vec<(usize, PseudonymKey, Vec<u8>)> = valid
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                v.as_ref().map(|ev| {
                    let mut body = Vec::with_capacity(384);
                    // The bytes `serde_json` writes, without its serializer (`ValidEvent::write_json`).
                    ev.write_json(&mut body);
                    (i, PseudonymKey::new(ev.learner_id), body)
                })
            })
            .collect();
        let mut sends = Vec::new();
        let mut unavailable: Vec<usize> = Vec::new();
        match partitions {
            Some(n) => {
                let records = match self.format {
                    // One event per record: the record is the event's own JSON (the same
                    // bytes an envelope holds), partitioned by its pseudonym.
                    crate::envelope::RecordFormat::Single => bodies
                        .into_iter()
                        .map(|(i, key, value)| crate::envelope::Envelope {
                            partition: crate::envelope::partition_for(key.as_str().as_bytes(), n),
                            key: key.as_str().to_owned(),
                            value,
                            members: vec![i],
                        })
                        .collect(),
                    crate::envelope::RecordFormat::Envelope => {
                        crate::envelope::pack(bodies.iter().map(|(i, k, b)| (*i, k.as_str(), b.as_slice())), n, self.compression)
                    }
                };
                for env in records {
                    let producer = &self.producer;
                    let topic = &self.topic;
                    sends.push(async move {
                        let record = FutureRecord::to(topic).partition(env.partition).key(&env.key).payload(&env.value);
                        let ok = producer.send(record, Duration::from_secs(0)).await.is_ok();
                        (env.members, ok)
                    });
                }
            }
            // The topic's partitions are unknown (broker unreachable): nothing is acknowledged.
            None => unavailable.extend(bodies.iter().map(|b| b.0)),
        }
        let mut dead = Vec::new();
        let cx = crate::redact::Context { external_ids: &external_ids, protected: Some(&self.protected) };
        for (i, st) in out.iter().enumerate() {
            if let Some(Status::Rejected { code, detail }) = st {
                // One record shape and one redaction for both writers; keyed by the pseudonym when one is known.
                let payload = match &held[i] {
                    Held::Nothing => Value::Null,
                    Held::Json(v) => v.clone(),
                    Held::Typed { filled } => {
                        let it = &items[i];
                        let Body::Typed { raw, .. } = &it.event else { unreachable!("held as typed") };
                        let mut ev = reread(raw);
                        if *filled {
                            let learner = match (slot[i], &it.identity) {
                                (Some(n), Some((inst, _))) => issued[n].map(|is| (is.pseudonym.as_uuid(), inst.as_ref())),
                                _ => None,
                            };
                            fill(&mut ev, learner, &server_text);
                        }
                        Value::Object(ev)
                    }
                };
                let dl = DeadLetter::new(code, detail, Stage::Gateway, None, Refused::Json(payload), &cx, None, None);
                dead.push(async move { self.dead.send(&dl).await.is_ok() });
                metrics::counter!(REJECTS, "reason" => code.clone()).increment(1);
            }
        }
        let (sent, dead) = tokio::join!(futures::future::join_all(sends), futures::future::join_all(dead));
        let mut accepted = 0u64;
        for (members, ok) in sent {
            for i in members {
                let ev = valid[i].as_ref().expect("sent events are valid");
                out[i] = Some(if ok {
                    accepted += 1;
                    Status::Accepted { event_id: ev.event_id }
                } else {
                    Status::Unavailable
                });
            }
        }
        for i in unavailable {
            out[i] = Some(Status::Unavailable);
        }
        if dead.iter().any(|ok| !ok) {
            // A refusal that is not in the dead-letter topic must not be reported as handled.
            for st in out.iter_mut() {
                if matches!(st, Some(Status::Rejected { .. })) {
                    *st = Some(Status::Unavailable);
                }
            }
        }
        metrics::counter!("learnvault_gateway_events_total").increment(accepted);
        Ok(out.into_iter().map(|s| s.expect("every event has a status")).collect())
    }

    /// The vault external id of an xAPI actor sent for `institution`: an `account` only when its
    /// `homePage` is declared for the institution in `policies/lms.yaml` (namespaced by that LMS's
    /// prefix), else `None` (refuse the statement); `mbox`/`openid` ids are global.
    pub fn xapi_external_id(&self, institution: &str, actor: &xapi::Actor) -> Option<String> {
        match actor {
            xapi::Actor::Account { home_page, name } => self.lms.external_id(institution, home_page, name),
            other => Some(other.external_id()),
        }
    }

    /// Record the xAPI statements about to be acknowledged for `institution` (id and
    /// content, each with its id set): all of them, or none when one id is stored already
    /// with other content; one answer each, in order (see [`crate::dedup::XapiStatements`]).
    /// A statement stored already with the same content is produced again all the same: the
    /// lander lands its id once, and a retry after a 503 must not lose it. Each answer comes
    /// with the time its id was first stored (without idempotent ingest: now).
    pub async fn xapi_record(
        &self,
        institution: &str,
        statements: &[(Uuid, &Value)],
    ) -> Result<Vec<(crate::dedup::Stored, chrono::DateTime<chrono::Utc>)>, GatewayError> {
        let Some(store) = &self.statements else { return Ok(vec![(crate::dedup::Stored::Fresh, chrono::Utc::now()); statements.len()]) };
        let digests: Vec<(Uuid, Vec<u8>)> = statements
            .iter()
            .map(|(id, st)| {
                let mut st = (*st).clone();
                if let Some(m) = st.as_object_mut() {
                    m.insert("id".into(), json!(id));
                }
                (*id, store.digest(&st))
            })
            .collect();
        Ok(store.record(institution, &digests).await?)
    }

    /// Dead-letter something that never became an event (an unmapped xAPI
    /// verb, an unparseable line), with identity fields already removed.
    pub async fn dead_letter(&self, code: &str, detail: &str, payload: Value) -> bool {
        let cx = crate::redact::Context { external_ids: &[], protected: Some(&self.protected) };
        let dl = DeadLetter::new(code, detail, Stage::Gateway, None, Refused::Json(payload), &cx, None, None);
        let ok = self.dead.send(&dl).await.is_ok();
        metrics::counter!(REJECTS, "reason" => code.to_owned()).increment(1);
        ok
    }
}

fn rejected(code: &str, detail: &str) -> Status {
    Status::Rejected { code: code.to_owned(), detail: detail.to_owned() }
}

/// A pseudonym as a record key (hyphenated, lower case), without an allocation.
struct PseudonymKey([u8; uuid::fmt::Hyphenated::LENGTH]);

impl PseudonymKey {
    fn new(p: Uuid) -> PseudonymKey {
        let mut k = [0u8; uuid::fmt::Hyphenated::LENGTH];
        p.hyphenated().encode_lower(&mut k);
        PseudonymKey(k)
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a hyphenated UUID is ASCII")
    }
}

/// Split an event object into the event and its identity: a `learner`
/// object `{institution, external_id}` names the learner by identity.
pub fn split_identity(mut event: Map<String, Value>) -> Result<Incoming<'static>, (Map<String, Value>, &'static str)> {
    match event.remove("learner") {
        None => Ok(Incoming { event: Body::Map(event), identity: None }),
        Some(Value::Object(l)) => match (l.get("institution").and_then(Value::as_str), l.get("external_id").and_then(Value::as_str)) {
            (Some(i), Some(e)) if l.len() == 2 => {
                if event.contains_key("learner_id") {
                    return Err((event, "name the learner by `learner_id` or by `learner`, not both"));
                }
                Ok(Incoming { identity: Some((Cow::Owned(i.to_owned()), Cow::Owned(e.to_owned()))), event: Body::Map(event) })
            }
            _ => Err((event, "`learner` must be {\"institution\": string, \"external_id\": string}")),
        },
        Some(_) => Err((event, "`learner` must be {\"institution\": string, \"external_id\": string}")),
    }
}
