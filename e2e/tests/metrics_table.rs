//! The README's table of metrics against the code: every metric name the
//! proxy, the pool and the control plane register is in the table, and the
//! table names no metric that the code does not have. Reads the sources
//! (every `"cpub_…"` string literal is a metric name, but for the few
//! listed in `NOT_METRICS`); no stack, no build of the binaries.

use std::collections::BTreeSet;
use std::path::Path;

use containerpub_e2e::repo_root;

/// `"cpub_…"` literals in the sources that are not metric names.
const NOT_METRICS: [&str; 2] = [
    // the access log's tracing target (control/src/routes.rs)
    "cpub_access",
    // the PostgreSQL NOTIFY channel of route changes (control/src/db.rs)
    "cpub_routes",
];

/// The `"cpub_…"` string literals of the `.rs` files under `dir`.
fn literals(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            literals(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for (at, _) in text.match_indices("\"cpub_") {
                let name: String = text[at + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                // A whole literal only, not a prefix ("cpub_", "cpub_test_{}").
                if name.len() > "cpub_".len() && text[at + 1 + name.len()..].starts_with('"') {
                    out.insert(name);
                }
            }
        }
    }
}

/// The names in the first column of the README's metrics table.
fn table(readme: &str) -> BTreeSet<String> {
    let start = readme
        .find("| Metric | Type | Labels | From |")
        .expect("the README has a table of metrics");
    readme[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cell = l.split('|').nth(1).unwrap().trim();
            cell.trim_matches('`').to_owned()
        })
        .collect()
}

#[test]
fn the_readme_lists_every_metric_and_no_other() {
    let root = repo_root();
    let mut code = BTreeSet::new();
    for dir in ["proxy/src", "pool/src", "control/src"] {
        literals(&root.join(dir), &mut code);
    }
    for name in NOT_METRICS {
        assert!(
            code.remove(name),
            "{name} is no longer in the code: drop it from NOT_METRICS"
        );
    }
    assert!(code.len() >= 40, "too few metric names found: {code:?}");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let listed = table(&readme);
    let missing: Vec<_> = code.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "README's metrics table: missing {missing:?}; not in the code {extra:?}"
    );
}
