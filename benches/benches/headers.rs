//! Per-request header work of the proxy: the `x-request-id` choice
//! (`request_id::pick`: keep a sane incoming id, else generate one), parsing
//! a request head in place (`h1::parse_request`), writing the head sent to
//! the instance (`h1::write_request_head`: path, hop-by-hop fields dropped,
//! `x-request-id`, `x-forwarded-for`, `x-forwarded-proto`), writing the
//! answer's head for the client (`h1::write_response_head`) and the
//! `server-timing` value (`service::server_timing`).

use std::hint::black_box;
use std::time::Duration;

use containerpub_proxy::h1::{self, Answering, Forwarding, Framing};
use containerpub_proxy::service::server_timing;
use containerpub_proxy::{path, request_id};
use criterion::{Criterion, criterion_group, criterion_main};

/// A client request head as it arrives: a few ordinary fields, optionally
/// with an `x-forwarded-for` from a front proxy.
fn client_request(forwarded_for: Option<&str>) -> Vec<u8> {
    let mut head = String::from(
        "POST /fn/orders-17/v1/items/42?page=2 HTTP/1.1\r\nhost: fn.example.test\r\n\
user-agent: curl/8.5.0\r\naccept: application/json\r\ncontent-type: application/json\r\n\
content-length: 128\r\nconnection: keep-alive\r\n",
    );
    if let Some(v) = forwarded_for {
        head.push_str(&format!("x-forwarded-for: {v}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

const UPSTREAM_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
content-length: 24\r\ndate: Sat, 28 Nov 2026 15:00:00 GMT\r\n\r\n";

fn headers(c: &mut Criterion) {
    let mut group = c.benchmark_group("headers");

    group.bench_function("request_id/keep_incoming", |b| {
        b.iter(|| request_id::pick(black_box(Some(b"0f8e2c1a-5b8d-4e3f-9a7c-2d1e0b9f8a7c"))))
    });
    group.bench_function("request_id/generate", |b| {
        b.iter(|| request_id::pick(black_box(None)))
    });
    group.bench_function("request_id/replace_insane", |b| {
        b.iter(|| request_id::pick(black_box(Some(b"a\r\nx-evil: 1"))))
    });

    let mut fields = Vec::new();
    let mut out = Vec::with_capacity(16 * 1024);
    for (label, prior) in [("no_xff", None), ("append_xff", Some("203.0.113.9"))] {
        let raw = client_request(prior);
        group.bench_function(format!("parse_request/{label}"), |b| {
            b.iter(|| h1::parse_request(black_box(&raw), &mut fields).expect("valid head"))
        });
        let line = h1::parse_request(&raw, &mut fields)
            .expect("valid head")
            .expect("complete head");
        group.bench_function(format!("write_request_head/{label}"), |b| {
            b.iter(|| {
                out.clear();
                h1::write_request_head(
                    &mut out,
                    black_box(&raw),
                    &line,
                    &fields,
                    Framing::Length(128),
                    &Forwarding {
                        path: "/v1/items/42?page=2",
                        request_id: b"0f8e2c1a5b8d4e3f9a7c2d1e0b9f8a7c",
                        traceparent: b"",
                        client_ip: b"10.88.0.1",
                        upgrade: false,
                    },
                );
                out.len()
            })
        });
    }

    // Everything the proxy does to the request head of one call, in order:
    // parse it, pick the id, parse the path, write the instance's head.
    let raw = client_request(Some("203.0.113.9"));
    group.bench_function("per_call_pipeline", |b| {
        b.iter(|| {
            let line = h1::parse_request(black_box(&raw), &mut fields)
                .expect("valid head")
                .expect("complete head");
            let sem = h1::request_semantics(&raw, line.minor, &fields).expect("valid");
            let incoming = fields
                .iter()
                .find(|f| f.kind == h1::Name::XRequestId)
                .map(|f| &raw[f.value.clone()]);
            let id = request_id::pick(incoming);
            let target = std::str::from_utf8(&raw[line.target.clone()]).expect("ascii");
            let (p, q) = target.split_once('?').expect("has a query");
            let invocation = path::parse(p, Some(q)).expect("valid path");
            out.clear();
            h1::write_request_head(
                &mut out,
                &raw,
                &line,
                &fields,
                sem.framing,
                &Forwarding {
                    path: &invocation.upstream,
                    request_id: id.as_bytes(),
                    traceparent: b"",
                    client_ip: b"10.88.0.1",
                    upgrade: false,
                },
            );
            out.len()
        })
    });

    let mut ufields = Vec::new();
    let status = h1::parse_response(UPSTREAM_ANSWER, &mut ufields)
        .expect("valid head")
        .expect("complete head");
    group.bench_function("write_response_head", |b| {
        b.iter(|| {
            out.clear();
            h1::write_response_head(
                &mut out,
                black_box(UPSTREAM_ANSWER),
                &status,
                &ufields,
                &Answering {
                    request_id: b"0f8e2c1a5b8d4e3f9a7c2d1e0b9f8a7c",
                    server_timing:
                        b"queue;dur=0.000, start;desc=\"warm\";dur=0.000, upstream;dur=0.412",
                    close: false,
                    keep_alive_1_0: false,
                    http_1_0: false,
                    upgraded: false,
                },
            );
            out.len()
        })
    });

    group.bench_function("server_timing", |b| {
        b.iter(|| {
            out.clear();
            server_timing(
                &mut out,
                black_box(Duration::from_micros(12)),
                black_box("warm"),
                black_box(Duration::ZERO),
                black_box(Duration::from_micros(900)),
            );
            out.len()
        })
    });
    group.finish();
}

criterion_group!(benches, headers);
criterion_main!(benches);
