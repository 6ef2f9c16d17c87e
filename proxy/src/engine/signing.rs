//! The body of a signed call (`crate::signing`): read whole before the
//! call goes anywhere, its sha256 checked against the signed digest, and
//! the signature marked used. Only signed calls come here; the body stays
//! in the connection's read buffer, from where forwarding takes it as it
//! would any body that came with its head.
//!
//! The body must have a `content-length` (a chunked one is refused with
//! 411: its digest would need the whole body decoded first) of at most
//! the function's `max_body_bytes` and `MAX_SIGNED_BODY_BYTES` (16 MiB),
//! whichever is lower (413 above). A client that sends `expect:
//! 100-continue` gets its `100 Continue` here. Reading is bounded by the
//! function's timeout; a client that goes away or is too slow gets its
//! connection closed.
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::string_slice))]

use containerpub_wire::signing::MAX_SIGNED_BODY_BYTES;
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;

use super::{Conn, read_more, timed};
use crate::access::Refusal;
use crate::h1::{Framing, RequestLine, Semantics};
use crate::metrics::Rejection;
use crate::service::Reply;
use crate::signing::{self, SigRefusal, Signed};

/// How a signed call's body check ended, when it did not pass.
pub(super) enum BodyVerdict {
    /// Refuse the call with this.
    Refused(Refusal),
    /// Answer with this (411, 413).
    Reply(Reply),
    /// The client went away or was too slow: close without an answer.
    Gone,
}

impl Conn {
    /// Answers a signed call whose body check failed; the connection
    /// closes (its body may be unread, or was the caller's mistake).
    pub(super) async fn refuse_signed(
        &mut self,
        call: crate::service::Call,
        verdict: BodyVerdict,
        head_only: bool,
    ) -> bool {
        match verdict {
            BodyVerdict::Refused(refusal) => {
                self.refuse_access(call, refusal, true, head_only).await;
            }
            BodyVerdict::Reply(reply) => {
                self.answer_call(call, &reply, true, head_only).await;
            }
            BodyVerdict::Gone => drop(call),
        }
        false
    }

    /// Reads the body of a signed call whose head is `line` into the read
    /// buffer and checks it against `signed`.
    pub(super) async fn check_signed_body(
        &mut self,
        line: &RequestLine,
        sem: &Semantics,
        signed: &Signed,
        max_body_bytes: u64,
        timeout: std::time::Duration,
    ) -> Result<(), BodyVerdict> {
        let limit = max_body_bytes.min(MAX_SIGNED_BODY_BYTES);
        let len = match sem.framing {
            Framing::Empty => 0,
            Framing::Length(n) if n <= limit => n,
            Framing::Length(n) => {
                return Err(BodyVerdict::Reply(Reply::rejected(
                    Rejection::BodyTooLarge,
                    413,
                    format!(
                        "request body of {n} bytes is over the limit of {limit} bytes for a signed call"
                    ),
                )));
            }
            Framing::Chunked | Framing::Close => {
                return Err(BodyVerdict::Reply(Reply::rejected(
                    Rejection::BadSignature,
                    411,
                    "a signed call's body must be sent with a content-length (not chunked)",
                )));
            }
        };
        // `limit` is at most 16 MiB: it fits.
        let end = line
            .head_len
            .saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
        self.timer
            .as_mut()
            .reset(tokio::time::Instant::now() + timeout);
        if self.buf.len() < end && sem.expect_continue {
            timed(
                &mut self.timer,
                self.tcp.write_all(b"HTTP/1.1 100 Continue\r\n\r\n"),
            )
            .await
            .map_err(|_| BodyVerdict::Gone)?;
        }
        let missing = end.saturating_sub(self.buf.len());
        self.buf.reserve(missing);
        while self.buf.len() < end {
            read_more(&mut self.tcp, &mut self.buf, &mut self.timer)
                .await
                .map_err(|_| BodyVerdict::Gone)?;
        }
        let body = self.buf.get(line.head_len..end).unwrap_or_default();
        let digest = containerpub_wire::signing::body_digest(body);
        if !bool::from(digest.ct_eq(&signed.body_digest)) {
            return Err(BodyVerdict::Refused(Refusal::Signature(
                SigRefusal::DigestMismatch,
            )));
        }
        signing::remember(signed).map_err(|e| BodyVerdict::Refused(Refusal::Signature(e)))
    }
}
