-- The privacy promises at the edges (issue 12).
--
-- 1. Suppression after erasure. The tombstone keeps a keyed blind index of the
--    erased learner's (institution, external id): the same HMAC-SHA256 under
--    the institution's blind-index key as `learners.blind_index`, never the
--    plaintext. While `suppressed`, the vault refuses to issue a pseudonym for
--    that learner again (pseudonym API, `/v1/events`, xAPI answer `erased`),
--    until a DPO lifts it (purpose and justification, audited). Erasure fills
--    these columns only when `policies/erasure.yaml` enables suppression.
ALTER TABLE tombstones
    ADD COLUMN blind_index       bytea CHECK (blind_index IS NULL OR length(blind_index) = 32),
    ADD COLUMN index_key_version integer,
    ADD COLUMN suppressed        boolean NOT NULL DEFAULT false,
    ADD COLUMN lifted_at         timestamptz,
    ADD COLUMN lifted_by         text,
    ADD CONSTRAINT tombstones_suppression_needs_an_index CHECK (NOT suppressed OR blind_index IS NOT NULL);
CREATE INDEX tombstones_suppressed ON tombstones (institution_id, blind_index) WHERE suppressed;
-- Lifting is the only change the runtime role may make to a tombstone.
GRANT UPDATE (suppressed, lifted_at, lifted_by) ON tombstones TO learnvault_app;

-- Defence in depth: a suppressed learner cannot be inserted again even if a
-- caller skipped the vault's check (checked per statement, as before).
CREATE OR REPLACE FUNCTION learners_check_new_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows n JOIN tombstones t ON t.pseudonym = n.pseudonym) THEN
        RAISE EXCEPTION 'an erased pseudonym cannot be reissued' USING ERRCODE = 'check_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM new_rows n JOIN tombstones t
               ON t.suppressed AND t.institution_id = n.institution_id AND t.blind_index = n.blind_index) THEN
        RAISE EXCEPTION 'an erased learner is suppressed until a DPO lifts it' USING ERRCODE = 'check_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM new_rows n WHERE NOT EXISTS (SELECT 1 FROM institutions i WHERE i.id = n.institution_id)) THEN
        RAISE EXCEPTION 'learners row names an unknown institution' USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;

-- 2. Audit retention below a signed checkpoint. The log stays append-only for
--    everyone; the one exception is `audit_log_prune`, which deletes the
--    oldest rows up to a sequence number (the caller passes the sequence number
--    of a signed checkpoint, see src/audit/mod.rs `prune`), and only rows all
--    older than the retention cut-off. The chain then starts at a row whose
--    `prev_hash` is the checkpoint's hash, which `audit verify` accepts.
--    The runtime role holds no DELETE on the table, so the setting below
--    opens nothing to it; the function runs as the owner.
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('learnvault.audit_prune', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;

-- The retention period itself is the owner's to set (it equals
-- `policies/retention.yaml` `postgres.audit_log.days`; `retention verify`
-- compares them): the runtime role cannot shorten it.
CREATE TABLE audit_retention (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    days integer NOT NULL CHECK (days >= 365)
);
INSERT INTO audit_retention (days) VALUES (2190);
GRANT SELECT ON audit_retention TO learnvault_app;

CREATE FUNCTION audit_log_prune(up_to_seq bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    n bigint;
    cutoff timestamptz := now() - make_interval(days => (SELECT days FROM audit_retention));
BEGIN
    IF EXISTS (SELECT 1 FROM audit_log WHERE seq <= up_to_seq AND at >= cutoff) THEN
        RAISE EXCEPTION 'audit_log_prune: rows up to seq % are not all past retention', up_to_seq
            USING ERRCODE = 'check_violation';
    END IF;
    -- Pruning never empties the log: the chain continues from a row that remains.
    IF NOT EXISTS (SELECT 1 FROM audit_log WHERE seq > up_to_seq) THEN
        RAISE EXCEPTION 'audit_log_prune: nothing would remain after seq %', up_to_seq USING ERRCODE = 'check_violation';
    END IF;
    PERFORM set_config('learnvault.audit_prune', 'on', true);
    DELETE FROM audit_log WHERE seq <= up_to_seq;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('learnvault.audit_prune', 'off', true);
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION audit_log_prune(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_log_prune(bigint) TO learnvault_app;

-- 3. Erasure fences the landers. Erasure advances `erasure_epoch` after its
--    tombstone is committed; every lander (in any process) reports, at least
--    every heartbeat, the epoch it has seen (its governance cache dropped when
--    the epoch moved) with no batch in flight that was governed before it.
--    Erasure deletes only once every live lander (recent heartbeat) acknowledged
--    its epoch, so no batch governed before the tombstone lands after the count.
CREATE SEQUENCE erasure_epoch;
CREATE TABLE lander_fences (
    lander_id    uuid PRIMARY KEY,
    acked_epoch  bigint NOT NULL,
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE, DELETE ON lander_fences TO learnvault_app;
GRANT USAGE, SELECT, UPDATE ON SEQUENCE erasure_epoch TO learnvault_app;

-- 4. Batch erasure: one job, one pass of deletes and recomputes for many
--    subjects (its subjects in `progress.subjects`, one certificate each in
--    `result.certificates`); `pseudonym` holds the nil UUID.
ALTER TABLE dsr_jobs DROP CONSTRAINT dsr_jobs_kind_check;
ALTER TABLE dsr_jobs ADD CONSTRAINT dsr_jobs_kind_check CHECK (kind IN ('access', 'erasure', 'erasure_batch'));
