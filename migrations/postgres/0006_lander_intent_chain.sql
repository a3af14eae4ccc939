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
