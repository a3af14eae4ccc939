-- Idempotent ingest (issue 13): an event id lands once within the deduplication window
-- (LEARNVAULT_INGEST_DEDUP_WINDOW_DAYS, at least 7), whatever carried it twice (a client's
-- retry through the gateway, a replayed topic, a producer writing to Kafka twice).
--
-- ingest_event_ids: the ids the lander has claimed, one row per event id, each with the
-- batch that claims it (`batch`: the first 8 bytes of SHA-256 of the batch's deduplication
-- token, see `lander_intents`). The lander claims a batch's ids after its intent is recorded
-- and before its insert; an id claimed by another batch is dropped from this one, an id
-- claimed by this same batch (its own replay) is kept, so a replay lands it exactly once.
-- Rollups are materialized views fed by inserts into the base table: the filter has to
-- happen before the insert (engine-side deduplication of the base table would not reach
-- them). No learner key: event ids and batch hashes only. Rows older than the window are
-- purged (`seen_at`).
CREATE TABLE ingest_event_ids (
    event_id uuid PRIMARY KEY,
    batch bigint NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ingest_event_ids_seen_at ON ingest_event_ids (seen_at);

-- xapi_statements: the content of each xAPI statement id the gateway acknowledged, as a
-- keyed digest (HMAC-SHA256 under a service key of the vault's master key, so the digest of
-- a statement naming an identity cannot be checked by guessing), so the same id with other
-- content is answered 409 `xapi_id_conflict` and the same content is acknowledged again.
-- Purged with the same window.
CREATE TABLE xapi_statements (
    statement_id uuid PRIMARY KEY,
    institution text NOT NULL,
    digest bytea NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX xapi_statements_stored_at ON xapi_statements (stored_at);

GRANT SELECT, INSERT, DELETE ON ingest_event_ids, xapi_statements TO learnvault_app;
