//! The chunked transfer coding (RFC 9112 §7.1), decoded strictly and
//! written again in one canonical form: the proxy never relays a chunk line
//! or a trailer as it came, so no peer can read a different message boundary
//! from the bytes it forwards.
//!
//! Decoding: lines end in CRLF only (a bare LF or CR is an error), chunk
//! sizes are hex (leading zeros allowed, the value must fit in 64 bits),
//! extensions follow the `chunk-ext` grammar (token / quoted-string) and
//! are dropped, a size line is at most [`MAX_CHUNK_LINE`] bytes, the
//! trailer section at most [`MAX_TRAILER_SECTION`] bytes of well-formed
//! fields (no obs-fold, none of the fields in [`FORBIDDEN_TRAILERS`]),
//! which are dropped. Extension and trailer bytes (and leading zeros) count
//! towards a decoder's byte budget together with the data.
//!
//! Encoding ([`reframe`]): `size CRLF data CRLF` for each chunk as it was
//! sized, `0 CRLF CRLF` at the end. Chunk data is handed out as slices of
//! the input, never touched byte by byte.
//!
//! Nothing here does I/O; `engine/` drives it.
//!
//! Over 600 lines with its unit tests: about 540 of code and 280 of tests
//! (each refusal of the grammar above, and decoding split at every byte).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

/// Longest chunk-size line (size, extensions), CRLF not counted.
pub const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Longest trailer section, final CRLF included.
pub const MAX_TRAILER_SECTION: usize = 16 * 1024;
/// Trailer fields refused (RFC 9110 §6.5.1: framing, routing, connection
/// control, content metadata and credentials cannot come after the body).
pub const FORBIDDEN_TRAILERS: &[&str] = &[
    "authorization",
    "cache-control",
    "connection",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "cookie",
    "expect",
    "host",
    "keep-alive",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "www-authenticate",
];
/// Longest name in [`FORBIDDEN_TRAILERS`] (names kept for the check).
const NAME_KEPT: usize = 24;

/// Why a chunked body cannot be relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size")]
    BadSize,
    #[error("chunk size does not fit in 64 bits")]
    SizeOverflow,
    #[error("invalid chunk extension")]
    BadExtension,
    #[error("chunk line over {MAX_CHUNK_LINE} bytes")]
    LineTooLong,
    #[error("line not ended by CRLF")]
    BadLineEnd,
    #[error("chunk data not followed by CRLF")]
    BadDataEnd,
    #[error("invalid trailer field")]
    BadTrailer,
    #[error("obsolete line folding in the trailer section")]
    ObsFold,
    #[error("trailer field {0} is not allowed")]
    ForbiddenTrailer(&'static str),
    #[error("trailer section over {MAX_TRAILER_SECTION} bytes")]
    TrailersTooLarge,
    #[error("body over the limit of {0} bytes")]
    OverBudget(u64),
}

/// What a decoder found in its input, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A chunk of this many data bytes begins (never 0).
    Start(u64),
    /// Data of the current chunk (a slice of the input).
    Data(&'a [u8]),
    /// The current chunk's data and its CRLF are complete.
    ChunkEnd,
    /// The last chunk and the trailer section are complete: the body ends.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// First byte of a size line.
    SizeStart,
    /// In the hex digits.
    Size,
    /// Whitespace after the size or after an extension.
    SizeWs,
    /// After `;`, before an extension name.
    ExtPreName,
    ExtName,
    /// Whitespace after an extension name.
    ExtAfterName,
    /// After `=`, before an extension value.
    ExtPreValue,
    ExtToken,
    ExtQuoted,
    /// After a backslash in a quoted value.
    ExtQuotedPair,
    /// Expecting the LF of a size line.
    SizeLf,
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// First byte of a trailer line (or of the final CRLF).
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// A strict, streaming decoder of one chunked body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoder {
    state: State,
    /// Size of the chunk whose line is being read.
    size: u64,
    /// Significant hex digits of that size.
    digits: u8,
    /// Bytes of the current size or trailer line.
    line: usize,
    /// Bytes of the trailer section so far.
    trailers: usize,
    /// The current trailer name, lowercased (its first `NAME_KEPT` bytes).
    name: [u8; NAME_KEPT],
    name_len: usize,
    /// Data bytes so far.
    data: u64,
    /// Extension, padding and trailer bytes so far.
    overhead: u64,
    /// Most `data + overhead` allowed.
    budget: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `qdtext` (RFC 9110 §5.6.4).
fn is_qdtext(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5B | 0x5D..=0x7E | 0x80..=0xFF)
}

/// `field-vchar`, `SP` or `HTAB` (RFC 9110 §5.5).
fn is_field_byte(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21..=0x7E | 0x80..=0xFF)
}

fn hex_value(b: u8) -> Option<u64> {
    char::from(b).to_digit(16).map(u64::from)
}

impl Decoder {
    /// A decoder without a byte budget.
    pub fn new() -> Self {
        Self::with_budget(u64::MAX)
    }

    /// A decoder that refuses a body whose data, extensions, padding and
    /// trailers add up to more than `budget` bytes; a chunk is refused as
    /// soon as its size line says it would cross the budget.
    pub fn with_budget(budget: u64) -> Self {
        Self {
            state: State::SizeStart,
            size: 0,
            digits: 0,
            line: 0,
            trailers: 0,
            name: [0; NAME_KEPT],
            name_len: 0,
            data: 0,
            overhead: 0,
            budget,
        }
    }

    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Data bytes decoded so far.
    pub fn data_len(&self) -> u64 {
        self.data
    }

    /// Extension, padding and trailer bytes seen so far.
    pub fn overhead(&self) -> u64 {
        self.overhead
    }

    fn charge(&mut self, bytes: u64) -> Result<(), ChunkError> {
        self.overhead = self.overhead.saturating_add(bytes);
        if self.data.saturating_add(self.overhead) > self.budget {
            return Err(ChunkError::OverBudget(self.budget));
        }
        Ok(())
    }

    /// One more byte of a size line (CRLF excluded).
    fn count_line(&mut self) -> Result<(), ChunkError> {
        self.line = self.line.saturating_add(1);
        if self.line > MAX_CHUNK_LINE {
            return Err(ChunkError::LineTooLong);
        }
        Ok(())
    }

    /// One more byte of the trailer section; those of its fields (not of
    /// the final CRLF) are charged to the budget.
    fn count_trailer(&mut self, field: bool) -> Result<(), ChunkError> {
        self.trailers = self.trailers.saturating_add(1);
        if self.trailers > MAX_TRAILER_SECTION {
            return Err(ChunkError::TrailersTooLarge);
        }
        if field { self.charge(1) } else { Ok(()) }
    }

    /// The end of a size line: what is not a significant digit is
    /// overhead.
    fn end_size_line(&mut self) -> Result<State, ChunkError> {
        // A lone `0` (the last chunk) is its own significant digit.
        let padding = self.line.saturating_sub(usize::from(self.digits.max(1)));
        self.charge(u64::try_from(padding).unwrap_or(u64::MAX))?;
        Ok(State::SizeLf)
    }

    /// Decodes `input`, handing what it holds to `on` in order. Returns how
    /// many of its bytes belong to the body: all of them until the end is
    /// found, then none after it.
    pub fn decode<'a>(
        &mut self,
        input: &'a [u8],
        mut on: impl FnMut(Piece<'a>),
    ) -> Result<usize, ChunkError> {
        let mut rest = input;
        while !rest.is_empty() {
            if let State::Data { left } = self.state {
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                let Some((data, tail)) = rest.split_at_checked(take) else {
                    break;
                };
                on(Piece::Data(data));
                let taken = u64::try_from(take).unwrap_or(u64::MAX);
                self.data = self.data.saturating_add(taken);
                let left = left.saturating_sub(taken);
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { left }
                };
                rest = tail;
                continue;
            }
            if self.state == State::Done {
                break;
            }
            let Some((&b, tail)) = rest.split_first() else {
                break;
            };
            rest = tail;
            self.state = self.step(b, &mut on)?;
        }
        Ok(input.len().saturating_sub(rest.len()))
    }

    /// One byte outside chunk data.
    fn step<'a>(&mut self, b: u8, on: &mut impl FnMut(Piece<'a>)) -> Result<State, ChunkError> {
        use State::*;
        let in_size_line = matches!(
            self.state,
            SizeStart
                | Size
                | SizeWs
                | ExtPreName
                | ExtName
                | ExtAfterName
                | ExtPreValue
                | ExtToken
                | ExtQuoted
                | ExtQuotedPair
        );
        if in_size_line && b != b'\r' {
            self.count_line()?;
        }
        let in_trailers = matches!(
            self.state,
            TrailerStart | TrailerName | TrailerValue | TrailerLf | EndLf
        );
        if in_trailers {
            let final_crlf = self.state == EndLf || (self.state == TrailerStart && b == b'\r');
            let field = !final_crlf;
            self.count_trailer(field)?;
        }
        let next = match self.state {
            SizeStart => match hex_value(b) {
                Some(d) => {
                    self.size = d;
                    self.digits = u8::from(d != 0);
                    Size
                }
                None => return Err(ChunkError::BadSize),
            },
            Size => match hex_value(b) {
                Some(d) => {
                    if self.size != 0 || d != 0 {
                        self.digits = self.digits.saturating_add(1);
                    }
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(d))
                        .ok_or(ChunkError::SizeOverflow)?;
                    Size
                }
                None if is_ws(b) => SizeWs,
                None if b == b';' => ExtPreName,
                None if b == b'\r' => self.end_size_line()?,
                None => return Err(ChunkError::BadSize),
            },
            SizeWs => match b {
                b' ' | b'\t' => SizeWs,
                b';' => ExtPreName,
                b'\r' => self.end_size_line()?,
                _ => return Err(ChunkError::BadExtension),
            },
            ExtPreName => match b {
                b' ' | b'\t' => ExtPreName,
                _ if is_tchar(b) => ExtName,
                _ => return Err(ChunkError::BadExtension),
            },
            ExtName => match b {
                _ if is_tchar(b) => ExtName,
                b' ' | b'\t' => ExtAfterName,
                b'=' => ExtPreValue,
                b';' => ExtPreName,
                b'\r' => self.end_size_line()?,
                _ => return Err(ChunkError::BadExtension),
            },
            ExtAfterName => match b {
                b' ' | b'\t' => ExtAfterName,
                b'=' => ExtPreValue,
                b';' => ExtPreName,
                b'\r' => self.end_size_line()?,
                _ => return Err(ChunkError::BadExtension),
            },
            ExtPreValue => match b {
                b' ' | b'\t' => ExtPreValue,
                b'"' => ExtQuoted,
                _ if is_tchar(b) => ExtToken,
                _ => return Err(ChunkError::BadExtension),
            },
            ExtToken => match b {
                _ if is_tchar(b) => ExtToken,
                b' ' | b'\t' => SizeWs,
                b';' => ExtPreName,
                b'\r' => self.end_size_line()?,
                _ => return Err(ChunkError::BadExtension),
            },
            ExtQuoted => match b {
                b'"' => SizeWs,
                b'\\' => ExtQuotedPair,
                _ if is_qdtext(b) => ExtQuoted,
                _ => return Err(ChunkError::BadExtension),
            },
            ExtQuotedPair => match b {
                b'\t' | b' ' | 0x21..=0x7E | 0x80..=0xFF => ExtQuoted,
                _ => return Err(ChunkError::BadExtension),
            },
            SizeLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadLineEnd);
                }
                self.line = 0;
                if self.size == 0 {
                    TrailerStart
                } else {
                    let total = self
                        .data
                        .saturating_add(self.overhead)
                        .saturating_add(self.size);
                    if total > self.budget {
                        return Err(ChunkError::OverBudget(self.budget));
                    }
                    on(Piece::Start(self.size));
                    Data { left: self.size }
                }
            }
            Data { .. } => return Err(ChunkError::BadDataEnd),
            DataCr => match b {
                b'\r' => DataLf,
                _ => return Err(ChunkError::BadDataEnd),
            },
            DataLf => match b {
                b'\n' => {
                    on(Piece::ChunkEnd);
                    self.size = 0;
                    self.digits = 0;
                    SizeStart
                }
                _ => return Err(ChunkError::BadDataEnd),
            },
            TrailerStart => match b {
                b'\r' => EndLf,
                b' ' | b'\t' => return Err(ChunkError::ObsFold),
                _ if is_tchar(b) => {
                    self.name_len = 0;
                    self.keep_name_byte(b);
                    TrailerName
                }
                _ => return Err(ChunkError::BadTrailer),
            },
            TrailerName => match b {
                _ if is_tchar(b) => {
                    self.keep_name_byte(b);
                    TrailerName
                }
                b':' => {
                    self.check_name()?;
                    TrailerValue
                }
                _ => return Err(ChunkError::BadTrailer),
            },
            TrailerValue => match b {
                b'\r' => TrailerLf,
                _ if is_field_byte(b) => TrailerValue,
                _ => return Err(ChunkError::BadTrailer),
            },
            TrailerLf => match b {
                b'\n' => TrailerStart,
                _ => return Err(ChunkError::BadLineEnd),
            },
            EndLf => match b {
                b'\n' => {
                    on(Piece::End);
                    Done
                }
                _ => return Err(ChunkError::BadLineEnd),
            },
            Done => Done,
        };
        Ok(next)
    }

    fn keep_name_byte(&mut self, b: u8) {
        if let Some(slot) = self.name.get_mut(self.name_len) {
            *slot = b.to_ascii_lowercase();
        }
        self.name_len = self.name_len.saturating_add(1);
    }

    fn check_name(&self) -> Result<(), ChunkError> {
        let Some(name) = self.name.get(..self.name_len) else {
            return Ok(()); // longer than every forbidden name
        };
        match FORBIDDEN_TRAILERS.iter().find(|f| f.as_bytes() == name) {
            Some(f) => Err(ChunkError::ForbiddenTrailer(f)),
            None => Ok(()),
        }
    }
}

/// Appends `n` in lowercase hex.
fn push_hex(out: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut len = 0usize;
    let mut n = n;
    for slot in digits.iter_mut().rev() {
        let nibble = usize::try_from(n & 0xf).unwrap_or(0);
        *slot = HEX.get(nibble).copied().unwrap_or(b'0');
        len = len.saturating_add(1);
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    let start = digits.len().saturating_sub(len);
    out.extend_from_slice(digits.get(start..).unwrap_or_default());
}

/// Appends `piece` in canonical chunked form: `size CRLF` before a chunk's
/// data, `CRLF` after it, `0 CRLF CRLF` at the end (no extensions, no
/// trailers).
pub fn reframe(piece: Piece<'_>, out: &mut Vec<u8>) {
    match piece {
        Piece::Start(size) => {
            push_hex(out, size);
            out.extend_from_slice(b"\r\n");
        }
        Piece::Data(data) => out.extend_from_slice(data),
        Piece::ChunkEnd => out.extend_from_slice(b"\r\n"),
        Piece::End => out.extend_from_slice(b"0\r\n\r\n"),
    }
}

/// Appends only the data of `piece` (a chunked body decoded, for an
/// HTTP/1.0 peer).
pub fn dechunk(piece: Piece<'_>, out: &mut Vec<u8>) {
    if let Piece::Data(data) = piece {
        out.extend_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` in one call: consumed bytes, canonical form, data.
    fn run(input: &[u8]) -> Result<(usize, Vec<u8>, Vec<u8>), ChunkError> {
        let mut d = Decoder::new();
        let mut framed = Vec::new();
        let mut data = Vec::new();
        let n = d.decode(input, |p| {
            reframe(p, &mut framed);
            dechunk(p, &mut data);
        })?;
        Ok((n, framed, data))
    }

    fn err(input: &[u8]) -> ChunkError {
        match run(input) {
            Err(e) => e,
            Ok(r) => panic!("{:?} accepted: {r:?}", String::from_utf8_lossy(input)),
        }
    }

    const BODY: &[u8] = b"4;ext=1\r\nWiki\r\n5 ; a = \"q\\\"t\" ;b\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: x\r\n\r\n";
    const CANONICAL: &[u8] = b"4\r\nWiki\r\n5\r\npedia\r\ne\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n";

    #[test]
    fn decodes_and_reframes_canonically() {
        let mut stream = BODY.to_vec();
        stream.extend_from_slice(b"GET /next");
        let (n, framed, data) = run(&stream).unwrap();
        assert_eq!(n, BODY.len());
        assert_eq!(framed, CANONICAL);
        assert_eq!(data, b"Wikipedia in\r\n\r\nchunks.");
    }

    #[test]
    fn every_split_point_gives_the_same_result() {
        let mut stream = BODY.to_vec();
        stream.extend_from_slice(b"GET /next");
        for split in 0..=stream.len() {
            let mut d = Decoder::new();
            let mut framed = Vec::new();
            let first = d
                .decode(&stream[..split], |p| reframe(p, &mut framed))
                .unwrap();
            let second = d
                .decode(&stream[first..], |p| reframe(p, &mut framed))
                .unwrap();
            assert!(d.is_done(), "split at {split}");
            assert_eq!(first + second, BODY.len(), "split at {split}");
            assert_eq!(framed, CANONICAL, "split at {split}");
            assert_eq!(d.data_len(), 23);
        }
        // Byte by byte.
        let mut d = Decoder::new();
        let mut framed = Vec::new();
        for b in BODY.chunks(1) {
            assert_eq!(d.decode(b, |p| reframe(p, &mut framed)), Ok(1));
        }
        assert!(d.is_done());
        assert_eq!(framed, CANONICAL);
    }

    #[test]
    fn sizes_are_hex_with_leading_zeros_allowed() {
        let (_, framed, data) = run(b"000000000000000000000001\r\nx\r\n00\r\n\r\n").unwrap();
        assert_eq!(
            (framed.as_slice(), data.as_slice()),
            (&b"1\r\nx\r\n0\r\n\r\n"[..], &b"x"[..])
        );
        let (_, framed, _) = run(b"A \t\r\n0123456789\r\n0\r\n\r\n").unwrap();
        assert!(framed.starts_with(b"a\r\n"));
        // 16 significant digits fit; 17 do not.
        let mut d = Decoder::new();
        assert!(d.decode(b"ffffffffffffffff\r\n", |_| {}).is_ok());
        assert_eq!(err(b"10000000000000000\r\n"), ChunkError::SizeOverflow);
        assert_eq!(err(b"0000010000000000000000\r\n"), ChunkError::SizeOverflow);
    }

    #[test]
    fn malformed_bodies_are_refused() {
        use ChunkError::*;
        for (bad, e) in [
            (&b"x\r\n"[..], BadSize),
            (b"\r\n", BadSize),
            (b";a\r\n", BadSize),
            (b" 1\r\n", BadSize),
            (b"-1\r\n", BadSize),
            (b"0x1\r\n", BadSize),
            (b"1 junk\r\n", BadExtension),
            (b"1junk\r\n", BadSize),
            (b"1;\r\n", BadExtension),
            (b"1;=a\r\n", BadExtension),
            (b"1;a=\r\n", BadExtension),
            (b"1;a=\"x\r\n", BadExtension),
            (b"1;a=\"x\"y\r\n", BadExtension),
            (b"1;a=b c\r\n", BadExtension),
            (b"1;a\x00\r\n", BadExtension),
            (b"1;a=\"\x7f\"\r\n", BadExtension),
            (b"1;a=\"\\\n\"\r\n", BadExtension),
            (b"1\n", BadSize),
            (b"1;a\n", BadExtension),
            (b"1\rx", BadLineEnd),
            (b"4\r\nWikiX\r\n", BadDataEnd),
            (b"4\r\nWiki\n", BadDataEnd),
            (b"4\r\nWiki\r\r", BadDataEnd),
            (b"0\r\n\n", BadTrailer),
            (b"0\r\n\r\r", BadLineEnd),
            (b"0\r\nX: a\n\nPOST / HTTP/1.1\r\n", BadTrailer),
            (b"0\r\nX: a\r\r\n", BadLineEnd),
            (b"0\r\nX: a\rb\r\n\r\n", BadLineEnd),
            (b"0\r\nX a\r\n\r\n", BadTrailer),
            (b"0\r\nX\r\n\r\n", BadTrailer),
            (b"0\r\n: a\r\n\r\n", BadTrailer),
            (b"0\r\nX : a\r\n\r\n", BadTrailer),
            (b"0\r\nX: a\r\n b\r\n\r\n", ObsFold),
            (b"0\r\n\tX: a\r\n\r\n", ObsFold),
            (b"0\r\nX: a\x00\r\n\r\n", BadTrailer),
            (
                b"0\r\nContent-Length: 5\r\n\r\n",
                ForbiddenTrailer("content-length"),
            ),
            (
                b"0\r\ntransfer-encoding: chunked\r\n\r\n",
                ForbiddenTrailer("transfer-encoding"),
            ),
            (b"0\r\nHOST: x\r\n\r\n", ForbiddenTrailer("host")),
        ] {
            assert_eq!(err(bad), e, "{:?}", String::from_utf8_lossy(bad));
        }
        // Allowed: empty values, obs-text, names longer than any forbidden one.
        let ok = b"0\r\nx-a:\r\nx-b: \xe9t\xe9\r\nx-a-very-long-trailer-field-name-here: 1\r\n\r\n";
        let (n, framed, _) = run(ok).unwrap();
        assert_eq!((n, framed.as_slice()), (ok.len(), &b"0\r\n\r\n"[..]));
    }

    #[test]
    fn lines_and_trailers_are_bounded() {
        let mut line = b"1;a=".to_vec();
        line.resize(MAX_CHUNK_LINE, b'b');
        line.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert!(run(&line).is_ok(), "exactly the bound");
        let mut line = b"1;a=".to_vec();
        line.resize(MAX_CHUNK_LINE + 1, b'b');
        assert_eq!(err(&line), ChunkError::LineTooLong);
        let mut zeros = vec![b'0'; MAX_CHUNK_LINE + 1];
        zeros.push(b'1');
        assert_eq!(err(&zeros), ChunkError::LineTooLong);

        let mut trailers = b"0\r\n".to_vec();
        while trailers.len() < MAX_TRAILER_SECTION + 10 {
            trailers.extend_from_slice(b"x-t: 0123456789abcdef\r\n");
        }
        assert_eq!(err(&trailers), ChunkError::TrailersTooLarge);
    }

    #[test]
    fn budget_counts_data_extensions_padding_and_trailers() {
        let decode = |budget, input: &[u8]| {
            let mut d = Decoder::with_budget(budget);
            d.decode(input, |_| {})
                .map(|_| (d.data_len(), d.overhead()))
        };
        assert_eq!(decode(3, b"3\r\nabc\r\n0\r\n\r\n"), Ok((3, 0)));
        assert_eq!(
            decode(2, b"3\r\nabc\r\n0\r\n\r\n"),
            Err(ChunkError::OverBudget(2)),
            "refused at the size line"
        );
        // `;a=bb` is 5 bytes, the leading `0` one.
        assert_eq!(decode(9, b"03;a=bb\r\nabc\r\n0\r\n\r\n"), Ok((3, 6)));
        assert_eq!(
            decode(8, b"03;a=bb\r\nabc\r\n0\r\n\r\n"),
            Err(ChunkError::OverBudget(8))
        );
        // The trailer field, `x: 1\r\n`, is 6 bytes.
        assert_eq!(decode(9, b"3\r\nabc\r\n0\r\nx: 1\r\n\r\n"), Ok((3, 6)));
        assert_eq!(
            decode(8, b"3\r\nabc\r\n0\r\nx: 1\r\n\r\n"),
            Err(ChunkError::OverBudget(8))
        );
    }

    #[test]
    fn nothing_is_taken_past_the_end() {
        let mut d = Decoder::new();
        assert_eq!(d.decode(b"0\r\n\r\n0\r\n\r\n", |_| {}), Ok(5));
        assert!(d.is_done());
        assert_eq!(d.decode(b"more", |_| {}), Ok(0));
    }

    /// A small deterministic generator (xorshift64*), so that a failure
    /// repeats.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A valid chunked body with random chunks, extensions and trailers,
    /// with its data.
    fn random_body(rng: &mut Rng) -> (Vec<u8>, Vec<u8>) {
        let mut body = Vec::new();
        let mut data = Vec::new();
        for _ in 0..rng.below(5) {
            let size = 1 + rng.below(40);
            let zeros = "0".repeat(rng.below(3));
            body.extend_from_slice(format!("{zeros}{size:x}").as_bytes());
            if rng.below(2) == 0 {
                body.extend_from_slice(b" ; n=\"v\\\"\" ;m");
            }
            body.extend_from_slice(b"\r\n");
            let chunk: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
            body.extend_from_slice(&chunk);
            data.extend_from_slice(&chunk);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n");
        for _ in 0..rng.below(3) {
            body.extend_from_slice(b"x-t: a b\r\n");
        }
        body.extend_from_slice(b"\r\n");
        (body, data)
    }

    /// Random valid bodies split at random points decode to their data and
    /// their canonical form; random mutations of them never panic, and
    /// whatever is accepted is re-framed into something a second decoder
    /// reads the same way (the boundary and the data agree).
    #[test]
    fn randomized_bodies_and_mutations() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let (body, data) = random_body(&mut rng);
            let split = rng.below(body.len() + 1);
            let mut d = Decoder::new();
            let mut framed = Vec::new();
            let a = d
                .decode(&body[..split], |p| reframe(p, &mut framed))
                .unwrap();
            let b = d.decode(&body[a..], |p| reframe(p, &mut framed)).unwrap();
            assert!(d.is_done());
            assert_eq!(a + b, body.len());
            let (n, again, decoded) = run(&framed).unwrap();
            assert_eq!(
                (n, again.as_slice(), decoded.as_slice()),
                (framed.len(), framed.as_slice(), data.as_slice())
            );

            let mut mutated = body.clone();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(mutated.len());
                match rng.below(3) {
                    0 => mutated[at] = rng.next() as u8,
                    1 => {
                        mutated.remove(at);
                    }
                    _ => mutated.insert(at, b"\r\n;= \"\\\x00\x80:0aF"[rng.below(13)]),
                }
            }
            if let Ok((n, framed, data)) = run(&mutated) {
                assert!(n <= mutated.len());
                let mut d = Decoder::new();
                if d.decode(&mutated, |_| {}).is_ok() && d.is_done() {
                    let (m, again, decoded) = run(&framed).unwrap();
                    assert_eq!((m, again, decoded), (framed.len(), framed.clone(), data));
                }
            }
        }
    }
}
