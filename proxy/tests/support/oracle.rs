//! Properties of the proxy's HTTP/1.1 pieces (`h1.rs`, `path.rs`) on
//! arbitrary bytes, checked against independent readings: httparse's own
//! result, the strict RFC 9112 reference (`strict.rs`) and the project's
//! LF-tolerant `examples/fnhttp`. Each function panics on a violation; the
//! seeded randomized test (`tests/randomized.rs`) and the cargo-fuzz
//! targets (`proxy/fuzz/`) both call them.
//!
//! The property behind them all: whatever the proxy accepts, the message
//! it writes on (towards the instance or the client) is strictly valid and
//! every reader finds its end exactly where the proxy assumed.

use std::ops::Range;

use containerpub_proxy::chunked;
use containerpub_proxy::h1::{self, Framing};
use containerpub_proxy::path;

use super::strict;

/// More line ends before the start line than the proxy accepts
/// (`h1::MAX_LEADING_EMPTY`).
fn too_many_empty_lines(data: &[u8]) -> bool {
    data.iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count()
        > h1::MAX_LEADING_EMPTY
}

fn show(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

/// `range` as a part of `buf` (the offsets must lie inside it).
fn part<'a>(buf: &'a [u8], range: &Range<usize>, what: &str) -> &'a [u8] {
    buf.get(range.clone()).unwrap_or_else(|| {
        panic!(
            "{what} at {range:?} outside the {} bytes parsed: {}",
            buf.len(),
            show(buf)
        )
    })
}

/// The fields as the reference framing functions take them.
fn ref_fields(buf: &[u8], fields: &[h1::Field]) -> Vec<strict::Field> {
    fields
        .iter()
        .map(|f| {
            (
                String::from_utf8_lossy(part(buf, &f.name, "field name")).to_ascii_lowercase(),
                part(buf, &f.value, "field value").trim_ascii().to_vec(),
            )
        })
        .collect()
}

fn same_framing(proxy: Framing, reference: strict::Framing) -> bool {
    matches!(
        (proxy, reference),
        (Framing::Empty, strict::Framing::Length(0))
            | (Framing::Chunked, strict::Framing::Chunked)
            | (Framing::Close, strict::Framing::Close)
    ) || matches!((proxy, reference), (Framing::Length(a), strict::Framing::Length(b)) if a == b)
}

/// A body for a message framed so, for the readers that need one.
fn body_for(framing: Framing) -> &'static [u8] {
    match framing {
        Framing::Length(_) => b"",
        Framing::Chunked => b"1\r\nZ\r\n0\r\n\r\n",
        Framing::Empty | Framing::Close => b"",
    }
}

/// Request head and framing: `h1::parse_request` agrees with httparse,
/// `h1::request_semantics` takes a body for chunked only when its codings
/// are exactly `chunked` and otherwise frames it as RFC 9112 §6.3 says,
/// and the head written for the instance is strictly valid, framed the
/// same for the strict reference and for fnhttp.
pub fn request_head(data: &[u8]) {
    let mut fields = Vec::new();
    let got = h1::parse_request(data, &mut fields);
    let mut headers = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let reference = req.parse(data);
    let line = match (&got, &reference) {
        (Ok(Some(line)), Ok(httparse::Status::Complete(n))) => {
            assert_eq!(line.head_len, *n, "head length: {}", show(data));
            line.clone()
        }
        (Ok(None), Ok(httparse::Status::Partial)) => {
            assert!(data.len() < h1::MAX_HEAD);
            return;
        }
        (Err(h1::HeadError::TooLarge), Ok(httparse::Status::Partial)) => {
            assert!(data.len() >= h1::MAX_HEAD);
            return;
        }
        (Err(h1::HeadError::TooLarge), Err(httparse::Error::TooManyHeaders)) => return,
        (Err(h1::HeadError::Invalid(_)), Err(e)) if *e != httparse::Error::TooManyHeaders => {
            return;
        }
        // Refused on purpose where httparse would go on skipping them.
        (Err(h1::HeadError::Invalid(_)), _) if too_many_empty_lines(data) => return,
        (got, reference) => panic!(
            "parse_request {got:?} but httparse {reference:?}: {}",
            show(data)
        ),
    };
    assert_eq!(
        part(data, &line.method, "method"),
        req.method.unwrap().as_bytes()
    );
    assert_eq!(
        part(data, &line.target, "target"),
        req.path.unwrap().as_bytes()
    );
    assert_eq!(line.minor, req.version.unwrap());
    assert_eq!(fields.len(), req.headers.len());
    for (f, h) in fields.iter().zip(req.headers.iter()) {
        assert_eq!(part(data, &f.name, "field name"), h.name.as_bytes());
        assert_eq!(part(data, &f.value, "field value"), h.value);
    }

    let Ok(sem) = h1::request_semantics(data, line.minor, &fields) else {
        return;
    };
    // The reference frames the same fields (its `host` rule aside: the
    // engine answers for `host`).
    let mut rf = ref_fields(data, &fields);
    rf.retain(|(n, _)| n != "host");
    rf.push(("host".into(), b"x".to_vec()));
    match strict::request_framing(line.minor, &rf) {
        Ok(r) => assert!(
            same_framing(sem.framing, r),
            "framing {:?}, RFC 9112 says {r:?}: {}",
            sem.framing,
            show(data)
        ),
        // `chunked` more than once (RFC 9112 §7: a sender MUST NOT) taken
        // for one: the proxy re-frames, so no reader sees it twice.
        Err(_)
            if sem.framing == Framing::Chunked
                && strict::list(&rf, "transfer-encoding")
                    .iter()
                    .all(|c| c.eq_ignore_ascii_case(b"chunked")) => {}
        Err(why) => panic!(
            "request_semantics accepted ({:?}) what RFC 9112 refuses ({why}): {}",
            sem.framing,
            show(data)
        ),
    }

    // The head the instance gets.
    let mut out = Vec::new();
    h1::write_request_head(
        &mut out,
        data,
        &line,
        &fields,
        sem.framing,
        &h1::Forwarding {
            path: "/x",
            request_id: b"rid",
            traceparent: b"",
            client_ip: b"192.0.2.1",
            upgrade: sem.upgrade,
        },
    );
    let mut message = out.clone();
    if let Framing::Length(n) = sem.framing {
        if n > 4096 {
            return;
        }
        message.resize(out.len() + n as usize, b'b');
    }
    message.extend_from_slice(body_for(sem.framing));
    for (i, &b) in out.iter().enumerate() {
        let ok = match b {
            b'\n' => i > 0 && out[i - 1] == b'\r',
            b'\r' => out.get(i + 1) == Some(&b'\n'),
            0 => false,
            _ => true,
        };
        assert!(
            ok,
            "bare CR, LF or NUL in the instance's head: {}",
            show(&out)
        );
    }
    // The strict reading gets exactly one `host` (the engine, not h1,
    // answers for it).
    let head_end = out.len();
    assert!(out.ends_with(b"\r\n\r\n"), "{}", show(&out));
    let mut with_host = Vec::new();
    for (i, l) in out[..head_end - 4].split(|&b| b == b'\n').enumerate() {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        if l.len() >= 5 && l[..5].eq_ignore_ascii_case(b"host:") {
            continue;
        }
        with_host.extend_from_slice(l);
        with_host.extend_from_slice(b"\r\n");
        if i == 0 {
            with_host.extend_from_slice(b"host: x\r\n");
        }
    }
    with_host.extend_from_slice(b"\r\n");
    with_host.extend_from_slice(&message[head_end..]);
    match strict::request(&with_host, 0) {
        Ok(Some(m)) => assert_eq!(
            m.len,
            with_host.len(),
            "the instance's head is framed otherwise: {}",
            show(&with_host)
        ),
        Ok(None) => panic!("the instance's head is incomplete: {}", show(&with_host)),
        Err(e) => panic!("the instance's head is invalid ({e}): {}", show(&with_host)),
    }
    let limits = fnhttp::Limits {
        max_headers: h1::MAX_HEADERS + 8,
        max_header_bytes: 2 * h1::MAX_HEAD,
        max_request_line: h1::MAX_HEAD,
        ..fnhttp::Limits::default()
    };
    let mut r: &[u8] = &with_host;
    match fnhttp::parse_request(&mut r, &limits) {
        Ok(Some(_)) => assert!(
            r.is_empty(),
            "fnhttp ends the instance's request {} bytes early: {}",
            r.len(),
            show(&with_host)
        ),
        other => panic!(
            "fnhttp refuses the instance's request ({:?}): {}",
            other.err().map(|e| e.message()),
            show(&with_host)
        ),
    }
}

/// Answer head: `h1::parse_response` agrees with httparse (the reason
/// phrase's offsets included), and when `h1::response_semantics` accepts,
/// the head written for the client is strictly valid, has at most one
/// framing field, and frames the body as the proxy relays it.
pub fn response_head(data: &[u8]) {
    let (head_request, data) = match data.split_first() {
        Some((flags, rest)) => (flags & 1 == 1, rest),
        None => return,
    };
    let mut fields = Vec::new();
    let got = h1::parse_response(data, &mut fields);
    let mut headers = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let reference = resp.parse(data);
    let line = match (&got, &reference) {
        (Ok(Some(line)), Ok(httparse::Status::Complete(n))) => {
            assert_eq!(line.head_len, *n, "head length: {}", show(data));
            line.clone()
        }
        (Ok(None), Ok(httparse::Status::Partial)) => return,
        (Err(h1::HeadError::TooLarge), Ok(httparse::Status::Partial)) => {
            assert!(data.len() >= h1::MAX_HEAD);
            return;
        }
        (Err(h1::HeadError::TooLarge), Err(httparse::Error::TooManyHeaders)) => return,
        (Err(h1::HeadError::Invalid(_)), Err(e)) if *e != httparse::Error::TooManyHeaders => {
            return;
        }
        // Refused on purpose where httparse would go on skipping them.
        (Err(h1::HeadError::Invalid(_)), _) if too_many_empty_lines(data) => return,
        (got, reference) => panic!(
            "parse_response {got:?} but httparse {reference:?}: {}",
            show(data)
        ),
    };
    assert_eq!(line.status, resp.code.unwrap());
    let reason = part(data, &line.reason, "reason phrase");
    assert_eq!(reason, resp.reason.unwrap_or_default().as_bytes());
    for (f, h) in fields.iter().zip(resp.headers.iter()) {
        assert_eq!(part(data, &f.name, "field name"), h.name.as_bytes());
        assert_eq!(part(data, &f.value, "field value"), h.value);
    }
    let Ok(sem) = h1::response_semantics(data, &line, &fields, head_request) else {
        return;
    };
    if line.status == 101 {
        return;
    }
    let mut out = Vec::new();
    h1::write_response_head(
        &mut out,
        data,
        &line,
        &fields,
        &h1::Answering {
            request_id: b"rid",
            server_timing: b"upstream;dur=0.001",
            close: sem.framing == Framing::Close,
            keep_alive_1_0: false,
            http_1_0: false,
            upgraded: false,
        },
    );
    let head = match strict::response_head(&out) {
        Ok(Some(h)) if h.len == out.len() => h,
        other => panic!(
            "the client's head is invalid ({:?}): {} (from {})",
            other.map(|h| h.map(|h| h.len)),
            show(&out),
            show(data)
        ),
    };
    for name in ["content-length", "transfer-encoding"] {
        let n = head.fields.iter().filter(|(f, _)| f == name).count();
        assert!(n <= 1, "{name} {n} times for the client: {}", show(&out));
    }
    match strict::response_framing(head.status, &head.fields, head_request) {
        Ok(r) => assert!(
            same_framing(sem.framing, r),
            "relayed as {:?}, the client reads {r:?}: {} (from {})",
            sem.framing,
            show(&out),
            show(data)
        ),
        Err(e) => panic!("the client's head frames ambiguously ({e}): {}", show(&out)),
    }
}

/// The chunked decoder (`chunked::Decoder`), fed `data` in two pieces split
/// where its first byte says: it ends the body exactly where the strict
/// reference does, with the same data; it never ends a body the
/// reference refuses.
pub fn chunked(data: &[u8]) {
    let (split, data) = match data.split_first() {
        Some((s, rest)) => (usize::from(*s).min(rest.len()), rest),
        None => return,
    };
    let mut c = chunked::Decoder::new();
    let mut decoded = Vec::new();
    let mut used = 0;
    let mut result = Ok(());
    for piece in [&data[..split], &data[split..]] {
        if c.is_done() {
            break;
        }
        match c.decode(piece, |p| {
            if let chunked::Piece::Data(d) = p {
                decoded.extend_from_slice(d);
            }
        }) {
            Ok(n) => {
                assert!(n <= piece.len());
                used += n;
                if !c.is_done() {
                    assert_eq!(n, piece.len(), "an unfinished body takes all it gets");
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    match strict::chunked(data, 0) {
        Ok(Some(r)) => {
            if result.is_ok() {
                assert!(
                    c.is_done(),
                    "the reference ends the body at {}, the decoder goes on: {}",
                    r.len,
                    show(data)
                );
                assert_eq!(used, r.len, "body end: {}", show(data));
                assert_eq!(decoded, r.data, "body data: {}", show(data));
                assert_eq!(c.data_len(), r.data.len() as u64);
            }
        }
        Ok(None) => assert!(
            !c.is_done(),
            "the decoder ends at {used} a body the reference has not seen end: {}",
            show(data)
        ),
        Err(why) => assert!(
            !c.is_done(),
            "the decoder ends at {used} a body the reference refuses ({why}): {}",
            show(data)
        ),
    }
}

/// Invocation paths: no panic, and what `path::parse` returns holds.
pub fn invocation_path(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (p, q) = match s.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (s, None),
    };
    match path::parse(p, q) {
        Ok(inv) => {
            assert!(p.starts_with(path::PREFIX));
            assert!(inv.upstream.starts_with('/'), "{inv:?}");
            assert!(
                containerpub_wire::validate_function_name(&inv.name).is_ok(),
                "{inv:?}"
            );
            assert!(!inv.name.contains('/'));
            if let Some(q) = q {
                assert!(inv.upstream.ends_with(&format!("?{q}")), "{inv:?}");
            }
        }
        Err(path::PathError::NotInvocation) => assert!(!p.starts_with(path::PREFIX)),
        Err(path::PathError::BadName(_)) => assert!(p.starts_with(path::PREFIX)),
    }
}
