//! The crate dependency graph of the workspace: which crate may depend on
//! which (ARCHITECTURE.md, code map), and no cycles. Read from `cargo
//! metadata --no-deps` (normal, dev and build dependencies alike); a
//! forbidden edge fails with its name, a new crate fails until it has a
//! rule here. The unit tests below feed the checker graphs that must fail.

use std::collections::{BTreeMap, BTreeSet};

/// Every workspace crate and the workspace crates it may depend on
/// (`None`: any).
const RULES: &[(&str, Option<&[&str]>)] = &[
    // The protocol: no I/O, shared by every process.
    ("containerpub-wire", Some(&[])),
    // The small I/O helpers the processes share (atomic writes, logging).
    ("containerpub-util", Some(&[])),
    // The Podman REST client.
    ("containerpub-podman", Some(&["containerpub-wire"])),
    // The pool writes its log offsets atomically (`util::fs`).
    (
        "containerpub-pool",
        Some(&[
            "containerpub-wire",
            "containerpub-util",
            "containerpub-podman",
        ]),
    ),
    // The control plane builds and removes images through Podman, never
    // through the pool (scheduling, leases, metrics are the proxy's).
    (
        "containerpub-control",
        Some(&[
            "containerpub-wire",
            "containerpub-util",
            "containerpub-podman",
        ]),
    ),
    // The proxy reaches Podman only through the pool.
    (
        "containerpub-proxy",
        Some(&[
            "containerpub-wire",
            "containerpub-util",
            "containerpub-pool",
        ]),
    ),
    (
        "containerpub-cli",
        Some(&["containerpub-wire", "containerpub-util"]),
    ),
    // A load generator links none of the servers.
    ("containerpub-loadtest", Some(&["containerpub-wire"])),
    // Tests and benchmarks of the whole.
    ("containerpub-e2e", None),
    ("containerpub-benches", None),
];

/// What is wrong with `graph` (crate → the workspace crates it depends on).
fn violations(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let rules: BTreeMap<&str, Option<&[&str]>> = RULES.iter().copied().collect();
    let mut wrong = Vec::new();
    for (krate, deps) in graph {
        match rules.get(krate.as_str()) {
            None => wrong.push(format!(
                "crate {krate} has no rule: add it to RULES in e2e/tests/crate_graph.rs \
                 (and to ARCHITECTURE.md's code map)"
            )),
            Some(None) => {}
            Some(Some(allowed)) => {
                for dep in deps {
                    if !allowed.contains(&dep.as_str()) {
                        wrong.push(format!(
                            "forbidden edge {krate} -> {dep} ({krate} may depend on: {})",
                            if allowed.is_empty() {
                                "no workspace crate".to_owned()
                            } else {
                                allowed.join(", ")
                            }
                        ));
                    }
                }
            }
        }
    }
    if let Some(cycle) = find_cycle(graph) {
        wrong.push(format!("dependency cycle: {}", cycle.join(" -> ")));
    }
    wrong
}

/// One cycle of `graph` (its crates, the first repeated at the end), if any.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for dep in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(dep, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|start| visit(start, graph, &mut Vec::new(), &mut done))
}

/// The workspace's graph from `cargo metadata`: each member and the
/// members it depends on (any kind of dependency). A crate's
/// dev-dependency on itself (the pool's tests turn on its `test-util`
/// feature that way) is not an edge.
fn workspace_graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let packages: Vec<&serde_json::Value> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| p["id"].as_str().is_some_and(|id| members.contains(id)))
        .collect();
    let names: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["name"].as_str())
                .filter(|d| names.contains(d) && Some(*d) != p["name"].as_str())
                .map(str::to_owned)
                .collect();
            (p["name"].as_str().unwrap_or_default().to_owned(), deps)
        })
        .collect()
}

#[test]
fn the_workspace_keeps_its_crate_graph() {
    let graph = workspace_graph();
    assert!(
        graph.contains_key("containerpub-podman") && graph.contains_key("containerpub-control"),
        "the workspace was read: {graph:?}"
    );
    let wrong = violations(&graph);
    assert!(wrong.is_empty(), "crate graph:\n{}", wrong.join("\n"));
}

fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
    edges
        .iter()
        .map(|(k, deps)| {
            (
                (*k).to_owned(),
                deps.iter().map(|d| (*d).to_owned()).collect(),
            )
        })
        .collect()
}

#[test]
fn a_forbidden_edge_is_named() {
    let g = graph(&[
        ("containerpub-wire", &[]),
        ("containerpub-podman", &["containerpub-wire"]),
        (
            "containerpub-pool",
            &["containerpub-wire", "containerpub-podman"],
        ),
        (
            "containerpub-control",
            &["containerpub-podman", "containerpub-pool"],
        ),
    ]);
    assert_eq!(
        violations(&g),
        ["forbidden edge containerpub-control -> containerpub-pool \
          (containerpub-control may depend on: containerpub-wire, containerpub-util, \
          containerpub-podman)"]
    );
    let g = graph(&[("containerpub-wire", &["containerpub-pool"])]);
    assert_eq!(
        violations(&g),
        ["forbidden edge containerpub-wire -> containerpub-pool \
          (containerpub-wire may depend on: no workspace crate)"]
    );
    // e2e may use anything.
    let g = graph(&[(
        "containerpub-e2e",
        &["containerpub-control", "containerpub-proxy"],
    )]);
    assert!(violations(&g).is_empty());
}

#[test]
fn a_cycle_and_an_unknown_crate_are_named() {
    let g = graph(&[
        ("containerpub-e2e", &["containerpub-benches"]),
        ("containerpub-benches", &["containerpub-e2e"]),
    ]);
    assert_eq!(
        violations(&g),
        ["dependency cycle: containerpub-benches -> containerpub-e2e -> containerpub-benches"]
    );
    let g = graph(&[("containerpub-new", &[])]);
    let wrong = violations(&g);
    assert_eq!(wrong.len(), 1);
    assert!(
        wrong[0].starts_with("crate containerpub-new has no rule"),
        "{wrong:?}"
    );
}
