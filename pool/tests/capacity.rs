//! Node capacity against the fake runtime (issue 15): start failures that
//! are capacity problems, the node budget and eviction, keep-warm. Tests
//! wait with `eventually`, never for a fixed time.

use std::sync::Arc;
use std::time::Duration;

use containerpub_pool::testing::{FakeRuntime, eventually};
use containerpub_pool::{ContainerRuntime, Pool, PoolConfig, PoolError, StartKind};
use containerpub_wire::Manifest;
use containerpub_wire::api::Route;

/// Longest wait for something the pool does in the background.
const WITHIN: Duration = Duration::from_secs(5);

fn route_with(name: &str, resources: &str, scaling: &str) -> Route {
    let text = format!(
        "name = \"{name}\"\nruntime = \"container\"\n[resources]\ntimeout_ms = 1000\n{resources}\n[scaling]\n{scaling}\n"
    );
    Route {
        function: name.into(),
        deployment_id: 1,
        version: 1,
        image: "img".into(),
        config: Manifest::parse(&text).unwrap(),
    }
}

fn route(name: &str) -> Route {
    route_with(name, "", "")
}

async fn fake() -> Arc<FakeRuntime> {
    Arc::new(
        FakeRuntime::new()
            .await
            .with_start_delay(Duration::from_millis(5)),
    )
}

fn config() -> PoolConfig {
    PoolConfig {
        node: "test".into(),
        start_timeout: Duration::from_secs(2),
    }
}

async fn pool(fake: &Arc<FakeRuntime>, routes: &[Route]) -> Pool {
    Pool::with_runtime(
        Arc::clone(fake) as Arc<dyn ContainerRuntime>,
        config(),
        routes,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn an_engine_out_of_addresses_is_no_capacity_and_other_failures_stay_start_failures() {
    let fake = fake().await;
    let r = route("f");
    let pool = pool(&fake, std::slice::from_ref(&r)).await;
    fake.fail_starts_with(Some(
        "IPAM error: failed to find free IP in range: 10.89.0.1 - 10.89.0.254",
    ));
    match pool.lease(&r).await {
        Err(err @ PoolError::NoCapacity { .. }) => {
            assert!(err.is_capacity());
            let PoolError::NoCapacity {
                retry_after,
                reason,
                ..
            } = err
            else {
                unreachable!()
            };
            assert!(retry_after >= Duration::from_secs(1));
            // The details are kept for the log.
            assert!(reason.contains("failed to find free IP"), "{reason}");
        }
        other => panic!("expected NoCapacity, got {other:?}"),
    }
    fake.fail_starts_with(Some("runc: exec failed"));
    match pool.lease(&r).await {
        Err(err @ PoolError::StartFailed { .. }) => assert!(!err.is_capacity()),
        other => panic!("expected StartFailed, got {other:?}"),
    }
    fake.fail_starts_with(None);
    let lease = pool.lease(&r).await.unwrap();
    assert_eq!(lease.start_kind(), StartKind::Cold);
    drop(lease);
    pool.remove_all().await;
    eventually(WITHIN, "nothing left", || async {
        pool.instances().is_empty()
    })
    .await;
}
