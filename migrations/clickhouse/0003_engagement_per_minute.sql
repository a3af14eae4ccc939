-- Dashboard shape: live engagement per course/cohort/minute: active learners
-- and heartbeat-based time on task (one session.heartbeat = 30 s; start/end
-- events alone overcount abandoned tabs).
CREATE TABLE IF NOT EXISTS agg.engagement_per_minute
(
    minute            DateTime('UTC'),
    course_id         LowCardinality(String),
    cohort_id         LowCardinality(String),
    active_learners   AggregateFunction(uniq, UUID),
    heartbeat_seconds SimpleAggregateFunction(sum, UInt64),
    events            SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (course_id, cohort_id, minute)
TTL minute + INTERVAL 26 MONTH DELETE
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS agg.engagement_per_minute_mv TO agg.engagement_per_minute AS
SELECT
    toStartOfMinute(toDateTime(server_ts, 'UTC')) AS minute,
    course_id,
    cohort_id,
    uniqState(learner_id) AS active_learners,
    toUInt64(countIf(event_type = 'session.heartbeat') * 30) AS heartbeat_seconds,
    toUInt64(count()) AS events
FROM events.learning_events
GROUP BY minute, course_id, cohort_id;

INSERT INTO agg.engagement_per_minute
SELECT
    toStartOfMinute(toDateTime(server_ts, 'UTC')) AS minute,
    course_id,
    cohort_id,
    uniqState(learner_id) AS active_learners,
    toUInt64(countIf(event_type = 'session.heartbeat') * 30) AS heartbeat_seconds,
    toUInt64(count()) AS events
FROM events.learning_events
GROUP BY minute, course_id, cohort_id;
