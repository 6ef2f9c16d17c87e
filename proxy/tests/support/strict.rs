//! A strict HTTP/1.1 reference parser (RFC 9112), written for the tests
//! independently of `h1.rs`: CRLF only, no obs-fold, field grammar checked,
//! framing by RFC 9112 §6 with every ambiguity refused, the chunked coding
//! with the chunk-ext grammar and trailer fields parsed as fields. It tells
//! where each message on a byte stream ends; what the proxy forwards must
//! parse here exactly as it parses under the LF-tolerant parsers.

/// One header or trailer field: name lowercased, value with OWS trimmed.
pub type Field = (String, Vec<u8>);

/// A complete message found on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// Method (requests) or status code as text (responses).
    pub method: String,
    /// Target (requests) or reason phrase (responses).
    pub target: String,
    pub minor: u8,
    pub fields: Vec<Field>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    pub trailers: Vec<Field>,
    /// The body was chunked and some chunk line had an extension.
    pub chunk_ext: bool,
    /// Bytes of the head (blank line included).
    pub head_len: usize,
    /// Bytes of the whole message on the wire.
    pub len: usize,
}

impl Msg {
    pub fn values(&self, name: &str) -> Vec<&[u8]> {
        self.fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }
}

/// How a stream ends after its last complete message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// Nothing after the last message.
    Clean,
    /// A message started and did not end.
    Incomplete,
    /// Bytes that are not a valid message.
    Error(String),
}

/// How a body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

type Step<T> = Result<Option<T>, String>;

pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// One line ending at CRLF, starting at `pos`: its content and where the
/// next line starts. A bare CR or a bare LF is an error.
fn line(buf: &[u8], pos: usize) -> Step<(&[u8], usize)> {
    let rest = buf.get(pos..).unwrap_or_default();
    let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
        return match rest.iter().position(|&b| b == b'\r') {
            Some(cr) if cr + 1 < rest.len() => Err("bare CR".into()),
            _ => Ok(None),
        };
    };
    if lf == 0 || rest[lf - 1] != b'\r' {
        return Err("bare LF".into());
    }
    let content = &rest[..lf - 1];
    if content.contains(&b'\r') {
        return Err("bare CR".into());
    }
    Ok(Some((content, pos + lf + 1)))
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `field-name ":" OWS field-value OWS`.
pub fn field(line: &[u8]) -> Result<Field, String> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or("field line without a colon")?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err("invalid field name".into());
    }
    let start = value
        .iter()
        .position(|&b| !is_ows(b))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| !is_ows(b))
        .map_or(start, |i| i + 1);
    let value = &value[start..end];
    if !value
        .iter()
        .all(|&b| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80)
    {
        return Err("invalid byte in a field value".into());
    }
    Ok((
        String::from_utf8_lossy(name).to_ascii_lowercase(),
        value.to_vec(),
    ))
}

/// Field lines up to the blank line.
fn fields(buf: &[u8], mut pos: usize) -> Step<(Vec<Field>, usize)> {
    let mut out = Vec::new();
    loop {
        let Some((l, next)) = line(buf, pos)? else {
            return Ok(None);
        };
        pos = next;
        if l.is_empty() {
            return Ok(Some((out, pos)));
        }
        if is_ows(l[0]) {
            return Err("obs-fold".into());
        }
        out.push(field(l)?);
    }
}

fn version(v: &[u8]) -> Result<u8, String> {
    match v {
        b"HTTP/1.1" => Ok(1),
        b"HTTP/1.0" => Ok(0),
        _ => Err(format!("bad version {:?}", String::from_utf8_lossy(v))),
    }
}

/// The comma-separated elements of every field named `name` (empty
/// elements left out, RFC 9110 §5.6.1).
pub fn list<'a>(fields: &'a [Field], name: &str) -> Vec<&'a [u8]> {
    fields
        .iter()
        .filter(|(n, _)| n == name)
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .collect()
}

fn content_length(fields: &[Field]) -> Result<Option<u64>, String> {
    let mut length = None;
    for (n, v) in fields {
        if n != "content-length" {
            continue;
        }
        for t in v.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if t.is_empty() || !t.iter().all(u8::is_ascii_digit) {
                return Err("invalid content-length".into());
            }
            let n = std::str::from_utf8(t)
                .unwrap()
                .parse::<u64>()
                .map_err(|_| "content-length overflow")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting content-length".into());
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// RFC 9112 §6.3 for requests, strictly: a transfer coding other than a
/// single `chunked` is refused (the reference decodes no other), as are
/// both framings together and HTTP/1.1 without exactly one `host`.
pub fn request_framing(minor: u8, fields: &[Field]) -> Result<Framing, String> {
    let hosts = fields.iter().filter(|(n, _)| n == "host").count();
    if minor == 1 && hosts != 1 {
        return Err(format!("{hosts} host fields"));
    }
    if minor == 0 && hosts > 1 {
        return Err(format!("{hosts} host fields"));
    }
    let te = fields.iter().any(|(n, _)| n == "transfer-encoding");
    let cl = content_length(fields)?;
    if te {
        if cl.is_some() {
            return Err("both transfer-encoding and content-length".into());
        }
        if minor == 0 {
            return Err("transfer-encoding in HTTP/1.0".into());
        }
        let codings = list(fields, "transfer-encoding");
        return match codings.as_slice() {
            [only] if only.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
            _ => Err("transfer coding other than a single chunked".into()),
        };
    }
    Ok(Framing::Length(cl.unwrap_or(0)))
}

/// RFC 9112 §6.3 for responses, strictly.
pub fn response_framing(
    status: u16,
    fields: &[Field],
    head_request: bool,
) -> Result<Framing, String> {
    if head_request || status / 100 == 1 || status == 204 || status == 304 {
        return Ok(Framing::Length(0));
    }
    let te = fields.iter().any(|(n, _)| n == "transfer-encoding");
    let cl = content_length(fields)?;
    if te {
        if cl.is_some() {
            return Err("both transfer-encoding and content-length".into());
        }
        let codings = list(fields, "transfer-encoding");
        return match codings.last() {
            Some(last) if last.eq_ignore_ascii_case(b"chunked") => {
                if codings
                    .iter()
                    .filter(|c| c.eq_ignore_ascii_case(b"chunked"))
                    .count()
                    > 1
                {
                    Err("chunked twice".into())
                } else {
                    Ok(Framing::Chunked)
                }
            }
            _ => Ok(Framing::Close),
        };
    }
    Ok(cl.map_or(Framing::Close, Framing::Length))
}

fn skip_ows(l: &[u8], mut i: usize) -> usize {
    while i < l.len() && is_ows(l[i]) {
        i += 1;
    }
    i
}

fn token_end(l: &[u8], mut i: usize) -> Result<usize, String> {
    let start = i;
    while i < l.len() && is_tchar(l[i]) {
        i += 1;
    }
    if i == start {
        return Err("token expected".into());
    }
    Ok(i)
}

/// `*( BWS ";" BWS ext-name [ BWS "=" BWS ( token / quoted-string ) ] )`.
pub fn chunk_ext(l: &[u8]) -> Result<(), String> {
    let mut i = 0;
    loop {
        i = skip_ows(l, i);
        if i == l.len() {
            return Ok(());
        }
        if l[i] != b';' {
            return Err("invalid chunk extension".into());
        }
        i = token_end(l, skip_ows(l, i + 1))?;
        let j = skip_ows(l, i);
        if j < l.len() && l[j] == b'=' {
            i = skip_ows(l, j + 1);
            if l.get(i) == Some(&b'"') {
                i += 1;
                loop {
                    match l.get(i) {
                        None => return Err("unterminated quoted-string".into()),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => match l.get(i + 1) {
                            Some(&b) if b == b'\t' || b >= 0x20 && b != 0x7f => i += 2,
                            _ => return Err("bad quoted-pair".into()),
                        },
                        Some(&b) if b == b'\t' || b >= 0x20 && b != 0x7f => i += 1,
                        Some(_) => return Err("bad byte in quoted-string".into()),
                    }
                }
            } else {
                i = token_end(l, i)?;
            }
        }
    }
}

/// A decoded chunked body.
pub struct Chunks {
    pub data: Vec<u8>,
    pub trailers: Vec<Field>,
    pub ext: bool,
    /// Bytes on the wire.
    pub len: usize,
}

/// A chunked body starting at `pos`.
pub fn chunked(buf: &[u8], start: usize) -> Step<Chunks> {
    let mut pos = start;
    let mut data = Vec::new();
    let mut ext = false;
    loop {
        let Some((l, next)) = line(buf, pos)? else {
            return Ok(None);
        };
        let digits = l.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 {
            return Err("chunk size expected".into());
        }
        let mut size: u64 = 0;
        for &d in &l[..digits] {
            let v = u64::from((d as char).to_digit(16).unwrap());
            size = size
                .checked_mul(16)
                .and_then(|s| s.checked_add(v))
                .ok_or("chunk size overflow")?;
        }
        chunk_ext(&l[digits..])?;
        ext |= digits < l.len();
        pos = next;
        if size == 0 {
            let Some((trailers, end)) = fields(buf, pos)? else {
                return Ok(None);
            };
            return Ok(Some(Chunks {
                data,
                trailers,
                ext,
                len: end - start,
            }));
        }
        let size = usize::try_from(size).map_err(|_| "chunk too large")?;
        let Some(end) = pos.checked_add(size) else {
            return Err("chunk too large".into());
        };
        if buf.len() < end.saturating_add(2) {
            return match buf.get(end..) {
                Some([b, ..]) if *b != b'\r' => Err("chunk data not followed by CRLF".into()),
                _ => Ok(None),
            };
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        data.extend_from_slice(&buf[pos..end]);
        pos = end + 2;
    }
}

/// The request at `pos`.
pub fn request(buf: &[u8], pos: usize) -> Step<Msg> {
    let Some((l, next)) = line(buf, pos)? else {
        return Ok(None);
    };
    let parts: Vec<&[u8]> = l.split(|&b| b == b' ').collect();
    let [method, target, v] = parts.as_slice() else {
        return Err("request line is not METHOD SP TARGET SP VERSION".into());
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err("invalid method".into());
    }
    if target.is_empty() || !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err("invalid target".into());
    }
    let minor = version(v)?;
    let Some((fields, body_start)) = fields(buf, next)? else {
        return Ok(None);
    };
    let (body, trailers, chunk_ext, end) = match request_framing(minor, &fields)? {
        Framing::Length(n) => {
            let n = usize::try_from(n).map_err(|_| "content-length too large")?;
            match body_start.checked_add(n) {
                Some(end) if end <= buf.len() => {
                    (buf[body_start..end].to_vec(), Vec::new(), false, end)
                }
                _ => return Ok(None),
            }
        }
        Framing::Chunked => {
            let Some(c) = chunked(buf, body_start)? else {
                return Ok(None);
            };
            (c.data, c.trailers, c.ext, body_start + c.len)
        }
        Framing::Close => unreachable!("requests are never close-delimited"),
    };
    Ok(Some(Msg {
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
        minor,
        fields,
        body,
        trailers,
        chunk_ext,
        head_len: body_start - pos,
        len: end - pos,
    }))
}

/// Every request on a stream, and how the stream ends.
pub fn requests(buf: &[u8]) -> (Vec<Msg>, Tail) {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        match request(buf, pos) {
            Ok(Some(m)) => {
                pos += m.len;
                out.push(m);
            }
            Ok(None) => return (out, Tail::Incomplete),
            Err(e) => return (out, Tail::Error(e)),
        }
    }
    (out, Tail::Clean)
}

/// A response head: status, reason phrase, HTTP/1.`minor`, fields, and its
/// length on the wire.
pub struct ResponseHead {
    pub status: u16,
    pub reason: Vec<u8>,
    pub minor: u8,
    pub fields: Vec<Field>,
    pub len: usize,
}

/// A response head at the start of `buf`. The status line must be
/// `HTTP/1.x SP 3DIGIT SP reason`.
pub fn response_head(buf: &[u8]) -> Step<ResponseHead> {
    let Some((l, next)) = line(buf, 0)? else {
        return Ok(None);
    };
    if l.len() < 13 || l[8] != b' ' || l[12] != b' ' {
        return Err("bad status line".into());
    }
    let minor = version(&l[..8])?;
    let code = &l[9..12];
    if !code.iter().all(u8::is_ascii_digit) {
        return Err("bad status code".into());
    }
    let reason = &l[13..];
    if !reason
        .iter()
        .all(|&b| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80)
    {
        return Err("bad reason phrase".into());
    }
    let status = std::str::from_utf8(code).unwrap().parse().unwrap();
    let Some((fields, end)) = fields(buf, next)? else {
        return Ok(None);
    };
    Ok(Some(ResponseHead {
        status,
        reason: reason.to_vec(),
        minor,
        fields,
        len: end,
    }))
}
