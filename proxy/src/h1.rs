//! HTTP/1.1 as the proxy relays it: message heads parsed in place
//! (`httparse`) into offsets of the connection's read buffer, the framing
//! rules of RFC 9112 §6 (with the usual defences against request
//! smuggling), the heads written towards the instance and back to the
//! client (chunked bodies are decoded and re-framed by `chunked.rs`).
//!
//! Nothing here does I/O; `engine/` drives it. Every byte comes from a
//! client or an instance: no indexing or slicing that could panic.
//!
//! Over 600 lines on purpose: about 880 without its tests, because parsing,
//! the framing rules and the head writers of both directions share one
//! classification of field names (`Name`) and must be read together to
//! check that what is written is what was assumed; the rest are its unit
//! tests, the cases each rule was written for.
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::string_slice))]

use std::mem::MaybeUninit;
use std::ops::Range;

/// Largest message head accepted, request or response, whether it arrives
/// in pieces or whole in one read (a read buffer can hold more).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields accepted in one head.
pub const MAX_HEADERS: usize = 128;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `content-length` bytes.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// Until the sender closes the connection (responses only).
    Close,
}

/// A head that cannot be relayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("message head over {MAX_HEAD} bytes or {MAX_HEADERS} fields")]
    TooLarge,
    #[error("{0}")]
    Invalid(&'static str),
    /// Well-formed, but asks for what the proxy does not do (501).
    #[error("{0}")]
    NotImplemented(&'static str),
}

impl HeadError {
    /// The status a client gets for a request head with this error.
    pub fn status(&self) -> u16 {
        match self {
            Self::TooLarge => 431,
            Self::Invalid(_) => 400,
            Self::NotImplemented(_) => 501,
        }
    }
}

/// One header field, as offsets into the buffer its head was parsed from,
/// with its name classified once at parse time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Range<usize>,
    pub value: Range<usize>,
    pub kind: Name,
}

/// A parsed request line; its fields are in the `Vec<Field>` passed to
/// [`parse_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLine {
    /// Bytes of the whole head, blank line included.
    pub head_len: usize,
    pub method: Range<usize>,
    pub target: Range<usize>,
    /// HTTP/1.`minor`.
    pub minor: u8,
}

/// A parsed status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine {
    pub head_len: usize,
    pub status: u16,
    pub reason: Range<usize>,
    pub minor: u8,
}

/// What a head says about the message and its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Semantics {
    pub framing: Framing,
    /// The sender keeps the connection open after this message.
    pub keep_alive: bool,
    /// `expect: 100-continue` (requests).
    pub expect_continue: bool,
    /// The request asks to switch protocols (`upgrade` named in
    /// `connection`, an `upgrade` field, HTTP/1.1): a WebSocket handshake.
    pub upgrade: bool,
}

/// Where `part` lies in `buf`, or the empty range at 0 when it is not
/// inside it (httparse hands back a static `""` for a missing or obs-text
/// reason phrase; names, values, methods and targets are always inside).
/// Never wraps: compared before anything is added.
#[inline]
fn offset(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    match buf.len().checked_sub(start) {
        Some(room) if part.len() <= room => start..start + part.len(),
        _ => 0..0,
    }
}

/// Where `part`, a slice httparse cut out of `buf` (a name, a value, the
/// method, the target: always inside it), lies in `buf`. Wrapping
/// arithmetic and no check, for the hot path: were a range ever wrong,
/// every read goes through [`at`] and finds it empty, never panics.
#[inline]
fn offset_within(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    start..start.wrapping_add(part.len())
}

fn collect_fields(buf: &[u8], parsed: &[httparse::Header<'_>], fields: &mut Vec<Field>) {
    fields.clear();
    fields.extend(parsed.iter().map(|h| Field {
        name: offset_within(buf, h.name.as_bytes()),
        value: offset_within(buf, h.value),
        kind: classify(h.name.as_bytes()),
    }));
}

/// The bytes of `range` in `buf` (empty if it is not inside: never a
/// panic).
fn at(buf: &[u8], range: Range<usize>) -> &[u8] {
    buf.get(range).unwrap_or_default()
}

fn map_parse_error(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooLarge,
        httparse::Error::Version => HeadError::Invalid("unsupported HTTP version"),
        _ => HeadError::Invalid("malformed message head"),
    }
}

/// Most `\r`/`\n` bytes before a request or status line (RFC 9112 §2.2
/// asks to ignore at least one empty line there; some clients send one
/// after a body). More is refused: httparse skips them again on every parse.
pub const MAX_LEADING_EMPTY: usize = 8;

/// Decides when a head still arriving is worth parsing again: on the first
/// look, then only when the bytes read since hold a line end (a head can
/// only complete at one; a bad line is still refused at its end) or the
/// buffer reached [`MAX_HEAD`]. Parsing after every read made a head dripped
/// a byte at a time cost quadratic time (64 KiB: about 2 GB parsed); this
/// way a head costs at most [`MAX_HEADERS`] + 3 parses.
#[derive(Debug, Default)]
pub struct HeadScan {
    seen: usize,
}

impl HeadScan {
    /// Whether to parse `buf` now (the head arriving at its start).
    pub fn worth_parsing(&mut self, buf: &[u8]) -> bool {
        let first = self.seen == 0;
        let fresh = buf.get(self.seen..).unwrap_or_default();
        let worth = first || fresh.contains(&b'\n') || buf.len() >= MAX_HEAD;
        self.seen = buf.len();
        worth
    }
}

/// Refuses a head preceded by more than [`MAX_LEADING_EMPTY`] line ends.
fn check_leading_empty(buf: &[u8]) -> Result<(), HeadError> {
    let leading = buf
        .iter()
        .take(MAX_LEADING_EMPTY + 1)
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    if leading > MAX_LEADING_EMPTY {
        return Err(HeadError::Invalid(
            "too many empty lines before the start line",
        ));
    }
    Ok(())
}

/// Parses a request head at the start of `buf`: `Ok(None)` while it is
/// incomplete.
pub fn parse_request(
    buf: &[u8],
    fields: &mut Vec<Field>,
) -> Result<Option<RequestLine>, HeadError> {
    check_leading_empty(buf)?;
    // Uninitialised: zeroing 128 fields costs more than parsing a head.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut headers)
        .map_err(map_parse_error)?;
    match parsed {
        httparse::Status::Partial if buf.len() >= MAX_HEAD => Err(HeadError::TooLarge),
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(head_len) if head_len > MAX_HEAD => Err(HeadError::TooLarge),
        httparse::Status::Complete(head_len) => {
            let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version)
            else {
                return Err(HeadError::Invalid("malformed request line"));
            };
            collect_fields(buf, req.headers, fields);
            Ok(Some(RequestLine {
                head_len,
                method: offset_within(buf, method.as_bytes()),
                target: offset_within(buf, target.as_bytes()),
                minor,
            }))
        }
    }
}

/// Parses a response head at the start of `buf`: `Ok(None)` while it is
/// incomplete.
pub fn parse_response(
    buf: &[u8],
    fields: &mut Vec<Field>,
) -> Result<Option<StatusLine>, HeadError> {
    check_leading_empty(buf)?;
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut headers)
        .map_err(map_parse_error)?;
    match parsed {
        httparse::Status::Partial if buf.len() >= MAX_HEAD => Err(HeadError::TooLarge),
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(head_len) if head_len > MAX_HEAD => Err(HeadError::TooLarge),
        httparse::Status::Complete(head_len) => {
            let (Some(status), Some(minor)) = (resp.code, resp.version) else {
                return Err(HeadError::Invalid("malformed status line"));
            };
            // Outside the buffer (no reason, or obs-text in it): none; the
            // canonical one is written instead.
            let reason = offset(buf, resp.reason.unwrap_or_default().as_bytes());
            collect_fields(buf, resp.headers, fields);
            Ok(Some(StatusLine {
                head_len,
                status,
                reason,
                minor,
            }))
        }
    }
}

/// The comma-separated tokens of a field value, trimmed, empty ones left
/// out.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// The framing and connection facts shared by requests and responses.
struct Scan {
    length: Option<u64>,
    /// The last transfer coding is `chunked`.
    chunked: bool,
    /// How many times `chunked` is listed.
    chunked_count: u32,
    /// How many transfer codings are listed, `chunked` included.
    codings: u32,
    transfer_encoding: bool,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
    /// `connection` names `upgrade`.
    upgrade_token: bool,
    /// An `upgrade` field is present.
    upgrade_field: bool,
    /// `host` fields.
    hosts: u32,
}

fn scan(buf: &[u8], fields: &[Field]) -> Result<Scan, HeadError> {
    let mut s = Scan {
        length: None,
        chunked: false,
        chunked_count: 0,
        codings: 0,
        transfer_encoding: false,
        close: false,
        keep_alive: false,
        expect_continue: false,
        upgrade_token: false,
        upgrade_field: false,
        hosts: 0,
    };
    for f in fields {
        match f.kind {
            Name::ContentLength => {
                // Every value (and every list element) must be the same
                // decimal number.
                let value = at(buf, f.value.clone());
                for t in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
                        return Err(HeadError::Invalid("invalid content-length"));
                    }
                    let n = t.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
                    if s.length.is_some_and(|m| m != n) {
                        return Err(HeadError::Invalid("conflicting content-length values"));
                    }
                    s.length = Some(n);
                }
            }
            Name::TransferEncoding => {
                // Only a final `chunked` frames the body; it must come
                // last, and once.
                s.transfer_encoding = true;
                for t in tokens(at(buf, f.value.clone())) {
                    s.chunked = t.eq_ignore_ascii_case(b"chunked");
                    s.chunked_count += u32::from(s.chunked);
                    s.codings = s.codings.saturating_add(1);
                }
            }
            Name::Connection => {
                let value = at(buf, f.value.clone());
                s.close |= has_token(value, b"close");
                s.keep_alive |= has_token(value, b"keep-alive");
                s.upgrade_token |= has_token(value, b"upgrade");
            }
            Name::Upgrade => s.upgrade_field = true,
            Name::Expect => {
                s.expect_continue |= at(buf, f.value.clone())
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"100-continue");
            }
            Name::Host => s.hosts = s.hosts.saturating_add(1),
            _ => {}
        }
    }
    if s.chunked_count > 1 {
        return Err(HeadError::Invalid("chunked applied more than once"));
    }
    Ok(s)
}

/// What a request head says (RFC 9112 §6.3, §3.2): a body framed by
/// `transfer-encoding` must be `chunked` alone (other codings are 501), a request with both `transfer-encoding` and
/// `content-length` is refused (a smuggling vector), and an HTTP/1.1
/// request has exactly one `host` (an HTTP/1.0 one at most one).
pub fn request_semantics(buf: &[u8], minor: u8, fields: &[Field]) -> Result<Semantics, HeadError> {
    let s = scan(buf, fields)?;
    if s.hosts > 1 {
        return Err(HeadError::Invalid("more than one host field"));
    }
    if s.hosts == 0 && minor >= 1 {
        return Err(HeadError::Invalid("no host field"));
    }
    // `uri-host [ ":" port ]` (RFC 9112 §3.2: an invalid value is a 400).
    let host_ok = |f: &&Field| {
        f.kind != Name::Host
            || at(buf, f.value.clone())
                .iter()
                .all(|&b| is_target_byte(b) && !matches!(b, b'/' | b'?' | b'@'))
    };
    if !fields.iter().all(|f| host_ok(&f)) {
        return Err(HeadError::Invalid("invalid host field value"));
    }
    let framing = match (s.transfer_encoding, s.length) {
        (true, Some(_)) => {
            return Err(HeadError::Invalid(
                "both transfer-encoding and content-length",
            ));
        }
        (true, None) if minor == 0 => {
            return Err(HeadError::Invalid(
                "transfer-encoding in an HTTP/1.0 request",
            ));
        }
        (true, None) if !s.chunked => {
            return Err(HeadError::Invalid("transfer-encoding must end in chunked"));
        }
        // Codings before `chunked` (`gzip, chunked`): servers disagree on
        // them (some decode, some ignore, some refuse), so none is relayed
        // (RFC 9112 §6.1: 501 for a coding the server does not implement).
        (true, None) if s.codings != s.chunked_count => {
            return Err(HeadError::NotImplemented(
                "transfer codings other than chunked are not implemented",
            ));
        }
        (true, None) => Framing::Chunked,
        (false, None) => Framing::Empty,
        (false, Some(n)) => Framing::Length(n),
    };
    Ok(Semantics {
        framing,
        keep_alive: if minor == 0 {
            s.keep_alive && !s.close
        } else {
            !s.close
        },
        expect_continue: s.expect_continue && minor >= 1,
        upgrade: s.upgrade_token && s.upgrade_field && minor >= 1,
    })
}

/// What a response head says, for a response to a `HEAD` request when
/// `head_request` (RFC 9112 §6.3): `chunked` listed twice, differing
/// `content-length` values and `transfer-encoding` from an HTTP/1.0 server
/// are errors; with both `transfer-encoding` and `content-length` the
/// former frames the body and the connection is not kept.
pub fn response_semantics(
    buf: &[u8],
    status: &StatusLine,
    fields: &[Field],
    head_request: bool,
) -> Result<Semantics, HeadError> {
    if status.status < 100 {
        return Err(HeadError::Invalid("status code below 100"));
    }
    let s = scan(buf, fields)?;
    if s.transfer_encoding && status.minor == 0 {
        return Err(HeadError::Invalid(
            "transfer-encoding in an HTTP/1.0 answer",
        ));
    }
    let bodiless =
        head_request || status.status / 100 == 1 || status.status == 204 || status.status == 304;
    let framing = if bodiless {
        Framing::Empty
    } else if s.transfer_encoding {
        if s.chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match s.length {
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    let keep_alive = if status.minor == 0 {
        s.keep_alive && !s.close
    } else {
        !s.close
    };
    // Both framings: a sign of a confused or hostile sender.
    let ambiguous = s.transfer_encoding && s.length.is_some();
    Ok(Semantics {
        framing,
        keep_alive: keep_alive && framing != Framing::Close && !ambiguous,
        expect_continue: false,
        upgrade: false,
    })
}

/// Whether the head's `transfer-encoding` lists a coding other than
/// `chunked` (which an HTTP/1.0 peer cannot be sent).
pub fn has_codings_besides_chunked(buf: &[u8], fields: &[Field]) -> bool {
    fields
        .iter()
        .filter(|f| f.kind == Name::TransferEncoding)
        .flat_map(|f| tokens(at(buf, f.value.clone())))
        .any(|t| !t.eq_ignore_ascii_case(b"chunked"))
}

/// Splits a request target: an absolute-form target
/// (`http://authority/path?query`, RFC 9112 §3.2.2) gives its authority
/// (which replaces `host`) and its path and query in origin form; any
/// other form is returned as it is, without authority. Compares bytes
/// only: a target is not text.
pub fn request_target(target: &[u8]) -> Result<Target<'_>, HeadError> {
    // Servers disagree on bytes RFC 3986 does not allow (raw UTF-8, `<`,
    // `` ` ``, `"`, `{`...): some refuse them, some pass them on. None is
    // relayed.
    if !target.iter().all(|&b| is_target_byte(b)) {
        return Err(HeadError::Invalid(
            "request target has a byte outside RFC 3986 (percent-encode it)",
        ));
    }
    for scheme in [&b"http://"[..], b"https://"] {
        let Some((head, rest)) = target.split_at_checked(scheme.len()) else {
            continue;
        };
        if !head.eq_ignore_ascii_case(scheme) {
            continue;
        }
        let end = rest
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(rest.len());
        let (authority, origin) = rest.split_at_checked(end).unwrap_or((rest, b""));
        if authority.is_empty() {
            return Err(HeadError::Invalid("absolute-form target without a host"));
        }
        if authority.contains(&b'@') {
            return Err(HeadError::Invalid("user information in the target"));
        }
        let origin = match origin.first() {
            Some(b'/') => origin,
            _ => b"/",
        };
        return Ok(Target {
            authority: Some(authority),
            origin,
        });
    }
    Ok(Target {
        authority: None,
        origin: target,
    })
}

/// A byte RFC 3986 allows in a URI: unreserved, reserved or `%`.
fn is_target_byte(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'-' | b'.' | b'_' | b'~'
        | b':' | b'/' | b'?' | b'[' | b']' | b'@'
        | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
        | b'%')
}

/// A request target, split by [`request_target`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// The authority of an absolute-form target.
    pub authority: Option<&'a [u8]>,
    /// Path and query (origin form), or the target as it came.
    pub origin: &'a [u8],
}

/// The field names the proxy acts on; everything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    ProxyConnection,
    Te,
    Upgrade,
    Expect,
    Host,
    Trailer,
    XRequestId,
    Traceparent,
    XForwardedFor,
    XForwardedProto,
    /// What a proxy says about the client (RFC 7239, and the de facto
    /// `x-real-ip`, `x-forwarded-host`, `x-forwarded-port`): only the
    /// proxy may say it, so a client's is never sent on.
    Forwarded,
    XRealIp,
    XForwardedHost,
    XForwardedPort,
    Other,
}

/// Which [`Name`] a field name is (ASCII case-insensitive), looking at its
/// length first: most fields are compared with nothing.
fn classify(name: &[u8]) -> Name {
    let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
    match name.len() {
        2 if is(b"te") => Name::Te,
        4 if is(b"host") => Name::Host,
        6 if is(b"expect") => Name::Expect,
        7 if is(b"upgrade") => Name::Upgrade,
        7 if is(b"trailer") => Name::Trailer,
        9 if is(b"forwarded") => Name::Forwarded,
        9 if is(b"x-real-ip") => Name::XRealIp,
        10 if is(b"connection") => Name::Connection,
        10 if is(b"keep-alive") => Name::KeepAlive,
        11 if is(b"traceparent") => Name::Traceparent,
        12 if is(b"x-request-id") => Name::XRequestId,
        14 if is(b"content-length") => Name::ContentLength,
        15 if is(b"x-forwarded-for") => Name::XForwardedFor,
        16 if is(b"proxy-connection") => Name::ProxyConnection,
        16 if is(b"x-forwarded-host") => Name::XForwardedHost,
        16 if is(b"x-forwarded-port") => Name::XForwardedPort,
        17 if is(b"transfer-encoding") => Name::TransferEncoding,
        17 if is(b"x-forwarded-proto") => Name::XForwardedProto,
        _ => Name::Other,
    }
}

impl Name {
    /// Fields that belong to one connection (RFC 9110 §7.6.1) or whose
    /// framing the proxy writes itself; never copied as they are.
    fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Name::Connection
                | Name::KeepAlive
                | Name::ProxyConnection
                | Name::Te
                | Name::Upgrade
                | Name::TransferEncoding
                | Name::ContentLength
        )
    }
}

/// Whether `name` is listed in one of the head's `connection` fields.
fn named_by_connection(buf: &[u8], fields: &[Field], name: &[u8]) -> bool {
    fields
        .iter()
        .any(|f| f.kind == Name::Connection && has_token(at(buf, f.value.clone()), name))
}

/// Whether the head has a `connection` field naming anything but `close`
/// and `keep-alive` (rare; then every field is checked against it).
fn connection_names_fields(buf: &[u8], fields: &[Field]) -> bool {
    fields.iter().any(|f| {
        f.kind == Name::Connection
            && tokens(at(buf, f.value.clone())).any(|t| {
                !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
            })
    })
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    // Backwards from the end: a u64 has at most 20 digits.
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        if let Some(d) = digits.get_mut(i) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(i..).unwrap_or_default());
}

/// Writes one `transfer-encoding` field with every coding of the head's
/// `transfer-encoding` fields, in order (a list split over several fields
/// is joined; `chunked` is written last, once, when `chunked`).
fn push_codings(out: &mut Vec<u8>, buf: &[u8], fields: &[Field], chunked: bool) {
    out.extend_from_slice(b"transfer-encoding: ");
    let mut first = true;
    for f in fields.iter().filter(|f| f.kind == Name::TransferEncoding) {
        for t in tokens(at(buf, f.value.clone())) {
            if chunked && t.eq_ignore_ascii_case(b"chunked") {
                continue;
            }
            if !first {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(t);
            first = false;
        }
    }
    if chunked {
        if !first {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(b"chunked");
    }
    out.extend_from_slice(b"\r\n");
}

/// What the proxy adds to a request on its way to the instance.
pub struct Forwarding<'a> {
    /// Path and query the function sees.
    pub path: &'a str,
    pub request_id: &'a [u8],
    /// `traceparent` sent on (the caller's when valid, else a new one).
    pub traceparent: &'a [u8],
    /// The client's address, as text.
    pub client_ip: &'a [u8],
    /// Forward the protocol switch the client asks for (its `upgrade`
    /// field and `connection: upgrade`).
    pub upgrade: bool,
}

/// Writes the request head sent to the instance: the method, the
/// function's path, HTTP/1.1, the client's fields without the hop-by-hop
/// ones (`connection` cannot remove `host`), `host` taken from an
/// absolute-form target's authority when there is one, the body's framing
/// (a chunked body keeps the codings before `chunked`, and is re-framed
/// without trailers, so `trailer` goes), `x-request-id`, `x-forwarded-for`
/// (the client's address appended to the incoming values) and
/// `x-forwarded-proto`. What else a proxy would say about the client
/// (`forwarded`, `x-real-ip`, `x-forwarded-host`, `x-forwarded-port`) is
/// dropped: a client's own would fool a function that trusts it.
pub fn write_request_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    line: &RequestLine,
    fields: &[Field],
    framing: Framing,
    fwd: &Forwarding<'_>,
) {
    out.extend_from_slice(at(buf, line.method.clone()));
    out.push(b' ');
    out.extend_from_slice(fwd.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // An absolute-form target names the host (RFC 9112 §3.2.2).
    let target = at(buf, line.target.clone());
    let authority = match target.first() {
        Some(b'/') | None => None,
        Some(_) => request_target(target).ok().and_then(|t| t.authority),
    };
    if let Some(authority) = authority {
        push_field(out, b"Host", authority);
    }
    let mut host_sent = authority.is_some();
    let check_connection = connection_names_fields(buf, fields);
    let mut forwarded_for: Option<Vec<u8>> = None;
    for f in fields {
        let name = at(buf, f.name.clone());
        let value = at(buf, f.value.clone());
        let kind = f.kind;
        if kind == Name::Host {
            if !host_sent {
                push_field(out, name, value);
                host_sent = true;
            }
            continue;
        }
        if fwd.upgrade && kind == Name::Upgrade {
            push_field(out, name, value);
            continue;
        }
        if kind.is_hop_by_hop()
            || matches!(
                kind,
                Name::Expect
                    | Name::XRequestId
                    | Name::Traceparent
                    | Name::XForwardedProto
                    | Name::Forwarded
                    | Name::XRealIp
                    | Name::XForwardedHost
                    | Name::XForwardedPort
            )
            // `Transfer_Encoding`: a server that maps `_` to `-` would
            // frame by it (dropped, as nginx does by default).
            || (kind == Name::Other && name.contains(&b'_'))
            || (kind == Name::Trailer && framing == Framing::Chunked)
            || (check_connection && named_by_connection(buf, fields, name))
        {
            continue;
        }
        if kind == Name::XForwardedFor {
            let value = value.trim_ascii();
            if !value.is_empty() {
                let list = forwarded_for.get_or_insert_with(Vec::new);
                if !list.is_empty() {
                    list.extend_from_slice(b", ");
                }
                list.extend_from_slice(value);
            }
            continue;
        }
        push_field(out, name, value);
    }
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => push_codings(out, buf, fields, true),
        Framing::Empty | Framing::Close => {}
    }
    // An HTTP/1.0 request may come without `host`; the HTTP/1.1 one sent
    // on must have one, empty when the target names no authority (RFC
    // 9112 §3.2).
    if !host_sent {
        out.extend_from_slice(b"host: \r\n");
    }
    if fwd.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    push_field(out, b"x-request-id", fwd.request_id);
    if !fwd.traceparent.is_empty() {
        push_field(out, b"traceparent", fwd.traceparent);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prior) = forwarded_for {
        out.extend_from_slice(&prior);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(fwd.client_ip);
    out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n\r\n");
}

/// What the proxy adds to an answer on its way to the client.
pub struct Answering<'a> {
    pub request_id: &'a [u8],
    pub server_timing: &'a [u8],
    /// The proxy closes the client connection after this answer.
    pub close: bool,
    /// The client spoke HTTP/1.0 and keeps the connection: say so.
    pub keep_alive_1_0: bool,
    /// The client speaks HTTP/1.0, which has no transfer codings: drop
    /// `transfer-encoding` (a chunked body is sent de-chunked).
    pub http_1_0: bool,
    /// A `101` the client asked for: keep the instance's `upgrade` field
    /// and say `connection: upgrade`.
    pub upgraded: bool,
}

/// Writes the answer head sent to the client: the instance's status (with
/// the canonical reason phrase when it sent none, or one that is not
/// ASCII) and fields without the hop-by-hop ones, the framing normalised
/// (RFC 9112 §6.3): one `content-length` with one value, or, when there is
/// a `transfer-encoding`, one such field with every coding and no
/// `content-length` (a chunked body is re-framed without trailers, so
/// `trailer` goes); then `x-request-id`, `server-timing` and the
/// connection's fate.
pub fn write_response_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    line: &StatusLine,
    fields: &[Field],
    ans: &Answering<'_>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(line.status));
    out.push(b' ');
    let given = at(buf, line.reason.clone());
    if given.is_empty() {
        let canonical = http::StatusCode::from_u16(line.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or_default();
        out.extend_from_slice(canonical.as_bytes());
    } else {
        out.extend_from_slice(given);
    }
    out.extend_from_slice(b"\r\n");
    let check_connection = connection_names_fields(buf, fields);
    let coded = fields.iter().any(|f| f.kind == Name::TransferEncoding);
    // 1xx and 204 answers carry neither framing field, 304 no
    // `transfer-encoding` (RFC 9110 §8.6, RFC 9112 §6.1).
    let no_length = line.status / 100 == 1 || line.status == 204;
    let no_coding = no_length || line.status == 304;
    let mut framing_written = false;
    for f in fields {
        let name = at(buf, f.name.clone());
        let value = at(buf, f.value.clone());
        let kind = f.kind;
        match kind {
            Name::ContentLength if no_length => continue,
            Name::TransferEncoding if no_coding => continue,
            Name::ContentLength if !coded => {
                if !framing_written {
                    // Equal values were checked; one is enough.
                    let first = if value.iter().all(u8::is_ascii_digit) {
                        value
                    } else {
                        tokens(value).next().unwrap_or(value)
                    };
                    push_field(out, name, first);
                    framing_written = true;
                }
                continue;
            }
            Name::TransferEncoding if !ans.http_1_0 => {
                if !framing_written {
                    push_codings(out, buf, fields, false);
                    framing_written = true;
                }
                continue;
            }
            Name::Upgrade if ans.upgraded => {
                push_field(out, name, value);
                continue;
            }
            Name::Trailer if coded => continue,
            _ => {}
        }
        if kind.is_hop_by_hop()
            || kind == Name::XRequestId
            || (check_connection && named_by_connection(buf, fields, name))
        {
            continue;
        }
        push_field(out, name, value);
    }
    push_field(out, b"x-request-id", ans.request_id);
    push_field(out, b"server-timing", ans.server_timing);
    if ans.upgraded {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if ans.close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if ans.keep_alive_1_0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a complete answer of the proxy's own.
pub struct OwnAnswer<'a> {
    pub status: u16,
    pub content_type: &'a str,
    pub body: &'a [u8],
    pub request_id: &'a [u8],
    pub retry_after: Option<u32>,
    pub close: bool,
    /// The request was `HEAD`: the head only.
    pub head_only: bool,
}

pub fn write_own_answer(out: &mut Vec<u8>, a: &OwnAnswer<'_>) {
    write_own_answer_with(out, a, &[]);
}

/// [`write_own_answer`] with `extra` fields (name, value) after the
/// others (e.g. the `www-authenticate` of a 401).
pub fn write_own_answer_with(out: &mut Vec<u8>, a: &OwnAnswer<'_>, extra: &[(&[u8], &[u8])]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(a.status));
    out.push(b' ');
    out.extend_from_slice(reason(a.status).as_bytes());
    out.extend_from_slice(b"\r\n");
    push_field(out, b"content-type", a.content_type.as_bytes());
    out.extend_from_slice(b"content-length: ");
    push_u64(out, a.body.len() as u64);
    out.extend_from_slice(b"\r\ncache-control: no-store\r\n");
    push_field(out, b"x-request-id", a.request_id);
    if let Some(s) = a.retry_after {
        out.extend_from_slice(b"retry-after: ");
        push_u64(out, u64::from(s));
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in extra {
        push_field(out, name, value);
    }
    if a.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !a.head_only {
        out.extend_from_slice(a.body);
    }
}

/// Reason phrase of a status the proxy answers with.
pub fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

#[cfg(test)]
mod tests {
    /// A head of 100 fields dripped one byte at a time is parsed at its
    /// line ends only (it was parsed after every byte: 40,000 times).
    #[test]
    fn a_dripped_head_is_parsed_at_line_ends_only() {
        let mut head = b"GET /fn/hello/ HTTP/1.1\r\nhost: a\r\n".to_vec();
        for i in 0..100 {
            head.extend_from_slice(format!("x-field-{i}: {}\r\n", "v".repeat(380)).as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let (mut scan, mut fields) = (HeadScan::default(), Vec::new());
        let mut parses = 0;
        let mut done = None;
        for end in 1..=head.len() {
            let buf = &head[..end];
            if scan.worth_parsing(buf) {
                parses += 1;
                if let Some(line) = parse_request(buf, &mut fields).unwrap() {
                    done = Some((end, line.head_len));
                    break;
                }
            }
        }
        assert_eq!(done, Some((head.len(), head.len())));
        // The first byte, then each line end: request line, 101 fields, blank.
        assert_eq!(parses, 1 + 1 + 101 + 1);
        // A bad request line is still refused at its end, not at the head's.
        let (mut scan, bad) = (HeadScan::default(), b"GE(T / HTTP/1.1\r\nhost: a\r\n");
        let refused = (1..=bad.len()).find(|end| {
            scan.worth_parsing(&bad[..*end]) && parse_request(&bad[..*end], &mut fields).is_err()
        });
        let first_line_end = bad.iter().position(|b| *b == b'\n').unwrap() + 1;
        assert_eq!(refused, Some(first_line_end));
        // Growing to the limit without a line end is parsed (and refused).
        let mut scan = HeadScan::default();
        assert!(scan.worth_parsing(b"G"));
        assert!(!scan.worth_parsing(b"GE"));
        assert!(scan.worth_parsing(&vec![b'G'; MAX_HEAD]));
    }

    #[test]
    fn empty_lines_before_the_start_line_are_bounded() {
        let mut fields = Vec::new();
        let ok = b"\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n";
        assert!(parse_request(ok, &mut fields).unwrap().is_some());
        let many = [&b"\r\n".repeat(5)[..], b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"].concat();
        assert_eq!(
            parse_request(&many, &mut fields),
            Err(HeadError::Invalid(
                "too many empty lines before the start line"
            ))
        );
        let answer = [&b"\n".repeat(9)[..], b"HTTP/1.1 200 OK\r\n\r\n"].concat();
        assert!(parse_response(&answer, &mut fields).is_err());
    }

    use super::*;

    fn request(raw: &[u8]) -> (RequestLine, Vec<Field>) {
        let mut fields = Vec::new();
        let line = parse_request(raw, &mut fields)
            .unwrap()
            .expect("complete head");
        (line, fields)
    }

    /// The semantics of `raw` with a `host` field added after the request
    /// line (the framing tests are not about it).
    fn semantics(raw: &[u8]) -> Result<Semantics, HeadError> {
        let at = raw.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        let raw = [&raw[..at], b"host: h\r\n", &raw[at..]].concat();
        let (line, fields) = request(&raw);
        request_semantics(&raw, line.minor, &fields)
    }

    #[test]
    fn field_names_are_classified_case_insensitively() {
        for (name, kind) in [
            (&b"Content-Length"[..], Name::ContentLength),
            (b"TRANSFER-ENCODING", Name::TransferEncoding),
            (b"connection", Name::Connection),
            (b"Keep-Alive", Name::KeepAlive),
            (b"Proxy-Connection", Name::ProxyConnection),
            (b"TE", Name::Te),
            (b"Upgrade", Name::Upgrade),
            (b"Expect", Name::Expect),
            (b"X-Request-ID", Name::XRequestId),
            (b"x-forwarded-for", Name::XForwardedFor),
            (b"X-Forwarded-Proto", Name::XForwardedProto),
            (b"Forwarded", Name::Forwarded),
            (b"x-real-ip", Name::XRealIp),
            (b"X-Forwarded-Host", Name::XForwardedHost),
            (b"x-forwarded-PORT", Name::XForwardedPort),
            (b"x-forwarded-hosts", Name::Other),
            (b"content-type", Name::Other),
            (b"connectionx", Name::Other),
            (b"tf", Name::Other),
            (b"", Name::Other),
        ] {
            assert_eq!(classify(name), kind, "{}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn request_heads_parse_in_place_and_wait_for_more() {
        let raw = b"POST /fn/a/b?c=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
        let (line, fields) = request(raw);
        assert_eq!(&raw[line.method.clone()], b"POST");
        assert_eq!(&raw[line.target.clone()], b"/fn/a/b?c=1");
        assert_eq!(line.minor, 1);
        assert_eq!(line.head_len, raw.len() - 3);
        assert_eq!(fields.len(), 2);
        assert_eq!(&raw[fields[1].name.clone()], b"Content-Length");
        assert_eq!(&raw[fields[1].value.clone()], b"3");
        let mut f = Vec::new();
        assert_eq!(parse_request(&raw[..20], &mut f), Ok(None));
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nbad header\r\n\r\n", &mut f),
            Err(HeadError::Invalid(_))
        ));
        let mut huge = b"GET / HTTP/1.1\r\nx: ".to_vec();
        huge.resize(MAX_HEAD + 10, b'a');
        assert_eq!(parse_request(&huge, &mut f), Err(HeadError::TooLarge));
    }

    /// `start`, then one field padded so that the head is `len` bytes.
    fn head_of_len(start: &[u8], len: usize) -> Vec<u8> {
        let mut head = [start, b"x-pad: "].concat();
        head.resize(len - 4, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        head
    }

    /// Security review of the proxy: the head limit holds for a head that
    /// arrives whole in one read too (a read buffer can hold 256 KiB), for
    /// requests (431) and for answers (502). (Old code checked only heads
    /// still incomplete, and took a whole one of any length.)
    #[test]
    fn whole_heads_over_the_limit_are_refused() {
        let mut f = Vec::new();
        let request = b"GET / HTTP/1.1\r\nhost: a\r\n";
        let at_limit = head_of_len(request, MAX_HEAD);
        let line = parse_request(&at_limit, &mut f).unwrap().unwrap();
        assert_eq!(line.head_len, MAX_HEAD);
        for len in [MAX_HEAD + 1, 200 * 1024] {
            let over = head_of_len(request, len);
            assert_eq!(parse_request(&over, &mut f), Err(HeadError::TooLarge));
            assert_eq!(HeadError::TooLarge.status(), 431);
        }
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n";
        let at_limit = head_of_len(answer, MAX_HEAD);
        let line = parse_response(&at_limit, &mut f).unwrap().unwrap();
        assert_eq!(line.head_len, MAX_HEAD);
        for len in [MAX_HEAD + 1, 200 * 1024] {
            let over = [&head_of_len(answer, len)[..], b"body"].concat();
            assert_eq!(parse_response(&over, &mut f), Err(HeadError::TooLarge));
        }
    }

    #[test]
    fn request_framing_follows_rfc_9112_and_refuses_smuggling() {
        let ok = |raw: &[u8]| semantics(raw).unwrap();
        assert_eq!(ok(b"GET / HTTP/1.1\r\n\r\n").framing, Framing::Empty);
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n").framing,
            Framing::Length(0)
        );
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\ncontent-length: 42\r\n\r\n").framing,
            Framing::Length(42)
        );
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n").framing,
            Framing::Length(5)
        );
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\ntransfer-encoding: Chunked\r\n\r\n").framing,
            Framing::Chunked
        );
        // Codings before chunked: well-formed, not implemented.
        for raw in [
            &b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, Chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ntransfer-encoding: cow\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            let e = semantics(raw).unwrap_err();
            assert!(matches!(e, HeadError::NotImplemented(_)), "{e:?}");
            assert_eq!(e.status(), 501);
        }
        for bad in [
            &b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 5, 6\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 1e3\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            assert!(
                matches!(semantics(bad), Err(HeadError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn keep_alive_depends_on_version_and_connection() {
        let ka = |raw: &[u8]| semantics(raw).unwrap().keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n"));
        assert!(
            semantics(b"PUT / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n")
                .unwrap()
                .expect_continue
        );
        let up = |raw: &[u8]| semantics(raw).unwrap().upgrade;
        assert!(up(
            b"GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"
        ));
        assert!(
            !up(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
            "not named in connection"
        );
        assert!(
            !up(b"GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n"),
            "no upgrade field"
        );
        assert!(
            !up(b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
            "HTTP/1.0"
        );
    }

    fn response(raw: &[u8], head_request: bool) -> Semantics {
        let mut fields = Vec::new();
        let line = parse_response(raw, &mut fields)
            .unwrap()
            .expect("complete head");
        response_semantics(raw, &line, &fields, head_request).unwrap()
    }

    #[test]
    fn response_framing() {
        let r = response(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n", false);
        assert_eq!((r.framing, r.keep_alive), (Framing::Length(7), true));
        let r = response(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n", true);
        assert_eq!(r.framing, Framing::Empty);
        for status in ["204 No Content", "304 Not Modified"] {
            let raw = format!("HTTP/1.1 {status}\r\ncontent-length: 7\r\n\r\n");
            assert_eq!(response(raw.as_bytes(), false).framing, Framing::Empty);
        }
        let r = response(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            false,
        );
        assert_eq!(r.framing, Framing::Chunked);
        let r = response(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((r.framing, r.keep_alive), (Framing::Close, false));
        let r = response(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
            false,
        );
        assert!(!r.keep_alive);
        let r = response(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false);
        assert!(!r.keep_alive);
    }

    fn text(out: &[u8]) -> &str {
        std::str::from_utf8(out).unwrap()
    }

    #[test]
    fn upstream_request_head_drops_hop_by_hop_fields_and_adds_forwarding() {
        let raw = b"POST /fn/f/x?y=1 HTTP/1.0\r\nHost: h\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
Keep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: websocket\r\nExpect: 100-continue\r\n\
X-Request-Id: evil\r\nX-Forwarded-For: 192.0.2.7\r\nx-forwarded-for: 198.51.100.1\r\n\
X-Forwarded-Proto: https\r\nForwarded: for=192.0.2.9;host=evil\r\nX-Real-IP: 192.0.2.9\r\n\
X-Forwarded-Host: evil\r\nX-Forwarded-Port: 8443\r\nContent-Length: 3\r\nX-Kept: yes\r\n\r\n";
        let (line, fields) = request(raw);
        let mut out = Vec::new();
        let fwd = Forwarding {
            path: "/x?y=1",
            request_id: b"rid-1",
            traceparent: b"",
            client_ip: b"10.1.2.3",
            upgrade: false,
        };
        write_request_head(&mut out, raw, &line, &fields, Framing::Length(3), &fwd);
        assert_eq!(
            text(&out),
            "POST /x?y=1 HTTP/1.1\r\nHost: h\r\nX-Kept: yes\r\ncontent-length: 3\r\nx-request-id: rid-1\r\n\
x-forwarded-for: 192.0.2.7, 198.51.100.1, 10.1.2.3\r\nx-forwarded-proto: http\r\n\r\n"
        );

        // No host (HTTP/1.0): the HTTP/1.1 request gets an empty one.
        let raw = b"GET /fn/f HTTP/1.0\r\nx-forwarded-for:  \r\n\r\n";
        let (line, fields) = request(raw);
        let mut out = Vec::new();
        write_request_head(&mut out, raw, &line, &fields, Framing::Empty, &fwd);
        assert_eq!(
            text(&out),
            "GET /x?y=1 HTTP/1.1\r\nhost: \r\nx-request-id: rid-1\r\nx-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\n\r\n"
        );
        let mut out = Vec::new();
        write_request_head(&mut out, raw, &line, &fields, Framing::Chunked, &fwd);
        assert!(text(&out).contains("\r\ntransfer-encoding: chunked\r\n"));
    }

    #[test]
    fn client_answer_head_keeps_framing_and_adds_ids() {
        let raw = b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\
Keep-Alive: timeout=5\r\nX-Request-Id: other\r\nTransfer-Encoding: chunked\r\nServer-Timing: app;dur=1\r\n\r\n";
        let mut fields = Vec::new();
        let line = parse_response(raw, &mut fields).unwrap().unwrap();
        let ans = |close, keep_alive_1_0, http_1_0| Answering {
            request_id: b"rid-1",
            server_timing: b"queue;dur=0.000",
            close,
            keep_alive_1_0,
            http_1_0,
            upgraded: false,
        };
        let mut out = Vec::new();
        write_response_head(&mut out, raw, &line, &fields, &ans(false, false, false));
        assert_eq!(
            text(&out),
            "HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\ntransfer-encoding: chunked\r\n\
Server-Timing: app;dur=1\r\nx-request-id: rid-1\r\nserver-timing: queue;dur=0.000\r\n\r\n"
        );
        let mut out = Vec::new();
        write_response_head(&mut out, raw, &line, &fields, &ans(true, false, true));
        let t = text(&out);
        assert!(!t.contains("transfer-encoding"), "{t}");
        assert!(t.ends_with("connection: close\r\n\r\n"), "{t}");
        let mut out = Vec::new();
        write_response_head(&mut out, raw, &line, &fields, &ans(false, true, false));
        assert!(text(&out).ends_with("connection: keep-alive\r\n\r\n"));

        // Both framings: chunked wins, content-length goes; the trailers
        // are not relayed, so neither is `trailer`.
        let raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\ntrailer: x-t\r\n\r\n";
        let mut fields = Vec::new();
        let line = parse_response(raw, &mut fields).unwrap().unwrap();
        let mut out = Vec::new();
        write_response_head(&mut out, raw, &line, &fields, &ans(false, false, false));
        let t = text(&out);
        assert!(
            t.contains("transfer-encoding: chunked\r\nx-request-id"),
            "{t}"
        );
        assert!(!t.contains("content-length"), "{t}");
    }

    #[test]
    fn own_answers_are_complete_messages() {
        let mut out = Vec::new();
        let answer = OwnAnswer {
            status: 429,
            content_type: "application/json",
            body: b"{}",
            request_id: b"rid",
            retry_after: Some(1),
            close: true,
            head_only: false,
        };
        write_own_answer(&mut out, &answer);
        assert_eq!(
            text(&out),
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\
cache-control: no-store\r\nx-request-id: rid\r\nretry-after: 1\r\nconnection: close\r\n\r\n{}"
        );
        let mut out = Vec::new();
        write_own_answer(
            &mut out,
            &OwnAnswer {
                head_only: true,
                ..answer
            },
        );
        assert!(text(&out).ends_with("content-length: 2\r\ncache-control: no-store\r\nx-request-id: rid\r\nretry-after: 1\r\nconnection: close\r\n\r\n"));
    }

    fn host_test(raw: &[u8]) -> Result<Semantics, HeadError> {
        let (line, fields) = request(raw);
        request_semantics(raw, line.minor, &fields)
    }

    #[test]
    fn host_is_required_once_in_http_1_1() {
        assert!(host_test(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
        assert!(
            host_test(b"GET / HTTP/1.1\r\nHost:\r\n\r\n").is_ok(),
            "empty is allowed"
        );
        assert!(host_test(b"GET / HTTP/1.0\r\n\r\n").is_ok());
        assert!(host_test(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n").is_ok());
        assert!(host_test(b"GET / HTTP/1.1\r\nHost: xn--bcher-kva.example:80\r\n\r\n").is_ok());
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET http://a/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHOST: a\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: \xe0\x87\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
        ] {
            assert!(
                matches!(host_test(bad), Err(HeadError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn chunked_twice_or_after_other_codings_is_refused() {
        for bad in [
            &b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked, chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\ntransfer-encoding: x-custom , Chunked\r\n\r\n",
        ] {
            assert!(host_test(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let raw = b"POST /fn/f/x HTTP/1.1\r\nHost: a\r\ntransfer-encoding:  Chunked \r\nTrailer: x-sum\r\n\r\n";
        assert_eq!(host_test(raw).unwrap().framing, Framing::Chunked);
        let (line, fields) = request(raw);
        let mut out = Vec::new();
        write_request_head(
            &mut out,
            raw,
            &line,
            &fields,
            Framing::Chunked,
            &forwarding(),
        );
        assert_eq!(
            text(&out),
            "POST /x HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\n\
x-request-id: r\r\nx-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }

    fn forwarding() -> Forwarding<'static> {
        Forwarding {
            path: "/x",
            request_id: b"r",
            traceparent: b"",
            client_ip: b"10.0.0.1",
            upgrade: false,
        }
    }

    #[test]
    fn absolute_form_authority_replaces_host() {
        assert_eq!(
            request_target(b"http://h:8080/fn/a?x=1"),
            Ok(Target {
                authority: Some(b"h:8080"),
                origin: b"/fn/a?x=1"
            })
        );
        assert_eq!(
            request_target(b"HTTPS://h?q"),
            Ok(Target {
                authority: Some(b"h"),
                origin: b"/"
            })
        );
        assert_eq!(
            request_target(b"/fn/ab%C3%A9"),
            Ok(Target {
                authority: None,
                origin: b"/fn/ab%C3%A9"
            })
        );
        assert_eq!(request_target(b"*").unwrap().origin, b"*");
        // Bytes outside RFC 3986 are refused, never relayed.
        for bad in [
            &b"/fn/ab\xc3\xa9"[..],
            b"\xc3\xa9\xc3\xa9\xc3\xa9\xc3",
            b"/fn/a`b",
            b"/fn/a<b>",
            b"/fn/a\"b",
            b"/fn/a{b}",
            b"/fn/a|b",
            b"/fn/a^b",
            b"/fn/a#b",
            b"/fn/a\\b",
            b"/fn/a\x7fb",
        ] {
            assert!(request_target(bad).is_err(), "{bad:?}");
        }
        assert!(request_target(b"http:///fn/a").is_err());
        assert!(request_target(b"http://u@h/fn/a").is_err());

        let raw =
            b"GET http://real.test/fn/f/x HTTP/1.1\r\nHost: other.test\r\nConnection: host\r\n\r\n";
        let (line, fields) = request(raw);
        let mut out = Vec::new();
        write_request_head(&mut out, raw, &line, &fields, Framing::Empty, &forwarding());
        assert_eq!(
            text(&out),
            "GET /x HTTP/1.1\r\nHost: real.test\r\nx-request-id: r\r\nx-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }

    #[test]
    fn connection_cannot_strip_host() {
        let raw = b"GET /fn/f/x HTTP/1.1\r\nHost: h\r\nConnection: host, content-length, transfer-encoding\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(host_test(raw).unwrap().framing, Framing::Length(2));
        let (line, fields) = request(raw);
        let mut out = Vec::new();
        write_request_head(
            &mut out,
            raw,
            &line,
            &fields,
            Framing::Length(2),
            &forwarding(),
        );
        assert_eq!(
            text(&out),
            "GET /x HTTP/1.1\r\nHost: h\r\ncontent-length: 2\r\nx-request-id: r\r\nx-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }

    fn answer_head(raw: &[u8], http_1_0: bool) -> String {
        let mut fields = Vec::new();
        let line = parse_response(raw, &mut fields).unwrap().unwrap();
        let mut out = Vec::new();
        let ans = Answering {
            request_id: b"r",
            server_timing: b"t",
            close: false,
            keep_alive_1_0: false,
            http_1_0,
            upgraded: false,
        };
        write_response_head(&mut out, raw, &line, &fields, &ans);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn status_lines_without_a_usable_reason_get_the_canonical_one() {
        let tail = "x-request-id: r\r\nserver-timing: t\r\n\r\n";
        for (raw, line) in [
            (&b"HTTP/1.1 200\r\n\r\n"[..], "HTTP/1.1 200 OK\r\n"),
            (b"HTTP/1.1 200 \r\n\r\n", "HTTP/1.1 200 OK\r\n"),
            (
                b"HTTP/1.1 404 \xe9t\xe9\r\n\r\n",
                "HTTP/1.1 404 Not Found\r\n",
            ),
            (b"HTTP/1.1 299\r\n\r\n", "HTTP/1.1 299 \r\n"),
            (b"HTTP/1.1 200 Fine\r\n\r\n", "HTTP/1.1 200 Fine\r\n"),
        ] {
            assert_eq!(answer_head(raw, false), format!("{line}{tail}"));
        }
    }

    #[test]
    fn answer_framing_is_normalised() {
        let tail = "x-request-id: r\r\nserver-timing: t\r\n\r\n";
        assert_eq!(
            answer_head(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\ncontent-length: 5\r\n\r\n",
                false
            ),
            format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n{tail}")
        );
        assert_eq!(
            answer_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\nTrailer: x\r\ntransfer-encoding: chunked\r\n\r\n", false),
            format!("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n{tail}")
        );
        assert_eq!(
            answer_head(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                true
            ),
            format!("HTTP/1.1 200 OK\r\n{tail}")
        );
        let sem = |raw: &[u8]| {
            let mut fields = Vec::new();
            let line = parse_response(raw, &mut fields).unwrap().unwrap();
            response_semantics(raw, &line, &fields, false)
        };
        assert!(sem(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n").is_err());
        assert!(sem(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(sem(b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        let both =
            sem(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n")
                .unwrap();
        assert_eq!((both.framing, both.keep_alive), (Framing::Chunked, false));
    }

    #[test]
    fn heads_with_odd_bytes_never_panic() {
        // Multi-byte characters, obs-text and empty values anywhere.
        let mut fields = Vec::new();
        for raw in [
            &b"GET /fn/ab\xc3\xa9 HTTP/1.1\r\nHost: \xc3\r\nx:\r\n\r\n"[..],
            b"GET http\xc3\xa9://\xc3 HTTP/1.1\r\nHost: h\r\n\r\n",
        ] {
            if let Ok(Some(line)) = parse_request(raw, &mut fields) {
                let _ = request_semantics(raw, line.minor, &fields);
                let mut out = Vec::new();
                write_request_head(&mut out, raw, &line, &fields, Framing::Empty, &forwarding());
            }
        }
    }
}
