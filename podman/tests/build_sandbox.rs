//! The build sandbox on real Podman: no pulls, a pids/memory/CPU limit on
//! every `RUN` step, a user namespace (root in a step is not root on the
//! host, and the image it commits is still owned by its own ids), a wall
//! clock that kills the step (nothing left running) and an output cap.
//!
//! Needs both Podman API sockets (the instances' and the build service's)
//! and busybox-static (scripts/setup-host.sh).
//!
//! Over 600 lines: ten tests of one sandbox, sharing its sockets and base
//! image set-up.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use containerpub_podman::testing::{build_containers_of, build_socket, remove_images_cli};
use containerpub_podman::{BuildLimits, BuildOutput, BuildStop};
use containerpub_podman::{DEFAULT_SOCKET, Podman};

/// The build service (a `vfs` store of its own).
fn podman() -> Podman {
    Podman::new(build_socket())
}

/// The instances' Podman.
fn instances_podman() -> Podman {
    Podman::new(std::env::var("CPUB_PODMAN_SOCKET").unwrap_or_else(|_| DEFAULT_SOCKET.into()))
}

/// The sandbox as the control plane runs it: a user namespace of 65536 ids.
fn sandbox() -> BuildLimits {
    BuildLimits {
        userns_size: 65536,
        ..BuildLimits::default()
    }
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

/// A context with /bin/busybox and the given Containerfile.
fn context(dir: &Path, containerfile: &str) -> std::path::PathBuf {
    containerpub_podman::testing::busybox_context(dir, containerfile)
}

/// Host processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(pid);
            }
        }
    }
    found
}

/// Build cgroups of this test process still present.
fn build_cgroups() -> Vec<String> {
    let prefix = format!("cpub-build-{}-", std::process::id());
    let mut left = Vec::new();
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        if let Ok(entries) = std::fs::read_dir(hierarchy.path()) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    left.push(e.path().display().to_string());
                }
            }
        }
    }
    left
}

const RUN: &str = "FROM scratch\nCOPY busybox /bin/busybox\n";

/// A Containerfile: `head` (its `FROM` and the rest), then one `RUN` step
/// running `script` in busybox's shell.
fn run_step(head: &str, script: &str) -> String {
    format!(
        "{head}RUN [\"/bin/busybox\", \"sh\", \"-c\", {}]\n",
        serde_json::to_string(script).unwrap()
    )
}

/// A tag no other build uses: `localhost/<prefix>-<pid>-<nanos>:1`.
fn fresh_tag(prefix: &str) -> String {
    format!("localhost/{}:1", unique(prefix))
}

/// Builds context `ctx` (its `Containerfile`) as `tag` under `limits`,
/// stopped after `secs` seconds.
async fn build_image(
    podman: &Podman,
    ctx: &Path,
    tag: &str,
    limits: &BuildLimits,
    secs: u64,
) -> BuildOutput {
    podman
        .build_image_with(ctx, "Containerfile", tag, limits, Duration::from_secs(secs))
        .await
        .unwrap()
}

/// No build cgroup of this process is left.
fn assert_no_build_cgroups() {
    assert!(build_cgroups().is_empty(), "{:?}", build_cgroups());
}

/// No build cgroup and no build container of this process is left.
fn assert_no_build_left() {
    assert_no_build_cgroups();
    let left = build_containers_of(std::process::id());
    assert!(left.is_empty(), "build containers left: {left:?}");
}

/// One build at a time: each test checks that no build cgroup of this
/// process is left, which another test's running build would break.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn missing_base_images_are_never_pulled() {
    let _serial = SERIAL.lock().await;
    let podman = podman();
    let dir = tempfile::tempdir().unwrap();
    let base = fresh_tag("cpub-absent");
    let ctx = context(dir.path(), &format!("FROM {base}\n"));
    let tag = fresh_tag("cpub-test-nopull");
    let out = build_image(&podman, &ctx, &tag, &sandbox(), 120).await;
    assert!(!out.ok, "{}", out.log);
    assert!(!out.log.contains("Trying to pull"), "{}", out.log);
    assert!(out.log.contains(&base), "names the image: {}", out.log);
    assert!(!podman.image_exists(&tag).await.unwrap());
}

#[tokio::test]
async fn run_steps_get_pids_memory_and_cpu_limits() {
    let _serial = SERIAL.lock().await;
    let podman = podman();
    let dir = tempfile::tempdir().unwrap();
    // The CPU quota as the step sees it, a 100 MB shell string (memory) and
    // 100 background sleeps (pids, counted with shell builtins only, as
    // nothing can fork once the limit is hit); each probe reports and
    // carries on. Positive controls: a 1 MB string and the first sleeps work.
    let script = "echo caps=$(/bin/busybox grep CapEff /proc/self/status | /bin/busybox cut -f2); \
        echo quota=$(/bin/busybox cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu.max 2>/dev/null); \
        /bin/busybox sh -c 'x=$(/bin/busybox head -c 1000000 /dev/zero | /bin/busybox tr \\\\0 a); echo small=${#x}'; \
        /bin/busybox sh -c 'x=$(/bin/busybox head -c 100000000 /dev/zero | /bin/busybox tr \\\\0 a); echo big=${#x}' || echo big=killed; \
        /bin/busybox sh -c 'for i in $(/bin/busybox seq 100); do /bin/busybox sleep 5 & echo $i; done' > /forks 2>/dev/null; \
        n=0; while read l; do n=$((n+1)); done < /forks; echo forks=$n; exit 0";
    let containerfile = run_step(RUN, script);
    let ctx = context(dir.path(), &containerfile);
    let tag = fresh_tag("cpub-test-limits");
    let limits = BuildLimits {
        memory_bytes: 48 << 20,
        millicpus: 500,
        pids: 32,
        ..sandbox()
    };
    let out = build_image(&podman, &ctx, &tag, &limits, 120).await;
    let _ = podman.remove_image(&tag).await;
    assert!(out.ok, "{}", out.log);
    let value = |key: &str| {
        out.log
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in the log:\n{}", out.log))
            .trim()
            .to_owned()
    };
    let forks: u32 = value("forks").parse().unwrap();
    assert!(
        (1..32).contains(&forks),
        "pids limit: {forks} sleeps ran\n{}",
        out.log
    );
    assert_eq!(value("small"), "1000000", "{}", out.log);
    assert_eq!(value("big"), "killed", "memory limit\n{}", out.log);
    assert!(
        value("quota").starts_with("50000"),
        "cpu quota\n{}",
        out.log
    );
    // Capabilities left: CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETGID, SETUID.
    assert_eq!(value("caps"), "00000000000000db", "{}", out.log);
    assert_no_build_cgroups();
}

#[tokio::test]
async fn the_wall_clock_kills_the_running_step() {
    let _serial = SERIAL.lock().await;
    let podman = podman();
    let dir = tempfile::tempdir().unwrap();
    // A sleep no other test runs, to find it among the host's processes.
    let secs = 400_000 + (std::process::id() % 10_000);
    let ctx = context(
        dir.path(),
        &run_step(RUN, &format!("echo started; /bin/busybox sleep {secs}")),
    );
    let tag = fresh_tag("cpub-test-clock");
    let started = Instant::now();
    let out = build_image(&podman, &ctx, &tag, &sandbox(), 3).await;
    let took = started.elapsed();
    assert!(!out.ok);
    assert_eq!(
        out.stopped,
        Some(BuildStop::Timeout(Duration::from_secs(3)))
    );
    assert!(out.log.contains("started"), "{}", out.log);
    assert!(
        out.log
            .contains("the build was stopped: it ran longer than the build time limit of 3 s"),
        "{}",
        out.log
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let needle = format!("sleep {secs}");
    assert!(
        processes_with(&needle).is_empty(),
        "the step still runs: {:?}",
        processes_with(&needle)
    );
    assert!(!podman.image_exists(&tag).await.unwrap());
    assert_no_build_left();
}

#[tokio::test]
async fn output_past_the_cap_stops_the_build() {
    let _serial = SERIAL.lock().await;
    let podman = podman();
    let dir = tempfile::tempdir().unwrap();
    // 50 MB of output (and then a long sleep) against a 2 MiB cap.
    let ctx = context(
        dir.path(),
        &run_step(
            RUN,
            "/bin/busybox yes 0123456789abcdef | /bin/busybox head -c 50000000; /bin/busybox sleep 300",
        ),
    );
    let tag = fresh_tag("cpub-test-cap");
    let limits = BuildLimits {
        max_output_bytes: 2 << 20,
        log_tail_bytes: 64 << 10,
        ..sandbox()
    };
    let started = Instant::now();
    let out = build_image(&podman, &ctx, &tag, &limits, 120).await;
    assert!(!out.ok);
    assert_eq!(out.stopped, Some(BuildStop::OutputLimit(2 << 20)));
    assert!(out.output_bytes > 2 << 20, "{}", out.output_bytes);
    assert!(
        out.output_bytes < 50_000_000,
        "stopped early: {}",
        out.output_bytes
    );
    assert!(
        out.log.len() < (64 << 10) + 200,
        "tail only: {}",
        out.log.len()
    );
    assert!(
        out.log.ends_with(
            "error: the build was stopped: its output exceeded the limit of 2097152 bytes\n"
        ),
        "{}",
        &out.log[out.log.len().saturating_sub(500)..]
    );
    assert!(out.log.starts_with("[… "), "says what was cut");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(!podman.image_exists(&tag).await.unwrap());
    assert_no_build_left();
}

#[tokio::test]
async fn steps_of_a_dead_control_plane_are_reaped() {
    let _serial = SERIAL.lock().await;
    // A build cgroup of a process that no longer exists, with a process in
    // it, as a control plane killed during a build leaves behind.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let name = format!("cpub-build-{dead_pid}-0-0");
    let v2 = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(Path::new)
        .find(|r| r.join("cgroup.controllers").exists())
        .expect("a cgroup v2 hierarchy")
        .join(&name);
    std::fs::create_dir(&v2).unwrap();
    let mut step = std::process::Command::new("/bin/busybox")
        .args(["sleep", "600"])
        .spawn()
        .unwrap();
    std::fs::write(v2.join("cgroup.procs"), step.id().to_string()).unwrap();
    // A live process's build is left alone.
    let live = v2.with_file_name(format!("cpub-build-{}-0-0", std::process::id()));
    std::fs::create_dir(&live).unwrap();

    let reaped = containerpub_podman::reap_orphaned_builds().await;
    let live_kept = live.is_dir();
    let _ = std::fs::remove_dir(&live);
    assert!(reaped >= 1);
    assert!(live_kept, "the build of a live process was reaped");
    let status = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(status) = step.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the orphaned step was killed");
    assert!(!status.success());
    assert!(!v2.exists(), "the orphaned cgroup was removed");
}

/// What the host sees of a `RUN` step that waits for the host's go.
struct SeenFromHost {
    /// The step's `Uid:` line (real, effective, saved, fs).
    uids: Vec<u64>,
    /// `/proc/<pid>/uid_map`, whitespace collapsed.
    uid_map: String,
    /// Host owners of files the step's root and user 65534 created.
    root_file_uid: u32,
    nobody_file_uid: u32,
    /// The build's output and whether it succeeded.
    log: String,
    ok: bool,
}

/// Builds an image whose `RUN` step (as root inside) creates files, one of
/// them chowned to 65534 (then `/app/ready`), then waits until the host creates `/go` in its
/// root; meanwhile the host looks at the step's process and files.
async fn watch_a_run_step(podman: &Podman, tag: &str, limits: &BuildLimits) -> SeenFromHost {
    let dir = tempfile::tempdir().unwrap();
    let marker = unique("userns-marker");
    let script = format!(
        "echo {marker} >/dev/null; echo uid_map=$(/bin/busybox cat /proc/self/uid_map); \
         echo id=$(/bin/busybox id -u):$(/bin/busybox id -g); /bin/busybox mkdir /app; \
         /bin/busybox touch /app/by-root /app/by-nobody; /bin/busybox chown 65534:65534 /app/by-nobody; /bin/busybox touch /app/ready; \
         i=0; while [ ! -e /go ] && [ $i -lt 1200 ]; do /bin/busybox sleep 0.1; i=$((i+1)); done; \
         /bin/busybox rm -f /go; echo done"
    );
    let containerfile = run_step(RUN, &script);
    let ctx = context(dir.path(), &containerfile);
    let build = build_image(podman, &ctx, tag, limits, 180);
    let watch = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        // `/app/ready` comes after the chown: `by-nobody` exists before it
        // (CI once read its owner between the touch and the chown).
        let pid = loop {
            let found = processes_with(&marker)
                .into_iter()
                .find(|pid| Path::new(&format!("/proc/{pid}/root/app/ready")).exists());
            if let Some(pid) = found {
                break pid;
            }
            assert!(Instant::now() < deadline, "the RUN step never showed up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uids = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .unwrap()
            .split_whitespace()
            .map(|u| u.parse().unwrap())
            .collect();
        let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map"))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let root = format!("/proc/{pid}/root");
        let owner = |file: &str| std::fs::metadata(format!("{root}{file}")).unwrap().uid();
        let seen = (
            uids,
            uid_map,
            owner("/app/by-root"),
            owner("/app/by-nobody"),
        );
        std::fs::write(format!("{root}/go"), b"").unwrap();
        seen
    };
    let (out, (uids, uid_map, root_file_uid, nobody_file_uid)) = tokio::join!(build, watch);
    SeenFromHost {
        uids,
        uid_map,
        root_file_uid,
        nobody_file_uid,
        log: out.log,
        ok: out.ok,
    }
}

/// The first host id of the build service's subordinate range
/// (`cpub-build` in /etc/subuid, written by scripts/setup-host.sh).
fn build_range() -> (u64, u64) {
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap();
    let line = subuid
        .lines()
        .find_map(|l| l.strip_prefix("cpub-build:"))
        .expect("a cpub-build line in /etc/subuid (scripts/setup-host.sh)");
    let (start, count) = line.split_once(':').unwrap();
    (start.parse().unwrap(), count.parse().unwrap())
}

/// Host owner (uid) of `file` inside image `tag` of the instances' store.
fn owner_in_image(tag: &str, file: &str) -> u32 {
    let out = std::process::Command::new("podman")
        .args(["image", "mount", tag])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let uid = std::fs::metadata(Path::new(&root).join(file.trim_start_matches('/')))
        .unwrap()
        .uid();
    let _ = std::process::Command::new("podman")
        .args(["image", "unmount", tag])
        .output();
    uid
}

/// Removes the named images from both stores when dropped (also when the
/// test fails).
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        // Each store under its lock: other tests here load and build
        // images in both.
        for store in [podman(), instances_podman()] {
            remove_images_cli(&store, &self.0);
        }
    }
}

#[tokio::test]
async fn root_in_a_run_step_is_not_root_on_the_host() {
    let _serial = SERIAL.lock().await;
    let podman = podman();
    let instances = instances_podman();
    let (start, count) = build_range();

    let tag = fresh_tag("cpub-test-userns");
    let control_tag = fresh_tag("cpub-test-nouserns");
    let _images = Images(vec![tag.clone(), control_tag.clone()]);
    let seen = watch_a_run_step(&podman, &tag, &sandbox()).await;
    assert!(seen.ok, "{}", seen.log);
    // From the host: the step's process runs as an id of the builds' range,
    // mapped from 0 inside, and the files it made belong to such ids.
    let host_root = seen.uids[0];
    assert!(
        host_root >= start && host_root + 65536 <= start + count,
        "step runs as host uid {host_root}, outside {start}+{count}"
    );
    assert!(seen.uids.iter().all(|u| *u == host_root), "{:?}", seen.uids);
    assert_eq!(seen.uid_map, format!("0 {host_root} 65536"));
    assert_eq!(u64::from(seen.root_file_uid), host_root);
    assert_eq!(u64::from(seen.nobody_file_uid), host_root + 65534);
    // From inside: root, in a non-identity map.
    assert!(seen.log.contains("id=0:0"), "{}", seen.log);
    assert!(
        seen.log.contains(&format!("uid_map= 0 {host_root} 65536")),
        "{}",
        seen.log
    );
    // The image keeps the step's own ids (not the host's), once moved to
    // the instances' store, and leaves the build store.
    podman.move_image(&tag, &instances).await.unwrap();
    assert!(!podman.image_exists(&tag).await.unwrap());
    assert!(instances.image_exists(&tag).await.unwrap());
    let owners = (
        owner_in_image(&tag, "/app/by-root"),
        owner_in_image(&tag, "/app/by-nobody"),
    );
    instances.remove_image(&tag).await.unwrap();
    assert_eq!(owners, (0, 65534));

    // Negative control: the same build without a user namespace is host root.
    let seen = watch_a_run_step(&podman, &control_tag, &BuildLimits::default()).await;
    let _ = podman.remove_image(&control_tag).await;
    assert!(seen.ok, "{}", seen.log);
    assert_eq!(seen.uids, vec![0, 0, 0, 0]);
    assert_eq!(seen.uid_map, "0 0 4294967295");
    assert_eq!((seen.root_file_uid, seen.nobody_file_uid), (0, 65534));
    assert_no_build_cgroups();
}

/// A stage `FROM` an image (here one holding nothing but busybox: no
/// `/proc`, `/dev`, `/sys` or `/run` for runc's mount points) runs its `RUN`
/// steps as the namespace's root, an unprivileged host id, which owns the
/// working container's `/` and so may create entries there (the build
/// service's runtime, scripts/cpub-build-runc). Storage 1.43 alone leaves
/// that `/` owned by host root: runc then fails with `mkdir …/rootfs/proc:
/// permission denied`. The image keeps `0:0` for `/` and the step's files.
#[tokio::test]
async fn a_run_step_in_a_stage_from_an_image_owns_its_root_as_an_unprivileged_host_id() {
    let _serial = SERIAL.lock().await;
    let podman = podman();
    let instances = instances_podman();
    let (start, count) = build_range();
    let base = fresh_tag("cpub-test-bare");
    let tag = fresh_tag("cpub-test-fromimage");
    let control_tag = fresh_tag("cpub-test-fromimage-nouserns");
    let _images = Images(vec![base.clone(), tag.clone(), control_tag.clone()]);
    let dir = tempfile::tempdir().unwrap();
    let out = build_image(&podman, &context(dir.path(), RUN), &base, &sandbox(), 120).await;
    assert!(out.ok, "{}", out.log);

    let script = "b=/bin/busybox; $b mkdir /data && $b touch /data/by-root && \
                  echo uid_map=$($b cat /proc/self/uid_map) && \
                  echo gid_map=$($b cat /proc/self/gid_map) && \
                  echo id=$($b id -u):$($b id -g) && echo root_owner=$($b stat -c %u:%g /)";
    let containerfile = run_step(&format!("FROM {base}\n"), script);
    let ctx = context(dir.path(), &containerfile);
    let out = build_image(&podman, &ctx, &tag, &sandbox(), 120).await;
    assert!(out.ok, "{}", out.log);
    // Inside: root, owning `/`, in a map from 0 to an id of the builds'
    // range (for the group ids too).
    let host_root: u64 = out
        .log
        .lines()
        .find_map(|l| l.strip_prefix("uid_map= 0 "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no uid_map line: {}", out.log));
    assert!(
        host_root >= start && host_root + 65536 <= start + count,
        "step runs as host uid {host_root}, outside {start}+{count}"
    );
    assert!(
        out.log.contains(&format!("uid_map= 0 {host_root} 65536")),
        "{}",
        out.log
    );
    assert!(out.log.contains("gid_map= 0 "), "{}", out.log);
    assert!(!out.log.contains("gid_map= 0 0 "), "{}", out.log);
    assert!(out.log.contains("id=0:0"), "{}", out.log);
    assert!(out.log.contains("root_owner=0:0"), "{}", out.log);
    // The image holds the step's own ids, not the host's.
    podman.move_image(&tag, &instances).await.unwrap();
    let owners = (
        owner_in_image(&tag, "/"),
        owner_in_image(&tag, "/data/by-root"),
    );
    instances.remove_image(&tag).await.unwrap();
    assert_eq!(owners, (0, 0));

    // Negative control: the same step without a user namespace is host root.
    let out = build_image(&podman, &ctx, &control_tag, &BuildLimits::default(), 120).await;
    let _ = podman.remove_image(&control_tag).await;
    let _ = podman.remove_image(&base).await;
    assert!(out.ok, "{}", out.log);
    assert!(out.log.contains("uid_map= 0 0 4294967295"), "{}", out.log);
    assert_no_build_cgroups();
}

#[tokio::test]
async fn moving_a_missing_image_is_an_error_naming_it() {
    let tag = fresh_tag("cpub-test-absent");
    let err = podman()
        .move_image(&tag, &instances_podman())
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(404), "{err}");
    assert!(err.to_string().contains("/get"), "{err}");
    assert!(!instances_podman().image_exists(&tag).await.unwrap());
}

/// Builds of identical content at once (two functions deployed from the
/// same binary), each moved to the instances' store as soon as it is done:
/// removing one build's image from the build store while another commits
/// must not take a layer the other reuses (seen in CI: "committing the
/// finished image: creating image …: layer not known").
#[tokio::test]
async fn identical_builds_at_once_all_succeed_while_moved_images_leave() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // Identical content in every build: the same busybox, the same steps.
    let ctx = context(
        dir.path(),
        "FROM scratch\nCOPY busybox /bin/busybox\nENV PORT=8080\nEXPOSE 8080\nENTRYPOINT [\"/bin/busybox\"]\n",
    );
    let tags: Vec<String> = (0..16)
        .map(|i| format!("localhost/{}:{i}", unique("cpub-test-same")))
        .collect();
    let _images = Images(tags.clone());
    let instances = instances_podman();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..4 {
        let (ctx, instances) = (ctx.clone(), instances.clone());
        let lane_tags: Vec<String> = tags.iter().skip(lane).step_by(4).cloned().collect();
        tasks.spawn(async move {
            let podman = podman();
            let mut failures = Vec::new();
            for tag in lane_tags {
                let out = build_image(&podman, &ctx, &tag, &sandbox(), 120).await;
                if !out.ok {
                    failures.push(format!("{tag}: {}", out.log));
                    continue;
                }
                podman.move_image(&tag, &instances).await.unwrap();
                instances.remove_image(&tag).await.unwrap();
            }
            failures
        });
    }
    let failures: Vec<String> = tasks.join_all().await.into_iter().flatten().collect();
    assert!(
        failures.is_empty(),
        "{} builds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Every moved image left the build store once the last build ended.
    let builds = podman();
    for tag in &tags {
        assert!(
            !instances.image_exists(tag).await.unwrap(),
            "{tag} left in the instances' store"
        );
        assert!(
            !builds.image_exists(tag).await.unwrap(),
            "{tag} left in the build store"
        );
    }
    assert!(
        builds.pending_removals().iter().all(|t| !tags.contains(t)),
        "{:?}",
        builds.pending_removals()
    );
}

/// While a build holds the store, a removal is written down instead of
/// run, and the next build or move to find the store idle does it.
#[tokio::test]
async fn removals_wait_for_the_builds_holding_the_store() {
    let _serial = SERIAL.lock().await;
    let podman = podman();
    let instances = instances_podman();
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(
        dir.path(),
        "FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT [\"/bin/busybox\"]\n",
    );
    let (first, second) = (
        fresh_tag("cpub-test-held"),
        format!("localhost/{}:2", unique("cpub-test-held")),
    );
    let third = format!("localhost/{}:3", unique("cpub-test-held"));
    let _images = Images(vec![first.clone(), second.clone(), third.clone()]);
    let build = |tag: String| {
        let (podman, ctx) = (podman.clone(), ctx.clone());
        async move {
            let out = build_image(&podman, &ctx, &tag, &sandbox(), 120).await;
            assert!(out.ok, "{}", out.log);
        }
    };
    build(first.clone()).await;

    let hold = podman.hold_store().await.unwrap();
    podman.remove_when_idle(&first).await;
    assert!(
        podman.image_exists(&first).await.unwrap(),
        "removed while held"
    );
    assert!(podman.pending_removals().contains(&first));
    // The waiting kind of removal waits for the hold too: it is still
    // waiting when the hold goes, then it is done.
    let waiting = tokio::spawn({
        let podman = podman.clone();
        let first = first.clone();
        async move { podman.remove_image(&first).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "removal did not wait for the hold");
    assert!(podman.image_exists(&first).await.unwrap());
    drop(hold);
    waiting.await.unwrap().unwrap();
    assert!(!podman.image_exists(&first).await.unwrap());

    // So does the tests' removal with the Podman CLI (`remove_images_cli`,
    // what the e2e tests' clean-up runs): while the store is held it waits.
    build(third.clone()).await;
    let hold = podman.hold_store().await.unwrap();
    let cli = std::thread::spawn({
        let (podman, third) = (podman.clone(), third.clone());
        move || remove_images_cli(&podman, &[third])
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !cli.is_finished(),
        "the CLI removal did not wait for the hold"
    );
    assert!(podman.image_exists(&third).await.unwrap());
    drop(hold);
    tokio::task::spawn_blocking(move || cli.join().unwrap())
        .await
        .unwrap();
    assert!(!podman.image_exists(&third).await.unwrap());

    // A written-down removal is done by the next build to end.
    build(first.clone()).await;
    let hold = podman.hold_store().await.unwrap();
    podman.remove_when_idle(&first).await;
    assert!(podman.pending_removals().contains(&first));
    drop(hold);
    build(second.clone()).await;
    assert!(
        !podman.image_exists(&first).await.unwrap(),
        "the next build did not remove it"
    );
    assert!(!podman.pending_removals().contains(&first));
    podman.move_image(&second, &instances).await.unwrap();
    assert!(!podman.image_exists(&second).await.unwrap());
    instances.remove_image(&second).await.unwrap();
}
