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
    assert_eq!(runtime.address_capacity(), Some(4_093));
    assert_eq!(
        podman.network_subnets(&name).await.unwrap(),
        ["10.93.0.0/20"]
    );
    // Already there: another subnet asked for changes nothing.
    let again = PodmanRuntime::on_network(podman.clone(), &name, Some("10.94.0.0/16"))
        .await
        .unwrap();
    assert_eq!(again.address_capacity(), Some(4_093));
    drop((runtime, again));
    podman.remove_network(&name).await.unwrap();
    let gone = tokio::time::timeout(Duration::from_secs(10), podman.network_subnets(&name)).await;
    assert!(matches!(gone, Ok(Err(_))), "the test network is removed");
}
