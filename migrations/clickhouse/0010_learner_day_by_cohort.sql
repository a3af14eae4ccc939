-- Dashboard shape: time on task per cohort (GET /v1/courses/{course}/time-on-task):
-- one row per course, cohort, day and learner with heartbeat-based active
-- seconds, so the serving layer computes quantiles of active minutes per
-- learner-day per cohort from a rollup, never from the base table. Also how the
-- serving layer finds a course's institution (its disclosure thresholds and
-- scope) and whether a learner belongs to a course (drill-down scope).
-- Learner-level data (learner_id): mapped in policies/data-map.yaml (erasure
-- deletes its rows), retention in policies/retention.yaml.
CREATE TABLE IF NOT EXISTS agg.learner_day_by_cohort
(
    event_date     Date,
    course_id      LowCardinality(String),
    cohort_id      LowCardinality(String),
    learner_id     UUID,
    institution_id LowCardinality(String),
    active_seconds SimpleAggregateFunction(sum, UInt64),
    events         SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(event_date)
ORDER BY (course_id, cohort_id, event_date, learner_id, institution_id)
TTL event_date + INTERVAL 26 MONTH DELETE
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS agg.learner_day_by_cohort_mv TO agg.learner_day_by_cohort AS
SELECT
    event_date,
    course_id,
    cohort_id,
    learner_id,
    institution_id,
    toUInt64(countIf(event_type = 'session.heartbeat') * 30) AS active_seconds,
    toUInt64(count()) AS events
FROM events.learning_events
GROUP BY event_date, course_id, cohort_id, learner_id, institution_id;

-- Backfill: the view only sees inserts from now on.
INSERT INTO agg.learner_day_by_cohort
SELECT
    event_date,
    course_id,
    cohort_id,
    learner_id,
    institution_id,
    toUInt64(countIf(event_type = 'session.heartbeat') * 30) AS active_seconds,
    toUInt64(count()) AS events
FROM events.learning_events
GROUP BY event_date, course_id, cohort_id, learner_id, institution_id;
