-- Lander intents become a chain per partition. 0004 kept one row per (group, topic,
-- partition), overwritten by the partition's next batch: when an offset commit failed
-- (broker restarted, coordinator moved, the member fenced by a rebalance) and the lander went
-- on, the uncommitted batch's intent was overwritten, and whoever re-read the partition from
-- the committed offset re-formed those records under a new token and landed them twice.
-- Now every batch's intent stays until an offset commit covers it: a partition resumes by
-- replaying the contiguous chain of intents that starts at its committed offset, each batch
-- with its own token.
ALTER TABLE lander_intents DROP CONSTRAINT lander_intents_pkey;
ALTER TABLE lander_intents ADD PRIMARY KEY (consumer_group, topic, partition, first_offset);
GRANT DELETE ON lander_intents TO learnvault_app;

-- How far each partition is landed and committed (the last offset of the newest batch whose
-- offset commit succeeded). A consumer that resumes below it (its position fetched before that
-- commit, or reset to the earliest offset because the committed one could not be read after a
-- broker crash) skips those records instead of landing them again under new tokens.
CREATE TABLE lander_landed (
    consumer_group text NOT NULL,
    topic          text NOT NULL,
    partition      integer NOT NULL,
    through        bigint NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
GRANT SELECT, INSERT, UPDATE, DELETE ON lander_landed TO learnvault_app;
