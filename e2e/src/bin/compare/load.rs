//! Loading a target: the in-process generator's closed and open loops and a
//! `wrk` run, with the CPU time the servers and the generator used.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use containerpub_loadtest::{AllowList, Mode, Plan, Target, TargetSet};
use serde_json::{Value, json};

use crate::processes::{clock_ticks, cpu_seconds};
use crate::{Args, TargetRound};

/// A `wrk` run's figures.
pub(crate) struct Wrk {
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) errors: u64,
    pub(crate) output: String,
}

impl Wrk {
    pub(crate) fn json(&self) -> Value {
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
pub(crate) fn wrk_ms(text: &str) -> Option<f64> {
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

pub(crate) fn parse_wrk(output: &str) -> Result<Wrk> {
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

pub(crate) async fn run_wrk(url: &str, headers: &[(&str, &str)], args: &Args) -> Result<Wrk> {
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
pub(crate) async fn load(
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
pub(crate) async fn answered(client: &reqwest::Client, url: &str, key: Option<&str>) -> Result<()> {
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
