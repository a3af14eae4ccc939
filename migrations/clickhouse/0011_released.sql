-- Released tables for business-intelligence tools (Superset): every cohort
-- view of every course, exactly as the API releases it (primary and
-- complementary suppression applied, each release audited), one row per cell,
-- refreshed by `serve` (policies/disclosure.yaml `released.refresh_secs`).
-- A BI user is granted SELECT on `released.*` only (`learnvault warehouse
-- grants --bi-user NAME`), never `agg.*` or `events.*`. No learner key: these
-- tables hold released aggregates only.
CREATE DATABASE IF NOT EXISTS released;

CREATE TABLE IF NOT EXISTS released.cells
(
    refreshed_at DateTime('UTC'),
    view         LowCardinality(String),
    course_id    LowCardinality(String),
    content_id   String,
    -- cohort id, minute|cohort, position bucket, or `total`
    row_key      String,
    metric       LowCardinality(String),
    -- NULL when withheld
    value        Nullable(Float64),
    -- why it is withheld (`small_cell`, `complementary`, ...); empty when released
    suppressed   LowCardinality(String)
)
ENGINE = MergeTree
ORDER BY (view, course_id, content_id, row_key, metric);

-- Each refresh fills this table, then swaps it with `released.cells` (readers
-- never see a half-written refresh).
CREATE TABLE IF NOT EXISTS released.cells_next AS released.cells;
