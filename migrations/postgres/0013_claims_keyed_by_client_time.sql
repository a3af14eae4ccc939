-- Event-id claims keyed by (client_ts, event_id) instead of event_id alone (issues 11 and 13).
-- Event ids are random (producers choose them): keyed by id alone, each claim was an insert at
-- a random page of a unique index holding rate x window ids, so the claims' cost grew with
-- the deduplication window (a 60k-id COPY into a table holding 9M claims: 190-250 ms, into
-- one keyed by time first: 117 ms; BENCHMARKS.md, session 14). Every delivery of one event
-- carries its client time, and new events' times are recent: keyed by time first, claims go
-- into the newest part of the index whatever the window holds.
--
-- Claims made before this migration have no client time: they keep `-infinity` and the
-- lander looks a batch's ids up among them while any is held (`dedup::Claims`), so an event
-- claimed before the upgrade still lands once; the purge removes them after one window.
-- A lander older than this migration cannot claim once it ran (`client_ts` has no default):
-- it retries until it is replaced, so upgrade every lander with it (it stalls, it never
-- lands an event twice).
ALTER TABLE ingest_event_ids ADD COLUMN client_ts timestamptz NOT NULL DEFAULT '-infinity';
ALTER TABLE ingest_event_ids ALTER COLUMN client_ts DROP DEFAULT;
ALTER TABLE ingest_event_ids DROP CONSTRAINT ingest_event_ids_pkey;
ALTER TABLE ingest_event_ids ADD PRIMARY KEY (client_ts, event_id);
