//! The data path: one task per client connection, reading requests,
//! relaying each to a leased instance and its answer back, on the worker
//! thread that owns the connection.
//!
//! It is written for the proxy's one job rather than on a general HTTP
//! library: heads are parsed in place and rewritten straight into an output
//! buffer (`h1.rs`), `content-length` bodies pass through untouched, a
//! chunked body is decoded strictly and re-framed (`chunked.rs`), a head and
//! the body bytes that came with it leave in one write, and the upstream
//! connection is driven by the same task as the client's. That is what
//! makes it cheaper per call than nginx (`docs/BENCHMARKS.md`).
//!
//! Failure rules: a connection to an instance that cannot be opened takes
//! the instance out of the pool and the call is tried once more on another
//! lease; a pooled connection that gives nothing back is replaced by a fresh
//! one once, for an idempotent request whose body is whole in memory only;
//! anything that goes wrong before the answer's head was sent is answered
//! with a JSON error; after that, the client connection is cut. An upstream
//! connection goes back to the pool only after a complete, clean exchange.
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::string_slice))]

use std::cell::Cell;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Sleep;
use tracing::debug;

use crate::chunked::{self, ChunkError, Decoder, Piece};
use crate::h1::{self, Answering, Field, Forwarding, Framing, HeadError, OwnAnswer, RequestLine};
use crate::metrics::{self, Rejection, UpstreamError};
use crate::path::{self, PathError};
use crate::request_id;
use crate::service::{Call, Proxy, Reply, pool_reply, server_timing};
use crate::upstream::{self, give_buf, take_buf};

/// How long a client may take to send a request head, and how long an idle
/// keep-alive client connection is kept (between half of it and all of it:
/// see `Conn::idle`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait to hand an answer the proxy wrote itself to a client.
const OWN_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Free space ensured in a buffer before each read.
const READ_RESERVE: usize = 8 * 1024;

/// What the connections of one worker thread share.
#[derive(Default)]
pub struct Worker {
    /// Set when the worker stops: connections finish the exchange in
    /// progress and close.
    pub stopping: Cell<bool>,
    /// Wakes the connections that wait for a request.
    pub stop: Notify,
}

impl Worker {
    pub fn begin_stop(&self) {
        self.stopping.set(true);
        self.stop.notify_waiters();
    }
}

/// How an I/O step ended badly.
#[derive(Debug)]
enum Fail {
    Io(io::Error),
    /// The peer closed the connection.
    Eof,
    Timeout,
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Io(e) => write!(f, "{e}"),
            Fail::Eof => f.write_str("connection closed"),
            Fail::Timeout => f.write_str("timed out"),
        }
    }
}

/// Runs `io` until `timer` fires.
async fn timed<T>(
    timer: &mut Pin<Box<Sleep>>,
    io: impl Future<Output = io::Result<T>>,
) -> Result<T, Fail> {
    tokio::select! {
        biased;
        r = io => r.map_err(Fail::Io),
        () = timer.as_mut() => Err(Fail::Timeout),
    }
}

/// Reads at least one more byte into `buf` (taking a buffer, once there is
/// something to read, if it has none) before `timer` fires.
async fn read_more(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    timer: &mut Pin<Box<Sleep>>,
) -> Result<usize, Fail> {
    if buf.capacity() == 0 {
        // An idle connection waits without a buffer: a fresh one costs a
        // resident page even unused.
        timed(timer, tcp.readable()).await?;
        *buf = take_buf();
    }
    if buf.capacity() - buf.len() < READ_RESERVE {
        buf.reserve(READ_RESERVE);
    }
    match timed(timer, tcp.read_buf(buf)).await? {
        0 => Err(Fail::Eof),
        n => Ok(n),
    }
}

/// One client connection.
struct Conn {
    tcp: TcpStream,
    peer: SocketAddr,
    client_ip: String,
    /// Bytes read from the client and not yet used.
    buf: Vec<u8>,
    fields: Vec<Field>,
    /// Fields of the instance's answer head (the allocation is reused).
    ufields: Vec<Field>,
    /// The `server-timing` value being written (the allocation is reused).
    timing: Vec<u8>,
    /// Bytes at the start of `buf` that belong to the request being
    /// answered (its head, when the proxy answers without forwarding).
    consumed: usize,
    /// The deadline of the step in progress (the call's, or a write's).
    timer: Pin<Box<Sleep>>,
    /// The idle deadline for the next request head; moved forward only
    /// when less than half of `HEADER_READ_TIMEOUT` is left, so that most
    /// requests do not touch the timer wheel for it.
    idle: Pin<Box<Sleep>>,
}

/// The next request on a connection.
enum Next {
    Request(RequestLine),
    /// The client closed, went quiet, or the worker is stopping.
    Closed,
    Bad(u16, String),
}

/// Serves one client connection until it closes.
pub async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    proxy: Rc<Proxy>,
    worker: Rc<Worker>,
) {
    let _ = tcp.set_nodelay(true);
    let mut conn = Conn {
        tcp,
        peer,
        client_ip: peer.ip().to_string(),
        buf: Vec::new(),
        fields: Vec::new(),
        ufields: Vec::new(),
        timing: Vec::new(),
        consumed: 0,
        timer: Box::pin(tokio::time::sleep(HEADER_READ_TIMEOUT)),
        idle: Box::pin(tokio::time::sleep(HEADER_READ_TIMEOUT)),
    };
    loop {
        match conn.next_request(&worker).await {
            Next::Request(line) => {
                conn.consumed = line.head_len;
                // Boxed: the exchange's state (about 2 KiB) exists only
                // while a request is in progress, not in every idle
                // connection's task.
                if !Box::pin(conn.exchange(&proxy, &worker, line)).await {
                    break;
                }
                let used = std::mem::take(&mut conn.consumed).min(conn.buf.len());
                conn.buf.drain(..used);
            }
            Next::Closed => break,
            Next::Bad(status, message) => {
                metrics::record_rejection(Rejection::BadRequest);
                let reply = Reply::new(status, message);
                let id = request_id::generate();
                conn.own_answer(&reply, id.as_bytes(), true, false).await;
                break;
            }
        }
    }
    give_buf(std::mem::take(&mut conn.buf));
}

impl Conn {
    async fn next_request(&mut self, worker: &Worker) -> Next {
        let now = tokio::time::Instant::now();
        if self.idle.deadline() < now + HEADER_READ_TIMEOUT / 2 {
            self.idle.as_mut().reset(now + HEADER_READ_TIMEOUT);
        }
        loop {
            if !self.buf.is_empty() {
                match h1::parse_request(&self.buf, &mut self.fields) {
                    Ok(Some(line)) => return Next::Request(line),
                    Ok(None) => {}
                    Err(HeadError::TooLarge) => {
                        return Next::Bad(
                            431,
                            format!(
                                "request head over {} KiB or {} fields",
                                h1::MAX_HEAD / 1024,
                                h1::MAX_HEADERS
                            ),
                        );
                    }
                    Err(e) => {
                        return Next::Bad(e.status(), format!("bad request: {e}"));
                    }
                }
            }
            let idle = self.buf.is_empty();
            if idle {
                // An idle connection holds no buffer.
                give_buf(std::mem::take(&mut self.buf));
                if worker.stopping.get() {
                    return Next::Closed;
                }
            }
            let stopped = worker.stop.notified();
            tokio::select! {
                biased;
                r = read_more(&mut self.tcp, &mut self.buf, &mut self.idle) => {
                    if let Err(e) = r {
                        if !idle {
                            debug!(peer = %self.peer, error = %e, "client left mid-request");
                        }
                        return Next::Closed;
                    }
                }
                () = stopped, if idle => return Next::Closed,
            }
        }
    }

    /// Writes an answer of the proxy's own. Returns whether it was
    /// delivered.
    async fn own_answer(
        &mut self,
        reply: &Reply,
        request_id: &[u8],
        close: bool,
        head_only: bool,
    ) -> bool {
        let body = crate::service::json_body(&reply.message);
        self.write_local(&OwnAnswer {
            status: reply.status,
            content_type: "application/json",
            body: &body,
            request_id,
            retry_after: reply.retry_after,
            close,
            head_only,
        })
        .await
    }

    /// Writes a complete answer of the proxy's own. Returns whether it was
    /// delivered.
    async fn write_local(&mut self, answer: &OwnAnswer<'_>) -> bool {
        let mut out = take_buf();
        h1::write_own_answer(&mut out, answer);
        self.timer
            .as_mut()
            .reset(tokio::time::Instant::now() + OWN_ANSWER_TIMEOUT);
        let sent = timed(&mut self.timer, self.tcp.write_all(&out))
            .await
            .is_ok();
        give_buf(out);
        sent
    }

    /// Answers a call of a routed function with `reply`; the call is
    /// recorded when it is dropped here.
    async fn answer_call(
        &mut self,
        mut call: Call,
        reply: &Reply,
        close: bool,
        head_only: bool,
    ) -> bool {
        call.status = reply.status;
        call.rejection = reply.rejection;
        let id = std::mem::take(&mut call.request_id);
        drop(call);
        self.own_answer(reply, id.as_bytes(), close, head_only)
            .await
            && !close
    }

    /// One request and its answer. Returns whether the connection stays
    /// open for another.
    async fn exchange(&mut self, proxy: &Proxy, worker: &Worker, line: RequestLine) -> bool {
        let received_at = Instant::now();
        let sem = match h1::request_semantics(&self.buf, line.minor, &self.fields) {
            Ok(sem) => sem,
            Err(e) => {
                metrics::record_rejection(Rejection::BadRequest);
                let id = request_id::generate();
                self.own_answer(
                    &Reply::new(e.status(), format!("bad request: {e}")),
                    id.as_bytes(),
                    true,
                    false,
                )
                .await;
                return false;
            }
        };
        let target = match h1::request_target(self.buf.get(line.target.clone()).unwrap_or_default())
        {
            Ok(target) => target,
            Err(e) => {
                metrics::record_rejection(Rejection::BadRequest);
                let id = request_id::generate();
                self.own_answer(
                    &Reply::new(400, format!("bad request: {e}")),
                    id.as_bytes(),
                    true,
                    false,
                )
                .await;
                return false;
            }
        };
        let incoming_id = self
            .fields
            .iter()
            .find(|f| f.kind == h1::Name::XRequestId)
            .map(|f| self.buf.get(f.value.clone()).unwrap_or_default());
        let request_id = request_id::pick(incoming_id);
        let method = self.buf.get(line.method.clone()).unwrap_or_default();
        let head_only = method == b"HEAD";
        let is_get = method == b"GET" || head_only;
        let is_connect = method == b"CONNECT";
        // RFC 9110 §9.2.2; only these may be sent again (RFC 9112 §9.3.1).
        let idempotent = matches!(
            method,
            b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
        );
        let has_body = !matches!(sem.framing, Framing::Empty | Framing::Length(0));
        // A body left unread would be taken for the next request.
        let close_after_own = has_body || !sem.keep_alive || worker.stopping.get();

        // Not UTF-8: no function's path.
        let target = std::str::from_utf8(target.origin).unwrap_or("");
        let (path_part, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let invocation = match path::parse(path_part, query) {
            Ok(invocation) => invocation,
            Err(PathError::NotInvocation) => {
                let page = match path_part {
                    "/healthz" if is_get => {
                        let snap = proxy.routes().snapshot();
                        let body = serde_json::json!({"revision": snap.revision, "routes": snap.routes.len()});
                        Some(("application/json", body.to_string().into_bytes()))
                    }
                    "/metrics" if is_get => Some((metrics::CONTENT_TYPE, metrics::render())),
                    _ => None,
                };
                if let Some((content_type, body)) = page {
                    let answer = OwnAnswer {
                        status: 200,
                        content_type,
                        body: &body,
                        request_id: request_id.as_bytes(),
                        retry_after: None,
                        close: close_after_own,
                        head_only,
                    };
                    return self.write_local(&answer).await && !close_after_own;
                }
                metrics::record_rejection(Rejection::NotFound);
                let reply = Reply::rejected(
                    Rejection::NotFound,
                    404,
                    "not found: functions are called at /fn/{name}/",
                );
                return self
                    .own_answer(&reply, request_id.as_bytes(), close_after_own, head_only)
                    .await
                    && !close_after_own;
            }
            Err(PathError::BadName(raw)) => {
                let shown: String = raw.chars().take(80).collect();
                metrics::record_rejection(Rejection::UnknownFunction);
                let reply = Reply::rejected(
                    Rejection::UnknownFunction,
                    404,
                    format!("no function named \"{shown}\""),
                );
                return self
                    .own_answer(&reply, request_id.as_bytes(), close_after_own, head_only)
                    .await
                    && !close_after_own;
            }
        };
        let Some(entry) = proxy.routes().get(&invocation.name) else {
            metrics::record_rejection(Rejection::UnknownFunction);
            let reply = Reply::rejected(
                Rejection::UnknownFunction,
                404,
                format!("no function named \"{}\"", invocation.name),
            );
            return self
                .own_answer(&reply, request_id.as_bytes(), close_after_own, head_only)
                .await
                && !close_after_own;
        };
        let mut call = Call::new(received_at, entry.clone(), request_id);
        if is_connect {
            let reply = Reply::new(405, "CONNECT is not supported");
            return self.answer_call(call, &reply, close_after_own, false).await;
        }
        let limit = entry.route.config.resources.max_body_bytes;
        if let Framing::Length(n) = sem.framing
            && n > limit
        {
            let message = format!("request body of {n} bytes is over the limit of {limit} bytes");
            let reply = Reply::rejected(Rejection::BodyTooLarge, 413, message);
            return self.answer_call(call, &reply, true, head_only).await;
        }

        // The warm path needs no future; the slow one (queue, start) is
        // boxed so that every connection's task stays small.
        // The entry's pool handle: no lookup and no lock shared with other
        // functions on the way to a slot.
        let handle = entry.pool_handle(proxy.pool());
        let leased = match handle.try_lease() {
            Some(lease) => Ok(lease),
            None => Box::pin(handle.lease()).await,
        };
        match leased {
            Ok(lease) => call.lease = Some(lease),
            Err(e) => {
                debug!(function = %call.function(), error = %e, "no instance for call");
                let reply = pool_reply(call.function(), &e);
                return self
                    .answer_call(call, &reply, close_after_own, head_only)
                    .await;
            }
        }

        // The request head for the instance, with the body bytes that came
        // with it.
        let mut out = take_buf();
        h1::write_request_head(
            &mut out,
            &self.buf,
            &line,
            &self.fields,
            sem.framing,
            &Forwarding {
                path: &invocation.upstream,
                request_id: call.request_id.as_bytes(),
                client_ip: self.client_ip.as_bytes(),
                upgrade: sem.upgrade,
            },
        );
        let here = self.buf.get(line.head_len..).unwrap_or_default();
        let mut body = RequestBody::new(sem.framing, limit);
        let taken = match body.relay(here, &mut out) {
            Ok(n) => n,
            Err(e) => {
                give_buf(out);
                return self
                    .answer_call(call, &e.reply(limit), true, head_only)
                    .await;
            }
        };
        let used = line.head_len.saturating_add(taken).min(self.buf.len());
        self.buf.drain(..used);
        self.consumed = 0;
        if sem.expect_continue && !body.done() {
            let _ = timed(
                &mut self.timer,
                self.tcp.write_all(b"HTTP/1.1 100 Continue\r\n\r\n"),
            )
            .await;
        }
        // An idempotent request whose body is all in `out` can be sent
        // again.
        let replayable = idempotent && body.done();

        let timeout = call.timeout();
        let upstream_started = Instant::now();
        let deadline = tokio::time::Instant::from_std(upstream_started + timeout);
        self.timer.as_mut().reset(deadline);
        let mut ubuf = take_buf();
        let mut ufields = std::mem::take(&mut self.ufields);
        let mut connect_retried = false;
        let mut replayed = false;
        let mut force_fresh = false;

        let (mut up, status_line) = loop {
            let lease = call.lease.as_ref().expect("a forwarded call has a lease");
            let addr = lease.addr();
            let pooled = if force_fresh {
                None
            } else {
                upstream::take(lease.instance_id(), upstream_started)
            };
            let reused = pooled.is_some();
            let mut up = match pooled {
                Some(up) => up,
                None => match Box::pin(upstream::connect(addr)).await {
                    Ok(up) => up,
                    Err(e) => {
                        // Nothing was sent: the instance is unreachable.
                        call.count_upstream_error(UpstreamError::Connect);
                        if let Some(lease) = call.lease.take() {
                            debug!(function = %call.function(), instance = %lease.instance_id(), error = %e, "instance unreachable");
                            lease.mark_failed();
                        }
                        if connect_retried {
                            return self
                                .fail_call(
                                    call,
                                    out,
                                    ubuf,
                                    502,
                                    "function connection failed".into(),
                                    head_only,
                                )
                                .await;
                        }
                        connect_retried = true;
                        match Box::pin(call.entry.pool_handle(proxy.pool()).lease()).await {
                            Ok(lease) => call.lease = Some(lease),
                            Err(e) => {
                                give_buf(out);
                                give_buf(ubuf);
                                let reply = pool_reply(call.function(), &e);
                                return self.answer_call(call, &reply, true, head_only).await;
                            }
                        }
                        continue;
                    }
                },
            };
            let sent = timed(&mut self.timer, up.write_all(&out)).await;
            // The head went out: a body write that fails now is the
            // instance answering early and closing (a 413 of its own, a 401
            // before reading), not a sign that it is broken.
            let mut head_delivered = false;
            let sent = match sent {
                Ok(()) if !body.done() => {
                    head_delivered = true;
                    self.stream_body(&mut body, &mut up).await
                }
                Ok(()) => Ok(()),
                Err(e) => Err(StreamError::Upstream(e)),
            };
            let failure = match sent {
                Ok(()) => {
                    match read_head(
                        &mut up,
                        &mut ubuf,
                        &mut ufields,
                        &mut self.timer,
                        sem.upgrade,
                    )
                    .await
                    {
                        Ok(line) => break (up, line),
                        Err(f) => f,
                    }
                }
                Err(StreamError::Upstream(f)) => HeadFailure::Io(f),
                Err(StreamError::Client(f)) => {
                    debug!(peer = %self.peer, error = %f, "client left while sending its body");
                    give_buf(out);
                    give_buf(ubuf);
                    return false;
                }
                Err(StreamError::Body(e)) => {
                    give_buf(out);
                    give_buf(ubuf);
                    return self
                        .answer_call(call, &e.reply(limit), true, head_only)
                        .await;
                }
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
            return match failure {
                HeadFailure::Io(Fail::Timeout) => {
                    call.count_upstream_error(UpstreamError::Timeout);
                    let message =
                        format!("function did not answer within {} ms", timeout.as_millis());
                    self.fail_call(call, out, ubuf, 504, message, head_only)
                        .await
                }
                HeadFailure::Io(f) => {
                    call.count_upstream_error(UpstreamError::Reset);
                    if !reused
                        && !head_delivered
                        && let Some(lease) = &call.lease
                    {
                        // A fresh connection that broke before the request's
                        // head was taken: the instance is broken, keep it
                        // from further calls. (One that dies later is taken
                        // out by Podman's death event.)
                        debug!(function = %call.function(), instance = %lease.instance_id(), error = %f, "instance failed mid-call");
                        lease.mark_failed();
                    }
                    self.fail_call(
                        call,
                        out,
                        ubuf,
                        502,
                        "function connection failed".into(),
                        head_only,
                    )
                    .await
                }
                HeadFailure::Bad(e) => {
                    debug!(function = %call.function(), error = %e, "function sent a bad answer head");
                    self.fail_call(
                        call,
                        out,
                        ubuf,
                        502,
                        format!("function sent an invalid answer: {e}"),
                        head_only,
                    )
                    .await
                }
            };
        };

        // The answer.
        let upstream_time = upstream_started.elapsed();
        let rsem = match h1::response_semantics(&ubuf, &status_line, &ufields, head_only) {
            Ok(rsem) => rsem,
            Err(e) => {
                return self
                    .fail_call(
                        call,
                        out,
                        ubuf,
                        502,
                        format!("function sent an invalid answer: {e}"),
                        head_only,
                    )
                    .await;
            }
        };
        if line.minor == 0
            && rsem.framing != Framing::Empty
            && h1::has_codings_besides_chunked(&ubuf, &ufields)
        {
            return self
                .fail_call(
                    call,
                    out,
                    ubuf,
                    502,
                    "function answered with a transfer coding an HTTP/1.0 client cannot take"
                        .into(),
                    head_only,
                )
                .await;
        }
        call.status = status_line.status;
        let upgraded = status_line.status == 101;
        let dechunk = line.minor == 0 && rsem.framing == Framing::Chunked;
        let keep_client =
            sem.keep_alive && rsem.framing != Framing::Close && !dechunk && !worker.stopping.get();
        let lease = call.lease.as_ref().expect("a forwarded call has a lease");
        let mut timing = std::mem::take(&mut self.timing);
        timing.clear();
        server_timing(
            &mut timing,
            lease.queue_duration(),
            lease.start_kind().as_str(),
            lease.start_duration(),
            upstream_time,
        );
        out.clear();
        h1::write_response_head(
            &mut out,
            &ubuf,
            &status_line,
            &ufields,
            &Answering {
                request_id: call.request_id.as_bytes(),
                server_timing: &timing,
                close: !keep_client && !upgraded,
                keep_alive_1_0: keep_client && line.minor == 0 && !upgraded,
                http_1_0: line.minor == 0,
                upgraded,
            },
        );
        self.timing = timing;
        if upgraded {
            return self.tunnel(call, up, out, ubuf, status_line.head_len).await;
        }
        let mut answer = AnswerBody::new(rsem.framing, dechunk);
        let here = ubuf.get(status_line.head_len..).unwrap_or_default();
        let mut complete = match answer.relay_into(here, &mut out) {
            Ok(done) => done,
            Err(e) => {
                // Nothing was sent yet: a 502, and the connection that
                // carried the bad answer is closed.
                call.count_upstream_error(UpstreamError::Reset);
                debug!(function = %call.function(), error = %e, "function sent a bad chunked answer");
                drop(up);
                self.ufields = ufields;
                return self
                    .fail_call(
                        call,
                        out,
                        ubuf,
                        502,
                        format!("function sent an invalid answer: {e}"),
                        head_only,
                    )
                    .await;
            }
        };
        let mut clean = answer.leftover == 0;
        let mut client_ok = timed(&mut self.timer, self.tcp.write_all(&out))
            .await
            .is_ok();
        // The rest of the body, as it comes.
        while !complete && client_ok {
            ubuf.clear();
            match read_more(&mut up, &mut ubuf, &mut self.timer).await {
                Ok(_) => {}
                Err(Fail::Eof) if rsem.framing == Framing::Close => {
                    complete = true;
                    break;
                }
                Err(f) => {
                    call.count_upstream_error(if matches!(f, Fail::Timeout) {
                        UpstreamError::Timeout
                    } else {
                        UpstreamError::Reset
                    });
                    debug!(function = %call.function(), error = %f, "answer body cut off");
                    clean = false;
                    break;
                }
            }
            out.clear();
            match answer.relay_into(&ubuf, &mut out) {
                Ok(done) => complete = done,
                Err(e) => {
                    // The head went out: the client connection is cut.
                    call.count_upstream_error(UpstreamError::Reset);
                    debug!(function = %call.function(), error = %e, "function sent a bad chunked answer");
                    clean = false;
                    break;
                }
            }
            clean &= answer.leftover == 0;
            client_ok = timed(&mut self.timer, self.tcp.write_all(&out))
                .await
                .is_ok();
        }
        give_buf(ubuf);
        give_buf(out);
        self.ufields = ufields;
        if complete && clean && rsem.keep_alive {
            if let Some(instance) = call.instance_id() {
                upstream::put(instance, up);
            }
        } else {
            drop(up);
        }
        drop(call);
        // Stray bytes from the instance cost its connection, not the
        // client's (which got a whole answer); every failure left the
        // answer incomplete.
        complete && client_ok && keep_client
    }

    /// After a `101`: sends its head (in `out`) and the bytes the instance
    /// sent after it to the client, and the bytes the client sent after its
    /// request to the instance, then relays both ways until either side
    /// closes. The call, and its lease, last as long as the tunnel; the
    /// function's timeout does not apply to it.
    async fn tunnel(
        &mut self,
        call: Call,
        mut up: TcpStream,
        mut out: Vec<u8>,
        ubuf: Vec<u8>,
        head_len: usize,
    ) -> bool {
        out.extend_from_slice(ubuf.get(head_len..).unwrap_or_default());
        give_buf(ubuf);
        let mut sent = timed(&mut self.timer, self.tcp.write_all(&out))
            .await
            .is_ok();
        give_buf(out);
        if sent && !self.buf.is_empty() {
            // Read together with the request: they belong to the tunnel.
            sent = timed(&mut self.timer, up.write_all(&self.buf))
                .await
                .is_ok();
            self.buf.clear();
        }
        if sent {
            debug!(function = %call.function(), request_id = %call.request_id, "protocol switched, relaying");
            if let Err(e) = tokio::io::copy_bidirectional(&mut self.tcp, &mut up).await {
                debug!(function = %call.function(), error = %e, "relay ended");
            }
        }
        drop(call);
        false
    }

    /// Answers a forwarded call that failed before the answer's head was
    /// sent.
    async fn fail_call(
        &mut self,
        call: Call,
        out: Vec<u8>,
        ubuf: Vec<u8>,
        status: u16,
        message: String,
        head_only: bool,
    ) -> bool {
        give_buf(out);
        give_buf(ubuf);
        let reply = Reply::new(status, message);
        self.answer_call(call, &reply, true, head_only).await
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
                let taken = body
                    .relay_parts(&self.buf, &mut frames, &mut parts)
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

/// Writes all of `slices` (advancing them) before `timer` fires.
async fn write_all_vectored(
    up: &mut TcpStream,
    timer: &mut Pin<Box<Sleep>>,
    slices: &mut [IoSlice<'_>],
) -> Result<(), Fail> {
    let mut bufs = slices;
    while !bufs.is_empty() {
        let n = timed(timer, up.write_vectored(bufs)).await?;
        if n == 0 {
            return Err(Fail::Io(io::ErrorKind::WriteZero.into()));
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// Part of a re-framed chunked body on its way out: a frame line (in the
/// proxy's own buffer) or data (in the read buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Frame(Range<usize>),
    Data(Range<usize>),
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

/// Reads the instance's answer head into `ubuf`, skipping interim (1xx)
/// answers; a `101` is an answer when the client asked to switch
/// protocols, and an error otherwise.
async fn read_head(
    up: &mut TcpStream,
    ubuf: &mut Vec<u8>,
    fields: &mut Vec<Field>,
    timer: &mut Pin<Box<Sleep>>,
    switch_asked: bool,
) -> Result<h1::StatusLine, HeadFailure> {
    loop {
        if !ubuf.is_empty() {
            match h1::parse_response(ubuf, fields) {
                Ok(Some(line)) if line.status == 101 && switch_asked => return Ok(line),
                Ok(Some(line)) if line.status == 101 => {
                    return Err(HeadFailure::Bad(HeadError::Invalid(
                        "protocol switch (101) is not supported",
                    )));
                }
                Ok(Some(line)) if (100..200).contains(&line.status) => {
                    ubuf.drain(..line.head_len.min(ubuf.len()));
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

/// Why a request body cannot be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyError {
    Malformed(ChunkError),
    TooLarge,
}

impl BodyError {
    /// The answer to a request whose body failed so, under `limit`.
    fn reply(self, limit: u64) -> Reply {
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
struct RequestBody {
    progress: Progress,
}

impl RequestBody {
    fn new(framing: Framing, limit: u64) -> Self {
        Self {
            progress: Progress::new(framing, limit),
        }
    }

    fn done(&self) -> bool {
        self.progress.done()
    }

    fn is_chunked(&self) -> bool {
        self.progress.framing == Framing::Chunked
    }

    /// How many bytes at the start of `input` belong to a body that is not
    /// chunked.
    fn take(&mut self, input: &[u8]) -> Result<usize, BodyError> {
        Ok(self.progress.take(input))
    }

    /// Decodes a chunked body's part of `input` into what goes out: frame
    /// lines appended to `frames`, data as ranges of `input` (not copied),
    /// in order in `parts`. Returns how many bytes of `input` it took.
    fn relay_parts(
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
    fn relay(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, BodyError> {
        self.progress.relay(input, out, false).map_err(body_error)
    }
}

fn body_error(e: ChunkError) -> BodyError {
    match e {
        ChunkError::OverBudget(_) => BodyError::TooLarge,
        e => BodyError::Malformed(e),
    }
}

/// Where an answer body stands.
struct AnswerBody {
    progress: Progress,
    /// Send a chunked body's data only (to an HTTP/1.0 client).
    dechunk: bool,
    /// Bytes the instance sent past the end of the answer (then its
    /// connection is not reused).
    leftover: usize,
}

impl AnswerBody {
    fn new(framing: Framing, dechunk: bool) -> Self {
        Self {
            progress: Progress::new(framing, u64::MAX),
            dechunk: dechunk && framing == Framing::Chunked,
            leftover: 0,
        }
    }

    /// Appends the part of `input` that belongs to the body to `out`
    /// (re-framed, or decoded when de-chunking); returns whether the body
    /// is complete.
    fn relay_into(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<bool, ChunkError> {
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
