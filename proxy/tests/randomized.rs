//! Seeded randomized tests of the proxy's HTTP/1.1 pieces: for each
//! target, `CASES` inputs (1 million by default; `CPUB_RANDOMIZED_CASES`
//! overrides, `CPUB_RANDOMIZED_SEED` picks another seed) made by mutating
//! valid requests, answers, chunked bodies and paths (byte flips; CR, LF,
//! SP, HTAB, NUL, obs-text and separator insertions; header line
//! duplication; size tweaks; dictionary tokens; truncation) and as random
//! bytes. Each input goes through the checks of `support/oracle.rs`: no
//! panic, and agreement with the reference readings (httparse, the strict
//! RFC 9112 parser, fnhttp) on whether a message is accepted and where it
//! ends. A small xorshift generator: no dependency, same inputs every run.
//!
//! The coverage-guided counterparts are in `proxy/fuzz/` (`scripts/fuzz.sh`).

mod support;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;
use std::time::Instant;

use support::oracle;

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

const DEFAULT_CASES: u64 = 1_000_000;
const DEFAULT_SEED: u64 = 0x5eed_cafe_f00d_0001;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Bytes a mutation inserts: line ends, whitespace, NUL, obs-text,
/// separators.
const SPECIAL: &[u8] = &[
    b'\r', b'\n', b' ', b'\t', 0, 0x0b, 0x0c, 0x7f, 0x80, 0x85, 0xa0, 0xc3, 0xe9, 0xff, b',', b':',
    b';', b'"', b'=', b'/', b'?', b'%', b'0', b'f', b'\\',
];

/// Tokens a mutation inserts.
const DICTIONARY: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"transfer-encoding: gzip, chunked\r\n",
    b"Content-Length: 5\r\n",
    b"content-length: 0\r\n",
    b"Content-Length: 18446744073709551616\r\n",
    b"Host: x\r\n",
    b"Connection: close, host\r\n",
    b"Connection: upgrade\r\nUpgrade: ws\r\n",
    b"Expect: 100-continue\r\n",
    b"chunked",
    b", chunked",
    b"0\r\n\r\n",
    b"0\r\nX: a\n\n",
    b";ext=\"v\"",
    b"000000000000000001",
    b"ffffffffffffffff",
    b" HTTP/1.0",
    b"http://h",
    b"/fn/",
    b"%2F",
    b"\xc3\xa9",
];

/// One mutated input from `seed`.
fn mutate(rng: &mut Rng, seeds: &[&[u8]]) -> Vec<u8> {
    if rng.below(10) == 0 {
        let n = rng.below(160);
        return (0..n).map(|_| rng.next() as u8).collect();
    }
    let mut d = rng.pick(seeds).to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(d.len() + 1);
        match rng.below(8) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] = rng.next() as u8;
            }
            2 => d.insert(at, *rng.pick(SPECIAL)),
            3 => {
                let tok = *rng.pick(DICTIONARY);
                d.splice(at..at, tok.iter().copied());
            }
            4 if !d.is_empty() => {
                // Delete a short range.
                let end = (at + 1 + rng.below(4)).min(d.len());
                let at = at.min(end);
                d.drain(at..end);
            }
            5 => {
                // Duplicate a line.
                let lines: Vec<usize> = d
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| **b == b'\n')
                    .map(|(i, _)| i + 1)
                    .collect();
                if lines.len() >= 2 {
                    let k = rng.below(lines.len() - 1);
                    let line = d[lines[k]..lines[k + 1]].to_vec();
                    d.splice(lines[k]..lines[k], line);
                }
            }
            6 => {
                // Tweak a size: the digits after `at` become another number.
                if let Some(start) = d[at.min(d.len())..]
                    .iter()
                    .position(u8::is_ascii_hexdigit)
                    .map(|p| p + at.min(d.len()))
                {
                    let end = d[start..]
                        .iter()
                        .position(|b| !b.is_ascii_hexdigit())
                        .map_or(d.len(), |p| p + start);
                    let n = match rng.below(4) {
                        0 => format!("{}", rng.below(20)),
                        1 => format!("{:x}", rng.next()),
                        2 => format!("{:0>20}", rng.below(9)),
                        _ => format!("{}", rng.next()),
                    };
                    d.splice(start..end, n.bytes());
                }
            }
            7 => d.truncate(at),
            _ => {}
        }
    }
    d
}

const REQUESTS: &[&[u8]] = &[
    b"GET /fn/a/b?c=1 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /fn/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /fn/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /fn/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET http://h/fn/a HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nTE: trailers\r\n\r\n",
    b"GET /fn/a/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"PUT /fn/a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\nX-Forwarded-For: 1.2.3.4\r\nX-Request-Id: abc\r\n\r\nabc",
    b"POST /fn/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    b"POST /fn/a HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n",
];

const ANSWERS: &[&[u8]] = &[
    b"\x00HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"\x01HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
    b"\x00HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x\r\n\r\n",
    b"\x00HTTP/1.1 204 No Content\r\nConnection: close, x-a\r\nX-A: 1\r\n\r\n",
    b"\x00HTTP/1.0 200 OK\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\n\r\n",
    b"\x00HTTP/1.1 101 Switching Protocols\r\nUpgrade: ws\r\nConnection: upgrade\r\n\r\n",
    b"\x00HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
    b"\x00HTTP/1.1 304 Not Modified\r\nX-Request-Id: other\r\n\r\n",
];

const CHUNKED: &[&[u8]] = &[b"\x05" as &[u8], b"\x03", b"\x10", b"\x00"];

const CHUNKED_BODIES: &[&[u8]] = &[
    b"5\r\nhello\r\n0\r\n\r\n",
    b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: x\r\n\r\n",
    b"1 ;a = \"b\\\"\"\r\nZ\r\n0\r\nX-A: 1\r\nX-B: 2\r\n\r\n",
    b"0\r\n\r\n",
    b"A\r\n0123456789\r\n0\r\n\r\nGET /next",
];

const PATHS: &[&[u8]] = &[
    b"/fn/a/b/c?x=1",
    b"/fn/h%65llo/x%2Fy",
    b"/fn/a",
    b"/healthz",
    b"/fn//x",
    b"/fn/abc\xc3\xa9/d",
];

/// Runs `check` on `cases` inputs from `make`; fails listing the kinds of
/// violation found, with an example input each.
fn run(name: &str, seed: u64, mut make: impl FnMut(&mut Rng) -> Vec<u8>, check: fn(&[u8])) {
    // The panics the checks raise are counted, not printed; the final
    // assertion's is.
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.get() {
                default(info);
            }
        }));
    });
    QUIET.set(true);
    let cases: u64 = std::env::var("CPUB_RANDOMIZED_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let seed = std::env::var("CPUB_RANDOMIZED_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(seed);
    let mut rng = Rng(seed | 1);
    let began = Instant::now();
    let mut failures: BTreeMap<String, (u64, Vec<u8>)> = BTreeMap::new();
    for _ in 0..cases {
        let input = make(&mut rng);
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| check(&input))) {
            let message = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            // One entry per kind: the message up to its first colon, numbers
            // left out.
            let kind: String = message
                .split(": ")
                .next()
                .unwrap_or_default()
                .chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .collect();
            let entry = failures.entry(kind).or_insert((0, input.clone()));
            entry.0 += 1;
            if input.len() < entry.1.len() {
                entry.1 = input;
            }
        }
    }
    QUIET.set(false);
    let took = began.elapsed();
    println!(
        "{name}: {cases} inputs in {:.1} s ({:.1} µs each), seed {seed:#x}",
        took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / cases as f64
    );
    QUIET.set(true);
    let report: Vec<String> = failures
        .iter()
        .map(|(kind, (n, input))| {
            let message = catch_unwind(AssertUnwindSafe(|| check(input)))
                .err()
                .and_then(|e| {
                    e.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                })
                .unwrap_or_default();
            format!(
                "{n} × {kind}\n    e.g. {:?}\n    {message}",
                String::from_utf8_lossy(input)
            )
        })
        .collect();
    QUIET.set(false);
    assert!(
        failures.is_empty(),
        "{name}: {} of {cases} inputs broke a property:\n{}",
        failures.values().map(|(n, _)| n).sum::<u64>(),
        report.join("\n")
    );
}

#[test]
fn request_heads_and_framing() {
    run(
        "request head",
        DEFAULT_SEED,
        |r| mutate(r, REQUESTS),
        oracle::request_head,
    );
}

#[test]
fn answer_heads() {
    run(
        "answer head",
        DEFAULT_SEED ^ 1,
        |r| mutate(r, ANSWERS),
        oracle::response_head,
    );
}

#[test]
fn chunked_bodies() {
    run(
        "chunked body",
        DEFAULT_SEED ^ 2,
        |r| {
            let split = *r.pick(CHUNKED);
            let split = if r.below(2) == 0 {
                split.to_vec()
            } else {
                vec![r.next() as u8]
            };
            [split, mutate(r, CHUNKED_BODIES)].concat()
        },
        oracle::chunked,
    );
}

#[test]
fn invocation_paths() {
    run(
        "invocation path",
        DEFAULT_SEED ^ 3,
        |r| mutate(r, PATHS),
        oracle::invocation_path,
    );
}
