//! The key check of a private function (`containerpub_proxy::access::check`)
//! on a parsed request head: a public function (the baseline: one
//! comparison), a private one with its key in `x-cpub-key` or
//! `Authorization: Bearer` against 1 and 32 live keys, and a wrong key.
//! A signed call's head check (`containerpub_proxy::signing::check_at`:
//! header parse, key lookup, HMAC-SHA256 over the canonical string, replay
//! cache lookup) on a function with `[access] auth = "signature"`.
//! Each run re-parses the head (the check removes the key's field), so
//! `parse_request` alone is measured too, to subtract.

use std::hint::black_box;
use std::time::Duration;

use containerpub_proxy::{access, h1};
use containerpub_wire::Manifest;
use containerpub_wire::api::Route;
use containerpub_wire::private::KeyDigest;
use criterion::{Criterion, criterion_group, criterion_main};
use sha2::{Digest, Sha256};

const KEY: &str = "cpk_5f1d0c9e8b7a6f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6";

fn route(visibility: &str, keys: usize) -> Route {
    let text = format!("name = \"f\"\nruntime = \"container\"\nvisibility = \"{visibility}\"\n");
    let mut digests: Vec<KeyDigest> = (1..keys)
        .map(|i| KeyDigest(Sha256::digest(format!("other-{i}")).into()))
        .collect();
    if keys > 0 {
        digests.push(KeyDigest(Sha256::digest(KEY).into()));
    }
    Route {
        function: "f".into(),
        deployment_id: 1,
        version: 1,
        image: "img".into(),
        config: Manifest::parse(&text).expect("bench manifest"),
        keys: digests,
        secrets: Vec::new(),
        signing_keys: Vec::new(),
    }
}

fn head(key_field: &str) -> Vec<u8> {
    format!(
        "GET /fn/f/v1/items HTTP/1.1\r\nhost: fn.example.test\r\nuser-agent: bench\r\n\
accept: application/json\r\n{key_field}connection: keep-alive\r\n\r\n"
    )
    .into_bytes()
}

fn access(c: &mut Criterion) {
    let mut group = c.benchmark_group("access");
    let mut fields = Vec::new();
    let plain = head("");
    group.bench_function("parse_only", |b| {
        b.iter(|| h1::parse_request(black_box(&plain), &mut fields).expect("valid head"))
    });
    let public = route("public", 0);
    group.bench_function("public", |b| {
        b.iter(|| {
            h1::parse_request(black_box(&plain), &mut fields).expect("valid head");
            access::check(&plain, &mut fields, black_box(&public))
        })
    });
    let cases = [
        ("x_cpub_key/1_key", format!("x-cpub-key: {KEY}\r\n"), 1),
        ("x_cpub_key/32_keys", format!("x-cpub-key: {KEY}\r\n"), 32),
        (
            "bearer/1_key",
            format!("authorization: Bearer {KEY}\r\n"),
            1,
        ),
        (
            "wrong_key/32_keys",
            format!("x-cpub-key: {}\r\n", &KEY.replace('5', "6")),
            32,
        ),
    ];
    for (label, field, keys) in cases {
        let raw = head(&field);
        let route = route("private", keys);
        group.bench_function(label, |b| {
            b.iter(|| {
                h1::parse_request(black_box(&raw), &mut fields).expect("valid head");
                access::check(&raw, &mut fields, black_box(&route))
            })
        });
    }
    let text = "name = \"f\"\nruntime = \"container\"\n[access]\nauth = \"signature\"\n";
    let mut signed_route = route("private", 0);
    signed_route.config = Manifest::parse(text).expect("bench manifest");
    let secret = "cpss_5f1d0c9e8b7a6f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6";
    signed_route.signing_keys = vec![containerpub_wire::signing::SigningKey {
        id: "sk_00112233aabbccdd".into(),
        secret: containerpub_wire::private::SecretValue(secret.into()),
    }];
    let now = 1_800_000_000;
    let value = containerpub_wire::signing::header_value(
        "sk_00112233aabbccdd",
        secret.as_bytes(),
        "GET",
        "/fn/f/v1/items",
        now,
        b"",
    );
    let raw = head(&format!("x-cpub-signature: {value}\r\n"));
    group.bench_function("signature/head_check", |b| {
        b.iter(|| {
            let line = h1::parse_request(black_box(&raw), &mut fields)
                .expect("valid head")
                .expect("whole head");
            containerpub_proxy::signing::check_at(
                &raw,
                &line,
                &mut fields,
                black_box(&signed_route),
                now,
            )
            .expect("a valid signature")
        })
    });
    let body = vec![b'x'; 64 * 1024];
    group.bench_function("signature/body_digest_64KiB", |b| {
        b.iter(|| containerpub_wire::signing::body_digest(black_box(&body)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = access
}
criterion_main!(benches);
