//! The proxy's Prometheus metrics: names defined once here, registered in
//! `prometheus::default_registry()` (where the pool registers its own), and
//! the text rendering served at `GET /metrics`.
//!
//! Label values stay bounded: a function name (only of a routed function),
//! a status class, an error kind or a rejection reason — never a path or a
//! request id. The per-function handles are resolved once per function
//! ([`FunctionMetrics`], kept in the route table entry), so recording a call
//! formats no label and allocates nothing.
//!
//! A call is counted in its worker thread's local copies of its function's
//! series ([`prometheus::local`]), which the worker moves into the shared
//! series every [`FLUSH_EVERY`] and before it renders `/metrics`: the shared
//! counters are atomics that both workers would otherwise write on every
//! call, moving their cache lines between cores.

use std::cell::RefCell;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
};
use rustc_hash::FxHashMap;

/// How often worker threads publish their local counts (the most a scrape
/// can lag behind).
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// Calls of a routed function, by function and status class.
pub const INVOCATIONS: &str = "cpub_invocations_total";
/// Request in → response done, by function.
pub const INVOCATION_DURATION: &str = "cpub_invocation_duration_seconds";
/// Failures talking to an instance, by function and kind.
pub const UPSTREAM_ERRORS: &str = "cpub_upstream_errors_total";
/// Requests the proxy answered itself instead of forwarding, by reason.
pub const REJECTIONS: &str = "cpub_proxy_rejections_total";
/// Bytes of read buffers held by request bodies read before their lease.
pub const BODY_AHEAD_BYTES: &str = "cpub_proxy_body_ahead_bytes";
/// Reads of a body ahead of its lease stopped short by the process's budget.
pub const BODY_AHEAD_BUDGET_SPENT: &str = "cpub_proxy_body_ahead_budget_spent_total";

/// `content-type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Buckets of [`INVOCATION_DURATION`], in seconds: from a warm sub-millisecond
/// call to a cold start and calls near the longest function timeout.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Values of the `status_class` label, indexed by [`status_class`].
const STATUS_CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// Index into [`STATUS_CLASSES`]. A call with no response written (status 0:
/// the client went away first, nginx's 499) and any status outside 200–599
/// count as `4xx`.
fn status_class(status: u16) -> usize {
    match status / 100 {
        2 => 0,
        3 => 1,
        5 => 3,
        _ => 2,
    }
}

/// How talking to an instance failed (the `kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// No connection could be opened (refused, no route, connect timeout).
    Connect,
    /// An open connection broke before the response was complete.
    Reset,
    /// The function did not answer within its timeout.
    Timeout,
}

impl UpstreamError {
    pub const ALL: [Self; 3] = [Self::Connect, Self::Reset, Self::Timeout];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Reset => "reset",
            Self::Timeout => "timeout",
        }
    }
}

/// Why the proxy answered a request itself (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// A path outside `/fn/`.
    NotFound,
    /// `/fn/{name}` with a bad name or no such function.
    UnknownFunction,
    /// Request body over the function's limit.
    BodyTooLarge,
    /// Request body not received within the function's timeout (408).
    BodyTimeout,
    /// The function's queue of waiting calls is full.
    QueueFull,
    /// No instance became free within the queue timeout.
    QueueTimeout,
    /// The instance for the call failed to start.
    StartFailed,
    /// The container runtime failed.
    RuntimeUnavailable,
    /// The node had no room for another instance (503 + `retry-after`).
    NoCapacity,
    /// A request that is not valid HTTP/1.1 (or too large a head).
    BadRequest,
    /// A private function called without a key (401).
    MissingKey,
    /// A private function called with a wrong or revoked key (403).
    BadKey,
    /// A signed call refused, or an unsigned one where a signature is
    /// required (401).
    BadSignature,
}

impl Rejection {
    pub const ALL: [Self; 13] = [
        Self::NotFound,
        Self::UnknownFunction,
        Self::BodyTooLarge,
        Self::BodyTimeout,
        Self::QueueFull,
        Self::QueueTimeout,
        Self::StartFailed,
        Self::RuntimeUnavailable,
        Self::NoCapacity,
        Self::BadRequest,
        Self::MissingKey,
        Self::BadKey,
        Self::BadSignature,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::UnknownFunction => "unknown_function",
            Self::BodyTooLarge => "body_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::QueueFull => "queue_full",
            Self::QueueTimeout => "queue_timeout",
            Self::StartFailed => "start_failed",
            Self::RuntimeUnavailable => "runtime_unavailable",
            Self::NoCapacity => "no_capacity",
            Self::BadRequest => "bad_request",
            Self::MissingKey => "missing_key",
            Self::BadKey => "bad_key",
            Self::BadSignature => "bad_signature",
        }
    }
}

/// The registered metric families.
struct Families {
    invocations: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    /// One handle per [`Rejection`], in `Rejection::ALL` order.
    rejections: [IntCounter; Rejection::ALL.len()],
    body_ahead: IntGauge,
    body_ahead_spent: IntCounter,
}

static FAMILIES: LazyLock<Families> = LazyLock::new(|| {
    let invocations = IntCounterVec::new(
        Opts::new(
            INVOCATIONS,
            "Calls of a routed function, by status class of the answer.",
        ),
        &["function", "status_class"],
    )
    .expect("valid metric");
    let duration = HistogramVec::new(
        HistogramOpts::new(
            INVOCATION_DURATION,
            "Time from the request header to the end of the answer of a function call.",
        )
        .buckets(DURATION_BUCKETS.to_vec()),
        &["function"],
    )
    .expect("valid metric");
    let upstream_errors = IntCounterVec::new(
        Opts::new(
            UPSTREAM_ERRORS,
            "Failures talking to a function instance (connect, reset, timeout).",
        ),
        &["function", "kind"],
    )
    .expect("valid metric");
    let rejections_vec = IntCounterVec::new(
        Opts::new(
            REJECTIONS,
            "Requests the proxy answered itself instead of forwarding them.",
        ),
        &["reason"],
    )
    .expect("valid metric");
    let body_ahead = IntGauge::new(
        BODY_AHEAD_BYTES,
        "Bytes of read buffers held by request bodies being read before an instance is leased for them.",
    )
    .expect("valid metric");
    let body_ahead_spent = IntCounter::new(
        BODY_AHEAD_BUDGET_SPENT,
        "Request bodies read ahead of their lease only in part because the process's read-ahead budget was spent (the rest streamed after the lease).",
    )
    .expect("valid metric");
    let registry = prometheus::default_registry();
    for family in [
        Box::new(invocations.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(duration.clone()),
        Box::new(upstream_errors.clone()),
        Box::new(rejections_vec.clone()),
        Box::new(body_ahead.clone()),
        Box::new(body_ahead_spent.clone()),
    ] {
        registry
            .register(family)
            .expect("proxy metric names are registered once");
    }
    let rejections = Rejection::ALL.map(|r| rejections_vec.with_label_values(&[r.as_str()]));
    Families {
        invocations,
        duration,
        upstream_errors,
        rejections,
        body_ahead,
        body_ahead_spent,
    }
});

/// Registers the proxy's metrics (at start, so a name clash fails there and
/// every series with a fixed label set is exported from the first scrape).
pub fn init() {
    LazyLock::force(&FAMILIES);
}

/// The metric handles of one function, resolved once.
#[derive(Debug, Clone)]
pub struct FunctionMetrics {
    handles: Arc<Handles>,
}

#[derive(Debug)]
struct Handles {
    /// One per status class, in [`STATUS_CLASSES`] order.
    invocations: [IntCounter; STATUS_CLASSES.len()],
    duration: Histogram,
    /// One per kind, in `UpstreamError::ALL` order.
    upstream_errors: [IntCounter; UpstreamError::ALL.len()],
}

/// One thread's counts of one function, not yet in the shared series.
struct Local {
    /// Keeps the handles (and so the map key, their address) alive.
    handles: Arc<Handles>,
    invocations: [LocalIntCounter; STATUS_CLASSES.len()],
    duration: LocalHistogram,
    upstream_errors: [LocalIntCounter; UpstreamError::ALL.len()],
}

impl Local {
    fn new(handles: &Arc<Handles>) -> Self {
        Self {
            handles: Arc::clone(handles),
            invocations: std::array::from_fn(|i| handles.invocations[i].local()),
            duration: handles.duration.local(),
            upstream_errors: std::array::from_fn(|i| handles.upstream_errors[i].local()),
        }
    }

    fn flush(&mut self) {
        for c in &mut self.invocations {
            c.flush();
        }
        self.duration.flush();
        for c in &mut self.upstream_errors {
            c.flush();
        }
    }
}

thread_local! {
    /// This thread's local counts, by the address of their handles.
    static LOCAL: RefCell<FxHashMap<usize, Local>> = RefCell::new(FxHashMap::default());
}

impl FunctionMetrics {
    /// Handles of `function`'s series (created at zero if new).
    pub fn new(function: &str) -> Self {
        let f = &*FAMILIES;
        let handles = Handles {
            invocations: STATUS_CLASSES.map(|c| f.invocations.with_label_values(&[function, c])),
            duration: f.duration.with_label_values(&[function]),
            upstream_errors: UpstreamError::ALL
                .map(|k| f.upstream_errors.with_label_values(&[function, k.as_str()])),
        };
        Self {
            handles: Arc::new(handles),
        }
    }

    fn with_local(&self, record: impl FnOnce(&mut Local)) {
        LOCAL.with(|map| {
            let mut map = map.borrow_mut();
            let key = Arc::as_ptr(&self.handles) as usize;
            record(map.entry(key).or_insert_with(|| Local::new(&self.handles)));
        });
    }

    /// One finished call: its status (0 when no answer was written) and the
    /// time from request to end of answer. Counted in this thread until
    /// [`flush_local`].
    pub fn record_call(&self, status: u16, elapsed: Duration) {
        self.with_local(|l| {
            l.invocations[status_class(status)].inc();
            l.duration.observe(elapsed.as_secs_f64());
        });
    }

    /// `n` upstream failures of one kind.
    pub fn record_upstream_errors(&self, kind: UpstreamError, n: u64) {
        if n > 0 {
            self.with_local(|l| l.upstream_errors[kind as usize].inc_by(n));
        }
    }
}

/// Moves this thread's local counts into the shared series, and forgets
/// functions that are no longer routed anywhere.
pub fn flush_local() {
    LOCAL.with(|map| {
        map.borrow_mut().retain(|_, local| {
            local.flush();
            Arc::strong_count(&local.handles) > 1
        });
    });
}

/// One request the proxy answered itself.
pub fn record_rejection(reason: Rejection) {
    FAMILIES.rejections[reason as usize].inc();
}

/// The gauge of bytes held by bodies read ahead of their lease: the
/// engine's account of its read-ahead budget, not only its export.
pub fn body_ahead() -> &'static IntGauge {
    &FAMILIES.body_ahead
}

/// One body whose read ahead the budget cut short.
pub fn record_body_ahead_budget_spent() {
    FAMILIES.body_ahead_spent.inc();
}

/// Bodies whose read ahead the budget cut short, so far.
pub fn body_ahead_budget_spent() -> u64 {
    FAMILIES.body_ahead_spent.get()
}

/// Drops the series of a function that is no longer routed, so deleted
/// functions do not stay in every scrape. Handles still held by calls in
/// flight keep working; their last counts are not exported.
pub fn forget_function(function: &str) {
    let f = &*FAMILIES;
    for class in STATUS_CLASSES {
        let _ = f.invocations.remove_label_values(&[function, class]);
    }
    let _ = f.duration.remove_label_values(&[function]);
    for kind in UpstreamError::ALL {
        let _ = f
            .upstream_errors
            .remove_label_values(&[function, kind.as_str()]);
    }
}

/// The default registry (proxy and pool metrics) in the Prometheus text
/// format, after this thread's local counts are flushed (the other
/// workers' are at most [`FLUSH_EVERY`] old).
pub fn render() -> Vec<u8> {
    flush_local();
    let mut out = Vec::with_capacity(16 * 1024);
    prometheus::TextEncoder::new()
        .encode(&prometheus::gather(), &mut out)
        .expect("encoding into a Vec cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text() -> String {
        String::from_utf8(render()).unwrap()
    }

    #[test]
    fn enum_order_matches_handle_order() {
        for (i, kind) in UpstreamError::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, i, "{kind:?}");
        }
        for (i, reason) in Rejection::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, i, "{reason:?}");
        }
    }

    #[test]
    fn status_classes() {
        let class = |s| STATUS_CLASSES[status_class(s)];
        assert_eq!(class(200), "2xx");
        assert_eq!(class(204), "2xx");
        assert_eq!(class(304), "3xx");
        assert_eq!(class(404), "4xx");
        assert_eq!(class(429), "4xx");
        assert_eq!(class(0), "4xx", "client went away: 499");
        assert_eq!(class(502), "5xx");
        assert_eq!(class(504), "5xx");
    }

    #[test]
    fn recorded_call_is_rendered() {
        init();
        let m = FunctionMetrics::new("render-test");
        m.record_call(200, Duration::from_millis(3));
        m.record_call(200, Duration::from_millis(40));
        m.record_call(503, Duration::from_millis(1));
        m.record_upstream_errors(UpstreamError::Connect, 1);
        m.record_upstream_errors(UpstreamError::Timeout, 0);
        let out = text();
        for line in [
            "# TYPE cpub_invocations_total counter",
            r#"cpub_invocations_total{function="render-test",status_class="2xx"} 2"#,
            r#"cpub_invocations_total{function="render-test",status_class="5xx"} 1"#,
            r#"cpub_invocations_total{function="render-test",status_class="3xx"} 0"#,
            "# TYPE cpub_invocation_duration_seconds histogram",
            r#"cpub_invocation_duration_seconds_bucket{function="render-test",le="0.005"} 2"#,
            r#"cpub_invocation_duration_seconds_bucket{function="render-test",le="0.05"} 3"#,
            r#"cpub_invocation_duration_seconds_count{function="render-test"} 3"#,
            r#"cpub_upstream_errors_total{function="render-test",kind="connect"} 1"#,
            r#"cpub_upstream_errors_total{function="render-test",kind="timeout"} 0"#,
            r#"cpub_upstream_errors_total{function="render-test",kind="reset"} 0"#,
        ] {
            assert!(
                out.lines().any(|l| l == line),
                "missing {line:?} in:\n{out}"
            );
        }
    }

    #[test]
    fn every_rejection_reason_is_exported() {
        init();
        record_rejection(Rejection::QueueFull);
        let out = text();
        for reason in Rejection::ALL {
            let prefix = format!(
                "cpub_proxy_rejections_total{{reason=\"{}\"}} ",
                reason.as_str()
            );
            assert!(
                out.lines().any(|l| l.starts_with(&prefix)),
                "{prefix} in:\n{out}"
            );
        }
        let full = out
            .lines()
            .find_map(|l| l.strip_prefix(r#"cpub_proxy_rejections_total{reason="queue_full"} "#))
            .unwrap();
        assert!(full.parse::<u64>().unwrap() >= 1, "{full}");
    }

    #[test]
    fn forgotten_functions_leave_the_scrape() {
        init();
        let m = FunctionMetrics::new("forget-test");
        m.record_call(200, Duration::from_millis(1));
        assert!(text().contains(r#"function="forget-test""#));
        forget_function("forget-test");
        assert!(!text().contains(r#"function="forget-test""#));
        // A call still in flight may record into the old handles.
        m.record_call(200, Duration::from_millis(1));
        // A function routed again starts new series.
        FunctionMetrics::new("forget-test").record_call(404, Duration::from_millis(1));
        let out = text();
        assert!(
            out.contains(r#"cpub_invocations_total{function="forget-test",status_class="4xx"} 1"#)
        );
        assert!(
            out.contains(r#"cpub_invocations_total{function="forget-test",status_class="2xx"} 0"#)
        );
    }
}
