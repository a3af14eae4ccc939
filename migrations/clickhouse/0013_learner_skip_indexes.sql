-- Lookups of one learner skip the granules that cannot hold them: a bloom filter
-- of learner_id per granule on the base table (subject access, erasure's counts
-- and affected keys, certificates) and on agg.learner_day_by_cohort (the
-- drill-down finds the learner's cohorts there, so its timeline reads the base
-- table by its primary key: course, cohort, learner). An index, not a store: it
-- is rebuilt with every part, so an erasure's rewrite leaves nothing of the
-- learner in it. Existing parts get it by MATERIALIZE (a mutation per part).
ALTER TABLE events.learning_events ADD INDEX IF NOT EXISTS learner_bf learner_id TYPE bloom_filter(0.01) GRANULARITY 1;
ALTER TABLE events.learning_events MATERIALIZE INDEX learner_bf;
ALTER TABLE agg.learner_day_by_cohort ADD INDEX IF NOT EXISTS learner_bf learner_id TYPE bloom_filter(0.01) GRANULARITY 1;
ALTER TABLE agg.learner_day_by_cohort MATERIALIZE INDEX learner_bf;
