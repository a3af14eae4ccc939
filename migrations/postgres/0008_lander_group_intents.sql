-- A lander batch may span partitions: on the embedded engine one process holds every
-- partition, and each insert pays a fixed cost for every materialized view (~55 ms for
-- five views on the project's machine: `bench lander --insert-probe`), so one insert per
-- flush for all the partitions it holds, instead of one per partition, is what keeps rows
-- fresh. Such a batch's intent is one row per member partition (same token), each naming
-- every member's range, so whichever member resumes first can re-read and replay the
-- whole batch, from Kafka, with its token.
-- members: NULL for a batch of its partition alone (rows written before this migration),
-- else [{"partition": p, "first": f, "last": l}, ...], the same on every member's row.
ALTER TABLE lander_intents ADD COLUMN members jsonb;
