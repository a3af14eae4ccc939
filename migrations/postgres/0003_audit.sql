-- Tamper-evident audit log.
--
-- * `seq` is gap-free: writers serialise on a transaction-scoped advisory lock
--   (see src/audit/chain.rs) and take max(seq) + 1, so the chain stays linear
--   across processes;
-- * `hash` = SHA-256(prev_hash || canonical encoding of the row), the canonical
--   encoding being defined in src/audit/chain.rs; the first row's prev_hash is
--   32 zero bytes;
-- * append-only: triggers reject UPDATE, DELETE and TRUNCATE, and the runtime
--   role `learnvault_app` holds only SELECT and INSERT and does not own the
--   table, so it cannot disable the triggers. Tampering by a superuser is what
--   `learnvault audit verify` detects.

CREATE TABLE audit_log (
    seq              bigint PRIMARY KEY CHECK (seq >= 1),
    at               timestamptz NOT NULL,
    request_id       uuid NOT NULL,
    actor            text NOT NULL,
    roles            text[] NOT NULL,
    institution_id   text,
    action           text NOT NULL,
    target_pseudonym uuid,
    purpose          text,
    justification    text,
    outcome          text NOT NULL CHECK (outcome IN ('success', 'denied', 'not_found', 'error')),
    detail           jsonb NOT NULL DEFAULT '{}'::jsonb,
    prev_hash        bytea NOT NULL CHECK (length(prev_hash) = 32),
    hash             bytea NOT NULL CHECK (length(hash) = 32)
);
CREATE INDEX audit_log_by_actor ON audit_log (actor, seq);
CREATE INDEX audit_log_by_target ON audit_log (target_pseudonym, seq) WHERE target_pseudonym IS NOT NULL;
CREATE INDEX audit_log_by_at ON audit_log (at);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

GRANT SELECT, INSERT ON audit_log TO learnvault_app;
