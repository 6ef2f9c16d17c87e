//! The numbers of a run: per-worker `Stats` merged into a `Report`, printed
//! as a human table or serialised as JSON with stable keys.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use comfy_table::{Cell, CellAlignment, Table, presets::NOTHING};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::conn::{Failure, Outcome};

/// Highest latency the histogram tracks exactly (1 h, in µs); above is clamped.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;

/// Errors by kind. `total` is the sum of the others.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// All errors.
    pub total: u64,
    /// TCP connect or handshake failed (refused, unreachable, connect timeout).
    pub connect: u64,
    /// No complete response within the request timeout.
    pub timeout: u64,
    /// Connection broke while sending or receiving.
    pub io: u64,
    /// Responses with status 400–499.
    pub status_4xx: u64,
    /// Responses with status 500–599.
    pub status_5xx: u64,
}

impl ErrorCounts {
    fn add(&mut self, other: &Self) {
        self.total += other.total;
        self.connect += other.connect;
        self.timeout += other.timeout;
        self.io += other.io;
        self.status_4xx += other.status_4xx;
        self.status_5xx += other.status_5xx;
    }
}

/// Latency percentiles in milliseconds, over every request that got a whole
/// response (any status) or timed out. Closed loop: from the send; open loop:
/// from the intended send time.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Smallest.
    pub min: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// Largest.
    pub max: f64,
}

/// Open-loop accounting: how well the generator kept its schedule.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OpenLoop {
    /// Requested rate, requests per second.
    pub target_rate: f64,
    /// Requests whose intended send time fell inside the run.
    pub scheduled: u64,
    /// Requests actually sent.
    pub sent: u64,
    /// Sent more than 1 ms after their intended time: every connection was
    /// busy, the generator was short of CPU, or its worker paced on tokio's
    /// timer (`coarse_timers`); their latency includes that wait.
    pub late: u64,
    /// From each request's intended send time to its send: the generator's
    /// own timer and scheduling, plus any wait for a free connection. Every
    /// latency includes it; a precise generator keeps its p50 to tens of µs.
    #[serde(default)]
    pub send_lag_ms: Latency,
    /// Workers that got no timerfd, or whose timerfd failed, and paced on
    /// tokio's millisecond timer (0 normally).
    #[serde(default)]
    pub coarse_timers: u64,
    /// Never sent: the run ended while every connection was still busy.
    pub dropped: u64,
}

/// The result of a run. Keys are stable: scripts read the JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Scenario name, if the run came from a scenario file.
    pub name: Option<String>,
    /// What was loaded.
    pub target: String,
    /// `closed` or `open`.
    pub mode: String,
    /// Connections (concurrency cap).
    pub connections: usize,
    /// Wall time from the first request to the last response, seconds.
    pub elapsed_s: f64,
    /// Requests that completed: responses plus errors.
    pub requests: u64,
    /// Responses with status below 400.
    pub ok: u64,
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// Responses by status code.
    pub status: BTreeMap<String, u64>,
    /// Completed requests per second of elapsed time.
    pub throughput_rps: f64,
    /// Request body bytes sent.
    pub bytes_sent: u64,
    /// Response body bytes received.
    pub bytes_received: u64,
    /// TCP connections opened (keep-alive keeps this near `connections`).
    pub connects: u64,
    /// Latency percentiles, milliseconds.
    pub latency_ms: Latency,
    /// Open-loop schedule accounting; `null` in closed loop.
    pub open_loop: Option<OpenLoop>,
}

/// What one worker counted; merged into a [`Report`] at the end.
pub(crate) struct Stats {
    pub(crate) latency_us: Histogram<u64>,
    pub(crate) requests: u64,
    pub(crate) ok: u64,
    pub(crate) errors: ErrorCounts,
    pub(crate) status: BTreeMap<u16, u64>,
    pub(crate) bytes_sent: u64,
    pub(crate) bytes_received: u64,
    pub(crate) connects: u64,
    pub(crate) sent: u64,
    pub(crate) late: u64,
    /// Open loop: intended send time to send, µs.
    pub(crate) send_lag_us: Histogram<u64>,
    pub(crate) coarse_timers: u64,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3)
                .expect("valid histogram bounds"),
            requests: 0,
            ok: 0,
            errors: ErrorCounts::default(),
            status: BTreeMap::new(),
            bytes_sent: 0,
            bytes_received: 0,
            connects: 0,
            sent: 0,
            late: 0,
            send_lag_us: Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3)
                .expect("valid histogram bounds"),
            coarse_timers: 0,
        }
    }

    /// Counts one request; returns whether it was an error.
    pub(crate) fn record(&mut self, outcome: Outcome, latency: Duration, body_len: u64) -> bool {
        self.requests += 1;
        self.bytes_sent += body_len;
        let latency_us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let is_error = match outcome {
            Outcome::Response { status, bytes } => {
                self.latency_us.saturating_record(latency_us);
                self.bytes_received += bytes;
                *self.status.entry(status).or_default() += 1;
                match status {
                    400..=499 => self.errors.status_4xx += 1,
                    500.. => self.errors.status_5xx += 1,
                    _ => self.ok += 1,
                }
                status >= 400
            }
            Outcome::Failed(Failure::Timeout) => {
                self.latency_us.saturating_record(latency_us);
                self.errors.timeout += 1;
                true
            }
            Outcome::Failed(Failure::Connect) => {
                self.errors.connect += 1;
                true
            }
            Outcome::Failed(Failure::Io) => {
                self.errors.io += 1;
                true
            }
        };
        if is_error {
            self.errors.total += 1;
        }
        is_error
    }

    pub(crate) fn merge(&mut self, other: Self) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms with the same bounds");
        self.requests += other.requests;
        self.ok += other.ok;
        self.errors.add(&other.errors);
        for (status, n) in other.status {
            *self.status.entry(status).or_default() += n;
        }
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.connects += other.connects;
        self.sent += other.sent;
        self.late += other.late;
        self.send_lag_us
            .add(&other.send_lag_us)
            .expect("histograms with the same bounds");
        self.coarse_timers += other.coarse_timers;
    }

    /// Counts one open-loop request's send lag.
    pub(crate) fn send_lag(&mut self, lag: Duration) {
        let us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX).max(1);
        self.send_lag_us.saturating_record(us);
    }

    pub(crate) fn send_lag_ms(&self) -> Latency {
        percentiles_ms(&self.send_lag_us)
    }

    pub(crate) fn latency(&self) -> Latency {
        percentiles_ms(&self.latency_us)
    }
}

/// `h`'s percentiles (µs recorded) in milliseconds; zeros when empty.
fn percentiles_ms(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    let ms = |us: u64| round3(us as f64 / 1_000.0);
    Latency {
        min: ms(h.min()),
        mean: round3(h.mean() / 1_000.0),
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p99: ms(h.value_at_quantile(0.99)),
        p99_9: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1_000.0).round() / 1_000.0
}

impl Report {
    /// The human-readable summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}{} — {} loop, {} connections, {:.2} s",
            self.name
                .as_deref()
                .map(|n| format!("{n}: "))
                .unwrap_or_default(),
            self.target,
            self.mode,
            self.connections,
            self.elapsed_s
        );
        let mut table = Table::new();
        table.load_preset(NOTHING);
        let mut row = |k: &str, v: String| {
            table.add_row(vec![
                Cell::new(k),
                Cell::new(v).set_alignment(CellAlignment::Right),
            ]);
        };
        row("requests", self.requests.to_string());
        row("ok", self.ok.to_string());
        row("throughput", format!("{:.1} req/s", self.throughput_rps));
        if let Some(open) = &self.open_loop {
            row("target rate", format!("{:.1} req/s", open.target_rate));
            row(
                "scheduled / sent",
                format!("{} / {}", open.scheduled, open.sent),
            );
            row(
                "late / dropped",
                format!("{} / {}", open.late, open.dropped),
            );
            let lag = &open.send_lag_ms;
            row(
                "send lag p50 / p99",
                format!("{:.3} / {:.3} ms", lag.p50, lag.p99),
            );
            if open.coarse_timers > 0 {
                row("workers on the 1 ms timer", open.coarse_timers.to_string());
            }
        }
        let l = &self.latency_ms;
        for (k, v) in [
            ("latency p50", l.p50),
            ("latency p90", l.p90),
            ("latency p99", l.p99),
            ("latency p99.9", l.p99_9),
            ("latency max", l.max),
            ("latency mean", l.mean),
        ] {
            row(k, format!("{v:.3} ms"));
        }
        let e = &self.errors;
        row("errors", e.total.to_string());
        for (k, v) in [
            ("  connect", e.connect),
            ("  timeout", e.timeout),
            ("  io", e.io),
            ("  status 4xx", e.status_4xx),
            ("  status 5xx", e.status_5xx),
        ] {
            if v > 0 {
                row(k, v.to_string());
            }
        }
        let statuses: Vec<String> = self
            .status
            .iter()
            .map(|(s, n)| format!("{s}×{n}"))
            .collect();
        row(
            "status",
            if statuses.is_empty() {
                "-".into()
            } else {
                statuses.join(" ")
            },
        );
        row("connects", self.connects.to_string());
        row(
            "bytes sent / received",
            format!("{} / {}", self.bytes_sent, self.bytes_received),
        );
        let _ = writeln!(out, "{table}");
        out
    }
}
