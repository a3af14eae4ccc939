//! The statements copied from openedx/event-routing-backends' expected output
//! (`tests/fixtures/xapi/openedx-erb/`), listed once for the integration tests and
//! for the gateway's unit tests (`src/gateway/xapi.rs` includes this file by `#[path]`,
//! so it depends on nothing but std).

use std::path::PathBuf;

/// The fixture files (`*.json`), sorted by name.
pub fn erb_paths() -> Vec<PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/xapi/openedx-erb");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
    files.sort();
    files
}
