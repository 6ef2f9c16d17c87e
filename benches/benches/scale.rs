//! Lease and route cost against node scale (issue 15): the same warm lease
//! (`FunctionHandle::lease` + drop) and the same route lookup
//! (`Routes::get`) on a node with 1 function and 1 live instance, and on
//! one with 1,000 functions and 1,000 live instances (each function's
//! `min_instances = 1`, on the fake runtime). Goal: at most 5% over the
//! 1-function figure.
//!
//! - `lease/one_of_{1,1000}`: lease/drop of one function's handle.
//! - `lease/rotate_1000`: lease/drop of the 1,000 functions' handles in a
//!   shuffled order (the proxy's shape: every call another function).
//! - `route/get_one_of_{1,1000}`, `route/rotate_1000`: the same for the
//!   route table.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerpub_benches::{function_names, route, route_table, shuffled};
use containerpub_pool::testing::FakeRuntime;
use containerpub_pool::{ContainerRuntime, FunctionHandle, InstanceState, Pool, PoolConfig};
use containerpub_proxy::routes::Routes;
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::runtime::Runtime;

const SCALING: &str = "min_instances = 1\nmax_instances = 1\nconcurrency = 10000\n\
                       idle_pause_s = 86400\nidle_stop_s = 86400";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A one-worker runtime and a pool with `n` functions, each with one ready
/// instance; their handles.
fn node(n: usize) -> (Runtime, Pool, Vec<FunctionHandle>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let routes: Vec<_> = (0..n)
        .map(|i| route(&format!("scale-fn-{i}"), SCALING))
        .collect();
    let (pool, handles) = rt.block_on(async {
        let runtime: Arc<dyn ContainerRuntime> = Arc::new(FakeRuntime::new().await);
        let config = PoolConfig {
            node: "bench-scale".into(),
            start_timeout: Duration::from_secs(10),
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
            < n
        {
            assert!(Instant::now() < until, "fake instances never became ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let handles = routes.iter().map(|r| pool.handle(r)).collect();
        (pool, handles)
    });
    (rt, pool, handles)
}

/// `iters` lease/drops walking `handles` in `order` (one task).
fn leases(rt: &Runtime, handles: &[FunctionHandle], order: &[usize], iters: u64) -> Duration {
    rt.block_on(async {
        let started = Instant::now();
        let mut i = 0;
        for _ in 0..iters {
            let lease = handles[order[i]].lease().await.expect("a free slot");
            drop(black_box(lease));
            i += 1;
            if i == order.len() {
                i = 0;
            }
        }
        started.elapsed()
    })
}

fn scale(c: &mut Criterion) {
    let mut group = c.benchmark_group("scale");
    let (rt1, pool1, one) = node(1);
    let (rt1k, pool1k, thousand) = node(1_000);
    let rotate = shuffled(1_000);
    // Alternated: both figures of one kind are taken minutes apart at most.
    group.bench_function("lease/one_of_1", |b| {
        b.iter_custom(|iters| leases(&rt1, &one, &[0], iters))
    });
    group.bench_function("lease/one_of_1000", |b| {
        b.iter_custom(|iters| leases(&rt1k, &thousand, &[500], iters))
    });
    group.bench_function("lease/rotate_1000", |b| {
        b.iter_custom(|iters| leases(&rt1k, &thousand, &rotate, iters))
    });

    let names1 = function_names(1);
    let names1k = function_names(1_000);
    let routes1 = Routes::new(&route_table(&names1));
    let routes1k = Routes::new(&route_table(&names1k));
    group.bench_function("route/get_one_of_1", |b| {
        b.iter(|| black_box(routes1.get(black_box(&names1[0]))))
    });
    group.bench_function("route/get_one_of_1000", |b| {
        b.iter(|| black_box(routes1k.get(black_box(&names1k[500]))))
    });
    let mut i = 0;
    group.bench_function("route/rotate_1000", |b| {
        b.iter(|| {
            i = (i + 1) % rotate.len();
            black_box(routes1k.get(black_box(&names1k[rotate[i]])))
        })
    });
    group.finish();
    rt1.block_on(pool1.remove_all());
    rt1k.block_on(pool1k.remove_all());
}

criterion_group!(benches, scale);
criterion_main!(benches);
