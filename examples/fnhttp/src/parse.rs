//! Request parsing (RFC 9112): request line, headers, and a body framed by
//! `Content-Length` or chunked transfer coding, all within size limits.
//!
//! Ambiguous framing is refused rather than guessed (both `Content-Length`
//! and `Transfer-Encoding`, differing lengths, obs-fold, whitespace before
//! the colon), so a proxy in front and this server never disagree about
//! where one request ends and the next begins.
//!
//! Over 600 lines with its unit tests: about 430 of code and 250 of tests,
//! most of them the framing refusals above.

use std::io::{self, BufRead, Read};

use crate::{Request, Version};

/// Size limits applied while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line, in bytes.
    pub max_request_line: usize,
    /// Most header fields (trailer fields count too).
    pub max_headers: usize,
    /// Most bytes of all header lines together.
    pub max_header_bytes: usize,
    /// Largest body, in bytes.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_line: 8 * 1024,
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            max_body: 16 * 1024 * 1024,
        }
    }
}

/// Why a request could not be read.
#[derive(Debug)]
pub enum ParseError {
    /// The connection failed or timed out: there is nobody to answer.
    Io(io::Error),
    /// The peer closed the connection in the middle of a request.
    Incomplete,
    /// The request is malformed (400).
    Bad(&'static str),
    /// The request line is too long (414).
    TargetTooLong,
    /// Too many or too large header fields (431).
    HeadersTooLarge,
    /// The body is over `Limits::max_body` (413).
    BodyTooLarge,
    /// A transfer coding other than chunked (501).
    UnsupportedEncoding,
    /// An HTTP version other than 1.0 and 1.1 (505).
    UnsupportedVersion,
}

impl ParseError {
    /// The status to answer with, or `None` when the connection is gone.
    pub fn status(&self) -> Option<u16> {
        Some(match self {
            Self::Io(_) => return None,
            Self::Incomplete | Self::Bad(_) => 400,
            Self::TargetTooLong => 414,
            Self::HeadersTooLarge => 431,
            Self::BodyTooLarge => 413,
            Self::UnsupportedEncoding => 501,
            Self::UnsupportedVersion => 505,
        })
    }

    /// A short text for the error response.
    pub fn message(&self) -> &'static str {
        match self {
            Self::Io(_) => "connection error",
            Self::Incomplete => "incomplete request",
            Self::Bad(why) => why,
            Self::TargetTooLong => "request line too long",
            Self::HeadersTooLarge => "header fields too large",
            Self::BodyTooLarge => "request body too large",
            Self::UnsupportedEncoding => "only the chunked transfer coding is supported",
            Self::UnsupportedVersion => "only HTTP/1.0 and HTTP/1.1 are supported",
        }
    }
}

impl From<io::Error> for ParseError {
    fn from(err: io::Error) -> Self {
        if err.kind() == io::ErrorKind::UnexpectedEof {
            Self::Incomplete
        } else {
            Self::Io(err)
        }
    }
}

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(u64),
    Chunked,
}

/// A request whose body has not been read yet.
pub(crate) struct Head {
    pub request: Request,
    pub framing: Framing,
    /// `Expect: 100-continue` was sent.
    pub expects_continue: bool,
}

/// Reads one whole request. `Ok(None)`: the peer closed the connection
/// cleanly before starting another request.
pub fn parse_request<R: BufRead>(
    r: &mut R,
    limits: &Limits,
) -> Result<Option<Request>, ParseError> {
    let Some(head) = read_head(r, limits)? else {
        return Ok(None);
    };
    read_body(r, head, limits).map(Some)
}

/// Reads the request line and header fields.
pub(crate) fn read_head<R: BufRead>(
    r: &mut R,
    limits: &Limits,
) -> Result<Option<Head>, ParseError> {
    // RFC 9112 §2.2: ignore at least one empty line before the request line.
    let mut line;
    let mut empty_lines = 0;
    loop {
        line = match read_line(r, limits.max_request_line, ParseError::TargetTooLong)? {
            Some(line) => line,
            None => return Ok(None),
        };
        if !line.is_empty() {
            break;
        }
        empty_lines += 1;
        if empty_lines > 4 {
            return Err(ParseError::Bad("empty lines instead of a request line"));
        }
    }

    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Bad(
            "request line must be: METHOD SP TARGET SP VERSION",
        ));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(ParseError::Bad("invalid method"));
    }
    if target.is_empty() || !target.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return Err(ParseError::Bad("invalid request target"));
    }
    let version = match version {
        b"HTTP/1.1" => Version::Http11,
        b"HTTP/1.0" => Version::Http10,
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            return Err(ParseError::UnsupportedVersion);
        }
        _ => return Err(ParseError::Bad("invalid HTTP version")),
    };
    // Both checked to be ASCII above.
    let method = String::from_utf8_lossy(method).into_owned();
    let target = String::from_utf8_lossy(target).into_owned();
    let (path, query) = split_target(&target)?;

    let headers = read_fields(r, limits)?;
    let request = Request {
        method,
        target,
        path,
        query,
        version,
        headers,
        body: Vec::new(),
    };
    let framing = framing(&request, limits)?;
    let expects_continue = request.version == Version::Http11
        && request
            .header_values("expect")
            .any(|v| v.eq_ignore_ascii_case("100-continue"));
    Ok(Some(Head {
        request,
        framing,
        expects_continue,
    }))
}

/// Reads the body announced by `head` and returns the complete request.
pub(crate) fn read_body<R: BufRead>(
    r: &mut R,
    head: Head,
    limits: &Limits,
) -> Result<Request, ParseError> {
    let mut request = head.request;
    match head.framing {
        Framing::Length(0) => {}
        Framing::Length(len) => {
            // `framing` checked len <= max_body, so the cast cannot truncate.
            let mut body = Vec::with_capacity(len as usize);
            r.take(len).read_to_end(&mut body)?;
            if body.len() as u64 != len {
                return Err(ParseError::Incomplete);
            }
            request.body = body;
        }
        Framing::Chunked => request.body = read_chunked(r, limits)?,
    }
    Ok(request)
}

/// Splits a request target into path and query; accepts origin form
/// (`/p?q`), absolute form (`http://host/p?q`) and `*`.
fn split_target(target: &str) -> Result<(String, Option<String>), ParseError> {
    let rest = if target.starts_with('/') || target == "*" {
        target
    } else if let Some(after) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        match after.find(['/', '?']) {
            Some(i) if after.as_bytes()[i] == b'/' => &after[i..],
            Some(i) => return Ok(("/".to_owned(), Some(after[i + 1..].to_owned()))),
            None => "/",
        }
    } else {
        return Err(ParseError::Bad(
            "request target must be a path starting with '/'",
        ));
    };
    Ok(match rest.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (rest.to_owned(), None),
    })
}

/// Reads header (or trailer) fields up to the empty line.
fn read_fields<R: BufRead>(
    r: &mut R,
    limits: &Limits,
) -> Result<Vec<(String, String)>, ParseError> {
    let mut fields = Vec::new();
    let mut total = 0usize;
    loop {
        let remaining = limits.max_header_bytes.saturating_sub(total);
        let line =
            read_line(r, remaining, ParseError::HeadersTooLarge)?.ok_or(ParseError::Incomplete)?;
        if line.is_empty() {
            return Ok(fields);
        }
        total += line.len() + 2;
        if fields.len() >= limits.max_headers {
            return Err(ParseError::HeadersTooLarge);
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(ParseError::Bad("obsolete line folding in header fields"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(ParseError::Bad("header field without ':'"))?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(ParseError::Bad("invalid header field name"));
        }
        let value = trim_ows(value);
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(ParseError::Bad("control character in a header field value"));
        }
        fields.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
}

/// Decides the body framing (RFC 9112 §6.3), refusing ambiguous requests.
fn framing(request: &Request, limits: &Limits) -> Result<Framing, ParseError> {
    let codings: Vec<String> = request
        .header_values("transfer-encoding")
        .flat_map(|v| v.split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    let has_length = request.header("content-length").is_some();
    if !codings.is_empty() {
        if has_length {
            return Err(ParseError::Bad("both Transfer-Encoding and Content-Length"));
        }
        if request.version == Version::Http10 {
            return Err(ParseError::Bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        return match codings.as_slice() {
            [only] if only == "chunked" => Ok(Framing::Chunked),
            [.., last] if last != "chunked" => {
                Err(ParseError::Bad("chunked must be the final transfer coding"))
            }
            _ => Err(ParseError::UnsupportedEncoding),
        };
    }
    let mut length = None;
    for value in request
        .header_values("content-length")
        .flat_map(|v| v.split(','))
    {
        let value = value.trim();
        if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::Bad("invalid Content-Length"));
        }
        let n: u64 = value
            .parse()
            .map_err(|_| ParseError::Bad("invalid Content-Length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(ParseError::Bad("conflicting Content-Length values"));
        }
        length = Some(n);
    }
    let length = length.unwrap_or(0);
    if length > limits.max_body as u64 {
        return Err(ParseError::BodyTooLarge);
    }
    Ok(Framing::Length(length))
}

/// Reads a chunked body and its trailer section (trailers are discarded).
fn read_chunked<R: BufRead>(r: &mut R, limits: &Limits) -> Result<Vec<u8>, ParseError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r, 1024, ParseError::Bad("chunk size line too long"))?
            .ok_or(ParseError::Incomplete)?;
        let size_end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
        let digits = trim_ows(&line[..size_end]);
        if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(ParseError::Bad("invalid chunk size"));
        }
        // At most 15 hex digits: fits in u64.
        let size = digits.iter().fold(0u64, |n, &d| {
            n * 16 + u64::from((d as char).to_digit(16).unwrap_or(0))
        });
        if size == 0 {
            read_fields(r, limits)?;
            return Ok(body);
        }
        if body.len() as u64 + size > limits.max_body as u64 {
            return Err(ParseError::BodyTooLarge);
        }
        let before = body.len();
        r.take(size).read_to_end(&mut body)?;
        if (body.len() - before) as u64 != size {
            return Err(ParseError::Incomplete);
        }
        let end = read_line(r, 0, ParseError::Bad("chunk data longer than its size"))?
            .ok_or(ParseError::Incomplete)?;
        if !end.is_empty() {
            return Err(ParseError::Bad("chunk data longer than its size"));
        }
    }
}

/// Reads one line ending in LF (a CR before it is dropped), at most `max`
/// bytes without the line ending, else `too_long`. `Ok(None)` at a clean EOF.
fn read_line<R: BufRead>(
    r: &mut R,
    max: usize,
    too_long: ParseError,
) -> Result<Option<Vec<u8>>, ParseError> {
    let mut line = Vec::new();
    loop {
        let buf = match r.fill_buf() {
            Ok(buf) => buf,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err.into()),
        };
        if buf.is_empty() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(ParseError::Incomplete)
            };
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        r.consume(if done { take + 1 } else { take });
        if line.len() > max + 1 {
            return Err(too_long);
        }
        if done {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() > max {
                return Err(too_long);
            }
            if line.contains(&b'\r') {
                return Err(ParseError::Bad("bare CR in a line"));
            }
            return Ok(Some(line));
        }
    }
}

fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// RFC 9110 `tchar`: the characters of a token (method, field name).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Option<Request>, ParseError> {
        parse_request(&mut &raw[..], &Limits::default())
    }

    fn status(raw: &[u8]) -> Option<u16> {
        parse(raw).expect_err("should be refused").status()
    }

    #[test]
    fn simple_get() {
        let req = parse(b"GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: fn\r\nX-Thing:  two words \r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.method, "GET");
        assert_eq!(req.target, "/a/b?x=1&y=%20");
        assert_eq!(req.path, "/a/b");
        assert_eq!(req.query.as_deref(), Some("x=1&y=%20"));
        assert_eq!(req.version, Version::Http11);
        assert_eq!(
            req.headers,
            [
                ("host".into(), "fn".into()),
                ("x-thing".into(), "two words".into())
            ]
        );
        assert_eq!(req.header("X-THING"), Some("two words"));
        assert!(req.body.is_empty());
        assert!(req.keep_alive());
    }

    #[test]
    fn clean_eof_is_none_and_leading_empty_lines_are_skipped() {
        assert!(parse(b"").unwrap().is_none());
        let req = parse(b"\r\nGET / HTTP/1.0\n\n").unwrap().unwrap();
        assert_eq!(req.version, Version::Http10);
        assert!(!req.keep_alive());
        assert_eq!(req.query, None);
    }

    #[test]
    fn content_length_body_and_pipelining() {
        let raw = b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /q? HTTP/1.1\r\nConnection: close\r\n\r\n";
        let mut reader = &raw[..];
        let limits = Limits::default();
        let first = parse_request(&mut reader, &limits).unwrap().unwrap();
        assert_eq!(first.body, b"hello");
        let second = parse_request(&mut reader, &limits).unwrap().unwrap();
        assert_eq!(
            (second.path.as_str(), second.query.as_deref()),
            ("/q", Some(""))
        );
        assert!(!second.keep_alive());
        assert!(parse_request(&mut reader, &limits).unwrap().is_none());
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n7\r\n, world\r\nA \r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n\
            GET /next HTTP/1.1\r\n\r\n";
        let mut reader = &raw[..];
        let limits = Limits::default();
        let req = parse_request(&mut reader, &limits).unwrap().unwrap();
        assert_eq!(req.body, b"hello, world0123456789");
        let next = parse_request(&mut reader, &limits).unwrap().unwrap();
        assert_eq!(next.path, "/next");
    }

    #[test]
    fn malformed_chunked_is_refused() {
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for body in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"3\r\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"5\r\nhel",
            b"5\r\nhello\r\n",
        ] {
            let raw = [head.as_slice(), body].concat();
            assert_eq!(
                status(&raw),
                Some(400),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(status(raw), Some(501));
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n";
        assert_eq!(status(raw), Some(400));
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
            Some(400)
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\na"),
            Some(400)
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(400)
        );
        let same = parse(b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nab")
            .unwrap()
            .unwrap();
        assert_eq!(same.body, b"ab");
    }

    #[test]
    fn malformed_heads_are_refused() {
        for raw in [
            &b"GET /\r\n\r\n"[..],
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET nopath HTTP/1.1\r\n\r\n",
            b"GET / HTTX/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\nName : v\r\n\r\n",
            b"GET / HTTP/1.1\r\n: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: x\x00y\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: x\ry\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort",
            b"\xff\xfe\x00\x01\r\n\r\n",
            b"\r\n\r\n\r\n\r\n\r\n\r\n",
        ] {
            assert_eq!(status(raw), Some(400), "{:?}", String::from_utf8_lossy(raw));
        }
        assert_eq!(status(b"GET / HTTP/2.0\r\n\r\n"), Some(505));
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            max_request_line: 32,
            max_headers: 2,
            max_header_bytes: 64,
            max_body: 8,
        };
        let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(40));
        let err = parse_request(&mut long_target.as_bytes(), &limits).unwrap_err();
        assert_eq!(err.status(), Some(414));
        let many = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(
            parse_request(&mut &many[..], &limits).unwrap_err().status(),
            Some(431)
        );
        let big = format!("GET / HTTP/1.1\r\nA: {}\r\n\r\n", "v".repeat(100));
        assert_eq!(
            parse_request(&mut big.as_bytes(), &limits)
                .unwrap_err()
                .status(),
            Some(431)
        );
        let body = b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\n123456789";
        assert_eq!(
            parse_request(&mut &body[..], &limits).unwrap_err().status(),
            Some(413)
        );
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n5\r\n12345\r\n0\r\n\r\n";
        assert_eq!(
            parse_request(&mut &chunked[..], &limits)
                .unwrap_err()
                .status(),
            Some(413)
        );
    }

    #[test]
    fn absolute_form_and_asterisk() {
        let req = parse(b"GET http://example.com/x?y=1 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (req.path.as_str(), req.query.as_deref()),
            ("/x", Some("y=1"))
        );
        let req = parse(b"GET http://example.com HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.path, "/");
        let req = parse(b"OPTIONS * HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(req.path, "*");
    }

    #[test]
    fn non_utf8_header_values_are_kept_lossily() {
        let req = parse(b"GET / HTTP/1.1\r\nX-Latin: caf\xe9\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.header("x-latin"), Some("caf\u{fffd}"));
    }

    /// Random and mutated inputs never panic (a cheap deterministic fuzz).
    #[test]
    fn garbage_never_panics() {
        let seeds: [&[u8]; 3] = [
            b"POST /a?b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
            b"\r\nPUT http://h/x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"\r\n :;0123456789abcdefABCDEF/?HTTP-\x00\xff\t";
        let limits = Limits {
            max_request_line: 64,
            max_headers: 8,
            max_header_bytes: 256,
            max_body: 64,
        };
        for i in 0..20_000 {
            let mut input = seeds[i % seeds.len()].to_vec();
            for _ in 0..(next() % 6) {
                let pos = (next() as usize) % (input.len() + 1);
                match next() % 3 {
                    0 if pos < input.len() => {
                        input[pos] = alphabet[(next() as usize) % alphabet.len()]
                    }
                    1 => input.insert(pos, alphabet[(next() as usize) % alphabet.len()]),
                    _ => input.truncate(pos),
                }
            }
            let mut reader = &input[..];
            while let Ok(Some(_)) = parse_request(&mut reader, &limits) {}
        }
    }
}
