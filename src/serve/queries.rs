//! Named query shapes: the only ClickHouse SQL of the read path. Values travel
//! as `{name:Type}` parameters, never in the SQL text; callers pick a shape,
//! they never pass SQL. Cohort views read `agg.*` rollups only; the
//! individual views are the exceptions: the drill-down timeline (the one shape
//! that reads the base table) and a learner's features (`features.*`).
//! `tests/serve.rs` parses every shape and checks it.

/// One named shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub name: &'static str,
    pub sql: &'static str,
    /// The individual view: allowed to read the base table.
    pub individual: bool,
    /// One learner's short read, made when a person opens a drill-down: it takes the
    /// engine's interactive connection ([`crate::warehouse::Warehouse::query_interactive`]),
    /// never held by an insert or a scan. Every individual view is one.
    pub interactive: bool,
}

impl Shape {
    /// A cohort view (reads `agg.*` rollups only).
    const fn cohort(name: &'static str, sql: &'static str) -> Shape {
        Shape { name, sql, individual: false, interactive: false }
    }

    /// A cohort-rollup read about one learner (the drill-down's scope check): interactive.
    const fn learner_check(name: &'static str, sql: &'static str) -> Shape {
        Shape { name, sql, individual: false, interactive: true }
    }

    /// An individual view (interactive).
    const fn individual(name: &'static str, sql: &'static str) -> Shape {
        Shape { name, sql, individual: true, interactive: true }
    }
}

/// Enrolled -> started -> completed -> assessed per cohort over a date range.
pub const FUNNEL: Shape = Shape::cohort(
    "funnel",
    "SELECT cohort_id, uniqMerge(learners) AS enrolled, uniqMerge(started) AS started,
                 uniqMerge(completed) AS completed, uniqMerge(assessed) AS assessed
          FROM agg.funnel_by_cohort
          WHERE course_id = {course:String} AND event_date >= {from:Date} AND event_date <= {to:Date}
          GROUP BY cohort_id ORDER BY cohort_id",
);

/// Active learners and heartbeat seconds per minute and cohort since `from` (unix seconds).
pub const ENGAGEMENT: Shape = Shape::cohort(
    "engagement",
    "SELECT toString(minute) AS at, cohort_id, uniqMerge(active_learners) AS active,
                 sum(heartbeat_seconds) AS seconds
          FROM agg.engagement_per_minute
          WHERE course_id = {course:String} AND minute >= toDateTime({from:UInt32}, 'UTC')
          GROUP BY minute, cohort_id ORDER BY minute, cohort_id",
);

/// Per cohort (and for the course, `total` = 1): learners and quartiles of
/// active minutes per learner-day.
pub const TIME_ON_TASK: Shape = Shape::cohort(
    "time_on_task",
    "SELECT cohort_id, grouping(cohort_id) AS total, uniqExact(learner_id) AS learners,
                 quantilesExact(0.25, 0.5, 0.75)(active_seconds / 60) AS q
          FROM
          (
              SELECT cohort_id, learner_id, event_date, sum(active_seconds) AS active_seconds
              FROM agg.learner_day_by_cohort
              WHERE course_id = {course:String} AND event_date >= {from:Date} AND event_date <= {to:Date}
              GROUP BY cohort_id, learner_id, event_date
          )
          GROUP BY ROLLUP(cohort_id) ORDER BY total, cohort_id",
);

/// Replays, pauses and distinct learners per 10-second position bucket of one content item.
pub const REPLAYS: Shape = Shape::cohort(
    "replays",
    "SELECT position_bucket, sum(replays) AS replays, sum(pauses) AS pauses, uniqMerge(learners) AS learners
          FROM agg.content_replays_daily
          WHERE course_id = {course:String} AND content_id = {content:String}
            AND event_date >= {from:Date} AND event_date <= {to:Date}
          GROUP BY position_bucket ORDER BY position_bucket",
);

/// The institutions a course's learners belong to (thresholds and scope).
pub const COURSE_INSTITUTIONS: Shape = Shape::cohort(
    "course_institutions",
    "SELECT DISTINCT institution_id
          FROM agg.learner_day_by_cohort
          WHERE course_id = {course:String}
          ORDER BY institution_id",
);

/// Whether a learner has activity in a course (drill-down scope).
pub const LEARNER_IN_COURSE: Shape = Shape::learner_check(
    "learner_in_course",
    "SELECT count() AS n
          FROM agg.learner_day_by_cohort
          WHERE course_id = {course:String} AND learner_id = {learner:UUID}",
);

/// The individual view: one learner's pseudonymous timeline in one course
/// (the one shape reading the base table; never an identity, never `props`).
/// The learner's cohorts come first from `agg.learner_day_by_cohort` (its
/// learner_id bloom filter), so the base table is read by its primary key
/// (course, cohort, learner) instead of scanning the course.
pub const LEARNER_TIMELINE: Shape = Shape::individual(
    "learner_timeline",
    "SELECT toString(server_ts) AS at, event_type, session_id, content_id, position_sec, cohort_id
          FROM events.learning_events
          WHERE course_id = {course:String}
            AND cohort_id IN (SELECT cohort_id FROM agg.learner_day_by_cohort
                               WHERE course_id = {course:String} AND learner_id = {learner:UUID})
            AND learner_id = {learner:UUID}
          ORDER BY server_ts DESC, event_id LIMIT {limit:UInt32}",
);

/// One learner's recommendation features (an individual view, behind
/// `recommendations` consent; reads the `features.*` view, not the base table).
pub const LEARNER_FEATURES: Shape = Shape::individual(
    "learner_features",
    "SELECT * EXCEPT learner_id
          FROM features.learner_engagement
          WHERE learner_id = {p:UUID}",
);

/// Every course with activity, and its institutions (`learnvault disclosure audit`).
pub const COURSES: Shape = Shape::cohort(
    "courses",
    "SELECT course_id, groupUniqArray(institution_id) AS institutions
          FROM agg.learner_day_by_cohort
          GROUP BY course_id ORDER BY course_id",
);

/// The content items of a course with replay activity.
pub const CONTENTS: Shape = Shape::cohort(
    "contents",
    "SELECT DISTINCT content_id FROM agg.content_replays_daily
          WHERE course_id = {course:String} ORDER BY content_id",
);

/// Every shape, for the test that reads the serving SQL.
pub const SHAPES: [Shape; 10] =
    [FUNNEL, ENGAGEMENT, TIME_ON_TASK, REPLAYS, COURSE_INSTITUTIONS, LEARNER_IN_COURSE, LEARNER_TIMELINE, LEARNER_FEATURES, COURSES, CONTENTS];
