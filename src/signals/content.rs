//! Content defect: a replay spike at one position bucket of one video on one
//! day. This one is about content, not people: no learner is named.
//!
//! Statistic: the share of the content's learners that day (those replaying
//! or pausing anywhere in it) who replayed or paused in the bucket (the
//! rollup's distinct learners per bucket). Baseline: the bucket's
//! own pooled share over the `baseline_days` before (so a segment that is
//! always hard, or a video that became popular, is not a spike), and never
//! below the course's usual share (the 95th percentile of its buckets'
//! pooled shares over the baseline) nor, when the content has at least 20
//! buckets with activity that day, the 95th percentile of that day's buckets
//! (new content, without history, is compared with itself). Band: baseline +/- `z` binomial standard errors at the
//! day's learners (floored at `sd_floor` learners). Flagged when the share is
//! above the band, at least `course_ratio` times the course's usual share, and
//! at least `min_learners` distinct learners replayed. Adjacent flagged
//! buckets of one content item form one finding (the segment).

use chrono::Duration;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};

use super::finding::{ContextCount, Finding, Kind};
use super::window::Window;
use crate::policy::signals::ContentDefectDef;

/// A flagged bucket: position, learners, replays, share, baseline share, band.
type Hot = (u32, u64, u64, f64, f64, (f64, f64));
/// Today's buckets of each (course, content): position, learners, replays.
type Today<'a> = BTreeMap<(&'a str, &'a str), Vec<(u32, u64, u64)>>;

pub fn evaluate(w: &Window, p: &ContentDefectDef, baseline_days: u32) -> Vec<Finding> {
    let day = w.day;
    let first = day - Duration::days(baseline_days as i64);
    let institutions = w.data.course_institutions();
    // Learners per content-day.
    let viewers: HashMap<(&str, &str, chrono::NaiveDate), u64> =
        w.data.viewers.iter().filter(|v| v.date >= first && v.date <= day).map(|v| ((v.course.as_str(), v.content.as_str(), v.date), v.learners)).collect();
    // Baseline sums per bucket; today's rows.
    let mut base: HashMap<(&str, &str, u32), u64> = HashMap::new();
    let mut today: Today = BTreeMap::new();
    for r in w.data.replays.iter().filter(|r| r.date >= first && r.date <= day) {
        if r.date == day {
            today.entry((&r.course, &r.content)).or_default().push((r.bucket, r.learners, r.replays));
        } else {
            *base.entry((&r.course, &r.content, r.bucket)).or_default() += r.learners;
        }
    }
    // Learners of each content item over the baseline (the denominator of each bucket's pooled share).
    let mut base_viewers: HashMap<(&str, &str), u64> = HashMap::new();
    for ((c, k, d), n) in &viewers {
        if *d < day {
            *base_viewers.entry((c, k)).or_default() += n;
        }
    }
    // The course's usual share: the 95th percentile of its buckets' pooled shares over the baseline.
    let mut course_shares: HashMap<&str, Vec<f64>> = HashMap::new();
    for ((c, k, _), n) in &base {
        course_shares.entry(c).or_default().push(*n as f64 / base_viewers.get(&(*c, *k)).copied().unwrap_or(0).max(1) as f64);
    }
    let p95: HashMap<&str, f64> = course_shares
        .into_iter()
        .map(|(c, mut s)| {
            // Over the buckets with any interaction (the rollup has no row for the others).
            s.sort_by(|a, b| a.total_cmp(b));
            let q = if s.is_empty() { 0.0 } else { s[((s.len() as f64 - 1.0) * 0.95).round() as usize] };
            (c, q)
        })
        .collect();
    let mut out = Vec::new();
    for ((course, content), mut buckets) in today {
        let v = viewers.get(&(course, content, day)).copied().unwrap_or(0);
        if v < p.min_learners {
            continue;
        }
        buckets.sort_unstable();
        // The content's other buckets that day are a baseline too (new content has no history).
        let mut day_shares: Vec<f64> = buckets.iter().map(|b| b.1 as f64 / v as f64).collect();
        day_shares.sort_by(|a, b| a.total_cmp(b));
        let day_p95 = day_shares[((day_shares.len() as f64 - 1.0) * 0.95).round() as usize];
        let usual = p95.get(course).copied().unwrap_or(0.0).max(if buckets.len() >= 20 { day_p95 } else { 0.0 });
        let bv = base_viewers.get(&(course, content)).copied().unwrap_or(0);
        let mut flagged: Vec<Hot> = Vec::new();
        for &(bucket, learners, replays) in &buckets {
            let own = base.get(&(course, content, bucket)).map(|b| *b as f64 / bv.max(1) as f64).unwrap_or(0.0);
            let p0 = own.max(usual);
            let se = (p0 * (1.0 - p0) / v as f64).sqrt().max(p.sd_floor / v as f64);
            let band = ((p0 - p.z * se).max(0.0), p0 + p.z * se);
            let share = learners as f64 / v as f64;
            if learners >= p.min_learners && share > band.1 && share >= p.course_ratio * usual {
                flagged.push((bucket, learners, replays, share, p0, band));
            }
        }
        // Adjacent flagged buckets are one segment.
        let mut segments: Vec<Vec<Hot>> = Vec::new();
        for f in flagged {
            match segments.last_mut() {
                Some(s) if s.last().is_some_and(|l| f.0 <= l.0 + crate::serve::replays::BUCKET_SECONDS) => s.push(f),
                _ => segments.push(vec![f]),
            }
        }
        for seg in segments {
            let peak = seg.iter().max_by(|a, b| a.3.total_cmp(&b.3)).copied().expect("non-empty");
            let (start, end) = (seg[0].0, seg.last().expect("non-empty").0 + crate::serve::replays::BUCKET_SECONDS);
            let institution = institutions.get(course).and_then(|i| i.first().cloned()).unwrap_or_default();
            out.push(Finding {
                kind: Kind::ContentDefect,
                day,
                institution,
                course: course.to_owned(),
                content: Some(content.to_owned()),
                cohort: None,
                subjects: vec![],
                statistic: peak.3,
                baseline: peak.4,
                band: peak.5,
                key: format!("content_defect:{course}:{content}:{start}"),
                evidence: json!({
                    "statistic": "share of the content's learners that day who replayed or paused in the segment (peak bucket)",
                    "segment": {"from_sec": start, "to_sec": end},
                    "peak_bucket_sec": peak.0,
                    "usual_share": usual,
                    "baseline_days": baseline_days,
                    "buckets": seg.iter().map(|b| json!({"position_sec": b.0, "share": b.3, "replays": b.2, "baseline_share": b.4})).collect::<Vec<_>>(),
                    "institutions": institutions.get(course).cloned().unwrap_or_default(),
                }),
                context: vec![
                    ContextCount { label: "learners_replaying_peak_bucket".into(), learners: peak.1 },
                    ContextCount { label: "learners_of_content_that_day".into(), learners: v },
                ],
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::window::{Data, ReplayRow, ViewerRow};

    fn policy() -> ContentDefectDef {
        ContentDefectDef { route: "content_author".into(), min_learners: 12, z: 4.0, sd_floor: 1.0, course_ratio: 3.0 }
    }

    /// One video, 60 buckets; `learners(day, bucket)` interacting at each bucket, 100 viewers a day.
    fn data(days: i64, learners: impl Fn(i64, u32) -> u64) -> Data {
        let d0 = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let mut d = Data::default();
        for day in 0..days {
            let date = d0 + Duration::days(day);
            d.viewers.push(ViewerRow { date, course: "c".into(), content: "v".into(), learners: 100 });
            for b in 0..60 {
                let n = learners(day, b * 10);
                d.replays.push(ReplayRow { date, course: "c".into(), content: "v".into(), bucket: b * 10, replays: n, learners: n });
            }
        }
        d
    }

    fn flagged(d: &Data, day: i64) -> Vec<(u64, u64)> {
        let w = Window { day: chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + Duration::days(day), data: d };
        evaluate(&w, &policy(), 28)
            .iter()
            .map(|f| (f.evidence["segment"]["from_sec"].as_u64().unwrap(), f.evidence["segment"]["to_sec"].as_u64().unwrap()))
            .collect()
    }

    #[test]
    fn a_spike_is_flagged_a_segment_that_is_always_hard_is_not() {
        // Bucket 300 is always hard (20 of 100); from day 20 bucket 240 spikes (45 of 100), 250 too (30).
        let d = data(30, |day, b| match b {
            300 => 20,
            240 if day >= 20 => 45,
            250 if day >= 20 => 30,
            _ => 2,
        });
        assert_eq!(flagged(&d, 19), Vec::<(u64, u64)>::new());
        assert_eq!(flagged(&d, 20), vec![(240, 260)], "one segment of two adjacent buckets");
        // Too few learners: 11 of 100 at one bucket is never a finding, however unusual.
        let d = data(30, |day, b| if b == 240 && day >= 20 { 11 } else { 1 });
        assert_eq!(flagged(&d, 20), Vec::<(u64, u64)>::new());
    }

    #[test]
    fn new_content_is_compared_with_its_own_buckets_that_day() {
        // No history at all: only the bucket far above its siblings is flagged.
        let d = data(1, |_, b| match b {
            240 => 50,
            _ => 3,
        });
        assert_eq!(flagged(&d, 0), vec![(240, 250)]);
        let flat = data(1, |_, _| 15);
        assert_eq!(flagged(&flat, 0), Vec::<(u64, u64)>::new(), "a uniformly busy new video is not a defect");
    }
}
