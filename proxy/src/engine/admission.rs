//! Admission: what a request is and whether it goes to an instance. The
//! head's semantics and target are checked, the proxy's own page
//! (`/healthz`; `/metrics` is on the admin listener, `crate::admin`) and refusals are answered here, the function is
//! looked up in the route table, a private function's key is checked
//! (`crate::access`), its limits are applied (`CONNECT`, a
//! `content-length` over `max_body_bytes`), the body is read (whole up to
//! `BODY_AHEAD`, 1 MiB, or that much of it: a slow sender holds no
//! instance) and an instance is leased — in `lease`, the one place the
//! data path asks the pool for an instance.
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::string_slice))]

use std::time::{Duration, Instant};

use containerpub_pool::{Lease, PoolError};
use tracing::debug;

use super::body::RequestBody;
use super::{Conn, Fail, Worker, read_more};
use crate::h1::{self, Framing, OwnAnswer, RequestLine, Semantics};
use crate::metrics::{self, Rejection};
use crate::path::{self, PathError};
use crate::request_id;
use crate::routes::Entry;
use crate::service::{Call, Proxy, Reply, pool_reply};

/// Where admission leaves a request.
// Returned once per request and taken apart at once: boxing the large
// variant would cost an allocation per call.
#[allow(clippy::large_enum_variant)]
pub(super) enum Admission {
    /// To be forwarded to the leased instance.
    Forward(Admitted),
    /// The proxy answered it; whether the client connection stays open.
    Answered(bool),
}

/// A request admitted to a function, with its lease.
pub(super) struct Admitted {
    /// The call record; it holds the lease.
    pub call: Call,
    pub sem: Semantics,
    /// The path and query the instance gets.
    pub path: String,
    pub head_only: bool,
    /// RFC 9110 §9.2.2; only these may be sent again (RFC 9112 §9.3.1).
    pub idempotent: bool,
}

/// Leases an instance for a call of `entry`'s function: the one place the
/// data path asks the pool. The warm path needs no future; the slow one
/// (queue, start) is boxed so that every connection's task stays small.
/// Through the entry's pool handle: no lookup and no lock shared with other
/// functions on the way to a slot.
pub(super) async fn lease(proxy: &Proxy, entry: &Entry) -> Result<Lease, PoolError> {
    let handle = entry.pool_handle(proxy.pool());
    match handle.try_lease() {
        Some(lease) => Ok(lease),
        None => Box::pin(handle.lease()).await,
    }
}

/// Of a request body, what is read before the call is leased an instance:
/// the whole body up to this size, this much of a larger one. A client that
/// sends its body slowly holds no instance meanwhile, only its connection
/// and what it sent; while streamed, a body would hold its instance for up
/// to the function's whole timeout.
pub(super) const BODY_AHEAD: usize = 1 << 20;

/// Most bytes of read buffers the process's connections may hold while
/// they read bodies ahead of their lease (each about 1–2 MiB at most, for
/// the function's timeout); past it, a body streams after the lease, as
/// one over 1 MiB does. Clients that send bodies slowly from many
/// connections then hold instances again, not the node's memory.
const AHEAD_BUDGET: usize = 256 << 20;

/// A connection's share of the bytes held by bodies being read ahead, all
/// connections (`metrics::body_ahead`, exported as it is kept), given back
/// when dropped.
#[derive(Default)]
struct Held(usize);

impl Held {
    /// Bytes held by all connections' reads ahead.
    fn total() -> usize {
        usize::try_from(metrics::body_ahead().get()).unwrap_or(0)
    }

    /// Whether another read ahead may hold more of the budget.
    fn room() -> bool {
        Held::total() < AHEAD_BUDGET
    }

    /// Counts `bytes` held by this connection from now on.
    fn set(&mut self, bytes: usize) {
        let gauge = metrics::body_ahead();
        if bytes > self.0 {
            gauge.add(i64::try_from(bytes - self.0).unwrap_or(i64::MAX));
        } else {
            gauge.sub(i64::try_from(self.0 - bytes).unwrap_or(i64::MAX));
        }
        self.0 = bytes;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// Why a request body could not be read before the lease.
enum Ahead {
    /// Answer with this and close (a malformed chunked body, one over the
    /// limit, one not sent within the function's timeout).
    Reply(Reply),
    /// The client went away: close without an answer.
    Gone,
}

impl Conn {
    /// Admits the request whose head is `line`: answers it when the proxy
    /// does so itself, or leases an instance for it.
    pub(super) async fn admit(
        &mut self,
        proxy: &Proxy,
        worker: &Worker,
        line: &RequestLine,
    ) -> Admission {
        let received_at = Instant::now();
        let mut sem = match h1::request_semantics(&self.buf, line.minor, &self.fields) {
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
                return Admission::Answered(false);
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
                return Admission::Answered(false);
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
                    return Admission::Answered(
                        self.write_local(&answer).await && !close_after_own,
                    );
                }
                metrics::record_rejection(Rejection::NotFound);
                let reply = Reply::rejected(
                    Rejection::NotFound,
                    404,
                    "not found: functions are called at /fn/{name}/",
                );
                return Admission::Answered(
                    self.own_answer(&reply, request_id.as_bytes(), close_after_own, head_only)
                        .await
                        && !close_after_own,
                );
            }
            Err(PathError::BadName(raw)) => {
                let shown: String = raw.chars().take(80).collect();
                metrics::record_rejection(Rejection::UnknownFunction);
                let reply = Reply::rejected(
                    Rejection::UnknownFunction,
                    404,
                    format!("no function named \"{shown}\""),
                );
                return Admission::Answered(
                    self.own_answer(&reply, request_id.as_bytes(), close_after_own, head_only)
                        .await
                        && !close_after_own,
                );
            }
        };
        let Some(entry) = proxy.routes().get(&invocation.name) else {
            metrics::record_rejection(Rejection::UnknownFunction);
            let reply = Reply::rejected(
                Rejection::UnknownFunction,
                404,
                format!("no function named \"{}\"", invocation.name),
            );
            return Admission::Answered(
                self.own_answer(&reply, request_id.as_bytes(), close_after_own, head_only)
                    .await
                    && !close_after_own,
            );
        };
        let incoming_trace = self
            .fields
            .iter()
            .find(|f| f.kind == h1::Name::Traceparent)
            .map(|f| self.buf.get(f.value.clone()).unwrap_or_default());
        let traceparent = crate::trace::pick(incoming_trace, &request_id);
        let mut call = Call::new(received_at, entry.clone(), request_id);
        call.traceparent = traceparent;
        crate::executions::describe(
            &mut call,
            method,
            line,
            sem.framing,
            &self.buf,
            &self.fields,
        );
        // A private function's key or signature: checked before anything
        // else is said (a signed call's body is checked below).
        let signed = match crate::signing::check(&self.buf, line, &mut self.fields, &entry.route) {
            Ok(signed) => signed,
            Err(refusal) => {
                let keep = self.refuse_access(call, refusal, close_after_own, head_only);
                return Admission::Answered(keep.await);
            }
        };
        if is_connect {
            let reply = Reply::new(405, "CONNECT is not supported");
            return Admission::Answered(
                self.answer_call(call, &reply, close_after_own, false).await,
            );
        }
        let limit = entry.route.config.resources.max_body_bytes;
        if let Framing::Length(n) = sem.framing
            && n > limit
        {
            let message = format!("request body of {n} bytes is over the limit of {limit} bytes");
            let reply = Reply::rejected(Rejection::BodyTooLarge, 413, message);
            return Admission::Answered(self.answer_call(call, &reply, true, head_only).await);
        }
        if let Some(signed) = signed {
            let read = self.check_signed_body(line, &sem, &signed, limit, call.timeout());
            match Box::pin(read).await {
                Ok(()) => {}
                Err(verdict) => {
                    return Admission::Answered(self.refuse_signed(call, verdict, head_only).await);
                }
            }
        }

        if has_body
            && let Err(ahead) = self
                .read_body_ahead(line, &mut sem, limit, call.timeout())
                .await
        {
            return Admission::Answered(match ahead {
                Ahead::Reply(reply) => self.answer_call(call, &reply, true, head_only).await,
                Ahead::Gone => {
                    debug!(peer = %self.peer, "client left while sending its body");
                    drop(call);
                    false
                }
            });
        }

        match lease(proxy, &entry).await {
            Ok(mut lease) => {
                lease.note_call(&call.request_id);
                call.lease = Some(lease);
            }
            Err(e) => {
                debug!(function = %call.function(), error = %e, "no instance for call");
                let reply = pool_reply(call.function(), &e);
                return Admission::Answered(
                    self.answer_call(call, &reply, close_after_own, head_only)
                        .await,
                );
            }
        }
        Admission::Forward(Admitted {
            call,
            sem,
            path: invocation.upstream,
            head_only,
            idempotent,
        })
    }

    /// Reads the body of the request whose head is `line` into the read
    /// buffer until it is whole there, or its first `BODY_AHEAD` bytes are,
    /// under the function's `timeout`; a chunked body is checked on the way
    /// (malformed, or over `limit`: refused before any instance). The
    /// `100 Continue` a client asked for is sent before the first read, and
    /// `sem` then no longer asks for it. A body that came with its head
    /// costs no read and no timer. While `AHEAD_BUDGET` is spent, it reads
    /// no further: the rest streams after the lease.
    async fn read_body_ahead(
        &mut self,
        line: &RequestLine,
        sem: &mut Semantics,
        limit: u64,
        timeout: Duration,
    ) -> Result<(), Ahead> {
        let mut probe = RequestBody::new(sem.framing, limit);
        // Body bytes in the buffer the probe has taken.
        let mut scanned = 0usize;
        let mut reading = false;
        let mut held = Held::default();
        loop {
            let rest = self
                .buf
                .get(line.head_len.saturating_add(scanned)..)
                .unwrap_or_default();
            let taken = probe.scan(rest).map_err(|e| Ahead::Reply(e.reply(limit)))?;
            scanned = scanned.saturating_add(taken);
            if probe.done() || scanned >= BODY_AHEAD {
                return Ok(());
            }
            if !Held::room() {
                metrics::record_body_ahead_budget_spent();
                return Ok(());
            }
            if !reading {
                reading = true;
                if sem.expect_continue {
                    if !self.send_continue().await {
                        return Err(Ahead::Gone);
                    }
                    sem.expect_continue = false;
                }
                self.timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + timeout);
            }
            let read = read_more(&mut self.tcp, &mut self.buf, &mut self.timer).await;
            held.set(self.buf.capacity());
            match read {
                Ok(_) => {}
                Err(Fail::Timeout) => {
                    return Err(Ahead::Reply(Reply::rejected(
                        Rejection::BodyTimeout,
                        408,
                        format!(
                            "request body not received within the function's timeout of {} ms",
                            timeout.as_millis()
                        ),
                    )));
                }
                Err(Fail::Eof | Fail::Io(_)) => return Err(Ahead::Gone),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test for the process-wide budget (no other test of this binary
    /// reads a body ahead): buffers count in it, exported as they are kept,
    /// until dropped; while it is spent, a body is not read ahead and that
    /// is counted.
    #[tokio::test]
    async fn read_ahead_buffers_count_in_the_budget_until_dropped() {
        assert_eq!(Held::total(), 0);
        let mut held = Held::default();
        held.set(1 << 20);
        assert_eq!(Held::total(), 1 << 20);
        assert!(Held::room());
        held.set(AHEAD_BUDGET);
        assert_eq!(Held::total(), AHEAD_BUDGET);
        assert!(!Held::room(), "the budget is spent");

        // A body of 10 bytes with 3 of them come: none is waited for.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (client, accepted) = tokio::join!(
            tokio::net::TcpStream::connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        let (_client, (tcp, peer)) = (client.unwrap(), accepted.unwrap());
        let mut conn = Conn::new(tcp, peer);
        conn.buf = crate::upstream::Buf::take();
        conn.buf
            .extend_from_slice(b"POST /fn/f/ HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nhel");
        let line = h1::parse_request(&conn.buf, &mut conn.fields)
            .unwrap()
            .expect("a whole head");
        let mut sem = h1::request_semantics(&conn.buf, line.minor, &conn.fields).unwrap();
        let spent = metrics::body_ahead_budget_spent();
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            conn.read_body_ahead(&line, &mut sem, 1 << 20, Duration::from_secs(30)),
        )
        .await
        .expect("no read is waited for while the budget is spent");
        assert!(read.is_ok());
        assert_eq!(metrics::body_ahead_budget_spent(), spent + 1);
        assert_eq!(Held::total(), AHEAD_BUDGET, "nothing more held");

        held.set(2 << 20);
        assert_eq!(Held::total(), 2 << 20);
        drop(held);
        assert_eq!(Held::total(), 0);
        assert!(Held::room());
    }
}
