//! The pingora `ProxyHttp` implementation: routes `/fn/{name}/…` to an
//! instance leased from the pool, enforces the body limit and timeout, adds
//! the forwarding and timing headers, answers its own errors as JSON, serves
//! `/healthz` and `/metrics`, and records the call metrics in `logging`.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use containerpub_pool::{Lease, Pool, PoolError};
use containerpub_wire::api::ApiError;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, RetryType};
use tracing::{debug, warn};

use crate::metrics::{self, Rejection, UpstreamError};
use crate::path::{self, PathError};
use crate::request_id;
use crate::routes::{Entry, Routes};

/// How long an idle upstream connection stays pooled.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);
/// Longest wait for a TCP connection to an instance. Instances are on this
/// host's bridge, so a handshake takes well under a millisecond; a dead
/// instance's address never answers at all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The proxy service.
pub struct Proxy {
    routes: Arc<Routes>,
    pool: Pool,
}

impl Proxy {
    pub fn new(routes: Arc<Routes>, pool: Pool) -> Self {
        Self { routes, pool }
    }
}

/// An error answer the proxy writes itself.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    message: String,
    retry_after: Option<u32>,
    /// Set when the proxy refused the call itself (counted in
    /// `cpub_proxy_rejections_total`), as opposed to reporting an upstream
    /// failure.
    rejection: Option<Rejection>,
}

impl Reply {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
            rejection: None,
        }
    }

    fn rejected(reason: Rejection, status: u16, message: impl Into<String>) -> Self {
        Self {
            rejection: Some(reason),
            ..Self::new(status, message)
        }
    }

    fn retry_after(self, seconds: u32) -> Self {
        Self {
            retry_after: Some(seconds),
            ..self
        }
    }
}

/// Per-request state. Holding the `Lease` here ties its release to the end
/// of the request on every path: pingora drops the context after `logging`,
/// whether the call succeeded, failed or the client went away.
pub struct Ctx {
    /// When the request header was read.
    received_at: Instant,
    request_id: String,
    route: Option<Arc<Entry>>,
    upstream_path: String,
    lease: Option<Lease>,
    /// Request body bytes seen so far.
    body_bytes: u64,
    /// Set when the proxy decided the answer (404, 413, 503…).
    reply: Option<Reply>,
    /// When the current attempt's peer was handed to pingora (start of
    /// upstream time and of the timeout budget).
    upstream_started: Option<Instant>,
    /// Time to the upstream response header.
    upstream_time: Option<Duration>,
    /// Retries spent on connections that failed to open.
    connect_retries: u8,
    /// Retries spent on reused connections that failed.
    reuse_retries: u8,
    /// Upstream failures of this call by kind (`UpstreamError as usize`),
    /// counted where they happen and recorded in `logging`.
    upstream_errors: [u8; UpstreamError::ALL.len()],
}

fn json_body(message: &str) -> Bytes {
    let body = ApiError {
        error: message.to_owned(),
        field: None,
    };
    Bytes::from(serde_json::to_vec(&body).expect("an ApiError always serializes"))
}

/// Header of a JSON answer of `len` bytes.
fn json_header(
    status: u16,
    len: usize,
    request_id: &str,
    retry_after: Option<u32>,
) -> pingora::Result<ResponseHeader> {
    let mut header = ResponseHeader::build(status, Some(5))?;
    header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    header.insert_header(http::header::CONTENT_LENGTH, len.to_string())?;
    header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    header.insert_header(request_id::HEADER, request_id)?;
    if let Some(s) = retry_after {
        header.insert_header(http::header::RETRY_AFTER, s.to_string())?;
    }
    Ok(header)
}

/// Writes a complete JSON answer.
async fn respond_json(
    session: &mut Session,
    status: u16,
    body: Bytes,
    request_id: &str,
    retry_after: Option<u32>,
) -> pingora::Result<()> {
    let header = json_header(status, body.len(), request_id, retry_after)?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(header), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Maps a pool failure for `function` to an answer. The pool's messages
/// name the function; a runtime failure's details stay in the log.
fn pool_reply(function: &str, err: &PoolError) -> Reply {
    match err {
        PoolError::QueueFull { .. } => {
            Reply::rejected(Rejection::QueueFull, 429, err.to_string()).retry_after(1)
        }
        PoolError::QueueTimeout { .. } => {
            Reply::rejected(Rejection::QueueTimeout, 503, err.to_string()).retry_after(1)
        }
        PoolError::StartFailed { .. } => {
            Reply::rejected(Rejection::StartFailed, 502, err.to_string())
        }
        PoolError::Podman(_) => Reply::rejected(
            Rejection::RuntimeUnavailable,
            503,
            format!("function {function} temporarily unavailable: the container runtime failed"),
        )
        .retry_after(1),
    }
}

/// `server-timing` value: how long the call waited for a slot, how the
/// instance was obtained and how long starting it took, and how long the
/// upstream took to answer; milliseconds with decimals.
pub fn server_timing(queue: Duration, kind: &str, start: Duration, upstream: Duration) -> String {
    format!(
        "queue;dur={:.3}, start;desc=\"{kind}\";dur={:.3}, upstream;dur={:.3}",
        queue.as_secs_f64() * 1e3,
        start.as_secs_f64() * 1e3,
        upstream.as_secs_f64() * 1e3
    )
}

/// Rewrites the request sent to the instance: the path the function sees
/// (`upstream_path`, from `path::parse`), `x-request-id`, `x-forwarded-for`
/// (the client's address appended to a non-empty incoming value) and
/// `x-forwarded-proto`.
pub fn rewrite_upstream_request(
    upstream: &mut RequestHeader,
    upstream_path: &str,
    request_id: &str,
    client_ip: Option<IpAddr>,
) -> pingora::Result<()> {
    let uri = http::Uri::try_from(upstream_path)
        .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "upstream path", e))?;
    upstream.set_uri(uri);
    upstream.insert_header(request_id::HEADER, request_id)?;
    if let Some(ip) = client_ip {
        let forwarded = match upstream
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
            _ => ip.to_string(),
        };
        upstream.insert_header("x-forwarded-for", forwarded)?;
    }
    upstream.insert_header("x-forwarded-proto", "http")?;
    Ok(())
}

/// Writes the metrics page (`GET`/`HEAD /metrics`).
async fn respond_metrics(session: &mut Session, request_id: &str) -> pingora::Result<()> {
    let body = Bytes::from(metrics::render());
    let mut header = ResponseHeader::build(200, Some(4))?;
    header.insert_header(http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)?;
    header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    header.insert_header(request_id::HEADER, request_id)?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(header), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Connection-pool key of an instance: upstream connections are only ever
/// reused for the same container, never for a new container that got the
/// same address. `attempt` > 0 forces a fresh connection on a retry.
fn group_key(instance_id: &str, attempt: u8) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    instance_id.hash(&mut h);
    attempt.hash(&mut h);
    h.finish()
}

/// Upstream failures that say the instance itself is gone or broken.
fn is_connection_failure(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectionClosed
            | ErrorType::ReadError
            | ErrorType::WriteError
            | ErrorType::ConnectRefused
            | ErrorType::ConnectError
            | ErrorType::ConnectNoRoute
            | ErrorType::SocketError
    )
}

fn is_timeout(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::ConnectTimedout
    )
}

impl Ctx {
    /// The state of a call that has just arrived.
    fn new() -> Self {
        Ctx {
            received_at: Instant::now(),
            request_id: String::new(),
            route: None,
            upstream_path: String::new(),
            lease: None,
            body_bytes: 0,
            reply: None,
            upstream_started: None,
            upstream_time: None,
            connect_retries: 0,
            reuse_retries: 0,
            upstream_errors: [0; UpstreamError::ALL.len()],
        }
    }

    /// Remaining time budget of the call.
    fn deadline_passed(&self) -> bool {
        match (&self.route, self.upstream_started) {
            (Some(entry), Some(t)) => {
                t.elapsed() > Duration::from_millis(entry.route.config.resources.timeout_ms)
            }
            _ => false,
        }
    }

    fn function(&self) -> &str {
        self.route
            .as_deref()
            .map_or("-", |e| e.route.function.as_str())
    }

    fn count_upstream_error(&mut self, kind: UpstreamError) {
        let n = &mut self.upstream_errors[kind as usize];
        *n = n.saturating_add(1);
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        let req = session.req_header();
        ctx.request_id =
            request_id::pick(req.headers.get(request_id::HEADER).map(|v| v.as_bytes()));

        let parsed = path::parse(req.uri.path(), req.uri.query());
        let invocation = match parsed {
            Ok(invocation) => invocation,
            Err(PathError::NotInvocation) => {
                let is_get = matches!(req.method, http::Method::GET | http::Method::HEAD);
                if req.uri.path() == "/healthz" && is_get {
                    let snap = self.routes.snapshot();
                    let body =
                        serde_json::json!({"revision": snap.revision, "routes": snap.routes.len()});
                    let body = Bytes::from(body.to_string());
                    respond_json(session, 200, body, &ctx.request_id, None).await?;
                    return Ok(true);
                }
                if req.uri.path() == "/metrics" && is_get {
                    respond_metrics(session, &ctx.request_id).await?;
                    return Ok(true);
                }
                let message = "not found: functions are called at /fn/{name}/";
                let reply = Reply::rejected(Rejection::NotFound, 404, message);
                return self.reject(session, ctx, reply).await;
            }
            Err(PathError::BadName(raw)) => {
                let shown: String = raw.chars().take(80).collect();
                let message = format!("no function named \"{shown}\"");
                let reply = Reply::rejected(Rejection::UnknownFunction, 404, message);
                return self.reject(session, ctx, reply).await;
            }
        };

        let Some(entry) = self.routes.get(&invocation.name) else {
            let message = format!("no function named \"{}\"", invocation.name);
            let reply = Reply::rejected(Rejection::UnknownFunction, 404, message);
            return self.reject(session, ctx, reply).await;
        };

        let limit = entry.route.config.resources.max_body_bytes;
        ctx.route = Some(entry);
        let declared = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        if let Some(len) = declared
            && len > limit
        {
            let message = format!("request body of {len} bytes is over the limit of {limit} bytes");
            let reply = Reply::rejected(Rejection::BodyTooLarge, 413, message);
            return self.reject(session, ctx, reply).await;
        }

        ctx.upstream_path = invocation.upstream;
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let entry = ctx
            .route
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route"))?;
        let route = &entry.route;
        if ctx.lease.is_none() {
            match self.pool.lease(route).await {
                Ok(lease) => {
                    ctx.lease = Some(lease);
                }
                Err(e) => {
                    let reply = pool_reply(&route.function, &e);
                    if matches!(
                        e,
                        PoolError::QueueFull { .. } | PoolError::QueueTimeout { .. }
                    ) {
                        debug!(function = %route.function, error = %e, "no free instance");
                    } else {
                        warn!(function = %route.function, request_id = %ctx.request_id, error = %e, "no instance for call");
                    }
                    let status = reply.status;
                    ctx.reply = Some(reply);
                    return Err(Error::explain(
                        ErrorType::HTTPStatus(status),
                        "pool could not lease an instance",
                    ));
                }
            }
        }
        let lease = ctx.lease.as_ref().expect("lease taken above");
        let timeout = Duration::from_millis(route.config.resources.timeout_ms);
        let mut peer = HttpPeer::new(lease.addr(), false, String::new());
        peer.group_key = group_key(lease.instance_id(), ctx.reuse_retries);
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT.min(timeout));
        peer.options.read_timeout = Some(timeout);
        peer.options.write_timeout = Some(timeout);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE);
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        let Some(chunk) = body else { return Ok(()) };
        ctx.body_bytes += chunk.len() as u64;
        let limit = ctx
            .route
            .as_ref()
            .map_or(u64::MAX, |e| e.route.config.resources.max_body_bytes);
        if ctx.body_bytes > limit {
            ctx.reply = Some(Reply::rejected(
                Rejection::BodyTooLarge,
                413,
                format!("request body is over the limit of {limit} bytes"),
            ));
            return Err(Error::explain(
                ErrorType::HTTPStatus(413),
                "request body over the limit",
            ));
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        rewrite_upstream_request(upstream, &ctx.upstream_path, &ctx.request_id, client_ip)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if response.status.is_informational() {
            return Ok(());
        }
        let upstream = ctx.upstream_started.map_or(Duration::ZERO, |t| t.elapsed());
        ctx.upstream_time = Some(upstream);
        if ctx.deadline_passed() {
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "function answered after its timeout",
            ));
        }
        let (queue, kind, start) =
            ctx.lease
                .as_ref()
                .map_or((Duration::ZERO, "warm", Duration::ZERO), |l| {
                    (
                        l.queue_duration(),
                        l.start_kind().as_str(),
                        l.start_duration(),
                    )
                });
        response.insert_header(request_id::HEADER, ctx.request_id.as_str())?;
        response.append_header("server-timing", server_timing(queue, kind, start, upstream))?;
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<Option<Duration>> {
        if !end_of_stream && ctx.deadline_passed() {
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "function response ran past its timeout",
            ));
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent: the instance is unreachable. Take it out of the
        // pool and try once more with another (or a new) instance.
        ctx.count_upstream_error(UpstreamError::Connect);
        if let Some(lease) = ctx.lease.take() {
            debug!(function = %ctx.function(), instance = %lease.instance_id(), %peer, error = %e, "instance unreachable");
            lease.mark_failed();
        }
        if ctx.connect_retries == 0 && ctx.reply.is_none() {
            ctx.connect_retries += 1;
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        if ctx.reply.is_some() {
            e.set_retry(false);
            return e;
        }
        // A pooled connection that the instance closed while we reused it:
        // retry once on a fresh connection, when the method is idempotent and
        // the request body is still buffered (pingora's default policy, but
        // bounded to one retry and forced onto a new connection).
        let retry = client_reused
            && matches!(e.retry, RetryType::ReusedOnly)
            && ctx.reuse_retries == 0
            && session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        if retry {
            // The usual keep-alive race (the instance closed an idle
            // connection): not counted as an upstream error.
            ctx.reuse_retries += 1;
            e.set_retry(true);
            return e;
        }
        e.set_retry(false);
        if *e.esource() != ErrorSource::Downstream {
            if is_timeout(&e) {
                ctx.count_upstream_error(UpstreamError::Timeout);
            } else if *e.esource() == ErrorSource::Upstream && is_connection_failure(&e) {
                ctx.count_upstream_error(UpstreamError::Reset);
            }
        }
        // A fresh connection that broke before the response header: the
        // instance is broken, keep it from further calls.
        if !client_reused
            && ctx.upstream_time.is_none()
            && *e.esource() == ErrorSource::Upstream
            && is_connection_failure(&e)
            && let Some(lease) = &ctx.lease
        {
            debug!(function = %ctx.function(), instance = %lease.instance_id(), error = %e, "instance failed mid-call");
            lease.mark_failed();
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let reply = match ctx.reply.clone() {
            Some(reply) => Some(reply),
            None if is_timeout(e) => {
                let ms = ctx
                    .route
                    .as_ref()
                    .map_or(0, |e| e.route.config.resources.timeout_ms);
                Some(Reply::new(
                    504,
                    format!("function did not answer within {ms} ms"),
                ))
            }
            None => match (e.etype(), e.esource()) {
                (ErrorType::HTTPStatus(code), _) => Some(Reply::new(*code, "request failed")),
                (_, ErrorSource::Upstream) => Some(Reply::new(502, "function connection failed")),
                (
                    ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
                    ErrorSource::Downstream,
                ) => {
                    None // the client is gone
                }
                (_, ErrorSource::Downstream) => Some(Reply::new(400, "bad request")),
                _ => Some(Reply::new(500, "internal proxy error")),
            },
        };
        let Some(reply) = reply else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if session.response_written().is_none() {
            let body = json_body(&reply.message);
            if let Err(write_err) = respond_json(
                session,
                reply.status,
                body,
                &ctx.request_id,
                reply.retry_after,
            )
            .await
            {
                debug!(error = %write_err, "error answer not delivered");
            }
        }
        FailToProxy {
            error_code: reply.status,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, e: &Error) -> bool {
        // Answers the proxy chose (404, 413, 429 queue full, 503 queue
        // timeout) and clients that went away are normal traffic, not
        // errors; they are logged at debug.
        ctx.reply.is_some() || *e.esource() == ErrorSource::Downstream
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.received_at.elapsed();
        record(ctx, status, elapsed);
        let total_ms = elapsed.as_secs_f64() * 1e3;
        let kind = ctx.lease.as_ref().map_or("-", |l| l.start_kind().as_str());
        match e {
            None => {
                debug!(request_id = %ctx.request_id, function = %ctx.function(), status, kind, total_ms, body_bytes = ctx.body_bytes, "call")
            }
            Some(e) => {
                debug!(request_id = %ctx.request_id, function = %ctx.function(), status, kind, total_ms, error = %e, "call failed")
            }
        }
        // The lease goes with the context right after this hook.
    }
}

/// Records one finished request in the metrics: a call of a routed function
/// (status class, duration, upstream errors) and/or a rejection. `/healthz`
/// and `/metrics` record nothing.
fn record(ctx: &Ctx, status: u16, elapsed: Duration) {
    if let Some(entry) = &ctx.route {
        entry.metrics.record_call(status, elapsed);
        for kind in UpstreamError::ALL {
            entry
                .metrics
                .record_upstream_errors(kind, ctx.upstream_errors[kind as usize].into());
        }
    }
    if let Some(reason) = ctx.reply.as_ref().and_then(|r| r.rejection) {
        metrics::record_rejection(reason);
    }
}

impl Proxy {
    /// Answers a request the proxy refuses before any upstream is chosen.
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        reply: Reply,
    ) -> pingora::Result<bool> {
        // An unread request body would desynchronise a kept-alive connection.
        if !session.is_body_empty() {
            session.set_keepalive(None);
        }
        let body = json_body(&reply.message);
        respond_json(
            session,
            reply.status,
            body,
            &ctx.request_id,
            reply.retry_after,
        )
        .await?;
        ctx.reply = Some(reply);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_timing_format() {
        let v = server_timing(
            Duration::from_micros(12),
            "cold",
            Duration::from_micros(180_300),
            Duration::from_micros(900),
        );
        assert_eq!(
            v,
            "queue;dur=0.012, start;desc=\"cold\";dur=180.300, upstream;dur=0.900"
        );
        let v = server_timing(
            Duration::ZERO,
            "warm",
            Duration::ZERO,
            Duration::from_micros(250),
        );
        assert_eq!(
            v,
            "queue;dur=0.000, start;desc=\"warm\";dur=0.000, upstream;dur=0.250"
        );
        let v = server_timing(
            Duration::from_millis(1_500),
            "paused",
            Duration::from_micros(4_250),
            Duration::from_millis(20),
        );
        assert_eq!(
            v,
            "queue;dur=1500.000, start;desc=\"paused\";dur=4.250, upstream;dur=20.000"
        );
        // A valid header value.
        http::HeaderValue::try_from(v).unwrap();
    }

    #[test]
    fn error_bodies_are_api_errors() {
        let body = json_body("no function named \"x\"");
        assert_eq!(&body[..], br#"{"error":"no function named \"x\""}"#);
    }

    /// The answer the proxy writes for a pool error: header and body.
    fn answer(err: &PoolError) -> (ResponseHeader, serde_json::Value, Option<Rejection>) {
        let reply = pool_reply("hello", err);
        let body = json_body(&reply.message);
        let header = json_header(reply.status, body.len(), "rid-1", reply.retry_after).unwrap();
        let json = serde_json::from_slice(&body).unwrap();
        (header, json, reply.rejection)
    }

    fn header<'a>(h: &'a ResponseHeader, name: &str) -> Option<&'a str> {
        h.headers.get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn pool_errors_map_to_statuses_headers_and_bodies() {
        let cases = [
            (
                PoolError::QueueFull {
                    function: "hello".into(),
                    queue_size: 10,
                },
                429,
                Some("1"),
                Rejection::QueueFull,
            ),
            (
                PoolError::QueueTimeout {
                    function: "hello".into(),
                    waited: Duration::from_millis(2_000),
                },
                503,
                Some("1"),
                Rejection::QueueTimeout,
            ),
            (
                PoolError::StartFailed {
                    function: "hello".into(),
                    reason: "exited with 1".into(),
                },
                502,
                None,
                Rejection::StartFailed,
            ),
            (
                PoolError::Podman(containerpub_pool::PodmanError::Decode(
                    "secret internal detail".into(),
                )),
                503,
                Some("1"),
                Rejection::RuntimeUnavailable,
            ),
        ];
        for (err, status, retry_after, reason) in cases {
            let (h, body, rejection) = answer(&err);
            assert_eq!(h.status.as_u16(), status, "{err}");
            assert_eq!(header(&h, "retry-after"), retry_after, "{err}");
            assert_eq!(header(&h, "content-type"), Some("application/json"));
            assert_eq!(header(&h, "x-request-id"), Some("rid-1"));
            assert_eq!(header(&h, "cache-control"), Some("no-store"));
            let message = body["error"].as_str().unwrap();
            assert!(message.contains("hello"), "names the function: {message}");
            assert!(!message.contains("secret"), "no runtime details: {message}");
            assert_eq!(rejection, Some(reason), "{err}");
        }
        let (_, body, _) = answer(&PoolError::StartFailed {
            function: "hello".into(),
            reason: "exited with 1".into(),
        });
        assert!(body["error"].as_str().unwrap().contains("exited with 1"));
        let (_, body, _) = answer(&PoolError::QueueFull {
            function: "hello".into(),
            queue_size: 10,
        });
        assert!(
            body["error"].as_str().unwrap().contains("10 calls"),
            "{body}"
        );
    }

    fn ctx_for(entry: Option<Arc<Entry>>) -> Ctx {
        let mut ctx = Ctx::new();
        ctx.request_id = "rid".into();
        ctx.route = entry;
        ctx
    }

    fn scrape_value(line_prefix: &str) -> Option<u64> {
        let text = String::from_utf8(metrics::render()).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(line_prefix)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn logging_records_calls_upstream_errors_and_rejections() {
        metrics::init();
        let manifest =
            containerpub_wire::Manifest::parse("name = \"svc-rec\"\nruntime = \"container\"\n")
                .unwrap();
        let entry = Arc::new(Entry {
            route: containerpub_wire::api::Route {
                function: "svc-rec".into(),
                deployment_id: 1,
                version: 1,
                image: "img".into(),
                config: manifest,
            },
            metrics: metrics::FunctionMetrics::new("svc-rec"),
        });
        let rejected = |reason: &str| {
            scrape_value(&format!(
                "cpub_proxy_rejections_total{{reason=\"{reason}\"}}"
            ))
        };
        let queue_full_before = rejected("queue_full").unwrap();

        // A call that connected on the second try and answered 200.
        let mut ctx = ctx_for(Some(entry.clone()));
        ctx.count_upstream_error(UpstreamError::Connect);
        record(&ctx, 200, Duration::from_millis(5));
        // A call the pool turned away.
        let mut ctx = ctx_for(Some(entry.clone()));
        ctx.reply = Some(pool_reply(
            "svc-rec",
            &PoolError::QueueFull {
                function: "svc-rec".into(),
                queue_size: 1,
            },
        ));
        record(&ctx, 429, Duration::from_millis(1));
        // A function that does not exist: a rejection, no function series.
        let mut ctx = ctx_for(None);
        ctx.reply = Some(Reply::rejected(Rejection::UnknownFunction, 404, "no"));
        record(&ctx, 404, Duration::from_millis(1));

        let series = |name: &str, labels: &str| {
            scrape_value(&format!("{name}{{function=\"svc-rec\",{labels}}}"))
        };
        assert_eq!(
            series("cpub_invocations_total", "status_class=\"2xx\""),
            Some(1)
        );
        assert_eq!(
            series("cpub_invocations_total", "status_class=\"4xx\""),
            Some(1)
        );
        assert_eq!(
            series("cpub_upstream_errors_total", "kind=\"connect\""),
            Some(1)
        );
        assert_eq!(
            series("cpub_upstream_errors_total", "kind=\"reset\""),
            Some(0)
        );
        assert_eq!(
            scrape_value("cpub_invocation_duration_seconds_count{function=\"svc-rec\"}"),
            Some(2)
        );
        // Other tests record rejections in parallel: at least ours.
        assert!(rejected("queue_full").unwrap() > queue_full_before);
        assert!(rejected("unknown_function").unwrap() >= 1);
    }

    #[test]
    fn upstream_request_is_rewritten() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let mut req = RequestHeader::build("POST", b"/fn/hello/x?y=1", None).unwrap();
        req.insert_header("x-forwarded-for", "192.0.2.7").unwrap();
        rewrite_upstream_request(&mut req, "/x?y=1", "rid-1", Some(ip)).unwrap();
        assert_eq!(req.uri, "/x?y=1");
        let h = |name: &str| req.headers.get(name).unwrap().to_str().unwrap().to_owned();
        assert_eq!(h("x-request-id"), "rid-1");
        assert_eq!(h("x-forwarded-for"), "192.0.2.7, 10.1.2.3");
        assert_eq!(h("x-forwarded-proto"), "http");

        let mut req = RequestHeader::build("GET", b"/fn/hello", None).unwrap();
        req.insert_header("x-forwarded-for", " ").unwrap();
        rewrite_upstream_request(&mut req, "/", "rid-2", Some(ip)).unwrap();
        assert_eq!(req.headers.get("x-forwarded-for").unwrap(), "10.1.2.3");
    }

    #[test]
    fn group_keys_separate_instances_and_attempts() {
        assert_eq!(group_key("abc", 0), group_key("abc", 0));
        assert_ne!(group_key("abc", 0), group_key("abc", 1));
        assert_ne!(group_key("abc", 0), group_key("abd", 0));
    }
}
