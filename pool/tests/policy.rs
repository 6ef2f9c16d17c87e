//! Pool policy against the fake runtime (`containerpub_pool::testing`):
//! which instance serves a call, scale-up, queueing, idleness, deploys,
//! adoption and crashes. Tests wait for conditions with `eventually`
//! (polling with a deadline), never for a fixed time — except where a test
//! proves that something does *not* happen, which takes the time it would
//! need. Over 600 lines: one file so the tests share their fixtures; each
//! test stands alone.

use std::sync::Arc;
use std::time::Duration;

use containerpub_pool::testing::{FakeRuntime, eventually};
use containerpub_pool::{
    ContainerRuntime, EXIT_POLL, Exit, InstanceState, Lease, Owned, Pool, PoolConfig, PoolError,
    StartKind,
};
use containerpub_wire::Manifest;
use containerpub_wire::api::{Route, instances_digest};
use containerpub_wire::private::{SecretValue, SecretVar};
use tokio::time::Instant;

/// Longest wait for something the pool does in the background.
const WITHIN: Duration = Duration::from_secs(5);

async fn fake() -> Arc<FakeRuntime> {
    Arc::new(
        FakeRuntime::new()
            .await
            .with_start_delay(Duration::from_millis(30)),
    )
}

async fn fake_with(leftovers: Vec<Owned>) -> Arc<FakeRuntime> {
    Arc::new(
        FakeRuntime::new()
            .await
            .with_start_delay(Duration::from_millis(30))
            .with_leftovers(leftovers),
    )
}

fn route_with(name: &str, deployment_id: i64, scaling: &str) -> Route {
    let text = format!(
        "name = \"{name}\"\nruntime = \"container\"\n[resources]\ntimeout_ms = 1000\n[scaling]\n{scaling}\n"
    );
    Route {
        function: name.into(),
        deployment_id,
        version: 1,
        // Each build has an image of its own (`cpub-fn-NAME:vN-dID-TOKEN`); only
        // rollbacks and config changes share one.
        image: format!("img-{deployment_id}"),
        config: Manifest::parse(&text).unwrap(),
        keys: Vec::new(),
        secrets: Vec::new(),
        signing_keys: Vec::new(),
    }
}

fn route(name: &str, deployment_id: i64, concurrency: u32, max: u32) -> Route {
    route_with(
        name,
        deployment_id,
        &format!("concurrency = {concurrency}\nmax_instances = {max}"),
    )
}

async fn pool_with_timeout(
    fake: &Arc<FakeRuntime>,
    routes: &[Route],
    start_timeout: Duration,
) -> Pool {
    let config = PoolConfig {
        node: "test".into(),
        start_timeout,
    };
    Pool::with_runtime(
        Arc::clone(fake) as Arc<dyn ContainerRuntime>,
        config,
        routes,
    )
    .await
    .unwrap()
}

async fn pool_on(fake: &Arc<FakeRuntime>, routes: &[Route]) -> Pool {
    pool_with_timeout(fake, routes, Duration::from_secs(2)).await
}

async fn pool(fake: &Arc<FakeRuntime>) -> Pool {
    pool_on(fake, &[]).await
}

fn owned(id: &str, function: &str, deployment: &str, state: &str) -> Owned {
    Owned {
        id: id.into(),
        function: function.into(),
        deployment: deployment.into(),
        image: format!("img-{deployment}"),
        instances: None,
        state: state.into(),
        ip: Some([127, 0, 0, 1].into()),
    }
}

#[tokio::test]
async fn removes_unknown_leftovers_and_adopts_known_ones() {
    // Deployment 1 of another database (a reinstall): its image differs.
    let mut other_database = owned("other-database", "f", "1", "running");
    other_database.image = "img-1-of-another-database".into();
    let fake = fake_with(vec![
        owned("ghost", "gone-fn", "1", "running"),
        owned("old-version", "f", "0", "running"),
        owned("exited", "f", "1", "exited"),
        other_database,
        owned("keep", "f", "1", "running"),
    ])
    .await;
    // The adopted instance must answer on its port: point the route at the fake's listener.
    let mut known = route("f", 1, 4, 3);
    known.config.port = fake.addr().unwrap().port();
    let pool = pool_on(&fake, std::slice::from_ref(&known)).await;
    let mut removed = fake.removed();
    removed.sort();
    assert_eq!(
        removed,
        ["exited", "ghost", "old-version", "other-database"]
    );
    let lease = pool.lease(&known).await.unwrap();
    assert_eq!(lease.instance_id(), "keep");
    assert_eq!(lease.start_kind(), StartKind::Warm);
    assert_eq!(fake.starts(), 0, "adopted, not started");
}

/// `cpub scale` keeps the running instances, labelled with the deployment
/// they were made for: a restarted proxy adopts them for the later
/// deployment when its image and everything but the counts are the same,
/// and removes them when anything else changed.
#[tokio::test]
async fn a_restart_adopts_instances_of_an_earlier_deployment_with_only_other_counts() {
    // The instances answer on the fake's port: every route names it.
    let fake = FakeRuntime::new().await;
    let port = fake.addr().unwrap().port();
    let mut earlier = route("f", 1, 4, 3);
    earlier.config.port = port;
    let mut later = route("f", 2, 8, 5);
    later.config.port = port;
    later.image = earlier.image.clone();
    let mut scaled = owned("scaled", "f", "1", "running");
    scaled.instances = Some(instances_digest(&earlier));
    let mut other_memory = earlier.clone();
    other_memory.config.resources.memory_mb += 64;
    let mut resized = owned("resized", "f", "1", "running");
    resized.instances = Some(instances_digest(&other_memory));
    // Of an older proxy: no digest, so the deployment id must match.
    let unlabelled = owned("unlabelled", "f", "1", "running");
    let fake = Arc::new(
        fake.with_start_delay(Duration::from_millis(30))
            .with_leftovers(vec![scaled, resized, unlabelled]),
    );
    let pool = pool_on(&fake, std::slice::from_ref(&later)).await;
    let mut removed = fake.removed();
    removed.sort();
    assert_eq!(removed, ["resized", "unlabelled"]);
    // A secret set since: the instance started without it is removed.
    let fake_secret = FakeRuntime::new().await;
    let mut without = later.clone();
    without.config.port = fake_secret.addr().unwrap().port();
    // Of the very deployment the route names: the digest decides.
    let mut before_secret = owned("before-secret", "f", "2", "running");
    before_secret.image = without.image.clone();
    before_secret.instances = Some(instances_digest(&without));
    let mut secret = without.clone();
    secret.secrets.push(SecretVar {
        name: "TOKEN".into(),
        value: SecretValue("rotated".into()),
    });
    let fake_secret = Arc::new(fake_secret.with_leftovers(vec![before_secret]));
    let _other = pool_on(&fake_secret, std::slice::from_ref(&secret)).await;
    assert_eq!(fake_secret.removed(), ["before-secret"]);
    let lease = pool.lease(&later).await.unwrap();
    assert_eq!(lease.instance_id(), "scaled");
    assert_eq!(lease.start_kind(), StartKind::Warm);
    assert_eq!(fake.starts(), 0, "adopted, not started");
}

#[tokio::test]
async fn an_adopted_instance_counts_towards_min_instances() {
    let fake = fake_with(vec![owned("keep", "f", "1", "running")]).await;
    let mut known = route_with("f", 1, "min_instances = 1\nmax_instances = 1");
    known.config.port = fake.addr().unwrap().port();
    let pool = pool_on(&fake, std::slice::from_ref(&known)).await;
    pool.sync(std::slice::from_ref(&known));
    // Absence of a start: a start would take 30 ms, give it the time to
    // show (no condition to poll for).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.starts(), 0, "the adopted instance is the minimum");
    assert_eq!(pool.instances().len(), 1);
    let lease = pool.lease(&known).await.unwrap();
    assert_eq!(lease.instance_id(), "keep");
}

#[tokio::test]
async fn first_call_is_cold_then_warm_on_the_same_instance() {
    let fake = fake().await;
    let pool = pool(&fake).await;
    let r = route("f", 1, 4, 3);
    let first = pool.lease(&r).await.unwrap();
    assert_eq!(first.start_kind(), StartKind::Cold);
    assert!(first.start_duration() >= fake.start_delay());
    let id = first.instance_id().to_owned();
    drop(first);
    let second = pool.lease(&r).await.unwrap();
    assert_eq!(second.start_kind(), StartKind::Warm);
    assert_eq!(second.instance_id(), id);
    assert_eq!(second.start_duration(), Duration::ZERO);
    assert_eq!(fake.starts(), 1);
}

#[tokio::test]
async fn a_handle_leases_without_the_route_and_follows_deploys() {
    let fake = fake().await;
    let pool = pool(&fake).await;
    let v1 = route("f", 1, 4, 3);
    pool.sync(std::slice::from_ref(&v1));
    let handle = pool.handle(&v1);
    assert_eq!(handle.function(), "f");
    assert!(
        handle.try_lease().is_none(),
        "no instance yet: no warm slot"
    );
    let first = handle.lease().await.unwrap();
    assert_eq!(first.start_kind(), StartKind::Cold);
    drop(first);
    assert!(handle.try_lease().is_some(), "warm now");
    // A deploy switches the set under the handle.
    let v2 = route("f", 2, 4, 3);
    pool.sync(std::slice::from_ref(&v2));
    eventually(WITHIN, "v2 serves through the old handle", || async {
        handle
            .try_lease()
            .is_some_and(|l| l.instance_id().starts_with("f-2-"))
    })
    .await;
    // Removed: the handle says so.
    pool.sync(&[]);
    assert!(handle.try_lease().is_none());
    match handle.lease().await {
        Err(PoolError::StartFailed { reason, .. }) => {
            assert!(reason.contains("removed"), "{reason}")
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn a_handle_resolved_from_an_older_route_never_switches_back() {
    let fake = fake().await;
    let v1 = route("f", 1, 4, 3);
    let v2 = route("f", 2, 4, 3);
    let pool = pool_on(&fake, std::slice::from_ref(&v2)).await;
    // A caller still holding v1's route (a table read before the sync).
    let stale = pool.handle(&v1);
    let lease = stale.lease().await.unwrap();
    assert!(
        lease.instance_id().starts_with("f-2-"),
        "{}",
        lease.instance_id()
    );
    drop(lease);
    assert!(
        pool.instances().iter().all(|i| i.deployment_id == 2),
        "{:?}",
        pool.instances()
    );
}

#[tokio::test]
async fn lease_goes_to_the_least_loaded_instance_with_room() {
    let fake = fake().await;
    let pool = pool(&fake).await;
    let r = route("f", 1, 2, 2);
    let a = pool.lease(&r).await.unwrap();
    let b = pool.lease(&r).await.unwrap();
    assert_eq!(
        a.instance_id(),
        b.instance_id(),
        "second call fits the first instance"
    );
    let c = pool.lease(&r).await.unwrap();
    assert_ne!(
        c.instance_id(),
        a.instance_id(),
        "full instance: a second one starts"
    );
    drop(a);
    let d = pool.lease(&r).await.unwrap();
    // c's instance has one call, b's has one: either is least loaded; both have room.
    assert!(d.instance_id() == b.instance_id() || d.instance_id() == c.instance_id());
    drop((b, c, d));
    assert!(
        pool.instances().iter().all(|i| i.in_flight == 0),
        "{:?}",
        pool.instances()
    );
}

#[tokio::test]
async fn burst_starts_at_most_ceil_n_over_concurrency() {
    let fake = fake().await;
    let pool = pool(&fake).await;
    let r = route("f", 1, 10, 20);
    let calls: Vec<_> = (0..95)
        .map(|_| {
            let (pool, r) = (pool.clone(), r.clone());
            tokio::spawn(async move {
                let lease = pool.lease(&r).await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, PoolError>(lease.instance_id().to_owned())
            })
        })
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert!(
        fake.starts() <= 10,
        "started {} instances for 95 calls at concurrency 10",
        fake.starts()
    );
    assert!(
        fake.starts() >= 2,
        "one instance cannot take 95 calls at once"
    );
}

#[tokio::test]
async fn burst_never_exceeds_max_instances_and_queues_the_rest() {
    let fake = fake().await;
    let pool = pool(&fake).await;
    let r = route("f", 1, 2, 3);
    let calls: Vec<_> = (0..30)
        .map(|_| {
            let (pool, r) = (pool.clone(), r.clone());
            tokio::spawn(async move {
                let lease = pool.lease(&r).await?;
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(lease);
                Ok::<_, PoolError>(())
            })
        })
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(fake.starts(), 3);
}

/// Waits until `n` calls of `r` wait in its queue.
async fn wait_until_queued(pool: &Pool, r: &Route, n: u32) {
    let handle = pool.handle(r);
    eventually(WITHIN, "calls queued", || async { handle.queued() >= n }).await;
}

#[tokio::test]
async fn full_queue_answers_queue_full_and_slow_queue_times_out() {
    let fake = fake().await;
    let pool = pool(&fake).await;
    let r = route_with(
        "f",
        1,
        "concurrency = 1\nmax_instances = 1\nqueue_size = 2\nqueue_timeout_ms = 300",
    );
    let held = pool.lease(&r).await.unwrap();
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let (pool, r) = (pool.clone(), r.clone());
            tokio::spawn(async move { pool.lease(&r).await.map(drop) })
        })
        .collect();
    // Both waiters queued: the next call is refused at once.
    wait_until_queued(&pool, &r, 2).await;
    match pool.lease(&r).await {
        Err(PoolError::QueueFull { queue_size: 2, .. }) => {}
        other => panic!("expected QueueFull, got {other:?}"),
    }
    for w in waiters {
        match w.await.unwrap() {
            Err(PoolError::QueueTimeout { waited, .. }) => {
                assert!(waited >= Duration::from_millis(300))
            }
            other => panic!("expected QueueTimeout, got {other:?}"),
        }
    }
    drop(held);
    pool.lease(&r).await.expect("a free slot again");
}

#[tokio::test]
async fn queued_call_gets_the_freed_slot() {
    let fake = fake().await;
    let pool = pool(&fake).await;
    let r = route("f", 1, 1, 1);
    let held = pool.lease(&r).await.unwrap();
    let waiter = tokio::spawn({
        let (pool, r) = (pool.clone(), r.clone());
        async move {
            pool.lease(&r)
                .await
                .map(|l| (l.instance_id().to_owned(), l.queue_duration()))
        }
    });
    wait_until_queued(&pool, &r, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let id = held.instance_id().to_owned();
    drop(held);
    let (got, queued) = waiter.await.unwrap().unwrap();
    assert_eq!(got, id);
    assert!(queued >= Duration::from_millis(50), "{queued:?}");
}

#[tokio::test]
async fn aborted_calls_release_their_slots_and_cannot_leak_containers() {
    let fake = fake().await;
    let pool = pool(&fake).await;
    let r = route("f", 1, 1, 2);
    // A call aborted while its instance starts: the start finishes in its own task.
    let call = tokio::spawn({
        let (pool, r) = (pool.clone(), r.clone());
        async move { pool.lease(&r).await.map(drop) }
    });
    // Queued for the start it asked for (this runtime has one thread: the
    // call waits in the queue until the test yields again).
    wait_until_queued(&pool, &r, 1).await;
    call.abort();
    eventually(WITHIN, "the aborted call's start finishes", || async {
        !pool.instances().is_empty()
    })
    .await;
    // A call aborted while it holds a lease.
    let holder = tokio::spawn({
        let (pool, r) = (pool.clone(), r.clone());
        async move {
            let _lease = pool.lease(&r).await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    });
    eventually(WITHIN, "the holder holds a slot", || async {
        pool.instances().iter().any(|i| i.in_flight == 1)
    })
    .await;
    holder.abort();
    eventually(WITHIN, "the aborted holder's slot is free", || async {
        pool.instances().iter().all(|i| i.in_flight == 0)
    })
    .await;
    let instances = pool.instances();
    assert!(
        !instances.is_empty(),
        "the started instance is kept, not leaked"
    );
    assert!(fake.removed().is_empty(), "{:?}", fake.removed());
}

#[tokio::test]
async fn failed_start_fails_waiting_calls_and_the_next_call_tries_again() {
    let fake = fake().await;
    fake.fail_starts(true);
    let pool = pool(&fake).await;
    let r = route("f", 1, 4, 2);
    match pool.lease(&r).await {
        Err(PoolError::StartFailed { reason, .. }) => {
            assert!(reason.contains("image missing"), "{reason}")
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    fake.fail_starts(false);
    assert_eq!(pool.lease(&r).await.unwrap().start_kind(), StartKind::Cold);
}

#[tokio::test]
async fn min_instances_are_prewarmed_and_replaced() {
    let fake = fake().await;
    let pool = pool(&fake).await;
    let r = route_with("f", 1, "min_instances = 2\nmax_instances = 4");
    pool.sync(std::slice::from_ref(&r));
    eventually(WITHIN, "two instances ready", || async {
        pool.instances()
            .iter()
            .filter(|i| i.state == InstanceState::Ready)
            .count()
            == 2
    })
    .await;
    assert_eq!(fake.starts(), 2, "started at deploy time");
    let lease = pool.lease(&r).await.unwrap();
    assert_eq!(
        lease.start_kind(),
        StartKind::Warm,
        "first call after a pre-warming deploy"
    );
    let id = lease.instance_id().to_owned();
    drop(lease);
    fake.send_died(&id);
    eventually(
        WITHIN,
        "the dead instance is removed and replaced",
        || async {
            fake.removed().contains(&id) && fake.starts() == 3 && pool.instances().len() == 2
        },
    )
    .await;
    assert!(fake.removed().contains(&id), "dead instance leaves");
    assert_eq!(fake.starts(), 3, "min_instances restored");
    assert_eq!(pool.instances().len(), 2);
}

#[tokio::test]
async fn dead_instance_leaves_at_once_and_demand_starts_another() {
    let fake = fake().await;
    let pool = pool(&fake).await;
    let r = route("f", 1, 4, 3);
    let id = pool.lease(&r).await.unwrap().instance_id().to_owned();
    fake.send_died(&id);
    eventually(WITHIN, "the dead instance leaves", || async {
        pool.instances().is_empty()
    })
    .await;
    let next = pool.lease(&r).await.unwrap();
    assert_eq!(next.start_kind(), StartKind::Cold);
    assert_ne!(next.instance_id(), id);
}

#[tokio::test]
async fn idle_instances_pause_then_resume_on_a_call_then_stop() {
    let fake = fake().await;
    let pool = pool(&fake).await;
    // Scale to zero: no predictive keep-warm (tests/capacity.rs).
    let r = route_with(
        "f",
        1,
        "idle_pause_s = 1\nidle_stop_s = 2\nkeep_warm = false",
    );
    let id = pool.lease(&r).await.unwrap().instance_id().to_owned();
    eventually(
        Duration::from_secs(4),
        "paused after idle_pause_s",
        || async { !fake.paused().is_empty() },
    )
    .await;
    assert_eq!(
        fake.paused(),
        std::slice::from_ref(&id),
        "paused after idle_pause_s"
    );
    assert_eq!(pool.instances()[0].state, InstanceState::Paused);
    let resumed = pool.lease(&r).await.unwrap();
    assert_eq!(resumed.instance_id(), id);
    assert_eq!(resumed.start_kind(), StartKind::Paused);
    assert_eq!(fake.starts(), 1, "resumed, not started");
    assert_eq!(fake.resumed(), std::slice::from_ref(&id));
    drop(resumed);
    // Paused again after 1 s, removed 1 s after that (moka's timer wheel
    // rounds expiries up to about a second).
    eventually(
        Duration::from_secs(6),
        "removed after idle_stop_s",
        || async { !fake.removed().is_empty() },
    )
    .await;
    assert_eq!(fake.paused().len(), 2, "paused again before removal");
    assert_eq!(fake.removed(), [id]);
    assert!(pool.instances().is_empty(), "scaled to zero");
}

/// An instance called again and again (each call short, the gaps shorter
/// than `idle_pause_s`) is never paused, however long that goes on; it is
/// paused once the calls stop. A released lease only notes the time of use
/// in the instance; the idle timer, when it fires, reads it and runs on.
#[tokio::test]
async fn an_instance_in_use_is_not_paused_until_its_calls_stop() {
    let fake = fake().await;
    let pool = pool(&fake).await;
    let r = route_with(
        "steady",
        1,
        "idle_pause_s = 1\nidle_stop_s = 30\nkeep_warm = false",
    );
    let id = pool.lease(&r).await.unwrap().instance_id().to_owned();
    // Three and a half idle periods of calls 300 ms apart.
    let until = tokio::time::Instant::now() + Duration::from_millis(3500);
    while tokio::time::Instant::now() < until {
        let lease = pool.lease(&r).await.unwrap();
        assert_eq!(lease.instance_id(), id);
        assert_eq!(lease.start_kind(), StartKind::Warm, "paused while in use");
        drop(lease);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(fake.paused().is_empty(), "{:?}", fake.paused());
    eventually(
        Duration::from_secs(4),
        "paused once the calls stopped",
        || async { !fake.paused().is_empty() },
    )
    .await;
    assert_eq!(fake.paused(), [id]);
}

/// A call that claims an instance while its freeze is still in flight is
/// served after the freeze and a resume, in that order: a thaw never lands
/// before the freeze it must undo (review of 1a84ba0: with the cgroup
/// freezer nothing but the pool orders the two writes).
#[tokio::test]
async fn a_call_during_a_pause_is_served_after_the_freeze_and_a_resume() {
    let fake = Arc::new(
        FakeRuntime::new()
            .await
            .with_pause_delay(Duration::from_millis(300)),
    );
    let pool = pool(&fake).await;
    let r = route_with(
        "f",
        1,
        "idle_pause_s = 1\nidle_stop_s = 30\nkeep_warm = false",
    );
    let id = pool.lease(&r).await.unwrap().instance_id().to_owned();
    eventually(Duration::from_secs(4), "a pause begun", || async {
        !fake.freezer_log().is_empty()
    })
    .await;
    assert_eq!(
        fake.freezer_log(),
        [format!("pause-begin {id}")],
        "in flight"
    );
    let lease = pool.lease(&r).await.unwrap();
    assert_eq!(lease.instance_id(), id);
    assert_eq!(lease.start_kind(), StartKind::Paused);
    assert_eq!(
        fake.freezer_log(),
        [
            format!("pause-begin {id}"),
            format!("pause-end {id}"),
            format!("resume {id}")
        ],
        "freeze, then thaw, then the call"
    );
    drop(lease);
}

#[tokio::test]
async fn busy_and_minimum_instances_are_not_paused() {
    let fake = fake().await;
    let pool = pool(&fake).await;
    let busy = route_with("busy", 1, "idle_pause_s = 1\nidle_stop_s = 1");
    let kept = route_with(
        "kept",
        1,
        "idle_pause_s = 1\nidle_stop_s = 1\nmin_instances = 1",
    );
    pool.sync(&[busy.clone(), kept.clone()]);
    let held = pool.lease(&busy).await.unwrap();
    // Three idle periods: what would be paused is paused by then. (The
    // absence of an event takes waiting out the time it would need.)
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(fake.paused().is_empty(), "{:?}", fake.paused());
    assert!(fake.removed().is_empty());
    assert_eq!(pool.instances().len(), 2);
    drop(held);
}

#[tokio::test]
async fn redeploy_warms_the_new_version_before_draining_the_old() {
    let fake = fake().await;
    let pool = pool(&fake).await;
    let v1 = route("f", 1, 4, 3);
    let held = pool.lease(&v1).await.unwrap();
    let old_id = held.instance_id().to_owned();
    let v2 = route("f", 2, 4, 3);
    pool.sync(std::slice::from_ref(&v2));
    // While v2 warms up, calls still go to v1.
    let during = pool.lease(&v2).await.unwrap();
    assert_eq!(during.instance_id(), old_id);
    drop(during);
    eventually(WITHIN, "v2 takes the calls", || async {
        pool.instances()
            .iter()
            .any(|i| i.deployment_id == 2 && i.state == InstanceState::Ready)
            && pool.instances().iter().all(|i| i.deployment_id == 2)
    })
    .await;
    assert!(
        fake.removed().is_empty(),
        "the in-flight call on v1 is not cut off"
    );
    let after = pool.lease(&v2).await.unwrap();
    assert!(
        after.instance_id().starts_with("f-2-"),
        "{}",
        after.instance_id()
    );
    assert_eq!(
        after.start_kind(),
        StartKind::Warm,
        "v2 was warmed before it took calls"
    );
    drop(held);
    eventually(WITHIN, "v1 is removed once its call is done", || async {
        !fake.removed().is_empty()
    })
    .await;
    assert_eq!(fake.removed(), [old_id]);
}

/// An instance starts from the route in force: after a secret change (the
/// same deployment) with the new secret, after `cpub scale` (a later
/// deployment, kept in place) with that deployment and its counts, which
/// its labels and its log lines then name.
#[tokio::test]
async fn instances_start_from_the_secrets_and_counts_in_force() {
    let fake = fake().await;
    let pool = pool(&fake).await;
    let v1 = route("f", 1, 1, 4);
    pool.sync(std::slice::from_ref(&v1));
    let first = pool.lease(&v1).await.unwrap();
    // `cpub secret set f TOKEN`: a new route of the same deployment.
    let mut with_secret = v1.clone();
    with_secret.secrets.push(SecretVar {
        name: "TOKEN".into(),
        value: SecretValue("s3".into()),
    });
    pool.sync(std::slice::from_ref(&with_secret));
    let second = pool.lease(&with_secret).await.unwrap();
    // `cpub scale f --concurrency 1 --max 5`: version 2 on the same image.
    let mut v2 = route("f", 2, 1, 5);
    v2.image = v1.image.clone();
    v2.secrets = with_secret.secrets.clone();
    pool.sync(std::slice::from_ref(&v2));
    let third = pool.lease(&v2).await.unwrap();
    let started = fake.started_routes();
    assert_eq!(started.len(), 3, "one instance per held lease");
    assert!(started[0].secrets.is_empty());
    assert_eq!(
        started[1].secrets, with_secret.secrets,
        "the secret set since"
    );
    assert_eq!(started[1].deployment_id, 1);
    assert_eq!(started[2].deployment_id, 2, "the deployment it serves");
    assert_eq!(started[2].config.scaling.max_instances, 5);
    assert_eq!(started[2].secrets, with_secret.secrets);
    assert_eq!(
        instances_digest(&started[2]),
        instances_digest(&v2),
        "a restart adopts it for v2"
    );
    drop((first, second, third));
}

/// A database reinstalled under a running proxy numbers its deployments
/// from 1 again: a route with the id the pool serves but another image is
/// a new deployment, whose instances replace the old image's.
#[tokio::test]
async fn the_same_deployment_id_on_another_image_replaces_the_instances() {
    let fake = fake().await;
    let pool = pool(&fake).await;
    let old = route("f", 1, 4, 3);
    let old_id = pool.lease(&old).await.unwrap().instance_id().to_owned();
    let mut new = route("f", 1, 4, 3);
    new.image = "img-1-of-a-new-database".into();
    pool.sync(std::slice::from_ref(&new));
    eventually(WITHIN, "the old image's instance is removed", || async {
        fake.removed() == [old_id.clone()]
    })
    .await;
    let lease = pool.lease(&new).await.unwrap();
    assert_ne!(lease.instance_id(), old_id);
    assert_eq!(pool.instances().len(), 1, "{:?}", pool.instances());
}

#[tokio::test]
async fn deleted_function_loses_its_instances_and_failed_ones_leave() {
    let fake = fake().await;
    let pool = pool(&fake).await;
    let f = route("f", 1, 4, 3);
    let lease = pool.lease(&f).await.unwrap();
    lease.mark_failed();
    let id = lease.instance_id().to_owned();
    drop(lease);
    eventually(WITHIN, "the failed instance is removed", || async {
        !fake.removed().is_empty()
    })
    .await;
    assert_eq!(fake.removed(), [id]);
    assert!(pool.instances().is_empty());
    let again = pool.lease(&f).await.unwrap();
    assert_eq!(
        again.start_kind(),
        StartKind::Cold,
        "demand starts a replacement"
    );
    drop(again);
    pool.sync(&[]);
    eventually(
        WITHIN,
        "the deleted function's instance is removed",
        || async { fake.removed().len() == 2 },
    )
    .await;
    assert_eq!(fake.removed().len(), 2);
    assert!(pool.instances().is_empty());
}

fn crashed(result: Result<Lease, PoolError>) -> (Exit, Option<Duration>) {
    match result {
        Err(PoolError::Crashed { exit, backoff, .. }) => (exit, backoff),
        other => panic!("expected Crashed, got {other:?}"),
    }
}

#[tokio::test]
async fn a_crash_while_starting_fails_the_waiting_calls_at_once_and_says_why() {
    let fake = fake().await;
    fake.crash_starts(true);
    // A long start timeout: the exit, not the timeout, must end the wait.
    let pool = pool_with_timeout(&fake, &[], Duration::from_secs(30)).await;
    let r = route("crashy", 1, 4, 3);
    let began = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let (pool, r) = (pool.clone(), r.clone());
            tokio::spawn(async move { pool.lease(&r).await })
        })
        .collect();
    for c in calls {
        let (exit, backoff) = crashed(c.await.unwrap());
        assert_eq!(exit.code, Some(3));
        assert_eq!(exit.output, "boom\n");
        assert!(backoff.is_some(), "a crash at start holds the next start");
    }
    assert!(
        began.elapsed() < Duration::from_millis(900),
        "the waiting calls failed {:?} after the call",
        began.elapsed()
    );
    assert_eq!(fake.starts(), 1, "three waiting calls, one start");
    eventually(WITHIN, "the exited container is removed", || async {
        !fake.removed().is_empty()
    })
    .await;
    assert_eq!(
        fake.removed(),
        ["crashy-1-0"],
        "the exited container is removed"
    );
    let err = pool.lease(&r).await.unwrap_err().to_string();
    assert!(
        err.contains("exited with code 3") && err.contains("boom") && err.contains("next is tried"),
        "{err}"
    );
    let crashes = pool.next_crashes().await;
    assert_eq!(crashes.len(), 1, "{crashes:?}");
    assert_eq!(crashes[0].function, "crashy");
    assert_eq!(crashes[0].exit.code, Some(3));
    assert!(crashes[0].during_start);
    let counted = containerpub_pool::metrics::METRICS
        .crashes
        .with_label_values(&["crashy"])
        .get();
    assert_eq!(counted, 1);
}

#[tokio::test]
async fn repeated_crashes_back_off_and_calls_fail_fast_meanwhile() {
    let fake = fake().await;
    fake.crash_starts(true);
    let pool = pool(&fake).await;
    let r = route("storm", 1, 1, 10);
    // Calls for 2.5 s: without a back-off each would start a container.
    let until = Instant::now() + Duration::from_millis(2500);
    let mut calls = 0;
    while Instant::now() < until {
        let began = Instant::now();
        let (exit, _) = crashed(pool.lease(&r).await);
        assert_eq!(exit.code, Some(3));
        assert!(began.elapsed() < Duration::from_millis(900));
        calls += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(calls > 20, "{calls} calls");
    // Crash 1 at ~0 s holds 1 s, crash 2 at ~1 s holds 2 s: two starts.
    assert!(
        (2..=3).contains(&fake.starts()),
        "{} starts for {calls} calls in 2.5 s",
        fake.starts()
    );
    // A fixed version (a new deployment) starts at once.
    fake.crash_starts(false);
    let fixed = route("storm", 2, 1, 10);
    pool.sync(std::slice::from_ref(&fixed));
    let lease = pool.lease(&fixed).await.unwrap();
    assert!(lease.instance_id().starts_with("storm-2-"));
}

#[tokio::test]
async fn a_crash_is_seen_even_when_its_event_is_lost() {
    let fake = fake().await;
    fake.crash_starts(true);
    fake.silent_deaths(true);
    let pool = pool_with_timeout(&fake, &[], Duration::from_secs(30)).await;
    let began = Instant::now();
    let (exit, _) = crashed(pool.lease(&route("quiet", 1, 4, 3)).await);
    assert_eq!(exit.code, Some(3));
    assert!(
        began.elapsed() < EXIT_POLL + Duration::from_millis(900),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn a_serving_instance_that_dies_is_a_crash_but_is_replaced_at_once() {
    let fake = fake().await;
    let pool = pool(&fake).await;
    let r = route("killed", 1, 4, 3);
    let id = pool.lease(&r).await.unwrap().instance_id().to_owned();
    fake.set_exit(
        &id,
        Exit {
            code: Some(137),
            output: String::new(),
            oom_killed: false,
        },
    );
    fake.send_died(&id);
    eventually(WITHIN, "the dead instance is removed", || async {
        fake.removed().contains(&id)
    })
    .await;
    let crashes = pool.next_crashes().await;
    assert_eq!(crashes[0].exit.code, Some(137));
    assert!(!crashes[0].during_start);
    // A first crash of an instance that had served holds nothing back.
    let next = pool.lease(&r).await.unwrap();
    assert_eq!(next.start_kind(), StartKind::Cold);
}

#[tokio::test]
async fn a_scaling_change_on_the_same_image_keeps_the_running_instances() {
    let fake = fake().await;
    let pool = pool(&fake).await;
    let v1 = route_with("f", 1, "concurrency = 1\nmax_instances = 3");
    pool.sync(std::slice::from_ref(&v1));
    let handle = pool.handle(&v1);
    let held = handle.lease().await.unwrap();
    let first = held.instance_id().to_owned();
    assert!(
        handle.try_lease().is_none(),
        "concurrency 1: no second slot"
    );
    // `cpub scale f --concurrency 2 --min 2`: version 2, same image.
    let mut v2 = route_with(
        "f",
        2,
        "concurrency = 2\nmax_instances = 3\nmin_instances = 2",
    );
    v2.image = v1.image.clone();
    pool.sync(std::slice::from_ref(&v2));
    let second = handle.try_lease().expect("concurrency 2 applies at once");
    assert_eq!(
        second.instance_id(),
        first,
        "the running instance serves on"
    );
    eventually(WITHIN, "min_instances 2 starts one more", || async {
        pool.instances().len() == 2
    })
    .await;
    assert!(fake.removed().is_empty(), "{:?}", fake.removed());
    assert!(
        pool.instances().iter().all(|i| i.deployment_id == 2),
        "{:?}",
        pool.instances()
    );
    drop((held, second));
    // An environment change on the same image needs new instances: they
    // warm up, then the old ones leave.
    let mut v3 = v2.clone();
    v3.deployment_id = 3;
    v3.config.env.insert("GREETING".into(), "bonjour".into());
    pool.sync(std::slice::from_ref(&v3));
    eventually(WITHIN, "v3 replaces every instance", || async {
        let all = pool.instances();
        !all.is_empty() && all.iter().all(|i| i.deployment_id == 3 && i.id != first)
    })
    .await;
    eventually(WITHIN, "the old instances are removed", || async {
        fake.removed().contains(&first)
    })
    .await;
}

#[tokio::test]
async fn an_instance_killed_for_memory_is_counted_once_for_the_node_report() {
    let fake = fake().await;
    let pool = pool(&fake).await;
    let r = route("oom-killed", 1, 4, 3);
    let id = pool.lease(&r).await.unwrap().instance_id().to_owned();
    fake.set_exit(
        &id,
        Exit {
            code: Some(137),
            output: String::new(),
            oom_killed: true,
        },
    );
    fake.send_died(&id);
    let crashes = pool.next_crashes().await;
    assert!(crashes[0].exit.oom_killed);
    assert!(
        crashes[0].exit.to_string().contains("killed for memory"),
        "{}",
        crashes[0].exit
    );
    let deaths = pool.take_deaths();
    assert_eq!(deaths.len(), 1);
    assert_eq!(
        (
            deaths[0].function.as_str(),
            deaths[0].id.as_str(),
            deaths[0].oom_killed
        ),
        ("oom-killed", id.as_str(), true)
    );
    assert!(pool.take_deaths().is_empty(), "taken once");
    let counters = pool.function_counters();
    let f = counters
        .iter()
        .find(|c| c.function == "oom-killed")
        .unwrap();
    assert_eq!(f.restarts, 1, "{f:?}");
}

#[tokio::test]
async fn an_instance_that_died_under_a_call_is_a_crash() {
    let fake = fake().await;
    let pool = pool(&fake).await;
    let r = route("died-under-call", 1, 4, 3);
    let lease = pool.lease(&r).await.unwrap();
    let id = lease.instance_id().to_owned();
    // Its process exited (no `died` event yet); the call's connection failed.
    fake.set_exit(
        &id,
        Exit {
            code: Some(137),
            output: String::new(),
            oom_killed: false,
        },
    );
    lease.mark_failed();
    drop(lease);
    let crashes = pool.next_crashes().await;
    assert_eq!(crashes[0].exit.code, Some(137));
    assert!(!crashes[0].during_start);
    eventually(WITHIN, "the dead instance is removed", || async {
        fake.removed().contains(&id)
    })
    .await;
    let deaths = pool.take_deaths();
    assert_eq!(deaths.len(), 1);
    assert_eq!(deaths[0].id, id);
    assert!(!deaths[0].oom_killed);
}
