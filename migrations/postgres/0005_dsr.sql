-- Data subject requests (GDPR Art. 15 access, Art. 17 erasure): durable jobs.
--
-- Invariants:
-- * a job is a state machine (pending -> running -> done | failed) whose
--   `step` and `progress` are written after every step, so a worker that dies
--   resumes at the step it was in (every step is idempotent);
-- * a worker holds a job only while its lease is in the future; an expired
--   lease is taken over (FOR UPDATE SKIP LOCKED);
-- * at most one open erasure per subject;
-- * no column holds an identity: the subject is its pseudonym, `reference`
--   is the DPO's ticket number (validated by the API), results are counts,
--   hashes, paths and the signed certificate.
CREATE TABLE dsr_jobs (
    id             uuid PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('access', 'erasure')),
    pseudonym      uuid NOT NULL,
    institution_id text NOT NULL,
    requested_by   text NOT NULL,
    request_id     uuid NOT NULL,
    reference      text CHECK (length(reference) <= 128),
    state          text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done', 'failed')),
    step           text NOT NULL DEFAULT 'start',
    progress       jsonb NOT NULL DEFAULT '{}'::jsonb,
    result         jsonb,
    error          text,
    attempts       integer NOT NULL DEFAULT 0,
    lease_until    timestamptz,
    requested_at   timestamptz NOT NULL DEFAULT now(),
    deadline       timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz
);
CREATE UNIQUE INDEX dsr_jobs_one_open_erasure ON dsr_jobs (pseudonym)
    WHERE kind = 'erasure' AND state IN ('pending', 'running');
CREATE INDEX dsr_jobs_runnable ON dsr_jobs (requested_at) WHERE state IN ('pending', 'running');
CREATE INDEX dsr_jobs_by_subject ON dsr_jobs (pseudonym);
GRANT SELECT, INSERT, UPDATE, DELETE ON dsr_jobs TO learnvault_app;
