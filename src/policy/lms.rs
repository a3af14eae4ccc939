//! `policies/lms.yaml`: the LMSs of each institution, by xAPI `account.homePage`.
//!
//! Invariant: two LMSs of one institution never share an external-id namespace.
//! At most one LMS per institution has no `external_id_prefix`; prefixes are
//! distinct, end in `:` and hold no other `:`. A statement whose home page is not
//! declared for the token's institution gets no external id at all ([`LmsHomePages::external_id`]
//! answers `None`), so it can never be merged with another LMS's learner.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{read, PolicyError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LmsEntry {
    home_page: String,
    #[serde(default)]
    external_id_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LmsFile {
    institutions: BTreeMap<String, Vec<LmsEntry>>,
}

/// institution -> normalised home page -> external-id prefix (`""` for the un-prefixed LMS).
#[derive(Debug, Clone, Default)]
pub struct LmsHomePages {
    by_institution: BTreeMap<String, BTreeMap<String, String>>,
}

/// Home pages compare case-insensitively and without trailing `/`.
fn normalise(home_page: &str) -> String {
    home_page.trim().trim_end_matches('/').to_lowercase()
}

impl LmsHomePages {
    pub const FILE: &'static str = "lms.yaml";

    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        let path = dir.join(Self::FILE);
        let f: LmsFile = read(&path)?;
        Self::from_entries(f).map_err(|message| PolicyError::Invalid { path: path.display().to_string(), message })
    }

    fn from_entries(f: LmsFile) -> Result<Self, String> {
        let mut by_institution = BTreeMap::new();
        for (inst, entries) in f.institutions {
            if entries.is_empty() {
                return Err(format!("institution {inst}: declare at least one LMS"));
            }
            let mut pages = BTreeMap::new();
            let mut prefixes = BTreeSet::new();
            for e in entries {
                let page = normalise(&e.home_page);
                let web = page.strip_prefix("https://").or_else(|| page.strip_prefix("http://"));
                if !web.is_some_and(|h| !h.is_empty() && !h.starts_with('/')) {
                    return Err(format!("institution {inst}: home_page must be an http(s) IRI with a host"));
                }
                let prefix = e.external_id_prefix.unwrap_or_default();
                if !prefix.is_empty() && (!prefix.ends_with(':') || prefix[..prefix.len() - 1].contains(':') || prefix.len() < 2) {
                    return Err(format!("institution {inst}: external_id_prefix {prefix:?} must end in ':' and hold no other ':'"));
                }
                if !prefixes.insert(prefix.clone()) {
                    return Err(match prefix.is_empty() {
                        true => format!("institution {inst}: at most one LMS may omit external_id_prefix (two LMSs would share one id space)"),
                        false => format!("institution {inst}: external_id_prefix {prefix:?} is declared twice"),
                    });
                }
                if pages.insert(page, prefix).is_some() {
                    return Err(format!("institution {inst}: a home_page is declared twice"));
                }
            }
            by_institution.insert(inst, pages);
        }
        Ok(LmsHomePages { by_institution })
    }

    /// The vault external id of `account.name` sent from `home_page` for `institution`:
    /// the LMS's prefix + the name; `None` when that home page is not declared for the institution.
    pub fn external_id(&self, institution: &str, home_page: &str, name: &str) -> Option<String> {
        let prefix = self.by_institution.get(institution)?.get(&normalise(home_page))?;
        Some(format!("{prefix}{name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<LmsHomePages, String> {
        LmsHomePages::from_entries(serde_yaml::from_str(yaml).map_err(|e| e.to_string())?)
    }

    #[test]
    fn declared_home_pages_namespace_external_ids() {
        let p = parse(
            "institutions:\n  uni-a:\n    - home_page: https://lms.example.edu/\n    - home_page: https://moodle.example.edu\n      external_id_prefix: 'moodle:'\n  uni-b:\n    - home_page: https://lms.uni-b.example\n",
        )
        .unwrap();
        assert_eq!(p.external_id("uni-a", "https://LMS.example.edu", "42").as_deref(), Some("42"));
        assert_eq!(p.external_id("uni-a", "https://moodle.example.edu/", "42").as_deref(), Some("moodle:42"));
        // another institution's LMS, an undeclared LMS, an undeclared institution: no external id
        assert_eq!(p.external_id("uni-a", "https://lms.uni-b.example", "42"), None);
        assert_eq!(p.external_id("uni-a", "https://evil.example", "42"), None);
        assert_eq!(p.external_id("uni-c", "https://lms.example.edu", "42"), None);
    }

    #[test]
    fn ambiguous_declarations_are_start_up_errors() {
        let two_bare = "institutions:\n  uni-a:\n    - home_page: https://a.example\n    - home_page: https://b.example\n";
        assert!(parse(two_bare).unwrap_err().contains("at most one LMS"));
        let same_prefix = "institutions:\n  uni-a:\n    - home_page: https://a.example\n      external_id_prefix: 'x:'\n    - home_page: https://b.example\n      external_id_prefix: 'x:'\n";
        assert!(parse(same_prefix).unwrap_err().contains("declared twice"));
        for bad in ["'x'", "'a:b:'", "':'"] {
            let y = format!("institutions:\n  uni-a:\n    - home_page: https://a.example\n      external_id_prefix: {bad}\n");
            assert!(parse(&y).unwrap_err().contains("must end in ':'"), "{bad}");
        }
        assert!(parse("institutions:\n  uni-a:\n    - home_page: lms.example\n").is_err());
        assert!(parse("institutions:\n  uni-a: []\n").is_err());
        assert!(parse("institutions:\n  uni-a:\n    - home_page: https://a.example\n      prefix: 'x:'\n").is_err(), "unknown keys refused");
    }

    #[test]
    fn the_shipped_policy_loads() {
        let p = LmsHomePages::load(&crate::policy::shipped_dir()).unwrap();
        assert_eq!(p.external_id("uni-a", "http://localhost:18000", "n").as_deref(), Some("devstack:n"));
        assert_eq!(p.external_id("uni-north", "https://uni-north.lms.example", "uni-north-1").as_deref(), Some("uni-north-1"));
    }
}
