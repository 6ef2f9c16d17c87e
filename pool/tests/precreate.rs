//! Containers created ahead of need, on real Podman: one per routed
//! deployment, never leaked (route removed, deploy switch, shutdown, a
//! pool that died), never started for another deployment or another spec,
//! and started with exactly the isolation settings of a fresh start.
//!
//! Over 600 lines: five tests sharing the readings of the containers
//! created ahead and of a fresh start's isolation settings.

use std::collections::BTreeMap;
use std::time::Duration;

use containerpub_pool::podman::testing::RemoveLabelled;
use containerpub_pool::podman::{DEFAULT_SOCKET, Podman};
use containerpub_pool::{
    ContainerRuntime, NETWORK, PodmanRuntime, Pool, PoolConfig, StartKind, labels,
};
use containerpub_wire::Manifest;
use containerpub_wire::api::Route;

const IMAGE: &str = "localhost/cpub-test-precreate:1";

fn podman() -> Podman {
    Podman::new(std::env::var("CPUB_PODMAN_SOCKET").unwrap_or_else(|_| DEFAULT_SOCKET.into()))
}

/// Makes sure [`IMAGE`] exists (built once, then reused: see
/// `containerpub_podman::testing`).
async fn build_image(podman: &Podman) {
    containerpub_podman::testing::ensure_busybox_image(podman, IMAGE).await;
}

fn route(name: &str, deployment_id: i64, env: &str) -> Route {
    let text = format!(
        "name = \"{name}\"\nruntime = \"container\"\n[env]\nMARK = \"{env}\"\n[resources]\nmemory_mb = 96\ncpu = 0.25\npids = 48\n"
    );
    Route {
        function: name.into(),
        deployment_id,
        version: 1,
        image: IMAGE.into(),
        config: Manifest::parse(&text).unwrap(),
        keys: Vec::new(),
        secrets: Vec::new(),
        signing_keys: Vec::new(),
    }
}

fn node(test: &str) -> String {
    format!("test-pre-{test}-{}", std::process::id())
}

/// A container of `node`: (id, Podman state, deployment label).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    id: String,
    state: String,
    deployment: String,
}

async fn containers(podman: &Podman, node: &str) -> Vec<Row> {
    podman
        .list_containers(&[(labels::MANAGED, "true"), (labels::NODE, node)])
        .await
        .unwrap()
        .into_iter()
        .map(|c| Row {
            deployment: c
                .labels
                .unwrap_or_default()
                .get(labels::DEPLOYMENT)
                .cloned()
                .unwrap_or_default(),
            id: c.id,
            state: c.state,
        })
        .collect()
}

/// Calls `look` until `check` holds for what it returns, or fails after
/// 30 s naming `what` and showing what it saw last.
async fn poll<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    what: &str,
    mut look: impl FnMut() -> F,
    check: impl Fn(&T) -> bool,
) -> T {
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = look().await;
        if check(&seen) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{what}: not within 30 s; saw {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `podman ps` of `node` until `check` holds (see [`poll`]).
async fn wait_for(
    podman: &Podman,
    node: &str,
    what: &str,
    check: impl Fn(&[Row]) -> bool,
) -> Vec<Row> {
    poll(
        what,
        || containers(podman, node),
        |rows: &Vec<Row>| check(rows),
    )
    .await
}

/// Containers made ahead (created, or initialized too) of `deployment`.
fn created_of(rows: &[Row], deployment: &str) -> Vec<String> {
    rows.iter()
        .filter(|r| {
            matches!(r.state.as_str(), "created" | "initialized") && r.deployment == deployment
        })
        .map(|r| r.id.clone())
        .collect()
}

#[tokio::test]
async fn precreated_containers_never_leak() {
    let podman = podman();
    build_image(&podman).await;
    let node = node("leak");
    let _cleanup = RemoveLabelled::new(labels::NODE, &node);
    let config = PoolConfig {
        node: node.clone(),
        start_timeout: Duration::from_secs(10),
    };
    let v1 = route("pre-leak", 1, "a");
    let pool = Pool::podman(podman.clone(), config.clone(), std::slice::from_ref(&v1))
        .await
        .unwrap();
    let rows = wait_for(&podman, &node, "one created ahead", |r| {
        created_of(r, "1").len() == 1
    })
    .await;
    let ahead = created_of(&rows, "1")[0].clone();

    // The first call takes it (no create on its path) and a successor is
    // created in the background.
    let lease = pool.lease(&v1).await.unwrap();
    assert_eq!(lease.start_kind(), StartKind::Cold);
    assert_eq!(
        lease.instance_id(),
        ahead,
        "the call started the container ahead"
    );
    drop(lease);
    let rows = wait_for(&podman, &node, "a successor created ahead", |r| {
        created_of(r, "1").len() == 1 && r.len() == 2
    })
    .await;
    let successor = created_of(&rows, "1")[0].clone();
    assert_ne!(successor, ahead);

    // Deploy switch: the old deployment's container ahead goes, one for the
    // new deployment comes; the old one is never started.
    let v2 = route("pre-leak", 2, "a");
    pool.sync(std::slice::from_ref(&v2));
    let rows = wait_for(&podman, &node, "switched to deployment 2", |r| {
        created_of(r, "1").is_empty() && created_of(r, "2").len() == 1
    })
    .await;
    assert!(
        rows.iter().all(|r| r.id != successor),
        "old container ahead removed, not started: {rows:?}"
    );

    // Delete: no route, no container of the function at all.
    pool.sync(&[]);
    wait_for(&podman, &node, "nothing left after delete", |r| {
        r.is_empty()
    })
    .await;

    // Shutdown removes the container ahead (and the instance keeps running
    // for the next pool to adopt, as before).
    pool.sync(std::slice::from_ref(&v2));
    let lease = pool.lease(&v2).await.unwrap();
    let instance = lease.instance_id().to_owned();
    drop(lease);
    wait_for(&podman, &node, "created ahead again", |r| {
        created_of(r, "2").len() == 1
    })
    .await;
    pool.shutdown().await;
    let rows = containers(&podman, &node).await;
    assert_eq!(
        rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [instance.as_str()],
        "only the running instance is left after shutdown: {rows:?}"
    );

    // A pool that died without shutdown leaves its container ahead: the
    // next pool's adoption removes it and creates its own.
    let pool = Pool::podman(podman.clone(), config.clone(), std::slice::from_ref(&v2))
        .await
        .unwrap();
    let rows = wait_for(&podman, &node, "created ahead by the new pool", |r| {
        created_of(r, "2").len() == 1
    })
    .await;
    let left_behind = created_of(&rows, "2")[0].clone();
    drop(pool); // no shutdown: as if the process was killed
    let pool = Pool::podman(podman.clone(), config, std::slice::from_ref(&v2))
        .await
        .unwrap();
    let rows = wait_for(&podman, &node, "the dead pool's container removed", |r| {
        !r.iter().any(|row| row.id == left_behind) && created_of(r, "2").len() == 1
    })
    .await;
    assert!(
        rows.iter()
            .any(|r| r.id == instance && r.state == "running"),
        "instance adopted: {rows:?}"
    );
    pool.remove_all().await;
    pool.shutdown().await;
    let rows = containers(&podman, &node).await;
    assert!(rows.is_empty(), "no orphan containers: {rows:?}");
}

/// The fields of an inspect that carry the isolation settings.
fn isolation(raw: &serde_json::Value) -> BTreeMap<&'static str, serde_json::Value> {
    let host = &raw["HostConfig"];
    let config = &raw["Config"];
    let mut env: Vec<String> = config["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        // Podman adds HOSTNAME (the container's own id) and `container`.
        .filter(|e| !e.starts_with("HOSTNAME="))
        .map(str::to_owned)
        .collect();
    env.sort();
    let mut labels = config["Labels"].clone();
    if let Some(map) = labels.as_object_mut() {
        map.remove("io.containers.autoupdate");
    }
    BTreeMap::from([
        ("ReadonlyRootfs", host["ReadonlyRootfs"].clone()),
        ("Memory", host["Memory"].clone()),
        ("MemorySwap", host["MemorySwap"].clone()),
        ("CpuQuota", host["CpuQuota"].clone()),
        ("CpuPeriod", host["CpuPeriod"].clone()),
        ("PidsLimit", host["PidsLimit"].clone()),
        ("CapDrop", host["CapDrop"].clone()),
        ("CapAdd", host["CapAdd"].clone()),
        ("SecurityOpt", host["SecurityOpt"].clone()),
        ("UsernsMode", host["UsernsMode"].clone()),
        ("NetworkMode", host["NetworkMode"].clone()),
        ("Tmpfs", host["Tmpfs"].clone()),
        ("User", config["User"].clone()),
        ("Image", config["Image"].clone()),
        ("Env", serde_json::json!(env)),
        ("Labels", labels),
        ("EffectiveCaps", raw["EffectiveCaps"].clone()),
        ("BoundingCaps", raw["BoundingCaps"].clone()),
    ])
}

#[tokio::test]
async fn a_container_ahead_serves_only_its_own_spec_with_the_same_isolation() {
    let podman = podman();
    build_image(&podman).await;
    let node = node("spec");
    let _cleanup = RemoveLabelled::new(labels::NODE, &node);
    let runtime = PodmanRuntime::new(podman.clone(), NETWORK).await.unwrap();
    let v1 = route("pre-spec", 1, "a");
    runtime.prepare(std::slice::from_ref(&v1), &node);
    // Podman lists a container before its create call has answered: wait
    // for the runtime's own view.
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while runtime.precreated().is_empty() {
        assert!(tokio::time::Instant::now() < until, "nothing created ahead");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ahead = runtime.precreated();
    assert_eq!(ahead.len(), 1);

    // Another deployment, or the same deployment with another spec (here
    // its environment), never gets it.
    for other in [route("pre-spec", 2, "a"), route("pre-spec", 1, "b")] {
        let started = runtime.start(&other, &node).await.unwrap();
        assert_ne!(started.id, ahead[0], "{other:?} took another's container");
        let state = podman
            .inspect_container(&started.id, NETWORK)
            .await
            .unwrap();
        assert_eq!(
            state.labels.get(labels::DEPLOYMENT),
            Some(&other.deployment_id.to_string())
        );
        runtime.remove(&started.id).await.unwrap();
    }
    assert_eq!(runtime.precreated(), ahead, "still there, still unstarted");
    assert_eq!(
        podman
            .inspect_container(&ahead[0], NETWORK)
            .await
            .unwrap()
            .status,
        "initialized"
    );

    // Its own route takes it, and it runs with exactly what a fresh start
    // of the same route gets.
    let from_ahead = runtime.start(&v1, &node).await.unwrap();
    assert_eq!(from_ahead.id, ahead[0]);
    let fresh_runtime = PodmanRuntime::new(podman.clone(), NETWORK)
        .await
        .unwrap()
        .without_precreation();
    let fresh = fresh_runtime.start(&v1, &node).await.unwrap();
    assert_ne!(fresh.id, from_ahead.id);
    let a = podman
        .inspect_container(&from_ahead.id, NETWORK)
        .await
        .unwrap();
    let b = podman.inspect_container(&fresh.id, NETWORK).await.unwrap();
    assert_eq!(a.status, "running");
    assert_eq!(b.status, "running");
    let (ia, ib) = (isolation(&a.raw), isolation(&b.raw));
    assert_eq!(ia, ib, "same isolation settings");
    assert_eq!(ia["ReadonlyRootfs"], true);
    // Podman 4.3 reports an `auto` user namespace as "private".
    assert_eq!(ia["UsernsMode"], "private");
    assert!(
        ia["SecurityOpt"].to_string().contains("no-new-privileges"),
        "{:?}",
        ia["SecurityOpt"]
    );
    // The user namespace is really made at start (not shared with the
    // fresh one): each has its own host range.
    let maps: Vec<String> = [&a, &b]
        .iter()
        .map(|s| {
            let pid = s.raw["State"]["Pid"].as_i64().unwrap();
            std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap()
        })
        .collect();
    assert!(maps[0].split_whitespace().nth(1) != Some("0"), "{maps:?}");
    assert_ne!(maps[0], maps[1], "distinct user namespaces");

    // Cleanup, and the runtime's shutdown removes its successor.
    fresh_runtime.remove(&fresh.id).await.unwrap();
    runtime.remove(&from_ahead.id).await.unwrap();
    wait_for(&podman, &node, "a successor created ahead", |r| {
        created_of(r, "1").len() == 1
    })
    .await;
    runtime.shutdown().await;
    let rows = containers(&podman, &node).await;
    assert!(rows.is_empty(), "no orphan containers: {rows:?}");
}

/// Function → (id, Podman state) of each container `runtime` holds ahead.
async fn ahead_by_function(
    podman: &Podman,
    runtime: &PodmanRuntime,
) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for id in runtime.precreated() {
        let state = podman.inspect_container(&id, NETWORK).await.unwrap();
        let function = state.labels.get(labels::FUNCTION).cloned().unwrap();
        out.insert(function, (id, state.status));
    }
    out
}

/// Polls until `check` holds for the containers ahead (30 s at most).
async fn wait_ahead(
    podman: &Podman,
    runtime: &PodmanRuntime,
    what: &str,
    check: impl Fn(&BTreeMap<String, (String, String)>) -> bool,
) -> BTreeMap<String, (String, String)> {
    poll(what, || ahead_by_function(podman, runtime), check).await
}

/// With room for one initialized container, it goes to the function
/// cold-started last: the other function's container ahead is then only
/// created (replaced, never started), and gets initialized again when its
/// own function starts later. Each initialized one holds an address, which
/// the runtime keeps out of the instance budget.
#[tokio::test]
async fn initialized_containers_go_to_the_functions_started_last() {
    let podman = podman();
    build_image(&podman).await;
    let node = node("cap");
    let _cleanup = RemoveLabelled::new(labels::NODE, &node);
    let plain = PodmanRuntime::new(podman.clone(), NETWORK).await.unwrap();
    let runtime = PodmanRuntime::new(podman.clone(), NETWORK)
        .await
        .unwrap()
        .with_initialized_ahead(1);
    assert_eq!(
        runtime.address_capacity().map(|a| a + 1),
        plain.without_precreation().address_capacity(),
        "an address kept for the initialized container"
    );
    let routes = [route("pre-cap-a", 1, "a"), route("pre-cap-b", 1, "a")];
    runtime.prepare(&routes, &node);
    let both = |m: &BTreeMap<String, (String, String)>, initialized: &str| {
        m.len() == 2
            && m.iter().all(|(f, (_, state))| {
                state
                    == if f == initialized {
                        "initialized"
                    } else {
                        "created"
                    }
            })
    };
    let first = wait_ahead(&podman, &runtime, "one initialized, one created", |m| {
        both(m, "pre-cap-a") || both(m, "pre-cap-b")
    })
    .await;
    let (initialized, created) = if first["pre-cap-a"].1 == "initialized" {
        (&routes[0], &routes[1])
    } else {
        (&routes[1], &routes[0])
    };
    // Touched once initialized: the host knows its hardware address before
    // any start (no ARP request flooded to the bridge's ports at the start).
    let ip = podman
        .inspect_container(&first[&initialized.function].0, NETWORK)
        .await
        .unwrap()
        .ip
        .expect("an initialized container has its address");
    // (Within 5 s: the periodic touch, every 20 s, must not be what did it.)
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let out = std::process::Command::new("ip")
            .args(["neigh", "show", &ip.to_string()])
            .output()
            .unwrap();
        let neigh = String::from_utf8_lossy(&out.stdout).into_owned();
        if neigh.contains("lladdr") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the host did not resolve {ip} within 5 s: {neigh:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The function whose container was only created starts: its successor
    // is initialized, and the other's initialized container gives way.
    let one = runtime.start(created, &node).await.unwrap();
    assert_eq!(
        one.id, first[&created.function].0,
        "took its container ahead"
    );
    let second = wait_ahead(
        &podman,
        &runtime,
        "initialized moved to the started function",
        |m| both(m, &created.function),
    )
    .await;
    assert_ne!(
        second[&initialized.function].0, first[&initialized.function].0,
        "replaced, not reused"
    );
    let gone = podman
        .inspect_container(&first[&initialized.function].0, NETWORK)
        .await;
    assert!(gone.is_err(), "the replaced one is removed: {gone:?}");

    // And back, when the other function starts.
    let two = runtime.start(initialized, &node).await.unwrap();
    wait_ahead(&podman, &runtime, "initialized moved back", |m| {
        both(m, &initialized.function)
    })
    .await;

    for id in [&one.id, &two.id] {
        runtime.remove(id).await.unwrap();
    }
    runtime.shutdown().await;
    let rows = containers(&podman, &node).await;
    assert!(rows.is_empty(), "no orphan containers: {rows:?}");
}

/// A start's successor, like every creation ahead, waits until no start
/// has run for 100 ms: a burst of cold starts gets Podman first (before,
/// the successor's `create` and `init` ran beside the start that took its
/// container, and beside the next ones).
#[tokio::test]
async fn creations_ahead_wait_for_the_starts_to_end() {
    let podman = podman();
    build_image(&podman).await;
    let node = node("yield");
    let _cleanup = RemoveLabelled::new(labels::NODE, &node);
    let runtime = PodmanRuntime::new(podman.clone(), NETWORK).await.unwrap();
    let route = route("pre-yield", 1, "a");
    runtime.prepare(std::slice::from_ref(&route), &node);
    let first = wait_ahead(&podman, &runtime, "a container ahead", |m| m.len() == 1).await;
    let started = runtime.start(&route, &node).await.unwrap();
    let returned = chrono::Utc::now();
    assert_eq!(started.id, first[&route.function].0, "took its container");
    let next = wait_ahead(&podman, &runtime, "its successor", |m| {
        m.get(&route.function)
            .is_some_and(|(id, _)| *id != started.id)
    })
    .await;
    let successor = podman
        .inspect_container(&next[&route.function].0, NETWORK)
        .await
        .unwrap();
    let created: chrono::DateTime<chrono::Utc> = successor.raw["Created"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no creation time: {}", successor.raw["Created"]));
    assert!(
        created > returned + chrono::TimeDelta::milliseconds(50),
        "the successor was created at {created}, the start returned at {returned}"
    );
    runtime.remove(&started.id).await.unwrap();
    runtime.shutdown().await;
    let rows = containers(&podman, &node).await;
    assert!(rows.is_empty(), "no orphan containers: {rows:?}");
}

/// Deletes the host end of container `id`'s veth (its `eth0` goes with
/// it): its address then answers nothing, not even ARP.
fn cut_network(podman_raw: &serde_json::Value) {
    let netns = podman_raw["NetworkSettings"]["SandboxKey"]
        .as_str()
        .expect("a network namespace");
    let out = std::process::Command::new("nsenter")
        .args([
            &format!("--net={netns}"),
            "ip",
            "-o",
            "link",
            "show",
            "eth0",
        ])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    // `2: eth0@if1234: <…`
    let peer: u32 = line
        .split_once("@if")
        .and_then(|(_, rest)| rest.split(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no veth peer in {line:?}"));
    let links = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    let name = links
        .lines()
        .find_map(|l| {
            let (index, rest) = l.split_once(": ")?;
            (index.trim().parse() == Ok(peer))
                .then(|| rest.split(['@', ':']).next().unwrap().to_owned())
        })
        .unwrap_or_else(|| panic!("no host link {peer}"));
    let del = std::process::Command::new("ip")
        .args(["link", "del", &name])
        .output()
        .unwrap();
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
}

/// A container initialized ahead whose network no longer answers (seen at
/// 1,000 live instances; made here by deleting its veth) is not handed out:
/// the start removes it and starts a fresh container, which answers.
#[tokio::test]
async fn an_initialized_container_whose_network_is_gone_is_replaced() {
    let podman = podman();
    build_image(&podman).await;
    let node = node("cut");
    let _cleanup = RemoveLabelled::new(labels::NODE, &node);
    let runtime = PodmanRuntime::new(podman.clone(), NETWORK).await.unwrap();
    let v1 = route("pre-cut", 1, "a");
    runtime.prepare(std::slice::from_ref(&v1), &node);
    let ahead = wait_ahead(&podman, &runtime, "one initialized", |m| {
        m.get("pre-cut").is_some_and(|(_, s)| s == "initialized")
    })
    .await["pre-cut"]
        .0
        .clone();
    let state = podman.inspect_container(&ahead, NETWORK).await.unwrap();
    cut_network(&state.raw);

    let started = runtime.start(&v1, &node).await.unwrap();
    assert_ne!(started.id, ahead, "the cut container was handed out");
    assert!(
        podman.inspect_container(&ahead, NETWORK).await.is_err(),
        "the cut container is removed"
    );
    containerpub_pool::health::wait_ready(started.addr, None, Duration::from_secs(10))
        .await
        .unwrap();
    runtime.remove(&started.id).await.unwrap();
    runtime.shutdown().await;
    let rows = containers(&podman, &node).await;
    assert!(rows.is_empty(), "no orphan containers: {rows:?}");
}
