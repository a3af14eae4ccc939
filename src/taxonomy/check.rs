//! `learnvault taxonomy check`: a new taxonomy version must not remove, rename
//! or retype a field (or drop an event type) that a view, rollup or API reads.
//! Readers are found by reading their SQL: every statement of
//! `migrations/clickhouse` that reads the base table, and every SQL string in
//! `src/` that does.

use std::collections::BTreeSet;
use std::path::Path;

use super::{version_key, Taxonomy};
use crate::warehouse::migrate;

const BASE: &str = "events.learning_events";

/// A statement that reads the base table.
#[derive(Debug, Clone)]
pub struct Reader {
    /// The object it defines or fills (e.g. `agg.funnel_by_cohort_mv`), or the file.
    pub name: String,
    pub identifiers: BTreeSet<String>,
    pub literals: BTreeSet<String>,
    pub file: String,
}

/// Identifiers and string literals of a SQL text, outside comments.
pub fn tokens(sql: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut idents, mut lits) = (BTreeSet::new(), BTreeSet::new());
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if c == b'\'' {
            let start = i + 1;
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            lits.insert(String::from_utf8_lossy(&b[start..i.min(b.len())]).into_owned());
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b'`' || c == b'"' {
            let quoted = c == b'`' || c == b'"';
            let start = if quoted { i + 1 } else { i };
            i = start;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            idents.insert(String::from_utf8_lossy(&b[start..i]).to_lowercase());
            if quoted {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    (idents, lits)
}

fn object_name(stmt: &str) -> Option<String> {
    let words: Vec<&str> = stmt.split_whitespace().take(12).collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_uppercase()).collect();
    let after = |kw: &str| upper.iter().position(|w| w == kw).and_then(|p| words.get(p + 1)).map(|s| s.to_string());
    if upper.first().map(String::as_str) == Some("INSERT") {
        return after("INTO").map(|n| format!("{n} (backfill)"));
    }
    if upper.first().map(String::as_str) == Some("CREATE") {
        let pos = upper.iter().position(|w| w == "VIEW" || w == "TABLE")?;
        let mut rest = words[pos + 1..].iter().zip(&upper[pos + 1..]);
        return rest.find(|(_, u)| !matches!(u.as_str(), "IF" | "NOT" | "EXISTS")).map(|(w, _)| w.to_string());
    }
    None
}

/// Every reader of the base table in `migrations_dir` and `src_dir`.
pub fn readers(migrations_dir: &Path, src_dir: &Path) -> Result<Vec<Reader>, String> {
    let mut out = Vec::new();
    for m in migrate::load(migrations_dir).map_err(|e| e.to_string())? {
        let file = format!("migrations/clickhouse/{:04}_{}.sql", m.version, m.name);
        for stmt in migrate::statements(&m.sql) {
            let reads_base = stmt.contains(BASE) && !stmt.trim_start().to_uppercase().starts_with("CREATE TABLE");
            if reads_base {
                let (identifiers, literals) = tokens(&stmt);
                out.push(Reader { name: object_name(&stmt).unwrap_or_else(|| file.clone()), file: file.clone(), identifiers, literals });
            }
        }
    }
    let mut stack = vec![src_dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
                let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
                // SQL strings in Rust: raw or plain string literals mentioning the base table.
                for piece in text.split("r#\"").skip(1).chain(text.split('"').skip(1).step_by(2)) {
                    let sql = piece.split("\"#").next().unwrap_or(piece);
                    if sql.contains(BASE) && (sql.contains("SELECT") || sql.contains("select")) {
                        let (identifiers, literals) = tokens(sql);
                        out.push(Reader { name: path.display().to_string(), file: path.display().to_string(), identifiers, literals });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Problems between each pair of consecutive versions; empty when compatible.
pub fn check(tax: &Taxonomy, readers: &[Reader]) -> Vec<String> {
    let mut versions: Vec<_> = tax.versions.values().collect();
    versions.sort_by_key(|a| version_key(&a.version));
    let mut problems = Vec::new();
    for pair in versions.windows(2) {
        let (old, new) = (pair[0], pair[1]);
        for (name, field) in &old.fields {
            let change = match new.fields.get(name) {
                None => "removes (or renames)",
                Some(f) if f.ty != field.ty => "retypes",
                Some(_) => continue,
            };
            for r in readers.iter().filter(|r| r.identifiers.contains(name)) {
                problems.push(format!("taxonomy {} {change} field `{name}`, read by {} ({})", new.version, r.name, r.file));
            }
        }
        for t in old.event_types.difference(&new.event_types) {
            for r in readers.iter().filter(|r| r.literals.contains(t)) {
                problems.push(format!("taxonomy {} drops event type `{t}`, read by {} ({})", new.version, r.name, r.file));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_skip_comments_and_split_literals() {
        let (i, l) = tokens("SELECT uniqState(learner_id) -- course_id\n FROM t WHERE event_type = 'content.start' /* cohort_id */");
        assert!(i.contains("learner_id") && i.contains("event_type"));
        assert!(!i.contains("course_id") && !i.contains("cohort_id"));
        assert!(l.contains("content.start"));
    }

    #[test]
    fn shipped_views_read_the_fields_they_use() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let r = readers(&root.join("migrations/clickhouse"), &root.join("src")).unwrap();
        let funnel = r.iter().find(|r| r.name == "agg.funnel_by_cohort_mv").expect("funnel view is a reader");
        assert!(funnel.identifiers.contains("cohort_id"));
        assert!(funnel.literals.contains("assess.submit"));
    }
}
