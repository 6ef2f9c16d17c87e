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
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec,
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
    /// `cpub_node_budget_memory_bytes`: the node's memory budget (the sum
    /// of the live instances' memory limits may not pass it).
    pub node_budget_memory: IntGauge,
    /// `cpub_node_budget_instances`: live instances the node may hold.
    pub node_budget_instances: IntGauge,
    /// `cpub_node_memory_reserved_bytes`: the sum of the memory limits of
    /// the live (starting, running, paused) instances.
    pub node_memory: IntGauge,
    /// `cpub_node_instances`: live instances (starting, running, paused).
    pub node_instances: IntGauge,
    /// `cpub_node_evictions_total{reason,state}`: idle instances stopped
    /// to make room for a start; `reason` is the part of the budget that
    /// was short (`memory`, `instances`, `addresses`), `state` what the
    /// instance was (`paused`, `idle`).
    pub node_evictions: IntCounterVec,
    /// `cpub_node_capacity_refusals_total`: starts that found no room even
    /// after eviction (their calls got 503).
    pub node_refusals: IntCounter,
    /// `cpub_keep_warm_total{function,result}`: predictive keep-warm. `kept`: a
    /// paused instance kept past its idle stop; `hit`: a call resumed one;
    /// `miss`: a cold start of a function keep-warm wanted warm (called
    /// within its window); `evicted`: a kept instance stopped for room;
    /// `expired`: one removed after its window passed without a call.
    pub keep_warm: IntCounterVec,
}

/// Buckets from 1 ms to ~30 s for start and queue times.
const TIME_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0,
    30.0,
];

/// The reasons of `cpub_pool_start_failures_total`.
pub const START_FAILURE_REASONS: [&str; 3] = ["capacity", "runtime", "not_ready"];

impl PoolMetrics {
    /// Creates `function`'s failure series at 0 (failed starts and resumes,
    /// crashes, start failures by reason), so that they exist before the
    /// first failure: Prometheus' `increase()` cannot see the first
    /// increment of a series that appears at 1, and an alert on a
    /// function's first failures would miss them.
    pub fn init_function(&self, function: &str) {
        for kind in ["cold", "paused"] {
            self.starts.with_label_values(&[function, kind, "error"]);
        }
        self.crashes.with_label_values(&[function]);
        for reason in START_FAILURE_REASONS {
            self.start_failures.with_label_values(&[function, reason]);
        }
    }
}

pub static METRICS: LazyLock<PoolMetrics> = LazyLock::new(|| {
    PoolMetrics {
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
    node_budget_memory: register_int_gauge!(
        "cpub_node_budget_memory_bytes",
        "Memory budget of the node: the most the live instances' memory limits may add up to"
    )
    .expect("register cpub_node_budget_memory_bytes"),
    node_budget_instances: register_int_gauge!(
        "cpub_node_budget_instances",
        "Live instances the node may hold"
    )
    .expect("register cpub_node_budget_instances"),
    node_memory: register_int_gauge!(
        "cpub_node_memory_reserved_bytes",
        "Sum of the memory limits of the live instances (starting, running, paused)"
    )
    .expect("register cpub_node_memory_reserved_bytes"),
    node_instances: register_int_gauge!(
        "cpub_node_instances",
        "Live instances (starting, running, paused)"
    )
    .expect("register cpub_node_instances"),
    node_evictions: register_int_counter_vec!(
        Opts::new(
            "cpub_node_evictions_total",
            "Idle instances stopped to make room for a start, by the budget part that was short and their state"
        ),
        &["reason", "state"]
    )
    .expect("register cpub_node_evictions_total"),
    node_refusals: register_int_counter!(
        "cpub_node_capacity_refusals_total",
        "Starts that found no room on the node even after eviction"
    )
    .expect("register cpub_node_capacity_refusals_total"),
    keep_warm: register_int_counter_vec!(
        Opts::new(
            "cpub_keep_warm_total",
            "Predictive keep-warm: instances kept, hits, misses, evictions, expiries"
        ),
        &["function", "result"]
    )
    .expect("register cpub_keep_warm_total"),
}
});

#[cfg(test)]
mod tests {
    use super::*;

    /// The samples of `name` for `function` in a scrape of the default
    /// registry, as (labels, value).
    fn samples(name: &str, function: &str) -> Vec<(Vec<(String, String)>, f64)> {
        prometheus::gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "function" && l.value() == function)
            })
            .map(|m| {
                let labels = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_owned(), l.value().to_owned()))
                    .collect();
                (labels, m.get_counter().get_value())
            })
            .collect()
    }

    #[test]
    fn a_function_has_its_failure_series_at_zero_before_any_failure() {
        let function = "metrics-unit-fn";
        assert!(samples("cpub_pool_start_failures_total", function).is_empty());
        METRICS.init_function(function);
        let failures = samples("cpub_pool_start_failures_total", function);
        assert_eq!(failures.len(), START_FAILURE_REASONS.len(), "{failures:?}");
        for reason in START_FAILURE_REASONS {
            assert!(
                failures.iter().any(|(labels, v)| *v == 0.0
                    && labels.contains(&("reason".to_owned(), reason.to_owned()))),
                "{reason}: {failures:?}"
            );
        }
        assert_eq!(
            samples("cpub_pool_instance_crashes_total", function)
                .iter()
                .map(|(_, v)| *v)
                .collect::<Vec<_>>(),
            [0.0]
        );
        let starts = samples("cpub_cold_starts_total", function);
        assert_eq!(starts.len(), 2, "{starts:?}");
        assert!(
            starts.iter().all(|(labels, v)| *v == 0.0
                && labels.contains(&("result".to_owned(), "error".to_owned())))
        );
    }
}
