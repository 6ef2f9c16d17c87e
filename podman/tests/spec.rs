//! The typed container spec against real Podman: a container created from a
//! spec with every field set reports each setting back on inspect (and the
//! kernel agrees), and a control container created without them reports
//! none of them, so every comparison here can fail. A misspelt key (as
//! podman-api's `no_new_privilages`) is ignored by Podman and fails here.
//!
//! Needs the Podman API socket and busybox-static (scripts/setup-host.sh).

mod support;

use std::collections::BTreeMap;

use containerpub_podman::Podman;
use containerpub_podman::spec::{
    AutoUserNsOptions, ContainerSpec, CpuLimits, IdMappings, ImageVolumeMode, MemoryLimits, Mount,
    Namespace, NamespaceMode, NetworkOptions, PidsLimit, ResourceLimits,
};
use serde_json::{Value, json};
use support::{IMAGE, build_image, podman};

const NETWORK: &str = "cpub";
const USERNS_SIZE: u32 = 65_536;
/// Podman 4.3's default capability set: what `cap_drop: ["ALL"]` removes.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

fn labels(kind: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("cpub.managed".to_owned(), "true".to_owned()),
        (
            "cpub.node".to_owned(),
            format!("test-spec-{}", std::process::id()),
        ),
        ("cpub.test.spec".to_owned(), kind.to_owned()),
    ])
}

/// [`IMAGE`] with a `VOLUME` at [`VOLUME`]: what `image_volume_mode`
/// decides about.
fn volume_image() -> String {
    format!("localhost/cpub-test-spec-volume:{}", std::process::id())
}
const VOLUME: &str = "/data";

/// Builds [`volume_image`] from [`IMAGE`] on the same store.
async fn build_volume_image(podman: &Podman) {
    let dir = tempfile::tempdir().unwrap();
    let tar_path = containerpub_podman::testing::busybox_context(
        dir.path(),
        &format!("FROM {IMAGE}\nVOLUME {VOLUME}\n"),
    );
    let out = podman
        .build_image(&tar_path, "Containerfile", &volume_image())
        .await
        .unwrap();
    assert!(out.ok, "building {}: {}", volume_image(), out.log);
}

/// Every field set, with values that differ from Podman's defaults.
fn isolated() -> ContainerSpec {
    ContainerSpec {
        name: format!("cpub-test-spec-isolated-{}", std::process::id()),
        image: volume_image(),
        labels: labels("isolated"),
        env: BTreeMap::from([
            ("PORT".to_owned(), "8080".to_owned()),
            ("GREETING".to_owned(), "a b=c".to_owned()),
        ]),
        user: Some("65534:65534".into()),
        cap_drop: vec!["ALL".into()],
        no_new_privileges: true,
        read_only_rootfs: true,
        image_volume_mode: Some(ImageVolumeMode::Ignore),
        mounts: vec![
            Mount::tmpfs("/tmp", &["rw", "nosuid", "nodev", "noexec", "size=64m"]),
            Mount::tmpfs("/dev/shm", &["rw", "nosuid", "nodev", "size=8m"]),
        ],
        resource_limits: Some(ResourceLimits {
            memory: Some(MemoryLimits {
                limit: 80 << 20,
                swap: 80 << 20,
            }),
            cpu: Some(CpuLimits {
                quota: 30_000,
                period: 100_000,
            }),
            pids: Some(PidsLimit { limit: 40 }),
        }),
        userns: Some(Namespace::new(NamespaceMode::Auto)),
        idmappings: Some(IdMappings {
            auto_userns: true,
            auto_userns_opts: Some(AutoUserNsOptions { size: USERNS_SIZE }),
        }),
        netns: Some(Namespace::new(NamespaceMode::Bridge)),
        ipcns: Some(Namespace::new(NamespaceMode::None)),
        networks: BTreeMap::from([(NETWORK.to_owned(), NetworkOptions::default())]),
        stop_timeout: Some(2),
        log_configuration: None,
    }
}

/// Podman's defaults, except a network namespace without a network (the
/// default is a bridge, which would match `netns` above) and a plain /tmp
/// (the image has none, and httpd serves it).
fn control() -> ContainerSpec {
    ContainerSpec {
        name: format!("cpub-test-spec-control-{}", std::process::id()),
        image: volume_image(),
        labels: labels("control"),
        mounts: vec![Mount::tmpfs("/tmp", &["rw"])],
        netns: Some(Namespace::new(NamespaceMode::None)),
        ..ContainerSpec::default()
    }
}

/// One setting: what `want` asks for and what Podman (or the kernel) says.
struct Check {
    what: &'static str,
    want: Value,
    got: Value,
}

/// One line per check: what, wanted, reported.
fn listed<'a>(checks: impl Iterator<Item = &'a Check>) -> String {
    checks
        .map(|c| format!("{}: want {}, got {}\n", c.what, c.want, c.got))
        .collect()
}

fn status_field(status: &str, key: &str) -> Value {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| Value::String(v.trim().to_owned()))
        .unwrap_or(Value::Null)
}

/// What Podman and the kernel said of a running container: the inspect
/// document, the process's `/proc/<pid>/status`, and whether the host's
/// mount table holds Podman's `/dev/shm` of the container.
struct Seen {
    inspect: Value,
    status: String,
    host_shm: bool,
}

/// Each setting of `want` next to what was `seen`.
fn checks(want: &ContainerSpec, seen: &Seen) -> Vec<Check> {
    let (got, proc_status) = (&seen.inspect, seen.status.as_str());
    let host = &got["HostConfig"];
    let limits = want.resource_limits.clone().unwrap_or_default();
    let memory = limits.memory.expect("memory limit");
    let cpu = limits.cpu.expect("cpu limit");
    let env: Vec<String> = want.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let env_got: Vec<Value> = env
        .iter()
        .filter(|e| got["Config"]["Env"].as_array().unwrap().contains(&json!(e)))
        .map(|e| json!(e))
        .collect();
    let labels_got: BTreeMap<&String, &Value> = want
        .labels
        .keys()
        .filter_map(|k| got["Config"]["Labels"].get(k).map(|v| (k, v)))
        .collect();
    let tmpfs = &want.mounts[0];
    let shm = want.mounts.iter().find(|m| m.destination == "/dev/shm");
    let size = want
        .idmappings
        .as_ref()
        .and_then(|m| m.auto_userns_opts.as_ref())
        .map(|o| o.size);
    // `0:<host start>:<size>`, one line, host start above 0.
    let uid_map = host["IDMappings"]["UidMap"]
        .as_array()
        .filter(|m| m.len() == 1)
        .and_then(|m| m[0].as_str())
        .and_then(|m| {
            let parts: Vec<u64> = m.split(':').filter_map(|p| p.parse().ok()).collect();
            (parts.len() == 3 && parts[0] == 0 && parts[1] > 0).then(|| json!(parts[2]))
        })
        .unwrap_or(Value::Null);
    let drops_defaults = DEFAULT_CAPS.iter().all(|c| {
        host["CapDrop"]
            .as_array()
            .is_some_and(|d| d.contains(&json!(c)))
    });
    vec![
        Check {
            what: "no_new_privileges (HostConfig.SecurityOpt)",
            want: json!(want.no_new_privileges),
            got: json!(
                host["SecurityOpt"]
                    .as_array()
                    .is_some_and(|o| o.contains(&json!("no-new-privileges")))
            ),
        },
        Check {
            what: "no_new_privileges (kernel NoNewPrivs)",
            want: json!(if want.no_new_privileges { "1" } else { "0" }),
            got: status_field(proc_status, "NoNewPrivs:"),
        },
        Check {
            what: "image_volume_mode ignore (no mount at the image's VOLUME)",
            want: json!(want.image_volume_mode == Some(ImageVolumeMode::Ignore)),
            got: json!(
                !got["Mounts"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m["Destination"] == json!(VOLUME)))
            ),
        },
        Check {
            what: "read_only_filesystem (HostConfig.ReadonlyRootfs)",
            want: json!(want.read_only_rootfs),
            got: host["ReadonlyRootfs"].clone(),
        },
        Check {
            what: "cap_drop ALL (HostConfig.CapDrop holds the default set)",
            want: json!(want.cap_drop == ["ALL"]),
            got: json!(drops_defaults),
        },
        Check {
            what: "cap_drop ALL (kernel CapBnd)",
            want: json!("0000000000000000"),
            got: status_field(proc_status, "CapBnd:"),
        },
        Check {
            what: "resource_limits.memory.limit (HostConfig.Memory)",
            want: json!(memory.limit),
            got: host["Memory"].clone(),
        },
        Check {
            what: "resource_limits.memory.swap (HostConfig.MemorySwap)",
            want: json!(memory.swap),
            got: host["MemorySwap"].clone(),
        },
        Check {
            what: "resource_limits.cpu.quota (HostConfig.CpuQuota)",
            want: json!(cpu.quota),
            got: host["CpuQuota"].clone(),
        },
        Check {
            what: "resource_limits.cpu.period (HostConfig.CpuPeriod)",
            want: json!(cpu.period),
            got: host["CpuPeriod"].clone(),
        },
        Check {
            what: "resource_limits.pids.limit (HostConfig.PidsLimit)",
            want: json!(limits.pids.expect("pids limit").limit),
            got: host["PidsLimit"].clone(),
        },
        Check {
            what: "user (Config.User)",
            want: json!(want.user),
            got: got["Config"]["User"].clone(),
        },
        Check {
            what: "env (Config.Env)",
            want: json!(env),
            got: json!(env_got),
        },
        Check {
            what: "labels (Config.Labels)",
            want: json!(want.labels),
            got: json!(labels_got),
        },
        Check {
            what: "mounts: tmpfs /tmp (HostConfig.Tmpfs)",
            want: json!(true),
            got: json!(
                host["Tmpfs"][&tmpfs.destination]
                    .as_str()
                    .is_some_and(|o| o.starts_with(&tmpfs.options.join(",")))
            ),
        },
        Check {
            what: "userns auto, idmappings size (HostConfig.IDMappings)",
            want: json!(size),
            got: uid_map,
        },
        Check {
            what: "ipcns none: no /dev/shm of Podman's on the host (/proc/self/mountinfo)",
            want: json!(want.ipcns.as_ref().map(|n| n.nsmode)),
            got: json!((!seen.host_shm).then_some(NamespaceMode::None)),
        },
        Check {
            what: "mounts: tmpfs /dev/shm (HostConfig.Tmpfs)",
            want: json!(shm.map(|m| m.options.join(","))),
            // Podman adds its own after ours (`rprivate,tmpcopyup`).
            got: json!(shm.map(|m| m.options.join(",")).filter(|asked| {
                host["Tmpfs"]["/dev/shm"]
                    .as_str()
                    .is_some_and(|o| o == asked || o.starts_with(&format!("{asked},")))
            })),
        },
        Check {
            what: "netns (HostConfig.NetworkMode)",
            want: json!("bridge"),
            got: host["NetworkMode"].clone(),
        },
        Check {
            what: "Networks (NetworkSettings.Networks)",
            want: json!(want.networks.keys().collect::<Vec<_>>()),
            got: json!(
                got["NetworkSettings"]["Networks"]
                    .as_object()
                    .map(|n| n.keys().collect::<Vec<_>>())
            ),
        },
        Check {
            what: "stop_timeout (Config.StopTimeout)",
            want: json!(want.stop_timeout),
            got: got["Config"]["StopTimeout"].clone(),
        },
    ]
}

/// Creates and starts a container from `spec`; returns its id (also when
/// the start failed, so it is removed) and what Podman and the kernel say.
async fn run(podman: &Podman, spec: &ContainerSpec) -> (Option<String>, Result<Seen, String>) {
    let id = match podman.create_container(spec).await {
        Ok(id) => id,
        Err(e) => return (None, Err(format!("create {}: {e}", spec.name))),
    };
    let seen = async {
        podman.start_container(&id).await?;
        let state = podman.inspect_container(&id, NETWORK).await?;
        Ok::<_, containerpub_podman::PodmanError>(state)
    }
    .await;
    let host_shm = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.contains(&format!("{id}/userdata/shm")))
        .unwrap_or(false);
    let seen = match seen {
        Ok(state) => std::fs::read_to_string(format!("/proc/{}/status", state.pid))
            .map(|status| Seen {
                inspect: state.raw,
                status,
                host_shm,
            })
            .map_err(|e| format!("/proc/{}/status of {}: {e}", state.pid, spec.name)),
        Err(e) => Err(format!("start/inspect {}: {e}", spec.name)),
    };
    (Some(id), seen)
}

#[tokio::test]
async fn podman_reports_back_every_setting_of_the_spec() {
    let podman = podman();
    build_image(&podman).await;
    build_volume_image(&podman).await;
    podman.ensure_network(NETWORK).await.unwrap();
    let (want, plain) = (isolated(), control());
    let (isolated_id, isolated_seen) = run(&podman, &want).await;
    let (control_id, control_seen) = run(&podman, &plain).await;
    for id in [isolated_id, control_id].into_iter().flatten() {
        podman.remove_container(&id).await.expect("removal");
    }
    let _ = podman.remove_image(&volume_image()).await;

    let seen = isolated_seen.expect("isolated container");
    assert_eq!(seen.inspect["Name"], json!(want.name));
    assert_eq!(seen.inspect["ImageName"], json!(want.image));
    let applied = checks(&want, &seen);
    let wrong = listed(applied.iter().filter(|c| c.want != c.got));
    assert!(wrong.is_empty(), "Podman did not apply:\n{wrong}");

    // The control: the same comparisons against a container without the
    // settings must each fail, or they prove nothing.
    let seen = control_seen.expect("control container");
    let checks_control = checks(&want, &seen);
    let passed = listed(checks_control.iter().filter(|c| c.want == c.got));
    assert!(
        passed.is_empty(),
        "these checks pass without the setting:\n{passed}"
    );
    assert_eq!(checks_control.len(), applied.len());
}
