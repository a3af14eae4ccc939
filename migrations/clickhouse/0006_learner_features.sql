-- Recommendation features for the serving layer: behaviour only (activity
-- cadence, completion, replay and pause rates, assessment timing). Never a
-- protected attribute: `learnvault policy check-features` follows every
-- feature view's lineage down to base columns and map keys and fails the build
-- if one reaches an attribute of policies/protected-attributes.yaml.
CREATE DATABASE IF NOT EXISTS features;

CREATE VIEW IF NOT EXISTS features.learner_engagement AS
SELECT
    a.learner_id AS learner_id,
    a.active_days AS active_days_28d,
    a.sessions AS sessions_28d,
    a.active_seconds AS active_seconds_28d,
    e.completion_rate AS completion_rate,
    e.replay_rate AS replay_rate,
    e.pause_rate AS pause_rate,
    e.median_seconds_to_submit AS median_seconds_to_submit
FROM
(
    SELECT learner_id, uniqExact(event_date) AS active_days, sum(sessions) AS sessions, sum(active_seconds) AS active_seconds
    FROM agg.learner_daily_activity
    WHERE event_date >= today() - 27
    GROUP BY learner_id
) AS a
LEFT JOIN
(
    SELECT
        learner_id,
        countIf(event_type = 'content.complete') / greatest(countIf(event_type = 'content.start'), 1) AS completion_rate,
        countIf(event_type = 'interact.replay') / greatest(countIf(event_type = 'content.start'), 1) AS replay_rate,
        countIf(event_type = 'interact.pause') / greatest(countIf(event_type = 'content.start'), 1) AS pause_rate,
        quantileIf(0.5)(toFloat64(position_sec), event_type = 'assess.submit') AS median_seconds_to_submit
    FROM events.learning_events
    WHERE event_date >= today() - 27
    GROUP BY learner_id
) AS e ON a.learner_id = e.learner_id;
