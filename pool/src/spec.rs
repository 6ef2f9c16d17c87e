//! The container spec of a function instance, with the isolation defaults
//! of DESIGN.md applied to every container (the struct and its Podman
//! spelling: `containerpub_podman::spec`).

use std::collections::BTreeMap;

use containerpub_podman::spec::{
    AutoUserNsOptions, ContainerSpec, CpuLimits, IdMappings, ImageVolumeMode, LogConfiguration,
    MemoryLimits, Mount, Namespace, NamespaceMode, NetworkOptions, PidsLimit, ResourceLimits,
};
use containerpub_wire::api::Route;

use crate::labels;

/// Non-root user every function runs as.
pub const FUNCTION_USER: &str = "65534:65534";
/// Options of the writable tmpfs at /tmp and at /dev/shm (64 MiB each:
/// Podman's default size of /dev/shm).
const TMP_OPTIONS: &[&str] = &["rw", "nosuid", "nodev", "noexec", "size=64m"];
/// CFS period used to express the CPU quota.
const CPU_PERIOD_US: u64 = 100_000;
/// Ids each instance's user namespace maps: 0..=65535 inside, a range of
/// the `containers` subordinate ids (/etc/subuid, /etc/subgid) outside that
/// no other container holds. Covers [`FUNCTION_USER`]; 65536 is Podman's
/// default `auto-userns-max-size`.
pub const USERNS_SIZE: u32 = 65_536;
const _: () = assert!(USERNS_SIZE > 65_534, "the function user must be mapped");
/// Seconds Podman waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT_S: u32 = 2;
/// Size at which conmon starts a container's log file anew.
pub const LOG_FILE_MAX_BYTES: i64 = 32 << 20;

/// Builds the container spec for one instance of `route`.
pub fn container_spec(route: &Route, node: &str, network: &str) -> ContainerSpec {
    let cfg = &route.config;
    let mut env = cfg.env.clone();
    // Secrets (names checked by the control plane: never `PORT`) override
    // a manifest default of the same name.
    for secret in &route.secrets {
        env.insert(secret.name.clone(), secret.value.0.clone());
    }
    env.insert("PORT".into(), cfg.port.to_string());
    let memory = u64::from(cfg.resources.memory_mb) * 1024 * 1024;
    let quota = (cfg.resources.cpu * CPU_PERIOD_US as f64)
        .round()
        .max(1000.0) as u64;
    ContainerSpec {
        name: format!(
            "cpub-{}-{}-{}",
            route.function,
            route.deployment_id,
            unique_suffix()
        ),
        image: route.image.clone(),
        labels: BTreeMap::from([
            (labels::MANAGED.to_owned(), "true".to_owned()),
            (labels::NODE.to_owned(), node.to_owned()),
            (labels::FUNCTION.to_owned(), route.function.clone()),
            (
                labels::DEPLOYMENT.to_owned(),
                route.deployment_id.to_string(),
            ),
            (
                labels::INSTANCES.to_owned(),
                containerpub_wire::api::instances_digest(route),
            ),
        ]),
        env,
        user: Some(FUNCTION_USER.to_owned()),
        cap_drop: vec!["ALL".to_owned()],
        no_new_privileges: true,
        read_only_rootfs: true,
        // An image's `VOLUME` stays part of its read-only root: Podman's
        // default made each an anonymous volume on the host's disk that
        // the function could fill past every limit it has (review
        // helper-63).
        image_volume_mode: Some(ImageVolumeMode::Ignore),
        // /dev/shm is a tmpfs of the container's own mount namespace, not
        // Podman's per-container mount on the host (`ipcns` below): every
        // host mount makes each `runc` and Podman call that reads
        // /proc/self/mountinfo slower (at 1,000 containers one read of it
        // cost 28 ms of system time: ARCHITECTURE.md, "Mounts on the
        // host"). Its pages count against the memory limit.
        mounts: vec![
            Mount::tmpfs("/tmp", TMP_OPTIONS),
            Mount::tmpfs("/dev/shm", TMP_OPTIONS),
        ],
        resource_limits: Some(ResourceLimits {
            memory: Some(MemoryLimits {
                limit: memory,
                swap: memory,
            }),
            cpu: Some(CpuLimits {
                quota,
                period: CPU_PERIOD_US,
            }),
            pids: Some(PidsLimit {
                limit: u64::from(cfg.resources.pids),
            }),
        }),
        // `--userns=auto:size=…`: Podman 4.3's API needs both (nsmode
        // alone is ignored, and so is a `value` of "size=…").
        userns: Some(Namespace::new(NamespaceMode::Auto)),
        idmappings: Some(IdMappings {
            auto_userns: true,
            auto_userns_opts: Some(AutoUserNsOptions { size: USERNS_SIZE }),
        }),
        netns: Some(Namespace::new(NamespaceMode::Bridge)),
        // A private IPC namespace, as Podman's default, without its host
        // mount for /dev/shm (the tmpfs above instead).
        ipcns: Some(Namespace::new(NamespaceMode::None)),
        networks: BTreeMap::from([(network.to_owned(), NetworkOptions::default())]),
        stop_timeout: Some(STOP_TIMEOUT_S),
        // A file per container that the node's log capture tails
        // (`logs.rs`), started anew past this size so a chatty function
        // cannot fill the disk (the tailer reads the old file to its end).
        log_configuration: Some(LogConfiguration {
            driver: "k8s-file".to_owned(),
            size: Some(LOG_FILE_MAX_BYTES),
        }),
    }
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
    use containerpub_wire::private::{SecretValue, SecretVar};

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
            keys: Vec::new(),
            secrets: vec![
                SecretVar {
                    name: "A".into(),
                    value: SecretValue("from-secret".into()),
                },
                SecretVar {
                    name: "S".into(),
                    value: SecretValue("s3".into()),
                },
            ],
            signing_keys: Vec::new(),
        };
        let s = container_spec(&route, "n1", "cpub");
        assert_eq!(s.cap_drop, ["ALL"]);
        assert!(s.no_new_privileges);
        assert!(s.read_only_rootfs);
        assert_eq!(s.image_volume_mode, Some(ImageVolumeMode::Ignore));
        assert_eq!(s.user.as_deref(), Some("65534:65534"));
        let limits = s.resource_limits.as_ref().unwrap();
        let memory = limits.memory.as_ref().unwrap();
        assert_eq!((memory.limit, memory.swap), (64 << 20, 64 << 20));
        assert_eq!(limits.cpu.as_ref().unwrap().quota, 25_000);
        assert_eq!(limits.pids.as_ref().unwrap().limit, 32);
        assert_eq!(s.env["PORT"], "8080");
        assert_eq!(s.env["A"], "from-secret", "a secret overrides the manifest");
        assert_eq!(s.env["S"], "s3");
        assert_eq!(s.labels["cpub.deployment"], "7");
        assert_eq!(
            s.labels["cpub.instances"],
            containerpub_wire::api::instances_digest(&route)
        );
        assert_eq!(s.labels["cpub.node"], "n1");
        assert!(s.networks.contains_key("cpub"));
        assert_eq!(s.userns, Some(Namespace::new(NamespaceMode::Auto)));
        let ids = s.idmappings.as_ref().unwrap();
        assert!(ids.auto_userns);
        assert_eq!(ids.auto_userns_opts.as_ref().unwrap().size, 65_536);
        assert_eq!(s.mounts[0].destination, "/tmp");
        assert!(s.mounts[0].options.iter().any(|o| o == "noexec"));
        assert_eq!(s.mounts[1].destination, "/dev/shm");
        assert_eq!(s.ipcns, Some(Namespace::new(NamespaceMode::None)));
    }
}
