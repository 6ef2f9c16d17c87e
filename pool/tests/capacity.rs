//! Node capacity against the fake runtime (issue 15): start failures that
//! are capacity problems (and every failed start's reason, counted for the
//! node report), the node budget and eviction, keep-warm. Tests wait with
//! `eventually`, never for a fixed time.

use std::sync::Arc;
use std::time::Duration;

use containerpub_pool::testing::{FakeRuntime, eventually};
use containerpub_pool::usage::StartFailures;
use containerpub_pool::{
    BudgetConfig, ContainerRuntime, InstanceState, NodeConfig, Pool, PoolConfig, PoolError,
    StartKind,
};
use containerpub_wire::Manifest;
use containerpub_wire::api::Route;
use containerpub_wire::start_failures::MAX_MESSAGE_BYTES;

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
        keys: Vec::new(),
        secrets: Vec::new(),
        signing_keys: Vec::new(),
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

/// A pool whose node holds at most `instances` instances and `memory_mb`.
async fn pool_within(
    fake: &Arc<FakeRuntime>,
    routes: &[Route],
    instances: u32,
    memory_mb: u64,
) -> Pool {
    let node = NodeConfig {
        budget: BudgetConfig {
            memory_mb,
            max_instances: instances,
        },
        ..NodeConfig::default()
    };
    Pool::with_runtime_on(
        Arc::clone(fake) as Arc<dyn ContainerRuntime>,
        config(),
        node,
        routes,
    )
    .await
    .unwrap()
}

/// The state of `function`'s instances, sorted.
fn states(pool: &Pool, function: &str) -> Vec<InstanceState> {
    let mut v: Vec<_> = pool
        .instances()
        .into_iter()
        .filter(|i| i.function == function)
        .map(|i| i.state)
        .collect();
    v.sort_by_key(|s| s.as_str());
    v
}

async fn paused(pool: &Pool, function: &str) {
    eventually(WITHIN, &format!("{function} paused"), || async {
        states(pool, function) == [InstanceState::Paused]
    })
    .await;
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

/// `function`'s failed starts other than crashes, as the node report reads them.
fn start_failures_of(pool: &Pool, function: &str) -> Option<StartFailures> {
    pool.function_counters()
        .into_iter()
        .find(|c| c.function == function)
        .expect("a routed function has counters")
        .start_failures
}

#[tokio::test]
async fn failed_starts_are_counted_by_reason_and_the_last_one_kept_for_the_node_report() {
    let fake = fake().await;
    // A name of its own: the counts are the process-wide metric's.
    let r = route("failure-kinds");
    let pool = pool(&fake, std::slice::from_ref(&r)).await;
    assert_eq!(start_failures_of(&pool, "failure-kinds"), None);

    fake.fail_starts_with(Some("IPAM error: failed to find free IP in range"));
    assert!(pool.lease(&r).await.is_err());
    let f = start_failures_of(&pool, "failure-kinds").expect("a capacity failure");
    assert_eq!(f.counts, [("capacity", 1)]);
    assert_eq!(f.reason, "capacity");
    assert!(f.message.contains("IPAM error"), "{f:?}");
    assert!(
        !f.message.starts_with("function failure-kinds"),
        "the function's name is not repeated: {f:?}"
    );

    // An engine error, long and over several lines: one bounded line.
    let long = format!("runc: exec failed\n{}", "x".repeat(5000));
    fake.fail_starts_with(Some(&long));
    assert!(pool.lease(&r).await.is_err());
    fake.fail_starts_with(None);
    let f = start_failures_of(&pool, "failure-kinds").expect("a runtime failure");
    assert_eq!(f.counts, [("capacity", 1), ("runtime", 1)]);
    assert_eq!(f.reason, "runtime");
    assert!(f.message.contains("runc: exec failed"), "{f:?}");
    assert!(f.message.len() <= MAX_MESSAGE_BYTES, "{}", f.message.len());
    assert!(!f.message.contains('\n'), "{f:?}");

    // A start that fails otherwise (the probe, say): `not_ready`.
    fake.fail_starts(true);
    assert!(pool.lease(&r).await.is_err());
    fake.fail_starts(false);
    let f = start_failures_of(&pool, "failure-kinds").expect("a not_ready failure");
    assert_eq!(
        f.counts,
        [("capacity", 1), ("runtime", 1), ("not_ready", 1)]
    );
    assert_eq!(f.reason, "not_ready");
    assert_eq!(f.message, "instance failed to start: image missing");
    assert!(f.age < WITHIN, "{f:?}");

    // A start that works changes nothing; a function no longer routed is
    // forgotten.
    drop(pool.lease(&r).await.unwrap());
    assert_eq!(
        start_failures_of(&pool, "failure-kinds").map(|f| f.reason),
        Some("not_ready")
    );
    let other = route("failure-kinds-other");
    pool.sync(std::slice::from_ref(&other));
    eventually(WITHIN, "the function forgotten", || async {
        pool.function_counters()
            .iter()
            .all(|c| c.function != "failure-kinds")
    })
    .await;
    pool.sync(std::slice::from_ref(&r));
    assert_eq!(start_failures_of(&pool, "failure-kinds"), None);
    pool.remove_all().await;
}

/// Idle pause after 1 s, stop after an hour: instances stay paused.
const PAUSING: &str = "idle_pause_s = 1\nidle_stop_s = 3600";

#[tokio::test]
async fn a_start_past_the_instance_budget_evicts_the_least_recently_used_paused_instance() {
    let fake = fake().await;
    let (a, b, c) = (
        route_with("a", "", PAUSING),
        route_with("b", "", PAUSING),
        route_with("c", "", PAUSING),
    );
    let pool = pool_within(&fake, &[a.clone(), b.clone(), c.clone()], 2, u64::MAX).await;
    drop(pool.lease(&a).await.unwrap());
    paused(&pool, "a").await;
    drop(pool.lease(&b).await.unwrap());
    paused(&pool, "b").await;
    assert_eq!(pool.budget_used(), (256, 2));
    // c does not fit: a, paused and used longest ago, makes room.
    let lease = pool.lease(&c).await.unwrap();
    assert_eq!(lease.start_kind(), StartKind::Cold);
    assert!(states(&pool, "a").is_empty(), "a was evicted");
    assert_eq!(states(&pool, "b"), [InstanceState::Paused]);
    assert!(fake.removed().iter().any(|id| id.starts_with("a-")));
    assert_eq!(pool.budget_used(), (256, 2));
    drop(lease);
    // a again: b (paused) goes before c (running, idle).
    let lease = pool.lease(&a).await.unwrap();
    assert!(states(&pool, "b").is_empty(), "b was evicted");
    assert_eq!(states(&pool, "c"), [InstanceState::Ready]);
    drop(lease);
    pool.remove_all().await;
    eventually(WITHIN, "every charge given back", || async {
        pool.budget_used() == (0, 0)
    })
    .await;
}

#[tokio::test]
async fn busy_and_minimum_instances_are_never_evicted_and_the_call_gets_no_capacity() {
    let fake = fake().await;
    let keep = route_with(
        "keep",
        "",
        "min_instances = 1\nidle_pause_s = 1\nidle_stop_s = 3600",
    );
    let (busy, late) = (route("busy"), route("late"));
    let pool = pool_within(
        &fake,
        &[keep.clone(), busy.clone(), late.clone()],
        2,
        u64::MAX,
    )
    .await;
    eventually(WITHIN, "min_instances of keep up", || async {
        states(&pool, "keep") == [InstanceState::Ready]
    })
    .await;
    let held = pool.lease(&busy).await.unwrap();
    match pool.lease(&late).await {
        Err(PoolError::NoCapacity {
            retry_after,
            reason,
            ..
        }) => {
            assert!(retry_after >= Duration::from_secs(1));
            assert!(reason.contains("2 of 2 instances"), "{reason}");
        }
        other => panic!("expected NoCapacity, got {other:?}"),
    }
    assert_eq!(
        states(&pool, "keep"),
        [InstanceState::Ready],
        "min_instances kept"
    );
    assert_eq!(
        states(&pool, "busy"),
        [InstanceState::Ready],
        "a busy instance kept"
    );
    // Once its call ends, busy's idle instance makes room.
    drop(held);
    let lease = pool.lease(&late).await.unwrap();
    assert_eq!(lease.start_kind(), StartKind::Cold);
    assert!(states(&pool, "busy").is_empty());
    assert_eq!(states(&pool, "keep"), [InstanceState::Ready]);
    drop(lease);
    pool.remove_all().await;
}

#[tokio::test]
async fn the_memory_budget_is_the_sum_of_limits_and_eviction_frees_enough_of_it() {
    let fake = fake().await;
    let small = |n: &str| route_with(n, "memory_mb = 128", PAUSING);
    let (a, b) = (small("a"), small("b"));
    let big = route_with("big", "memory_mb = 256", "");
    let pool = pool_within(&fake, &[a.clone(), b.clone(), big.clone()], 100, 300).await;
    drop(pool.lease(&a).await.unwrap());
    drop(pool.lease(&b).await.unwrap());
    assert_eq!(pool.budget_used(), (256, 2));
    // 256 more MiB: 212 are missing, so both go (one would free 128).
    let lease = pool.lease(&big).await.unwrap();
    assert!(states(&pool, "a").is_empty() && states(&pool, "b").is_empty());
    assert_eq!(pool.budget_used(), (256, 1));
    // Nothing left to stop while big serves: a does not fit.
    match pool.lease(&a).await {
        Err(PoolError::NoCapacity { reason, .. }) => {
            assert!(reason.contains("256 of 300 MiB"), "{reason}")
        }
        other => panic!("expected NoCapacity, got {other:?}"),
    }
    drop(lease);
    pool.remove_all().await;
}

/// Paused after 1 s idle, stopped after 2 s.
const SHORT_IDLE: &str = "idle_pause_s = 1\nidle_stop_s = 2";

/// A pool whose keep-warm window is `window` (zero: off).
async fn pool_keeping(fake: &Arc<FakeRuntime>, routes: &[Route], window: Duration) -> Pool {
    let mut node = NodeConfig::default();
    node.keep_warm.window = window;
    Pool::with_runtime_on(
        Arc::clone(fake) as Arc<dyn ContainerRuntime>,
        config(),
        node,
        routes,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_recently_called_function_keeps_one_paused_instance_past_its_idle_stop() {
    let fake = fake().await;
    let r = route_with("warm", "", SHORT_IDLE);
    let pool = pool_keeping(&fake, std::slice::from_ref(&r), Duration::from_secs(3600)).await;
    let lease = pool.lease(&r).await.unwrap();
    assert_eq!(lease.start_kind(), StartKind::Cold);
    let id = lease.instance_id().to_owned();
    drop(lease);
    paused(&pool, "warm").await;
    assert_eq!(
        pool.function_stats("warm").map(|s| s.1),
        Some(1),
        "one cold start tracked"
    );
    // Past idle_stop_s (the paused timer fires after 1 s, then every 1 s):
    // still there, still paused. Proving that nothing happens takes the time.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(states(&pool, "warm"), [InstanceState::Paused]);
    assert!(!fake.removed().contains(&id));
    // The next call is a resume of that instance, not a cold start.
    let lease = pool.lease(&r).await.unwrap();
    assert_eq!(lease.start_kind(), StartKind::Paused);
    assert_eq!(lease.instance_id(), id);
    assert_eq!(fake.starts(), 1);
    let (calls, cold) = pool.function_stats("warm").unwrap();
    assert_eq!(cold, 1);
    assert!(calls >= 1, "{calls}");
    // What the node reports (`cpub describe`): kept once, one hit.
    let counters = pool.function_counters();
    let warm = counters.iter().find(|c| c.function == "warm").unwrap();
    assert!(warm.keep_warm);
    assert_eq!(
        (
            warm.keep_warm_kept,
            warm.keep_warm_hits,
            warm.keep_warm_misses
        ),
        (1, 1, 0),
        "{warm:?}"
    );
    drop(lease);
    pool.remove_all().await;
}

#[tokio::test]
async fn keep_warm_off_on_the_node_or_in_the_manifest_stops_the_instance() {
    let fake = fake().await;
    let on_node_off = route_with("plain", "", SHORT_IDLE);
    let manifest_off = route_with("never", "", &format!("{SHORT_IDLE}\nkeep_warm = false"));
    let manifest_on = route_with("always", "", &format!("{SHORT_IDLE}\nkeep_warm = true"));
    let routes = [on_node_off.clone(), manifest_on.clone()];
    let pool = pool_keeping(&fake, &routes, Duration::ZERO).await;
    for r in &routes {
        drop(pool.lease(r).await.unwrap());
    }
    // The node's window is off: stopped; the manifest turns it on: kept.
    eventually(WITHIN, "plain stopped", || async {
        states(&pool, "plain").is_empty()
    })
    .await;
    assert_eq!(states(&pool, "always"), [InstanceState::Paused]);
    pool.remove_all().await;

    let fake = self::fake().await;
    let pool = pool_keeping(
        &fake,
        std::slice::from_ref(&manifest_off),
        Duration::from_secs(3600),
    )
    .await;
    drop(pool.lease(&manifest_off).await.unwrap());
    eventually(WITHIN, "never stopped", || async {
        states(&pool, "never").is_empty()
    })
    .await;
    assert_eq!(
        pool.lease(&manifest_off).await.unwrap().start_kind(),
        StartKind::Cold
    );
    pool.remove_all().await;
}

#[tokio::test]
async fn a_kept_instance_is_the_first_evicted_for_room() {
    let fake = fake().await;
    let kept = route_with("kept", "", SHORT_IDLE);
    let other = route("other");
    let routes = [kept.clone(), other.clone()];
    let node = NodeConfig {
        budget: BudgetConfig {
            memory_mb: u64::MAX,
            max_instances: 1,
        },
        ..NodeConfig::default()
    };
    let pool = Pool::with_runtime_on(
        Arc::clone(&fake) as Arc<dyn ContainerRuntime>,
        config(),
        node,
        &routes,
    )
    .await
    .unwrap();
    drop(pool.lease(&kept).await.unwrap());
    paused(&pool, "kept").await;
    // Within the budget: the kept instance makes room for a call of another function.
    let lease = pool.lease(&other).await.unwrap();
    assert_eq!(lease.start_kind(), StartKind::Cold);
    assert!(states(&pool, "kept").is_empty());
    drop(lease);
    // The next call of the evicted function is a cold start keep-warm
    // wanted to avoid: a miss.
    let again = pool.lease(&kept).await.unwrap();
    assert_eq!(again.start_kind(), StartKind::Cold);
    drop(again);
    let counters = pool.function_counters();
    let kept = counters.iter().find(|c| c.function == "kept").unwrap();
    assert_eq!(
        (kept.keep_warm_hits, kept.keep_warm_misses),
        (0, 1),
        "{kept:?}"
    );
    pool.remove_all().await;
}
