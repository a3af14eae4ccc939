-- The base table (seed section 04). Pseudonymous: learner_id is a vault
-- pseudonym, never an identity. ORDER BY is the design: course- and
-- cohort-scoped dashboard queries prune to a sliver. No projections: they
-- break lightweight deletes (erasure). TTL = policies/retention.yaml.
-- non_replicated_deduplication_window: the lander's insert deduplication
-- tokens make a replayed batch a no-op (exactly-once without Kafka transactions).
CREATE DATABASE IF NOT EXISTS events;
CREATE DATABASE IF NOT EXISTS agg;

CREATE TABLE IF NOT EXISTS events.learning_events
(
    event_date     Date DEFAULT toDate(server_ts),
    server_ts      DateTime64(3, 'UTC'),
    client_ts      DateTime64(3, 'UTC'),
    event_id       UUID,
    event_version  LowCardinality(String),
    event_type     LowCardinality(String),
    learner_id     UUID,
    session_id     String,
    course_id      LowCardinality(String),
    content_id     String,
    cohort_id      LowCardinality(String),
    institution_id LowCardinality(String),
    position_sec   Nullable(UInt32),
    props          Map(String, String)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_date)
ORDER BY (course_id, cohort_id, learner_id, server_ts)
TTL event_date + INTERVAL 26 MONTH DELETE
SETTINGS index_granularity = 8192, non_replicated_deduplication_window = 10000;
