//! `learnvault policy check-features`: recommendation features never read a
//! protected attribute. Every feature view (database `features`) is parsed with
//! a real SQL parser (sqlparser, ClickHouse dialect) and its lineage followed
//! through the views, subqueries and materialized-view targets it reads, down to
//! base columns and map keys (`props['gender']`, JSON extraction keys, aliases,
//! joins). A path that reaches an attribute of `policies/protected-attributes.yaml`
//! fails the check, naming the feature and the path.
//!
//! The analysis is conservative: a source counts as read as a whole, so a view
//! that touches a protected key taints every feature built on it.

use sqlparser::ast::{visit_expressions, visit_relations, Expr, Query, Statement, Value};
use sqlparser::dialect::ClickHouseDialect;
use sqlparser::parser::Parser;
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;

use super::ProtectedAttributes;
use crate::warehouse::migrate;

/// What defines each derived object: views, and tables filled by a materialized view.
pub struct Catalog {
    pub queries: BTreeMap<String, (String, Query)>,
}

fn parse_view(sql: &str) -> Result<(String, Option<String>, Query), String> {
    let stmts = Parser::parse_sql(&ClickHouseDialect {}, sql).map_err(|e| e.to_string())?;
    match stmts.into_iter().next() {
        Some(Statement::CreateView(v)) => Ok((v.name.to_string(), v.to.map(|t| t.to_string()), *v.query)),
        _ => Err("not a CREATE VIEW".into()),
    }
}

impl Catalog {
    pub fn from_migrations(dir: &Path) -> Result<Catalog, String> {
        let mut queries = BTreeMap::new();
        for m in migrate::load(dir).map_err(|e| e.to_string())? {
            let file = format!("{:04}_{}.sql", m.version, m.name);
            for stmt in migrate::statements(&m.sql) {
                let upper = stmt.trim_start().to_uppercase();
                if !(upper.starts_with("CREATE VIEW") || upper.starts_with("CREATE MATERIALIZED VIEW")) {
                    continue;
                }
                let (name, to, query) = parse_view(&stmt).map_err(|e| format!("{file}: cannot parse a view, so cannot prove its lineage: {e}"))?;
                if let Some(target) = to {
                    queries.insert(target, (file.clone(), query.clone()));
                }
                queries.insert(name, (file.clone(), query));
            }
        }
        Ok(Catalog { queries })
    }
}

/// What one query reads directly: identifiers and string literals.
fn reads(q: &Query) -> (Vec<String>, Vec<String>) {
    let (mut idents, mut literals) = (Vec::new(), Vec::new());
    let _ = visit_expressions(q, |e: &Expr| {
        match e {
            Expr::Identifier(i) => idents.push(i.value.clone()),
            Expr::CompoundIdentifier(parts) => {
                if let Some(last) = parts.last() {
                    idents.push(last.value.clone());
                }
            }
            Expr::Value(v) => {
                if let Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) = &v.value {
                    literals.push(s.clone());
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    (idents, literals)
}

fn sources(q: &Query) -> Vec<String> {
    let mut out = Vec::new();
    let _ = visit_relations(q, |r| {
        out.push(r.to_string());
        ControlFlow::<()>::Continue(())
    });
    out
}

fn walk(cat: &Catalog, protected: &ProtectedAttributes, name: &str, path: &mut Vec<String>, found: &mut Vec<String>) {
    let Some((_, q)) = cat.queries.get(name) else { return };
    let (idents, literals) = reads(q);
    let reads_props = idents.iter().any(|i| i == "props");
    for lit in &literals {
        if let Some(attr) = protected.matches(lit) {
            let leaf = if reads_props { format!("props['{lit}']") } else { format!("'{lit}'") };
            found.push(format!("{} -> {leaf} (protected attribute `{attr}`)", path.join(" -> ")));
        }
    }
    for id in &idents {
        if let Some(attr) = protected.matches(id) {
            found.push(format!("{} -> column {id} (protected attribute `{attr}`)", path.join(" -> ")));
        }
    }
    for s in sources(q) {
        if !path.contains(&s) && cat.queries.contains_key(&s) {
            path.push(s.clone());
            walk(cat, protected, &s, path, found);
            path.pop();
        }
    }
}

/// Every path from a feature view to a protected attribute; empty when clean.
pub fn check(cat: &Catalog, protected: &ProtectedAttributes) -> (Vec<String>, Vec<String>) {
    let features: Vec<String> = cat.queries.keys().filter(|n| n.starts_with("features.")).cloned().collect();
    let mut found = Vec::new();
    for f in &features {
        let mut path = vec![f.clone()];
        walk(cat, protected, f, &mut path, &mut found);
    }
    found.sort();
    found.dedup();
    (features, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_features_are_clean_and_parse() {
        let cat = Catalog::from_migrations(&Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/clickhouse")).unwrap();
        let (features, found) = check(&cat, &ProtectedAttributes::load(&crate::policy::shipped_dir()).unwrap());
        assert!(features.contains(&"features.learner_engagement".to_string()), "{features:?}");
        assert!(found.is_empty(), "{found:?}");
        assert!(cat.queries.contains_key("agg.funnel_by_cohort"), "MV targets carry their view's lineage");
    }

    #[test]
    fn a_protected_key_behind_an_alias_in_an_intermediate_view_is_found() {
        let dir = std::env::temp_dir().join(format!("lv-lineage-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("0001_base.sql"),
            "CREATE TABLE events.learning_events (learner_id UUID, props Map(String, String)) ENGINE = MergeTree ORDER BY learner_id;\n\
             CREATE VIEW agg.learner_profile AS SELECT learner_id, props['Gender'] AS g, JSONExtractString(props['extra'], 'dob') AS d FROM events.learning_events;\n\
             CREATE VIEW features.innocent AS SELECT p.learner_id, count() AS n FROM (SELECT learner_id, g AS segment FROM agg.learner_profile) AS p GROUP BY p.learner_id;",
        )
        .unwrap();
        let cat = Catalog::from_migrations(&dir).unwrap();
        let (_, found) = check(&cat, &ProtectedAttributes::load(&crate::policy::shipped_dir()).unwrap());
        let text = found.join("\n");
        assert!(text.contains("features.innocent -> agg.learner_profile -> props['Gender'] (protected attribute `gender`)"), "{text}");
        assert!(text.contains("protected attribute `date_of_birth`"), "{text}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
