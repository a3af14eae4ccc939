-- Dashboard shape: enrolled -> started -> completed -> assessed, by cohort, per day.
--   SELECT cohort_id, uniqMerge(learners) AS enrolled, uniqMerge(started) AS started,
--          uniqMerge(completed) AS completed, uniqMerge(assessed) AS assessed
--   FROM agg.funnel_by_cohort WHERE course_id = {course:String} AND event_date >= today() - 27
--   GROUP BY cohort_id
CREATE TABLE IF NOT EXISTS agg.funnel_by_cohort
(
    event_date Date,
    course_id  LowCardinality(String),
    cohort_id  LowCardinality(String),
    learners   AggregateFunction(uniq, UUID),
    started    AggregateFunction(uniq, UUID),
    completed  AggregateFunction(uniq, UUID),
    assessed   AggregateFunction(uniq, UUID)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(event_date)
ORDER BY (course_id, cohort_id, event_date)
TTL event_date + INTERVAL 26 MONTH DELETE
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS agg.funnel_by_cohort_mv TO agg.funnel_by_cohort AS
SELECT
    event_date,
    course_id,
    cohort_id,
    uniqState(learner_id) AS learners,
    uniqStateIf(learner_id, event_type = 'content.start') AS started,
    uniqStateIf(learner_id, event_type = 'content.complete') AS completed,
    uniqStateIf(learner_id, event_type = 'assess.submit') AS assessed
FROM events.learning_events
GROUP BY event_date, course_id, cohort_id;

-- Backfill: the view only sees inserts from now on.
INSERT INTO agg.funnel_by_cohort
SELECT
    event_date,
    course_id,
    cohort_id,
    uniqState(learner_id) AS learners,
    uniqStateIf(learner_id, event_type = 'content.start') AS started,
    uniqStateIf(learner_id, event_type = 'content.complete') AS completed,
    uniqStateIf(learner_id, event_type = 'assess.submit') AS assessed
FROM events.learning_events
GROUP BY event_date, course_id, cohort_id;
