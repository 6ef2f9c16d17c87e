//! The libpod container spec of a function instance, with the isolation
//! defaults of DESIGN.md applied to every container.

use containerpub_wire::api::Route;
use serde_json::{Value, json};

use crate::labels;

/// Non-root user every function runs as.
pub const FUNCTION_USER: &str = "65534:65534";
/// Size of the writable tmpfs at /tmp.
const TMP_SIZE: &str = "size=64m";
/// CFS period used to express the CPU quota.
const CPU_PERIOD_US: u64 = 100_000;
/// Ids each instance's user namespace maps: 0..=65535 inside, a range of
/// the `containers` subordinate ids (/etc/subuid, /etc/subgid) outside that
/// no other container holds. Covers [`FUNCTION_USER`]; 65536 is Podman's
/// default `auto-userns-max-size`.
pub const USERNS_SIZE: u32 = 65_536;
const _: () = assert!(USERNS_SIZE > 65_534, "the function user must be mapped");

/// Builds the SpecGenerator body for one instance of `route`.
///
/// The body is written by hand, not through podman-api, because that crate
/// misspells `no_new_privileges` and Podman then silently ignores it.
pub fn container_spec(route: &Route, node: &str, network: &str) -> Value {
    let cfg = &route.config;
    let mut env = serde_json::Map::new();
    for (k, v) in &cfg.env {
        env.insert(k.clone(), Value::String(v.clone()));
    }
    env.insert("PORT".into(), Value::String(cfg.port.to_string()));
    let memory = u64::from(cfg.resources.memory_mb) * 1024 * 1024;
    let quota = (cfg.resources.cpu * CPU_PERIOD_US as f64)
        .round()
        .max(1000.0) as u64;
    json!({
        "name": format!("cpub-{}-{}-{}", route.function, route.deployment_id, unique_suffix()),
        "image": route.image,
        "labels": {
            labels::MANAGED: "true",
            labels::NODE: node,
            labels::FUNCTION: route.function,
            labels::DEPLOYMENT: route.deployment_id.to_string(),
        },
        "env": env,
        "user": FUNCTION_USER,
        "cap_drop": ["ALL"],
        "no_new_privileges": true,
        "read_only_filesystem": true,
        "mounts": [{
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["rw", "nosuid", "nodev", "noexec", TMP_SIZE],
        }],
        "resource_limits": {
            "memory": { "limit": memory, "swap": memory },
            "cpu": { "quota": quota, "period": CPU_PERIOD_US },
            "pids": { "limit": cfg.resources.pids },
        },
        // `--userns=auto:size=…`: Podman 4.3's API needs both keys (nsmode
        // alone is ignored, and so is a `value` of "size=…").
        "userns": { "nsmode": "auto" },
        "idmappings": { "AutoUserNs": true, "AutoUserNsOpts": { "Size": USERNS_SIZE } },
        "netns": { "nsmode": "bridge" },
        "Networks": { network: {} },
        "stop_timeout": 2,
    })
}

/// A short random-enough suffix so concurrent starts never clash on names.
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{:x}{:x}",
        nanos & 0xfffff,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use containerpub_wire::Manifest;

    use super::*;

    #[test]
    fn spec_applies_isolation_defaults() {
        let config = Manifest::parse(
            "name = \"f\"\nruntime = \"container\"\n[env]\nA = \"1\"\n[resources]\nmemory_mb = 64\ncpu = 0.25\npids = 32\n",
        )
        .unwrap();
        let route = Route {
            function: "f".into(),
            deployment_id: 7,
            version: 1,
            image: "localhost/x:v1".into(),
            config,
        };
        let s = container_spec(&route, "n1", "cpub");
        assert_eq!(s["cap_drop"], json!(["ALL"]));
        assert_eq!(s["no_new_privileges"], json!(true));
        assert_eq!(s["read_only_filesystem"], json!(true));
        assert_eq!(s["user"], json!("65534:65534"));
        assert_eq!(
            s["resource_limits"]["memory"]["limit"],
            json!(64 * 1024 * 1024)
        );
        assert_eq!(
            s["resource_limits"]["memory"]["swap"],
            json!(64 * 1024 * 1024)
        );
        assert_eq!(s["resource_limits"]["cpu"]["quota"], json!(25_000));
        assert_eq!(s["resource_limits"]["pids"]["limit"], json!(32));
        assert_eq!(s["env"]["PORT"], json!("8080"));
        assert_eq!(s["env"]["A"], json!("1"));
        assert_eq!(s["labels"]["cpub.deployment"], json!("7"));
        assert_eq!(s["labels"]["cpub.node"], json!("n1"));
        assert!(s["Networks"].get("cpub").is_some());
        assert_eq!(s["userns"]["nsmode"], json!("auto"));
        assert_eq!(s["idmappings"]["AutoUserNs"], json!(true));
        assert_eq!(s["idmappings"]["AutoUserNsOpts"]["Size"], json!(65_536));
    }
}
