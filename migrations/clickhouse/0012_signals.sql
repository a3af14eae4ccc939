-- Signals (src/signals/): one row per learner a finding is about (a content
-- defect, which is about content, has the nil learner). Learner-level data:
-- in policies/data-map.yaml (erasure deletes the learner's rows, subject
-- access exports them), TTL = policies/retention.yaml = policies/signals.yaml
-- `ttl_months`. A pair finding (integrity) is two rows sharing `finding_id`;
-- neither row names the other learner. No view reads this table: it is
-- written by the detectors and read only by the review queue's evidence and
-- the subject's own access export. No backfill: a table, not a view.
CREATE DATABASE IF NOT EXISTS signals;

CREATE TABLE IF NOT EXISTS signals.findings
(
    event_date     Date,
    detected_at    DateTime64(3, 'UTC'),
    finding_id     UUID,
    kind           LowCardinality(String),
    learner_id     UUID,
    institution_id LowCardinality(String),
    course_id      LowCardinality(String),
    content_id     String,
    cohort_id      LowCardinality(String),
    statistic      Float64,
    baseline       Float64,
    band_lo        Float64,
    band_hi        Float64,
    route          LowCardinality(String),
    -- the finding's evidence (JSON): counts, dates, timings; pseudonyms of others never
    evidence       String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_date)
ORDER BY (learner_id, event_date, kind, finding_id)
TTL event_date + INTERVAL 6 MONTH DELETE;
