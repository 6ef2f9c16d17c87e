//! The control plane's Prometheus metrics, each name defined once here, and
//! `GET /metrics` (text format, no token: like the proxy's, it holds no
//! function's data but counts; bind the control plane to a private
//! address). The access log of API requests is written by
//! `routes::request_span`, which also counts each request here.

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::state::AppState;

struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    deploys: IntCounterVec,
    build_duration: HistogramVec,
    route_watchers: IntGauge,
    db_connections: IntGaugeVec,
    db_max_connections: IntGauge,
    records_ingested: IntCounter,
    records_skipped: IntCounter,
    batches_duplicate: IntCounter,
    partitions_dropped: IntCounter,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "cpub_control_http_requests_total",
                "API requests answered, by route template, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "cpub_control_http_request_duration_seconds",
                "Time to answer API requests, by route template",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        let deploys = IntCounterVec::new(
            Opts::new(
                "cpub_control_deploys_total",
                "Deployments that reached the build, by result (built, failed, unavailable)",
            ),
            &["result"],
        )
        .expect("valid metric");
        let build_duration = HistogramVec::new(
            HistogramOpts::new(
                "cpub_control_build_duration_seconds",
                "Image build time, by result",
            )
            .buckets(vec![
                0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
            ]),
            &["result"],
        )
        .expect("valid metric");
        let route_watchers = IntGauge::new(
            "cpub_control_route_watchers",
            "Proxies following the route table (heard from in the last 90 s)",
        )
        .expect("valid metric");
        let db_connections = IntGaugeVec::new(
            Opts::new(
                "cpub_control_db_connections",
                "PostgreSQL connections of the control plane's pool, by state (idle, used)",
            ),
            &["state"],
        )
        .expect("valid metric");
        let db_max_connections = IntGauge::new(
            "cpub_control_db_max_connections",
            "Size limit of the control plane's PostgreSQL pool",
        )
        .expect("valid metric");
        let records_ingested = IntCounter::new(
            "cpub_control_execution_records_ingested_total",
            "Execution records stored",
        )
        .expect("valid metric");
        let records_skipped = IntCounter::new(
            "cpub_control_execution_records_skipped_total",
            "Execution records not stored: outside the retention window",
        )
        .expect("valid metric");
        let batches_duplicate = IntCounter::new(
            "cpub_control_execution_batches_duplicate_total",
            "Execution record batches received again and not stored twice",
        )
        .expect("valid metric");
        let partitions_dropped = IntCounter::new(
            "cpub_control_execution_partitions_dropped_total",
            "Daily partitions of execution records dropped by the retention",
        )
        .expect("valid metric");
        for c in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(deploys.clone()),
            Box::new(build_duration.clone()),
            Box::new(route_watchers.clone()),
            Box::new(db_connections.clone()),
            Box::new(db_max_connections.clone()),
            Box::new(records_ingested.clone()),
            Box::new(records_skipped.clone()),
            Box::new(batches_duplicate.clone()),
            Box::new(partitions_dropped.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        for result in ["built", "failed", "unavailable"] {
            deploys.with_label_values(&[result]);
        }
        Metrics {
            registry,
            http_requests,
            http_duration,
            deploys,
            build_duration,
            route_watchers,
            db_connections,
            db_max_connections,
            records_ingested,
            records_skipped,
            batches_duplicate,
            partitions_dropped,
        }
    })
}

/// The route template of a request path, so the label has a bounded set
/// of values (a function's name never becomes one).
pub fn route_of(path: &str) -> &'static str {
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return match path {
            "/healthz" => "/healthz",
            "/metrics" => "/metrics",
            _ => "other",
        };
    };
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        ["auth", "login"] => "/api/v1/auth/login",
        ["functions"] => "/api/v1/functions",
        ["functions", _] => "/api/v1/functions/{name}",
        ["functions", _, "deployments"] => "/api/v1/functions/{name}/deployments",
        ["functions", _, "crashes"] => "/api/v1/functions/{name}/crashes",
        ["functions", _, "executions"] => "/api/v1/functions/{name}/executions",
        ["functions", _, "stats"] => "/api/v1/functions/{name}/stats",
        ["functions", _, "logs"] => "/api/v1/functions/{name}/logs",
        ["routes"] => "/api/v1/routes",
        ["executions"] => "/api/v1/executions",
        ["status"] => "/api/v1/status",
        ["nodes", _, "status"] => "/api/v1/nodes/{node}/status",
        _ => "other",
    }
}

/// Counts one answered API request.
pub fn record_request(route: &str, method: &str, status: u16, elapsed: Duration) {
    let m = metrics();
    let method = match method {
        "GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "PATCH" | "OPTIONS" => method,
        _ => "other",
    };
    m.http_requests
        .with_label_values(&[route, method, &status.to_string()])
        .inc();
    // The route watch long-polls: its duration is the wait, not work.
    if route != "/api/v1/routes" {
        m.http_duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
    }
}

/// Counts a build that ran, by result (`built`, `failed`, `unavailable`).
pub fn record_build(result: &str, elapsed: Duration) {
    let m = metrics();
    m.deploys.with_label_values(&[result]).inc();
    m.build_duration
        .with_label_values(&[result])
        .observe(elapsed.as_secs_f64());
}

/// Counts stored, skipped and duplicate execution records.
pub fn record_ingest(stored: u64, skipped: u64, duplicate: bool) {
    let m = metrics();
    m.records_ingested.inc_by(stored);
    m.records_skipped.inc_by(skipped);
    if duplicate {
        m.batches_duplicate.inc();
    }
}

/// Counts dropped partitions.
pub fn record_partitions_dropped(n: u64) {
    metrics().partitions_dropped.inc_by(n);
}

/// Registers every metric (so a scrape shows them from the start).
pub fn init() {
    metrics();
}

/// `GET /metrics`.
pub async fn render(State(state): State<AppState>) -> Response {
    let m = metrics();
    m.route_watchers.set(state.watchers.list().len() as i64);
    let size = i64::from(state.db.size());
    let idle = state.db.num_idle() as i64;
    m.db_connections.with_label_values(&["idle"]).set(idle);
    m.db_connections
        .with_label_values(&["used"])
        .set((size - idle).max(0));
    m.db_max_connections
        .set(i64::from(state.db.options().get_max_connections()));
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&m.registry.gather(), &mut out) {
        tracing::warn!(error = %e, "cannot render the metrics");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_have_bounded_labels() {
        assert_eq!(
            route_of("/api/v1/functions/hello"),
            "/api/v1/functions/{name}"
        );
        assert_eq!(
            route_of("/api/v1/functions/hello/executions"),
            "/api/v1/functions/{name}/executions"
        );
        assert_eq!(route_of("/api/v1/functions/x/y/z"), "other");
        assert_eq!(route_of("/etc/passwd"), "other");
        assert_eq!(route_of("/healthz"), "/healthz");
        assert_eq!(route_of("/api/v1/routes"), "/api/v1/routes");
    }

    #[test]
    fn recorded_requests_are_rendered() {
        record_request("/api/v1/functions", "GET", 200, Duration::from_millis(3));
        record_request("/api/v1/functions", "BREW", 401, Duration::from_millis(3));
        record_build("built", Duration::from_secs(2));
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&metrics().registry.gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(
            "cpub_control_http_requests_total{method=\"GET\",route=\"/api/v1/functions\",status=\"200\"}"
        ), "{text}");
        assert!(text.contains(
            "cpub_control_http_requests_total{method=\"other\",route=\"/api/v1/functions\",status=\"401\"}"
        ));
        assert!(text.contains("cpub_control_build_duration_seconds_count{result=\"built\"}"));
        assert!(text.contains("cpub_control_deploys_total{result=\"failed\"} 0"));
    }
}
