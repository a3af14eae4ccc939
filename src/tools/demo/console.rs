//! The live demo's console: its URL and a one-time sign-in link per role
//! (instructor, advisor, DPO, auditor) over the simulated cohort, shown on the
//! dashboard while the demo serves.

use std::fmt::Write as _;

use crate::api::AppState;
use crate::auth::session::SessionClaims;
use crate::tools::sim::INSTITUTIONS;

/// The console block of the demo's screen: the URL and one link per role.
pub async fn links(state: &AppState, base: &str) -> anyhow::Result<String> {
    let mut config = (*state.console).clone();
    config.base_url = base.trim_end_matches('/').to_owned();
    let inst = INSTITUTIONS[0];
    let courses: Vec<String> = (1..=2).map(|n| format!("{inst}-course-{n}")).collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let roles = [
        (
            "instructor",
            SessionClaims { sub: "demo-instructor".into(), roles: s(&["instructor"]), institutions: s(&[inst]), courses: courses.clone() },
        ),
        // The advisor also follows the signals' planted history (`demo_signals`: `demo-inst-c` teaches `demo-course-c`).
        (
            "advisor",
            SessionClaims {
                sub: "demo-advisor".into(),
                roles: s(&["advisor"]),
                institutions: s(&[inst, "demo-inst-0", "demo-inst-1"]),
                courses: courses.iter().cloned().chain(["demo-course-0".to_string(), "demo-course-1".to_string()]).collect(),
            },
        ),
        ("DPO", SessionClaims { sub: "demo-dpo".into(), roles: s(&["dpo"]), institutions: s(&INSTITUTIONS), courses: vec![] }),
        ("auditor", SessionClaims { sub: "demo-auditor".into(), roles: s(&["auditor"]), institutions: s(&["*"]), courses: vec![] }),
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n\x1b[1mconsole\x1b[0m {}/console  (one-time sign-in links, valid {} min; open one per browser profile)",
        config.base_url,
        config.code_ttl.as_secs() / 60
    );
    for (label, claims) in roles {
        let link = crate::console::login_link(&state.pool, &config, &claims).await?;
        let _ = writeln!(out, "  {label:<10} {link}");
    }
    let _ = writeln!(
        out,
        "  more:      learnvault console login --role instructor --institution {inst} --course {}   (with the demo's LEARNVAULT_* settings)",
        courses[0]
    );
    Ok(out)
}
