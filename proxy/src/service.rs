//! What a call through the proxy is, apart from HTTP (`engine/`): the
//! proxy's shared state, the answers it writes itself, how pool failures
//! map to them, `server-timing`, and the per-call record that counts every
//! call in the metrics when it ends.
//!
//! Over 600 lines with its unit tests: about 320 of code and 300 of tests.
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::string_slice))]

use std::sync::Arc;
use std::time::{Duration, Instant};

use containerpub_pool::{Lease, Pool, PoolError};
use containerpub_wire::api::ApiError;
use tracing::debug;

use crate::metrics::{self, Rejection, UpstreamError};
use crate::routes::{Entry, Routes};

/// The proxy service, shared by every worker thread.
#[derive(Clone)]
pub struct Proxy {
    routes: Arc<Routes>,
    pool: Pool,
}

/// An error answer the proxy writes itself.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub message: String,
    pub retry_after: Option<u32>,
    /// Set when the proxy refused the call itself (counted in
    /// `cpub_proxy_rejections_total`), as opposed to reporting an upstream
    /// failure.
    pub rejection: Option<Rejection>,
}

impl Reply {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
            rejection: None,
        }
    }

    pub fn rejected(reason: Rejection, status: u16, message: impl Into<String>) -> Self {
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

/// A call of a routed function, from its arrival to the end of its answer.
/// Dropping it records the call (status class, duration, upstream errors,
/// rejection) on every path, and releases the lease: the proxy drops it
/// when it answers by itself, the answer's body when it has been streamed
/// or the client went away.
pub struct Call {
    received_at: Instant,
    pub entry: Arc<Entry>,
    pub request_id: String,
    /// The `traceparent` the instance gets (`trace.rs`).
    pub traceparent: String,
    pub lease: Option<Lease>,
    /// Status of the answer (0 while none is chosen).
    pub status: u16,
    pub rejection: Option<Rejection>,
    /// Upstream failures of this call by kind (`UpstreamError as usize`).
    upstream_errors: [u8; UpstreamError::ALL.len()],
    /// For the execution record (`executions.rs`): the method, the trace id
    /// of the request's `traceparent`, bytes sent to the instance and to
    /// the client, and how long the instance took to answer's head.
    pub method: crate::executions::Method,
    pub trace_id: Option<[u8; containerpub_wire::executions::TRACE_ID_LEN]>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub upstream_time: Duration,
}

impl Call {
    pub fn new(received_at: Instant, entry: Arc<Entry>, request_id: String) -> Self {
        Self {
            received_at,
            entry,
            request_id,
            traceparent: String::new(),
            lease: None,
            status: 0,
            rejection: None,
            upstream_errors: [0; UpstreamError::ALL.len()],
            method: Default::default(),
            trace_id: None,
            bytes_in: 0,
            bytes_out: 0,
            upstream_time: Duration::ZERO,
        }
    }

    pub(crate) fn count_upstream_error(&mut self, kind: UpstreamError) {
        if let Some(n) = self.upstream_errors.get_mut(kind as usize) {
            *n = n.saturating_add(1);
        }
    }

    pub(crate) fn instance_id(&self) -> Option<&str> {
        self.lease.as_ref().map(Lease::instance_id)
    }

    pub fn function(&self) -> &str {
        &self.entry.route.function
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.entry.route.config.resources.timeout_ms)
    }

    /// Deadline of the next read of a streamed answer or a tunnel: the
    /// function's `stream_idle_ms` from now, within its `max_call_s` (never
    /// below `timeout_ms`) from the call's arrival.
    pub fn stream_deadline(&self) -> tokio::time::Instant {
        (tokio::time::Instant::now() + self.stream_idle()).min(self.stream_deadline_cap())
    }

    /// The function's `stream_idle_ms`.
    pub fn stream_idle(&self) -> Duration {
        Duration::from_millis(self.entry.route.config.resources.stream_idle_ms)
    }

    /// When the call reaches its `max_call_s` (never below `timeout_ms`).
    pub fn stream_deadline_cap(&self) -> tokio::time::Instant {
        let r = &self.entry.route.config.resources;
        let cap = Duration::from_secs(r.max_call_s).max(self.timeout());
        tokio::time::Instant::from_std(self.received_at + cap)
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let elapsed = self.received_at.elapsed();
        record(
            Some(&self.entry),
            self.status,
            elapsed,
            &self.upstream_errors,
            self.rejection,
        );
        if tracing::enabled!(tracing::Level::DEBUG) {
            let kind = self.lease.as_ref().map_or("-", |l| l.start_kind().as_str());
            debug!(request_id = %self.request_id, function = %self.function(), status = self.status, kind, total_ms = elapsed.as_secs_f64() * 1e3, "call");
        }
        if crate::executions::enabled() {
            self.emit_record(elapsed);
        }
        // The lease is released right after this.
    }
}

impl Call {
    /// Hands the call's execution record to its worker's batch.
    fn emit_record(&mut self, total: Duration) {
        let lease = self.lease.as_ref();
        crate::executions::push(
            &self.entry,
            crate::executions::Raw {
                at: std::time::SystemTime::now()
                    .checked_sub(total)
                    .unwrap_or(std::time::UNIX_EPOCH),
                instance: lease.map(|l| crate::executions::ShortId::new(l.instance_id())),
                request_id: crate::executions::RecordId::new(&mut self.request_id),
                trace_id: self.trace_id,
                method: self.method,
                status: self.status,
                start: lease.map(Lease::start_kind),
                queue: lease.map_or(Duration::ZERO, Lease::queue_duration),
                start_time: lease.map_or(Duration::ZERO, Lease::start_duration),
                upstream: self.upstream_time,
                total,
                bytes_in: self.bytes_in,
                bytes_out: self.bytes_out,
                rejection: self.rejection,
            },
        );
    }
}

/// Records one finished request in the metrics: a call of a routed function
/// (status class, duration, upstream errors) and/or a rejection. `/healthz`
/// (and the admin listener's `/metrics`) record nothing.
fn record(
    entry: Option<&Entry>,
    status: u16,
    elapsed: Duration,
    upstream_errors: &[u8; UpstreamError::ALL.len()],
    rejection: Option<Rejection>,
) {
    if let Some(entry) = entry {
        entry.metrics.record_call(status, elapsed);
        for kind in UpstreamError::ALL {
            let n = upstream_errors.get(kind as usize).copied().unwrap_or(0);
            entry.metrics.record_upstream_errors(kind, n.into());
        }
    }
    if let Some(reason) = rejection {
        metrics::record_rejection(reason);
    }
}

pub fn json_body(message: &str) -> Vec<u8> {
    let body = ApiError {
        error: message.to_owned(),
        field: None,
    };
    serde_json::to_vec(&body).expect("an ApiError always serializes")
}

/// Maps a pool failure for `function` to an answer. Callers get a short
/// message naming the function: the engine's and the pool's details (an
/// IPAM error, a probe's address) stay in the log and the metrics
/// (`cpub_pool_start_failures_total`). A crash's answer carries the
/// function's own exit code and output (README, "Crashes").
pub fn pool_reply(function: &str, err: &PoolError) -> Reply {
    match err {
        PoolError::QueueFull { .. } => {
            Reply::rejected(Rejection::QueueFull, 429, err.to_string()).retry_after(1)
        }
        PoolError::QueueTimeout { .. } => {
            Reply::rejected(Rejection::QueueTimeout, 503, err.to_string()).retry_after(1)
        }
        PoolError::NoCapacity { retry_after, .. } => Reply::rejected(
            Rejection::NoCapacity,
            503,
            format!("function {function} temporarily unavailable: the node is at capacity"),
        )
        .retry_after(
            u32::try_from(retry_after.as_secs())
                .unwrap_or(u32::MAX)
                .max(1),
        ),
        PoolError::StartFailed { .. } => Reply::rejected(
            Rejection::StartFailed,
            502,
            format!("function {function}: its instance failed to start"),
        ),
        PoolError::Crashed { .. } => Reply::rejected(Rejection::StartFailed, 502, err.to_string()),
        PoolError::Podman(_) | PoolError::Freezer(_) => Reply::rejected(
            Rejection::RuntimeUnavailable,
            503,
            format!("function {function} temporarily unavailable: the container runtime failed"),
        )
        .retry_after(1),
    }
}

/// Appends the `server-timing` value to `out`: how long the call waited for
/// a slot, how the instance was obtained and how long starting it took, and
/// how long the upstream took to answer; milliseconds with three decimals,
/// written with integer arithmetic (formatting floats costs more than the
/// rest of the answer's head).
pub fn server_timing(
    out: &mut Vec<u8>,
    queue: Duration,
    kind: &str,
    start: Duration,
    upstream: Duration,
) {
    out.extend_from_slice(b"queue;dur=");
    push_ms(out, queue);
    out.extend_from_slice(b", start;desc=\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\";dur=");
    push_ms(out, start);
    out.extend_from_slice(b", upstream;dur=");
    push_ms(out, upstream);
}

/// Whole microseconds as milliseconds with three decimals.
fn push_ms(out: &mut Vec<u8>, d: Duration) {
    // u64: dividing a u128 is a library call.
    let mut n = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    // Backwards from the end: at most 20 digits and the point.
    let mut digits = [0u8; 24];
    let mut i = digits.len();
    let mut written = 0;
    while n > 0 || written < 4 {
        if written == 3 {
            i -= 1;
            if let Some(d) = digits.get_mut(i) {
                *d = b'.';
            }
        }
        i -= 1;
        if let Some(d) = digits.get_mut(i) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        written += 1;
    }
    out.extend_from_slice(digits.get(i..).unwrap_or_default());
}

impl Proxy {
    pub fn new(routes: Arc<Routes>, pool: Pool) -> Self {
        Self { routes, pool }
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_are_printed_like_the_formatter_would() {
        for us in [
            0u64,
            1,
            9,
            10,
            999,
            1_000,
            1_001,
            12_345,
            180_300,
            1_500_000,
            987_654_321,
        ] {
            let mut out = Vec::new();
            push_ms(&mut out, Duration::from_micros(us));
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("{}.{:03}", us / 1000, us % 1000),
                "{us} µs"
            );
        }
    }

    #[test]
    fn server_timing_format() {
        let timing = |queue, kind, start, upstream| {
            let mut out = Vec::new();
            server_timing(&mut out, queue, kind, start, upstream);
            String::from_utf8(out).unwrap()
        };
        let v = timing(
            Duration::from_micros(12),
            "cold",
            Duration::from_micros(180_300),
            Duration::from_micros(900),
        );
        assert_eq!(
            v,
            "queue;dur=0.012, start;desc=\"cold\";dur=180.300, upstream;dur=0.900"
        );
        let v = timing(
            Duration::ZERO,
            "warm",
            Duration::ZERO,
            Duration::from_micros(250),
        );
        assert_eq!(
            v,
            "queue;dur=0.000, start;desc=\"warm\";dur=0.000, upstream;dur=0.250"
        );
        let v = timing(
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
        assert!(v.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
    }

    #[test]
    fn error_bodies_are_api_errors() {
        let body = json_body("no function named \"x\"");
        assert_eq!(&body[..], br#"{"error":"no function named \"x\""}"#);
    }

    /// The answer the proxy writes for a pool error: head fields, body and
    /// the rejection counted.
    fn pool_answer(
        err: &PoolError,
    ) -> (
        u16,
        Vec<(String, String)>,
        serde_json::Value,
        Option<Rejection>,
    ) {
        let reply = pool_reply("hello", err);
        let body = json_body(&reply.message);
        let mut out = Vec::new();
        crate::h1::write_own_answer(
            &mut out,
            &crate::h1::OwnAnswer {
                status: reply.status,
                content_type: "application/json",
                body: &body,
                request_id: b"rid-1",
                retry_after: reply.retry_after,
                close: false,
                head_only: false,
            },
        );
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(&out).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("incomplete head"),
        };
        let fields = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        let json = serde_json::from_slice(&out[head_len..]).unwrap();
        (resp.code.unwrap(), fields, json, reply.rejection)
    }

    fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
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
                    reason: "secret: connect 10.89.0.7:8080 refused".into(),
                },
                502,
                None,
                Rejection::StartFailed,
            ),
            (
                PoolError::NoCapacity {
                    function: "hello".into(),
                    reason: "secret: 252 of 252 instances".into(),
                    retry_after: Duration::from_secs(2),
                },
                503,
                Some("2"),
                Rejection::NoCapacity,
            ),
            (
                PoolError::Crashed {
                    function: "hello".into(),
                    exit: containerpub_pool::Exit {
                        code: Some(3),
                        output: "boom\n".into(),
                        oom_killed: false,
                    },
                    backoff: Some(Duration::from_secs(2)),
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
            let (code, h, body, rejection) = pool_answer(&err);
            assert_eq!(code, status, "{err}");
            assert_eq!(header(&h, "retry-after"), retry_after, "{err}");
            assert_eq!(header(&h, "content-type"), Some("application/json"));
            assert_eq!(header(&h, "x-request-id"), Some("rid-1"));
            assert_eq!(header(&h, "cache-control"), Some("no-store"));
            let message = body["error"].as_str().unwrap();
            assert!(message.contains("hello"), "names the function: {message}");
            assert!(!message.contains("secret"), "no runtime details: {message}");
            assert_eq!(header(&h, "connection"), None);
            assert_eq!(rejection, Some(reason), "{err}");
        }
        // A start failure's reason (Podman's text, a probe's address) stays
        // in the log.
        let (_, _, body, _) = pool_answer(&PoolError::StartFailed {
            function: "hello".into(),
            reason: "podman api POST /containers/x/start: 500: IPAM error".into(),
        });
        let message = body["error"].as_str().unwrap();
        assert_eq!(message, "function hello: its instance failed to start");
        let (_, _, body, _) = pool_answer(&PoolError::QueueFull {
            function: "hello".into(),
            queue_size: 10,
        });
        assert!(
            body["error"].as_str().unwrap().contains("10 calls"),
            "{body}"
        );
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
                keys: Vec::new(),
                secrets: Vec::new(),
                signing_keys: Vec::new(),
            },
            metrics: metrics::FunctionMetrics::new("svc-rec"),
            pool_handle: Default::default(),
        });
        let rejected = |reason: &str| {
            scrape_value(&format!(
                "cpub_proxy_rejections_total{{reason=\"{reason}\"}}"
            ))
        };
        let queue_full_before = rejected("queue_full").unwrap();

        // A call that connected on the second try and answered 200: it is
        // recorded when the call is dropped.
        let mut call = Call::new(Instant::now(), entry.clone(), "rid".into());
        call.count_upstream_error(UpstreamError::Connect);
        call.status = 200;
        drop(call);
        // A call the pool turned away.
        let call = Call::new(Instant::now(), entry.clone(), "rid".into());
        let reply = pool_reply(
            "svc-rec",
            &PoolError::QueueFull {
                function: "svc-rec".into(),
                queue_size: 1,
            },
        );
        let mut call = call;
        call.status = reply.status;
        call.rejection = reply.rejection;
        drop(call);
        // A function that does not exist: a rejection, no function series.
        metrics::record_rejection(Rejection::UnknownFunction);

        // Counted in this thread until flushed (a scrape flushes too).
        metrics::flush_local();
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
}
