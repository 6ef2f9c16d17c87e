//! Predictive keep-warm, replayed (issue 15): a day-shaped call trace over
//! hundreds of functions with Zipf popularity, played with time scaled
//! down against two pools on the fake runtime — keep-warm on and off —
//! side by side in one process, so both see the same trace at the same
//! moments. Reports the share of calls that paid a cold start in each, the
//! reduction, keep-warm's hits, and the memory the live instances held
//! (sum of limits, and an estimate from the per-instance host memory
//! measured on real Podman: 2.5 MB running, 1.4 MB paused).
//!
//! Not a criterion bench (`harness = false`): one run prints one report.
//! Settings by environment: `REPLAY_DAY_S` (real seconds one trace day
//! takes, default 120), `REPLAY_FUNCTIONS` (default 300), `REPLAY_CALLS`
//! (default 6000), `REPLAY_ZIPF_S` (default 1.0), `REPLAY_SEED`.
//! A trace day is 86,400 s; `idle_pause_s = 1`, `idle_stop_s = 2` real
//! seconds are then 12 and 24 trace minutes, and the keep-warm window of
//! 30 real seconds is 6 trace hours.
//!
//! ```sh
//! cargo bench -p containerpub-benches --bench keepwarm_replay
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use containerpub_benches::route;
use containerpub_pool::testing::FakeRuntime;
use containerpub_pool::{
    BudgetConfig, ContainerRuntime, FunctionHandle, InstanceState, NodeConfig, Pool, PoolConfig,
    StartKind,
};

/// Trace seconds in a day.
const DAY: f64 = 86_400.0;
/// Real keep-warm window.
const WINDOW: Duration = Duration::from_secs(30);
/// How long a call holds its instance.
const CALL: Duration = Duration::from_millis(5);
/// What a cold start takes on the fake runtime.
const COLD: Duration = Duration::from_millis(100);
/// Memory limit of every function (as `examples/hello`).
const MEMORY_MB: u64 = 32;
/// Host memory per instance measured on real Podman (issue 15).
const RUNNING_MB: f64 = 2.5;
const PAUSED_MB: f64 = 1.4;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: a fixed, seedable stream.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The trace: (trace second, function index), sorted by time. Arrival
/// times follow a day shape (quiet at night, busy in the afternoon:
/// 0.1 + sin²(π t / day) by rejection sampling); functions a Zipf law.
fn trace(calls: usize, functions: usize, s: f64, seed: u64) -> Vec<(f64, usize)> {
    let mut rng = Rng(seed.max(1));
    let weights: Vec<f64> = (1..=functions).map(|k| 1.0 / (k as f64).powf(s)).collect();
    let total: f64 = weights.iter().sum();
    let cumulative: Vec<f64> = weights
        .iter()
        .scan(0.0, |acc, w| {
            *acc += w / total;
            Some(*acc)
        })
        .collect();
    let mut out = Vec::with_capacity(calls);
    while out.len() < calls {
        let t = rng.next_f64() * DAY;
        let shape = 0.1 + (std::f64::consts::PI * t / DAY).sin().powi(2);
        if rng.next_f64() * 1.1 > shape {
            continue;
        }
        let u = rng.next_f64();
        let f = cumulative.partition_point(|c| *c < u).min(functions - 1);
        out.push((t, f));
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// What one pool saw.
#[derive(Default)]
struct Tally {
    cold: AtomicU64,
    paused: AtomicU64,
    warm: AtomicU64,
    failed: AtomicU64,
}

async fn pool(keep_warm: bool, functions: usize) -> (Pool, Vec<FunctionHandle>) {
    let scaling = "idle_pause_s = 1\nidle_stop_s = 2\nmax_instances = 4\nconcurrency = 4";
    let routes: Vec<_> = (0..functions)
        .map(|i| {
            let mut r = route(&format!("replay-{i}"), scaling);
            r.config.resources.memory_mb = MEMORY_MB as u32;
            r
        })
        .collect();
    let runtime: Arc<dyn ContainerRuntime> =
        Arc::new(FakeRuntime::new().await.with_start_delay(COLD));
    let mut node = NodeConfig {
        budget: BudgetConfig {
            memory_mb: 16 * 1024,
            max_instances: 1_000,
        },
        ..NodeConfig::default()
    };
    node.keep_warm.window = if keep_warm { WINDOW } else { Duration::ZERO };
    let config = PoolConfig {
        node: format!("replay-{keep_warm}"),
        start_timeout: Duration::from_secs(5),
    };
    let pool = Pool::with_runtime_on(runtime, config, node, &routes)
        .await
        .expect("pool on the fake runtime");
    let handles = routes.iter().map(|r| pool.handle(r)).collect();
    (pool, handles)
}

fn main() {
    let day_s: f64 = env("REPLAY_DAY_S", 120.0);
    let functions: usize = env("REPLAY_FUNCTIONS", 300);
    let calls: usize = env("REPLAY_CALLS", 6_000);
    let zipf: f64 = env("REPLAY_ZIPF_S", 1.0);
    let seed: u64 = env("REPLAY_SEED", 0x5eed);
    // `cargo bench` passes `--bench`; a filter that is not ours skips.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"keepwarm_replay".contains(&a))
    {
        return;
    }
    let trace = trace(calls, functions, zipf, seed);
    let scale = day_s / DAY;
    let gaps = {
        let mut last = vec![None; functions];
        let (mut long, mut all) = (0usize, 0usize);
        for &(t, f) in &trace {
            if let Some(prev) = last[f] {
                all += 1;
                if (t - prev) * scale > 2.0 {
                    long += 1;
                }
            }
            last[f] = Some(t);
        }
        (long, all)
    };
    let called = {
        let mut seen = vec![false; functions];
        trace.iter().for_each(|&(_, f)| seen[f] = true);
        seen.iter().filter(|s| **s).count()
    };
    println!(
        "trace: {} calls over {functions} functions ({called} called), Zipf s={zipf}, day-shaped; \
         one day = {day_s} s real (scale 1:{:.0}); {} of {} repeat calls follow a gap > idle_stop_s",
        trace.len(),
        1.0 / scale,
        gaps.0,
        gaps.1
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let (on, on_handles) = pool(true, functions).await;
        let (off, off_handles) = pool(false, functions).await;
        let tallies = [Arc::new(Tally::default()), Arc::new(Tally::default())];
        let pools = [on.clone(), off.clone()];
        // Memory: sampled every 100 ms (sum of limits, and the estimate).
        let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let sampler = {
            let pools = pools.clone();
            let sampling = Arc::clone(&sampling);
            tokio::spawn(async move {
                let mut peak = [(0u64, 0u32, 0.0f64); 2];
                let mut sum = [0.0f64; 2];
                let mut n = 0u64;
                while sampling.load(Ordering::Relaxed) {
                    for (i, p) in pools.iter().enumerate() {
                        let (mb, count) = p.budget_used();
                        let est: f64 = p
                            .instances()
                            .iter()
                            .map(|x| match x.state {
                                InstanceState::Paused => PAUSED_MB,
                                InstanceState::Gone => 0.0,
                                _ => RUNNING_MB,
                            })
                            .sum();
                        peak[i].0 = peak[i].0.max(mb);
                        peak[i].1 = peak[i].1.max(count);
                        peak[i].2 = peak[i].2.max(est);
                        sum[i] += est;
                    }
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (peak, sum.map(|s| s / n.max(1) as f64))
            })
        };
        let began = Instant::now();
        let mut tasks = Vec::with_capacity(trace.len() * 2);
        for &(t, f) in &trace {
            let at = began + Duration::from_secs_f64(t * scale);
            tokio::time::sleep_until(at.into()).await;
            for (i, handles) in [&on_handles, &off_handles].into_iter().enumerate() {
                let handle = handles[f].clone();
                let tally = Arc::clone(&tallies[i]);
                tasks.push(tokio::spawn(async move {
                    match handle.lease().await {
                        Ok(lease) => {
                            let counter = match lease.start_kind() {
                                StartKind::Cold => &tally.cold,
                                StartKind::Paused => &tally.paused,
                                StartKind::Warm => &tally.warm,
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(CALL).await;
                            drop(lease);
                        }
                        Err(_) => {
                            tally.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        sampling.store(false, Ordering::Relaxed);
        let (peak, mean) = sampler.await.expect("sampler");
        let share = |t: &Tally| {
            let total = t.cold.load(Ordering::Relaxed)
                + t.paused.load(Ordering::Relaxed)
                + t.warm.load(Ordering::Relaxed)
                + t.failed.load(Ordering::Relaxed);
            t.cold.load(Ordering::Relaxed) as f64 / total.max(1) as f64
        };
        for (i, name) in ["keep-warm on ", "keep-warm off"].into_iter().enumerate() {
            let t = &tallies[i];
            println!(
                "{name}: cold {} ({:.1}% of calls), resumed {}, warm {}, failed {}; \
                 peak {} instances / {} MiB of limits; host memory est. peak {:.0} MB, mean {:.0} MB",
                t.cold.load(Ordering::Relaxed),
                share(t) * 100.0,
                t.paused.load(Ordering::Relaxed),
                t.warm.load(Ordering::Relaxed),
                t.failed.load(Ordering::Relaxed),
                peak[i].1,
                peak[i].0,
                peak[i].2,
                mean[i],
            );
        }
        let (with, without) = (share(&tallies[0]), share(&tallies[1]));
        println!(
            "cold-start share {:.1}% with keep-warm against {:.1}% without: {:.1}% fewer (goal >= 80%)",
            with * 100.0,
            without * 100.0,
            (1.0 - with / without.max(f64::MIN_POSITIVE)) * 100.0
        );
        let text = prometheus_text();
        // Summed over functions (the metric is per function and result).
        let mut by_result = std::collections::BTreeMap::<String, f64>::new();
        for line in text.lines().filter(|l| l.starts_with("cpub_keep_warm_total{")) {
            let result = line
                .split("result=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("?");
            let value = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
            *by_result.entry(result.to_owned()).or_default() += value;
        }
        for (result, n) in by_result {
            println!("  cpub_keep_warm_total{{result=\"{result}\"}} {n}   (keep-warm on pool only)");
        }
        on.remove_all().await;
        off.remove_all().await;
    });
}

fn prometheus_text() -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap_or_default()
}
