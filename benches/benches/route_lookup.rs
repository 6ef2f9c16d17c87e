//! Route lookup with 10,000 functions: the proxy's route table
//! (`routes::Routes`) and its `/fn/{name}/…` path parsing (`path::parse`),
//! alone and together as `request_filter` does them on every call.

use std::hint::black_box;

use containerpub_benches::{function_names, route_table, shuffled};
use containerpub_proxy::path;
use containerpub_proxy::routes::Routes;
use criterion::{Criterion, criterion_group, criterion_main};

const FUNCTIONS: usize = 10_000;

fn route_lookup(c: &mut Criterion) {
    let names = function_names(FUNCTIONS);
    let routes = Routes::new(&route_table(&names));
    let order = shuffled(FUNCTIONS);
    let paths: Vec<String> = order
        .iter()
        .map(|&i| format!("/fn/{}/v1/items/42", names[i]))
        .collect();

    let mut group = c.benchmark_group("route_lookup");

    let mut i = 0;
    group.bench_function("get_hit_10k", |b| {
        b.iter(|| {
            i = (i + 1) % FUNCTIONS;
            black_box(routes.get(black_box(&names[order[i]])))
        })
    });
    group.bench_function("get_miss_10k", |b| {
        b.iter(|| black_box(routes.get(black_box("no-such-function"))))
    });

    group.bench_function("parse/plain", |b| {
        b.iter(|| path::parse(black_box("/fn/orders-17/v1/items/42"), black_box(None)))
    });
    group.bench_function("parse/query", |b| {
        b.iter(|| {
            path::parse(
                black_box("/fn/orders-17/v1/items/42"),
                black_box(Some("page=2&sort=desc")),
            )
        })
    });
    group.bench_function("parse/bare_name", |b| {
        b.iter(|| path::parse(black_box("/fn/orders-17"), black_box(None)))
    });
    group.bench_function("parse/percent_encoded_name", |b| {
        b.iter(|| path::parse(black_box("/fn/%6frders-17/v1/items/42"), black_box(None)))
    });
    group.bench_function("parse/not_invocation", |b| {
        b.iter(|| path::parse(black_box("/healthz"), black_box(None)))
    });

    let mut i = 0;
    group.bench_function("parse_and_get_hit_10k", |b| {
        b.iter(|| {
            i = (i + 1) % FUNCTIONS;
            let invocation = path::parse(black_box(&paths[i]), Some("x=1")).expect("valid path");
            black_box((routes.get(&invocation.name), invocation.upstream))
        })
    });
    group.finish();
}

criterion_group!(benches, route_lookup);
criterion_main!(benches);
