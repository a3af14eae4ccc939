-- The funnel dashboard reads one course's rows of agg.funnel_by_cohort, but a
-- rollup partition holds a few thousand rows (courses x cohorts x days): with
-- the default 8192-row granules the primary key could not skip the other
-- courses, and the query deserialised every course's uniq states. Rebuilt here
-- with 256-row granules, and with the rollup kept merged: its parts older than
-- 30 s are merged whatever their sizes (each unmerged part adds its own copy of
-- a row's states to the query).
-- Same columns, key, partitioning and TTL as 0002; the rows are carried over
-- (they are the view's whole history, so no backfill from the base table is
-- needed), then the view is re-pointed at the new table. Run it with the lander
-- stopped (`learnvault migrate` before `serve`): rows landing between the copy
-- and the swap would miss the rollup.
DROP TABLE IF EXISTS agg.funnel_by_cohort_next;

CREATE TABLE agg.funnel_by_cohort_next
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
SETTINGS non_replicated_deduplication_window = 10000, index_granularity = 256, min_age_to_force_merge_seconds = 30;

DROP VIEW IF EXISTS agg.funnel_by_cohort_mv;

INSERT INTO agg.funnel_by_cohort_next SELECT * FROM agg.funnel_by_cohort;

RENAME TABLE agg.funnel_by_cohort TO agg.funnel_by_cohort_0002, agg.funnel_by_cohort_next TO agg.funnel_by_cohort;

DROP TABLE agg.funnel_by_cohort_0002;

CREATE MATERIALIZED VIEW agg.funnel_by_cohort_mv TO agg.funnel_by_cohort AS
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
