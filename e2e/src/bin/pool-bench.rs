//! `pool-bench`: cold start, resume and warm-call cost of the warm pool,
//! measured on the real stack against raw Podman, alternating in one run
//! (this machine's timings swing 2× from minute to minute: only side-by-side
//! figures compare).
//!
//! ```sh
//! cargo build --release --workspace --bins
//! CPUB_TEST_DATABASE_URL=postgres://cpub:cpub@127.0.0.1:54329/cpub \
//!   cargo run --release -p containerpub-e2e --bin pool-bench -- --rounds 10
//! ```
//!
//! Per round:
//! - cold: first call (request in → full response out) through the proxy to
//!   a function that has never run (one function per round, deployed up
//!   front);
//! - raw: `podman run -d` of the same image on the `cpub` network, then
//!   polling its address until the first HTTP 200, then `podman rm -f`
//!   (this pays for the CLI's own process start);
//! - raw API: the same through the libpod REST API (create, start, inspect
//!   with `curl --unix-socket`, the pool's isolation flags), measured after
//!   cold and raw in every round;
//! - resume: a call to a function whose only instance podman reports
//!   paused;
//! - warm: median of warm calls through the proxy vs straight to the
//!   instance's address (same client, keep-alive, interleaved).
//!
//! Cold and raw alternate their order each round (the first run of an image
//! may pay for a first mount). Loopback and container addresses only.

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use containerpub_e2e::{Stack, container_image, container_ip, container_state, timing_dur};

const HELLO: &str = "hello from ContainerPub\n";

struct Args {
    rounds: usize,
    warm_calls: usize,
}

fn args() -> Result<Args> {
    let mut a = Args {
        rounds: 10,
        warm_calls: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| -> Result<usize> {
            it.next()
                .with_context(|| format!("{flag} needs a value"))?
                .parse()
                .with_context(|| format!("{flag}: not a number"))
        };
        match arg.as_str() {
            "--rounds" => a.rounds = value("--rounds")?.clamp(1, 100),
            "--warm-calls" => a.warm_calls = value("--warm-calls")?.clamp(10, 10_000),
            "-h" | "--help" => {
                println!("pool-bench [--rounds N (10)] [--warm-calls N (200)]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(a)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn podman(args: &[&str]) -> Result<String> {
    let out = Command::new("podman").args(args).output()?;
    if !out.status.success() {
        bail!(
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// GET that must answer 200 with hello's body; returns its headers.
async fn call(client: &reqwest::Client, url: &str) -> Result<reqwest::header::HeaderMap> {
    let r = client.get(url).send().await?;
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.text().await?;
    if status != 200 || body != HELLO {
        bail!("{url}: {status} {body:?}");
    }
    Ok(headers)
}

async fn until<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("not within {within:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn only_container(stack: &Stack, function: &str) -> Option<String> {
    let ids = stack.containers(Some(function));
    (ids.len() == 1).then(|| ids[0].clone())
}

/// `podman run -d` of `image` with the pool's main isolation flags, then
/// poll until the first 200; returns the time and removes the container.
async fn raw_start(
    probe: &reqwest::Client,
    image: &str,
    label: &str,
    port: u16,
) -> Result<Duration> {
    let t0 = Instant::now();
    let id = podman(&[
        "run",
        "-d",
        "--network",
        "cpub",
        "-e",
        &format!("PORT={port}"),
        "--label",
        label,
        "--cap-drop=ALL",
        "--security-opt",
        "no-new-privileges",
        "--read-only",
        "--user",
        "65534:65534",
        "--memory",
        "32m",
        image,
    ])?;
    let result = async {
        let ip: IpAddr = container_ip(&id).context("raw container has no address")?;
        let url = format!("http://{ip}:{port}/");
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = probe.get(&url).send().await
                && r.status() == 200
                && r.text().await.is_ok()
            {
                return Ok(t0.elapsed());
            }
            if Instant::now() > end {
                bail!("raw container {id} never answered at {url}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    .await;
    let _ = podman(&["rm", "-f", "-t", "0", &id]);
    result
}

const PODMAN_SOCKET: &str = "/run/podman/podman.sock";

/// One libpod REST call through `curl --unix-socket`; returns the body.
fn podman_api(method: &str, path: &str, body: Option<&str>) -> Result<String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail-with-body", "--unix-socket", PODMAN_SOCKET])
        .args(["-X", method]);
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "--data-binary", b]);
    }
    let out = cmd
        .arg(format!("http://d/v4.0.0/libpod{path}"))
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("podman API {method} {path}: {text}");
    }
    Ok(text)
}

/// Like [`raw_start`] but through the REST API (create, start, inspect)
/// with the pool's spec flags: what the pool itself pays, minus the pool.
async fn raw_api_start(
    probe: &reqwest::Client,
    image: &str,
    node: &str,
    port: u16,
) -> Result<Duration> {
    let spec = serde_json::json!({
        "image": image,
        "labels": { "cpub.bench": node },
        "env": { "PORT": port.to_string() },
        "user": "65534:65534",
        "cap_drop": ["ALL"],
        "no_new_privileges": true,
        "read_only_filesystem": true,
        "resource_limits": { "memory": { "limit": 33554432_i64, "swap": 33554432_i64 } },
        "netns": { "nsmode": "bridge" },
        "Networks": { "cpub": {} },
    })
    .to_string();
    let t0 = Instant::now();
    let created: serde_json::Value =
        serde_json::from_str(&podman_api("POST", "/containers/create", Some(&spec))?)?;
    let id = created["Id"]
        .as_str()
        .context("create answered no Id")?
        .to_owned();
    let result = async {
        podman_api("POST", &format!("/containers/{id}/start"), None)?;
        let info: serde_json::Value =
            serde_json::from_str(&podman_api("GET", &format!("/containers/{id}/json"), None)?)?;
        let ip: IpAddr = info["NetworkSettings"]["Networks"]["cpub"]["IPAddress"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .context("API container has no address")?;
        let url = format!("http://{ip}:{port}/");
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = probe.get(&url).send().await
                && r.status() == 200
                && r.text().await.is_ok()
            {
                return Ok(t0.elapsed());
            }
            if Instant::now() > end {
                bail!("API container {id} never answered at {url}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    .await;
    let _ = podman(&["rm", "-f", "-t", "0", &id]);
    result
}

struct Stats {
    name: &'static str,
    values: Vec<f64>,
}

impl Stats {
    fn new(name: &'static str) -> Self {
        Stats {
            name,
            values: Vec::new(),
        }
    }

    fn pct(sorted: &[f64], p: f64) -> f64 {
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[i.min(sorted.len() - 1)]
    }

    fn median(&self) -> f64 {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        Self::pct(&v, 0.5)
    }

    fn line(&self) -> String {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return format!("{:<28} (no samples)", self.name);
        }
        format!(
            "{:<28} n={:<3} median {:>8.2}  p90 {:>8.2}  min {:>8.2}  max {:>8.2}",
            self.name,
            v.len(),
            Self::pct(&v, 0.5),
            Self::pct(&v, 0.9),
            v[0],
            v[v.len() - 1]
        )
    }
}

fn c_of(c: &Option<(Duration, Option<f64>)>) -> Duration {
    c.as_ref().map_or(Duration::ZERO, |c| c.0)
}

fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    eprintln!(
        "pool-bench ({profile} build of the bench; stack binaries from {}): {} rounds, {} warm calls per round",
        containerpub_e2e::bin("cpub-proxy")
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        args.rounds,
        args.warm_calls
    );
    let stack = Stack::start(&[]).await?;
    let result = run(&stack, &args).await;
    // Raw containers carry this label; the stack removes its own on drop.
    let label = format!("cpub.bench={}", stack.node);
    if let Ok(ids) = podman(&["ps", "-aq", "--filter", &format!("label={label}")]) {
        for id in ids.lines().filter(|l| !l.is_empty()) {
            let _ = podman(&["rm", "-f", "-t", "0", id]);
        }
    }
    if result.is_err() {
        eprintln!("{}", stack.logs());
    }
    result
}

async fn run(stack: &Stack, args: &Args) -> Result<()> {
    let port = 8080;
    let label = format!("cpub.bench={}", stack.node);
    // One never-run function per round for cold starts, one that pauses.
    eprintln!("deploying {} functions …", args.rounds + 1);
    let cold_urls: Vec<(String, String)> = (0..args.rounds)
        .map(|i| {
            let name = format!("bench-cold-{i}");
            let url = stack.deploy("hello", &name, "");
            (name, url)
        })
        .collect();
    let pause_name = "bench-pause";
    let pause_url = stack.deploy(
        "hello",
        pause_name,
        "\n[scaling]\nidle_pause_s = 1\nidle_stop_s = 600\n",
    );

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let probe = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(200))
        .timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()?;

    call(&client, &pause_url).await?;
    let pause_id = until(Duration::from_secs(30), "pause instance", || {
        only_container(stack, pause_name)
    })
    .await?;

    let mut cold = Stats::new("cold via proxy (ms)");
    let mut cold_start = Stats::new("  proxy start dur (ms)");
    let mut raw = Stats::new("raw podman run→200 (ms)");
    let mut ratio = Stats::new("cold/raw (per round)");
    let mut raw_api = Stats::new("raw API create→200 (ms)");
    let mut ratio_api = Stats::new("cold/raw API (per round)");
    let mut resume = Stats::new("resume via proxy (ms)");
    let mut resume_start = Stats::new("  proxy start dur (ms)");
    let mut warm_proxy = Stats::new("warm via proxy (µs, med)");
    let mut warm_direct = Stats::new("warm direct (µs, med)");
    let mut overhead = Stats::new("proxy overhead (µs, med)");

    println!(
        "round  order     cold_ms  start_ms   raw_ms  rawapi_ms  cold/raw  resume_ms  warm_proxy_us  warm_direct_us"
    );
    let mut image: Option<String> = None;
    let mut pausing = true;
    for (round, (name, url)) in cold_urls.iter().enumerate() {
        let raw_first = round % 2 == 1;
        let mut c = None;
        let mut r = None;
        for step in 0..2 {
            if (step == 0) == raw_first {
                // raw needs an image: the first round has none until its cold call.
                let Some(img) = image.clone() else {
                    continue;
                };
                r = Some(raw_start(&probe, &img, &label, port).await?);
            } else {
                let t0 = Instant::now();
                let h = call(&client, url).await?;
                let d = t0.elapsed();
                let kind = containerpub_e2e::start_kind_of(&h).unwrap_or_default();
                if kind != "cold" {
                    eprintln!("round {round}: first call reported start {kind:?}");
                }
                c = Some((d, timing_dur(&h, "start")));
                let id = until(Duration::from_secs(10), "cold instance", || {
                    only_container(stack, name)
                })
                .await?;
                image = Some(container_image(&id).context("image of instance")?);
            }
        }
        let r = match r {
            Some(r) => r,
            None => raw_start(&probe, image.as_ref().unwrap(), &label, port).await?,
        };
        let ra = raw_api_start(&probe, image.as_ref().unwrap(), &stack.node, port).await?;
        raw_api.values.push(ms(ra));
        ratio_api.values.push(ms(c_of(&c)) / ms(ra));
        let (c, c_start) = c.unwrap();
        cold.values.push(ms(c));
        if let Some(s) = c_start {
            cold_start.values.push(s);
        }
        raw.values.push(ms(r));
        ratio.values.push(ms(c) / ms(r));

        // Resume from paused (skipped for good once an instance never pauses).
        let mut d = None;
        if pausing {
            let paused = until(Duration::from_secs(20), "pause instance paused", || {
                (container_state(&pause_id).as_deref() == Some("paused")).then_some(())
            })
            .await;
            if let Err(e) = paused {
                eprintln!("round {round}: {e}; resume is not measured");
                pausing = false;
            } else {
                let t0 = Instant::now();
                let h = call(&client, &pause_url).await?;
                let took = t0.elapsed();
                let kind = containerpub_e2e::start_kind_of(&h).unwrap_or_default();
                if kind != "paused" {
                    eprintln!("round {round}: resume call reported start {kind:?}");
                }
                resume.values.push(ms(took));
                if let Some(s) = timing_dur(&h, "start") {
                    resume_start.values.push(s);
                }
                d = Some(took);
            }
        }

        // Warm: proxy vs direct, interleaved in chunks of 10.
        let id = only_container(stack, name).context("warm instance")?;
        let ip = container_ip(&id).context("instance address")?;
        let direct = format!("http://{ip}:{port}/");
        let (mut p, mut dct) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            call(&client, url).await?;
            call(&client, &direct).await?;
        }
        while p.len() < args.warm_calls {
            for _ in 0..10 {
                let t0 = Instant::now();
                call(&client, url).await?;
                p.push(t0.elapsed().as_secs_f64() * 1e6);
            }
            for _ in 0..10 {
                let t0 = Instant::now();
                call(&client, &direct).await?;
                dct.push(t0.elapsed().as_secs_f64() * 1e6);
            }
        }
        let (mp, md) = (median_of(p), median_of(dct));
        warm_proxy.values.push(mp);
        warm_direct.values.push(md);
        overhead.values.push(mp - md);

        println!(
            "{round:>5}  {:<8} {:>8.1}  {:>8.1} {:>8.1}  {:>9.1}  {:>8.2}  {:>9.1}  {:>13.0}  {:>14.0}",
            if raw_first { "raw,cold" } else { "cold,raw" },
            ms(c),
            c_start.unwrap_or(f64::NAN),
            ms(r),
            ms(ra),
            ms(c) / ms(r),
            d.map_or(f64::NAN, ms),
            mp,
            md
        );
        // Free the round's instance so later rounds run beside as few
        // containers as the first.
        let _ = podman(&["rm", "-f", "-t", "0", &id]);
    }

    println!();
    for s in [
        &cold,
        &cold_start,
        &raw,
        &ratio,
        &raw_api,
        &ratio_api,
        &resume,
        &resume_start,
        &warm_proxy,
        &warm_direct,
        &overhead,
    ] {
        println!("{}", s.line());
    }
    println!(
        "cold/raw of medians: {:.2}; cold/raw API of medians: {:.2}; warm proxy/direct of medians: {:.2}",
        cold.median() / raw.median(),
        cold.median() / raw_api.median(),
        warm_proxy.median() / warm_direct.median()
    );
    Ok(())
}
