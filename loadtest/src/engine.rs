//! The load engine: `connections` workers on the tokio runtime, each with
//! its own keep-alive connections. Closed loop: a worker sends again as soon
//! as a response ends. Open loop: workers take the next request index from a
//! shared counter; request `i` is due at `t0 + i / rate` and its latency runs
//! from that time, so a request that waited for a free connection shows the
//! wait (no coordinated omission). Each open-loop worker waits for that time
//! on its own timerfd ([`crate::pacer`]): tokio's millisecond timer would
//! add up to a millisecond of the generator's own to every latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::{Instant, sleep};

use crate::conn::{Connections, Failure, Outcome};
use crate::pacer::Pacer;
use crate::plan::{MAX_CONNECTIONS, Mode, Plan};
use crate::progress::{Counters, ProgressLine};
use crate::report::{OpenLoop, Report, Stats};
use crate::sampler::Rng;

/// A request sent this long after its intended time counts as late.
const LATE_AFTER: Duration = Duration::from_millis(1);
/// Pause after a failed connect in closed loop, so a dead target is not spun on.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

struct Shared {
    plan: Plan,
    t0: Instant,
    /// No request starts at or after this instant.
    stop_at: Instant,
    /// Next request index (closed loop: a count; open loop: the schedule slot).
    next: AtomicU64,
    counters: Arc<Counters>,
}

/// Runs `plan` (warm-up first, if any) and reports the measured phase.
pub async fn run(plan: Plan) -> Report {
    if let Some(warmup) = plan.warmup {
        let mut warm = plan.clone();
        warm.duration = Some(warmup);
        warm.requests = None;
        warm.progress = false;
        let _ = phase(warm).await;
    }
    phase(plan).await
}

async fn phase(mut plan: Plan) -> Report {
    plan.connections = plan.connections.clamp(1, MAX_CONNECTIONS);
    let bound = plan.time_bound();
    let t0 = Instant::now();
    let counters = Arc::new(Counters::default());
    let progress = plan
        .progress
        .then(|| ProgressLine::start(counters.clone(), t0, bound));
    let shared = Arc::new(Shared {
        plan,
        t0,
        stop_at: t0 + bound,
        next: AtomicU64::new(0),
        counters,
    });
    let workers: Vec<_> = (0..shared.plan.connections)
        .map(|id| tokio::spawn(worker(shared.clone(), id as u64)))
        .collect();
    let mut total = Stats::new();
    for w in workers {
        // A worker only ends by returning; a panic here is a bug worth seeing.
        total.merge(w.await.expect("load worker panicked"));
    }
    let elapsed = t0.elapsed();
    drop(progress);
    build_report(&shared.plan, total, elapsed, bound)
}

async fn worker(shared: Arc<Shared>, id: u64) -> Stats {
    let plan = &shared.plan;
    let mut stats = Stats::new();
    let mut conns = Connections::default();
    let mut rng = Rng::new(plan.seed ^ id.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let body_len = plan.request.body.len() as u64;
    let mut pacer = matches!(plan.mode, Mode::Open { .. }).then(Pacer::new);
    loop {
        let index = shared.next.fetch_add(1, Ordering::Relaxed);
        if plan.requests.is_some_and(|limit| index >= limit) {
            break;
        }
        let start = match plan.mode {
            Mode::Closed => Instant::now(),
            Mode::Open { rate } => {
                let intended = shared.t0 + Duration::from_secs_f64(index as f64 / rate);
                if intended >= shared.stop_at {
                    break;
                }
                if let Some(pacer) = &mut pacer {
                    pacer.sleep_until(intended).await;
                }
                intended
            }
        };
        if Instant::now() >= shared.stop_at {
            break;
        }
        let targets = plan.targets.targets();
        let target = &targets[plan.targets.sampler().sample(&mut rng)];
        stats.sent += 1;
        if plan.mode != Mode::Closed {
            let lag = start.elapsed();
            stats.send_lag(lag);
            if lag > LATE_AFTER {
                stats.late += 1;
            }
        }
        let outcome = conns
            .attempt(target, &plan.request, Instant::now() + plan.timeout)
            .await;
        let is_error = stats.record(outcome, start.elapsed(), body_len);
        shared.counters.count(is_error);
        if plan.mode == Mode::Closed && outcome == Outcome::Failed(Failure::Connect) {
            sleep(CONNECT_BACKOFF).await;
        }
    }
    stats.connects = conns.opened;
    if pacer.is_some_and(|p| !p.is_precise()) {
        stats.coarse_timers += 1;
    }
    stats
}

fn build_report(plan: &Plan, stats: Stats, elapsed: Duration, bound: Duration) -> Report {
    let elapsed_s = elapsed.as_secs_f64();
    let open_loop = match plan.mode {
        Mode::Closed => None,
        Mode::Open { rate } => {
            let in_window = (bound.as_secs_f64() * rate).ceil() as u64;
            let scheduled = plan.requests.map_or(in_window, |n| n.min(in_window));
            Some(OpenLoop {
                target_rate: rate,
                scheduled,
                sent: stats.sent,
                late: stats.late,
                send_lag_ms: stats.send_lag_ms(),
                coarse_timers: stats.coarse_timers,
                dropped: scheduled.saturating_sub(stats.sent),
            })
        }
    };
    Report {
        name: plan.name.clone(),
        target: plan.targets.description().to_owned(),
        mode: match plan.mode {
            Mode::Closed => "closed",
            Mode::Open { .. } => "open",
        }
        .to_owned(),
        connections: plan.connections,
        elapsed_s: (elapsed_s * 1_000.0).round() / 1_000.0,
        requests: stats.requests,
        ok: stats.ok,
        errors: stats.errors,
        status: stats
            .status
            .iter()
            .map(|(s, n)| (s.to_string(), *n))
            .collect(),
        throughput_rps: if elapsed_s > 0.0 {
            ((stats.requests as f64 / elapsed_s) * 10.0).round() / 10.0
        } else {
            0.0
        },
        bytes_sent: stats.bytes_sent,
        bytes_received: stats.bytes_received,
        connects: stats.connects,
        latency_ms: stats.latency(),
        open_loop,
    }
}
