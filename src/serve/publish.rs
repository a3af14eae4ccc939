//! The released tables for BI tools: every cohort view of every course,
//! released exactly as the API releases it, flattened to one row per cell in
//! `released.cells`, swapped in atomically. A BI user reads `released.*` only
//! (`learnvault warehouse grants`), so Superset never bypasses disclosure control.

use serde_json::{json, Value};
use std::sync::Arc;

use super::{Ident, Serve, ServeError};

/// What one refresh published.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub courses: usize,
    pub cells: usize,
    pub withheld: usize,
}

/// Flatten a released view to rows `(row_key, metric, value, suppressed)`.
pub fn flatten(view: &Value) -> Vec<(String, String, Option<f64>, String)> {
    fn walk(v: &Value, key: &mut Vec<String>, metric: &mut Vec<String>, out: &mut Vec<(String, String, Option<f64>, String)>) {
        let Some(o) = v.as_object() else { return };
        if o.contains_key("value") {
            let row = if key.is_empty() { "total".to_string() } else { key.join("|") };
            let suppressed = o.get("suppressed").and_then(Value::as_str).unwrap_or_default().to_owned();
            out.push((row, metric.join("."), o["value"].as_f64(), suppressed));
            return;
        }
        for (k, x) in o {
            match (k.as_str(), x) {
                ("disclosure", _) => {}
                ("cohorts" | "rows" | "buckets", Value::Array(items)) => {
                    for item in items {
                        let id = ["cohort_id", "minute", "position_sec"].iter().find_map(|f| match &item[*f] {
                            Value::String(s) => Some(s.clone()),
                            Value::Number(n) => Some(n.to_string()),
                            _ => None,
                        });
                        let Some(id) = id else { continue };
                        key.push(id);
                        walk(item, key, metric, out);
                        key.pop();
                    }
                }
                ("total", _) => {
                    key.push("total".into());
                    walk(x, key, metric, out);
                    key.pop();
                }
                (_, Value::Object(_)) => {
                    metric.push(k.clone());
                    walk(x, key, metric, out);
                    metric.pop();
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(view, &mut Vec::new(), &mut Vec::new(), &mut out);
    out
}

impl Serve {
    /// Release every view of every course and swap the result into `released.cells`.
    pub async fn publish(self: &Arc<Self>, engagement_minutes: u32) -> Result<Published, ServeError> {
        let range = self.range(None, None)?;
        let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string();
        let mut data = Vec::new();
        let mut report = Published::default();
        for (course, institutions) in self.courses().await? {
            let Ok(c) = Ident::parse("course_id", &course) else { continue };
            report.courses += 1;
            let t = self.thresholds(&institutions);
            let to_json = |v: serde_json::Result<Value>| v.map_err(|e| ServeError::Row(e.to_string()));
            let mut views = vec![
                ("funnel", String::new(), to_json(serde_json::to_value(self.funnel(&c, &range, &t).await?))?),
                ("engagement", String::new(), to_json(serde_json::to_value(self.engagement(&c, engagement_minutes, &t).await?))?),
                ("time_on_task", String::new(), to_json(serde_json::to_value(self.time_on_task(&c, &range, &t).await?))?),
            ];
            for content in self.contents(&c).await? {
                let Ok(id) = Ident::parse("content_id", &content) else { continue };
                views.push(("replays", content.clone(), to_json(serde_json::to_value(self.replays(&c, &id, &range, &t).await?))?));
            }
            for (view, content, json) in views {
                for (row_key, metric, value, suppressed) in flatten(&json) {
                    report.cells += 1;
                    report.withheld += usize::from(value.is_none());
                    let row = json!({"refreshed_at": now, "view": view, "course_id": course, "content_id": content,
                        "row_key": row_key, "metric": metric, "value": value, "suppressed": suppressed});
                    serde_json::to_writer(&mut data, &row).map_err(|e| ServeError::Row(e.to_string()))?;
                    data.push(b'\n');
                }
            }
        }
        let wh = self.warehouse();
        wh.execute("TRUNCATE TABLE released.cells_next", &[]).await?;
        if !data.is_empty() {
            wh.insert("released.cells_next", "JSONEachRow", Arc::new(data), &[]).await?;
        }
        wh.execute("EXCHANGE TABLES released.cells AND released.cells_next", &[]).await?;
        metrics::gauge!("learnvault_released_cells").set(report.cells as f64);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_flatten_to_one_row_per_cell() {
        let v = json!({"course_id": "cs101", "cohorts": [
            {"cohort_id": "c03", "enrolled": {"value": null, "suppressed": "small_cell"}, "conversion": {"started": {"value": null, "suppressed": "derived_from_withheld"}}},
            {"cohort_id": "c40", "enrolled": {"value": 40}}],
            "total": {"enrolled": {"value": 43}}, "disclosure": {"cells": 3}});
        let rows = flatten(&v);
        assert_eq!(rows.len(), 4, "{rows:?}");
        assert!(rows.contains(&("c03".into(), "enrolled".into(), None, "small_cell".into())));
        assert!(rows.contains(&("c03".into(), "conversion.started".into(), None, "derived_from_withheld".into())));
        assert!(rows.contains(&("c40".into(), "enrolled".into(), Some(40.0), String::new())));
        assert!(rows.contains(&("total".into(), "enrolled".into(), Some(43.0), String::new())));
        let e = json!({"rows": [{"minute": "2026-12-03 10:00:00", "cohorts": [{"cohort_id": "a", "active_learners": {"value": 12}}],
            "total": {"active_learners": {"value": 12}}}]});
        let rows = flatten(&e);
        assert!(rows.contains(&("2026-12-03 10:00:00|a".into(), "active_learners".into(), Some(12.0), String::new())));
        assert!(rows.contains(&("2026-12-03 10:00:00|total".into(), "active_learners".into(), Some(12.0), String::new())));
    }
}
