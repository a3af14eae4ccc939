-- Lander batch intents: before a batch of one partition is inserted into
-- ClickHouse, its offset range and deduplication token are recorded here.
-- After a crash the lander rebuilds exactly that range and re-sends it with
-- the same token, so ClickHouse drops it if the first insert had landed:
-- exactly-once into ClickHouse without Kafka transactions. One row per
-- (group, topic, partition): offsets are committed synchronously after each
-- insert, so only the newest intent can be pending.
CREATE TABLE lander_intents (
    consumer_group text NOT NULL,
    topic          text NOT NULL,
    partition      integer NOT NULL,
    first_offset   bigint NOT NULL,
    last_offset    bigint NOT NULL CHECK (last_offset >= first_offset),
    token          text NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
GRANT SELECT, INSERT, UPDATE ON lander_intents TO learnvault_app;
