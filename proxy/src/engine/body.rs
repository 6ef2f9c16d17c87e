//! Message bodies on their way through: how far a request or answer body
//! has come by its framing (`content-length`, chunked, close-delimited),
//! the function's body limit on a chunked request body, and the parts a
//! re-framed chunked body leaves in (frame lines of the proxy's own, data
//! straight from the read buffer).
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::string_slice))]

use std::ops::Range;

use crate::chunked::{self, ChunkError, Decoder, Piece};
use crate::h1::Framing;
use crate::metrics::Rejection;
use crate::service::Reply;

/// Part of a re-framed chunked body on its way out: a frame line (in the
/// proxy's own buffer) or data (in the read buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Part {
    Frame(Range<usize>),
    Data(Range<usize>),
}

/// Why a request body cannot be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyError {
    Malformed(ChunkError),
    TooLarge,
}

impl BodyError {
    /// The answer to a request whose body failed so, under `limit`.
    pub(super) fn reply(self, limit: u64) -> Reply {
        match self {
            BodyError::Malformed(e) => {
                Reply::new(400, format!("bad request: malformed chunked body: {e}"))
            }
            BodyError::TooLarge => Reply::rejected(
                Rejection::BodyTooLarge,
                413,
                format!("request body is over the limit of {limit} bytes"),
            ),
        }
    }
}

/// How far a body has come, by its framing.
struct Progress {
    framing: Framing,
    /// Bytes left of a `content-length` body.
    left: u64,
    chunked: Decoder,
}

impl Progress {
    /// A chunked body's data, extensions and trailers may add up to
    /// `budget` bytes.
    fn new(framing: Framing, budget: u64) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        Self {
            framing,
            left,
            chunked: Decoder::with_budget(budget),
        }
    }

    /// Whether the body has ended (a close-delimited one ends with its
    /// connection, which the caller sees).
    fn done(&self) -> bool {
        match self.framing {
            Framing::Empty => true,
            Framing::Close => false,
            Framing::Length(_) => self.left == 0,
            Framing::Chunked => self.chunked.is_done(),
        }
    }

    /// How many bytes at the start of `input` belong to a body that is not
    /// chunked (all of `input` for a chunked one: use `relay`).
    fn take(&mut self, input: &[u8]) -> usize {
        match self.framing {
            Framing::Empty => 0,
            Framing::Close | Framing::Chunked => input.len(),
            Framing::Length(_) => {
                let n = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                self.left = self.left.saturating_sub(n as u64);
                n
            }
        }
    }

    /// Appends the part of `input` that belongs to the body to `out`: as it
    /// came, or, for a chunked body, re-framed (its data only when
    /// `dechunk`). Returns how many bytes of `input` belong to the body.
    fn relay(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        dechunk: bool,
    ) -> Result<usize, ChunkError> {
        if self.framing != Framing::Chunked {
            let n = self.take(input);
            out.extend_from_slice(input.get(..n).unwrap_or_default());
            return Ok(n);
        }
        if dechunk {
            self.chunked.decode(input, |p| chunked::dechunk(p, out))
        } else {
            self.chunked.decode(input, |p| chunked::reframe(p, out))
        }
    }
}

/// Where a request body stands: its progress and the function's limit
/// (checked here for chunked bodies, extensions and trailers included; a
/// `content-length` is checked before).
pub(super) struct RequestBody {
    progress: Progress,
}

impl RequestBody {
    pub(super) fn new(framing: Framing, limit: u64) -> Self {
        Self {
            progress: Progress::new(framing, limit),
        }
    }

    pub(super) fn done(&self) -> bool {
        self.progress.done()
    }

    pub(super) fn is_chunked(&self) -> bool {
        self.progress.framing == Framing::Chunked
    }

    /// How many bytes at the start of `input` belong to a body that is not
    /// chunked.
    pub(super) fn take(&mut self, input: &[u8]) -> Result<usize, BodyError> {
        Ok(self.progress.take(input))
    }

    /// Decodes a chunked body's part of `input` into what goes out: frame
    /// lines appended to `frames`, data as ranges of `input` (not copied),
    /// in order in `parts`. Returns how many bytes of `input` it took.
    pub(super) fn relay_parts(
        &mut self,
        input: &[u8],
        frames: &mut Vec<u8>,
        parts: &mut Vec<Part>,
    ) -> Result<usize, BodyError> {
        let base = input.as_ptr() as usize;
        self.progress
            .chunked
            .decode(input, |piece| match piece {
                Piece::Data(data) => {
                    let start = (data.as_ptr() as usize).wrapping_sub(base);
                    parts.push(Part::Data(start..start.wrapping_add(data.len())));
                }
                frame => {
                    let start = frames.len();
                    chunked::reframe(frame, frames);
                    // Adjacent frame lines leave as one.
                    match parts.last_mut() {
                        Some(Part::Frame(r)) if r.end == start => r.end = frames.len(),
                        _ => parts.push(Part::Frame(start..frames.len())),
                    }
                }
            })
            .map_err(body_error)
    }

    /// Appends the body's part of `input` to `out` (a chunked body
    /// re-framed); returns how many bytes of `input` it took.
    pub(super) fn relay(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, BodyError> {
        self.progress.relay(input, out, false).map_err(body_error)
    }

    /// Follows the body through `input` without relaying it (a chunked one
    /// checked as `relay` would); returns how many bytes of `input` it
    /// took: all of them until the body ends (the decoder keeps an
    /// unfinished chunk line in its own state), so the next call gets only
    /// the bytes after them.
    pub(super) fn scan(&mut self, input: &[u8]) -> Result<usize, BodyError> {
        if self.is_chunked() {
            self.progress
                .chunked
                .decode(input, |_| {})
                .map_err(body_error)
        } else {
            self.take(input)
        }
    }
}

fn body_error(e: ChunkError) -> BodyError {
    match e {
        ChunkError::OverBudget(_) => BodyError::TooLarge,
        e => BodyError::Malformed(e),
    }
}

/// Where an answer body stands.
pub(super) struct AnswerBody {
    progress: Progress,
    /// Send a chunked body's data only (to an HTTP/1.0 client).
    dechunk: bool,
    /// Bytes the instance sent past the end of the answer (then its
    /// connection is not reused).
    pub(super) leftover: usize,
}

impl AnswerBody {
    pub(super) fn new(framing: Framing, dechunk: bool) -> Self {
        Self {
            progress: Progress::new(framing, u64::MAX),
            dechunk: dechunk && framing == Framing::Chunked,
            leftover: 0,
        }
    }

    /// Appends the part of `input` that belongs to the body to `out`
    /// (re-framed, or decoded when de-chunking); returns whether the body
    /// is complete.
    pub(super) fn relay_into(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, ChunkError> {
        let n = self.progress.relay(input, out, self.dechunk)?;
        self.leftover = self.leftover.saturating_add(input.len().saturating_sub(n));
        Ok(self.progress.done())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bodies_end_where_their_framing_says() {
        let mut b = RequestBody::new(Framing::Length(5), 100);
        assert_eq!(b.take(b"abc"), Ok(3));
        assert!(!b.done());
        assert_eq!(b.take(b"deGET /"), Ok(2));
        assert!(b.done());

        let relay = |b: &mut RequestBody, input: &[u8]| {
            let mut out = Vec::new();
            b.relay(input, &mut out).map(|n| (n, out))
        };
        let mut b = RequestBody::new(Framing::Chunked, 100);
        assert_eq!(
            relay(&mut b, b"03;x=y\r\nabc\r\n0\r\nx-t: 1\r\n\r\nGET"),
            Ok((26, b"3\r\nabc\r\n0\r\n\r\n".to_vec())),
            "re-framed: no extension, no trailer"
        );
        assert!(b.done());

        let mut b = RequestBody::new(Framing::Chunked, 4);
        assert_eq!(
            relay(&mut b, b"3\r\nabc\r\n"),
            Ok((8, b"3\r\nabc\r\n".to_vec()))
        );
        assert_eq!(relay(&mut b, b"3\r\ndef\r\n"), Err(BodyError::TooLarge));
        let mut b = RequestBody::new(Framing::Chunked, 4);
        assert_eq!(
            relay(&mut b, b"z\r\n"),
            Err(BodyError::Malformed(ChunkError::BadSize))
        );
        // Extensions count towards the limit.
        let mut b = RequestBody::new(Framing::Chunked, 4);
        assert_eq!(relay(&mut b, b"1;abcd\r\n"), Err(BodyError::TooLarge));
        assert!(RequestBody::new(Framing::Empty, 0).done());
    }

    #[test]
    fn streamed_chunked_data_is_not_copied() {
        let input = b"3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nt: 1\r\n\r\nNEXT";
        let mut b = RequestBody::new(Framing::Chunked, 100);
        let (mut frames, mut parts) = (Vec::new(), Vec::new());
        assert_eq!(
            b.relay_parts(input, &mut frames, &mut parts),
            Ok(input.len() - 4)
        );
        assert_eq!(
            parts,
            [
                Part::Frame(0..3),
                Part::Data(7..10),
                Part::Frame(3..8),
                Part::Data(15..17),
                Part::Frame(8..15),
            ]
        );
        let out: Vec<u8> = parts
            .iter()
            .flat_map(|p| match p {
                Part::Frame(r) => frames[r.clone()].to_vec(),
                Part::Data(r) => input[r.clone()].to_vec(),
            })
            .collect();
        assert_eq!(out, b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
        assert!(b.done());
    }

    #[test]
    fn answer_bodies_are_relayed_to_their_end_and_no_further() {
        let mut out = Vec::new();
        let mut a = AnswerBody::new(Framing::Length(4), false);
        assert_eq!(a.relay_into(b"ab", &mut out), Ok(false));
        assert_eq!(a.relay_into(b"cdXX", &mut out), Ok(true));
        assert_eq!((out.as_slice(), a.leftover), (&b"abcd"[..], 2));

        let chunked = b"2;e=1\r\nab\r\n0\r\nx-t: 1\r\n\r\n";
        let mut out = Vec::new();
        let mut a = AnswerBody::new(Framing::Chunked, false);
        assert_eq!(a.relay_into(chunked, &mut out), Ok(true));
        assert_eq!(out, b"2\r\nab\r\n0\r\n\r\n", "re-framed");
        let mut out = Vec::new();
        let mut a = AnswerBody::new(Framing::Chunked, true);
        assert_eq!(a.relay_into(chunked, &mut out), Ok(true));
        assert_eq!(out, b"ab", "de-chunked for HTTP/1.0");
        let mut a = AnswerBody::new(Framing::Chunked, false);
        assert_eq!(
            a.relay_into(b"2\r\nab\r\n0\r\nx: a\n\n", &mut Vec::new()),
            Err(ChunkError::BadTrailer)
        );

        let mut out = Vec::new();
        let mut a = AnswerBody::new(Framing::Close, false);
        assert_eq!(a.relay_into(b"until close", &mut out), Ok(false));
        assert_eq!(out, b"until close");

        let mut a = AnswerBody::new(Framing::Empty, false);
        assert_eq!(a.relay_into(b"stray", &mut Vec::new()), Ok(true));
        assert_eq!(a.leftover, 5, "stray bytes keep the connection from reuse");
    }
}
