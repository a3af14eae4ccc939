//! Integrity: "close submitters" (Ruipérez-Valiente, Alexandron et al.; the
//! timing behind Northcutt et al.'s CAMEO): pairs of learners of one course
//! whose submissions of the same assessments repeatedly fall within
//! `close_seconds` of each other. A pair is a hypothesis with its evidence for
//! a human panel, never a verdict.
//!
//! For each assessment (a course's content item with `assess.submit`), each
//! learner's first submission counts. The chance that two independent
//! learners submit it close together, `p_a`, is the share of all its pairs of
//! learners that did (the assessment's own timing density: a deadline rush
//! raises it for everyone). For a pair with `k` close assessments out of `n`
//! both submitted, the chance under independence is the Poisson tail
//! `P(K >= k)` with `lambda = sum of p_a` over those `n`. Flagged when `k` is
//! at least `min_close_assessments`, `k / n` at least `min_close_share`, and
//! that chance below `max_chance_probability`. Identical answer hashes (when
//! clients send `props.answer_hash`) are reported, not required: study
//! partners who work together but submit minutes apart are not close submitters.

use chrono::Duration;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

use super::finding::{poisson_tail, ContextCount, Finding, Kind};
use super::window::{SubmitRow, Window};
use crate::policy::signals::IntegrityDef;

/// Close submissions of each pair of a course: assessment, the two times (ms).
type Close<'a> = HashMap<(&'a str, Uuid, Uuid), Vec<(&'a str, i64, i64)>>;

pub fn evaluate(w: &Window, p: &IntegrityDef) -> Vec<Finding> {
    let day = w.day;
    let first = day - Duration::days(p.window_days as i64 - 1);
    let (lo, hi) = (
        first.and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp_millis(),
        (day + Duration::days(1)).and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp_millis(),
    );
    // First submission per (course, assessment, learner).
    let mut firsts: BTreeMap<(&str, &str), HashMap<Uuid, &SubmitRow>> = BTreeMap::new();
    for s in w.data.submits.iter().filter(|s| s.ts_ms >= lo && s.ts_ms < hi) {
        let e = firsts.entry((&s.course, &s.content)).or_default().entry(s.learner).or_insert(s);
        if s.ts_ms < e.ts_ms {
            *e = s;
        }
    }
    let window_ms = p.close_seconds as i64 * 1000;
    // Close pairs per assessment; each assessment's chance of a close pair.
    let mut pairs: Close = HashMap::new();
    let mut chance: HashMap<(&str, &str), f64> = HashMap::new();
    let mut submitted: HashMap<(&str, Uuid), HashMap<&str, &SubmitRow>> = HashMap::new();
    for ((course, content), by_learner) in &firsts {
        let mut subs: Vec<&SubmitRow> = by_learner.values().copied().collect();
        subs.sort_by_key(|s| (s.ts_ms, s.learner));
        let mut close = 0u64;
        for (i, a) in subs.iter().enumerate() {
            submitted.entry((course, a.learner)).or_default().insert(content, a);
            for b in subs[i + 1..].iter().take_while(|b| b.ts_ms - a.ts_ms <= window_ms) {
                close += 1;
                let (x, y) = if a.learner < b.learner { (a, b) } else { (b, a) };
                pairs.entry((course, x.learner, y.learner)).or_default().push((content, x.ts_ms, y.ts_ms));
            }
        }
        let n = subs.len() as f64;
        let all_pairs = n * (n - 1.0) / 2.0;
        chance.insert((course, content), if all_pairs > 0.0 { close as f64 / all_pairs } else { 0.0 });
    }
    let mut out = Vec::new();
    let mut keys: Vec<_> = pairs.keys().copied().collect();
    keys.sort();
    for key in keys {
        let close = &pairs[&key];
        let (course, a, b) = key;
        let k = close.len() as u32;
        if k < p.min_close_assessments {
            continue;
        }
        let (sa, sb) = (&submitted[&(course, a)], &submitted[&(course, b)]);
        let shared: Vec<&str> = sa.keys().filter(|c| sb.contains_key(*c)).copied().collect();
        let n = shared.len() as u32;
        let share = k as f64 / n.max(1) as f64;
        let lambda: f64 = shared.iter().map(|c| chance.get(&(course, *c)).copied().unwrap_or(0.0)).sum();
        let prob = poisson_tail(k, lambda);
        if share < p.min_close_share || prob >= p.max_chance_probability {
            continue;
        }
        let with_answers: Vec<bool> =
            shared.iter().filter_map(|c| match (&sa[c].answer, &sb[c].answer) { (Some(x), Some(y)) => Some(x == y), _ => None }).collect();
        let identical = with_answers.iter().filter(|x| **x).count();
        let mut events: Vec<_> = close.iter().map(|(c, ta, tb)| (*c, *ta, *tb)).collect();
        events.sort();
        let ra = sa[shared[0]];
        out.push(Finding {
            kind: Kind::Integrity,
            day,
            institution: ra.institution.clone(),
            course: course.to_owned(),
            content: None,
            cohort: None,
            subjects: vec![a, b],
            statistic: k as f64,
            baseline: lambda,
            band: (0.0, (lambda + 3.0 * lambda.sqrt()).max(p.min_close_assessments as f64 - 1.0)),
            key: format!("integrity:{course}:{a}:{b}"),
            evidence: json!({
                "statistic": "assessments both submitted within close_seconds of each other (subjects 0 and 1)",
                "hypothesis": "a timing pattern consistent with answer sharing; a hypothesis for a human panel, never a verdict",
                "close_seconds": p.close_seconds,
                "assessments_both_submitted": n,
                "close_share": share,
                "chance_under_independence": prob,
                "expected_close_by_chance": lambda,
                "identical_answers": {"compared": with_answers.len(), "identical": identical},
                "window": {"from": first.to_string(), "to": day.to_string()},
                "submissions": events.iter().map(|(c, ta, tb)| json!({
                    "assessment": c, "subject_0_at_ms": ta, "subject_1_at_ms": tb, "seconds_apart": (tb - ta) as f64 / 1000.0,
                })).collect::<Vec<_>>(),
            }),
            context: vec![ContextCount { label: "course_learners_submitting".into(), learners: submitted.keys().filter(|(c, _)| *c == course).count() as u64 }],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::window::{Data, SubmitRow};

    fn policy() -> IntegrityDef {
        IntegrityDef {
            route: "integrity_panel".into(),
            close_seconds: 20,
            min_close_assessments: 4,
            min_close_share: 0.5,
            max_chance_probability: 1e-6,
            window_days: 56,
        }
    }

    #[test]
    fn close_submitters_are_flagged_study_partners_and_chance_are_not() {
        let day = chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        let t0 = day.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_millis() - 10 * 86_400_000;
        let ids: Vec<Uuid> = (0..40).map(|i| Uuid::from_u128(i + 1)).collect();
        let mut d = Data::default();
        let row = |l: usize, a: usize, ts: i64| SubmitRow {
                learner: ids[l],
                institution: "u".into(),
                course: "c".into(),
                cohort: "k".into(),
                content: format!("quiz-{a}"),
                ts_ms: ts,
                answer: None,
        };
        for a in 0..8usize {
            let base = t0 + a as i64 * 86_400_000;
            // Everyone spread over a day (a pseudo-random order per assessment, 30+ minutes apart).
            for l in 0..40usize {
                d.submits.push(row(l, a, base + ((l * 7919 + a * 104_729) % 40) as i64 * 2_000_000));
            }
        }
        // Learner 0 submits 3-9 s after learner 1 on six of eight; learner 2 two to ten minutes after learner 3 on all.
        d.submits.retain(|s| !(s.learner == ids[0] && s.content != "quiz-6" && s.content != "quiz-7") && s.learner != ids[2]);
        let find = |d: &Data, l: usize, a: usize| d.submits.iter().find(|s| s.learner == ids[l] && s.content == format!("quiz-{a}")).unwrap().ts_ms;
        for a in 0..6 {
            let t = find(&d, 1, a);
            d.submits.push(row(0, a, t + 3_000 + a as i64 * 1_000));
        }
        for a in 0..8 {
            let t = find(&d, 3, a);
            d.submits.push(row(2, a, t + 120_000 + a as i64 * 60_000));
        }
        let found = evaluate(&Window { day, data: &d }, &policy());
        let pairs: Vec<(Uuid, Uuid)> = found.iter().map(|f| (f.subjects[0], f.subjects[1])).collect();
        assert_eq!(pairs, vec![(ids[0], ids[1])], "{found:?}");
        assert_eq!(found[0].statistic, 6.0);
        assert_eq!(found[0].evidence["assessments_both_submitted"], 8);
        // Beyond the window, the same submissions are not examined.
        let later = Window { day: day + Duration::days(60), data: &d };
        assert!(evaluate(&later, &policy()).is_empty());
    }
}
