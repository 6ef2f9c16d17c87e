//! `compare`: cpub-proxy against nginx and against no proxy at all, on the
//! same function container, in one run with alternating rounds; plus cold
//! start vs raw Podman, resume from paused, and memory under idle keep-alive
//! client connections. `scripts/compare.sh` builds and runs it; the method
//! and the latest figures are in `docs/BENCHMARKS.md`.
//!
//! One container of `examples/hello` (`max_instances = 1`, `min_instances =
//! 1`, `concurrency = 256`, never idle long enough to pause) is loaded three
//! ways each round, in an order that rotates through all six permutations:
//! - direct: `http://<container ip>:8080/`;
//! - nginx: Debian's nginx as a plain process with a generated config
//!   (`worker_processes` = the proxy's threads, `access_log off`, upstream
//!   keepalive, the same `/fn/hello/` prefix stripped);
//! - cpub-proxy: `http://127.0.0.1:<port>/fn/hello/` with everything on
//!   (routing, leases, metrics, server-timing, request ids).
//!
//! - cpub-proxy keyed: `/fn/hello-bench-key/`, a second deployment of the
//!   same bundle and manifest but `visibility = "private"`, its own container,
//!   every request with an `x-cpub-key` header (the key check of issue 10).
//!
//! Per target and round: a closed loop (`--connections`, default 32) and an
//! open loop (`--rate`, default 2000 req/s) with the in-process load
//! generator (`containerpub-loadtest`), each after its own warm-up, and a
//! `wrk` run as a cross-check readers know. Before each target the host's
//! idle upstream connections to the container are reset (`ss -K`): the
//! function's server takes 48 connections at most, and the idle keep-alive
//! pools of the other two targets would otherwise hold its slots.
//!
//! Then execution records (issue 11): `--records-rounds` pairs of runs of
//! the cpub-proxy target with records on and off (`CPUB_EXECUTIONS=off`),
//! the proxy restarted between them (it adopts the running container),
//! order alternating.
//!
//! Loopback and the container's bridge address only; every step is bounded.
//!
//! Over 600 lines: the flags (with their ranges and checks), the rows of
//! the table, and `run`, the benchmark's steps in the order they run (about
//! 270 lines, each step reading the figures of the ones before). The pieces
//! are in the modules: `processes` (nginx, `/proc` readings), `load` (one
//! target's runs), `memory` (idle connections) and `summary` (the table
//! and the goals).

mod load;
mod memory;
mod processes;
mod summary;

use load::Wrk;
use load::{answered, load};
use memory::idle_memory;
use processes::{Nginx, nofile_limit, reset_upstream, rss_kib};
use summary::{loadavg, machine, nan_null, print_goals, print_table};

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use clap::builder::TypedValueParser as _;
use containerpub_e2e::bench::{ColdBench, FN_PORT, Stats, call, ms, only_container, podman, until};
use containerpub_e2e::{PROXY_THREADS, Stack, container_ip, repo_root};
use containerpub_loadtest::{AllowList, Report};
use serde_json::{Value, json};

/// A round: its number, the order its targets ran in, their figures.
type Round = (usize, [Kind; 4], BTreeMap<Kind, TargetRound>);

/// The function every throughput figure loads.
const FUNCTION: &str = "hello-bench";
/// The same bundle deployed private, loaded with a key.
const KEYED_FUNCTION: &str = "hello-bench-key";
/// Manifest lines appended to `examples/hello/cpub.toml`, whose last table
/// is `[resources]` (checked): no CPU quota below the machine's cores, room
/// for 256 connection threads, one instance that takes every call and
/// never pauses.
const MANIFEST_EXTRA: &str = "cpu = 2.0\npids = 512\n\n[env]\nFNHTTP_MAX_CONNECTIONS = \"256\"\n\n\
[scaling]\nmin_instances = 1\nmax_instances = 1\nconcurrency = 256\nidle_pause_s = 86400\n\
idle_stop_s = 86400\n";
/// Requests in flight while the idle connections are being opened (the
/// function's server takes at most 48 connections; the proxies open one
/// upstream connection per request in flight).
const IDLE_OPEN_PARALLEL: usize = 16;

/// Every flag of `scripts/compare.sh` (which passes its arguments through).
/// A value out of its range is refused, naming the flag and the range.
#[derive(Debug, Parser)]
#[command(
    name = "compare",
    about = "cpub-proxy against nginx and no proxy on one function container, \
             plus cold start, resume and idle memory (docs/BENCHMARKS.md)"
)]
struct Args {
    /// Rounds; each loads every target once, in a rotating order.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u16).range(1..=60).map(usize::from))]
    rounds: usize,
    /// Seconds of each measured run (0.5 to 120).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = duration_secs)]
    duration: Duration,
    /// Seconds of warm-up before each measured run (0.1 to 60).
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = warmup_secs)]
    warmup: Duration,
    /// Connections of the closed loop and of wrk.
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=40).map(usize::from))]
    connections: usize,
    /// Requests per second of the open loop (1 to 200000).
    #[arg(long, value_name = "REQ_PER_S", default_value = "2000", value_parser = rate)]
    rate: f64,
    /// Idle keep-alive client connections of the memory figure.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u16).range(1..=30_000).map(usize::from))]
    idle_conns: usize,
    /// Pairs of runs with execution records on and off (0 leaves them out).
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(0..=50).map(|n| n as usize))]
    records_rounds: usize,
    /// Leave out the wrk cross-check.
    #[arg(long = "no-wrk", action = clap::ArgAction::SetFalse)]
    wrk: bool,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// A finite number within `lo..=hi`.
fn number_in(text: &str, lo: f64, hi: f64) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|x| (lo..=hi).contains(x))
        .ok_or_else(|| format!("{text:?} is not a number from {lo} to {hi}"))
}

fn duration_secs(text: &str) -> Result<Duration, String> {
    number_in(text, 0.5, 120.0).map(Duration::from_secs_f64)
}

fn warmup_secs(text: &str) -> Result<Duration, String> {
    number_in(text, 0.1, 60.0).map(Duration::from_secs_f64)
}

fn rate(text: &str) -> Result<f64, String> {
    number_in(text, 1.0, 200_000.0)
}

/// The command line; `--help` and a bad flag exit here (clap).
fn args() -> Result<Args> {
    Ok(Args::parse())
}

// ---------------------------------------------------------------- targets

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Direct,
    Nginx,
    Proxy,
    Keyed,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Nginx => "nginx",
            Kind::Proxy => "cpub-proxy",
            Kind::Keyed => "keyed",
        }
    }
}

const KINDS: [Kind; 4] = [Kind::Direct, Kind::Nginx, Kind::Proxy, Kind::Keyed];

/// The order of the targets in round `r`: rotated by `r`, and reversed
/// every other four rounds, so over eight rounds every target takes every
/// position equally often and follows each other target as often as it
/// precedes it.
fn order(round: usize) -> [Kind; 4] {
    let mut o = KINDS;
    o.rotate_left(round % KINDS.len());
    if (round / KINDS.len()) % 2 == 1 {
        o.reverse();
    }
    o
}

/// What one target gave in one round.
struct TargetRound {
    closed: Report,
    open: Report,
    wrk: Option<Wrk>,
    /// Cores used by this process (the load generator) during the closed loop.
    gen_cores: f64,
    /// Cores used by the server (proxy or nginx; NaN for direct) during the
    /// closed loop, and its CPU time per request in µs.
    server_cores: f64,
    server_cpu_us_per_req: f64,
}

impl TargetRound {
    fn json(&self) -> Value {
        json!({
            "closed": self.closed,
            "open": self.open,
            "wrk": self.wrk.as_ref().map(Wrk::json),
            "generator_cores_closed": nan_null(self.gen_cores),
            "server_cores_closed": nan_null(self.server_cores),
            "server_cpu_us_per_req_closed": nan_null(self.server_cpu_us_per_req),
        })
    }
}

/// A figure of the table: its label and how it is read from a target's round.
struct Figure {
    label: String,
    get: fn(&TargetRound) -> f64,
}

fn figures(args: &Args) -> Vec<Figure> {
    let c = args.connections;
    let r = args.rate;
    let f = |label: String, get: fn(&TargetRound) -> f64| Figure { label, get };
    vec![
        f(format!("closed c={c} req/s"), |t| t.closed.throughput_rps),
        f(format!("closed c={c} p50 ms"), |t| t.closed.latency_ms.p50),
        f(format!("closed c={c} p99 ms"), |t| t.closed.latency_ms.p99),
        f(format!("open {r:.0}/s p50 ms"), |t| t.open.latency_ms.p50),
        f(format!("open {r:.0}/s p99 ms"), |t| t.open.latency_ms.p99),
        f(format!("open {r:.0}/s p99.9 ms"), |t| {
            t.open.latency_ms.p99_9
        }),
        f(format!("open {r:.0}/s achieved req/s"), |t| {
            t.open.throughput_rps
        }),
        // The generator's own: intended send time to send (all targets pay it).
        f(format!("open {r:.0}/s send lag p50 ms"), |t| {
            t.open.open_loop.map_or(f64::NAN, |o| o.send_lag_ms.p50)
        }),
        f(format!("open {r:.0}/s send lag p99 ms"), |t| {
            t.open.open_loop.map_or(f64::NAN, |o| o.send_lag_ms.p99)
        }),
        f(format!("wrk c={c} req/s"), |t| {
            t.wrk.as_ref().map_or(f64::NAN, |w| w.rps)
        }),
        f(format!("wrk c={c} p50 ms"), |t| {
            t.wrk.as_ref().map_or(f64::NAN, |w| w.p50_ms)
        }),
        f(format!("wrk c={c} p99 ms"), |t| {
            t.wrk.as_ref().map_or(f64::NAN, |w| w.p99_ms)
        }),
        f("server CPU µs/req (closed)".into(), |t| {
            t.server_cpu_us_per_req
        }),
        f("server cores (closed)".into(), |t| t.server_cores),
        f("generator cores (closed)".into(), |t| t.gen_cores),
        f("errors (closed+open+wrk)".into(), |t| {
            (t.closed.errors.total + t.open.errors.total + t.wrk.as_ref().map_or(0, |w| w.errors))
                as f64
        }),
    ]
}

// ---------------------------------------------------------------- main

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let need = args.idle_conns as u64 + 2_000;
    match nofile_limit() {
        Some(n) if n >= need => {}
        n => bail!(
            "the open-files limit ({}) is below {need}: run through scripts/compare.sh, or \
             `ulimit -n 65536` first (cpub-proxy inherits it)",
            n.map_or("unknown".into(), |n| n.to_string())
        ),
    }
    let profile = profile_name();
    let machine = machine();
    eprintln!(
        "compare ({profile} build; stack binaries from {}): {} rounds × 4 targets, {:?} per run, \
         c={}, open loop {} req/s, {} idle connections, {} records pairs\nmachine: {machine}",
        containerpub_e2e::bin("cpub-proxy")
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        args.rounds,
        args.duration,
        args.connections,
        args.rate,
        args.idle_conns,
        args.records_rounds,
    );
    if args.wrk && Command::new("wrk").arg("-v").output().is_err() {
        bail!("wrk is not installed (apt-get install -y wrk) — or pass --no-wrk");
    }
    let mut stack = Stack::start(&[]).await?;
    let result = run(&mut stack, &args, machine).await;
    if result.is_err() {
        eprintln!("{}", stack.logs());
    }
    result
}

async fn run(stack: &mut Stack, args: &Args, machine: Value) -> Result<()> {
    // Functions first, so no build runs during a measurement.
    let manifest = std::fs::read_to_string(repo_root().join("examples/hello/cpub.toml"))?;
    let last_table = manifest
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('['))
        .unwrap_or("");
    if last_table.trim() != "[resources]" {
        bail!("examples/hello/cpub.toml no longer ends with [resources]: update MANIFEST_EXTRA");
    }
    eprintln!(
        "deploying {FUNCTION}, {KEYED_FUNCTION} and {} cold-start functions …",
        args.rounds + 1
    );
    let proxy_url = stack.deploy("hello", FUNCTION, MANIFEST_EXTRA);
    let keyed_url = {
        let dir = containerpub_e2e::bundle("hello", KEYED_FUNCTION, MANIFEST_EXTRA);
        let path = dir.path().join("cpub.toml");
        let text = std::fs::read_to_string(&path)?;
        let public = "visibility = \"public\"\n";
        if !text.contains(public) {
            bail!("examples/hello/cpub.toml no longer says {public:?}: update compare");
        }
        std::fs::write(&path, text.replace(public, "visibility = \"private\"\n"))?;
        stack.cpub_ok(&["deploy", dir.path().to_str().context("utf-8 path")?]);
        format!("{}/fn/{KEYED_FUNCTION}/", stack.proxy_url())
    };
    let key = stack
        .cpub_ok(&["key", "create", KEYED_FUNCTION, "--label", "compare"])
        .trim()
        .to_owned();
    let key_header = [("x-cpub-key", key.as_str())];
    let mut cold_bench = ColdBench::setup(stack, "cmp", args.rounds).await?;
    let client = cold_bench.client.clone();
    call(&client, &proxy_url).await?;
    // The key reaches the proxy with the route table, within a second.
    answered(&client, &keyed_url, Some(&key)).await?;
    let id = until(
        Duration::from_secs(30),
        "the bench function's container",
        || only_container(stack, FUNCTION),
    )
    .await?;
    let ip = container_ip(&id).context("container address")?;
    let direct_url = format!("http://{ip}:{FN_PORT}/");
    call(&client, &direct_url).await?;
    let allow = AllowList::new(&[ip.to_string()])?;
    let proxy_pid = stack.proxy_pid().context("proxy pid")?;
    let proxy_rss_start = rss_kib(&[proxy_pid]);

    let nginx = Nginx::start(SocketAddr::new(ip, FN_PORT), PROXY_THREADS).await?;
    let nginx_url = nginx.url();
    eprintln!(
        "container {id:.12} at {ip}; nginx ({PROXY_THREADS} workers) at {}; cpub-proxy ({PROXY_THREADS} threads) at {}",
        nginx.addr(),
        stack.proxy_addr
    );

    // Throughput and latency rounds.
    let figs = figures(args);
    let mut rounds: Vec<Round> = Vec::new();
    for round in 0..args.rounds {
        let order = order(round);
        let mut results = BTreeMap::new();
        for kind in order {
            reset_upstream(ip).await?;
            let (url, headers, server): (&str, &[(&str, &str)], _) = match kind {
                Kind::Direct => (&direct_url, &[], Vec::new()),
                Kind::Nginx => (&nginx_url, &[], nginx.pids()),
                Kind::Proxy => (&proxy_url, &[], vec![proxy_pid]),
                Kind::Keyed => (&keyed_url, &key_header, vec![proxy_pid]),
            };
            let r = load(url, headers, &allow, &server, args).await?;
            eprintln!(
                "round {round} {:<10} closed {:>8.0} req/s p99 {:>6.3} ms | open p99 {:>6.3} ms ({:.0} req/s, send lag p99 {:.3} ms) | wrk {} req/s | errors {}",
                kind.name(),
                r.closed.throughput_rps,
                r.closed.latency_ms.p99,
                r.open.latency_ms.p99,
                r.open.throughput_rps,
                r.open.open_loop.map_or(f64::NAN, |o| o.send_lag_ms.p99),
                r.wrk
                    .as_ref()
                    .map_or("-".into(), |w| format!("{:.0}", w.rps)),
                r.closed.errors.total
                    + r.open.errors.total
                    + r.wrk.as_ref().map_or(0, |w| w.errors),
            );
            results.insert(kind, r);
        }
        rounds.push((round, order, results));
    }

    // Memory under idle keep-alive client connections.
    reset_upstream(ip).await?;
    eprintln!(
        "memory: {} idle keep-alive connections to cpub-proxy …",
        args.idle_conns
    );
    let proxy_mem = idle_memory(
        stack.proxy_addr,
        &format!("/fn/{FUNCTION}/"),
        args.idle_conns,
        &|| vec![proxy_pid],
    )
    .await?;
    reset_upstream(ip).await?;
    eprintln!(
        "memory: {} idle keep-alive connections to nginx …",
        args.idle_conns
    );
    let nginx_pids = || nginx.pids();
    let nginx_mem = idle_memory(nginx.addr(), "/fn/hello/", args.idle_conns, &nginx_pids).await?;
    drop(nginx);

    // Cold start vs raw podman, resume from paused.
    let mut cold = Stats::new("cold via proxy (ms)");
    let mut cold_start = Stats::new("  proxy start dur (ms)");
    let mut raw = Stats::new("raw podman run→200 (ms)");
    let mut ratio = Stats::new("cold/raw (per round)");
    let mut resume = Stats::new("resume via proxy (ms)");
    let mut resume_start = Stats::new("  proxy start dur (ms)");
    // Where a cold start goes (the proxy's `container started` log line).
    let mut split_create = Stats::new("  create (ms)");
    let mut split_start = Stats::new("  podman start (ms)");
    let mut split_inspect = Stats::new("  inspect (ms)");
    let mut split_ready = Stats::new("  ready: probe + pool (ms)");
    let mut cold_json = Vec::new();
    for round in 0..args.rounds {
        let cr = cold_bench.cold_and_raw(round).await?;
        let res = cold_bench.resume(round).await?;
        cold.values.push(ms(cr.cold));
        if let Some(s) = cr.cold_start {
            cold_start.values.push(s);
        }
        raw.values.push(ms(cr.raw));
        ratio.values.push(ms(cr.cold) / ms(cr.raw));
        if let Some(split) = cr.split {
            split_create.values.push(split.create);
            split_start.values.push(split.start);
            split_inspect.values.push(split.inspect);
            split_ready.values.push(split.ready);
        }
        if let Some((took, s)) = res {
            resume.values.push(ms(took));
            if let Some(s) = s {
                resume_start.values.push(s);
            }
        }
        cold_json.push(json!({
            "round": round,
            "order": if cr.raw_first { "raw,cold" } else { "cold,raw" },
            "cold_ms": ms(cr.cold),
            "cold_start_dur_ms": cr.cold_start,
            "raw_ms": ms(cr.raw),
            "resume_ms": res.map(|(t, _)| ms(t)),
            "resume_start_dur_ms": res.and_then(|(_, s)| s),
            "split_ms": cr.split.map(|s| json!({
                "create": s.create, "start": s.start, "inspect": s.inspect,
                "ready": s.ready, "precreated": s.precreated,
            })),
        }));
        let _ = podman(&["rm", "-f", "-t", "0", &cr.id]);
    }

    drop(cold_bench);

    let records = records_pairs(stack, args, &client, &proxy_url, ip, &allow).await?;

    let summary = print_table(args, &figs, &rounds);
    println!();
    println!(
        "idle keep-alive connections ({} asked)      opened  still open  RSS before    RSS idle   delta     per conn   RSS after close",
        args.idle_conns
    );
    for (name, m) in [
        ("cpub-proxy", &proxy_mem),
        ("nginx (master+workers)", &nginx_mem),
    ] {
        println!(
            "{:<40} {:>9} {:>10} {:>9} KiB {:>9} KiB {:>7} KiB {:>7.0} B {:>9} KiB",
            name,
            m.opened,
            m.still_open,
            m.rss_before_kib,
            m.rss_idle_kib,
            m.delta_kib(),
            m.per_conn_bytes(),
            m.rss_after_close_kib
        );
        if let Some(f) = &m.first_failure {
            println!("  {} failed, first: {f}", m.failures);
        }
    }
    println!("cpub-proxy RSS right after start-up and warm-up: {proxy_rss_start} KiB");
    println!();
    for s in [
        &cold,
        &cold_start,
        &split_create,
        &split_start,
        &split_inspect,
        &split_ready,
        &raw,
        &ratio,
        &resume,
        &resume_start,
    ] {
        println!("{}", s.line());
    }
    println!("cold/raw of medians: {:.2}", cold.median() / raw.median());

    let records_on_off = print_goals(
        args,
        &rounds,
        &records,
        &cold,
        &resume,
        [&proxy_mem, &nginx_mem],
    );

    println!("load average at the end: {}", loadavg());

    if let Some(path) = &args.json {
        let out = json!({
            "config": {
                "rounds": args.rounds,
                "duration_s": args.duration.as_secs_f64(),
                "warmup_s": args.warmup.as_secs_f64(),
                "connections": args.connections,
                "rate": args.rate,
                "idle_conns": args.idle_conns,
                "wrk": args.wrk,
                "proxy_threads": PROXY_THREADS,
                "nginx_workers": PROXY_THREADS,
                "bench_profile": profile_name(),
                "manifest_extra": MANIFEST_EXTRA,
            },
            "machine": machine,
            "rounds": rounds.iter().map(|(round, order, r)| json!({
                "round": round,
                "order": order.iter().map(|k| k.name()).collect::<Vec<_>>(),
                "targets": r.iter().map(|(k, t)| (k.name().to_owned(), t.json())).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
            "summary": summary,
            "records": records.iter().map(|(on, r)| json!({
                "executions": if *on { "on" } else { "off" },
                "target": r.json(),
            })).collect::<Vec<_>>(),
            "records_on_off": records_on_off,
            "memory": {
                "cpub-proxy": proxy_mem.json(),
                "nginx": nginx_mem.json(),
                "proxy_rss_after_warmup_kib": proxy_rss_start,
            },
            "loadavg_at_end": loadavg(),
            "cold": cold_json,
        });
        std::fs::write(path, serde_json::to_string_pretty(&out)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("raw numbers written to {}", path.display());
    }
    Ok(())
}

/// Execution records on against off (`--records-rounds` pairs, the order
/// alternating): the cpub-proxy target on the same container, the proxy
/// restarted between runs (it adopts the running instance) with
/// `CPUB_EXECUTIONS=off` or without; left running with records on.
async fn records_pairs(
    stack: &mut Stack,
    args: &Args,
    client: &reqwest::Client,
    proxy_url: &str,
    ip: IpAddr,
    allow: &AllowList,
) -> Result<Vec<(bool, TargetRound)>> {
    let mut records: Vec<(bool, TargetRound)> = Vec::new();
    for round in 0..args.records_rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for on in order {
            let env: &[(&str, &str)] = if on {
                &[]
            } else {
                &[("CPUB_EXECUTIONS", "off")]
            };
            stack.restart_proxy_with(env).await?;
            answered(client, proxy_url, None).await?;
            reset_upstream(ip).await?;
            let pid = stack.proxy_pid().context("proxy pid")?;
            let r = load(proxy_url, &[], allow, &[pid], args).await?;
            eprintln!(
                "records round {round} {:<3} closed {:>8.0} req/s p99 {:>6.3} ms | open p99 {:>6.3} ms (send lag p99 {:.3} ms) | errors {}",
                if on { "on" } else { "off" },
                r.closed.throughput_rps,
                r.closed.latency_ms.p99,
                r.open.latency_ms.p99,
                r.open.open_loop.map_or(f64::NAN, |o| o.send_lag_ms.p99),
                r.closed.errors.total + r.open.errors.total
            );
            records.push((on, r));
        }
    }
    if args.records_rounds > 0 {
        stack.restart_proxy_with(&[]).await?;
    }
    Ok(records)
}

fn profile_name() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    type Knobs = (usize, f64, f64, usize, f64, usize, bool, Option<PathBuf>);

    fn knobs(argv: &str) -> Knobs {
        let a = Args::try_parse_from(argv.split_whitespace()).unwrap();
        let (d, w) = (a.duration.as_secs_f64(), a.warmup.as_secs_f64());
        (
            a.rounds,
            d,
            w,
            a.connections,
            a.rate,
            a.idle_conns,
            a.wrk,
            a.json,
        )
    }

    #[test]
    fn flags_and_defaults_of_compare_sh() {
        Args::command().debug_assert();
        assert_eq!(
            knobs("compare"),
            (5, 5.0, 1.0, 32, 2000.0, 10_000, true, None)
        );
        let every = "compare --rounds 6 --duration 2.5 --warmup 0.5 --connections 8 \
                     --rate 500 --idle-conns 100 --no-wrk --json /tmp/c.json";
        let json = Some(PathBuf::from("/tmp/c.json"));
        assert_eq!(knobs(every), (6, 2.5, 0.5, 8, 500.0, 100, false, json));
        for bad in [
            &["--rounds", "0"][..],
            &["--connections", "41"],
            &["--duration", "nan"],
            &["--rate", "inf"],
            &["--idle-conns", "30001"],
            &["--wrk"],
        ] {
            let argv = std::iter::once("compare").chain(bad.iter().copied());
            let err = Args::try_parse_from(argv).unwrap_err().to_string();
            assert!(err.contains(bad[0]), "{bad:?}: {err}");
        }
    }
}
