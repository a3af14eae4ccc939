//! Disengagement risk: session cadence collapse against the learner's own
//! baseline, calibrated per cohort.
//!
//! For each learner of a course silent on the evaluated day: `p`, their own
//! share of active days over the `baseline_days` up to their last active day;
//! their longest usual silence in that baseline; and for each silent day `d`
//! since, the cohort's activity that day relative to its own baseline
//! (`rel(d)`: active share of the cohort's learners on `d` over its mean in
//! the learner's baseline). Statistic: the chance of the current silence if
//! the learner kept their habits and moved with their cohort,
//! `P = prod_d (1 - min(0.99, p * rel(d)))`. A quiet holiday week lowers
//! `rel` for everyone, so it does not flag everyone. Flagged when `P` is below
//! `max_silence_probability` and the silence exceeds `gap_factor` times the
//! longest usual silence. Active minutes trending down (per active day, the
//! later half of the baseline below `trend_ratio` of the earlier half) relax
//! that probability threshold by `trend_relief`: fading sessions followed by
//! silence are flagged sooner.

use chrono::{Duration, NaiveDate};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use uuid::Uuid;

use super::finding::{ContextCount, Finding, Kind};
use super::window::Window;
use crate::policy::signals::DisengagementDef;

struct Learner<'a> {
    institution: &'a str,
    cohort: &'a str,
    days: BTreeMap<NaiveDate, u64>,
}

pub fn evaluate(w: &Window, p: &DisengagementDef, baseline_days: u32) -> Vec<Finding> {
    let day = w.day;
    // Everything up to `day` (the silence may be long); the baseline ends at the last active day.
    let mut learners: BTreeMap<(&str, Uuid), Learner> = BTreeMap::new();
    let mut cohort_active: HashMap<(&str, &str, NaiveDate), u64> = HashMap::new();
    let mut cohort_members: HashMap<(&str, &str), BTreeSet<Uuid>> = HashMap::new();
    let mut course_active: HashMap<(&str, NaiveDate), u64> = HashMap::new();
    let mut course_members: HashMap<&str, BTreeSet<Uuid>> = HashMap::new();
    for a in w.data.activity.iter().filter(|a| a.date <= day) {
        let l = learners.entry((&a.course, a.learner)).or_insert_with(|| Learner { institution: &a.institution, cohort: &a.cohort, days: BTreeMap::new() });
        *l.days.entry(a.date).or_default() += a.active_seconds;
        *cohort_active.entry((&a.course, &a.cohort, a.date)).or_default() += 1;
        cohort_members.entry((&a.course, &a.cohort)).or_default().insert(a.learner);
        *course_active.entry((&a.course, a.date)).or_default() += 1;
        course_members.entry(&a.course).or_default().insert(a.learner);
    }
    let (ca, cr) = (&cohort_active, &course_active);
    let mut out = Vec::new();
    for ((course, learner), l) in &learners {
        let course: &str = course;
        let Some((&last, _)) = l.days.iter().next_back() else { continue };
        if last >= day {
            continue;
        }
        let start = last - Duration::days(baseline_days as i64 - 1);
        let first_seen = *l.days.keys().next().expect("non-empty");
        let from = start.max(first_seen);
        let observed = (last - from).num_days() + 1;
        let active: Vec<NaiveDate> = l.days.range(from..=last).map(|(d, _)| *d).collect();
        if (active.len() as u32) < p.min_active_days || observed < 7 {
            continue;
        }
        let rate = active.len() as f64 / observed as f64;
        let usual_silence = active.windows(2).map(|w| (w[1] - w[0]).num_days() - 1).max().unwrap_or(0);
        let silence = (day - last).num_days();
        if (silence as f64) <= p.gap_factor * usual_silence as f64 {
            continue;
        }
        // The cohort (or the course, for a small cohort) calibrates every silent day.
        let members = cohort_members.get(&(course, l.cohort)).map(BTreeSet::len).unwrap_or(0) as u64;
        let by_cohort = members >= p.min_cohort_learners;
        let (size, share_on): (f64, Box<dyn Fn(NaiveDate) -> f64>) = if by_cohort {
            let n = members as f64;
            (n, Box::new(move |d| ca.get(&(course, l.cohort, d)).copied().unwrap_or(0) as f64 / n))
        } else {
            let n = course_members.get(course).map(BTreeSet::len).unwrap_or(1) as f64;
            (n, Box::new(move |d| cr.get(&(course, d)).copied().unwrap_or(0) as f64 / n))
        };
        let base_mean = (0..observed).map(|i| share_on(from + Duration::days(i))).sum::<f64>() / observed as f64;
        if base_mean <= 0.0 {
            continue;
        }
        let mut prob = 1.0;
        let mut expected = 0.0;
        let mut silent_days = Vec::new();
        for i in 1..=silence {
            let d = last + Duration::days(i);
            let rel = (share_on(d) / base_mean).min(3.0);
            let q = (rate * rel).min(0.99);
            expected += q;
            prob *= 1.0 - q;
            silent_days.push((d, share_on(d)));
        }
        // Trend: mean active minutes per active day, the later half of the baseline against the earlier.
        let mid = from + Duration::days(observed / 2);
        let mean = |it: Vec<u64>| if it.is_empty() { 0.0 } else { it.iter().sum::<u64>() as f64 / it.len() as f64 / 60.0 };
        let early = mean(l.days.range(from..mid).map(|(_, s)| *s).collect());
        let late = mean(l.days.range(mid..=last).map(|(_, s)| *s).collect());
        let fading = early > 0.0 && late < p.trend_ratio * early;
        let threshold = p.max_silence_probability * if fading { p.trend_relief } else { 1.0 };
        if prob >= threshold {
            continue;
        }
        let cohort_active_today = (share_on(day) * size).round() as u64;
        out.push(Finding {
            kind: Kind::Disengagement,
            day,
            institution: l.institution.to_owned(),
            course: (*course).to_owned(),
            content: None,
            cohort: Some(l.cohort.to_owned()),
            subjects: vec![*learner],
            statistic: silence as f64,
            baseline: expected,
            band: (0.0, p.gap_factor * usual_silence as f64),
            key: format!("disengagement:{course}:{learner}"),
            evidence: json!({
                "statistic": "days silent since the last active day (subject 0)",
                "silence_probability": prob,
                "expected_active_days_in_silence": expected,
                "own_active_day_share": rate,
                "usual_longest_silence_days": usual_silence,
                "last_active_day": last.to_string(),
                "calibrated_by": if by_cohort { "cohort" } else { "course" },
                "active_minutes_per_active_day": {"earlier": early, "recent": late, "fading": fading},
                "silence_probability_threshold": threshold,
                "active_days": l.days.range(from..=last).map(|(d, s)| json!({"date": d.to_string(), "active_minutes": *s as f64 / 60.0})).collect::<Vec<_>>(),
                "silent_days_relative_activity": silent_days.iter().map(|(d, s)| json!({"date": d.to_string(), "relative": s / base_mean})).collect::<Vec<_>>(),
            }),
            context: vec![
                ContextCount { label: if by_cohort { "cohort_learners" } else { "course_learners" }.into(), learners: size as u64 },
                ContextCount { label: "active_today".into(), learners: cohort_active_today },
            ],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::window::{ActivityRow, Data};

    fn policy() -> DisengagementDef {
        DisengagementDef {
            route: "advisor".into(),
            min_active_days: 5,
            max_silence_probability: 0.0001,
            gap_factor: 1.5,
            trend_ratio: 0.6,
            trend_relief: 5.0,
            min_cohort_learners: 20,
        }
    }

    /// 40 learners active every day of `days`, except where `active(learner, day)` says not.
    fn data(days: i64, active: impl Fn(usize, i64) -> bool) -> (Data, Vec<Uuid>) {
        let d0 = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let ids: Vec<Uuid> = (0..40).map(|i| Uuid::from_u128(i as u128 + 1)).collect();
        let mut d = Data::default();
        for (i, id) in ids.iter().enumerate() {
            for day in (0..days).filter(|day| active(i, *day)) {
                d.activity.push(ActivityRow { date: d0 + Duration::days(day), learner: *id, institution: "u".into(), course: "c".into(), cohort: "k".into(), active_seconds: 600 });
            }
        }
        (d, ids)
    }

    fn flagged(d: &Data, day: i64) -> Vec<Uuid> {
        let w = Window { day: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + Duration::days(day), data: d };
        evaluate(&w, &policy(), 28).iter().map(|f| f.subjects[0]).collect()
    }

    #[test]
    fn a_daily_learner_who_stops_is_flagged_a_quiet_week_for_everyone_is_not() {
        // Learner 0 stops after day 29; everyone else continues.
        let (d, ids) = data(36, |i, day| i != 0 || day < 30);
        assert_eq!(flagged(&d, 31), Vec::<Uuid>::new(), "two silent days are not yet a collapse");
        assert_eq!(flagged(&d, 35), vec![ids[0]]);
        // Days 30-35: the whole cohort is on holiday (2 of 40 active each day): nobody is flagged.
        let (d, _) = data(36, |i, day| day < 30 || i % 20 == 1 + (day as usize % 2));
        assert_eq!(flagged(&d, 35), Vec::<Uuid>::new());
    }

    #[test]
    fn a_learner_without_a_baseline_is_not_judged() {
        // Learner 0 was active on 3 days only, then silent for weeks.
        let (d, _) = data(40, |i, day| i != 0 || day < 3);
        assert_eq!(flagged(&d, 39), Vec::<Uuid>::new());
    }
}
