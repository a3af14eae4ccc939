-- Dashboard shape: content-defect signal. Replays, pauses and speed changes
-- per content item and 10-second position bucket per day; a spike at one
-- position across many learners marks a confusing segment.
CREATE TABLE IF NOT EXISTS agg.content_replays_daily
(
    event_date      Date,
    course_id       LowCardinality(String),
    content_id      String,
    position_bucket UInt32,
    replays         SimpleAggregateFunction(sum, UInt64),
    pauses          SimpleAggregateFunction(sum, UInt64),
    speed_changes   SimpleAggregateFunction(sum, UInt64),
    learners        AggregateFunction(uniq, UUID)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(event_date)
ORDER BY (course_id, content_id, event_date, position_bucket)
TTL event_date + INTERVAL 26 MONTH DELETE
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS agg.content_replays_daily_mv TO agg.content_replays_daily AS
SELECT
    event_date,
    course_id,
    content_id,
    intDiv(assumeNotNull(position_sec), 10) * 10 AS position_bucket,
    toUInt64(countIf(event_type = 'interact.replay')) AS replays,
    toUInt64(countIf(event_type = 'interact.pause')) AS pauses,
    toUInt64(countIf(event_type = 'interact.speed_change')) AS speed_changes,
    uniqState(learner_id) AS learners
FROM events.learning_events
WHERE event_type IN ('interact.replay', 'interact.pause', 'interact.speed_change') AND position_sec IS NOT NULL
GROUP BY event_date, course_id, content_id, position_bucket;

INSERT INTO agg.content_replays_daily
SELECT
    event_date,
    course_id,
    content_id,
    intDiv(assumeNotNull(position_sec), 10) * 10 AS position_bucket,
    toUInt64(countIf(event_type = 'interact.replay')) AS replays,
    toUInt64(countIf(event_type = 'interact.pause')) AS pauses,
    toUInt64(countIf(event_type = 'interact.speed_change')) AS speed_changes,
    uniqState(learner_id) AS learners
FROM events.learning_events
WHERE event_type IN ('interact.replay', 'interact.pause', 'interact.speed_change') AND position_sec IS NOT NULL
GROUP BY event_date, course_id, content_id, position_bucket;
