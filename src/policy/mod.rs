//! Policies are data: `policies/*.yaml` loaded and validated at start-up.
//!
//! Invariant: an unknown permission name, an empty role or a duplicate purpose
//! is a start-up error, never a silent default. Authorisation is deny by default.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::domain::Purpose;

pub mod disclosure;
pub mod lms;
pub mod lineage;
pub mod signals;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("policy file {path} is invalid: {message}")]
    Invalid { path: String, message: String },
}

/// Everything a principal may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    PseudonymIssue,
    PseudonymLookup,
    PseudonymResolve,
    ConsentWrite,
    ConsentRead,
    AuditRead,
    AuditVerify,
    DsrAccess,
    DsrErasure,
    DsrRead,
    FeaturesRead,
    RetentionRead,
    EventsIngest,
    CohortRead,
    ContentRead,
    LearnerDrilldown,
    SignalsReview,
    IntegrityReview,
}

impl Permission {
    pub const ALL: [Permission; 18] = [
        Permission::PseudonymIssue,
        Permission::PseudonymLookup,
        Permission::PseudonymResolve,
        Permission::ConsentWrite,
        Permission::ConsentRead,
        Permission::AuditRead,
        Permission::AuditVerify,
        Permission::DsrAccess,
        Permission::DsrErasure,
        Permission::DsrRead,
        Permission::FeaturesRead,
        Permission::RetentionRead,
        Permission::EventsIngest,
        Permission::CohortRead,
        Permission::ContentRead,
        Permission::LearnerDrilldown,
        Permission::SignalsReview,
        Permission::IntegrityReview,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::PseudonymIssue => "pseudonym.issue",
            Permission::PseudonymLookup => "pseudonym.lookup",
            Permission::PseudonymResolve => "pseudonym.resolve",
            Permission::ConsentWrite => "consent.write",
            Permission::ConsentRead => "consent.read",
            Permission::AuditRead => "audit.read",
            Permission::AuditVerify => "audit.verify",
            Permission::DsrAccess => "dsr.access",
            Permission::DsrErasure => "dsr.erasure",
            Permission::DsrRead => "dsr.read",
            Permission::FeaturesRead => "features.read",
            Permission::RetentionRead => "retention.read",
            Permission::EventsIngest => "events.ingest",
            Permission::CohortRead => "cohort.read",
            Permission::ContentRead => "content.read",
            Permission::LearnerDrilldown => "learner.drilldown",
            Permission::SignalsReview => "signals.review",
            Permission::IntegrityReview => "integrity.review",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

#[derive(Deserialize)]
struct RolesFile {
    roles: BTreeMap<String, RoleDef>,
}
#[derive(Deserialize)]
struct RoleDef {
    #[allow(dead_code)]
    description: Option<String>,
    permissions: Vec<String>,
    /// `course`: the role acts only on the courses of its token's `courses` claim
    /// (within its institutions); `institution` (default): on every course of its institutions.
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct PurposesFile {
    reidentification: Vec<PurposeDef>,
    consent: Vec<PurposeDef>,
    /// Purposes for which a learner's pseudonymous activity may be drilled into.
    #[serde(default)]
    drilldown: Vec<PurposeDef>,
}
#[derive(Deserialize, Clone)]
struct PurposeDef {
    id: String,
    /// For consent purposes: `granted` or `denied` before any decision (default `denied`).
    #[serde(default)]
    default: Option<String>,
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Policies {
    roles: BTreeMap<String, BTreeSet<Permission>>,
    course_scoped: BTreeSet<String>,
    reidentification: BTreeSet<String>,
    drilldown: BTreeSet<String>,
    consent: BTreeSet<String>,
    consent_granted_by_default: BTreeSet<String>,
}

impl PolicyError {
    /// The file at `path` says something it must not.
    pub fn invalid(path: &Path, message: impl Into<String>) -> PolicyError {
        PolicyError::Invalid { path: path.display().to_string(), message: message.into() }
    }
}

/// The policies this repository ships (`policies/`), for unit tests.
#[cfg(test)]
pub(crate) fn shipped_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// A policy file: read and parsed as YAML into `T` (its checks are the caller's).
pub fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io { path: path.display().to_string(), source })?;
    serde_yaml::from_str(&text).map_err(|e| PolicyError::invalid(path, e.to_string()))
}

impl Policies {
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        let roles_path = dir.join("roles.yaml");
        let roles_file: RolesFile = read(&roles_path)?;
        let invalid = |path: &Path, message: String| PolicyError::Invalid { path: path.display().to_string(), message };
        let mut roles = BTreeMap::new();
        let mut course_scoped = BTreeSet::new();
        for (name, def) in roles_file.roles {
            match def.scope.as_deref() {
                None | Some("institution") => {}
                Some("course") => {
                    course_scoped.insert(name.clone());
                }
                Some(other) => return Err(invalid(&roles_path, format!("role {name}: scope must be institution or course, not {other:?}"))),
            }
            let mut perms = BTreeSet::new();
            for p in &def.permissions {
                let perm = Permission::parse(p).ok_or_else(|| invalid(&roles_path, format!("role {name}: unknown permission {p:?}")))?;
                perms.insert(perm);
            }
            roles.insert(name, perms);
        }
        for required in ["lms", "dpo", "auditor", "instructor", "admin"] {
            if !roles.contains_key(required) {
                return Err(invalid(&roles_path, format!("role {required:?} must be defined")));
            }
        }
        let purposes_path = dir.join("purposes.yaml");
        let pf: PurposesFile = read(&purposes_path)?;
        let collect = |defs: Vec<PurposeDef>, what: &str| -> Result<BTreeSet<String>, PolicyError> {
            let mut set = BTreeSet::new();
            for d in defs {
                Purpose::parse(&d.id).map_err(|_| invalid(&purposes_path, format!("{what} purpose {:?} is not a valid id", d.id)))?;
                if !set.insert(d.id.clone()) {
                    return Err(invalid(&purposes_path, format!("{what} purpose {:?} is listed twice", d.id)));
                }
            }
            Ok(set)
        };
        let mut consent_granted_by_default = BTreeSet::new();
        for d in &pf.consent {
            match d.default.as_deref() {
                None | Some("denied") => {}
                Some("granted") => {
                    consent_granted_by_default.insert(d.id.clone());
                }
                Some(other) => return Err(invalid(&purposes_path, format!("consent purpose {:?}: default must be granted or denied, not {other:?}", d.id))),
            }
        }
        let reidentification = collect(pf.reidentification, "reidentification")?;
        let consent = collect(pf.consent, "consent")?;
        let drilldown = collect(pf.drilldown, "drilldown")?;
        for required in ["analytics", "research", "recommendations"] {
            if !consent.contains(required) {
                return Err(invalid(&purposes_path, format!("consent purpose {required:?} must be defined")));
            }
        }
        Ok(Policies { roles, course_scoped, reidentification, drilldown, consent, consent_granted_by_default })
    }

    /// Whether any of `roles` grants `perm`. Unknown roles grant nothing.
    pub fn allows(&self, roles: &[String], perm: Permission) -> bool {
        roles.iter().any(|r| self.roles.get(r).is_some_and(|ps| ps.contains(&perm)))
    }

    /// Whether any of `roles` grants `perm` for `course`: a course-scoped role
    /// only for the courses of the token's `courses` claim.
    pub fn allows_course(&self, roles: &[String], perm: Permission, course: &str, courses: &[String]) -> bool {
        roles.iter().any(|r| {
            self.roles.get(r).is_some_and(|ps| ps.contains(&perm)) && (!self.course_scoped.contains(r) || courses.iter().any(|c| c == course))
        })
    }

    /// A declared drill-down purpose.
    pub fn drilldown_purpose(&self, p: &str) -> Option<Purpose> {
        self.drilldown.contains(p).then(|| Purpose::parse(p).ok()).flatten()
    }

    /// Whether `role` is course-scoped (acts only on its token's `courses`).
    pub fn is_course_scoped(&self, role: &str) -> bool {
        self.course_scoped.contains(role)
    }

    pub fn is_role(&self, role: &str) -> bool {
        self.roles.contains_key(role)
    }

    pub fn reidentification_purpose(&self, p: &str) -> Option<Purpose> {
        self.reidentification.contains(p).then(|| Purpose::parse(p).ok()).flatten()
    }

    pub fn consent_purpose(&self, p: &str) -> Option<Purpose> {
        self.consent.contains(p).then(|| Purpose::parse(p).ok()).flatten()
    }

    /// Whether `purpose` counts as granted before any decision is recorded.
    pub fn consent_default(&self, purpose: &str) -> bool {
        self.consent_granted_by_default.contains(purpose)
    }

    /// The declared drill-down purposes (`policies/purposes.yaml`, `drilldown`).
    pub fn drilldown_purposes(&self) -> impl Iterator<Item = &str> {
        self.drilldown.iter().map(String::as_str)
    }

    pub fn reidentification_purposes(&self) -> impl Iterator<Item = &str> {
        self.reidentification.iter().map(String::as_str)
    }

    pub fn consent_purposes(&self) -> impl Iterator<Item = &str> {
        self.consent.iter().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Policies {
        Policies::load(&crate::policy::shipped_dir()).unwrap()
    }

    #[test]
    fn shipped_policies_load_and_deny_by_default() {
        let p = shipped();
        let r = |s: &str| vec![s.to_string()];
        assert!(p.allows(&r("lms"), Permission::PseudonymIssue));
        assert!(!p.allows(&r("lms"), Permission::PseudonymResolve));
        assert!(p.allows(&r("dpo"), Permission::PseudonymResolve));
        assert!(!p.allows(&r("auditor"), Permission::PseudonymResolve));
        assert!(!p.allows(&r("admin"), Permission::PseudonymResolve));
        assert!(!p.allows(&r("no-such-role"), Permission::AuditRead));
        assert!(!p.allows(&[], Permission::AuditRead));
        assert!(p.reidentification_purpose("safeguarding").is_some());
        assert!(p.reidentification_purpose("marketing").is_none());
        assert!(p.consent_purpose("recommendations").is_some());
        let courses = vec!["cs101".to_string()];
        assert!(p.allows_course(&r("instructor"), Permission::CohortRead, "cs101", &courses));
        assert!(!p.allows_course(&r("instructor"), Permission::CohortRead, "cs999", &courses));
        assert!(!p.allows_course(&r("instructor"), Permission::LearnerDrilldown, "cs101", &courses));
        assert!(p.allows_course(&r("advisor"), Permission::LearnerDrilldown, "cs101", &courses));
        assert!(!p.allows_course(&r("content_author"), Permission::CohortRead, "cs101", &courses));
        assert!(p.allows_course(&r("content_author"), Permission::ContentRead, "cs101", &courses));
        assert!(p.drilldown_purpose("learner_support").is_some());
        assert!(p.drilldown_purpose("marketing").is_none());
    }

    #[test]
    fn unknown_permission_is_a_startup_error() {
        let dir = std::env::temp_dir().join(format!("lv-policy-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("roles.yaml"), "roles:\n  lms:\n    permissions: [pseudonym.everything]\n").unwrap();
        let err = Policies::load(&dir).unwrap_err().to_string();
        assert!(err.contains("unknown permission"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// `policies/protected-attributes.yaml`: attribute -> spellings.
#[derive(Debug, Clone)]
pub struct ProtectedAttributes {
    /// normalised spelling -> attribute
    spellings: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ProtectedFile {
    attributes: BTreeMap<String, Vec<String>>,
}

/// Lowercase, without `_`, `-`, `.` and spaces: `Date-Of_Birth` == `dateofbirth`.
pub fn normalise_attribute(s: &str) -> String {
    s.chars().filter(|c| !matches!(c, '_' | '-' | '.' | ' ')).flat_map(char::to_lowercase).collect()
}

impl ProtectedAttributes {
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        let f: ProtectedFile = read(&dir.join("protected-attributes.yaml"))?;
        let mut spellings = BTreeMap::new();
        for (attr, list) in f.attributes {
            spellings.insert(normalise_attribute(&attr), attr.clone());
            for s in list {
                spellings.insert(normalise_attribute(&s), attr.clone());
            }
        }
        Ok(ProtectedAttributes { spellings })
    }

    /// The protected attribute a property key denotes, if any.
    pub fn matches(&self, key: &str) -> Option<&str> {
        self.spellings.get(&normalise_attribute(key)).map(String::as_str)
    }
}

#[cfg(test)]
mod protected_tests {
    use super::*;

    #[test]
    fn spellings_match_case_and_separator_insensitively() {
        let p = ProtectedAttributes::load(&crate::policy::shipped_dir()).unwrap();
        assert_eq!(p.matches("Gender"), Some("gender"));
        assert_eq!(p.matches("date-of-birth"), Some("date_of_birth"));
        assert_eq!(p.matches("FREE_SCHOOL_MEALS"), Some("socioeconomic"));
        assert_eq!(p.matches("playback_speed"), None);
    }
}
