//! xAPI 1.0.3 statements -> taxonomy 2.3 events, as pure functions (no I/O, no async).
//!
//! An LMS that already emits xAPI (Open edX event-routing-backends, Moodle
//! `logstore_xapi`) points its LRS endpoint at learnvault unchanged. The HTTP
//! handler checks the version header ([`check_version`]), maps the body
//! ([`map_body`], or [`split_body`] + [`map_statement`]), swaps each
//! [`Actor`] for a vault pseudonym (`Actor::external_id`), sets `learner_id`,
//! `institution_id` and `server_ts`, and validates the event against the taxonomy.
//!
//! # Public API
//! - [`SUPPORTED_VERSIONS`], [`LRS_VERSION`], [`check_version`]`(header) -> Result<(), XapiError>`:
//!   the `X-Experience-API-Version` header must be `1.0` or `1.0.<patch>` (spec 3.3: every 1.0.x is accepted).
//! - [`split_body`]`(&Value) -> Result<Vec<&Value>, XapiError>`: one statement object or a non-empty array of them.
//! - [`map_statement`]`(&Value, put_id, now) -> Result<Outcome, XapiError>`: validates one statement
//!   (what xAPI 1.0.3 rejects is rejected) and maps it: [`Outcome::Mapped`] or [`Outcome::Unmapped`].
//! - [`map_body`]`(&Value, put_id, now) -> Result<Vec<Answer>, XapiError>`: the whole request, one
//!   [`Answer`] per statement (`Ok(Outcome)` or `Err(`[`Refused`]`)`, refused alone); `Err` for the
//!   request only when it is structurally unusable (no actor, verb or object; duplicate ids; a PUT
//!   that is not one statement): a statement unusable alone never refuses its neighbours.
//! - Tolerated beyond 1.0.3, as Open edX emits them: `GroupActivity` read as an Activity, a bare id
//!   (no IRI) in context activities (never a course), `score.min = max = 0` for a 0-point problem,
//!   an object without `id` (no content; `no_course` without a course in the context).
//! - [`parse_statement_id`]`(&str)`: the `statementId` query parameter of a PUT.
//! - [`Actor`] (`external_id`, `home_page`; `Debug` never shows the identifier), [`Mapped`], [`Outcome`]
//!   (`actor()` for the handler's `account.homePage` check against `policies/lms.yaml`), [`XapiError`].
//!
//! # Privacy
//! Mapping reads only allow-listed fields (see `docs/xapi-mapping.md`). The actor, `authority`,
//! `context.instructor`, `context.team` and every name, mbox or account are validated but never copied.
//! Free-form strings (session, cohort, platform) that look like an email address or contain a name or
//! identifier of those agents are dropped; a course IRI containing one makes the statement unmapped,
//! a content IRI containing one is left out. Error messages name the JSON path and the rule, never a value.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fmt;
use uuid::Uuid;

/// `X-Experience-API-Version` values known to be accepted (any later `1.0.<patch>` is accepted too).
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0", "1.0.0", "1.0.1", "1.0.2", "1.0.3"];
/// The value the handler sends back in the `X-Experience-API-Version` response header.
pub const LRS_VERSION: &str = "1.0.3";
/// Taxonomy version of the events produced.
pub const EVENT_VERSION: &str = "2.3";
/// Context extension carrying the cohort; `cohort_id` is [`DEFAULT_COHORT`] without it.
pub const COHORT_EXTENSION: &str = "https://learnvault.dev/xapi/cohort";
pub const DEFAULT_COHORT: &str = "unassigned";

const VIDEO: &str = "https://w3id.org/xapi/video/verbs/";
const ADL: &str = "http://adlnet.gov/expapi/verbs/";
const VIDEO_TYPE: &str = "https://w3id.org/xapi/video/activity-type/video";
const X_TIME: &str = "https://w3id.org/xapi/video/extensions/time";
const X_TIME_FROM: &str = "https://w3id.org/xapi/video/extensions/time-from";
const X_TIME_TO: &str = "https://w3id.org/xapi/video/extensions/time-to";
const X_SPEED: &str = "https://w3id.org/xapi/video/extensions/speed";
const X_LENGTH: &str = "https://w3id.org/xapi/video/extensions/length";
const X_PROGRESS: &str = "https://w3id.org/xapi/video/extensions/progress";
const X_EDX_SPEED_FROM: &str = "https://w3id.org/xapi/openedx/extension/speed-from";
const X_EDX_SPEED_TO: &str = "https://w3id.org/xapi/openedx/extension/speed-to";
const SESSION_EXTENSIONS: &[&str] = &[
    "https://w3id.org/xapi/openedx/extensions/session-id",
    "https://w3id.org/xapi/video/extensions/session-id",
    "https://w3id.org/xapi/cmi5/context/extensions/sessionid",
];
const MAX_PROP_VALUE: usize = 1024;

/// Why a request or statement was refused (all 400-class). `code` is stable:
/// `xapi_version`, `xapi_invalid`, `xapi_unsupported`, `xapi_id_conflict` (and `xapi_home_page`, set by
/// the handler when `account.homePage` is not declared for the institution).
/// `path` is the JSON path (e.g. `[2].actor.account.homePage`, `$` for the body or statement itself);
/// neither field holds a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct XapiError {
    pub code: &'static str,
    pub path: String,
    pub message: String,
}

impl XapiError {
    /// `409 Conflict` for `xapi_id_conflict` (an id stored already with other content, or a
    /// PUT whose body names another id), every other code `400 Bad Request`.
    pub fn http_status(&self) -> u16 {
        if self.code == "xapi_id_conflict" {
            409
        } else {
            400
        }
    }
    fn at(mut self, prefix: &str) -> Self {
        self.path = if self.path == "$" { prefix.to_owned() } else { format!("{prefix}.{}", self.path) };
        self
    }
}

fn err(code: &'static str, path: &str, message: impl Into<String>) -> XapiError {
    XapiError { code, path: if path.is_empty() { "$" } else { path }.to_owned(), message: message.into() }
}
fn invalid(path: &str, message: impl Into<String>) -> XapiError {
    err("xapi_invalid", path, message)
}
fn unsupported(path: &str, message: impl Into<String>) -> XapiError {
    err("xapi_unsupported", path, message)
}

type R<T> = Result<T, XapiError>;

/// Check the `X-Experience-API-Version` request header.
pub fn check_version(header: Option<&str>) -> Result<(), XapiError> {
    match header.map(str::trim) {
        None => Err(err("xapi_version", "X-Experience-API-Version", "header is required")),
        Some(v) if v == "1.0" || is_1_0_x(v) => Ok(()),
        Some(_) => Err(err("xapi_version", "X-Experience-API-Version", "unsupported version; this LRS accepts 1.0.x")),
    }
}

fn is_1_0_x(v: &str) -> bool {
    v.strip_prefix("1.0.").is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// A statement object, or a non-empty array of statement objects.
pub fn split_body(body: &Value) -> Result<Vec<&Value>, XapiError> {
    match body {
        Value::Object(_) => Ok(vec![body]),
        Value::Array(a) if a.is_empty() => Err(invalid("", "an empty array holds no statements")),
        Value::Array(a) => match a.iter().position(|v| !v.is_object()) {
            Some(i) => Err(invalid(&format!("[{i}]"), "must be a statement object")),
            None => Ok(a.iter().collect()),
        },
        _ => Err(invalid("", "the body must be a statement object or an array of statements")),
    }
}

/// The `statementId` query parameter of `PUT /xapi/statements`.
pub fn parse_statement_id(s: &str) -> Result<Uuid, XapiError> {
    std_uuid(s).ok_or_else(|| invalid("statementId", "must be a UUID in standard form"))
}

/// A statement refused on its own (its neighbours in the batch are not): valid enough to name
/// (an actor, a verb), not usable. `error.path` starts with the statement's index in a batch.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The statement's `id` when it is a UUID.
    pub statement_id: Option<Uuid>,
    pub verb: String,
    pub error: XapiError,
}

/// What became of one statement of a request.
pub type Answer = Result<Outcome, Refused>;

/// Structurally unusable: not an object, no actor / verb / object, an actor that is no Agent or
/// Group, a verb without an IRI id. Such a statement refuses the whole request.
fn structural(st: &Value) -> R<()> {
    let s = obj(st, "")?;
    for k in ["actor", "verb", "object"] {
        if !s.contains_key(k) {
            return Err(invalid(k, "is required"));
        }
    }
    let a = obj(&s["actor"], "actor")?;
    if str_at(a, "objectType", "actor")? != Some("Group") {
        agent(&s["actor"], "actor")?;
    }
    req_iri(obj(&s["verb"], "verb")?, "id", "verb")?;
    obj(&s["object"], "object")?;
    Ok(())
}

/// Map a whole request body, one answer per statement. The request fails (`Err`) only when it is
/// structurally unusable: not statements, a statement without actor, verb or object (see
/// `structural`), two statements with one id, or a PUT (`put_id` set) that is not exactly one
/// statement object. Any other fault refuses that statement alone (`Answer::Err`).
pub fn map_body(body: &Value, put_id: Option<Uuid>, now: DateTime<Utc>) -> Result<Vec<Answer>, XapiError> {
    if put_id.is_some() && !body.is_object() {
        return Err(invalid("", "PUT stores exactly one statement object"));
    }
    let batch = body.is_array();
    let at = |e: XapiError, i: usize| if batch { e.at(&format!("[{i}]")) } else { e };
    let statements = split_body(body)?;
    let mut ids: Vec<Uuid> = Vec::new();
    for (i, st) in statements.iter().enumerate() {
        structural(st).map_err(|e| at(e, i))?;
        if let Some(id) = st.get("id").and_then(Value::as_str).and_then(std_uuid) {
            if let Some(j) = ids.iter().position(|p| *p == id) {
                return Err(invalid(&format!("[{i}].id"), format!("duplicates the id of statement [{j}] in this batch")));
            }
            ids.push(id);
        }
    }
    Ok(statements
        .into_iter()
        .enumerate()
        .map(|(i, st)| {
            map_statement(st, put_id, now).map_err(|e| Refused {
                statement_id: st.get("id").and_then(Value::as_str).and_then(std_uuid),
                verb: st["verb"]["id"].as_str().unwrap_or_default().to_owned(),
                error: at(e, i),
            })
        })
        .collect())
}

/// The learner, by the one inverse functional identifier of an xAPI Agent.
#[derive(Clone, PartialEq, Eq)]
pub enum Actor {
    Account { home_page: String, name: String },
    /// The `mailto:` IRI as sent.
    Mbox(String),
    MboxSha1(String),
    OpenId(String),
}

impl Actor {
    /// The vault's `external_id`: `account.name` exactly (so `/v1/events` and xAPI agree),
    /// `mbox:<lowercased address>`, `mbox_sha1sum:<lowercase hex>`, `openid:<uri>`.
    pub fn external_id(&self) -> String {
        match self {
            Actor::Account { name, .. } => name.clone(),
            Actor::Mbox(m) => format!("mbox:{}", m["mailto:".len()..].to_lowercase()),
            Actor::MboxSha1(h) => format!("mbox_sha1sum:{}", h.to_lowercase()),
            Actor::OpenId(u) => format!("openid:{u}"),
        }
    }
    /// `account.homePage`, for the handler to check against the institution's LMS.
    pub fn home_page(&self) -> Option<&str> {
        match self {
            Actor::Account { home_page, .. } => Some(home_page),
            _ => None,
        }
    }
}

impl fmt::Debug for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Actor::Account { .. } => "Actor::Account(<redacted>)",
            Actor::Mbox(_) => "Actor::Mbox(<redacted>)",
            Actor::MboxSha1(_) => "Actor::MboxSha1(<redacted>)",
            Actor::OpenId(_) => "Actor::OpenId(<redacted>)",
        })
    }
}

/// A statement mapped to a taxonomy event. `event` lacks `learner_id`, `institution_id` and `server_ts`.
#[derive(Debug, Clone)]
pub struct Mapped {
    pub statement_id: Uuid,
    pub actor: Actor,
    pub event: Map<String, Value>,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Mapped(Mapped),
    /// Valid xAPI that yields no event: `reason` is `unmapped_verb` (no taxonomy mapping),
    /// `no_course` (no course in context or object) or `identity_in_course` (the course IRI
    /// contains the actor's identifier). Acknowledge it; dead-letter without identity.
    Unmapped { statement_id: Uuid, actor: Actor, verb: String, reason: &'static str },
}

impl Outcome {
    /// The learner the statement is about (for the handler's home-page check).
    pub fn actor(&self) -> &Actor {
        match self {
            Outcome::Mapped(m) => &m.actor,
            Outcome::Unmapped { actor, .. } => actor,
        }
    }
    pub fn statement_id(&self) -> Uuid {
        match self {
            Outcome::Mapped(m) => m.statement_id,
            Outcome::Unmapped { statement_id, .. } => *statement_id,
        }
    }
}

// ---------------------------------------------------------------- validation helpers

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

/// Property names are shown only when they look like property names (never an echoed value).
fn plain_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= 32 && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn show_key(k: &str) -> String {
    if plain_key(k) { format!("{k:?}") } else { "(a key not shown)".to_owned() }
}

fn obj<'a>(v: &'a Value, path: &str) -> R<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| invalid(path, "must be a JSON object"))
}

fn only_keys(m: &Map<String, Value>, allowed: &[&str], path: &str) -> R<()> {
    match m.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(invalid(path, format!("property {} is not allowed by xAPI 1.0.3 here", show_key(k)))),
        None => Ok(()),
    }
}

fn str_at<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> R<Option<&'a str>> {
    match m.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(&join(path, key), "must be a string")),
    }
}

fn req_str<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> R<&'a str> {
    str_at(m, key, path)?.ok_or_else(|| invalid(&join(path, key), "is required"))
}

fn bool_at(m: &Map<String, Value>, key: &str, path: &str) -> R<Option<bool>> {
    match m.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid(&join(path, key), "must be a boolean")),
    }
}

fn num_at(m: &Map<String, Value>, key: &str, path: &str) -> R<Option<f64>> {
    match m.get(key) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(invalid(&join(path, key), "must be a number")),
    }
}

fn is_iri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else { return false };
    let mut sc = scheme.chars();
    let scheme_ok = sc.next().is_some_and(|c| c.is_ascii_alphabetic())
        && sc.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let chars_ok = !s.chars().any(|c| c.is_whitespace() || c.is_control() || "<>\"{}|\\^`".contains(c));
    let pct_ok = s.match_indices('%').all(|(i, _)| {
        s.as_bytes().get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    let web = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    let authority_ok = !web || rest.strip_prefix("//").is_some_and(|r| !r.is_empty() && !r.starts_with('/'));
    scheme_ok && !rest.is_empty() && chars_ok && pct_ok && authority_ok
}

fn req_iri<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> R<&'a str> {
    let s = req_str(m, key, path)?;
    if is_iri(s) { Ok(s) } else { Err(invalid(&join(path, key), "must be an absolute IRI with a scheme")) }
}

fn opt_iri(m: &Map<String, Value>, key: &str, path: &str) -> R<()> {
    match m.contains_key(key) {
        true => req_iri(m, key, path).map(|_| ()),
        false => Ok(()),
    }
}

/// RFC 5646 best effort (spec 2.2.s4.b2: token lengths).
fn is_lang_tag(t: &str) -> bool {
    let mut parts = t.split('-');
    let first = parts.next().unwrap_or_default();
    let first_ok = (2..=8).contains(&first.len()) && first.chars().all(|c| c.is_ascii_alphabetic())
        || first.eq_ignore_ascii_case("x")
        || first.eq_ignore_ascii_case("i");
    first_ok && parts.all(|p| (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()))
}

fn lang_map(v: &Value, path: &str) -> R<()> {
    for (k, val) in obj(v, path)? {
        if !is_lang_tag(k) {
            return Err(invalid(path, "language map keys must be RFC 5646 language tags"));
        }
        if !val.is_string() {
            return Err(invalid(path, "language map values must be strings"));
        }
    }
    Ok(())
}

fn extensions(v: &Value, path: &str) -> R<()> {
    match obj(v, path)?.keys().all(|k| is_iri(k)) {
        true => Ok(()), // values are free (spec 4.1: never reject on extension values)
        false => Err(invalid(path, "extension keys must be IRIs")),
    }
}

fn std_uuid(s: &str) -> Option<Uuid> {
    (s.len() == 36).then(|| Uuid::parse_str(s).ok()).flatten()
}

/// ISO 8601 timestamp: RFC 3339, `±hhmm`/`±hh` offsets, or no offset (taken as UTC).
fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(t.with_timezone(&Utc));
        }
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|n| n.and_utc())
}

fn timestamp_at(m: &Map<String, Value>, key: &str) -> R<Option<DateTime<Utc>>> {
    match str_at(m, key, "")? {
        None => Ok(None),
        Some(s) => parse_timestamp(s).map(Some).ok_or_else(|| invalid(key, "must be an ISO 8601 timestamp")),
    }
}

/// ISO 8601:2004 4.4.3.2 duration: `PnYnMnDTnHnMnS` (a fraction only on the last component) or `PnW`.
fn is_duration(s: &str) -> bool {
    fn components(s: &str, order: &[u8], count: &mut u32, frac: &mut bool) -> bool {
        let (b, mut i, mut next) = (s.as_bytes(), 0, 0);
        while i < b.len() {
            if *frac {
                return false;
            }
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == start {
                return false;
            }
            if i < b.len() && (b[i] == b'.' || b[i] == b',') {
                let fs = i + 1;
                i = fs;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i == fs {
                    return false;
                }
                *frac = true;
            }
            match b.get(i).and_then(|d| order[next..].iter().position(|o| o == d)) {
                Some(p) => next += p + 1,
                None => return false,
            }
            i += 1;
            *count += 1;
        }
        true
    }
    let Some(rest) = s.strip_prefix('P') else { return false };
    let (mut n, mut frac) = (0, false);
    if rest.ends_with('W') {
        return components(rest, b"W", &mut n, &mut frac) && n == 1;
    }
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut tn = 0;
    components(date, b"YMD", &mut n, &mut frac)
        && time.is_none_or(|t| components(t, b"HMS", &mut tn, &mut frac) && tn > 0)
        && n + tn > 0
}

/// The spec forbids null anywhere but inside extensions (2.2.s4.b1.b1).
fn reject_nulls(v: &Value, path: &str) -> R<()> {
    match v {
        Value::Null => Err(invalid(path, "null is not allowed (outside extensions)")),
        Value::Array(a) => a.iter().enumerate().try_for_each(|(i, e)| reject_nulls(e, &format!("{path}[{i}]"))),
        Value::Object(m) => m
            .iter()
            .filter(|(k, _)| k.as_str() != "extensions")
            .try_for_each(|(k, e)| reject_nulls(e, &join(path, if plain_key(k) { k } else { "?" }))),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------- statement parts

const IFIS: [&str; 4] = ["mbox", "mbox_sha1sum", "openid", "account"];

/// The one IFI of an Agent or Identified Group (`None` when there is none).
fn ifi(m: &Map<String, Value>, path: &str) -> R<Option<Actor>> {
    let present: Vec<&str> = IFIS.into_iter().filter(|k| m.contains_key(*k)).collect();
    if present.len() > 1 {
        return Err(invalid(path, format!("has {} inverse functional identifiers; exactly one is allowed", present.len())));
    }
    let Some(&key) = present.first() else { return Ok(None) };
    let p = join(path, key);
    let actor = match key {
        "mbox" => {
            let s = req_str(m, key, path)?;
            let ok = s.strip_prefix("mailto:").and_then(|a| a.split_once('@')).is_some_and(|(l, d)| {
                !l.is_empty() && !d.is_empty() && !d.contains('@') && !s.chars().any(|c| c.is_whitespace() || c.is_control())
            });
            if !ok {
                return Err(invalid(&p, "must be a mailto IRI (mailto:address)"));
            }
            Actor::Mbox(s.to_owned())
        }
        "mbox_sha1sum" => {
            let s = req_str(m, key, path)?;
            if s.len() != 40 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(&p, "must be 40 hexadecimal digits (SHA-1)"));
            }
            Actor::MboxSha1(s.to_owned())
        }
        "openid" => Actor::OpenId(req_iri(m, key, path)?.to_owned()),
        _ => {
            let a = obj(&m["account"], &p)?;
            only_keys(a, &["homePage", "name"], &p)?;
            let home_page = req_iri(a, "homePage", &p)?.to_owned();
            let name = req_str(a, "name", &p)?;
            if name.trim().is_empty() || name.chars().any(char::is_control) {
                return Err(invalid(&join(&p, "name"), "must be a non-empty string without control characters"));
            }
            Actor::Account { home_page, name: name.to_owned() }
        }
    };
    Ok(Some(actor))
}

fn agent(v: &Value, path: &str) -> R<Actor> {
    let m = obj(v, path)?;
    only_keys(m, &["objectType", "name", "mbox", "mbox_sha1sum", "openid", "account"], path)?;
    if let Some(t) = str_at(m, "objectType", path)? {
        if t != "Agent" {
            return Err(invalid(&join(path, "objectType"), "must be \"Agent\" here"));
        }
    }
    str_at(m, "name", path)?;
    ifi(m, path)?.ok_or_else(|| invalid(path, "an Agent needs exactly one inverse functional identifier (mbox, mbox_sha1sum, openid or account)"))
}

fn group(m: &Map<String, Value>, path: &str) -> R<()> {
    only_keys(m, &["objectType", "name", "member", "mbox", "mbox_sha1sum", "openid", "account"], path)?;
    str_at(m, "name", path)?;
    let identified = ifi(m, path)?.is_some();
    match m.get("member") {
        Some(Value::Array(members)) => {
            members.iter().enumerate().try_for_each(|(i, a)| agent(a, &format!("{}[{i}]", join(path, "member"))).map(|_| ()))
        }
        Some(_) => Err(invalid(&join(path, "member"), "must be an array of Agents")),
        None if identified => Ok(()),
        None => Err(invalid(path, "an anonymous Group must list its members")),
    }
}

fn agent_or_group(v: &Value, path: &str, group_only: bool) -> R<()> {
    let m = obj(v, path)?;
    match str_at(m, "objectType", path)? {
        Some("Group") => group(m, path),
        _ if group_only => Err(invalid(&join(path, "objectType"), "must be \"Group\"")),
        _ => agent(v, path).map(|_| ()),
    }
}

/// How strictly an activity's `id` is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum IdRule {
    /// An IRI when present (xAPI 1.0.3 4.1.4.1 requires it): the statement's object. Open edX's
    /// "required data only" statements send an object without `id`; such a statement has no
    /// content, and no course unless its context names one (`no_course`, acknowledged).
    IriIfPresent,
    /// An IRI, or a bare identifier (no whitespace or control characters), as lenient LRSs accept
    /// in context activities: Open edX puts an exam attempt's UUID in `grouping`. Never a course.
    IriOrBareId,
}

/// `objectType` of an activity: `Activity`, or `GroupActivity` (Open edX's problems with several
/// questions; not an xAPI 1.0.3 type, read as an Activity).
const ACTIVITY_TYPES: &[&str] = &["Activity", "GroupActivity"];

fn activity<'a>(v: &'a Value, path: &str, rule: IdRule) -> R<&'a Map<String, Value>> {
    let m = obj(v, path)?;
    only_keys(m, &["objectType", "id", "definition"], path)?;
    if str_at(m, "objectType", path)?.is_some_and(|t| !ACTIVITY_TYPES.contains(&t)) {
        return Err(invalid(&join(path, "objectType"), "must be \"Activity\" (or Open edX's \"GroupActivity\")"));
    }
    match rule {
        IdRule::IriIfPresent => opt_iri(m, "id", path)?,
        IdRule::IriOrBareId => {
            let id = req_str(m, "id", path)?;
            if !is_iri(id) && !is_bare_id(id) {
                return Err(invalid(&join(path, "id"), "must be an IRI or an identifier without spaces"));
            }
        }
    }
    if let Some(d) = m.get("definition") {
        definition(d, &join(path, "definition"))?;
    }
    Ok(m)
}

/// A non-IRI activity id tolerated in context activities: 1 to 256 characters, none of them
/// whitespace, control or IRI-excluded characters.
fn is_bare_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && !s.chars().any(|c| c.is_whitespace() || c.is_control() || "<>\"{}|\\^`".contains(c))
}

const INTERACTION_TYPES: &[&str] =
    &["true-false", "choice", "fill-in", "long-fill-in", "matching", "performance", "sequencing", "likert", "numeric", "other"];
const COMPONENT_LISTS: [&str; 5] = ["choices", "scale", "source", "target", "steps"];

fn definition(v: &Value, path: &str) -> R<()> {
    let m = obj(v, path)?;
    let mut allowed = vec!["name", "description", "type", "moreInfo", "extensions", "interactionType", "correctResponsesPattern"];
    allowed.extend(COMPONENT_LISTS);
    only_keys(m, &allowed, path)?;
    for k in ["name", "description"] {
        if let Some(l) = m.get(k) {
            lang_map(l, &join(path, k))?;
        }
    }
    opt_iri(m, "type", path)?;
    opt_iri(m, "moreInfo", path)?;
    if let Some(e) = m.get("extensions") {
        extensions(e, &join(path, "extensions"))?;
    }
    match str_at(m, "interactionType", path)? {
        Some(t) if !INTERACTION_TYPES.contains(&t) => {
            return Err(invalid(&join(path, "interactionType"), "must be one of the xAPI interaction types"))
        }
        None if m.contains_key("correctResponsesPattern") || COMPONENT_LISTS.iter().any(|k| m.contains_key(*k)) => {
            return Err(invalid(path, "interaction properties need an interactionType"))
        }
        _ => {}
    }
    if let Some(p) = m.get("correctResponsesPattern") {
        if !p.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
            return Err(invalid(&join(path, "correctResponsesPattern"), "must be an array of strings"));
        }
    }
    for k in COMPONENT_LISTS {
        let Some(list) = m.get(k) else { continue };
        let lp = join(path, k);
        let items = list.as_array().ok_or_else(|| invalid(&lp, "must be an array of interaction components"))?;
        let mut ids = std::collections::BTreeSet::new();
        for (i, c) in items.iter().enumerate() {
            let cp = format!("{lp}[{i}]");
            let cm = obj(c, &cp)?;
            only_keys(cm, &["id", "description"], &cp)?;
            if !ids.insert(req_str(cm, "id", &cp)?) {
                return Err(invalid(&join(&cp, "id"), "interaction component ids must be distinct"));
            }
            if let Some(d) = cm.get("description") {
                lang_map(d, &join(&cp, "description"))?;
            }
        }
    }
    Ok(())
}

fn check_result(v: &Value) -> R<&Map<String, Value>> {
    let m = obj(v, "result")?;
    only_keys(m, &["score", "success", "completion", "response", "duration", "extensions"], "result")?;
    if let Some(s) = m.get("score") {
        let sm = obj(s, "result.score")?;
        only_keys(sm, &["scaled", "raw", "min", "max"], "result.score")?;
        let p = "result.score";
        let (scaled, raw, min, max) = (num_at(sm, "scaled", p)?, num_at(sm, "raw", p)?, num_at(sm, "min", p)?, num_at(sm, "max", p)?);
        if scaled.is_some_and(|x| !(-1.0..=1.0).contains(&x)) {
            return Err(invalid("result.score.scaled", "must be between -1 and 1 inclusive"));
        }
        if let (Some(lo), Some(hi)) = (min, max) {
            // xAPI 1.0.3: min < max. Open edX sends a problem worth 0 points as min = max = 0 with
            // raw = scaled = 0: accepted (nothing to scale), any other min = max is not.
            let zero_points = lo == 0.0 && hi == 0.0 && raw.is_none_or(|r| r == 0.0) && scaled.is_none_or(|x| x == 0.0);
            if lo > hi || (lo == hi && !zero_points) {
                return Err(invalid("result.score.min", "must be less than max (min = max only for a problem worth 0 points)"));
            }
        }
        if raw.is_some_and(|r| min.is_some_and(|lo| r < lo) || max.is_some_and(|hi| r > hi)) {
            return Err(invalid("result.score.raw", "must be between min and max inclusive"));
        }
    }
    bool_at(m, "success", "result")?;
    bool_at(m, "completion", "result")?;
    str_at(m, "response", "result")?;
    if str_at(m, "duration", "result")?.is_some_and(|d| !is_duration(d)) {
        return Err(invalid("result.duration", "must be an ISO 8601 duration (e.g. PT1M30.5S)"));
    }
    if let Some(e) = m.get("extensions") {
        extensions(e, "result.extensions")?;
    }
    Ok(m)
}

/// Validated context; returns the context activities (parent first, then grouping) for course lookup.
type Obj = Map<String, Value>;

fn check_context(v: &Value) -> R<(&Obj, Vec<&Obj>)> {
    let p = "context";
    let m = obj(v, p)?;
    only_keys(m, &["registration", "instructor", "team", "contextActivities", "revision", "platform", "language", "statement", "extensions"], p)?;
    if str_at(m, "registration", p)?.is_some_and(|r| std_uuid(r).is_none()) {
        return Err(invalid("context.registration", "must be a UUID in standard form"));
    }
    if let Some(i) = m.get("instructor") {
        agent_or_group(i, "context.instructor", false)?;
    }
    if let Some(t) = m.get("team") {
        agent_or_group(t, "context.team", true)?;
    }
    let mut course_candidates = Vec::new();
    if let Some(ca) = m.get("contextActivities") {
        let cp = "context.contextActivities";
        let cm = obj(ca, cp)?;
        only_keys(cm, &["parent", "grouping", "category", "other"], cp)?;
        for key in ["parent", "grouping", "category", "other"] {
            let kp = join(cp, key);
            let acts = match cm.get(key) {
                None => continue,
                Some(Value::Array(a)) => {
                    a.iter().enumerate().map(|(i, x)| activity(x, &format!("{kp}[{i}]"), IdRule::IriOrBareId)).collect::<R<Vec<_>>>()?
                }
                Some(single) => vec![activity(single, &kp, IdRule::IriOrBareId)?],
            };
            if key == "parent" || key == "grouping" {
                // A bare id (an exam attempt's UUID) is never a course.
                course_candidates.extend(acts.into_iter().filter(|a| is_iri(id_of(a))));
            }
        }
    }
    str_at(m, "revision", p)?;
    str_at(m, "platform", p)?;
    if str_at(m, "language", p)?.is_some_and(|l| !is_lang_tag(l)) {
        return Err(invalid("context.language", "must be an RFC 5646 language tag"));
    }
    if let Some(s) = m.get("statement") {
        let sm = obj(s, "context.statement")?;
        only_keys(sm, &["objectType", "id"], "context.statement")?;
        if str_at(sm, "objectType", "context.statement")? != Some("StatementRef") {
            return Err(invalid("context.statement.objectType", "must be \"StatementRef\""));
        }
        if std_uuid(req_str(sm, "id", "context.statement")?).is_none() {
            return Err(invalid("context.statement.id", "must be a UUID in standard form"));
        }
    }
    if let Some(e) = m.get("extensions") {
        extensions(e, "context.extensions")?;
    }
    Ok((m, course_candidates))
}

// ---------------------------------------------------------------- mapping

/// Validate one statement and map it. `put_id` is the `statementId` of a PUT; `now` is used as
/// `client_ts` when the statement has no timestamp (the handler then sets the time the
/// statement was first stored, xAPI's `stored`, so that a retry keeps its client time).
pub fn map_statement(st: &Value, put_id: Option<Uuid>, now: DateTime<Utc>) -> Result<Outcome, XapiError> {
    let s = obj(st, "")?;
    reject_nulls(st, "")?;
    only_keys(s, &["id", "actor", "verb", "object", "result", "context", "timestamp", "stored", "authority", "version", "attachments"], "")?;
    for k in ["actor", "verb", "object"] {
        if !s.contains_key(k) {
            return Err(invalid(k, "is required"));
        }
    }
    let statement_id = match str_at(s, "id", "")? {
        Some(id) => {
            let id = std_uuid(id).ok_or_else(|| invalid("id", "must be a UUID in standard form"))?;
            if put_id.is_some_and(|p| p != id) {
                return Err(err("xapi_id_conflict", "id", "differs from the statementId parameter"));
            }
            id
        }
        None => put_id.unwrap_or_else(Uuid::new_v4),
    };
    if str_at(s, "version", "")?.is_some_and(|v| !is_1_0_x(v)) {
        return Err(err("xapi_version", "version", "statement version must be 1.0.x"));
    }
    let actor_m = obj(&s["actor"], "actor")?;
    if str_at(actor_m, "objectType", "actor")? == Some("Group") {
        return Err(unsupported("actor", "a Group actor is not supported: learner telemetry needs one Agent per statement"));
    }
    let actor = agent(&s["actor"], "actor")?;
    let verb_m = obj(&s["verb"], "verb")?;
    only_keys(verb_m, &["id", "display"], "verb")?;
    let verb = req_iri(verb_m, "id", "verb")?;
    if let Some(d) = verb_m.get("display") {
        lang_map(d, "verb.display")?;
    }
    let object_m = obj(&s["object"], "object")?;
    match str_at(object_m, "objectType", "object")? {
        None | Some("Activity" | "GroupActivity") => {}
        Some(t @ ("Agent" | "Group" | "SubStatement" | "StatementRef")) => {
            return Err(unsupported("object.objectType", format!("{t} objects are not supported for telemetry (Activity only)")))
        }
        Some(_) => return Err(invalid("object.objectType", "must be Activity, Agent, Group, SubStatement or StatementRef")),
    }
    let object = activity(&s["object"], "object", IdRule::IriIfPresent)?;
    let result = s.get("result").map(check_result).transpose()?;
    let (context, candidates) = match s.get("context") {
        Some(c) => {
            let (m, c) = check_context(c)?;
            (Some(m), c)
        }
        None => (None, Vec::new()),
    };
    let timestamp = timestamp_at(s, "timestamp")?;
    timestamp_at(s, "stored")?;
    if let Some(a) = s.get("authority") {
        agent_or_group(a, "authority", false)?;
    }
    if s.contains_key("attachments") {
        return Err(unsupported("attachments", "statements with attachments are not supported"));
    }
    let mut ids = Vec::new();
    for v in [s.get("actor"), s.get("authority"), context.and_then(|c| c.get("instructor")), context.and_then(|c| c.get("team"))] {
        identities_of(v, &mut ids);
    }
    Ok(map_valid(statement_id, actor, verb, object, result, context, &candidates, &ids, timestamp.unwrap_or(now)))
}

fn sub<'a>(m: Option<&'a Map<String, Value>>, key: &str) -> Option<&'a Map<String, Value>> {
    m.and_then(|m| m.get(key)).and_then(Value::as_object)
}

fn ext_num(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().trim_end_matches(['x', 'X']).parse().ok(),
        _ => None,
    }
    .filter(|x: &f64| x.is_finite())
}

fn fmt_num(x: f64) -> String {
    format!("{x}")
}

/// The key after `marker` (e.g. `course-v1:...`) up to the next `/`, `?` or `#`.
fn key_after<'a>(iri: &'a str, marker: &str) -> Option<&'a str> {
    let rest = &iri[iri.find(marker)?..];
    Some(&rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())])
}

fn is_course_type(t: Option<&str>) -> bool {
    t.is_some_and(|t| t.ends_with("/activities/course") || t.ends_with("/activitytype/course"))
}

fn activity_type(a: &Map<String, Value>) -> Option<&str> {
    sub(Some(a), "definition").and_then(|d| d.get("type")).and_then(Value::as_str)
}

fn id_of(a: &Map<String, Value>) -> &str {
    a.get("id").and_then(Value::as_str).unwrap_or_default()
}

/// Course: an Open edX `course-v1:` key in parent/grouping, else a course-typed parent/grouping
/// activity, else the object when it is the course, else the course of an Open edX `block-v1:` object,
/// else parent[0] / grouping[0].
fn course_of(candidates: &[&Map<String, Value>], object: &Map<String, Value>) -> Option<String> {
    let oid = id_of(object);
    let from_block = || {
        let b = key_after(oid, "block-v1:")?;
        Some(format!("course-v1:{}", b["block-v1:".len()..].split("+type@").next()?))
    };
    candidates
        .iter()
        .find_map(|a| key_after(id_of(a), "course-v1:").or_else(|| key_after(id_of(a), "ccx-v1:")))
        .map(str::to_owned)
        .or_else(|| candidates.iter().find(|a| is_course_type(activity_type(a))).map(|a| id_of(a).to_owned()))
        .or_else(|| (!oid.is_empty() && is_course_type(activity_type(object))).then(|| key_after(oid, "course-v1:").unwrap_or(oid).to_owned()))
        .or_else(from_block)
        .or_else(|| candidates.first().map(|a| id_of(a).to_owned()))
}

/// Fit a string into `max` bytes: kept as is when it fits, else a prefix + `~` + 16 hex digits of its SHA-256.
fn fit(s: &str, max: usize) -> String {
    if s.len() <= max && !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    let tag: String = Sha256::digest(s.as_bytes())[..8].iter().map(|b| format!("{b:02x}")).collect();
    let mut prefix = String::new();
    for c in s.chars().filter(|c| !c.is_control()) {
        if prefix.len() + c.len_utf8() > max - tag.len() - 1 {
            break;
        }
        prefix.push(c);
    }
    format!("{prefix}~{tag}")
}

/// The identifying strings (names, IFI values, mbox local parts; lowercased) of an Agent or Group
/// value: the actor, authority, instructor and team members.
fn identities_of(v: Option<&Value>, out: &mut Vec<String>) {
    let Some(Value::Object(m)) = v else { return };
    for k in ["name", "mbox", "mbox_sha1sum", "openid"] {
        if let Some(s) = m.get(k).and_then(Value::as_str) {
            let s = s.trim_start_matches("mailto:").trim().to_lowercase();
            if k == "mbox" {
                out.extend(s.split('@').next().map(str::to_owned));
            }
            out.push(s);
        }
    }
    out.extend(m.get("account").and_then(|a| a.get("name")).and_then(Value::as_str).map(|n| n.trim().to_lowercase()));
    if let Some(Value::Array(members)) = m.get("member") {
        members.iter().for_each(|x| identities_of(Some(x), out));
    }
}

/// Whether `value` contains one of `ids` at least `min` bytes long, case-insensitively.
fn contains_identity(value: &str, ids: &[String], min: usize) -> bool {
    let v = value.to_lowercase();
    ids.iter().any(|id| id.len() >= min && v.contains(id.as_str()))
}

/// A trimmed, non-empty free-form string, unless it looks like an email address or contains an
/// identity of 4+ characters (then it is not copied).
fn free_text<'a>(v: Option<&'a str>, ids: &[String]) -> Option<&'a str> {
    let email_like = |s: &str| s.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.'));
    v.map(str::trim).filter(|s| !s.is_empty() && !email_like(s) && !contains_identity(s, ids, 4))
}

#[allow(clippy::too_many_arguments)]
fn map_valid(
    statement_id: Uuid,
    actor: Actor,
    verb: &str,
    object: &Map<String, Value>,
    result: Option<&Map<String, Value>>,
    context: Option<&Map<String, Value>>,
    candidates: &[&Map<String, Value>],
    ids: &[String],
    client_ts: DateTime<Utc>,
) -> Outcome {
    let unmapped = |reason: &'static str| Outcome::Unmapped { statement_id, actor: actor.clone(), verb: verb.to_owned(), reason };
    let (rext, cext) = (sub(result, "extensions"), sub(context, "extensions"));
    let rx = |k: &str| ext_num(rext.and_then(|m| m.get(k)));
    let obj_type = activity_type(object);
    let is_video = obj_type == Some(VIDEO_TYPE);
    let (time_from, time_to) = (rx(X_TIME_FROM), rx(X_TIME_TO));
    let speed = rx(X_EDX_SPEED_TO).or_else(|| rx(X_SPEED)).or_else(|| ext_num(cext.and_then(|m| m.get(X_SPEED))));
    let name = verb.strip_prefix(VIDEO).map(|n| ("video", n)).or_else(|| verb.strip_prefix(ADL).map(|n| ("adl", n)));
    let event_type = match (name, verb) {
        (Some(("video", "played")), _) => "content.start",
        (Some(("video", "paused")), _) => "interact.pause",
        (Some(("video", "seeked")), _) => match (time_from, time_to) {
            (Some(f), Some(t)) if t < f => "interact.replay",
            _ => "content.view",
        },
        (Some((_, "initialized")), _) if is_video => "content.view",
        (Some((_, "initialized" | "launched")), _) => "session.start",
        (Some((_, "completed")), _)
            if matches!(obj_type, Some("http://adlnet.gov/expapi/activities/assessment" | "http://adlnet.gov/expapi/activities/attempt")) =>
        {
            "assess.submit"
        }
        (Some((_, "completed")), _) => "content.complete",
        (Some((_, "terminated" | "exited")), _) => "session.end",
        (Some(("adl", "interacted")), _) if speed.is_some() => "interact.speed_change",
        (Some(("adl", "answered")), _) => "assess.submit",
        (Some(("adl", "attempted")), _) => "assess.attempt",
        (Some(("adl", "experienced")), _) => "content.view",
        (Some(("adl", "passed" | "failed" | "scored")), _) => "assess.score",
        (Some(("adl", "progressed")), _) => "session.heartbeat",
        (_, "http://id.tincanapi.com/verb/viewed" | "https://w3id.org/xapi/dod-isd/verbs/navigated") => "content.view",
        (_, "https://w3id.org/xapi/acrossx/verbs/evaluated" | "https://w3id.org/xapi/tla/verbs/scored") => "assess.score",
        // Open edX `edx.grades.{course,subsection}.grade_calculated`: a grade with its score
        // (without a score, e.g. a badge, it is not an assessment).
        (_, "http://id.tincanapi.com/verb/earned") if sub(result, "score").is_some() => "assess.score",
        _ => return unmapped("unmapped_verb"),
    };
    let Some(course) = course_of(candidates, object) else { return unmapped("no_course") };
    // IRIs are matched against identities of 8+ characters only (short numeric LMS ids collide).
    if contains_identity(&course, ids, 8) {
        return unmapped("identity_in_course");
    }
    let oid = id_of(object);
    let content = key_after(oid, "block-v1:").or_else(|| key_after(oid, "course-v1:")).unwrap_or(oid);
    let free = |v| free_text(v, ids);
    let session = SESSION_EXTENSIONS
        .iter()
        .find_map(|k| free(cext.and_then(|m| m.get(*k)).and_then(Value::as_str)))
        .or_else(|| free(context.and_then(|c| c.get("registration")).and_then(Value::as_str)));
    let cohort = free(cext.and_then(|m| m.get(COHORT_EXTENSION)).and_then(Value::as_str)).unwrap_or(DEFAULT_COHORT);
    let position = if verb.ends_with("/seeked") { time_to } else { rx(X_TIME) };

    let mut props = Map::new();
    let mut put = |k: &str, v: String| {
        let clean: String = v.chars().filter(|c| !c.is_control()).collect();
        let mut end = clean.len().min(MAX_PROP_VALUE);
        while !clean.is_char_boundary(end) {
            end -= 1;
        }
        props.insert(k.to_owned(), Value::String(clean[..end].to_owned()));
    };
    put("xapi_verb", verb.to_owned());
    if let Some(t) = obj_type {
        put("object_type", t.to_owned());
    }
    if let Some(t) = sub(Some(object), "definition").and_then(|d| d.get("interactionType")).and_then(Value::as_str) {
        put("interaction_type", t.to_owned());
    }
    // Open edX's problem with several questions: one statement for the problem (a GroupActivity)
    // and one per question, each pointing at it by `context.statement`.
    if object.get("objectType").and_then(Value::as_str) == Some("GroupActivity") {
        put("group_activity", "true".to_owned());
    }
    if let Some(id) = sub(context, "statement").and_then(|st| st.get("id")).and_then(Value::as_str) {
        put("part_of", id.to_owned());
    }
    if let Some(r) = result {
        for (k, p) in [("success", "result_success"), ("completion", "result_completion")] {
            if let Some(b) = r.get(k).and_then(Value::as_bool) {
                put(p, b.to_string());
            }
        }
        for k in ["scaled", "raw", "min", "max"] {
            if let Some(x) = sub(Some(r), "score").and_then(|s| s.get(k)).and_then(Value::as_f64) {
                put(&format!("score_{k}"), fmt_num(x));
            }
        }
        if let Some(d) = r.get("duration").and_then(Value::as_str) {
            put("duration", d.to_owned());
        }
    }
    if verb.ends_with("/seeked") {
        let dir = match (time_from, time_to) {
            (Some(f), Some(t)) if t < f => "backward",
            (Some(_), Some(_)) => "forward",
            _ => "unknown",
        };
        put("seek", dir.to_owned());
    }
    for (k, v) in [("time_from", time_from), ("time_to", time_to), ("speed", speed), ("speed_from", rx(X_EDX_SPEED_FROM)), ("progress", rx(X_PROGRESS))] {
        if let Some(x) = v {
            put(k, fmt_num(x));
        }
    }
    if let Some(len) = ext_num(cext.and_then(|m| m.get(X_LENGTH))) {
        put("video_length", fmt_num(len));
    }
    if let Some(p) = free(context.and_then(|c| c.get("platform")).and_then(Value::as_str)) {
        put("platform", p.to_owned());
    }
    if let Some(l) = context.and_then(|c| c.get("language")).and_then(Value::as_str) {
        put("language", l.to_owned());
    }

    let mut ev = Map::new();
    ev.insert("event_id".into(), Value::String(statement_id.to_string()));
    ev.insert("event_version".into(), EVENT_VERSION.into());
    ev.insert("event_type".into(), event_type.into());
    if let Some(s) = session {
        ev.insert("session_id".into(), fit(s, 128).into());
    }
    ev.insert("course_id".into(), fit(&course, 128).into());
    if !content.is_empty() && !contains_identity(content, ids, 8) {
        ev.insert("content_id".into(), fit(content, 256).into());
    }
    ev.insert("cohort_id".into(), fit(cohort, 128).into());
    let pos = position.filter(|p| *p >= 0.0).map(|p| p.floor().min(u32::MAX as f64) as u32);
    ev.insert("position_sec".into(), pos.map(Value::from).unwrap_or(Value::Null));
    ev.insert("client_ts".into(), client_ts.to_rfc3339_opts(SecondsFormat::Millis, true).into());
    ev.insert("props".into(), Value::Object(props));
    Outcome::Mapped(Mapped { statement_id, actor, event: ev })
}

/// The event-routing-backends fixtures' list, shared with the integration tests.
#[cfg(test)]
#[path = "../../tests/common/erb.rs"]
mod erb;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LEARNER: &str = "8c1f2d3e-5b7a-4c9e-a1d2-3f4e5a6b7c8d";
    const COURSE: &str = "course-v1:LearnX+BIO101+2025_T1";
    const VIDEO_BLOCK: &str = "block-v1:LearnX+BIO101+2025_T1+type@video+block@7d3f2a91c04b4e6f9a1b2c3d4e5f6a7b";
    const PROBLEM_BLOCK: &str = "block-v1:LearnX+BIO101+2025_T1+type@problem+block@5e8a1c2b3d4f4a6b8c9d0e1f2a3b4c5d";

    fn fixture(name: &str) -> Value {
        let path = format!("{}/tests/fixtures/xapi/{name}.json", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture JSON")
    }
    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-06-01T12:00:00Z").unwrap().with_timezone(&Utc)
    }
    fn mapped(v: &Value) -> Mapped {
        match map_statement(v, None, now()).expect("valid statement") {
            Outcome::Mapped(m) => m,
            other => panic!("expected a mapped statement, got {other:?}"),
        }
    }
    /// `base` with the edit `f`.
    fn edited(base: &Value, f: &dyn Fn(&mut Value)) -> Value {
        let mut s = base.clone();
        f(&mut s);
        s
    }
    fn code(v: &Value) -> (&'static str, String) {
        let e = map_statement(v, None, now()).expect_err("must be refused");
        (e.code, e.path)
    }
    fn prop<'a>(m: &'a Mapped, k: &str) -> Option<&'a str> {
        m.event["props"].get(k).and_then(Value::as_str)
    }
    /// The event plus what the handler adds must pass taxonomy 2.3 as is.
    fn assert_valid_taxonomy(m: &Mapped) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/taxonomy");
        let tax = crate::taxonomy::Taxonomy::load(&dir).unwrap();
        let mut ev = m.event.clone();
        ev.insert("learner_id".into(), json!(Uuid::new_v4()));
        ev.insert("institution_id".into(), json!("uni-north"));
        ev.insert("server_ts".into(), json!("2025-06-01T12:00:01.000Z"));
        if let Err(r) = tax.validate(&Value::Object(ev)) {
            panic!("taxonomy refused the mapped event: {r:?}");
        }
    }

    #[test]
    fn openedx_fixtures_map_to_the_expected_events() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str, &str, Option<u32>)] = &[
            ("openedx_video_initialized", "content.view", COURSE, VIDEO_BLOCK, None),
            ("openedx_video_played", "content.start", COURSE, VIDEO_BLOCK, Some(0)),
            ("openedx_video_paused", "interact.pause", COURSE, VIDEO_BLOCK, Some(194)),
            ("openedx_video_seeked", "interact.replay", COURSE, VIDEO_BLOCK, Some(10)),
            ("openedx_video_seeked_forward", "content.view", COURSE, VIDEO_BLOCK, Some(95)),
            ("openedx_video_speed_change", "interact.speed_change", COURSE, VIDEO_BLOCK, None),
            ("openedx_video_completed", "content.complete", COURSE, VIDEO_BLOCK, Some(195)),
            ("openedx_video_terminated", "session.end", COURSE, VIDEO_BLOCK, Some(194)),
            ("openedx_problem_check", "assess.score", COURSE, PROBLEM_BLOCK, None),
            ("openedx_problem_attempted", "assess.attempt", COURSE, PROBLEM_BLOCK, None),
            ("openedx_problem_answered", "assess.submit", COURSE, PROBLEM_BLOCK, None),
            ("openedx_course_passed", "assess.score", COURSE, COURSE, None),
            ("openedx_navigated", "content.view", COURSE,
             "block-v1:LearnX+BIO101+2025_T1+type@sequential+block@19a30717eff543078a5d94ae9d6c18a5", None),
        ];
        for (name, ty, course, content, pos) in cases {
            let st = fixture(name);
            let m = mapped(&st);
            let e = &m.event;
            assert_eq!(e["event_type"], *ty, "{name}");
            assert_eq!(e["course_id"], *course, "{name}");
            assert_eq!(e["content_id"], *content, "{name}");
            assert_eq!(e["position_sec"], pos.map(Value::from).unwrap_or(Value::Null), "{name}");
            assert_eq!(e["event_id"], st["id"], "{name}: event_id is the statement id");
            assert_eq!(e["event_version"], "2.3");
            assert_eq!(e["cohort_id"], DEFAULT_COHORT);
            assert!(e["session_id"].as_str().is_some_and(|s| s.len() == 32), "{name}: Open edX session-id");
            assert_eq!(prop(&m, "xapi_verb"), st["verb"]["id"].as_str());
            assert_eq!(m.actor.external_id(), LEARNER, "{name}: account name is the external id");
            assert_eq!(m.actor.home_page(), Some("https://lms.example.edu"));
            assert_valid_taxonomy(&m);
        }
        let m = mapped(&fixture("openedx_video_played"));
        assert_eq!(m.event["client_ts"], "2025-02-03T09:14:12.057Z");
        assert_eq!(prop(&m, "time_from"), None);
        assert_eq!(prop(&m, "video_length"), Some("195"));
        let m = mapped(&fixture("openedx_video_seeked"));
        assert_eq!((prop(&m, "seek"), prop(&m, "time_from"), prop(&m, "time_to")), (Some("backward"), Some("194.381"), Some("10")));
        assert_eq!(prop(&mapped(&fixture("openedx_video_seeked_forward")), "seek"), Some("forward"));
        let m = mapped(&fixture("openedx_video_speed_change"));
        assert_eq!((prop(&m, "speed_from"), prop(&m, "speed")), (Some("1"), Some("1.25")));
        let m = mapped(&fixture("openedx_video_completed"));
        assert_eq!((prop(&m, "result_completion"), prop(&m, "duration")), (Some("true"), Some("PT03M15S")));
        let m = mapped(&fixture("openedx_problem_check"));
        assert_eq!((prop(&m, "score_scaled"), prop(&m, "result_success")), (Some("1"), Some("true")));
        assert_eq!(prop(&m, "interaction_type"), Some("choice"));
        assert_eq!(prop(&m, "response"), None, "free-text responses are never copied");
    }

    #[test]
    fn moodle_batch_maps_with_the_course_from_a_later_parent() {
        let out: Vec<Outcome> = map_body(&fixture("moodle_quiz_batch"), None, now()).unwrap().into_iter().map(Result::unwrap).collect();
        let [Outcome::Mapped(quiz), Outcome::Mapped(view)] = &out[..] else { panic!("two mapped statements") };
        assert_eq!(quiz.event["event_type"], "assess.submit", "completed on an attempt is a submission");
        assert_eq!(quiz.event["course_id"], "https://moodle.example.edu/course/view.php?id=42");
        assert_eq!(quiz.event["content_id"], "https://moodle.example.edu/mod/quiz/attempt.php?attempt=311&cmid=88");
        assert_eq!(quiz.event["client_ts"], "2025-02-10T13:03:52.000Z", "normalised to UTC");
        assert_eq!(quiz.event.get("session_id"), None);
        assert_eq!((prop(quiz, "score_scaled"), prop(quiz, "score_raw")), (Some("0.75"), Some("7.5")));
        assert_eq!((prop(quiz, "platform"), prop(quiz, "language")), (Some("Moodle"), Some("en")));
        assert_eq!(view.event["event_type"], "content.view");
        assert_eq!(quiz.actor.external_id(), "1077");
        for m in [quiz, view] {
            let s = serde_json::to_string(&m.event).unwrap();
            assert!(!s.contains("Ada Lovelace") && !s.contains("1077"), "no actor name or account in {s}");
            assert_valid_taxonomy(m);
        }
    }

    #[test]
    fn no_actor_string_reaches_the_event() {
        for name in ["openedx_video_played", "openedx_video_seeked", "openedx_problem_check", "openedx_course_passed"] {
            let m = mapped(&fixture(name));
            let s = serde_json::to_string(&m.event).unwrap();
            assert!(!s.contains(LEARNER), "{name}");
            assert_eq!(format!("{:?}", m.actor), "Actor::Account(<redacted>)");
            assert!(!format!("{m:?}").contains(LEARNER));
        }
        // free-form strings carrying an identity are dropped, whatever extension they sit in
        let mut st = fixture("openedx_video_played");
        st["actor"] = json!({"mbox": "mailto:Ada.Lovelace@Example.edu", "name": "Ada Lovelace"});
        st["context"]["extensions"][COHORT_EXTENSION] = json!("ada.lovelace@example.edu");
        st["context"]["extensions"]["https://w3id.org/xapi/openedx/extensions/session-id"] = json!("s-ada.lovelace@example.edu");
        st["context"]["platform"] = json!("Ada Lovelace's laptop");
        st["context"]["instructor"] = json!({"mbox": "mailto:prof@example.edu", "name": "Prof X"});
        st["context"]["team"] = json!({"objectType": "Group", "member": [{"account": {"homePage": "https://lms.example.edu", "name": "teammate-77"}}]});
        st["authority"] = json!({"account": {"homePage": "https://lms.example.edu", "name": "oauth-client-9"}});
        let m = mapped(&st);
        assert_eq!(m.actor.external_id(), "mbox:ada.lovelace@example.edu");
        let s = serde_json::to_string(&m.event).unwrap().to_lowercase();
        for leak in ["ada", "lovelace", "prof", "teammate", "oauth-client"] {
            assert!(!s.contains(leak), "{leak} leaked into {s}");
        }
        assert_eq!(m.event["cohort_id"], DEFAULT_COHORT);
        assert_eq!(m.event.get("session_id"), None);
        // a course IRI naming the learner yields no event at all
        let mut st = fixture("openedx_course_passed");
        st["object"]["id"] = json!(format!("https://lms.example.edu/u/{}/course", LEARNER.to_uppercase()));
        assert!(matches!(map_statement(&st, None, now()).unwrap(), Outcome::Unmapped { reason: "identity_in_course", .. }));
    }

    #[test]
    fn invalid_fixtures_fail_with_their_code_and_path() {
        #[rustfmt::skip]
        let cases = [
            ("invalid_missing_actor", "xapi_invalid", "actor"),
            ("invalid_missing_verb", "xapi_invalid", "verb"),
            ("invalid_missing_object", "xapi_invalid", "object"),
            ("invalid_wrong_types", "xapi_invalid", "result.success"),
            ("invalid_two_ifis", "xapi_invalid", "actor"),
            ("invalid_bad_id", "xapi_invalid", "id"),
            ("invalid_group_actor", "xapi_unsupported", "actor"),
            ("invalid_statement_ref_object", "xapi_unsupported", "object.objectType"),
            ("invalid_unknown_property", "xapi_invalid", "$"),
            ("invalid_score_out_of_range", "xapi_invalid", "result.score.scaled"),
            ("invalid_duration", "xapi_invalid", "result.duration"),
            ("invalid_verb_iri", "xapi_invalid", "verb.id"),
            ("invalid_null_value", "xapi_invalid", "context.platform"),
            ("invalid_statement_version", "xapi_version", "version"),
            ("invalid_timestamp", "xapi_invalid", "timestamp"),
        ];
        for (name, want_code, want_path) in cases {
            let st = fixture(name);
            let e = map_statement(&st, None, now()).expect_err(name);
            assert_eq!((e.code, e.path.as_str()), (want_code, want_path), "{name}: {e}");
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains(LEARNER) && !shown.contains("learner@example.edu"), "{name} echoes an identity: {shown}");
        }
        let e = map_statement(&fixture("invalid_two_ifis"), None, now()).unwrap_err();
        assert!(e.message.contains("2 inverse functional identifiers"), "{e}");
        let e = map_statement(&fixture("invalid_unknown_property"), None, now()).unwrap_err();
        assert!(e.message.contains("\"eventVersion\""), "{e}");
    }

    #[test]
    fn more_spec_rules() {
        let base = fixture("openedx_video_played");
        let with = |f: &dyn Fn(&mut Value)| edited(&base, f);
        let bad = |f: &dyn Fn(&mut Value)| code(&with(f));
        assert_eq!(bad(&|s| s["actor"] = json!({"account": {"homePage": "lms.example.edu", "name": "x"}})).1, "actor.account.homePage");
        assert_eq!(bad(&|s| s["actor"] = json!({"mbox": "learner@example.edu"})).1, "actor.mbox");
        assert_eq!(bad(&|s| s["actor"] = json!({"mbox_sha1sum": "abc"})).1, "actor.mbox_sha1sum");
        assert_eq!(bad(&|s| s["actor"] = json!({"objectType": "Agent"})).1, "actor");
        assert_eq!(bad(&|s| s["actor"]["account"]["Name"] = json!("x")).1, "actor.account");
        assert_eq!(bad(&|s| s["verb"]["display"] = json!({"english!": "played"})).1, "verb.display");
        assert_eq!(bad(&|s| s["object"]["id"] = json!("block-v1 with spaces")).1, "object.id");
        assert_eq!(bad(&|s| s["object"]["objectType"] = json!("activity")).1, "object.objectType");
        assert_eq!(bad(&|s| s["object"]["definition"]["interactionType"] = json!("essay")).1, "object.definition.interactionType");
        assert_eq!(bad(&|s| s["context"]["registration"] = json!("nope")).1, "context.registration");
        assert_eq!(bad(&|s| s["context"]["contextActivities"]["parents"] = json!([])).1, "context.contextActivities");
        assert_eq!(bad(&|s| s["context"]["contextActivities"]["parent"][0]["id"] = json!(7)).1, "context.contextActivities.parent[0].id");
        assert_eq!(bad(&|s| s["context"]["extensions"] = json!({"not an iri": 1})).1, "context.extensions");
        assert_eq!(bad(&|s| s["result"]["score"] = json!({"raw": 5, "min": 0, "max": 4})).1, "result.score.raw");
        assert_eq!(bad(&|s| s["result"]["score"] = json!({"scaled": "0.5"})).1, "result.score.scaled");
        assert_eq!(bad(&|s| s["attachments"] = json!([])).0, "xapi_unsupported");
        assert_eq!(bad(&|s| s["object"] = json!({"objectType": "SubStatement"})).0, "xapi_unsupported");
        assert_eq!(bad(&|s| s["context"]["team"] = json!({"objectType": "Group"})).1, "context.team");
        assert_eq!(bad(&|s| s["actor"] = json!("learner")).1, "actor");
        // accepted: nulls inside extensions, single-object context activities, statement version 1.0.0,
        // an offset timestamp, extension values of any type (spec 4.1: never rejected on them)
        let ok = with(&|s| {
            s["context"]["extensions"]["https://example.com/x"] = Value::Null;
            s["context"]["contextActivities"]["parent"] = s["context"]["contextActivities"]["parent"][0].clone();
            s["version"] = json!("1.0.0");
            s["timestamp"] = json!("2025-02-03T10:14:12.5+0100");
            s["result"]["extensions"][X_TIME] = json!({"weird": true});
        });
        let m = mapped(&ok);
        assert_eq!((m.event["course_id"].as_str(), m.event["position_sec"].is_null()), (Some(COURSE), true));
        assert_eq!(m.event["client_ts"], "2025-02-03T09:14:12.500Z");
        // a valid statement without a course anywhere, or with an unknown verb, is unmapped
        let mut none = with(&|s| s["object"]["id"] = json!("https://cdn.example.org/video/42"));
        none["context"].as_object_mut().unwrap().remove("contextActivities");
        assert!(matches!(map_statement(&none, None, now()).unwrap(), Outcome::Unmapped { reason: "no_course", .. }));
        let o = map_statement(&fixture("openedx_enrollment_registered"), None, now()).unwrap();
        let Outcome::Unmapped { verb, reason, statement_id, .. } = o else { panic!("registered is not in the taxonomy") };
        assert_eq!((verb.as_str(), reason), ("http://adlnet.gov/expapi/verbs/registered", "unmapped_verb"));
        assert_eq!(statement_id.to_string(), "bb946682-b0b9-5dc2-a17c-605ef5833c98");
        // no timestamp: client_ts is now
        let mut no_ts = base.clone();
        no_ts.as_object_mut().unwrap().remove("timestamp");
        assert_eq!(mapped(&no_ts).event["client_ts"], "2025-06-01T12:00:00.000Z");
    }

    #[test]
    fn version_header() {
        for v in SUPPORTED_VERSIONS.iter().chain(&["1.0.4", " 1.0.3 "]) {
            assert!(check_version(Some(v)).is_ok(), "{v}");
        }
        for v in [None, Some(""), Some("0.95"), Some("1.1.0"), Some("2.0.0"), Some("1.0.x"), Some("1.0."), Some("1.0.3-rc")] {
            assert_eq!(check_version(v).unwrap_err().code, "xapi_version", "{v:?}");
        }
        assert_eq!(LRS_VERSION, "1.0.3");
    }

    #[test]
    fn statement_ids_and_put() {
        let st = fixture("openedx_video_paused");
        let id = Uuid::parse_str("b2fff5f6-c77d-5aa4-a08b-bb547d6ee5a6").unwrap();
        assert_eq!(map_statement(&st, Some(id), now()).unwrap().statement_id(), id);
        let e = map_statement(&st, Some(Uuid::new_v4()), now()).unwrap_err();
        assert_eq!((e.code, e.path.as_str()), ("xapi_id_conflict", "id"));
        let mut anon = st.clone();
        anon.as_object_mut().unwrap().remove("id");
        let put = Uuid::new_v4();
        let Outcome::Mapped(m) = map_statement(&anon, Some(put), now()).unwrap() else { panic!() };
        assert_eq!((m.statement_id, m.event["event_id"].as_str()), (put, Some(put.to_string().as_str())));
        let fresh = map_statement(&anon, None, now()).unwrap().statement_id();
        assert_eq!(fresh.get_version_num(), 4);
        assert_eq!(parse_statement_id("b2fff5f6-c77d-5aa4-a08b-bb547d6ee5a6").unwrap(), id);
        assert!(parse_statement_id("b2fff5f6c77d5aa4a08bbb547d6ee5a6").is_err(), "standard form only");
        // PUT carries one statement; duplicate ids refuse the batch
        assert_eq!(map_body(&json!([st.clone()]), Some(id), now()).unwrap_err().code, "xapi_invalid");
        let e = map_body(&json!([st.clone(), st.clone()]), None, now()).unwrap_err();
        assert_eq!(e.path, "[1].id");
        assert_eq!(map_body(&json!([anon.clone(), anon]), None, now()).unwrap().len(), 2);
    }

    #[test]
    fn split_body_shapes() {
        let one = json!({"a": 1});
        assert_eq!(split_body(&one).unwrap().len(), 1);
        assert_eq!(split_body(&json!([{}, {}])).unwrap().len(), 2);
        assert_eq!(split_body(&json!([])).unwrap_err().code, "xapi_invalid");
        assert_eq!(split_body(&json!([{}, 3])).unwrap_err().path, "[1]");
        assert!(split_body(&json!("statement")).is_err());
    }

    #[test]
    fn props_and_field_limits() {
        let mut st = fixture("openedx_video_played");
        st["context"]["platform"] = json!("é".repeat(3000)); // 6000 bytes
        let long = format!("https://lms.example.edu/course/{}", "c".repeat(300));
        st["context"]["contextActivities"]["parent"][0]["id"] = json!(long);
        st["object"]["id"] = json!(format!("https://lms.example.edu/video/{}", "v".repeat(400)));
        st["context"]["extensions"][COHORT_EXTENSION] = json!("cohort\u{7}-2025");
        let m = mapped(&st);
        let props = m.event["props"].as_object().unwrap();
        assert!(props.len() <= 64 && props.keys().all(|k| k.len() <= 64));
        assert!(props.values().all(|v| v.as_str().is_some_and(|s| s.len() <= MAX_PROP_VALUE)));
        assert_eq!(prop(&m, "platform").unwrap().len(), 1024, "truncated at a char boundary");
        let course = m.event["course_id"].as_str().unwrap();
        assert!(course.len() <= 128 && course.starts_with("https://lms.example.edu/course/ccc"));
        assert_eq!(course, fit(&long, 128), "stable: the same IRI always gives the same id");
        assert_ne!(fit(&format!("{long}d"), 128), course);
        assert!(m.event["content_id"].as_str().unwrap().len() <= 256);
        assert_eq!(m.event["cohort_id"], fit("cohort\u{7}-2025", 128));
        assert!(!m.event["cohort_id"].as_str().unwrap().contains('\u{7}'));
        assert_valid_taxonomy(&m);
    }

    #[test]
    fn actors() {
        let a = |v: Value| agent(&v, "actor").unwrap();
        assert_eq!(a(json!({"mbox": "mailto:Ada@Example.EDU"})).external_id(), "mbox:ada@example.edu");
        let sha = "ABCDEF0123456789ABCDEF0123456789ABCDEF01";
        assert_eq!(a(json!({"mbox_sha1sum": sha})).external_id(), format!("mbox_sha1sum:{}", sha.to_lowercase()));
        assert_eq!(a(json!({"openid": "https://id.example.org/ada"})).external_id(), "openid:https://id.example.org/ada");
        assert_eq!(format!("{:?}", a(json!({"mbox": "mailto:ada@example.edu"}))), "Actor::Mbox(<redacted>)");
        assert_eq!(a(json!({"openid": "https://id.example.org/ada"})).home_page(), None);
    }

    #[test]
    fn formats() {
        for d in ["PT03M15S", "PT4H35M59.14S", "P3Y1M29DT4H35M59.14S", "P3Y", "P4W", "PT0.5S", "P1D", "PT1,5S"] {
            assert!(is_duration(d), "{d}");
        }
        for d in ["", "P", "PT", "P4W1D", "PT1.5M3S", "PT3S4M", "3 minutes", "P1H", "PT-1S", "pt1s"] {
            assert!(!is_duration(d), "{d}");
        }
        for i in ["http://adlnet.gov/expapi/verbs/played", "urn:uuid:1", "mailto:a@b.c", "https://x.org/a%20b", "tag:example.org,2025:x"] {
            assert!(is_iri(i), "{i}");
        }
        for i in ["played", ":x", "1http://x", "http://", "https:///path", "http://a b", "https://x.org/%zz", ""] {
            assert!(!is_iri(i), "{i}");
        }
        for t in ["en", "en-US", "zh-Hant-TW", "x-private", "i-klingon"] {
            assert!(is_lang_tag(t), "{t}");
        }
        for t in ["", "e", "englishlanguage", "en_US", "en--US", "en-toolongsubtag"] {
            assert!(!is_lang_tag(t), "{t}");
        }
        let ts = |s| parse_timestamp(s).map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true));
        assert_eq!(ts("2025-02-03T09:14:12.057099+00:00").as_deref(), Some("2025-02-03T09:14:12.057Z"));
        assert_eq!(ts("2025-02-03T10:14:12+01").as_deref(), Some("2025-02-03T09:14:12.000Z"));
        assert_eq!(ts("2025-02-03T09:14:12.1").as_deref(), Some("2025-02-03T09:14:12.100Z"), "no offset: UTC");
        assert_eq!(ts("2025-02-30T09:14:12Z"), None);
        assert_eq!(key_after("https://x/courses/course-v1:A+B+C/jump_to/block-v1:A+B+C+type@x+block@y", "block-v1:"), Some("block-v1:A+B+C+type@x+block@y"));
    }


    /// Every statement of `tests/fixtures/xapi/openedx-erb/` (event-routing-backends' expected output).
    fn erb_fixtures() -> Vec<(String, Value)> {
        super::erb::erb_paths()
            .into_iter()
            .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()))
            .collect()
    }
    fn erb(name: &str) -> Value {
        erb_fixtures().into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name}")).1
    }

    #[test]
    fn every_open_edx_shape_is_accepted() {
        let all = erb_fixtures();
        assert!(all.len() >= 77, "{}", all.len());
        let (mut mapped_n, mut unmapped_n) = (0, 0);
        for (name, body) in &all {
            let answers = map_body(body, None, now()).unwrap_or_else(|e| panic!("{name} refused: {e}"));
            for a in answers {
                match a.unwrap_or_else(|r| panic!("{name}: a statement refused: {}", r.error)) {
                    Outcome::Mapped(m) => {
                        mapped_n += 1;
                        assert_valid_taxonomy(&m);
                        assert!(!serde_json::to_string(&m.event).unwrap().contains("32e08e30"), "{name}: actor in the event");
                    }
                    Outcome::Unmapped { reason, .. } => {
                        unmapped_n += 1;
                        assert!(matches!(reason, "unmapped_verb" | "no_course"), "{name}: {reason}");
                    }
                }
            }
        }
        // 90 statements: 59 events; 30 verbs without a taxonomy event (enrolment, forums, hints,
        // captions, transcripts), 1 required-data-only statement without a course.
        assert_eq!((mapped_n, unmapped_n), (59, 31));
    }

    #[test]
    fn the_open_edx_shapes_once_refused_map_as_they_should() {
        const DEMO: &str = "course-v1:edX+DemoX+Demo_Course";
        let one = |name: &str, i: usize| match map_body(&erb(name), None, now()).unwrap().swap_remove(i).unwrap() {
            Outcome::Mapped(m) => m,
            other => panic!("{name}[{i}]: {other:?}"),
        };
        // A problem with several questions: the problem is a GroupActivity, each question points at it.
        for name in ["problem_check(server,multiple_questions,correct)", "problem_check(server).list_answers"] {
            let body = erb(name);
            let group = one(name, 0);
            assert_eq!((group.event["event_type"].as_str(), group.event["course_id"].as_str()), (Some("assess.score"), Some(DEMO)));
            assert_eq!(prop(&group, "group_activity"), Some("true"));
            let q = one(name, 1);
            assert_eq!(q.event["course_id"], DEMO, "the course from grouping, not the GroupActivity parent");
            assert_eq!(prop(&q, "part_of"), body[0]["id"].as_str());
            assert!(q.event["content_id"].as_str().unwrap().starts_with("block-v1:edX+DemoX+Demo_Course+type@problem"));
        }
        // Timed / practice / proctored exams: a bare UUID in grouping is tolerated, never the course.
        for kind in ["timed", "practice", "proctored"] {
            for (step, ty) in [("created", "session.start"), ("submitted", "session.end")] {
                let m = one(&format!("edx.special_exam.{kind}.attempt.{step}"), 0);
                assert_eq!((m.event["event_type"].as_str(), m.event["course_id"].as_str()), (Some(ty), Some(DEMO)), "{kind} {step}");
                assert!(m.event["content_id"].as_str().unwrap().starts_with("block-v1:edX+DemoX+Demo_Course+type@sequential"));
            }
        }
        // Problems worth 0 points: min = max = 0.
        for name in ["problem_check(server).max_grade_0", "edx.grades.problem.submitted.weighted_possible_0"] {
            let m = one(name, 0);
            assert_eq!((prop(&m, "score_min"), prop(&m, "score_max"), prop(&m, "score_raw")), (Some("0"), Some("0"), Some("0")), "{name}");
        }
        // "Required data only": no object id, no context activities -> acknowledged, no_course.
        let o = map_statement(&erb("problem_check(browser).required.only.data"), None, now()).unwrap();
        assert!(matches!(&o, Outcome::Unmapped { reason: "no_course", .. }), "{o:?}");
        assert_eq!(o.statement_id().to_string(), "37e0953c-fa85-5435-8c53-723909ab81d9");
        // ...and with a course in its context, it maps without content.
        let mut st = erb("problem_check(browser).required.only.data");
        st["context"]["contextActivities"] = json!({"parent": [{"id": "http://localhost:18000/course/course-v1:edX+DemoX+Demo_Course"}]});
        let m = mapped(&st);
        assert_eq!((m.event["course_id"].as_str(), m.event.get("content_id")), (Some(DEMO), None));
        // Calculated grades (tincan `earned` with a score) are scores.
        for name in ["edx.grades.subsection.grade_calculated", "edx.grades.course.grade_calculated_letter_grade"] {
            let m = one(name, 0);
            assert_eq!((m.event["event_type"].as_str(), m.event["course_id"].as_str()), (Some("assess.score"), Some(DEMO)), "{name}");
            assert!(prop(&m, "score_scaled").is_some(), "{name}");
        }
        let mut badge = erb("edx.grades.subsection.grade_calculated");
        badge.as_object_mut().unwrap().remove("result");
        assert!(matches!(map_statement(&badge, None, now()).unwrap(), Outcome::Unmapped { reason: "unmapped_verb", .. }));
        // CCX courses by their ccx-v1 key.
        assert_eq!(one("play_video.ccx", 0).event["course_id"], "ccx-v1:edX+DemoX+Demo_Course+ccx@1");
    }

    #[test]
    fn the_tolerances_stay_narrow() {
        let base = fixture("openedx_problem_check");
        let with = |f: &dyn Fn(&mut Value)| edited(&base, f);
        let bad = |f: &dyn Fn(&mut Value)| code(&with(f));
        // min = max only for a 0-point problem
        assert_eq!(bad(&|s| s["result"]["score"] = json!({"min": 0, "max": 0, "raw": 1})).1, "result.score.min");
        assert_eq!(bad(&|s| s["result"]["score"] = json!({"min": 0, "max": 0, "scaled": 0.5})).1, "result.score.min");
        assert_eq!(bad(&|s| s["result"]["score"] = json!({"min": 5, "max": 5, "raw": 5})).1, "result.score.min");
        assert_eq!(bad(&|s| s["result"]["score"] = json!({"min": 2, "max": 1})).1, "result.score.min");
        mapped(&with(&|s| s["result"]["score"] = json!({"min": 0, "max": 0})));
        // the object's id, when present, is an IRI; a context activity's may be a bare id, without spaces
        assert_eq!(bad(&|s| s["object"]["id"] = json!("438AD672-DE2C-4F0B-8876-35444E7DD746")).1, "object.id");
        assert_eq!(bad(&|s| s["context"]["contextActivities"]["grouping"] = json!([{"id": "an attempt"}])).1, "context.contextActivities.grouping[0].id");
        assert_eq!(bad(&|s| s["context"]["contextActivities"]["grouping"] = json!([{"id": ""}])).1, "context.contextActivities.grouping[0].id");
        // GroupActivity is read as an Activity; other object types keep their rules
        mapped(&with(&|s| s["object"]["objectType"] = json!("GroupActivity")));
        assert_eq!(bad(&|s| s["object"]["objectType"] = json!("Group")).0, "xapi_unsupported");
        assert_eq!(bad(&|s| s["context"]["contextActivities"]["parent"][0]["objectType"] = json!("Agent")).1, "context.contextActivities.parent[0].objectType");
        // a bare id is never taken as the course
        let mut st = with(&|s| s["object"]["id"] = json!("https://cdn.example.org/video/42"));
        st["context"]["contextActivities"] = json!({"grouping": [{"id": "438AD672-DE2C-4F0B-8876-35444E7DD746"}]});
        assert!(matches!(map_statement(&st, None, now()).unwrap(), Outcome::Unmapped { reason: "no_course", .. }));
    }

    #[test]
    fn a_batch_answers_per_statement_unless_structurally_unusable() {
        let good = fixture("openedx_video_played");
        let mut no_verb_iri = fixture("openedx_video_paused");
        no_verb_iri["verb"]["id"] = json!("paused");
        // structural: no verb, no actor, an actor that is no Agent, a verb without an IRI -> the whole request
        for (bad, path) in [
            (fixture("invalid_missing_verb"), "[1].verb"),
            (fixture("invalid_missing_actor"), "[1].actor"),
            (fixture("invalid_two_ifis"), "[1].actor"),
            (no_verb_iri, "[1].verb.id"),
            (json!("statement"), "[1]"),
        ] {
            assert_eq!(map_body(&json!([good.clone(), bad]), None, now()).unwrap_err().path, path);
        }
        // unusable alone: its neighbours are answered
        let mut wrong_types = fixture("invalid_wrong_types");
        wrong_types["id"] = json!("6d1c9f0e-2b4a-4c8e-9f1a-0b2c3d4e5f60");
        let mut group_actor = fixture("invalid_group_actor");
        group_actor.as_object_mut().unwrap().remove("id");
        let answers = map_body(&json!([good.clone(), wrong_types, group_actor, fixture("openedx_problem_check")]), None, now()).unwrap();
        assert_eq!(answers.len(), 4);
        assert!(matches!(answers[0], Ok(Outcome::Mapped(_))) && matches!(answers[3], Ok(Outcome::Mapped(_))));
        let r = answers[1].as_ref().unwrap_err();
        assert_eq!((r.error.code, r.error.path.as_str()), ("xapi_invalid", "[1].result.success"));
        assert_eq!(r.statement_id.map(|u| u.to_string()).as_deref(), Some("6d1c9f0e-2b4a-4c8e-9f1a-0b2c3d4e5f60"));
        assert!(r.verb.starts_with("http"));
        let r = answers[2].as_ref().unwrap_err();
        assert_eq!((r.error.code, r.error.path.as_str()), ("xapi_unsupported", "[2].actor"));
        assert!(!format!("{answers:?}").contains(LEARNER), "no identity in the answers");
    }
}
