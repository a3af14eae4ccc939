-- Signal review queues (src/signals/): signals inform humans; nothing here
-- acts on a learner.
--
-- Invariants:
-- * an item is a state machine (open -> in_review -> decided); a reviewer
--   holds an item in review only while `lease_until` is in the future (an
--   expired lease is reopened), a decision closes it with a note;
-- * one item per finding key (`fingerprint`) while it is not decided;
-- * no identity anywhere: an item names its learners only through
--   `signal_subjects` (pseudonyms, deleted with the learner by erasure); the
--   evidence refers to them by position (subject 0, 1);
-- * detector runs (`signal_runs`) are durable jobs taken with FOR UPDATE
--   SKIP LOCKED under a lease, so `serve` processes and `signals run` share them.
CREATE TYPE signal_kind AS ENUM ('content_defect', 'disengagement', 'integrity');
CREATE TYPE signal_state AS ENUM ('open', 'in_review', 'decided');
CREATE TYPE signal_decision AS ENUM ('dismissed', 'contacted', 'escalated_to_human_panel', 'content_fixed', 'monitoring');
CREATE TYPE signal_run_state AS ENUM ('pending', 'running', 'done', 'failed');

CREATE TABLE signal_items (
    id             uuid PRIMARY KEY,
    kind           signal_kind NOT NULL,
    queue          text NOT NULL,
    institution_id text NOT NULL,
    course_id      text NOT NULL,
    content_id     text,
    event_date     date NOT NULL,
    fingerprint    text NOT NULL,
    evidence       jsonb NOT NULL,
    state          signal_state NOT NULL DEFAULT 'open',
    lease_by       text,
    lease_until    timestamptz,
    decision       signal_decision,
    note           text CHECK (length(note) <= 4000),
    decided_by     text,
    decided_at     timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((state = 'decided') = (decision IS NOT NULL))
);
CREATE UNIQUE INDEX signal_items_one_undecided ON signal_items (fingerprint) WHERE state <> 'decided';
CREATE INDEX signal_items_queue ON signal_items (queue, state, created_at);

CREATE TABLE signal_subjects (
    item_id   uuid NOT NULL REFERENCES signal_items (id) ON DELETE CASCADE,
    position  smallint NOT NULL,
    pseudonym uuid NOT NULL,
    PRIMARY KEY (item_id, position)
);
CREATE INDEX signal_subjects_by_subject ON signal_subjects (pseudonym);

CREATE TABLE signal_runs (
    id           bigserial PRIMARY KEY,
    day          date NOT NULL,
    state        signal_run_state NOT NULL DEFAULT 'pending',
    attempts     integer NOT NULL DEFAULT 0,
    lease_until  timestamptz,
    result       jsonb,
    error        text,
    requested_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz
);
CREATE INDEX signal_runs_runnable ON signal_runs (requested_at) WHERE state IN ('pending', 'running');

GRANT SELECT, INSERT, UPDATE, DELETE ON signal_items, signal_subjects, signal_runs TO learnvault_app;
GRANT USAGE ON SEQUENCE signal_runs_id_seq TO learnvault_app;

-- Erasure deletes the learner's vault row (its consent goes by ON DELETE
-- CASCADE); their places in review items go with it. No foreign key: an item
-- may name a pseudonym the vault never issued (fixtures, simulations).
CREATE FUNCTION signal_subjects_erase() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM signal_subjects WHERE pseudonym = OLD.pseudonym;
    RETURN OLD;
END
$$;
CREATE TRIGGER learners_erase_signal_subjects AFTER DELETE ON learners
    FOR EACH ROW EXECUTE FUNCTION signal_subjects_erase();
