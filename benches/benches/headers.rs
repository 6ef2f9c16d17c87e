//! Per-request header work of the proxy: the `x-request-id` choice
//! (`request_id::pick`: keep a sane incoming id, else generate one), the
//! upstream request rewrite (`service::rewrite_upstream_request`: path,
//! `x-request-id`, `x-forwarded-for`, `x-forwarded-proto`) and the
//! `server-timing` value (`service::server_timing`).

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use containerpub_proxy::service::{rewrite_upstream_request, server_timing};
use containerpub_proxy::{path, request_id};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use pingora::http::RequestHeader;

/// A client request as pingora hands it to the proxy: a few ordinary
/// headers, optionally with an `x-forwarded-for` from a front proxy.
fn client_request(forwarded_for: Option<&str>) -> RequestHeader {
    let mut req = RequestHeader::build("POST", b"/fn/orders-17/v1/items/42?page=2", None)
        .expect("valid request");
    for (name, value) in [
        ("host", "fn.example.test"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("content-length", "128"),
    ] {
        req.insert_header(name, value).expect("valid header");
    }
    if let Some(v) = forwarded_for {
        req.insert_header("x-forwarded-for", v)
            .expect("valid header");
    }
    req
}

fn headers(c: &mut Criterion) {
    let mut group = c.benchmark_group("headers");
    let client: IpAddr = "10.88.0.1".parse().expect("valid ip");

    group.bench_function("request_id/keep_incoming", |b| {
        b.iter(|| request_id::pick(black_box(Some(b"0f8e2c1a-5b8d-4e3f-9a7c-2d1e0b9f8a7c"))))
    });
    group.bench_function("request_id/generate", |b| {
        b.iter(|| request_id::pick(black_box(None)))
    });
    group.bench_function("request_id/replace_insane", |b| {
        b.iter(|| request_id::pick(black_box(Some(b"a\r\nx-evil: 1"))))
    });

    // The clone of the client request is setup, not measured.
    for (label, prior) in [("no_xff", None), ("append_xff", Some("203.0.113.9"))] {
        let req = client_request(prior);
        group.bench_function(format!("rewrite_upstream/{label}"), |b| {
            b.iter_batched(
                || req.clone(),
                |mut upstream| {
                    rewrite_upstream_request(
                        &mut upstream,
                        black_box("/v1/items/42?page=2"),
                        black_box("0f8e2c1a5b8d4e3f9a7c2d1e0b9f8a7c"),
                        Some(client),
                    )
                    .expect("rewrite");
                    upstream
                },
                BatchSize::SmallInput,
            )
        });
    }

    // Everything the proxy does to the headers of one call, in order:
    // pick the id, parse the path, rewrite the upstream request.
    let req = client_request(Some("203.0.113.9"));
    group.bench_function("per_call_pipeline", |b| {
        b.iter_batched(
            || req.clone(),
            |mut upstream| {
                let id = request_id::pick(
                    upstream
                        .headers
                        .get(request_id::HEADER)
                        .map(|v| v.as_bytes()),
                );
                let invocation =
                    path::parse(upstream.uri.path(), upstream.uri.query()).expect("valid path");
                rewrite_upstream_request(&mut upstream, &invocation.upstream, &id, Some(client))
                    .expect("rewrite");
                upstream
            },
            BatchSize::SmallInput,
        )
    });

    group.bench_function("server_timing", |b| {
        b.iter(|| {
            server_timing(
                black_box(Duration::from_micros(12)),
                black_box("warm"),
                black_box(Duration::ZERO),
                black_box(Duration::from_micros(900)),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, headers);
criterion_main!(benches);
