//! Lease acquire and release on warm instances: `FunctionHandle::lease` of
//! a function whose one ready instance has slots to spare (the handle
//! resolved once, as the proxy keeps it in its route entry), then dropping
//! the `Lease`. The pool runs on the fake runtime of `containerpub-pool`'s
//! `test-util` feature (no Podman): this measures pool policy and its
//! locks, not containers.
//!
//! - `single`: one task doing lease/drop in a loop.
//! - `contended/{n}`: `n` tasks on an `n`-worker runtime doing the same
//!   against the same function; one iteration is one lease/drop by each task
//!   (throughput is given in leases per second).
//! - `functions/{f}`: two tasks on a two-worker runtime, each leasing the
//!   `f` functions' instances in its own shuffled order — the proxy's shape
//!   (both workers, many functions). Anything the lease path shares between
//!   functions shows here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use containerpub_benches::{route, shuffled};
use containerpub_pool::testing::FakeRuntime;
use containerpub_pool::{ContainerRuntime, FunctionHandle, InstanceState, Pool, PoolConfig};
use containerpub_wire::api::Route;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use tokio::sync::Barrier;

/// Longest wait for the fake instances to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Functions of `functions/{f}`.
const FUNCTIONS: usize = 64;
/// Scaling of every bench function: one instance, always warm, with room
/// for far more calls than the bench makes at once.
const SCALING: &str = "min_instances = 1\nmax_instances = 1\nconcurrency = 10000\n\
                       idle_pause_s = 86400\nidle_stop_s = 86400";

/// A runtime of `workers` threads and a pool on it with `functions` routes,
/// each with one ready instance.
fn warm_pool(workers: usize, functions: usize) -> (Runtime, Pool, Vec<Route>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let routes: Vec<Route> = (0..functions)
        .map(|i| route(&format!("bench-fn-{i}"), SCALING))
        .collect();
    let pool = rt.block_on(async {
        let runtime: Arc<dyn ContainerRuntime> = Arc::new(FakeRuntime::new().await);
        let config = PoolConfig {
            node: "bench".into(),
            start_timeout: Duration::from_secs(5),
        };
        let pool = Pool::with_runtime(runtime, config, &routes)
            .await
            .expect("pool on the fake runtime");
        let until = Instant::now() + READY_TIMEOUT;
        while pool
            .instances()
            .iter()
            .filter(|i| i.state == InstanceState::Ready)
            .count()
            < functions
        {
            assert!(Instant::now() < until, "fake instances never became ready");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        pool
    });
    (rt, pool, routes)
}

/// `iters` rounds in each of `tasks` tasks started together, a round being
/// one lease/drop of every route in the task's order; the wall time from
/// the common start to the last task's end.
fn run(rt: &Runtime, pool: &Pool, routes: &[Route], tasks: usize, iters: u64) -> Duration {
    rt.block_on(async {
        let barrier = Arc::new(Barrier::new(tasks + 1));
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                // Each task its own order, so the two workers do not walk
                // the functions in step.
                let mut order = shuffled(routes.len() + t);
                order.retain(|&i| i < routes.len());
                let handles: Vec<FunctionHandle> =
                    order.iter().map(|&i| pool.handle(&routes[i])).collect();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    for _ in 0..iters {
                        for handle in &handles {
                            let lease = handle.lease().await.expect("a free slot");
                            drop(std::hint::black_box(lease));
                        }
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

    let (rt, pool, routes) = warm_pool(1, 1);
    group.throughput(Throughput::Elements(1));
    group.bench_function("single", |b| {
        b.iter_custom(|iters| run(&rt, &pool, &routes, 1, iters))
    });
    drop((pool, rt));

    for tasks in [2, 8] {
        let (rt, pool, routes) = warm_pool(tasks, 1);
        group.throughput(Throughput::Elements(tasks as u64));
        group.bench_function(format!("contended/{tasks}"), |b| {
            b.iter_custom(|iters| run(&rt, &pool, &routes, tasks, iters))
        });
    }

    let functions = FUNCTIONS;
    let (rt, pool, routes) = warm_pool(2, functions);
    group.throughput(Throughput::Elements(2 * functions as u64));
    group.bench_function(format!("functions/{functions}"), |b| {
        b.iter_custom(|iters| run(&rt, &pool, &routes, 2, iters))
    });
    group.finish();
}

criterion_group!(benches, lease);
criterion_main!(benches);
