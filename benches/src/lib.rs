//! Fixtures for the benches: routes and route tables of any size built from
//! one valid manifest, and the order benches visit them in. The container
//! runtime under the pool is `containerpub_pool::testing::FakeRuntime`.

use containerpub_wire::Manifest;
use containerpub_wire::api::{Route, RouteTable};

/// A route of `name` whose `[scaling]` section is `scaling` (TOML lines).
pub fn route(name: &str, scaling: &str) -> Route {
    let text = format!(
        "name = \"{name}\"\nruntime = \"container\"\nvisibility = \"public\"\n[scaling]\n{scaling}\n"
    );
    Route {
        function: name.to_owned(),
        deployment_id: 1,
        version: 1,
        image: format!("localhost/cpub/{name}:1"),
        config: Manifest::parse(&text).expect("bench manifest is valid"),
        keys: Vec::new(),
        secrets: Vec::new(),
        signing_keys: Vec::new(),
    }
}

/// `n` distinct valid function names of varied length, in table order.
pub fn function_names(n: usize) -> Vec<String> {
    const STEMS: [&str; 8] = [
        "api",
        "orders",
        "thumbnail-resize",
        "auth-callback",
        "webhook-github",
        "report-nightly-export",
        "img",
        "payments-stripe-events",
    ];
    (0..n)
        .map(|i| format!("{}-{i}", STEMS[i % STEMS.len()]))
        .collect()
}

/// A route table of one route per name (default scaling).
pub fn route_table(names: &[String]) -> RouteTable {
    let template = route("template", "");
    let routes = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut r = template.clone();
            r.function.clone_from(name);
            r.config.name.clone_from(name);
            r.deployment_id = i as i64 + 1;
            r
        })
        .collect();
    RouteTable {
        revision: 1,
        routes,
    }
}

/// Order in which the benches visit `n` items: a fixed pseudo-random
/// permutation (xorshift), so hash-table lookups do not walk memory in
/// insertion order and runs are comparable.
pub fn shuffled(n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_are_valid() {
        let names = function_names(1000);
        assert!(
            names
                .iter()
                .all(|n| containerpub_wire::validate_function_name(n).is_ok())
        );
        let table = route_table(&names);
        assert_eq!(table.routes.len(), 1000);
        let mut order = shuffled(1000);
        assert_ne!(order, (0..1000).collect::<Vec<_>>());
        order.sort_unstable();
        assert_eq!(order, (0..1000).collect::<Vec<_>>());
    }
}
