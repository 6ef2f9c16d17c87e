//! The pool's Prometheus metrics, registered once in the default registry.
//! Label values are bounded: function names, kinds, states and reasons —
//! never an instance id or a path.
//!
//! Calls the pool refuses (queue full, queue timeout, failed start or
//! crash) are counted once, by the proxy that answers them:
//! `cpub_proxy_rejections_total{reason}` (`proxy/src/metrics.rs`); per
//! function they show in `cpub_invocations_total{function,status_class}`.

use std::sync::LazyLock;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, register_histogram_vec,
    register_int_counter_vec, register_int_gauge_vec,
};

/// Every pool metric.
pub struct PoolMetrics {
    /// `cpub_cold_starts_total{function,kind,result}`: starts (`cold`) and
    /// resumes (`paused`), `ok` or `error`.
    pub starts: IntCounterVec,
    /// `cpub_cold_start_duration_seconds{kind}`: start → ready, or resume.
    pub start_seconds: HistogramVec,
    /// `cpub_instances{function,state}`: `starting`, `ready`, `paused`.
    pub instances: IntGaugeVec,
    /// `cpub_queue_wait_seconds{function}`: how long calls waited for a
    /// slot (zero for a free slot). Per function so that a lease writes
    /// only its function's series (resolved once per instance set).
    pub queue_wait: HistogramVec,
    /// `cpub_in_flight_requests{function}`: leases held.
    pub in_flight: IntGaugeVec,
    /// `cpub_pool_instance_crashes_total{function}`: instances whose
    /// process exited on its own, while starting or after.
    pub crashes: IntCounterVec,
    /// `cpub_pool_start_failures_total{function,reason}`: starts that
    /// failed other than by a crash: `capacity` (no room on the node),
    /// `runtime` (the engine failed), `not_ready` (the readiness probe).
    /// What the caller is told is short; the details are in the log.
    pub start_failures: IntCounterVec,
}

/// Buckets from 1 ms to ~30 s for start and queue times.
const TIME_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0,
    30.0,
];

pub static METRICS: LazyLock<PoolMetrics> = LazyLock::new(|| PoolMetrics {
    starts: register_int_counter_vec!(
        Opts::new(
            "cpub_cold_starts_total",
            "Instance starts (cold) and resumes (paused) by result"
        ),
        &["function", "kind", "result"]
    )
    .expect("register cpub_cold_starts_total"),
    start_seconds: register_histogram_vec!(
        HistogramOpts::new(
            "cpub_cold_start_duration_seconds",
            "Time from start (or resume) request to a ready instance"
        )
        .buckets(TIME_BUCKETS.to_vec()),
        &["kind"]
    )
    .expect("register cpub_cold_start_duration_seconds"),
    instances: register_int_gauge_vec!(
        Opts::new("cpub_instances", "Function instances by state"),
        &["function", "state"]
    )
    .expect("register cpub_instances"),
    queue_wait: register_histogram_vec!(
        HistogramOpts::new(
            "cpub_queue_wait_seconds",
            "Time calls waited for a free instance slot"
        )
        .buckets(TIME_BUCKETS.to_vec()),
        &["function"]
    )
    .expect("register cpub_queue_wait_seconds"),
    in_flight: register_int_gauge_vec!(
        Opts::new("cpub_in_flight_requests", "Calls holding an instance slot"),
        &["function"]
    )
    .expect("register cpub_in_flight_requests"),
    crashes: register_int_counter_vec!(
        Opts::new(
            "cpub_pool_instance_crashes_total",
            "Instances whose process exited on its own (while starting or serving)"
        ),
        &["function"]
    )
    .expect("register cpub_pool_instance_crashes_total"),
    start_failures: register_int_counter_vec!(
        Opts::new(
            "cpub_pool_start_failures_total",
            "Instance starts that failed other than by a crash, by reason"
        ),
        &["function", "reason"]
    )
    .expect("register cpub_pool_start_failures_total"),
});
