//! Request smuggling, response-queue poisoning and malformed answers on the
//! proxy's HTTP/1.1 data path, tried as an attacker would with vectors from
//! public corpora (each cites its source) and the reproducers of issue 8.
//!
//! Every vector is sent in one write on a fresh client connection, followed
//! (unless it closes the connection itself) by a pipelined
//! `GET /fn/t/end-N` with `connection: close`, which is a desync detector of
//! its own. What is checked:
//!
//! - what the client gets: the statuses, each answer head strictly valid,
//!   and the connection closed after a refusal;
//! - the exact bytes the instance receives: nothing at all for a refused
//!   vector; for a forwarded one, heads byte for byte (the generated
//!   `x-request-id` value masked) and bodies as decoded;
//! - the rule: the instance's bytes parse to exactly the requests the
//!   proxy meant to forward (count, methods, targets, bodies), with
//!   nothing left over, under three independent parsers: the project's own
//!   LF-tolerant `examples/fnhttp` (the live instance), hyper 1's server,
//!   and a strict RFC 9112 reference (`support/strict.rs`);
//! - afterwards a fresh client's request gets its own answer (no answer
//!   left queued on a pooled upstream connection).
//!
//! Malformed requests may be answered 400/431/501 (and for a few, 413/404
//! fit), malformed answers 502; or the message is normalised.
//!
//! Over 600 lines: 24 tests over one table of vectors from the public
//! corpora, each vector next to its source, and one checking rule.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{Harness, MAX_BODY, Req, Script, Tail, Views, req, views};

// ---------------------------------------------------------------------------
// The vector runner.

/// One acceptable outcome of a vector.
#[derive(Debug, Clone)]
enum Expect {
    /// One answer with one of these statuses, then the proxy closes; the
    /// instance receives no byte.
    Refused(&'static [u16]),
    /// The client gets these statuses (then the pipelined end request's
    /// 200 unless the last is an error, after which the proxy closes); the
    /// instance sees exactly these requests (then the end request). When
    /// `heads` is not empty, it holds the exact head of each request.
    Forwarded {
        statuses: Vec<u16>,
        requests: Vec<Req>,
        heads: Vec<Vec<u8>>,
    },
}

fn refused(statuses: &'static [u16]) -> Expect {
    Expect::Refused(statuses)
}

fn forwarded(statuses: &[u16], requests: Vec<Req>) -> Expect {
    Expect::Forwarded {
        statuses: statuses.to_vec(),
        requests,
        heads: Vec::new(),
    }
}

fn forwarded_exactly(statuses: &[u16], requests: Vec<Req>, heads: Vec<Vec<u8>>) -> Expect {
    Expect::Forwarded {
        statuses: statuses.to_vec(),
        requests,
        heads,
    }
}

/// 400 (or 501 for an unsupported coding, 431 for an oversized head).
const BAD: &[u16] = &[400, 431, 501];

/// The head the proxy sends for a request: its request line, the client's
/// end-to-end fields, the framing it writes itself, then its own fields.
fn head(line: &str, fields: &[&str], framing: &str) -> Vec<u8> {
    let mut h = format!("{line}\r\n");
    // Field names with `_` are dropped by the proxy (nginx's default).
    for f in fields
        .iter()
        .filter(|f| !f.split(':').next().unwrap_or("").contains('_'))
    {
        h.push_str(f);
        h.push_str("\r\n");
    }
    if !framing.is_empty() {
        h.push_str(framing);
        h.push_str("\r\n");
    }
    h.push_str("x-request-id: *\r\ntraceparent: *\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\n\r\n");
    h.into_bytes()
}

/// The `x-request-id` and `traceparent` values masked (they are generated).
fn mask_id(head: &[u8]) -> Vec<u8> {
    mask_field(
        &mask_field(head, b"\r\nx-request-id: "),
        b"\r\ntraceparent: ",
    )
}

fn mask_field(head: &[u8], key: &[u8]) -> Vec<u8> {
    let Some(at) = head.windows(key.len()).position(|w| w == key) else {
        return head.to_vec();
    };
    let start = at + key.len();
    let end = start
        + head[start..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(0);
    [&head[..start], b"*", &head[end..]].concat()
}

struct Vector {
    name: String,
    bytes: Vec<u8>,
    /// Any of these is correct.
    expect: Vec<Expect>,
    /// Send the pipelined end request after the vector.
    tail: bool,
}

fn vector(name: impl Into<String>, bytes: impl AsRef<[u8]>, expect: Vec<Expect>) -> Vector {
    Vector {
        name: name.into(),
        bytes: bytes.as_ref().to_vec(),
        expect,
        tail: true,
    }
}

/// What happened to a vector.
#[derive(Debug)]
struct Seen {
    statuses: Vec<u16>,
    /// The last answer said `connection: close` and the proxy closed.
    closed: bool,
    /// Bytes each upstream connection received.
    upstream: Vec<Vec<u8>>,
    views: Vec<Views>,
}

fn show(bytes: &[u8]) -> String {
    if bytes.len() > 600 {
        format!(
            "{:?}… ({} bytes)",
            String::from_utf8_lossy(&bytes[..600]),
            bytes.len()
        )
    } else {
        format!("{:?}", String::from_utf8_lossy(bytes))
    }
}

static END: AtomicUsize = AtomicUsize::new(0);

fn end_request(n: usize) -> (Vec<u8>, Req) {
    let bytes = format!("GET /fn/t/end-{n} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    (bytes.into_bytes(), req("GET", &format!("/end-{n}"), b""))
}

/// Runs a vector; `Err` says what was wrong with each acceptable outcome.
fn run(h: &Harness, v: &Vector) -> Result<(), String> {
    let n = END.fetch_add(1, Ordering::Relaxed);
    let (end_bytes, end_req) = end_request(n);
    let mark = h.instance.mark();
    let mut c = h.connect();
    c.tcp
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut sent = v.bytes.clone();
    if v.tail {
        sent.extend_from_slice(&end_bytes);
    }
    c.send(&sent);
    let mut statuses = Vec::new();
    let mut closed = false;
    loop {
        let answer =
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.answer(false))) {
                Ok(a) => a,
                Err(e) => {
                    let what = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    return Err(format!("{}: the client's answers: {what}", v.name));
                }
            };
        let Some(a) = answer else { break };
        statuses.push(a.status);
        if a.closes() {
            closed = matches!(
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.closed())),
                Ok(true)
            );
            break;
        }
    }
    // Everything the proxy sent is in the instance's log.
    h.instance.settle();
    let upstream = h.instance.since(&mark);
    let seen = Seen {
        statuses,
        closed,
        views: upstream.iter().map(|b| views(b)).collect(),
        upstream,
    };
    let mut why = Vec::new();
    for e in &v.expect {
        match judge(e, &seen, v.tail.then_some(&end_req)) {
            Ok(()) => return after(h, n).map_err(|e| format!("{}: {e}", v.name)),
            Err(w) => why.push(w),
        }
    }
    let upstream: Vec<String> = seen.upstream.iter().map(|b| show(b)).collect();
    Err(format!(
        "{}\n  sent: {}\n  client got {:?} (closed: {})\n  instance got: {upstream:?}\n  readings: {:#?}\n  not as expected: {}",
        v.name,
        show(&v.bytes),
        seen.statuses,
        seen.closed,
        seen.views,
        why.join("; or ")
    ))
}

fn judge(e: &Expect, s: &Seen, end: Option<&Req>) -> Result<(), String> {
    match e {
        Expect::Refused(allowed) => {
            match s.statuses.as_slice() {
                [one] if allowed.contains(one) => {}
                other => return Err(format!("refused with one of {allowed:?}, got {other:?}")),
            }
            if !s.closed {
                return Err("refused, then the connection closed".into());
            }
            if !s.upstream.is_empty() {
                return Err("refused, and not a byte reaches the instance".into());
            }
            Ok(())
        }
        Expect::Forwarded {
            statuses,
            requests,
            heads,
        } => {
            // The proxy's own 404 keeps the connection; its refusals close it.
            let open = statuses.last().is_some_and(|&s| s < 400 || s == 404);
            let mut statuses = statuses.clone();
            let mut requests = requests.clone();
            if let (true, Some(end)) = (open, end) {
                statuses.push(200);
                requests.push(end.clone());
            }
            if s.statuses != statuses {
                return Err(format!("forwarded, answered {statuses:?}"));
            }
            if !s.closed {
                return Err("forwarded, then closed after the last answer".into());
            }
            for (name, pick) in [
                (
                    "fnhttp",
                    (|v: &Views| &v.fnhttp) as fn(&Views) -> &support::View,
                ),
                ("hyper", |v: &Views| &v.hyper),
                ("strict", |v: &Views| &v.strict),
            ] {
                let got: Vec<Req> = s
                    .views
                    .iter()
                    .flat_map(|v| pick(v).requests.clone())
                    .collect();
                if got != requests {
                    return Err(format!("forwarded as {requests:?}, but {name} saw {got:?}"));
                }
                if let Some(t) = s
                    .views
                    .iter()
                    .map(|v| &pick(v).tail)
                    .find(|t| **t != Tail::Clean)
                {
                    return Err(format!("forwarded, but {name} saw more: {t:?}"));
                }
            }
            if !heads.is_empty() {
                let got: Vec<Vec<u8>> = s
                    .upstream
                    .iter()
                    .flat_map(|b| {
                        let (msgs, _) = support::strict::requests(b);
                        let mut at = 0;
                        msgs.into_iter()
                            .map(|m| {
                                let h = mask_id(&b[at..at + m.head_len]);
                                at += m.len;
                                h
                            })
                            .collect::<Vec<_>>()
                    })
                    .take(heads.len())
                    .collect();
                if &got != heads {
                    let want: Vec<String> = heads.iter().map(|h| show(h)).collect();
                    let got: Vec<String> = got.iter().map(|h| show(h)).collect();
                    return Err(format!("forwarded with heads {want:?}, got {got:?}"));
                }
            }
            Ok(())
        }
    }
}

/// A fresh client's request gets its own answer.
fn after(h: &Harness, n: usize) -> Result<(), String> {
    let mut c = h.connect();
    c.send(format!("GET /fn/t/after-{n} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    let a = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.answer(false)))
        .map_err(|_| "the next caller got an invalid answer".to_owned())?
        .ok_or("the next caller got no answer")?;
    let want = format!("/after-{n}");
    if a.status != 200 || a.header("x-target").as_deref() != Some(want.as_str()) {
        return Err(format!(
            "the next caller got someone else's answer: {} {:?} {}",
            a.status,
            a.header("x-target"),
            a.text()
        ));
    }
    Ok(())
}

/// Runs every vector; fails listing each one that went wrong.
fn run_all(vectors: &[Vector]) {
    let h = Harness::new();
    let failures: Vec<String> = vectors.iter().filter_map(|v| run(&h, v).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} vectors failed:\n\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n\n")
    );
}

fn run_one(v: Vector) {
    run_all(&[v]);
}

// ---------------------------------------------------------------------------
// Issue 8's own reproducers.

/// Issue 8 point 1: a bare LF inside a chunked trailer line. fnhttp (and
/// Go's net/http) end the body at `X: a\n\n` and take the rest for a second
/// request, whose body swallows the next caller's request.
#[test]
fn issue8_trailer_with_a_bare_lf_is_not_relayed() {
    run_one(vector(
        "issue 8 #1: trailer bare LF",
        b"POST /fn/t/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\n\nPOST /stored HTTP/1.1\r\nHost: x\r\nContent-Length: 150\r\n\r\n",
        vec![refused(BAD)],
    ));
}

/// Issue 8 point 1, with a smuggled GET: a second answer queued on the
/// pooled connection.
#[test]
fn issue8_trailer_with_a_bare_lf_smuggling_a_get() {
    run_one(vector(
        "issue 8 #1: trailer bare LF, smuggled GET",
        b"POST /fn/t/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\n\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        vec![refused(BAD)],
    ));
}

/// Issue 8 point 2: a target with a multi-byte character where the proxy
/// looks for a scheme panicked the connection task (no answer at all).
#[test]
fn issue8_multibyte_targets_are_answered() {
    let mut all = Vec::new();
    for (i, target) in [
        &b"/fn/ab\xc3\xa9"[..],
        b"/fn/t\xc3\xa9",
        b"/fn/abc\xc3\xa9",
        b"http:/\xc3\xa9/fn/t/x",
        b"https:/\xc3\xa9/fn/t/x",
        b"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9",
        b"/fn/t/\xc3\xa9",
        b"http://h\xc3\xa9/fn/t/x",
    ]
    .into_iter()
    .enumerate()
    {
        let bytes = [b"GET ", target, b" HTTP/1.1\r\nHost: x\r\n\r\n"].concat();
        // Refused (400), or a 404 of the proxy's own, or (for a target
        // inside a function) forwarded percent-encoded is fine; silence is
        // not.
        let mut expect = vec![refused(&[400]), forwarded(&[404], vec![])];
        if i == 7 {
            // An absolute-form target: its path is a function's.
            expect.push(forwarded(&[200], vec![req("GET", "/x", b"")]));
        }
        if i == 6 {
            // Inside function `t`: percent-encoded for the instance.
            expect.push(forwarded(&[200], vec![req("GET", "/%C3%A9", b"")]));
        }
        all.push(Vector {
            name: format!("issue 8 #2: multi-byte target {i} {}", show(target)),
            bytes,
            expect,
            tail: true,
        });
    }
    run_all(&all);
}

/// Issue 8 point 2: status lines with no reason phrase or an obs-text one
/// (legitimate servers send them) panicked `write_response_head`.
#[test]
fn issue8_status_lines_without_or_with_obs_text_reason_are_relayed() {
    let h = Harness::new();
    for (i, line) in [
        &b"HTTP/1.1 200\r\n"[..],
        b"HTTP/1.1 200 \r\n",
        b"HTTP/1.1 200 \xe9t\xe9\r\n",
        b"HTTP/1.1 200 \x80\r\n",
        b"HTTP/1.1 200 OK \xff\xfe\r\n",
    ]
    .into_iter()
    .enumerate()
    {
        let path = format!("/status-{i}");
        h.instance.script(
            &path,
            Script::Raw([line, b"content-length: 2\r\n\r\nok"].concat()),
        );
        let mut c = h.connect();
        c.send(format!("GET /fn/t{path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let a = c
            .answer(false)
            .unwrap_or_else(|| panic!("no answer for status line {}", show(line)));
        assert_eq!(a.status, 200, "{}", show(line));
        assert_eq!(a.body, b"ok", "{}", show(line));
        assert!(a.head.starts_with(b"HTTP/1.1 200 "), "{}", show(&a.head));
        // The connection goes on.
        c.send(b"GET /fn/t/next HTTP/1.1\r\nHost: x\r\n\r\n");
        let a = c.answer(false).expect("an answer to the next request");
        assert_eq!(a.header("x-target").as_deref(), Some("/next"));
    }
}

/// Issue 8 point 3: bytes an instance writes after a complete answer (a
/// body on 204/304/HEAD, an extra answer, a late segment) must never reach
/// the next caller.
#[test]
fn issue8_bytes_after_a_complete_answer_never_reach_the_next_caller() {
    let h = Harness::new();
    let poison =
        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nx-target: /poison\r\n\r\nPOISON".to_vec();
    let cases: Vec<(&str, &str, Script)> = vec![
        (
            "GET",
            "/s204",
            Script::Raw(
                [
                    &b"HTTP/1.1 204 No Content\r\ncontent-length: 6\r\n\r\n"[..],
                    &poison,
                ]
                .concat(),
            ),
        ),
        (
            "GET",
            "/s204-body",
            Script::Raw(b"HTTP/1.1 204 No Content\r\n\r\nPOISONPOISON".to_vec()),
        ),
        (
            "GET",
            "/s304",
            Script::Raw(
                [
                    &b"HTTP/1.1 304 Not Modified\r\ncontent-length: 6\r\n\r\n"[..],
                    &poison,
                ]
                .concat(),
            ),
        ),
        (
            "HEAD",
            "/head",
            Script::Raw(
                [
                    &b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n"[..],
                    &poison,
                ]
                .concat(),
            ),
        ),
        (
            "GET",
            "/extra",
            Script::Raw(
                [
                    &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
                    &poison,
                ]
                .concat(),
            ),
        ),
        (
            "GET",
            "/late",
            Script::Late(
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                Duration::from_millis(30),
                poison.clone(),
            ),
        ),
        (
            "HEAD",
            "/late-head",
            Script::Late(
                b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n".to_vec(),
                Duration::from_millis(30),
                b"POISON".to_vec(),
            ),
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, script) in cases {
        h.instance.script(path, script);
        let mut c = h.connect();
        c.send(format!("{method} /fn/t{path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let first = c.answer(method == "HEAD");
        // The bytes after the answer (30 ms late for `Script::Late`) have
        // reached the proxy's end of the pooled connection, well within
        // the pool's 1 s.
        h.instance.settle();
        for next in 0..3 {
            let mut c = h.connect();
            let want = format!("/next{path}-{next}");
            c.send(format!("GET /fn/t{want} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
            let a = c.answer(false);
            let ok = a.as_ref().is_some_and(|a| {
                a.status == 200 && a.header("x-target").as_deref() == Some(want.as_str())
            });
            if !ok {
                failures.push(format!(
                    "{method} {path} (first answer {:?}): the next caller got {a:?}",
                    first.as_ref().map(|a| a.status)
                ));
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Issue 8 point 4: a request that got nothing back on a reused
/// connection may be sent again only when it is idempotent (RFC 9112
/// §9.3.1); a POST is never replayed.
#[test]
fn issue8_a_post_is_never_replayed() {
    let h = Harness::new();
    let mut c = h.connect();
    // Pools a connection.
    c.send(b"GET /fn/t/warm HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.answer(false).unwrap().status, 200);
    // On the reused connection the instance reads the POST, then closes
    // without a word.
    c.send(b"POST /fn/t/drop HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
    let a = c.answer(false).expect("an answer");
    let posts: usize = h
        .instance
        .conns()
        .iter()
        .map(|c| c.requests.iter().filter(|r| r.method == "POST").count())
        .sum();
    assert_eq!(posts, 1, "the POST reached the instance {posts} times");
    assert_eq!(a.status, 502, "{a:?}");
}

/// Issue 8 point 4, the other side: an idempotent GET may be replayed on a
/// fresh connection, once.
#[test]
fn issue8_a_get_is_replayed_once_on_a_fresh_connection() {
    let h = Harness::new();
    let mut c = h.connect();
    c.send(b"GET /fn/t/warm HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.answer(false).unwrap().status, 200);
    c.send(b"GET /fn/t/drop HTTP/1.1\r\nHost: x\r\n\r\n");
    let a = c.answer(false).expect("an answer");
    assert_eq!(a.status, 200, "{a:?}");
    let gets: usize = h
        .instance
        .conns()
        .iter()
        .map(|c| c.requests.iter().filter(|r| r.target == "/drop").count())
        .sum();
    assert_eq!(gets, 2);
}

/// Issue 8 point 5: chunk extensions and trailers count against
/// `max_body_bytes` (or are bounded, or dropped): the instance never gets
/// more than the limit plus the framing's own bytes.
#[test]
fn issue8_chunk_extensions_and_trailers_do_not_bypass_the_body_limit() {
    let h = Harness::new();
    let ext = "a".repeat(4000);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "one long chunk extension",
            format!("POST /fn/t/ext HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;x={ext}\r\nhello\r\n0\r\n\r\n").into_bytes(),
        ),
        (
            "an extension on every chunk",
            {
                let mut b = b"POST /fn/t/ext HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for _ in 0..100 {
                    b.extend_from_slice(format!("1;x={}\r\nz\r\n", "b".repeat(200)).as_bytes());
                }
                b.extend_from_slice(b"0\r\n\r\n");
                b
            },
        ),
        (
            "a long trailer section",
            {
                let mut b = b"POST /fn/t/ext HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n".to_vec();
                for i in 0..100 {
                    b.extend_from_slice(format!("x-t{i}: {}\r\n", "c".repeat(100)).as_bytes());
                }
                b.extend_from_slice(b"\r\n");
                b
            },
        ),
    ];
    let mut failures = Vec::new();
    for (what, bytes) in cases {
        let mark = h.instance.mark();
        let mut c = h.connect();
        c.send(&bytes);
        let a = c.answer(false).expect("an answer");
        h.instance.settle();
        let got: usize = h
            .instance
            .since(&mark)
            .iter()
            .map(|b| {
                let (msgs, _) = support::strict::requests(b);
                msgs.iter().map(|m| m.len - m.head_len).sum::<usize>()
                    + if msgs.is_empty() { b.len() } else { 0 }
            })
            .sum();
        // The body's data fits; its framing may take a few bytes a chunk.
        let allowed = MAX_BODY + 100 * 8 + 16;
        if ![200, 400, 413, 431].contains(&a.status) || got > allowed {
            failures.push(format!(
                "{what}: answered {}, the instance got {got} body bytes (limit {MAX_BODY})",
                a.status
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Issue 8 point 6: bytes the client sent together with an upgrade request
/// belong to the tunnel.
#[test]
fn issue8_bytes_pipelined_behind_an_upgrade_reach_the_tunnel() {
    let h = Harness::new();
    let mut c = h.connect();
    c.send(b"GET /fn/t/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly bytes");
    let a = c.answer(false).expect("an answer");
    assert_eq!(a.status, 101, "{a:?}");
    c.tcp
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    while c.buf.len() < 11 {
        assert!(
            c.fill() > 0,
            "the tunnel closed; got {:?}",
            String::from_utf8_lossy(&c.buf)
        );
    }
    assert_eq!(c.buf, b"EARLY BYTES");
}

// ---------------------------------------------------------------------------
// Issue 8 point 7: conformance.

#[test]
fn issue8_codings_before_chunked_are_refused_or_forwarded() {
    // RFC 9112 §6.1: the proxy decodes only chunked; a body still coded
    // with gzip must not be relayed under `transfer-encoding: chunked`.
    run_one(vector(
        "issue 8 #7: gzip, chunked",
        b"POST /fn/t/gz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        vec![refused(&[400, 501])],
    ));
}

#[test]
fn issue8_host_must_be_there_once() {
    // RFC 9112 §3.2: 400 for an HTTP/1.1 request without `host` or with
    // more than one (uNetworking/h1spec "Missing Host header", "Multiple
    // Host headers").
    run_all(&[
        vector(
            "missing host",
            b"GET /fn/t/nohost HTTP/1.1\r\n\r\n",
            vec![refused(&[400])],
        ),
        vector(
            "missing host, with a body",
            b"POST /fn/t/nohost HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            vec![refused(&[400])],
        ),
        vector(
            "two host fields",
            b"GET /fn/t/twohosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            vec![refused(&[400])],
        ),
        vector(
            "two equal host fields",
            b"GET /fn/t/twohosts HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            vec![refused(&[400])],
        ),
        // HTTP/1.0 needs no host, but the HTTP/1.1 request the proxy
        // makes of it does (the strict reading checks there is one).
        Vector {
            name: "HTTP/1.0 without host".into(),
            bytes: b"GET /fn/t/ten HTTP/1.0\r\n\r\n".to_vec(),
            expect: vec![
                refused(&[400]),
                forwarded(&[200], vec![req("GET", "/ten", b"")]),
            ],
            tail: false,
        },
    ]);
}

#[test]
fn issue8_absolute_form_replaces_host() {
    // RFC 9112 §3.2.2: the target's authority wins over `host`.
    let h = Harness::new();
    for (i, (bytes, host)) in [
        (
            &b"GET http://example.test/fn/t/abs HTTP/1.1\r\nHost: other.test\r\n\r\n"[..],
            "example.test",
        ),
        (
            b"GET http://example.test:8080/fn/t/abs?q=1 HTTP/1.1\r\nHost: example.test:8080\r\n\r\n",
            "example.test:8080",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mark = h.instance.mark();
        let mut c = h.connect();
        c.send(bytes);
        let a = c.answer(false).expect("an answer");
        assert_eq!(a.status, 200, "{i}: {a:?}");
        let got = h.instance.since(&mark).concat();
        let (msgs, tail) = support::strict::requests(&got);
        assert_eq!(tail, Tail::Clean, "{i}: {}", show(&got));
        assert_eq!(msgs.len(), 1, "{i}: {}", show(&got));
        assert!(msgs[0].target.starts_with("/abs"), "{i}: {}", show(&got));
        assert_eq!(msgs[0].values("host"), [host.as_bytes()], "{i}: {}", show(&got));
    }
}

#[test]
fn issue8_connection_cannot_strip_host_or_framing() {
    // RFC 9110 §7.6.1 lets `connection` name hop-by-hop fields; never the
    // ones the message cannot do without.
    let h = Harness::new();
    for (i, bytes) in [
        &b"GET /fn/t/c HTTP/1.1\r\nHost: x\r\nConnection: host\r\n\r\n"[..],
        b"POST /fn/t/c HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /fn/t/c HTTP/1.1\r\nHost: x\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ]
    .into_iter()
    .enumerate()
    {
        let mark = h.instance.mark();
        let mut c = h.connect();
        c.send(bytes);
        let a = c.answer(false).expect("an answer");
        if a.status == 400 {
            continue;
        }
        assert_eq!(a.status, 200, "{i}: {a:?}");
        let got = h.instance.since(&mark).concat();
        let (msgs, tail) = support::strict::requests(&got);
        assert_eq!(tail, Tail::Clean, "{i}: {}", show(&got));
        assert_eq!(msgs.len(), 1, "{i}: {}", show(&got));
        assert_eq!(msgs[0].values("host"), [&b"x"[..]], "{i}: {}", show(&got));
    }
}

#[test]
fn issue8_invalid_chunk_lines_are_refused() {
    let post = |body: &[u8]| {
        [
            &b"POST /fn/t/chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            body,
        ]
        .concat()
    };
    let mut all = Vec::new();
    for (name, body) in [
        ("1 junk (issue 8 #7)", &b"1 junk\r\nZ\r\n0\r\n\r\n"[..]),
        ("size then space then CR", b"1 \rZ\r\n0\r\n\r\n"),
        ("NUL in an extension", b"1;a\x00b\r\nZ\r\n0\r\n\r\n"),
        ("DEL in an extension", b"1;a=\x7f\r\nZ\r\n0\r\n\r\n"),
        ("extension without a name", b"1;\r\nZ\r\n0\r\n\r\n"),
        ("extension with = and no value", b"1;a=\r\nZ\r\n0\r\n\r\n"),
        (
            "unterminated quoted extension",
            b"1;a=\"b\r\nZ\r\n0\r\n\r\n",
        ),
        (
            "obs-text in an extension name",
            b"1;\xe9=1\r\nZ\r\n0\r\n\r\n",
        ),
        ("trailer without a colon", b"1\r\nZ\r\n0\r\nnocolon\r\n\r\n"),
        (
            "trailer with obs-fold",
            b"1\r\nZ\r\n0\r\nX-A: a\r\n b\r\n\r\n",
        ),
        (
            "trailer name with a space",
            b"1\r\nZ\r\n0\r\nX A: a\r\n\r\n",
        ),
        ("trailer with a NUL", b"1\r\nZ\r\n0\r\nX-A: a\x00\r\n\r\n"),
        (
            "trailer with a bare CR",
            b"1\r\nZ\r\n0\r\nX-A: a\rb\r\n\r\n",
        ),
        ("bare LF after the last chunk", b"1\r\nZ\r\n0\n\r\n"),
        (
            "bare LF ending the trailers",
            b"1\r\nZ\r\n0\r\nX-A: a\r\n\n",
        ),
        (
            "chunk size overflowing u64",
            b"10000000000000000\r\nZ\r\n0\r\n\r\n",
        ),
    ] {
        all.push(vector(name, post(body), vec![refused(&[400, 413])]));
    }
    run_all(&all);
}

#[test]
fn issue8_valid_chunk_lines_are_accepted_and_reframed() {
    let post = |body: &[u8]| {
        [
            &b"POST /fn/t/chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            body,
        ]
        .concat()
    };
    let chunked_head = head(
        "POST /chunks HTTP/1.1",
        &["Host: x"],
        "transfer-encoding: chunked",
    );
    let mut all = Vec::new();
    for (name, body) in [
        // Issue 8 #7: leading zeros beyond 15 digits are still a size.
        (
            "17-digit size with leading zeros",
            &b"00000000000000001\r\nZ\r\n0\r\n\r\n"[..],
        ),
        (
            "21-digit last chunk",
            b"1\r\nZ\r\n000000000000000000000\r\n\r\n",
        ),
        // RFC 9112 §7.1.1: BWS around the extension's `;` and `=`.
        ("extension with BWS", b"1 ;a = b\r\nZ\r\n0\r\n\r\n"),
        (
            "quoted extension value",
            b"1;a=\"b;c\\\"d\"\r\nZ\r\n0\r\n\r\n",
        ),
        ("several extensions", b"1;a;b=c;d=\"e\"\r\nZ\r\n0\r\n\r\n"),
        ("a valid trailer field", b"1\r\nZ\r\n0\r\nX-Sum: 7\r\n\r\n"),
    ] {
        all.push(vector(
            name,
            post(body),
            vec![forwarded_exactly(
                &[200],
                vec![req("POST", "/chunks", b"Z")],
                vec![chunked_head.clone()],
            )],
        ));
    }
    run_all(&all);
}

/// Re-framed: no chunk extension, and no framing field among trailers,
/// reaches the instance.
#[test]
fn issue8_chunked_bodies_are_reframed_without_extensions_or_framing_trailers() {
    let post = |body: &[u8]| {
        [
            &b"POST /fn/t/chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            body,
        ]
        .concat()
    };
    let h = Harness::new();
    for body in [
        &b"1;a=b\r\nZ\r\n0\r\n\r\n"[..],
        b"1\r\nZ\r\n0\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\nHost: evil\r\n\r\n",
    ] {
        let mark = h.instance.mark();
        let mut c = h.connect();
        c.send(&post(body));
        let a = c.answer(false).expect("an answer");
        h.instance.settle();
        let got = h.instance.since(&mark).concat();
        if a.status == 400 {
            assert!(got.is_empty(), "{}", show(&got));
            continue;
        }
        assert_eq!(a.status, 200, "{}", show(body));
        let (msgs, tail) = support::strict::requests(&got);
        assert_eq!((msgs.len(), tail), (1, Tail::Clean), "{}", show(&got));
        assert!(
            !msgs[0].chunk_ext,
            "a chunk extension was relayed: {}",
            show(&got)
        );
        for (name, _) in &msgs[0].trailers {
            assert!(
                !["content-length", "transfer-encoding", "host", "trailer"]
                    .contains(&name.as_str()),
                "trailer {name} relayed: {}",
                show(&got)
            );
        }
    }
}

#[test]
fn issue8_answers_with_duplicate_framing_are_normalised_or_refused() {
    let h = Harness::new();
    let cases: [(&str, &[u8], &[u8]); 6] = [
        (
            "duplicate content-length",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok",
            b"ok",
        ),
        (
            "content-length list",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok",
            b"ok",
        ),
        (
            "duplicate transfer-encoding",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            b"ok",
        ),
        (
            "transfer-encoding list with chunked twice",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            b"ok",
        ),
        (
            "bare LF head",
            b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok",
            b"ok",
        ),
        (
            "chunk extension and trailer",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;a=b\r\nok\r\n0\r\nx-t: 1\r\n\r\n",
            b"ok",
        ),
    ];
    for (i, (what, raw, body)) in cases.into_iter().enumerate() {
        let path = format!("/dup-{i}");
        h.instance.script(&path, Script::Raw(raw.to_vec()));
        let mut c = h.connect();
        c.send(format!("GET /fn/t{path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        // `answer` refuses an ambiguous head or framing.
        let a = c
            .answer(false)
            .unwrap_or_else(|| panic!("{what}: no answer"));
        if a.status == 502 {
            continue;
        }
        assert_eq!(a.status, 200, "{what}");
        assert_eq!(a.body, body, "{what}");
        // Normalised: one framing field with one value (`header` asserts
        // the field appears at most once).
        let cl = a.header("content-length");
        let te = a.header("transfer-encoding");
        assert!(
            matches!(
                (cl.as_deref(), te.as_deref()),
                (Some("2"), None) | (None, Some("chunked"))
            ),
            "{what}: content-length {cl:?}, transfer-encoding {te:?}"
        );
        c.send(b"GET /fn/t/next HTTP/1.1\r\nHost: x\r\n\r\n");
        let a = c
            .answer(false)
            .unwrap_or_else(|| panic!("{what}: no next answer"));
        assert_eq!(a.header("x-target").as_deref(), Some("/next"), "{what}");
    }
}

#[test]
fn issue8_invalid_chunked_answers_get_a_502() {
    let h = Harness::new();
    let cases: [(&str, &[u8]); 8] = [
        ("bad chunk size", b"zz\r\nok\r\n0\r\n\r\n"),
        ("bare LF chunk line", b"2\nok\r\n0\r\n\r\n"),
        ("data not followed by CRLF", b"2\r\nokX\r\n0\r\n\r\n"),
        ("1 junk", b"2 junk\r\nok\r\n0\r\n\r\n"),
        ("bare LF in the trailer", b"2\r\nok\r\n0\r\nx: a\n\r\n"),
        (
            "trailer without a colon",
            b"2\r\nok\r\n0\r\nnocolon\r\n\r\n",
        ),
        ("size overflow", b"10000000000000000\r\nok\r\n0\r\n\r\n"),
        ("bare CR in the chunk line", b"2\r;x\r\nok\r\n0\r\n\r\n"),
    ];
    for (i, (what, body)) in cases.into_iter().enumerate() {
        let path = format!("/badchunk-{i}");
        h.instance.script(
            &path,
            Script::Raw(
                [
                    &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"[..],
                    body,
                ]
                .concat(),
            ),
        );
        let mut c = h.connect();
        c.send(format!("GET /fn/t{path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let a = c
            .answer(false)
            .unwrap_or_else(|| panic!("{what}: the client was cut without an answer"));
        assert_eq!(a.status, 502, "{what}: {a:?}");
    }
}

#[test]
fn invalid_answer_framing_or_status_gets_a_502() {
    let h = Harness::new();
    for (i, raw) in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nokk"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nokk",
        b"HTTP/1.1 200 OK\r\ncontent-length: -2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0x2\r\n\r\nok",
        // Found by tests/randomized.rs: httparse takes any three digits,
        // and the proxy wrote `HTTP/1.1 0 OK` (RFC 9110 §15: 100 to 599).
        b"HTTP/1.1 000 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 099 X\r\ncontent-length: 2\r\n\r\nok",
    ]
    .into_iter()
    .enumerate()
    {
        let path = format!("/cl-{i}");
        h.instance.script(&path, Script::Raw(raw.to_vec()));
        let mut c = h.connect();
        c.send(format!("GET /fn/t{path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let a = c.answer(false).expect("an answer");
        assert_eq!(a.status, 502, "{}", show(raw));
    }
}

// ---------------------------------------------------------------------------
// HTTP Garden (narfindustries/http-garden, TROPHIES.md): the server ("S")
// and transducer ("T") bugs whose payloads concern HTTP/1.1 framing, each
// aimed at function `t` and given a `Host` where the point is not its
// absence.

fn garden() -> Vec<Vector> {
    let post = |n: &str, rest: &[u8]| -> Vec<u8> {
        [
            format!("POST /fn/t/{n} HTTP/1.1\r\nHost: a\r\n").as_bytes(),
            rest,
        ]
        .concat()
    };
    let get = |n: &str, rest: &[u8]| -> Vec<u8> {
        [
            format!("GET /fn/t/{n} HTTP/1.1\r\nHost: a\r\n").as_bytes(),
            rest,
        ]
        .concat()
    };
    let te = b"Transfer-Encoding: chunked\r\n\r\n";
    let body48 = b"GET /fn/t/g48c HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut v = vec![
        vector("garden S1/T7: 0_2e chunk size", post("g1", &[&te[..], b"0_2e\r\n\r\nGET /fn/t/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"].concat()), vec![refused(BAD)]),
        vector("garden S2: NUL and CR in a field value", get("g2", b"Header: v\x00\ralue\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S3: whitespace before the colon", get("g3", b"Content-Length : 34\r\n\r\nGET /fn/t/x HTTP/1.1\r\nHost: a\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S4: whitespace before the first field name", b"GET /fn/t/g4 HTTP/1.1\r\n\tContent-Length: 1\r\nHost: a\r\n\r\nX", vec![refused(BAD)]),
        vector("garden S5: version 1.32", b"GET /fn/t/g5 HTTP/1.32\r\nHost: a\r\n\r\n", vec![refused(&[400, 505])]),
        vector("garden S6: method with separators", b"G=\":<>(e),[T];?\" /fn/t/g6 HTTP/1.1\r\nHost: a\r\n\r\n", vec![refused(BAD)]),
        vector("garden S8: non-ASCII field name", get("g8", b"\xefoo: bar\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S9: LF as request-line whitespace", b"GET /fn/t/g9\nHTTP/1.1\r\nHost: a\r\n\r\n", vec![refused(BAD)]),
        vector("garden S10: content-length +1_0", get("g10", b"Content-Length: +1_0\r\n\r\n0123456789"), vec![refused(BAD)]),
        vector("garden S11/T25: transfer-encoding chunked twice", post("g11", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nZ\r\n0\r\n\r\n"),
            vec![refused(BAD), forwarded_exactly(&[200], vec![req("POST", "/g11", b"Z")], vec![head("POST /g11 HTTP/1.1", &["Host: a"], "transfer-encoding: chunked")])]),
        vector("garden S12: \\xa0 around chunked", post("g12", b"Transfer-Encoding: \xa0chunked\xa0\r\n\r\n0\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S13: CR as a field line end", get("g13", b"Visible: :/\rSmuggled: :)\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S14: control bytes in a field name", get("g14", b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\t\x0b\x0c\x0e\x0f\x10 \"(),/;<=>?@[/]{}: whatever\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S15: CR in the version", b"GET /fn/t/g15 HTTP/\r\r1.1\r\nHost: a\r\n\r\n", vec![refused(BAD)]),
        vector("garden S16/T5: empty content-length", get("g16", b"Content-Length: \r\n\r\n"), vec![refused(BAD)]),
        vector("garden S17: empty chunk size", post("g17", b"Transfer-Encoding: chunked\r\n\r\n\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S18: empty field name", get("g18", b": ignored\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S19: LF LF after an empty value", get("g19", b"Useless:\n\nGET /fn/t/g19b HTTP/1.1\r\nHost: a\r\n\r\n"),
            vec![refused(BAD), forwarded_exactly(&[200, 200], vec![req("GET", "/g19", b""), req("GET", "/g19b", b"")],
                vec![head("GET /g19 HTTP/1.1", &["Host: a", "Useless: "], ""), head("GET /g19b HTTP/1.1", &["Host: a"], "")])]),
        vector("garden S20: \\x85 before the colon", get("g20", b"Content-Length\x85: 10\r\n\r\n0123456789"), vec![refused(BAD)]),
        vector("garden S21/T15/T18: ,chunked with content-length", get("g21", b"Transfer-Encoding: ,chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S23: conflicting content-lengths, first wins", get("g23", b"Content-Length: 1\r\nContent-Length: 0\r\n\r\nZ"), vec![refused(BAD)]),
        vector("garden S24: version overflow", b"GET /fn/t/g24 HTTP/4294967295.255\r\nHost: a\r\n\r\n", vec![refused(&[400, 505])]),
        vector("garden S25: 0x chunk size", post("g25", b"Transfer-Encoding: chunked\r\n\r\n0x1\r\nZ\r\n0\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S25: +1 chunk size", post("g25", b"Transfer-Encoding: chunked\r\n\r\n+1\r\nZ\r\n0\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S26: negative content-length", get("g26", b"Content-Length: -48\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S27: a field line that is only a colon", get("g27", b":\r\nI: am chopped off\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S28: no colon", get("g28", b"Content-Length 10\r\n\r\n0123456789"), vec![refused(BAD)]),
        vector("garden S29: content-length 1Z", get("g29", b"Content-Length: 1Z\r\n\r\nZ"), vec![refused(BAD)]),
        vector("garden S30: head ended by CR LF CR X", get("g30", b"\rZGET /evil: HTTP/1.1\r\nHost: a\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S31: chunk line ended by CR X", post("g31", b"Transfer-Encoding: chunked\r\n\r\n5\r\r;ABCD\r\n34\r\nE\r\n0\r\n\r\nGET /fn/t/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S32: content-length 010 is ten", get("g32", b"Content-Length: 010\r\n\r\n0123456789"),
            vec![forwarded_exactly(&[200], vec![req("GET", "/g32", b"0123456789")], vec![head("GET /g32 HTTP/1.1", &["Host: a"], "content-length: 10")])]),
        vector("garden S33/T22: conflicting content-lengths, last wins", get("g33", b"Content-Length: 0\r\nContent-Length: 1\r\n\r\nZ"), vec![refused(BAD)]),
        vector("garden S34/T10: CR in a field value", get("g34", b"Header: va\rlue\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S35: NUL in a field value", get("g35", b"Test: test\x00THESE BYTES GET DROPPED\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S36: CR in chunk-ext whitespace", post("g36", &[&b"Transfer-Encoding: chunked\r\n\r\n41;a=b\r\r"[..], &[b'X'; 65], b"\r\n0\r\n\r\nGET /fn/t/x HTTP/1.1\r\nHost: a\r\nContent-Length: 412\r\n\r\n"].concat()), vec![refused(BAD)]),
        vector("garden S37: field name continued on the next line", post("g37", b"Transfer-\r\nEncoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S38: empty content-length before a request", get("g38", b"Content-Length: \r\n\r\nGET /fn/t/x HTTP/1.1\r\nHost: a\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S39: trailer that looks like a request line", get("g39", b"Transfer-Encoding: chunked\r\n\r\n0\r\nX:POST / HTTP/1.1\r\n\r\n"),
            vec![forwarded_exactly(&[200], vec![req("GET", "/g39", b"")], vec![head("GET /g39 HTTP/1.1", &["Host: a"], "transfer-encoding: chunked")])]),
        vector("garden S40: NUL method", b"\x00 /fn/t/g40 HTTP/............0596.7407.\r\nHost: a\r\n\r\n", vec![refused(BAD)]),
        vector("garden S42/T11: empty then real content-length", get("g42", b"Content-Length: \r\nContent-Length: 43\r\n\r\nPOST /evil HTTP/1.1\r\nContent-Length: 18\r\n\r\nGET / HTTP/1.1\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S43: NUL at a value's end", get("g43", b"Evil: evil\x00\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S44: unknown coding", post("g44", b"Transfer-Encoding: blegh\r\n\r\n1\r\nZ\r\n0\r\n\r\n"), vec![refused(BAD)]),
        Vector {
            name: "garden S45: garbage after a closing request".into(),
            bytes: get("g45", b"Connection: close\r\n\r\nInvalid\r\n\r\n"),
            expect: vec![forwarded_exactly(&[200], vec![req("GET", "/g45", b"")], vec![head("GET /g45 HTTP/1.1", &["Host: a"], "")])],
            tail: false,
        },
        vector("garden S46: \\xff around chunked", post("g46", b"Transfer-Encoding: \xffchunked\xff\r\n\r\n1\r\nZ\r\n0\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S47: invalid chunk then a request", post("g47", b"Transfer-Encoding: chunked\r\n\r\nINVALID!!!\r\nGET /fn/t/x HTTP/1.1\r\nHost: a\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S48: pipelined requests after content-length 0",
            [post("g48a", b"Content-Length: 0\r\nConnection:keep-alive\r\n\r\n"), post("g48b", format!("Content-Length: {}\r\n\r\n", body48.len()).as_bytes()), body48.to_vec()].concat(),
            vec![forwarded(&[200, 200], vec![req("POST", "/g48a", b""), req("POST", "/g48b", body48)])]),
        vector("garden T1: content-length 0x10", post("t1", b"Content-Length: 0x10\r\n\r\nZ"), vec![refused(BAD)]),
        vector("garden T2: invalid chunk sizes", post("t2", b"Transfer-Encoding: chunked\r\n\r\nZ\r\nZZ\r\nZZZ\r\n\r\n"), vec![refused(BAD)]),
        vector("garden T3: CR before the extension's semicolon", post("t3", b"Transfer-Encoding: chunked\r\n\r\n2\r\r;a\r\n02\r\n41\r\n0\r\n\r\nGET /fn/t/x HTTP/1.1\r\nHost: a\r\nContent-Length: 430\r\n\r\n0\r\n\r\n"), vec![refused(BAD)]),
        vector("garden T4: CR inside a chunk line", post("t4", b"Transfer-Encoding: chunked\r\n\r\n1\r0\n"), vec![refused(BAD)]),
        vector("garden T6: \\x85 in a field name", get("t6", b"Header\x85: value\r\n\r\n"), vec![refused(BAD)]),
        vector("garden T7: chunk size with junk after it", post("t7", b"Transfer-Encoding: chunked\r\n\r\n1these-bytes-never-get-validated\r\nZ\r\n0\r\n\r\n"), vec![refused(BAD)]),
        vector("garden T9: ,chunked", post("t9", b"Transfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n"),
            vec![refused(BAD), forwarded_exactly(&[200], vec![req("POST", "/t9", b"")], vec![head("POST /t9 HTTP/1.1", &["Host: a"], "transfer-encoding: chunked")])]),
        vector("garden T10: CRs in a field value", get("t10", b"Invalid-Header: this\rvalue\ris\rinvalid\r\n\r\n"), vec![refused(BAD)]),
        vector("garden T12: NUL in host", b"GET /fn/t/t12 HTTP/1.1\r\nHost: google.com\x00.kallus.org\r\n\r\n", vec![refused(BAD)]),
        vector("garden T13: bare LF after chunk data", post("t13", b"Transfer-Encoding: chunked\r\n\r\na\r\n0123456789\n0\r\n\r\n"), vec![refused(BAD)]),
        vector("garden T14: LF inside a field name", get("t14", b"Te\nst: test\r\n\r\n"), vec![refused(BAD)]),
        vector("garden T16: bare LF heads", b"GET /fn/t/t16 HTTP/1.1\nHost: whatever\n\n",
            vec![refused(BAD), forwarded_exactly(&[200], vec![req("GET", "/t16", b"")], vec![head("GET /t16 HTTP/1.1", &["Host: whatever"], "")])]),
        vector("garden T17: chunk data holding CRLFs and a request", post("t17", b"Transfer-Encoding: chunked\r\n\r\n17\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n\r\n0\r\n\r\n"),
            vec![forwarded(&[200], vec![req("POST", "/t17", b"0\r\n\r\nGET / HTTP/1.1\r\n\r\n")])]),
        vector("garden T19: -0x0 chunk size", post("t19", b"Transfer-Encoding: chunked\r\n\r\n-0x0\r\n\r\n"), vec![refused(BAD)]),
        vector("garden T20: NUL in a field line without colon", get("t20", b"a:b\r\nc\x00\r\n\r\n"), vec![refused(BAD)]),
        vector("garden T21: GET with a body", get("t21", b"Content-Length: 10\r\n\r\n1234567890"),
            vec![forwarded_exactly(&[200], vec![req("GET", "/t21", b"1234567890")], vec![head("GET /t21 HTTP/1.1", &["Host: a"], "content-length: 10")])]),
        vector("garden T23: content-length and transfer-encoding", post("t23", b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), vec![refused(BAD)]),
        vector("garden T24: whitespace before the chunk size", post("t24", b"Transfer-Encoding: chunked\r\n\r\n           0\r\n\r\n"), vec![refused(BAD)]),
        vector("garden S3 server: extra byte after a chunked body is the next request", get("s3x", b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n\x00"),
            vec![forwarded(&[200, 400], vec![req("GET", "/s3x", b"")])]),
    ];
    for v in &mut v {
        if v.name.starts_with("garden S3 server") {
            v.tail = false;
        }
    }
    v
}

#[test]
fn http_garden_trophies() {
    run_all(&garden());
}

// ---------------------------------------------------------------------------
// PortSwigger's request smuggling material
// (portswigger.net/web-security/request-smuggling, its "obfuscating the TE
// header" list, "HTTP Desync Attacks: Request Smuggling Reborn" 2019,
// "Browser-Powered Desync Attacks" 2022 for CL.0) and uNetworking/h1spec
// (http_test.ts).

fn portswigger_and_h1spec() -> Vec<Vector> {
    let post = |n: &str, rest: &[u8]| -> Vec<u8> {
        [
            format!("POST /fn/t/{n} HTTP/1.1\r\nHost: x\r\n").as_bytes(),
            rest,
        ]
        .concat()
    };
    let cl0 = b"GET /fn/t/hopefully404 HTTP/1.1\r\nFoo: x";
    let mut v = vec![
        vector("portswigger CL.TE", post("ps1", b"Content-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED"), vec![refused(BAD)]),
        vector("portswigger TE.CL", post("ps2", b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"), vec![refused(BAD)]),
        vector("portswigger CL.0", post("ps3", &[format!("Content-Length: {}\r\n\r\n", cl0.len()).as_bytes(), cl0].concat()),
            vec![forwarded_exactly(&[200], vec![req("POST", "/ps3", cl0)], vec![head("POST /ps3 HTTP/1.1", &["Host: x"], &format!("content-length: {}", cl0.len()))])]),
        vector("portswigger expect 100-continue", post("ps4", b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello"),
            vec![forwarded_exactly(&[200], vec![req("POST", "/ps4", b"hello")], vec![head("POST /ps4 HTTP/1.1", &["Host: x"], "content-length: 5")])]),
        vector("portswigger obfuscated expect", post("ps5", b"Expect: y 100-continue\r\nContent-Length: 5\r\n\r\nhello"),
            vec![forwarded(&[200], vec![req("POST", "/ps5", b"hello")])]),
        vector("h1spec: no version", b"GET /fn/t/h1 \r\nHost: x\r\n\r\n", vec![refused(BAD)]),
        vector("h1spec: invalid field name characters", b"GET /fn/t/h1 HTTP/1.1\r\nHost: x\r\nX-Invalid[]: test\r\n\r\n", vec![refused(BAD)]),
        vector("h1spec: overflowing negative content-length", post("h1", b"Content-Length: -123456789123456789123456789\r\n\r\n"), vec![refused(BAD)]),
        vector("h1spec: negative content-length", post("h1", b"Content-Length: -1234\r\n\r\n"), vec![refused(BAD)]),
        vector("h1spec: non-numeric content-length", post("h1", b"Content-Length: abc\r\n\r\n"), vec![refused(BAD)]),
        vector("h1spec: content-length overflowing u64", post("h1", b"Content-Length: 18446744073709551616\r\n\r\n"), vec![refused(&[400, 413])]),
        vector("h1spec: control character in a value", b"GET /fn/t/h1 HTTP/1.1\r\nHost: x\r\nX-Bad-Control-Char: test\x07\r\n\r\n", vec![refused(BAD)]),
        vector("h1spec: HTTP/9.9", b"GET /fn/t/h1 HTTP/9.9\r\nHost: x\r\n\r\n", vec![refused(&[400, 505])]),
        vector("h1spec: junk before the method", b"Extra lineGET /fn/t/h1 HTTP/1.1\r\nHost: x\r\n\r\n", vec![refused(BAD)]),
        vector("h1spec: CR after the head's fields", b"GET /fn/t/h1 HTTP/1.1\r\nHost: x\r\n\rSome-Header: Test\r\n\r\n", vec![refused(BAD)]),
        vector("h1spec: TE and CL in varying case", post("h1", b"content-LengtH: 5\r\nTransFer-Encoding: chunked\r\n\r\nc\r\nHellO world1\r\n0\r\n\r\n"), vec![refused(BAD)]),
        vector("h1spec: edge-case fields", b"GET /fn/t/h1 HTTP/1.1\r\nhoSt:\texample.com\r\nempty:\r\n\r\n",
            vec![forwarded_exactly(&[200], vec![req("GET", "/h1", b"")], vec![head("GET /h1 HTTP/1.1", &["hoSt: example.com", "empty: "], "")])]),
        vector("h1spec: chunked body", post("h1", b"Transfer-Encoding: chunked\r\n\r\nc\r\nHellO world1\r\n0\r\n\r\n"),
            vec![forwarded_exactly(&[200], vec![req("POST", "/h1", b"HellO world1")], vec![head("POST /h1 HTTP/1.1", &["Host: x"], "transfer-encoding: chunked")])]),
    ];
    // The "obfuscating the TE header" list, each with a content-length
    // (TE.TE through CL.TE).
    for (i, te) in [
        &b"Transfer-Encoding: xchunked"[..],
        b"Transfer-Encoding : chunked",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x",
        b"Transfer-Encoding:\tchunked",
        b" Transfer-Encoding: chunked",
        b"X: X\nTransfer-Encoding: chunked",
        b"Transfer-Encoding\n: chunked",
        b"Transfer-Encoding: x\r\nTransfer-Encoding: chunked",
    ]
    .into_iter()
    .enumerate()
    {
        v.push(vector(
            format!("portswigger TE obfuscation {i}: {}", show(te)),
            post(
                &format!("ps-te{i}"),
                &[te, b"\r\nContent-Length: 4\r\n\r\n1\r\nZ\r\nQ\r\n\r\n"].concat(),
            ),
            vec![refused(BAD)],
        ));
    }
    v
}

#[test]
fn portswigger_and_h1spec_vectors() {
    run_all(&portswigger_and_h1spec());
}

// ---------------------------------------------------------------------------
// defparam/smuggler, configs/exhaustive.py: all 668 Transfer-Encoding
// mutations, generated here as that file generates them (the gadget line
// right after the request line; Python's `%c` of 0x80–0xff is sent UTF-8
// encoded, as smuggler sends it), each tried with smuggler's CL.TE and
// TE.CL probes (`_check_clte`, `_check_tecl`, with the "good" lengths)
// and once without a content-length.

fn smuggler_mutations() -> Vec<(String, Vec<u8>)> {
    let mut m: Vec<(String, Vec<u8>)> = [
        ("nameprefix1", " Transfer-Encoding: chunked"),
        ("tabprefix1", "Transfer-Encoding:\tchunked"),
        ("tabprefix2", "Transfer-Encoding\t:\tchunked"),
        ("spacejoin1", "Transfer Encoding: chunked"),
        ("underjoin1", "Transfer_Encoding: chunked"),
        ("smashed", "Transfer Encoding:chunked"),
        ("space1", "Transfer-Encoding : chunked"),
        ("valueprefix1", "Transfer-Encoding:  chunked"),
        ("vertprefix1", "Transfer-Encoding:\u{b}chunked"),
        ("commaCow", "Transfer-Encoding: chunked, cow"),
        ("cowComma", "Transfer-Encoding: cow, chunked"),
        ("contentEnc", "Content-Encoding: chunked"),
        ("linewrapped1", "Transfer-Encoding:\n chunked"),
        ("quoted", "Transfer-Encoding: \"chunked\""),
        ("aposed", "Transfer-Encoding: 'chunked'"),
        ("lazygrep", "Transfer-Encoding: chunk"),
        ("sarcasm", "TrAnSFer-EnCODinG: cHuNkeD"),
        ("yelling", "TRANSFER-ENCODING: CHUNKED"),
        ("0dsuffix", "Transfer-Encoding: chunked\r"),
        ("tabsuffix", "Transfer-Encoding: chunked\t"),
        (
            "revdualchunk",
            "Transfer-Encoding: cow\r\nTransfer-Encoding: chunked",
        ),
        ("0dspam", "Transfer\r-Encoding: chunked"),
        ("nested", "Transfer-Encoding: cow chunked bar"),
        ("spaceFF", "Transfer-Encoding:\u{ff}chunked"),
        ("accentCH", "Transfer-Encoding: ch\u{96}nked"),
        ("accentTE", "Transf\u{82}r-Encoding: chunked"),
        ("x-rout", "X:X\rTransfer-Encoding: chunked"),
        ("x-nout", "X:X\nTransfer-Encoding: chunked"),
    ]
    .into_iter()
    .map(|(n, g)| (n.to_owned(), g.as_bytes().to_vec()))
    .collect();
    for i in (0x01..0x20).chain(0x7f..0x100u32) {
        let c = char::from_u32(i).unwrap().to_string();
        m.push((
            format!("midspace-{i:02x}"),
            format!("Transfer-Encoding:{c}chunked").into_bytes(),
        ));
        m.push((
            format!("postspace-{i:02x}"),
            format!("Transfer-Encoding{c}: chunked").into_bytes(),
        ));
        m.push((
            format!("prespace-{i:02x}"),
            format!("{c}Transfer-Encoding: chunked").into_bytes(),
        ));
        m.push((
            format!("endspace-{i:02x}"),
            format!("Transfer-Encoding: chunked{c}").into_bytes(),
        ));
    }
    m
}

/// The field the proxy would forward for a gadget it does not take for
/// framing: `name: value` with the value's whitespace trimmed.
fn forwarded_gadget(gadget: &[u8]) -> Option<String> {
    if gadget.contains(&b'\r') || gadget.contains(&b'\n') {
        return None;
    }
    let colon = gadget.iter().position(|&b| b == b':')?;
    let value = gadget[colon + 1..].trim_ascii();
    Some(format!(
        "{}: {}",
        String::from_utf8_lossy(&gadget[..colon]),
        String::from_utf8_lossy(value)
    ))
}

/// Whether a gadget's lines hold `transfer-encoding` fields whose codings
/// are exactly one `chunked` (RFC 9110 §5.6.1: empty list elements do not
/// count): only then may the proxy take the body for chunked.
fn only_chunked(gadget: &[u8]) -> bool {
    let mut codings = Vec::new();
    for line in gadget.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if line[..colon].eq_ignore_ascii_case(b"transfer-encoding") {
            codings.extend(
                line[colon + 1..]
                    .split(|&b| b == b',')
                    .map(<[u8]>::trim_ascii)
                    .filter(|t| !t.is_empty())
                    .map(<[u8]>::to_ascii_lowercase),
            );
        }
    }
    codings == [b"chunked".to_vec()]
}

#[test]
fn smuggler_exhaustive_transfer_encoding_mutations() {
    let mutations = smuggler_mutations();
    assert_eq!(mutations.len(), 668, "as many as exhaustive.py makes");
    let mut all = Vec::new();
    for (i, (name, gadget)) in mutations.iter().enumerate() {
        let probe = |kind: &str, cl: Option<usize>, body: &[u8]| -> Vec<u8> {
            let mut b = format!("POST /fn/t/te-{i}-{kind} HTTP/1.1\r\n").into_bytes();
            b.extend_from_slice(gadget);
            b.extend_from_slice(b"\r\nHost: x\r\n");
            if let Some(cl) = cl {
                b.extend_from_slice(format!("Content-Length: {cl}\r\n").as_bytes());
            }
            b.extend_from_slice(b"\r\n");
            b.extend_from_slice(body);
            b
        };
        let exact = |kind: &str, framing: &str| -> Vec<Vec<u8>> {
            forwarded_gadget(gadget)
                .map(|g| {
                    vec![head(
                        &format!("POST /te-{i}-{kind} HTTP/1.1"),
                        &[&g, "Host: x"],
                        framing,
                    )]
                })
                .unwrap_or_default()
        };
        let clte = b"1\r\nZ\r\n0\r\n\r\n";
        all.push(vector(
            format!("smuggler {name} CL.TE"),
            probe("clte", Some(11), clte),
            vec![
                refused(BAD),
                forwarded_exactly(
                    &[200],
                    vec![req("POST", &format!("/te-{i}-clte"), clte)],
                    exact("clte", "content-length: 11"),
                ),
            ],
        ));
        let tecl = b"0\r\n\r\n";
        all.push(vector(
            format!("smuggler {name} TE.CL"),
            probe("tecl", Some(5), tecl),
            vec![
                refused(BAD),
                forwarded_exactly(
                    &[200],
                    vec![req("POST", &format!("/te-{i}-tecl"), tecl)],
                    exact("tecl", "content-length: 5"),
                ),
            ],
        ));
        let target = format!("/te-{i}-te");
        let mut expect = vec![
            refused(BAD),
            // Not a framing field at all: no body, and the chunk is a bad
            // next request.
            forwarded_exactly(
                &[200, 400],
                vec![req("POST", &target, b"")],
                exact("te", ""),
            ),
        ];
        if only_chunked(gadget) {
            // Taken for chunked: re-framed, the gadget gone.
            let heads = if gadget.contains(&b'\n') || gadget.contains(&b'\r') {
                Vec::new()
            } else {
                vec![head(
                    &format!("POST {target} HTTP/1.1"),
                    &["Host: x"],
                    "transfer-encoding: chunked",
                )]
            };
            expect.push(forwarded_exactly(
                &[200],
                vec![req("POST", &target, b"Z")],
                heads,
            ));
        }
        all.push(vector(
            format!("smuggler {name} TE alone"),
            probe("te", None, clte),
            expect,
        ));
    }
    run_all(&all);
}

// ---------------------------------------------------------------------------
// JeppW/smugchunks (core/payloads.py, the "funky chunks" techniques):
// every payload with every ambiguous line terminator it tries.

#[test]
fn smugchunks_funky_chunks() {
    let payloads: [(&str, &[&str], &str); 9] = [
        (
            "TERM.EXT",
            &["\n", "\r", "\rX", "\r\r"],
            "2;{lt}XX\r\n10\r\n1f\r\nAAAABBBBCCCC\r\n0\r\n\r\nDDDDEEEEFFFF\r\n0\r\n\r\n",
        ),
        (
            "EXT.TERM",
            &["\n", "\r", "\rX", "\r\r"],
            "2;{lt}XX\r\n22\r\nc\r\nAAAABBBBCCCC\r\n0\r\n\r\nDDDDEEEEFFFF\r\n0\r\n\r\n",
        ),
        (
            "TERM.SPILL",
            &["\n", "\r", "", "XX", "\rX", "\r\r"],
            "5\r\nAAAAA{lt}c\r\n17\r\nAAAABBBB\r\n0\r\n\r\nCCCCDDDD\r\n0\r\n\r\n",
        ),
        (
            "SPILL.TERM",
            &["\n", "\r", "", "XX", "\rX", "\r\r"],
            "5\r\nAAAAA{lt}1a\r\n8\r\nAAAABBBB\r\n0\r\n\r\nCCCCDDDD\r\n0\r\n\r\n",
        ),
        (
            "TERM.TRAIL",
            &["\n", "\r", "\r\r"],
            "2\r\nXX\r\n0\r\n{lt}xxx: yyy\r\n\r\n",
        ),
        (
            "1-byte backend overread",
            &["\n", "\r"],
            "2\r\nXX{lt}12\r\nXX\r\n19\r\nXXAAAABBBB\r\n0\r\n\r\nCCCCDDDD\r\n0\r\n\r\n",
        ),
        (
            "1-byte frontend overread",
            &["\n", "\r"],
            "2\r\nXX{lt}10\r\n\r\nAAAABBBBCCCCDD\r\n0\r\n\r\n",
        ),
        (
            "2-byte backend overread",
            &[""],
            "2\r\nXX{lt}012\r\nXX\r\n19\r\nXXAAAABBBB\r\n0\r\n\r\nCCCCDDDD\r\n0\r\n\r\n",
        ),
        (
            "2-byte frontend overread",
            &[""],
            "2\r\nxx{lt}010\r\n\r\nAAAABBBBCCCCDD\r\n0\r\n\r\n",
        ),
    ];
    let mut all = Vec::new();
    for (name, terminators, body) in payloads {
        for lt in terminators {
            all.push(vector(
                format!("smugchunks {name} {lt:?}"),
                format!(
                    "POST /fn/t/sc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{}",
                    body.replace("{lt}", lt)
                ),
                vec![refused(BAD)],
            ));
        }
    }
    run_all(&all);
}

/// Found by the `end_to_end` fuzz target (proxy/fuzz/artifacts/end_to_end/
/// target-outside-rfc3986-relayed-hyper-refuses): httparse takes request
/// targets with bytes RFC 3986 does not allow, the proxy relays them, and
/// a hyper-based instance refuses the request (`` ` ``, `<`, `>`: the `http`
/// crate takes `{`, `|`, `"`, `\`, `^`) while fnhttp takes it. Refuse
/// (RFC 9112 §3.2: 400 for an invalid request-target) or percent-encode.
#[test]
fn targets_outside_rfc_3986_are_refused_or_encoded() {
    let mut all = Vec::new();
    for (raw, encoded) in [("/a`b", "/a%60b"), ("/a<b>", "/a%3Cb%3E"), ("/<", "/%3C")] {
        all.push(vector(
            format!("target {raw}"),
            format!("GET /fn/t{raw} HTTP/1.1\r\nHost: x\r\n\r\n"),
            vec![
                refused(&[400]),
                forwarded(&[200], vec![req("GET", encoded, b"")]),
            ],
        ));
    }
    run_all(&all);
}
