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
//! This file holds the connection: reading request heads, the proxy's own
//! answers, the I/O steps under a deadline, and `Conn::exchange`, which
//! runs one request through the three stages, each in its own module:
//! - `admission`: semantics, target, route lookup, limits, the lease;
//! - `forward`: the request to the instance (connect, retry, replay rules)
//!   and the answer's head back;
//! - `relay`: the answer to the client, the upstream connection back to
//!   the pool, protocol switches.
//!
//! `body` tracks message bodies by their framing. Buffers are `Buf`s from
//! the worker's free list (`upstream.rs`), which go back when dropped.
//! Anything that goes wrong before the answer's head was sent is answered
//! with a JSON error; after that, the client connection is cut.
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::string_slice))]

use std::cell::Cell;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Sleep;
use tracing::debug;

use crate::h1::{self, Field, HeadError, OwnAnswer, RequestLine};
use crate::metrics::{self, Rejection};
use crate::request_id;
use crate::service::{Call, Proxy, Reply};
use crate::upstream::Buf;

mod access;
mod admission;
mod body;
mod forward;
mod relay;
mod signing;

use admission::Admission;
use forward::NoAnswer;

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
    buf: &mut Buf,
    timer: &mut Pin<Box<Sleep>>,
) -> Result<usize, Fail> {
    if buf.capacity() == 0 {
        // An idle connection waits without a buffer: a fresh one costs a
        // resident page even unused.
        timed(timer, tcp.readable()).await?;
        *buf = Buf::take();
    }
    if buf.capacity() - buf.len() < READ_RESERVE {
        buf.reserve(READ_RESERVE);
    }
    match timed(timer, tcp.read_buf(&mut **buf)).await? {
        0 => Err(Fail::Eof),
        n => Ok(n),
    }
}

/// One client connection.
struct Conn {
    tcp: TcpStream,
    peer: SocketAddr,
    client_ip: String,
    /// Bytes read from the client and not yet used (no buffer while idle).
    buf: Buf,
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
    let mut conn = Conn::new(tcp, peer);
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
}

impl Conn {
    /// A new client connection: no buffer until its first bytes, both
    /// timers at the head's read limit.
    fn new(tcp: TcpStream, peer: SocketAddr) -> Self {
        Self {
            tcp,
            peer,
            client_ip: peer.ip().to_string(),
            buf: Buf::none(),
            fields: Vec::new(),
            ufields: Vec::new(),
            timing: Vec::new(),
            consumed: 0,
            timer: Box::pin(tokio::time::sleep(HEADER_READ_TIMEOUT)),
            idle: Box::pin(tokio::time::sleep(HEADER_READ_TIMEOUT)),
        }
    }

    async fn next_request(&mut self, worker: &Worker) -> Next {
        let now = tokio::time::Instant::now();
        if self.idle.deadline() < now + HEADER_READ_TIMEOUT / 2 {
            self.idle.as_mut().reset(now + HEADER_READ_TIMEOUT);
        }
        let mut scan = h1::HeadScan::default();
        loop {
            if !self.buf.is_empty() && scan.worth_parsing(&self.buf) {
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
                self.buf.release();
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
        let mut out = Buf::take();
        h1::write_own_answer(&mut out, answer);
        self.timer
            .as_mut()
            .reset(tokio::time::Instant::now() + OWN_ANSWER_TIMEOUT);
        timed(&mut self.timer, self.tcp.write_all(&out))
            .await
            .is_ok()
    }

    /// Writes the `100 Continue` a client asked for before sending its
    /// body, under a deadline of its own: on a kept-alive connection the
    /// timer still holds the previous call's, long past. Returns whether
    /// it was delivered; if not, part of it may have gone, and the
    /// connection is to be closed.
    async fn send_continue(&mut self) -> bool {
        self.timer
            .as_mut()
            .reset(tokio::time::Instant::now() + OWN_ANSWER_TIMEOUT);
        timed(
            &mut self.timer,
            self.tcp.write_all(b"HTTP/1.1 100 Continue\r\n\r\n"),
        )
        .await
        .is_ok()
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
        let id = call.request_id.clone(); // the record keeps the call's
        drop(call);
        self.own_answer(reply, id.as_bytes(), close, head_only)
            .await
            && !close
    }

    /// One request and its answer: admitted (or answered by the proxy),
    /// forwarded, and the answer relayed. Returns whether the connection
    /// stays open for another.
    async fn exchange(&mut self, proxy: &Proxy, worker: &Worker, line: RequestLine) -> bool {
        let mut req = match self.admit(proxy, worker, &line).await {
            Admission::Forward(req) => req,
            Admission::Answered(keep) => return keep,
        };
        // The answer head's fields (the allocation is kept for the next).
        let mut ufields = std::mem::take(&mut self.ufields);
        let keep = match self.forward(proxy, &mut req, &line, &mut ufields).await {
            Ok(answer) => self.relay(req, answer, &line, worker, &ufields).await,
            Err(NoAnswer::Reply(reply)) => {
                self.answer_call(req.call, &reply, true, req.head_only)
                    .await
            }
            Err(NoAnswer::ClientGone) => false,
        };
        self.ufields = ufields;
        keep
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Security review of the proxy: the `100 Continue` does not inherit
    /// the previous call's deadline, long past on a kept-alive connection;
    /// a client slow to read still gets it whole. (Old code wrote it under
    /// that deadline: a write that had to wait failed at once, maybe
    /// halfway, and the call went on.)
    #[tokio::test]
    async fn a_100_continue_gets_a_deadline_of_its_own() {
        let listener = tokio::net::TcpSocket::new_v4().unwrap();
        listener.set_send_buffer_size(4096).unwrap();
        listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = listener.listen(1).unwrap();
        let client = tokio::net::TcpSocket::new_v4().unwrap();
        client.set_recv_buffer_size(4096).unwrap();
        let (client, accepted) = tokio::join!(
            client.connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        let (mut client, (tcp, peer)) = (client.unwrap(), accepted.unwrap());
        // The client has not read the previous answer yet: the proxy's
        // side is full.
        let mut unread = 0;
        loop {
            match tcp.try_write(&[b'x'; 4096]) {
                Ok(n) => unread += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let mut conn = Conn::new(tcp, peer);
        // The previous call's deadline, past.
        conn.timer = Box::pin(tokio::time::sleep(Duration::ZERO));
        assert!(conn.timer.deadline() <= tokio::time::Instant::now());
        let continued = b"HTTP/1.1 100 Continue\r\n\r\n";
        let reader = tokio::spawn(async move {
            // A slow reader.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut got = vec![0; unread + continued.len()];
            client.read_exact(&mut got).await.map(|_| got)
        });
        assert!(conn.send_continue().await, "the 100 Continue was written");
        let got = reader.await.unwrap().unwrap();
        assert!(
            got.ends_with(continued),
            "{:?}",
            String::from_utf8_lossy(&got[unread..])
        );
    }
}
