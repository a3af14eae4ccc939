-- Identity vault.
--
-- Invariants:
-- * a pseudonym is a random UUID v4, never derived from the identity;
-- * no column holds a plaintext identity or external id: the external id is
--   only present as a blind index (HMAC-SHA256 under the institution's index
--   key), the identity only as AES-256-GCM ciphertext under a per-learner data
--   key (DEK) that is itself stored wrapped by the institution's wrapping key;
-- * every key-dependent column records the key version it was made with;
-- * erasure deletes the `learners` row (blind index, wrapped DEK, ciphertext:
--   crypto-shredding) and leaves a row in `tombstones`, so a pseudonym is never
--   reissued and late events for it can be refused.

CREATE TABLE institutions (
    id          text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
    key_version integer NOT NULL DEFAULT 1 CHECK (key_version >= 1),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE learners (
    pseudonym         uuid PRIMARY KEY,
    institution_id    text NOT NULL,      -- must name an institution: checked per statement below
    blind_index       bytea NOT NULL CHECK (length(blind_index) = 32),
    index_key_version integer NOT NULL,
    wrapped_dek       bytea NOT NULL,   -- nonce(12) || AES-256-GCM(wrap key, DEK); AAD binds pseudonym + institution
    wrap_key_version  integer NOT NULL,
    identity_ct       bytea NOT NULL,   -- nonce(12) || AES-256-GCM(DEK, identity JSON); AAD binds pseudonym + institution
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT learners_blind_index_unique UNIQUE (institution_id, blind_index)
);

CREATE TABLE tombstones (
    pseudonym      uuid PRIMARY KEY,
    institution_id text NOT NULL REFERENCES institutions (id),
    erased_at      timestamptz NOT NULL DEFAULT now(),
    request_id     uuid NOT NULL
);

-- Checked once per INSERT statement over its new rows (a batch of 10,000
-- learners costs one join, not 10,000 row triggers and foreign-key probes):
-- * a tombstoned pseudonym can never come back;
-- * every row names a registered institution (institutions are never deleted:
--   the runtime role has no DELETE on them).
CREATE FUNCTION learners_check_new_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows n JOIN tombstones t ON t.pseudonym = n.pseudonym) THEN
        RAISE EXCEPTION 'an erased pseudonym cannot be reissued' USING ERRCODE = 'check_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM new_rows n WHERE NOT EXISTS (SELECT 1 FROM institutions i WHERE i.id = n.institution_id)) THEN
        RAISE EXCEPTION 'learners row names an unknown institution' USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER learners_check_new_rows AFTER INSERT ON learners
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION learners_check_new_rows();

-- Consent: append-only history per learner and purpose; the newest row wins.
-- Rows are never updated. They are deleted only by erasure.
CREATE TABLE consent_events (
    id          bigserial PRIMARY KEY,
    pseudonym   uuid NOT NULL REFERENCES learners (pseudonym) ON DELETE CASCADE,
    purpose     text NOT NULL,
    granted     boolean NOT NULL,
    actor       text NOT NULL,
    request_id  uuid NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consent_events_by_subject ON consent_events (pseudonym, purpose, id DESC);

CREATE FUNCTION consent_events_no_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'consent_events is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER consent_events_no_update BEFORE UPDATE ON consent_events
    FOR EACH ROW EXECUTE FUNCTION consent_events_no_update();

CREATE VIEW consent_current AS
SELECT DISTINCT ON (pseudonym, purpose) pseudonym, purpose, granted, actor, recorded_at
FROM consent_events
ORDER BY pseudonym, purpose, id DESC;

GRANT SELECT, INSERT ON institutions TO learnvault_app;
GRANT SELECT, INSERT, DELETE ON learners TO learnvault_app;
GRANT SELECT, INSERT ON tombstones TO learnvault_app;
GRANT SELECT, INSERT, DELETE ON consent_events TO learnvault_app;
GRANT USAGE ON SEQUENCE consent_events_id_seq TO learnvault_app;
GRANT SELECT ON consent_current TO learnvault_app;
