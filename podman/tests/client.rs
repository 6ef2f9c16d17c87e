//! The client on real Podman, where the libpod API and the Docker-compatible
//! one differ (Podman 4.3 serves the latter to absolute-form requests): a
//! death is the event `died`, a container's log tail is demultiplexed, and
//! a removal takes the anonymous volumes (`volumes`) and kills at once
//! (`timeout=0`) instead of waiting out the stop timeout.
//!
//! Needs the Podman API socket and busybox-static (scripts/setup-host.sh).

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use containerpub_podman::Podman;
use containerpub_podman::spec::{ContainerSpec, Mount, Namespace, NamespaceMode};
use support::{IMAGE, build_image, podman};

/// A node label of this test process.
fn node(test: &str) -> String {
    format!("test-client-{test}-{}", std::process::id())
}

/// `podman <args>` on the CLI; its trimmed stdout.
fn cli(args: &[&str]) -> String {
    let out = Command::new("podman").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs `script` in a new container labelled with `node`; its id.
fn run_script(node: &str, script: &str) -> String {
    let label = format!("cpub.node={node}");
    cli(&[
        "run",
        "-d",
        "--network",
        "none",
        "--label",
        &label,
        IMAGE,
        "/bin/busybox",
        "sh",
        "-c",
        script,
    ])
}

#[tokio::test]
async fn a_death_is_the_libpod_event_died() {
    let podman = podman();
    build_image(&podman).await;
    let node = node("events");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let follower = podman.clone();
    let filter_node = node.clone();
    let follow = tokio::spawn(async move {
        follower
            .container_events(&[("cpub.node", filter_node.as_str())], &tx)
            .await
    });
    // The stream reports only what happens after it is open: run short
    // containers until one's death arrives (the first, unless the stream
    // opens late).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ids = Vec::new();
    let died = 'found: loop {
        assert!(Instant::now() < deadline, "no death reported within 30 s");
        let id = run_script(&node, "exit 3");
        ids.push(id.clone());
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Some(event)) = tokio::time::timeout_at(until, rx.recv()).await {
            if event.id == id && event.action.starts_with("die") {
                break 'found event;
            }
        }
    };
    follow.abort();
    for id in &ids {
        podman.remove_container(id).await.unwrap();
    }
    assert_eq!(died.action, "died", "libpod's name (Docker's is `die`)");
}

/// Polls until container `id` has exited; its inspect state.
async fn exited(podman: &Podman, id: &str) -> containerpub_podman::ContainerState {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = podman.inspect_container(id, "none").await.unwrap();
        if state.status == "exited" || Instant::now() > deadline {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_log_tail_of_an_exited_container() {
    let podman = podman();
    build_image(&podman).await;
    // Podman does not keep stdout and stderr lines in the order written:
    // the tail is checked on stdout alone, the demultiplexing on both.
    let lines = run_script(
        &node("logs"),
        "i=0; while [ $i -lt 30 ]; do echo line$i; i=$((i+1)); done; exit 3",
    );
    let both = run_script(&node("logs"), "echo out1; echo err1 >&2; echo out2");
    let state = exited(&podman, &lines).await;
    exited(&podman, &both).await;
    let tail = podman.container_logs_tail(&lines, 5, 2048).await;
    let cut = podman.container_logs_tail(&lines, 100, 20).await;
    let all = podman.container_logs_tail(&both, 100, 2048).await;
    podman.remove_container(&lines).await.unwrap();
    podman.remove_container(&both).await.unwrap();
    assert_eq!(state.status, "exited");
    assert_eq!(state.raw["State"]["ExitCode"], 3);
    assert_eq!(tail.unwrap(), "line25\nline26\nline27\nline28\nline29\n");
    // 20 bytes end inside `line27`: the kept text starts on the next line.
    assert_eq!(cut.unwrap(), "[…]\nline28\nline29\n");
    let all = all.unwrap();
    let mut got: Vec<&str> = all.lines().collect();
    got.sort_unstable();
    assert_eq!(got, ["err1", "out1", "out2"], "{all:?}");
}

#[tokio::test]
async fn removal_takes_anonymous_volumes_and_does_not_wait_for_the_stop_timeout() {
    let podman = podman();
    build_image(&podman).await;
    let node = node("remove");
    // A running container with an anonymous volume, whose process (pid 1,
    // no handler) ignores SIGTERM, and a stop timeout of 10 s.
    let label = format!("cpub.node={node}");
    let id = cli(&[
        "run",
        "-d",
        "--network",
        "none",
        "--label",
        &label,
        "--stop-timeout",
        "10",
        "-v",
        "/data",
        "--tmpfs",
        "/tmp",
        IMAGE,
    ]);
    let volume = cli(&[
        "inspect",
        &id,
        "--format",
        "{{range .Mounts}}{{.Name}}{{end}}",
    ]);
    assert!(!volume.is_empty(), "the container has an anonymous volume");
    let t0 = Instant::now();
    let removed = podman.remove_container(&id).await;
    let took = t0.elapsed();
    let volume_left = Command::new("podman")
        .args(["volume", "exists", &volume])
        .status()
        .unwrap()
        .success();
    if volume_left {
        let _ = Command::new("podman")
            .args(["volume", "rm", "-f", &volume])
            .output();
    }
    removed.unwrap();
    assert!(!volume_left, "anonymous volume {volume} left behind");
    assert!(
        took < Duration::from_secs(5),
        "removal waited {took:?}: the stop timeout was not skipped"
    );
    // Removing it again is fine.
    podman.remove_container(&id).await.unwrap();
}

/// What a spec with a tmpfs and no network looks like to the client's own
/// calls: create, start, pause, unpause, list by label, remove.
#[tokio::test]
async fn container_life_cycle_calls() {
    let podman = podman();
    build_image(&podman).await;
    let node = node("cycle");
    let spec = ContainerSpec {
        name: format!("cpub-{node}"),
        image: IMAGE.into(),
        labels: BTreeMap::from([("cpub.node".to_owned(), node.clone())]),
        mounts: vec![Mount::tmpfs("/tmp", &["rw"])],
        netns: Some(Namespace::new(NamespaceMode::None)),
        ..ContainerSpec::default()
    };
    let id = podman.create_container(&spec).await.unwrap();
    let result = async {
        podman.start_container(&id).await?;
        podman.start_container(&id).await?; // 304: already running
        podman.pause_container(&id).await?;
        let paused = podman.inspect_container(&id, "none").await?.status;
        podman.unpause_container(&id).await?;
        let state = podman.inspect_container(&id, "none").await?;
        let listed = podman.list_containers(&[("cpub.node", &node)]).await?;
        Ok::<_, containerpub_podman::PodmanError>((paused, state, listed))
    }
    .await;
    podman.remove_container(&id).await.unwrap();
    let (paused, state, listed) = result.unwrap();
    assert_eq!(paused, "paused");
    assert_eq!(state.status, "running");
    assert_eq!(state.name, spec.name, "libpod's name, without Docker's `/`");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].state, "running");
    let gone = podman
        .list_containers(&[("cpub.node", &node)])
        .await
        .unwrap();
    assert!(gone.is_empty(), "removed: {gone:?}");
}
