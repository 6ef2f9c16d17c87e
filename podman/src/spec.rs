//! The body of `POST /libpod/containers/create` (Podman's SpecGenerator) as
//! a typed struct: each key is written once, here, with Podman's spelling.
//!
//! A key Podman does not know is ignored without a word (podman-api 0.11's
//! `no_new_privilages` ran containers WITH new privileges); so the keys are
//! pinned twice: by the unit test below (the exact JSON), and by
//! `tests/spec.rs`, which creates a container from a spec with every field
//! set and compares what Podman reports on inspect.
//!
//! Only the fields ContainerPub sets are here; add one with its Podman name
//! (`pkg/specgen/specgen.go`) and a check in `tests/spec.rs`.

use std::collections::BTreeMap;

use serde::Serialize;

/// A container to create. Optional parts left `None` (or empty) are not
/// sent, so Podman applies its own default.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ContainerSpec {
    /// Container name (unique on the host).
    pub name: String,
    /// Image reference, e.g. `localhost/cpub-fn-x:v1-d7-0123456789ab`.
    pub image: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Environment added to the image's.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// `uid:gid` the process runs as (the image's user when `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Capabilities taken away (`ALL`, or `CAP_…` names).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// `PR_SET_NO_NEW_PRIVS`: setuid binaries and file capabilities give nothing.
    #[serde(skip_serializing_if = "is_false")]
    pub no_new_privileges: bool,
    /// The image's root file system mounted read-only.
    #[serde(rename = "read_only_filesystem", skip_serializing_if = "is_false")]
    pub read_only_rootfs: bool,
    /// What becomes of the image's `VOLUME`s. Podman's default makes each an
    /// anonymous volume on the host's disk, writable whatever
    /// `read_only_filesystem` says and bounded by no limit of the
    /// container's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_volume_mode: Option<ImageVolumeMode>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// cgroup limits (OCI `LinuxResources`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_limits: Option<ResourceLimits>,
    /// User namespace; with [`NamespaceMode::Auto`] Podman also needs
    /// [`ContainerSpec::idmappings`] (`nsmode` alone is ignored by 4.3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userns: Option<Namespace>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idmappings: Option<IdMappings>,
    /// Network namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<Namespace>,
    /// IPC namespace. [`NamespaceMode::None`]: a private one without
    /// Podman's `/dev/shm` (a tmpfs Podman mounts on the host per container;
    /// give the container one in [`ContainerSpec::mounts`] instead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipcns: Option<Namespace>,
    /// Networks joined, by name.
    #[serde(rename = "Networks", skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, NetworkOptions>,
    /// Seconds between SIGTERM and SIGKILL when the container is stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<u32>,
    /// Where conmon writes the output (`--log-driver`, `--log-opt max-size`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_configuration: Option<LogConfiguration>,
}

/// SpecGenerator `image_volume_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageVolumeMode {
    /// An anonymous volume on the host per `VOLUME` (Podman's default).
    Anonymous,
    /// A tmpfs per `VOLUME` (its pages count against the memory limit).
    Tmpfs,
    /// No mount: the path stays part of the image's root file system.
    Ignore,
}

/// The container's log (SpecGenerator `log_configuration`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogConfiguration {
    /// `k8s-file`, `journald`, `none`, `passthrough`.
    pub driver: String,
    /// Bytes after which conmon starts the file anew (it renames a new
    /// file over the old one); 0 or absent: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One mount of the container.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mount {
    pub destination: String,
    /// `tmpfs`, `bind`, …
    #[serde(rename = "type")]
    pub kind: String,
    pub source: String,
    /// Mount options (`rw`, `nosuid`, `size=64m`, …).
    pub options: Vec<String>,
}

impl Mount {
    /// A tmpfs at `destination` with `options`.
    pub fn tmpfs(destination: &str, options: &[&str]) -> Self {
        Self {
            destination: destination.to_owned(),
            kind: "tmpfs".to_owned(),
            source: "tmpfs".to_owned(),
            options: options.iter().map(|o| (*o).to_owned()).collect(),
        }
    }
}

/// cgroup limits of the container (OCI `LinuxResources`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResourceLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryLimits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuLimits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<PidsLimit>,
}

/// Memory limits, bytes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryLimits {
    pub limit: u64,
    /// Memory plus swap: equal to `limit` means no swap.
    pub swap: u64,
}

/// CFS bandwidth: `quota` µs of CPU time per `period` µs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuLimits {
    pub quota: u64,
    pub period: u64,
}

/// Most processes and threads at once.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PidsLimit {
    pub limit: u64,
}

/// A namespace setting (`userns`, `netns`, `ipcns`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Namespace {
    pub nsmode: NamespaceMode,
}

impl Namespace {
    pub fn new(nsmode: NamespaceMode) -> Self {
        Self { nsmode }
    }
}

/// Podman's namespace modes (those ContainerPub may use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceMode {
    /// The host's namespace.
    Host,
    /// A new namespace of the container's own.
    Private,
    /// User namespace: a free range of the `containers` subordinate ids.
    Auto,
    /// Network namespace on a bridge network.
    Bridge,
    /// Network namespace with only `lo`; IPC namespace without `/dev/shm`.
    None,
}

/// How the user namespace's ids are mapped.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IdMappings {
    /// Let Podman pick a free range (`--userns=auto`).
    #[serde(rename = "AutoUserNs")]
    pub auto_userns: bool,
    #[serde(rename = "AutoUserNsOpts", skip_serializing_if = "Option::is_none")]
    pub auto_userns_opts: Option<AutoUserNsOptions>,
}

/// Options of an automatic user namespace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoUserNsOptions {
    /// Ids the namespace maps (0..size inside).
    #[serde(rename = "Size")]
    pub size: u32,
}

/// Options of one network attachment (none used yet: Podman's defaults).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NetworkOptions {}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The exact JSON Podman receives: every key spelt as SpecGenerator does.
    #[test]
    fn serialises_with_podmans_names() {
        let spec = ContainerSpec {
            name: "n".into(),
            image: "i".into(),
            labels: [("l".to_owned(), "v".to_owned())].into(),
            env: [("E".to_owned(), "1".to_owned())].into(),
            user: Some("1:2".into()),
            cap_drop: vec!["ALL".into()],
            no_new_privileges: true,
            read_only_rootfs: true,
            image_volume_mode: Some(ImageVolumeMode::Ignore),
            mounts: vec![Mount::tmpfs("/tmp", &["rw", "size=1m"])],
            resource_limits: Some(ResourceLimits {
                memory: Some(MemoryLimits { limit: 5, swap: 5 }),
                cpu: Some(CpuLimits {
                    quota: 1000,
                    period: 100_000,
                }),
                pids: Some(PidsLimit { limit: 7 }),
            }),
            userns: Some(Namespace::new(NamespaceMode::Auto)),
            idmappings: Some(IdMappings {
                auto_userns: true,
                auto_userns_opts: Some(AutoUserNsOptions { size: 65_536 }),
            }),
            netns: Some(Namespace::new(NamespaceMode::Bridge)),
            ipcns: Some(Namespace::new(NamespaceMode::None)),
            networks: [("net".to_owned(), NetworkOptions::default())].into(),
            stop_timeout: Some(2),
            log_configuration: Some(LogConfiguration {
                driver: "k8s-file".into(),
                size: Some(1024),
            }),
        };
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            json!({
                "name": "n",
                "image": "i",
                "labels": { "l": "v" },
                "env": { "E": "1" },
                "user": "1:2",
                "cap_drop": ["ALL"],
                "no_new_privileges": true,
                "read_only_filesystem": true,
                "image_volume_mode": "ignore",
                "mounts": [{
                    "destination": "/tmp",
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": ["rw", "size=1m"],
                }],
                "resource_limits": {
                    "memory": { "limit": 5, "swap": 5 },
                    "cpu": { "quota": 1000, "period": 100_000 },
                    "pids": { "limit": 7 },
                },
                "userns": { "nsmode": "auto" },
                "idmappings": { "AutoUserNs": true, "AutoUserNsOpts": { "Size": 65_536 } },
                "netns": { "nsmode": "bridge" },
                "ipcns": { "nsmode": "none" },
                "Networks": { "net": {} },
                "stop_timeout": 2,
                "log_configuration": { "driver": "k8s-file", "size": 1024 },
            })
        );
    }

    /// Unset parts are left out, so Podman's defaults apply.
    #[test]
    fn leaves_out_what_is_unset() {
        let spec = ContainerSpec {
            name: "n".into(),
            image: "i".into(),
            ..ContainerSpec::default()
        };
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            json!({ "name": "n", "image": "i" })
        );
    }
}
