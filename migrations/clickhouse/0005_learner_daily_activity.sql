-- Dashboard shape: per-learner daily activity (sessions, heartbeat-based active
-- seconds), the baseline for disengagement signals. Learner-level data: keyed
-- by learner_id first so subject access and erasure touch few parts.
CREATE TABLE IF NOT EXISTS agg.learner_daily_activity
(
    event_date     Date,
    learner_id     UUID,
    institution_id LowCardinality(String),
    course_id      LowCardinality(String),
    sessions       SimpleAggregateFunction(sum, UInt64),
    active_seconds SimpleAggregateFunction(sum, UInt64),
    events         SimpleAggregateFunction(sum, UInt64),
    first_seen     SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_seen      SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(event_date)
ORDER BY (learner_id, event_date, institution_id, course_id)
TTL event_date + INTERVAL 26 MONTH DELETE
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS agg.learner_daily_activity_mv TO agg.learner_daily_activity AS
SELECT
    event_date,
    learner_id,
    institution_id,
    course_id,
    toUInt64(countIf(event_type = 'session.start')) AS sessions,
    toUInt64(countIf(event_type = 'session.heartbeat') * 30) AS active_seconds,
    toUInt64(count()) AS events,
    min(server_ts) AS first_seen,
    max(server_ts) AS last_seen
FROM events.learning_events
GROUP BY event_date, learner_id, institution_id, course_id;

INSERT INTO agg.learner_daily_activity
SELECT
    event_date,
    learner_id,
    institution_id,
    course_id,
    toUInt64(countIf(event_type = 'session.start')) AS sessions,
    toUInt64(countIf(event_type = 'session.heartbeat') * 30) AS active_seconds,
    toUInt64(count()) AS events,
    min(server_ts) AS first_seen,
    max(server_ts) AS last_seen
FROM events.learning_events
GROUP BY event_date, learner_id, institution_id, course_id;
