//! Density run on real Podman (issue 15), driven by `scripts/density.sh`
//! (which builds the image and cleans up whatever is left): the pool on
//! its own node name and network starts `DENSITY_N` instances of as many
//! functions (one image, `examples/hello`), one call each, lets them pause,
//! resumes a sample, then calls `DENSITY_EXTRA` more functions past an
//! instance budget of `DENSITY_N` (eviction). Prints cold-start times of the
//! first and the last instances (the goal: cold p50 with hundreds live
//! within ±10% of the first ones), resume times, host memory per instance
//! (`MemAvailable` deltas — the machine is shared: a rough figure), and
//! every error. Bounded: it stops starting after `DENSITY_DEADLINE_S`.
//!
//! Beside it, a second pool (node `<node>-probe`, same network) holds
//! `DENSITY_PROBES` functions whose containers are initialized ahead, as a
//! proxy's are: their cold starts are timed before the `DENSITY_N`
//! instances exist and again with all of them live (the goal: p50 within
//! ±10 %), `DENSITY_PROBE_ROUNDS` rounds each. (The `DENSITY_N` functions
//! themselves start from fresh containers: a node initializes only its
//! `initialized_ahead` most recently started functions' containers, and
//! every one of these is new.)
//!
//! `CPUB_LOG` (e.g. `containerpub_pool=info`) logs the pool's lines to
//! stderr. Not a criterion bench (`harness = false`); without `DENSITY_IMAGE` set
//! (by the script) it does nothing, so `cargo bench` skips it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use containerpub_benches::route;
use containerpub_pool::podman::Podman;
use containerpub_pool::{
    BudgetConfig, ContainerRuntime, DEFAULT_SOCKET, InstanceState, NodeConfig, PodmanRuntime, Pool,
    PoolConfig, StartKind,
};
use containerpub_wire::api::Route;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mem_available_mb() -> f64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{name}: n={} p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms.len(),
        pct(&ms, 0.5),
        pct(&ms, 0.9),
        ms.last().copied().unwrap_or(f64::NAN)
    );
}

/// One HTTP/1.1 GET to the instance; whether it answered 200.
async fn get(addr: std::net::SocketAddr) -> bool {
    let call = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nhost: d\r\nconnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(buf.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Functions whose containers are initialized ahead, on their own pool.
struct Probe {
    pool: Pool,
    runtime: PodmanRuntime,
    routes: Vec<Route>,
}

impl Probe {
    async fn new(image: &str, network: &str, subnet: &str, node: &str, k: usize) -> Self {
        let routes: Vec<Route> = (0..k)
            .map(|i| {
                let mut r = route(
                    &format!("density-probe-{i}"),
                    "idle_stop_s = 86400
max_instances = 1",
                );
                r.image = image.to_owned();
                r.config.resources.memory_mb = 16;
                r.config.health_path = Some("/".into());
                r
            })
            .collect();
        let k = u32::try_from(k).unwrap_or(u32::MAX);
        let runtime = PodmanRuntime::on_network(Podman::new(DEFAULT_SOCKET), network, Some(subnet))
            .await
            .expect("probe runtime")
            .with_initialized_ahead(k);
        let config = PoolConfig {
            node: format!("{node}-probe"),
            start_timeout: Duration::from_secs(60),
        };
        let node = NodeConfig {
            network: network.to_owned(),
            subnet: subnet.to_owned(),
            budget: BudgetConfig {
                memory_mb: u64::MAX,
                max_instances: k,
            },
            initialized_ahead: k,
            ..NodeConfig::default()
        };
        let shared: Arc<dyn ContainerRuntime> = Arc::new(runtime.clone());
        let pool = Pool::with_runtime_on(shared, config, node, &routes)
            .await
            .expect("probe pool");
        Self {
            pool,
            runtime,
            routes,
        }
    }

    /// `rounds` times: waits for every container ahead, then one call to
    /// each function (a cold start from its initialized container), then
    /// removes the instances. Returns the pool's start times in ms.
    async fn measure(&self, rounds: usize, errors: &mut Vec<String>) -> Vec<f64> {
        let mut starts = Vec::new();
        for _ in 0..rounds {
            let until = Instant::now() + Duration::from_secs(60);
            while self.runtime.precreated().len() < self.routes.len() {
                if Instant::now() > until {
                    errors.push("probe: containers ahead not ready within 60 s".into());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for r in &self.routes {
                match self.pool.lease(r).await {
                    Ok(lease) => {
                        if lease.start_kind() == StartKind::Cold {
                            starts.push(lease.start_duration().as_secs_f64() * 1e3);
                        }
                        if !get(lease.addr()).await {
                            errors.push(format!("{}: no 200", r.function));
                        }
                    }
                    Err(e) => errors.push(format!("{}: {e}", r.function)),
                }
            }
            self.pool.remove_all().await;
        }
        starts
    }
}

fn p50(mut ms: Vec<f64>) -> f64 {
    ms.sort_by(f64::total_cmp);
    pct(&ms, 0.5)
}

fn main() {
    let Ok(image) = std::env::var("DENSITY_IMAGE") else {
        return;
    };
    // The pool's own lines (e.g. `container started` with its split) on
    // stderr, when asked for.
    if std::env::var_os(containerpub_util::logging::ENV_LOG).is_some()
        && let Err(e) = containerpub_util::logging::init()
    {
        eprintln!("density: {e:?}");
    }
    let n: usize = env("DENSITY_N", 300);
    let extra: usize = env("DENSITY_EXTRA", 20);
    let sample: usize = env("DENSITY_RESUME_SAMPLE", 100);
    let deadline = Duration::from_secs(env("DENSITY_DEADLINE_S", 600));
    let parallel: usize = env("DENSITY_PARALLEL", 4);
    let node_name: String = env("DENSITY_NODE", format!("density-{}", std::process::id()));
    let network: String = env("DENSITY_NETWORK", "cpub-density".to_owned());
    let subnet: String = env("DENSITY_SUBNET", "10.95.0.0/20".to_owned());
    let probes: usize = env("DENSITY_PROBES", 10);
    let probe_rounds: usize = env("DENSITY_PROBE_ROUNDS", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let began = Instant::now();
        let scaling = "idle_pause_s = 2\nidle_stop_s = 86400\nmax_instances = 1\nkeep_warm = false";
        let routes: Vec<_> = (0..n + extra)
            .map(|i| {
                let mut r = route(&format!("density-{i}"), scaling);
                r.image.clone_from(&image);
                r.config.resources.memory_mb = 16;
                r.config.health_path = Some("/".into());
                r
            })
            .collect();
        let podman = Podman::new(DEFAULT_SOCKET);
        let runtime = PodmanRuntime::on_network(podman, &network, Some(&subnet))
            .await
            .expect("podman runtime")
            .without_precreation();
        println!(
            "network {network}: {:?} addresses; node {node_name}; budget {n} instances",
            runtime.address_capacity()
        );
        let node = NodeConfig {
            network: network.clone(),
            subnet: subnet.clone(),
            budget: BudgetConfig {
                memory_mb: u64::MAX,
                max_instances: u32::try_from(n).unwrap_or(u32::MAX),
            },
            ..NodeConfig::default()
        };
        let config = PoolConfig {
            node: node_name.clone(),
            start_timeout: Duration::from_secs(60),
        };
        let runtime: Arc<dyn ContainerRuntime> = Arc::new(runtime);
        let pool = Pool::with_runtime_on(runtime, config, node, &routes)
            .await
            .expect("pool");
        let probe = Probe::new(&image, &network, &subnet, &node_name, probes).await;
        let mut errors = Vec::new();
        let probe_alone = probe.measure(probe_rounds, &mut errors).await;
        let mem_before = mem_available_mb();

        // Cold: one call to each of the first n functions, `parallel` at once.
        let semaphore = Arc::new(tokio::sync::Semaphore::new(parallel));
        let mut tasks = Vec::new();
        for (i, r) in routes.iter().take(n).enumerate() {
            if began.elapsed() > deadline {
                println!("deadline reached after {i} starts");
                break;
            }
            let permit = Arc::clone(&semaphore).acquire_owned().await.expect("semaphore");
            let (pool, r) = (pool.clone(), r.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                let t0 = Instant::now();
                match pool.lease(&r).await {
                    Ok(lease) => {
                        let ok = get(lease.addr()).await;
                        let start = lease.start_duration().as_secs_f64() * 1e3;
                        Ok((i, start, t0.elapsed().as_secs_f64() * 1e3, ok, lease.start_kind()))
                    }
                    Err(e) => Err(format!("{}: {e}", r.function)),
                }
            }));
        }
        let mut cold = Vec::new();
        for t in tasks {
            match t.await.expect("task") {
                Ok((i, start, _total, ok, kind)) => {
                    if !ok {
                        errors.push(format!("density-{i}: no 200"));
                    }
                    if kind == StartKind::Cold {
                        cold.push((i, start));
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        let started = cold.len();
        let mem_running = mem_available_mb();
        let first: Vec<f64> = cold.iter().filter(|(i, _)| *i < 30).map(|c| c.1).collect();
        let last: Vec<f64> = cold
            .iter()
            .filter(|(i, _)| *i + 30 >= n)
            .map(|c| c.1)
            .collect();
        summary("cold start, first 30 instances", first);
        summary(&format!("cold start, last 30 (with ~{} live)", n - 30), last);
        summary("cold start, all", cold.iter().map(|c| c.1).collect());

        // Paused: wait (bounded) until the instances pause.
        let until = Instant::now() + Duration::from_secs(60);
        let paused = loop {
            let paused = pool
                .instances()
                .iter()
                .filter(|i| i.state == InstanceState::Paused)
                .count();
            if paused >= started || Instant::now() > until {
                break paused;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let mem_paused = mem_available_mb();
        println!(
            "live {} ({} paused); MemAvailable {:.0} MB before, {:.0} MB running ({:.2} MB/instance), {:.0} MB paused ({:.2} MB/instance)",
            pool.instances().len(),
            paused,
            mem_before,
            mem_running,
            (mem_before - mem_running) / started.max(1) as f64,
            mem_paused,
            (mem_before - mem_paused) / started.max(1) as f64,
        );

        // Resume a sample of paused instances, one at a time.
        let mut resumes = Vec::new();
        for r in routes.iter().take(n).step_by((n / sample.max(1)).max(1)).take(sample) {
            match pool.lease(r).await {
                Ok(lease) => {
                    if lease.start_kind() == StartKind::Paused {
                        resumes.push(lease.start_duration().as_secs_f64() * 1e3);
                    }
                    if !get(lease.addr()).await {
                        errors.push(format!("{}: no 200 after resume", r.function));
                    }
                }
                Err(e) => errors.push(format!("{}: {e}", r.function)),
            }
        }
        summary("resume of a paused instance", resumes);

        // The probe functions again, now beside every live instance.
        let probe_live = probe.measure(probe_rounds, &mut errors).await;
        let (alone, live) = (p50(probe_alone.clone()), p50(probe_live.clone()));
        summary("cold start from an initialized container, alone", probe_alone);
        summary(
            &format!("cold start from an initialized container, {} live", pool.instances().len()),
            probe_live,
        );
        println!("  p50 with them live / alone: {:.2}", live / alone);
        probe.pool.remove_all().await;
        probe.pool.shutdown().await;

        // Past the budget: every call must still be answered by eviction.
        let mut evicting = Vec::new();
        for r in routes.iter().skip(n) {
            let t0 = Instant::now();
            match pool.lease(r).await {
                Ok(lease) => {
                    if !get(lease.addr()).await {
                        errors.push(format!("{}: no 200 past the budget", r.function));
                    }
                    evicting.push(t0.elapsed().as_secs_f64() * 1e3);
                }
                Err(e) => errors.push(format!("{}: {e}", r.function)),
            }
        }
        summary(&format!("{extra} calls past the budget (cold + eviction)"), evicting);
        println!(
            "budget used at the end: {:?} (MiB of limits, instances); errors: {}",
            pool.budget_used(),
            errors.len()
        );
        for e in errors.iter().take(20) {
            println!("  error: {e}");
        }
        let t0 = Instant::now();
        pool.remove_all().await;
        pool.shutdown().await;
        println!(
            "removed every instance in {:.1} s; total run {:.0} s",
            t0.elapsed().as_secs_f64(),
            began.elapsed().as_secs_f64()
        );
    });
}
