//! Signed calls through a real proxy worker in front of the recording
//! instance of `support` (function `s`, `[access] auth = "signature"`): a
//! signed call arrives without its signature, a body sent in pieces or
//! after `100 Continue` is checked whole, and every refusal (and a few
//! hundred random corruptions of a good call) is answered by the proxy
//! while the instance receives nothing at all.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerpub_wire::api::Route;
use containerpub_wire::private::SecretValue;
use containerpub_wire::signing::{SigningKey, header_value};
use support::{HEALTH, Harness, route_from};

const SECRET: &str = "cpss_5f1d0c9e8b7a6f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6";
const KEY_ID: &str = "sk_00112233aabbccdd";
const MAX_BODY: u64 = 4096;

/// Function `s`: signed calls only, with one signing key.
fn route() -> Route {
    let mut route = route_from(
        "s",
        &format!(
            "runtime = \"container\"\nhealth_path = \"{HEALTH}\"\n\
             [resources]\nmax_body_bytes = {MAX_BODY}\n[access]\nauth = \"signature\"\n"
        ),
    );
    route.signing_keys = vec![SigningKey {
        id: KEY_ID.into(),
        secret: SecretValue(SECRET.into()),
    }];
    route
}

/// A proxy worker for function `s` and the instance behind it.
fn harness() -> Harness {
    Harness::with_route("signing-test", route())
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn signature(method: &str, target: &str, ts: i64, body: &[u8]) -> String {
    header_value(KEY_ID, SECRET.as_bytes(), method, target, ts, body)
}

/// A whole request with a content-length body and `extra` fields.
fn request(method: &str, target: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{method} {target} HTTP/1.1\r\nhost: t\r\n{extra}content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Sends `bytes` on a fresh connection; the status answered.
fn status_of(h: &Harness, bytes: &[u8]) -> (u16, String) {
    let mut c = h.connect();
    c.send(bytes);
    let a = c.answer(false).expect("an answer");
    (a.status, a.text())
}

#[test]
fn signed_calls_pass_and_refusals_never_reach_the_instance() {
    let h = harness();

    // A good call (this also starts the instance).
    let body = b"{\"n\":1}";
    let first = now();
    let sig = signature("POST", "/fn/s/a?b=1", first, body);
    let (status, text) = status_of(
        &h,
        &request(
            "POST",
            "/fn/s/a?b=1",
            &format!("x-cpub-signature: {sig}\r\n"),
            body,
        ),
    );
    assert_eq!(status, 200, "{text}");
    let seen = h.instance.conns();
    let bytes = String::from_utf8_lossy(&seen.last().unwrap().bytes).to_lowercase();
    assert!(!bytes.contains("x-cpub-signature"), "{bytes}");
    assert!(bytes.ends_with("{\"n\":1}"), "{bytes}");

    let mark = h.instance.mark();
    // Another second than the good call's: these signatures differ from it.
    let t = first - 1;
    let target = "/fn/s/a?b=1";
    let good = |ts| {
        format!(
            "x-cpub-signature: {}\r\n",
            signature("POST", target, ts, body)
        )
    };
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("none", request("POST", target, "", body), 401, "requires a signed call"),
        (
            "key",
            request("POST", target, "x-cpub-key: cpk_x\r\n", body),
            401,
            "requires a signed call",
        ),
        (
            "unknown key",
            request(
                "POST",
                target,
                &good(t).replace(KEY_ID, "sk_ffffffffffffffff"),
                body,
            ),
            401,
            "unknown or revoked",
        ),
        ("stale", request("POST", target, &good(t - 301), body), 401, "in the past"),
        ("future", request("POST", target, &good(first + 302), body), 401, "in the future"),
        ("body", request("POST", target, &good(t), b"{\"n\":2}"), 401, "body digest mismatch"),
        ("path", request("POST", "/fn/s/a?b=2", &good(t), body), 401, "bad signature"),
        ("method", request("PUT", target, &good(t), body), 401, "bad signature"),
        (
            "malformed",
            request("POST", target, "x-cpub-signature: sig=00\r\n", body),
            401,
            "malformed x-cpub-signature",
        ),
        (
            "two",
            request("POST", target, &format!("{}{}", good(t), good(t)), body),
            400,
            "more than one x-cpub-signature",
        ),
        (
            "chunked",
            format!(
                "POST {target} HTTP/1.1\r\nhost: t\r\n{}transfer-encoding: chunked\r\n\r\n7\r\n{{\"n\":1}}\r\n0\r\n\r\n",
                good(t)
            )
            .into_bytes(),
            411,
            "content-length",
        ),
        (
            "too large",
            request(
                "POST",
                target,
                &format!(
                    "x-cpub-signature: {}\r\n",
                    signature("POST", target, t, &[b'x'; 5000])
                ),
                &[b'x'; 5000],
            ),
            413,
            "over the limit",
        ),
    ];
    for (label, bytes, want, says) in &cases {
        let (status, text) = status_of(&h, bytes);
        assert_eq!(status, *want, "{label}: {text}");
        assert!(text.contains(says), "{label}: {text} lacks {says:?}");
    }
    // A replay of the good call.
    let replay = request(
        "POST",
        target,
        &format!("x-cpub-signature: {sig}\r\n"),
        body,
    );
    let (status, text) = status_of(&h, &replay);
    assert_eq!(status, 401);
    assert!(text.contains("replayed"), "{text}");
    assert!(
        h.instance.since(&mark).is_empty(),
        "a refused call reached the instance: {:?}",
        h.instance.since(&mark)
    );
}

#[test]
fn bodies_in_pieces_and_after_100_continue_are_checked_whole() {
    let h = harness();
    let body = vec![b'z'; 3000];
    let target = "/fn/s/up";
    let sig = signature("PUT", target, now(), &body);
    let head = format!(
        "PUT {target} HTTP/1.1\r\nhost: t\r\nx-cpub-signature: {sig}\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut c = h.connect();
    c.send(head.as_bytes());
    // The proxy asks for the body itself.
    while !c.buf.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n") {
        assert!(c.fill() > 0, "no 100 Continue");
    }
    c.buf.drain(..25);
    for piece in body.chunks(700) {
        c.send(piece);
        std::thread::sleep(Duration::from_millis(5));
    }
    let a = c.answer(false).unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    // The instance gets the path below the function's prefix.
    assert_eq!(a.text(), "PUT /up 3000");
    // The same connection goes on (the body was read exactly).
    let sig = signature("GET", "/fn/s/next", now(), b"");
    c.send(&request(
        "GET",
        "/fn/s/next",
        &format!("x-cpub-signature: {sig}\r\n"),
        b"",
    ));
    let a = c.answer(false).unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
}

#[test]
fn random_corruptions_of_a_signed_call_are_refused_before_the_instance() {
    let h = harness();
    // Start the instance with one good call, then corrupt fresh ones.
    let ok = |target: &str, body: &[u8]| {
        let sig = signature("POST", target, now(), body);
        request(
            "POST",
            target,
            &format!("x-cpub-signature: {sig}\r\n"),
            body,
        )
    };
    assert_eq!(status_of(&h, &ok("/fn/s/warm", b"w")).0, 200);
    let mark = h.instance.mark();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut refused = 0;
    for i in 0..300 {
        let body = format!("payload {i} {}", next());
        let target = format!("/fn/s/p{i}?q={}", next() % 1000);
        let mut bytes = ok(&target, body.as_bytes());
        // Flip one printable byte after the method and before the body's
        // end, in the signed parts only: the target, the signature's value
        // or the body.
        let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let sig_at = bytes
            .windows(17)
            .position(|w| w == b"x-cpub-signature:")
            .unwrap()
            + 18;
        let sig_end = sig_at + bytes[sig_at..].iter().position(|b| *b == b'\r').unwrap();
        let (from, to) = match next() % 3 {
            0 => (5 + "/fn/s/".len(), 5 + target.len()),
            1 => (sig_at, sig_end),
            _ => (head_end, bytes.len()),
        };
        let at = from + (next() as usize) % (to - from);
        let old = bytes[at];
        let new = match old {
            b'0'..=b'8' | b'a'..=b'e' => old + 1,
            b'9' => b'0',
            b'f' => b'a',
            _ if old.is_ascii_alphanumeric() => b'x' ^ (old & 1),
            _ => continue,
        };
        if new == old {
            continue;
        }
        bytes[at] = new;
        let (status, text) = status_of(&h, &bytes);
        assert!(
            status == 401 || status == 400 || status == 404,
            "corruption at {at} ({} -> {}) answered {status}: {text}\n{}",
            old as char,
            new as char,
            String::from_utf8_lossy(&bytes)
        );
        refused += 1;
    }
    assert!(refused > 200, "{refused}");
    assert!(
        h.instance.since(&mark).is_empty(),
        "a corrupted call reached the instance"
    );
}
