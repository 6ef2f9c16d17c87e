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

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use clap::builder::TypedValueParser as _;
use containerpub_e2e::bench::{ColdBench, FN_PORT, Stats, call, ms, only_container, podman, until};
use containerpub_e2e::{PROXY_THREADS, Stack, container_ip, repo_root};
use containerpub_loadtest::{AllowList, Mode, Plan, Report, Target, TargetSet};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

fn nan_null(x: f64) -> Value {
    if x.is_finite() { json!(x) } else { Value::Null }
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

// ---------------------------------------------------------------- processes

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Debian's nginx as a plain process with a generated config in a temp dir;
/// stopped (SIGTERM, then SIGKILL of it and its workers) when dropped.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

fn nginx_binary() -> Result<PathBuf> {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
    {
        let p = Path::new(dir).join("nginx");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("nginx is not installed (apt-get install -y nginx; scripts/compare.sh does)")
}

impl Nginx {
    async fn start(upstream: SocketAddr, workers: usize) -> Result<Nginx> {
        let dir = tempfile::Builder::new().prefix("cpub-nginx-").tempdir()?;
        // Workers run as `nobody` when the master is root: let them in.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let port = free_port()?;
        let d = dir.path().display();
        let conf = format!(
            r#"# Generated by compare (containerpub-e2e): nginx as a reverse proxy of one
# function container, configured for throughput.
worker_processes {workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 65536;
events {{
    worker_connections 16384;
}}
http {{
    access_log off;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream fn {{
        server {upstream};
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 600s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location /fn/hello/ {{
            proxy_pass http://fn/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let log = std::fs::File::create(dir.path().join("stderr.log"))?;
        let child = Command::new(nginx_binary()?)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting nginx")?;
        let mut nginx = Nginx { child, dir, port };
        let client = reqwest::Client::new();
        let url = nginx.url();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if call(&client, &url).await.is_ok() {
                return Ok(nginx);
            }
            if let Ok(Some(status)) = nginx.child.try_wait() {
                bail!("nginx exited with {status}:\n{}", nginx.logs());
            }
            if Instant::now() > end {
                bail!(
                    "nginx did not answer at {url} within 10 s:\n{}",
                    nginx.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/fn/hello/", self.port)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn logs(&self) -> String {
        ["stderr.log", "error.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The master and its workers.
    fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let mut pids = vec![master];
        pids.extend(children_of(master));
        pids
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pids = self.pids();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in pids {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.child.wait();
    }
}

/// Direct children of `pid` (from `/proc/*/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| stat_fields(*p).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(pid))
        .collect()
}

/// Fields of `/proc/PID/stat` after the command name: index 0 is the
/// state, 1 the parent pid, 11 utime, 12 stime (in clock ticks).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Clock ticks per second of `/proc/*/stat` times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds (user + system) used so far by `pids`.
fn cpu_seconds(pids: &[u32], ticks: f64) -> f64 {
    pids.iter()
        .filter_map(|p| {
            let f = stat_fields(*p)?;
            let u: f64 = f.get(11)?.parse().ok()?;
            let s: f64 = f.get(12)?.parse().ok()?;
            Some((u + s) / ticks)
        })
        .sum()
}

/// Resident memory of `pids` in KiB (`VmRSS`).
fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            status.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        })
        .sum()
}

/// The soft open-files limit of this process.
fn nofile_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Aborts the host's TCP connections to the container's port (`ss -K`):
/// the idle upstream keep-alive connections of the proxies, so each target
/// starts with the function's connection slots free.
async fn reset_upstream(ip: IpAddr) -> Result<()> {
    let out = tokio::process::Command::new("ss")
        .args([
            "-K",
            "-t",
            "dst",
            &ip.to_string(),
            "dport",
            "=",
            &FN_PORT.to_string(),
        ])
        .output()
        .await
        .context("running ss -K")?;
    if !out.status.success() {
        bail!(
            "ss -K failed (the kernel needs CONFIG_INET_DIAG_DESTROY): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

// ---------------------------------------------------------------- load

/// A `wrk` run's figures.
struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    output: String,
}

impl Wrk {
    fn json(&self) -> Value {
        json!({
            "rps": self.rps,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "errors": self.errors,
            "output": self.output,
        })
    }
}

/// `wrk`'s duration text (`328.00us`, `1.23ms`, `2.00s`) in milliseconds.
fn wrk_ms(text: &str) -> Option<f64> {
    let (num, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|x| x * factor)
}

fn parse_wrk(output: &str) -> Result<Wrk> {
    let mut w = Wrk {
        rps: f64::NAN,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        errors: 0,
        output: output.to_owned(),
    };
    for line in output.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Requests/sec:") => {
                w.rps = words
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN)
            }
            Some("50%") => w.p50_ms = words.next().and_then(wrk_ms).unwrap_or(f64::NAN),
            Some("99%") => w.p99_ms = words.next().and_then(wrk_ms).unwrap_or(f64::NAN),
            _ => {}
        }
        if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            w.errors += n.trim().parse::<u64>().unwrap_or(0);
        }
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            w.errors += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    if w.rps.is_nan() {
        bail!("no Requests/sec in wrk's output:\n{output}");
    }
    Ok(w)
}

async fn run_wrk(url: &str, headers: &[(&str, &str)], args: &Args) -> Result<Wrk> {
    let secs = args.duration.as_secs().max(1);
    let mut wrk = tokio::process::Command::new("wrk");
    wrk.args([
        &format!("-c{}", args.connections),
        "-t2",
        &format!("-d{secs}s"),
        "--latency",
    ]);
    for (name, value) in headers {
        wrk.arg("-H").arg(format!("{name}: {value}"));
    }
    let out = tokio::time::timeout(
        args.duration + Duration::from_secs(30),
        wrk.arg(url).kill_on_drop(true).output(),
    )
    .await
    .context("wrk did not end in time")?
    .context("running wrk")?;
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// Loads `url` (closed loop, open loop, wrk) and measures CPU use.
async fn load(
    url: &str,
    headers: &[(&str, &str)],
    allow: &AllowList,
    server: &[u32],
    args: &Args,
) -> Result<TargetRound> {
    let target = Target::parse("url", url, allow)?;
    let mut plan = Plan::new(TargetSet::single(target));
    for (name, value) in headers {
        plan.request.headers.insert(
            reqwest::header::HeaderName::from_bytes(name.as_bytes())?,
            reqwest::header::HeaderValue::from_str(value)?,
        );
    }
    plan.connections = args.connections;
    plan.timeout = Duration::from_secs(5);
    let ticks = clock_ticks();
    let me = [std::process::id()];

    let measure = |mode: Mode| {
        let mut p = plan.clone();
        p.mode = mode;
        p
    };
    let closed_plan = measure(Mode::Closed);
    let open_plan = measure(Mode::Open { rate: args.rate });

    // Warm-up, then the measured run on new connections.
    let mut warm = closed_plan.clone();
    warm.duration = Some(args.warmup);
    let _ = containerpub_loadtest::run(warm).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut p = closed_plan;
    p.duration = Some(args.duration);
    let (g0, s0, t0) = (
        cpu_seconds(&me, ticks),
        cpu_seconds(server, ticks),
        Instant::now(),
    );
    let closed = containerpub_loadtest::run(p).await;
    let wall = t0.elapsed().as_secs_f64();
    let (g1, s1) = (cpu_seconds(&me, ticks), cpu_seconds(server, ticks));
    let gen_cores = (g1 - g0) / wall;
    let (server_cores, server_cpu_us_per_req) = if server.is_empty() {
        (f64::NAN, f64::NAN)
    } else {
        (
            (s1 - s0) / wall,
            (s1 - s0) * 1e6 / closed.requests.max(1) as f64,
        )
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut warm = open_plan.clone();
    warm.duration = Some(args.warmup);
    let _ = containerpub_loadtest::run(warm).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut p = open_plan;
    p.duration = Some(args.duration);
    let open = containerpub_loadtest::run(p).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let wrk = if args.wrk {
        Some(run_wrk(url, headers, args).await?)
    } else {
        None
    };
    Ok(TargetRound {
        closed,
        open,
        wrk,
        gen_cores,
        server_cores,
        server_cpu_us_per_req,
    })
}

/// Calls `url` (with `key` as `x-cpub-key`) until it answers 200, for up
/// to 30 s: a new key or a restarted proxy's route table takes a moment.
async fn answered(client: &reqwest::Client, url: &str, key: Option<&str>) -> Result<()> {
    let by = Instant::now() + Duration::from_secs(30);
    loop {
        let mut request = client.get(url);
        if let Some(key) = key {
            request = request.header("x-cpub-key", key);
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            r if Instant::now() > by => bail!("{url}: no 200 within 30 s, last: {r:?}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

// ---------------------------------------------------------------- memory

/// Reads one HTTP/1.1 response with a `content-length` body; fails when the
/// server says it will close the connection.
async fn read_response(s: &mut TcpStream) -> Result<u16> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before a whole response");
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status")?;
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:")?.trim().parse().ok())
            .context("no content-length")?;
        if head
            .lines()
            .any(|l| l.starts_with("connection:") && l.contains("close"))
        {
            bail!("the server closes the connection");
        }
        if buf.len() >= end + 4 + len {
            return Ok(status);
        }
    }
}

/// One idle keep-alive connection: connect, one request, whole response.
async fn idle_conn(addr: SocketAddr, path: &str) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let status = read_response(&mut s).await?;
    if status != 200 {
        bail!("status {status}");
    }
    Ok(s)
}

/// Memory of a server under `n` idle keep-alive client connections.
struct Memory {
    rss_before_kib: u64,
    rss_idle_kib: u64,
    rss_after_close_kib: u64,
    opened: usize,
    still_open: usize,
    failures: usize,
    first_failure: Option<String>,
}

impl Memory {
    fn delta_kib(&self) -> i64 {
        self.rss_idle_kib as i64 - self.rss_before_kib as i64
    }

    fn per_conn_bytes(&self) -> f64 {
        self.delta_kib() as f64 * 1024.0 / self.still_open.max(1) as f64
    }

    fn json(&self) -> Value {
        json!({
            "rss_before_kib": self.rss_before_kib,
            "rss_idle_kib": self.rss_idle_kib,
            "rss_after_close_kib": self.rss_after_close_kib,
            "delta_kib": self.delta_kib(),
            "per_conn_bytes": self.per_conn_bytes(),
            "opened": self.opened,
            "still_open": self.still_open,
            "failures": self.failures,
            "first_failure": self.first_failure,
        })
    }
}

async fn idle_memory(
    addr: SocketAddr,
    path: &str,
    n: usize,
    pids: &dyn Fn() -> Vec<u32>,
) -> Result<Memory> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_kib = rss_kib(&pids());
    let gate = Arc::new(tokio::sync::Semaphore::new(IDLE_OPEN_PARALLEL));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let gate = gate.clone();
        let path = path.to_owned();
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            tokio::time::timeout(Duration::from_secs(10), idle_conn(addr, &path))
                .await
                .context("timed out")?
        });
    }
    let mut conns = Vec::with_capacity(n);
    let (mut failures, mut first_failure) = (0, None);
    let end = Instant::now() + Duration::from_secs(300);
    while let Some(r) = tokio::time::timeout_at(end.into(), tasks.join_next())
        .await
        .context("opening idle connections took over 300 s")?
    {
        match r? {
            Ok(s) => conns.push(s),
            Err(e) => {
                failures += 1;
                first_failure.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let opened = conns.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle_kib = rss_kib(&pids());
    let mut probe = [0u8; 1];
    let still_open = conns
        .iter()
        .filter(|s| {
            matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    drop(conns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_close_kib = rss_kib(&pids());
    Ok(Memory {
        rss_before_kib,
        rss_idle_kib,
        rss_after_close_kib,
        opened,
        still_open,
        failures,
        first_failure,
    })
}

// ---------------------------------------------------------------- summary

/// Median (mean of the middle two for an even count), min and max, NaNs
/// left out.
fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((median, v[0], v[n - 1]))
}

fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn cell(values: &[f64]) -> String {
    match spread(values) {
        Some((m, lo, hi)) => format!("{} [{}–{}]", num(m), num(lo), num(hi)),
        None => "-".into(),
    }
}

fn spread_json(values: &[f64]) -> Value {
    match spread(values) {
        Some((m, lo, hi)) => {
            json!({ "median": m, "min": lo, "max": hi, "values": values.iter().map(|x| nan_null(*x)).collect::<Vec<_>>() })
        }
        None => Value::Null,
    }
}

fn machine() -> Value {
    let sh = |cmd: &str, args: &[&str]| -> String {
        Command::new(cmd)
            .args(args)
            .output()
            .map(|o| {
                let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
                t.push_str(&String::from_utf8_lossy(&o.stderr));
                t.lines().next().unwrap_or("").trim().to_owned()
            })
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split(':')
                    .nth(1)
                    .map(|s| s.trim().to_owned())
            })
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
        })
        .and_then(|kib| kib.parse::<f64>().ok())
        .map(|kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_default();
    let nginx = nginx_binary()
        .map(|p| sh(&p.display().to_string(), &["-v"]))
        .unwrap_or_default();
    let git = |args: &[&str]| -> String {
        Command::new("git")
            .arg("-C")
            .arg(repo_root())
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    json!({
        "commit": git(&["rev-parse", "--short", "HEAD"]),
        "uncommitted_in_proxy_pool": git(&["status", "--porcelain", "--", "proxy", "pool"]),
        "loadavg_at_start": loadavg(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory": mem,
        "kernel": sh("uname", &["-r"]),
        "podman": sh("podman", &["--version"]),
        "nginx": nginx,
        "wrk": sh("wrk", &["-v"]),
    })
}

/// `/proc/loadavg` (1, 5 and 15 minutes): other work on the machine.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
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
    let mut rounds: Vec<(usize, [Kind; 4], BTreeMap<Kind, TargetRound>)> = Vec::new();
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

    // Execution records on against off: the same container, the proxy
    // restarted between runs (it adopts the running instance).
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
            answered(&client, &proxy_url, None).await?;
            reset_upstream(ip).await?;
            let pid = stack.proxy_pid().context("proxy pid")?;
            let r = load(&proxy_url, &[], &allow, &[pid], args).await?;
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

    // The table.
    println!();
    println!(
        "ContainerPub compare — {} rounds, {:?} per run after {:?} warm-up, c={}, open loop {} req/s; \
         median [min–max] over rounds; ratios per round",
        args.rounds, args.duration, args.warmup, args.connections, args.rate
    );
    println!(
        "{:<28} {:>26} {:>26} {:>26} {:>26} {:>24} {:>24} {:>24}",
        "figure",
        "direct",
        "nginx",
        "cpub-proxy",
        "keyed (private)",
        "proxy/nginx",
        "proxy/direct",
        "keyed/proxy"
    );
    let mut summary = serde_json::Map::new();
    for fig in &figs {
        let per =
            |k: Kind| -> Vec<f64> { rounds.iter().map(|(_, _, r)| (fig.get)(&r[&k])).collect() };
        let (d, n, p, k) = (
            per(Kind::Direct),
            per(Kind::Nginx),
            per(Kind::Proxy),
            per(Kind::Keyed),
        );
        let ratio = |a: &[f64], b: &[f64]| -> Vec<f64> {
            a.iter()
                .zip(b)
                .map(|(x, y)| x / y)
                .filter(|r| r.is_finite())
                .collect()
        };
        let (pn, pd, kp) = (ratio(&p, &n), ratio(&p, &d), ratio(&k, &p));
        println!(
            "{:<28} {:>26} {:>26} {:>26} {:>26} {:>24} {:>24} {:>24}",
            fig.label,
            cell(&d),
            cell(&n),
            cell(&p),
            cell(&k),
            cell(&pn),
            cell(&pd),
            cell(&kp)
        );
        summary.insert(
            fig.label.clone(),
            json!({
                "direct": spread_json(&d),
                "nginx": spread_json(&n),
                "cpub-proxy": spread_json(&p),
                "keyed": spread_json(&k),
                "proxy/nginx": spread_json(&pn),
                "proxy/direct": spread_json(&pd),
                "keyed/proxy": spread_json(&kp),
            }),
        );
    }
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

    // Goals (reported, not asserted).
    let closed_pn: Vec<f64> = rounds
        .iter()
        .map(|(_, _, r)| {
            r[&Kind::Proxy].closed.throughput_rps / r[&Kind::Nginx].closed.throughput_rps
        })
        .collect();
    let open_p99_pn: Vec<f64> = rounds
        .iter()
        .map(|(_, _, r)| r[&Kind::Proxy].open.latency_ms.p99 / r[&Kind::Nginx].open.latency_ms.p99)
        .collect();
    let closed_kp: Vec<f64> = rounds
        .iter()
        .map(|(_, _, r)| {
            r[&Kind::Keyed].closed.throughput_rps / r[&Kind::Proxy].closed.throughput_rps
        })
        .collect();
    // Records: the ratio of each pair (on / off) of the same round.
    let records_on_off: Vec<f64> = records
        .chunks(2)
        .filter_map(|pair| match pair {
            [(a_on, a), (_, b)] => {
                let (on, off) = if *a_on { (a, b) } else { (b, a) };
                Some(on.closed.throughput_rps / off.closed.throughput_rps)
            }
            _ => None,
        })
        .collect();
    let side = |on: bool| -> Vec<f64> {
        records
            .iter()
            .filter(|(o, _)| *o == on)
            .map(|(_, r)| r.closed.throughput_rps)
            .collect()
    };
    if !records.is_empty() {
        println!();
        println!(
            "execution records, closed c={} req/s: on {} | off {} | on/off per round {}",
            args.connections,
            cell(&side(true)),
            cell(&side(false)),
            cell(&records_on_off)
        );
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let median = |v: &[f64]| spread(v).map_or(f64::NAN, |(m, _, _)| m);
    println!();
    println!(
        "goal (issue 14): throughput proxy/nginx ≥ 1.2 at c={}: {} — {}",
        args.connections,
        cell(&closed_pn),
        verdict(median(&closed_pn) >= 1.2)
    );
    println!(
        "goal (issue 14): open-loop p99 proxy/nginx ≤ 0.8 at {} req/s: {} — {}",
        args.rate,
        cell(&open_p99_pn),
        verdict(median(&open_p99_pn) <= 0.8)
    );
    println!(
        "goal (issue 14): cold start p50 ≤ 60 ms: {:.1} ms — {}; resume p50 ≤ 5 ms: {:.1} ms — {}",
        cold.median(),
        verdict(cold.median() <= 60.0),
        resume.median(),
        verdict(resume.median() <= 5.0)
    );
    println!(
        "goal (issue 10): keyed private / public throughput ≥ 0.97 at c={}: {} — {}",
        args.connections,
        cell(&closed_kp),
        verdict(median(&closed_kp) >= 0.97)
    );
    if !records_on_off.is_empty() {
        println!(
            "goal (issue 11): records on / off throughput ≥ 0.97 at c={}: {} — {}",
            args.connections,
            cell(&records_on_off),
            verdict(median(&records_on_off) >= 0.97)
        );
    }
    println!(
        "goal: proxy memory under {} idle keep-alive connections reported: +{} KiB ({:.0} B/conn; nginx +{} KiB, {:.0} B/conn)",
        proxy_mem.still_open,
        proxy_mem.delta_kib(),
        proxy_mem.per_conn_bytes(),
        nginx_mem.delta_kib(),
        nginx_mem.per_conn_bytes()
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
