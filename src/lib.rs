//! learnvault: the privacy and compliance layer for real-time learner telemetry.
//!
//! Learning platforms stream engagement events through Kafka into ClickHouse.
//! learnvault keeps real identities out of that stream: an identity vault on
//! PostgreSQL issues random pseudonyms to the LMS and re-identifies them only
//! for a declared purpose, every access recorded in a hash-chained audit log.
//!
//! `docs/architecture.md` is the map: each module's invariant and API boundary,
//! and the cross-cutting concerns (retries, metrics, redaction, configuration,
//! the record contract).
//!
//! # Layout
//! - [`config`]: typed settings in one section per owning context (defaults -> TOML file ->
//!   `LEARNVAULT_*` env, one table of names), validated before anything opens.
//! - [`domain`]: validated newtypes (`Pseudonym`, `InstitutionId`, `ExternalId`, `Purpose`).
//! - [`vault`]: keys (HKDF per institution), envelope encryption, blind indexes,
//!   issuance (group commit), lookup, decrypt, consent. Only `vault` stores or decrypts identities.
//! - [`audit`]: append-only hash-chained audit log, group-committed recorder, verification.
//! - [`auth`]: JWT verification and development token minting.
//! - [`policy`]: roles -> permissions and declared purposes from `policies/*.yaml`.
//! - [`api`]: axum routes, extractors, the one error type, OpenAPI. Only `api` serves HTTP.
//! - [`lander`]: the governed Kafka -> ClickHouse lander: config, run loop, decode threads,
//!   rows, the intents ledger (exactly-once), the insert/commit service (dead letters, retries).
//! - [`retention`]: retention as a table property, verified against the live engine.
//! - [`taxonomy`]: versioned event schemas, validation at the gate, the compatibility check.
//! - [`warehouse`]: the ClickHouse port (embedded chDB or server over HTTP), its migrations.
//! - [`serve`]: the governed read path: cohort views from `agg.*` rollups released only through
//!   disclosure control (primary, complementary suppression, the attacker's LP audit; `Released<T>`),
//!   and the role-gated, audited, rate-limited drill-down.
//! - [`signals`]: detectors (disengagement, content defects, close submitters) over the rollups,
//!   findings in `signals.findings`, review queues per role (leases, audited views and decisions);
//!   signals inform humans, nothing acts on a learner.
//! - [`console`]: the web console at `/console` (instructors, advisors, DPOs, auditors): server-rendered
//!   pages over the API's own endpoints (in-process, the session's principal), sessions and CSRF; no privilege of its own.
//! - [`dsr`]: subject access and erasure jobs (map-driven), archives, signed erasure certificates.
//! - [`gateway`]: event and xAPI ingest, pseudonymisation at the gate.
//! - [`governance`]: may an event land (vault standing, consent, protected attributes); shared by the gateway and the lander.
//! - [`dead_letter`]: the one dead-letter record shape (redacted in one place) and its producer; shared by the gateway and the lander.
//! - [`dedup`]: idempotent ingest: event-id claims the lander makes before inserting, xAPI statement digests (409 on other content); shared by the gateway and the lander.
//! - [`dlq`]: dead letters replayed after a fix (`dlq replay`): what is replayable, through the normal gate, audited.
//! - [`fence`]: erasure fences the landers (epoch in PostgreSQL, acknowledged by every live lander); shared by the lander and erasure.
//! - [`redact`]: identifiers out of dead letters (emails, phones, the request's external ids, xAPI actors), path and reason kept; shared by the gateway and the lander.
//! - [`topics`]: the events and dead-letter topics, created with their retention from policy; live configs for `retention verify`.
//! - [`envelope`]: the `learning-events` record contract (single events or per-partition envelopes, murmur2 partitions).
//! - [`datamap`]: the map of every store holding learner data, checked against the live schemas.
//! - [`tools`]: the benchmarks, the load generator, the simulated cohort and the demos, over the public surface.
//! - [`db`]: pools and migrations. [`app`]: one `Application` (the wiring `serve`, `land` and the tests
//!   share: API, gateway, lander, jobs, periodic loops) and the server.
//! - [`cli`]: one thin module per subcommand (`serve`, `land`, `migrate`, `token`, `audit`, `dsr`, ...);
//!   `bench`, `loadgen` and `demo` parse into and call [`tools`].

// The gateway and the lander allocate per event (JSON values, maps): glibc's
// malloc was a third of the gateway's profile; mimalloc is the allocator of
// every binary built on this crate (the service, its tests and benchmarks).
// Built without transparent huge pages (`no_thp`): on our VMs a fault zeroes a
// whole 2 MiB page, and the lander's decode threads spent more time in the
// kernel zeroing pages than decoding (sys 6.9 s against 2.2 s for one
// `bench lander` run; 0.43-0.50 against 0.61-0.67 of the raw insert rate).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod console;
pub mod datamap;
pub mod dead_letter;
pub mod dedup;
pub mod dlq;
pub mod db;
pub mod domain;
pub mod dsr;
pub mod envelope;
pub mod fence;
pub mod gateway;
pub mod governance;
pub mod lander;
pub mod policy;
pub mod redact;
pub mod retention;
pub mod serve;
pub mod signals;
pub mod taxonomy;
pub mod telemetry;
pub mod tools;
pub mod topics;
pub mod vault;
pub mod warehouse;
