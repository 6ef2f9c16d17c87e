//! Lease acquire and release on a warm instance: `Pool::lease` of a route
//! whose one ready instance has slots to spare, then dropping the `Lease`.
//! The pool runs on a fake runtime (no Podman): this measures pool policy
//! and its locks, not containers.
//!
//! `single` is one task doing lease/drop in a loop. `contended/{n}` is `n`
//! tasks on an `n`-worker runtime doing the same against the same function;
//! one iteration there is one lease/drop by each task (throughput is given
//! in leases per second).

use std::sync::Arc;
use std::time::{Duration, Instant};

use containerpub_benches::{FakeRuntime, route};
use containerpub_pool::{ContainerRuntime, InstanceState, Pool, PoolConfig};
use containerpub_wire::api::Route;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use tokio::sync::Barrier;

/// Longest wait for the fake instance to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A runtime of `workers` threads and a pool on it whose route has one
/// ready instance with room for far more calls than the bench makes at once.
fn warm_pool(workers: usize) -> (Runtime, Pool, Route) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let route = route(
        "bench-fn",
        "min_instances = 1\nmax_instances = 1\nconcurrency = 10000\n\
         idle_pause_s = 86400\nidle_stop_s = 86400",
    );
    let pool = rt.block_on(async {
        let runtime: Arc<dyn ContainerRuntime> = Arc::new(FakeRuntime::new().await);
        let config = PoolConfig {
            node: "bench".into(),
            start_timeout: Duration::from_secs(5),
        };
        let pool = Pool::with_runtime(runtime, config, std::slice::from_ref(&route))
            .await
            .expect("pool on the fake runtime");
        let until = Instant::now() + READY_TIMEOUT;
        while !pool
            .instances()
            .iter()
            .any(|i| i.state == InstanceState::Ready)
        {
            assert!(Instant::now() < until, "fake instance never became ready");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        pool
    });
    (rt, pool, route)
}

/// `iters` lease/drop rounds in each of `tasks` tasks started together;
/// the wall time from the common start to the last task's end.
fn run(rt: &Runtime, pool: &Pool, route: &Route, tasks: usize, iters: u64) -> Duration {
    rt.block_on(async {
        let barrier = Arc::new(Barrier::new(tasks + 1));
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (pool, route, barrier) = (pool.clone(), route.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    for _ in 0..iters {
                        let lease = pool.lease(&route).await.expect("a free slot");
                        drop(std::hint::black_box(lease));
                    }
                })
            })
            .collect();
        barrier.wait().await;
        let started = Instant::now();
        for h in handles {
            h.await.expect("bench task");
        }
        started.elapsed()
    })
}

fn lease(c: &mut Criterion) {
    let mut group = c.benchmark_group("lease");

    let (rt, pool, route) = warm_pool(1);
    group.throughput(Throughput::Elements(1));
    group.bench_function("single", |b| {
        b.iter_custom(|iters| run(&rt, &pool, &route, 1, iters))
    });
    drop((pool, rt));

    for tasks in [2, 8] {
        let (rt, pool, route) = warm_pool(tasks);
        group.throughput(Throughput::Elements(tasks as u64));
        group.bench_function(format!("contended/{tasks}"), |b| {
            b.iter_custom(|iters| run(&rt, &pool, &route, tasks, iters))
        });
    }
    group.finish();
}

criterion_group!(benches, lease);
criterion_main!(benches);
