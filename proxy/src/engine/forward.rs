//! Forwarding: a request on its way to the leased instance and the
//! instance's answer head back. The head for the instance is written
//! straight into a buffer with the body bytes in the read buffer (all of a
//! body up to 1 MiB, which admission read before the lease) and leaves in
//! one write; the rest of a larger body follows as it comes (a chunked one
//! re-framed). The connection is a pooled one to the instance or a fresh
//! one, and these rules decide what happens when it fails:
//! - a connect failure marks the instance failed; the call is tried once
//!   more on a new lease (`admission::lease`);
//! - a reused connection that gives nothing back (the instance had closed
//!   it) is replaced by a fresh one once, for an idempotent request whose
//!   body is whole in memory only; any other request gets 502 (it may have
//!   been acted on);
//! - a fresh connection that breaks before it took any byte of the request
//!   marks the instance failed; one that breaks later does not, in the head
//!   or the body (an instance refusing early and closing) or before an
//!   answer (a handler that failed on this request);
//! - the function's timeout runs from here to the end of the answer (504
//!   while no answer head came).
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::string_slice))]

use std::io::IoSlice;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tracing::debug;

use super::admission::{self, Admitted};
use super::body::{BodyError, Part, RequestBody};
use super::{Conn, Fail, read_more, timed, write_all_vectored};
use crate::h1::{self, Field, Forwarding, HeadError, RequestLine, StatusLine};
use crate::metrics::UpstreamError;
use crate::service::{Proxy, Reply, pool_reply};
use crate::upstream::{self, Buf};

/// Most bytes of a streamed chunked body decoded in one pass.
const CHUNKED_PASS: usize = 64 * 1024;

/// The instance's answer head, on the connection that carries the rest.
pub(super) struct Answered {
    pub up: TcpStream,
    pub line: StatusLine,
    /// The answer's head and the bytes read with it.
    pub ubuf: Buf,
    /// A buffer for what goes to the client (it held the request head).
    pub out: Buf,
    /// From the first attempt to the answer's head.
    pub upstream_time: Duration,
}

/// Why a forwarded call got no answer head.
pub(super) enum NoAnswer {
    /// Answer the client with this, then close its connection.
    Reply(Reply),
    /// The client went away (while sending its body, or before its
    /// `100 Continue` could be written): close its connection.
    ClientGone,
}

/// Why an answer's head did not arrive.
enum HeadFailure {
    Io(Fail),
    Bad(HeadError),
}

/// Why a request body could not be sent.
enum StreamError {
    Client(Fail),
    Upstream(Fail),
    Body(BodyError),
}

impl Conn {
    /// Sends the admitted request to its instance (again on another
    /// connection or lease when the rules above allow) and reads the
    /// answer's head into `ufields`.
    pub(super) async fn forward(
        &mut self,
        proxy: &Proxy,
        req: &mut Admitted,
        line: &RequestLine,
        ufields: &mut Vec<Field>,
    ) -> Result<Answered, NoAnswer> {
        let call = &mut req.call;
        let limit = call.entry.route.config.resources.max_body_bytes;
        // The request head for the instance, with the body bytes that came
        // with it.
        let mut out = Buf::take();
        h1::write_request_head(
            &mut out,
            &self.buf,
            line,
            &self.fields,
            req.sem.framing,
            &Forwarding {
                path: &req.path,
                request_id: call.request_id.as_bytes(),
                traceparent: call.traceparent.as_bytes(),
                client_ip: self.client_ip.as_bytes(),
                upgrade: req.sem.upgrade,
            },
        );
        let here = self.buf.get(line.head_len..).unwrap_or_default();
        let mut body = RequestBody::new(req.sem.framing, limit);
        let taken = body
            .relay(here, &mut out)
            .map_err(|e| NoAnswer::Reply(e.reply(limit)))?;
        let used = line.head_len.saturating_add(taken).min(self.buf.len());
        self.buf.drain(..used);
        self.consumed = 0;
        if req.sem.expect_continue && !body.done() && !self.send_continue().await {
            debug!(peer = %self.peer, "client left before its 100 Continue");
            return Err(NoAnswer::ClientGone);
        }
        // An idempotent request whose body is all in `out` can be sent
        // again.
        let replayable = req.idempotent && body.done();

        let timeout = call.timeout();
        let upstream_started = Instant::now();
        let deadline = tokio::time::Instant::from_std(upstream_started + timeout);
        self.timer.as_mut().reset(deadline);
        let mut ubuf = Buf::take();
        let mut connect_retried = false;
        let mut replayed = false;
        let mut force_fresh = false;

        loop {
            let lease = call.lease.as_ref().expect("a forwarded call has a lease");
            let pooled = if force_fresh {
                None
            } else {
                upstream::take(lease.instance_id(), upstream_started)
            };
            let reused = pooled.is_some();
            let mut up = match pooled {
                Some(up) => up,
                None => match Box::pin(upstream::connect(lease.addr())).await {
                    Ok(up) => up,
                    Err(e) => {
                        // Nothing was sent: the instance is unreachable.
                        call.count_upstream_error(UpstreamError::Connect);
                        if let Some(lease) = call.lease.take() {
                            debug!(function = %call.function(), instance = %lease.instance_id(), error = %e, "instance unreachable");
                            lease.mark_failed();
                        }
                        if connect_retried {
                            return Err(connection_failed());
                        }
                        connect_retried = true;
                        match admission::lease(proxy, &call.entry).await {
                            Ok(mut lease) => {
                                lease.note_call(&call.request_id);
                                call.lease = Some(lease);
                            }
                            Err(e) => return Err(NoAnswer::Reply(pool_reply(call.function(), &e))),
                        }
                        continue;
                    }
                },
            };
            let (written, sent) = write_counted(&mut up, &mut self.timer, &out).await;
            // Once the head went out, whatever fails is no sign of a broken
            // instance: a body write that fails is the instance answering
            // early and closing (a 413 of its own, a 401 before reading),
            // and a close without an answer is a handler that failed on
            // this request (Go's net/http on a panic): marking the instance
            // failed for it would let any caller take instances out. Only
            // a connection that took nothing at all is a broken instance's:
            // once some of the head was taken, the instance may have read
            // enough to refuse it (a head over its own limit) and close.
            let took_some = written > 0;
            let sent = match sent {
                Ok(()) if !body.done() => self.stream_body(&mut body, &mut up).await,
                Ok(()) => Ok(()),
                Err(e) => Err(StreamError::Upstream(e)),
            };
            let failure = match sent {
                Ok(()) => {
                    match read_head(
                        &mut up,
                        &mut ubuf,
                        ufields,
                        &mut self.timer,
                        req.sem.upgrade,
                    )
                    .await
                    {
                        Ok(line) => {
                            return Ok(Answered {
                                up,
                                line,
                                ubuf,
                                out,
                                upstream_time: upstream_started.elapsed(),
                            });
                        }
                        Err(f) => f,
                    }
                }
                Err(StreamError::Upstream(f)) => HeadFailure::Io(f),
                Err(StreamError::Client(f)) => {
                    debug!(peer = %self.peer, error = %f, "client left while sending its body");
                    return Err(NoAnswer::ClientGone);
                }
                Err(StreamError::Body(e)) => return Err(NoAnswer::Reply(e.reply(limit))),
            };
            // Nothing came back on a reused connection: the instance had
            // closed it. Send an idempotent request again on a fresh one,
            // once; any other gets a 502 (it may have been acted on).
            let nothing_back =
                ubuf.is_empty() && matches!(failure, HeadFailure::Io(Fail::Eof | Fail::Io(_)));
            if reused && replayable && !replayed && nothing_back {
                replayed = true;
                force_fresh = true;
                continue;
            }
            return Err(match failure {
                HeadFailure::Io(Fail::Timeout) => {
                    call.count_upstream_error(UpstreamError::Timeout);
                    let message =
                        format!("function did not answer within {} ms", timeout.as_millis());
                    NoAnswer::Reply(Reply::new(504, message))
                }
                HeadFailure::Io(f) => {
                    call.count_upstream_error(UpstreamError::Reset);
                    if !reused
                        && !took_some
                        && let Some(lease) = &call.lease
                    {
                        // A fresh connection that broke before it took a
                        // byte: the instance is broken, keep it from
                        // further calls. (One that breaks later, with or
                        // without an answer, is left alone: an instance that
                        // died is taken out by Podman's death event.)
                        debug!(function = %call.function(), instance = %lease.instance_id(), error = %f, "instance failed mid-call");
                        lease.mark_failed();
                    }
                    connection_failed()
                }
                HeadFailure::Bad(e) => {
                    debug!(function = %call.function(), error = %e, "function sent a bad answer head");
                    NoAnswer::Reply(Reply::new(
                        502,
                        format!("function sent an invalid answer: {e}"),
                    ))
                }
            });
        }
    }

    /// Sends the rest of a request body from the client to the instance.
    async fn stream_body(
        &mut self,
        body: &mut RequestBody,
        up: &mut TcpStream,
    ) -> Result<(), StreamError> {
        let mut frames = Vec::new();
        let mut parts = Vec::new();
        while !body.done() {
            if self.buf.is_empty() {
                read_more(&mut self.tcp, &mut self.buf, &mut self.timer)
                    .await
                    .map_err(StreamError::Client)?;
            }
            let taken = if body.is_chunked() {
                // Re-framed: the frame lines are the proxy's, the data
                // leaves from the read buffer (one vectored write).
                frames.clear();
                parts.clear();
                // At most `CHUNKED_PASS` bytes a pass: a piece of
                // bookkeeping per chunk (1-byte chunks: about 14 times the
                // input) stays small however much one read brought.
                let input = self
                    .buf
                    .get(..self.buf.len().min(CHUNKED_PASS))
                    .unwrap_or_default();
                let taken = body
                    .relay_parts(input, &mut frames, &mut parts)
                    .map_err(StreamError::Body)?;
                let mut slices: Vec<IoSlice<'_>> = parts
                    .iter()
                    .map(|part| {
                        IoSlice::new(match part {
                            Part::Frame(r) => frames.get(r.clone()).unwrap_or_default(),
                            Part::Data(r) => self.buf.get(r.clone()).unwrap_or_default(),
                        })
                    })
                    .collect();
                write_all_vectored(up, &mut self.timer, &mut slices)
                    .await
                    .map_err(StreamError::Upstream)?;
                taken
            } else {
                // As it came, from the read buffer.
                let taken = body.take(&self.buf).map_err(StreamError::Body)?;
                let part = self.buf.get(..taken).unwrap_or_default();
                timed(&mut self.timer, up.write_all(part))
                    .await
                    .map_err(StreamError::Upstream)?;
                taken
            };
            let taken = taken.min(self.buf.len());
            self.buf.drain(..taken);
        }
        Ok(())
    }
}

/// Writes all of `bytes` before `timer` fires; returns how many were
/// written, as far as it came when it failed.
async fn write_counted(
    up: &mut TcpStream,
    timer: &mut Pin<Box<Sleep>>,
    bytes: &[u8],
) -> (usize, Result<(), Fail>) {
    let mut written = 0;
    while let Some(rest) = bytes.get(written..).filter(|rest| !rest.is_empty()) {
        match timed(timer, up.write(rest)).await {
            Ok(0) => return (written, Err(Fail::Io(std::io::ErrorKind::WriteZero.into()))),
            Ok(n) => written += n,
            Err(e) => return (written, Err(e)),
        }
    }
    (written, Ok(()))
}

fn connection_failed() -> NoAnswer {
    NoAnswer::Reply(Reply::new(502, "function connection failed"))
}

/// Reads the instance's answer head into `ubuf`, skipping interim (1xx)
/// answers; a `101` is an answer when the client asked to switch
/// protocols, and an error otherwise.
async fn read_head(
    up: &mut TcpStream,
    ubuf: &mut Buf,
    fields: &mut Vec<Field>,
    timer: &mut Pin<Box<Sleep>>,
    switch_asked: bool,
) -> Result<h1::StatusLine, HeadFailure> {
    let mut scan = h1::HeadScan::default();
    loop {
        if !ubuf.is_empty() && scan.worth_parsing(ubuf) {
            match h1::parse_response(ubuf, fields) {
                Ok(Some(line)) if line.status == 101 && switch_asked => return Ok(line),
                Ok(Some(line)) if line.status == 101 => {
                    return Err(HeadFailure::Bad(HeadError::Invalid(
                        "protocol switch (101) is not supported",
                    )));
                }
                Ok(Some(line)) if (100..200).contains(&line.status) => {
                    let interim = line.head_len.min(ubuf.len());
                    ubuf.drain(..interim);
                    scan = h1::HeadScan::default();
                    continue;
                }
                Ok(Some(line)) => return Ok(line),
                Ok(None) => {}
                Err(e) => return Err(HeadFailure::Bad(e)),
            }
        }
        read_more(up, ubuf, timer).await.map_err(HeadFailure::Io)?;
    }
}
