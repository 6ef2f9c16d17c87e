//! Node capacity on real Podman (issue 15): the function network sized
//! for density, and (with the whole stack) the node budget, eviction of
//! least recently used idle instances, the 503 path and answers without
//! internal details. Each test uses its own network or node name and
//! removes what it created.

use std::time::Duration;

use containerpub_pool::podman::Podman;
use containerpub_pool::{ContainerRuntime, DEFAULT_SOCKET, PodmanRuntime};

/// A network the pool creates is created on the configured subnet and its
/// addresses are known; an existing network keeps its own subnet.
#[tokio::test]
async fn the_function_network_is_created_on_the_configured_subnet() {
    let podman = Podman::new(DEFAULT_SOCKET);
    let name = format!("cpub-cap-{}", std::process::id());
    let _ = podman.remove_network(&name).await;
    let runtime = PodmanRuntime::on_network(podman.clone(), &name, Some("10.93.0.0/20"))
        .await
        .unwrap();
    // The addresses the containers initialized ahead may hold are not the
    // instances'.
    let ahead = containerpub_pool::node::DEFAULT_INITIALIZED_AHEAD;
    assert_eq!(runtime.address_capacity(), Some(4_093 - ahead));
    assert_eq!(
        runtime.with_initialized_ahead(0).address_capacity(),
        Some(4_093)
    );
    assert_eq!(
        podman.network_subnets(&name).await.unwrap(),
        ["10.93.0.0/20"]
    );
    // Already there: another subnet asked for changes nothing.
    let again = PodmanRuntime::on_network(podman.clone(), &name, Some("10.94.0.0/16"))
        .await
        .unwrap();
    assert_eq!(again.address_capacity(), Some(4_093 - ahead));
    drop(again);
    podman.remove_network(&name).await.unwrap();
    let gone = tokio::time::timeout(Duration::from_secs(10), podman.network_subnets(&name)).await;
    assert!(matches!(gone, Ok(Err(_))), "the test network is removed");
}

/// A call that holds its instance: its body but the last byte, never sent
/// while it is kept (the function reads the whole body first).
fn hold_call(proxy: std::net::SocketAddr, function: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut tcp = std::net::TcpStream::connect(proxy).unwrap();
    tcp.write_all(&containerpub_e2e::held_post(
        &format!("/fn/{function}/"),
        "x",
    ))
    .unwrap();
    tcp
}

/// Phrases of the engine and the pool that must never reach a caller.
const INTERNAL: &[&str] = &[
    "podman",
    "IPAM",
    "runc",
    "conmon",
    "MiB",
    "budget",
    "10.",
    "container",
];

#[tokio::test]
async fn past_the_node_budget_idle_instances_are_evicted_and_busy_ones_give_a_short_503() {
    let names = ["cap-a", "cap-b", "cap-c"];
    let _cleanup = containerpub_e2e::RemoveImages::of(&names);
    let stack = containerpub_e2e::Stack::start_with(&[], &[("CPUB_NODE_MAX_INSTANCES", "2")])
        .await
        .unwrap();
    // Paused after 1 s idle, kept paused: only eviction removes them.
    let scaling =
        "\n[scaling]\nconcurrency = 1\nmax_instances = 1\nidle_pause_s = 1\nidle_stop_s = 3600\n";
    let urls: Vec<String> = names
        .iter()
        .map(|n| stack.deploy("hello", n, scaling))
        .collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let call = |url: String| {
        let client = client.clone();
        async move {
            let r = client.get(&url).send().await.expect("call");
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap_or_default().to_owned());
            (status, retry_after, r.text().await.unwrap_or_default())
        }
    };
    let paused = |name: &'static str| {
        let stack = &stack;
        async move {
            containerpub_e2e::eventually(
                Duration::from_secs(30),
                &format!("{name} paused"),
                || async {
                    let states = stack.containers_by_state(Some(name));
                    (states.iter().filter(|(_, s)| s == "paused").count() == 1).then_some(())
                },
            )
            .await
        }
    };
    // a and b fill the budget (and pause).
    for (i, name) in ["cap-a", "cap-b"].into_iter().enumerate() {
        let (status, _, body) = call(urls[i].clone()).await;
        assert_eq!(status, 200, "{name}: {body}\n{}", stack.logs());
        paused(name).await;
    }
    // c: a, the least recently used, is evicted to make room.
    let (status, _, body) = call(urls[2].clone()).await;
    assert_eq!(status, 200, "c: {body}\n{}", stack.logs());
    assert!(stack.containers(Some("cap-a")).is_empty(), "a evicted");
    assert_eq!(stack.containers(Some("cap-b")).len(), 1, "b kept");
    let metrics = stack.metrics().await.unwrap();
    let evictions = containerpub_e2e::metric_sum(
        &metrics,
        "cpub_node_evictions_total",
        &[("state", "paused")],
    );
    assert!(evictions >= Some(1.0), "{metrics}");
    assert_eq!(
        containerpub_e2e::metric_sum(&metrics, "cpub_node_budget_instances", &[]),
        Some(2.0)
    );
    assert_eq!(
        containerpub_e2e::metric_sum(&metrics, "cpub_node_instances", &[]),
        Some(2.0)
    );
    // b and c busy: nothing can be evicted, a gets a short 503.
    let held: Vec<_> = ["cap-b", "cap-c"]
        .into_iter()
        .map(|n| (n, hold_call(stack.proxy_addr, n)))
        .collect();
    for (name, _) in &held {
        containerpub_e2e::eventually(Duration::from_secs(30), &format!("{name} busy"), || async {
            let m = stack.metrics().await?;
            (containerpub_e2e::metric_sum(&m, "cpub_in_flight_requests", &[("function", name)])
                == Some(1.0))
            .then_some(())
        })
        .await;
    }
    let (status, retry_after, body) = call(urls[0].clone()).await;
    assert_eq!(status, 503, "{body}\n{}", stack.logs());
    assert_eq!(retry_after.as_deref(), Some("2"));
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        error["error"],
        "function cap-a temporarily unavailable: the node is at capacity"
    );
    for word in INTERNAL {
        assert!(!body.contains(word), "{word} in {body}");
    }
    let logs = stack.logs();
    assert!(
        logs.contains("no idle instance of another function"),
        "{logs}"
    );
    // The calls end: a fits again by evicting an idle instance.
    drop(held);
    containerpub_e2e::eventually(Duration::from_secs(40), "a served again", || async {
        let (status, _, _) = call(urls[0].clone()).await;
        (status == 200).then_some(())
    })
    .await;
    for name in names {
        stack.cpub_ok(&["delete", name]);
    }
}
