-- The purge of event-id claims (`DELETE ... WHERE seen_at < now() - window`, hourly) reads
-- rows in the order they were appended: a BRIN index serves it, and costs the lander's
-- claims nothing per row (the btree it replaces was a second index insert per claimed id).
DROP INDEX IF EXISTS ingest_event_ids_seen_at;
CREATE INDEX ingest_event_ids_seen_at ON ingest_event_ids USING brin (seen_at);
