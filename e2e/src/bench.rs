//! Pieces shared by the benchmark binaries (`pool-bench`, `compare`): Podman
//! helpers, raw `podman run` / libpod API starts to compare a cold start
//! with, the cold-start and resume measurement on a stack, and small
//! statistics. Loopback and container addresses only.
//!
//! Over 600 lines: the cold-start bench (`ColdBench`, about 200 lines) and
//! the raw starts it is measured against are used together by both
//! benchmark binaries; no unit tests.

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use containerpub_pool::NETWORK;
use containerpub_pool::podman::{ContainerSpec, Podman};
use containerpub_pool::spec::{USERNS_SIZE, container_spec};
use containerpub_wire::Manifest;
use containerpub_wire::api::Route;

use crate::{Stack, container_image, container_ip, container_state, start_kind_of, timing_dur};

/// The body `examples/hello` answers with.
pub const HELLO: &str = "hello from ContainerPub\n";

/// Port the function containers listen on.
pub const FN_PORT: u16 = 8080;

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the podman CLI; returns its trimmed stdout or fails with its stderr.
pub fn podman(args: &[&str]) -> Result<String> {
    let out = Command::new("podman").args(args).output()?;
    if !out.status.success() {
        bail!(
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Removes every container carrying `label` (`key=value`).
pub fn remove_labelled(label: &str) {
    if let Ok(ids) = podman(&["ps", "-aq", "--filter", &format!("label={label}")]) {
        for id in ids.lines().filter(|l| !l.is_empty()) {
            let _ = podman(&["rm", "-f", "-t", "0", id]);
        }
    }
}

/// GET that must answer 200 with hello's body; returns its headers.
pub async fn call(client: &reqwest::Client, url: &str) -> Result<reqwest::header::HeaderMap> {
    let r = client.get(url).send().await?;
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.text().await?;
    if status != 200 || body != HELLO {
        bail!("{url}: {status} {body:?}");
    }
    Ok(headers)
}

/// Polls `f` every 20 ms until it returns `Some` or `within` passes.
pub async fn until<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
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

/// The container of `function` on the stack's node, once there is exactly one.
pub fn only_container(stack: &Stack, function: &str) -> Option<String> {
    let ids = stack.containers(Some(function));
    (ids.len() == 1).then(|| ids[0].clone())
}

/// Polls `url` until it answers 200 (whole body read) or 20 s pass.
async fn first_200(probe: &reqwest::Client, url: &str, what: &str) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = probe.get(url).send().await
            && r.status() == 200
            && r.text().await.is_ok()
        {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("{what} never answered at {url}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `--userns` of the raw starts: the pool's user namespace (pool/src/spec.rs).
const USERNS_AUTO: &str = "auto:size=65536";
const _: () = assert!(USERNS_SIZE == 65_536, "USERNS_AUTO follows the pool");

/// `podman run -d` of `image` with the pool's main isolation flags, then
/// poll until the first 200; returns the time and removes the container.
pub async fn raw_start(
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
        "--userns",
        USERNS_AUTO,
        "--memory",
        "32m",
        image,
    ])?;
    let result = async {
        let ip: IpAddr = container_ip(&id).context("raw container has no address")?;
        first_200(probe, &format!("http://{ip}:{port}/"), "raw container").await?;
        Ok(t0.elapsed())
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
pub async fn raw_api_start(
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
        "userns": { "nsmode": "auto" },
        "idmappings": { "AutoUserNs": true, "AutoUserNsOpts": { "Size": USERNS_SIZE } },
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
        first_200(probe, &format!("http://{ip}:{port}/"), "API container").await?;
        Ok(t0.elapsed())
    }
    .await;
    let _ = podman(&["rm", "-f", "-t", "0", &id]);
    result
}

/// Whether a [`spec_start`] keeps the pool's user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Userns {
    /// The pool's spec as it is (`--userns=auto`): what production runs.
    Auto,
    /// The same spec without `userns` / `idmappings` (the host's ids): the
    /// comparison point, never used outside benchmarks.
    Host,
}

/// The pool's own container spec (`containerpub_pool::spec::container_spec`)
/// of the `hello` example as function `function` on `image`, with the extra
/// label `label` (`key=value`).
fn bench_spec(function: &str, image: &str, label: &str) -> Result<ContainerSpec> {
    let manifest = format!(
        "name = \"{function}\"\nruntime = \"binary\"\nentrypoint = \"bin/hello\"\n\
         health_path = \"/\"\n[resources]\nmemory_mb = 32\n"
    );
    let route = Route {
        function: function.into(),
        deployment_id: 0,
        version: 1,
        image: image.into(),
        config: Manifest::parse(&manifest).context("bench manifest")?,
        keys: Vec::new(),
        secrets: Vec::new(),
        signing_keys: Vec::new(),
    };
    let (key, value) = label.split_once('=').context("label is key=value")?;
    let mut spec = container_spec(&route, &format!("{value}-spec"), NETWORK);
    spec.labels.insert(key.into(), value.into());
    Ok(spec)
}

/// One instance of `image` created, started and inspected through the
/// pool's own Podman client with the pool's own container spec
/// (`containerpub_pool::spec::container_spec`), polled until the first 200:
/// the pool's cold start minus the pool and the proxy. `Userns::Host` drops
/// the user namespace from the spec. The container is labelled with
/// `label` (`key=value`) and removed afterwards.
pub async fn spec_start(
    api: &Podman,
    probe: &reqwest::Client,
    image: &str,
    label: &str,
    userns: Userns,
) -> Result<Duration> {
    let mut spec = bench_spec("bench-userns", image, label)?;
    if userns == Userns::Host {
        spec.userns
            .take()
            .context("the pool's spec has a user namespace")?;
        spec.idmappings = None;
    }
    let t0 = Instant::now();
    let id = api.create_container(&spec).await?;
    let result = async {
        api.start_container(&id).await?;
        let state = api.inspect_container(&id, NETWORK).await?;
        let ip = state.ip.context("spec container has no address")?;
        first_200(probe, &format!("http://{ip}:{FN_PORT}/"), "spec container").await?;
        Ok(t0.elapsed())
    }
    .await;
    let _ = podman(&["rm", "-f", "-t", "0", &id]);
    result
}

/// Where a cold start's time went, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Split {
    /// Until a container existed: Podman's `create`, or taking the one
    /// created ahead (≈ 0).
    pub create: f64,
    /// Podman's `start` (runc, network, user namespace).
    pub start: f64,
    /// The inspect that reads its address.
    pub inspect: f64,
    /// The rest until ready: the readiness probe and the pool's own work.
    pub ready: f64,
    /// Whether the container had been created ahead.
    pub precreated: bool,
}

/// The split of `function`'s last cold start from the proxy's log (its
/// `container started` line, written by `PodmanRuntime::start`) and the
/// call's `start` figure `start_ms`; `None` when the proxy logs no such line.
pub fn start_split(log: &str, function: &str, start_ms: f64) -> Option<Split> {
    let line = log.lines().rev().find(|l| {
        l.contains("container started")
            && l.split_whitespace()
                .any(|w| w.trim_matches('"') == format!("function={function}"))
    })?;
    let field = |key: &str| -> Option<&str> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim_matches('"'))
    };
    let us = |key: &str| -> Option<f64> { Some(field(key)?.parse::<f64>().ok()? / 1000.0) };
    let (create, start, inspect) = (us("create_us")?, us("start_us")?, us("inspect_us")?);
    Some(Split {
        create,
        start,
        inspect,
        ready: start_ms - create - start - inspect,
        precreated: field("precreated") == Some("true"),
    })
}

/// The pool's own container spec of `image` through the pool's Podman
/// client, timed step by step: create (skipped from the timing with
/// `ahead`: created before the clock starts, as the pool does ahead of
/// need), start, inspect, then polling its address until the first 200
/// (every 1 ms). Labelled with `label` and removed afterwards.
pub async fn spec_split(
    api: &Podman,
    probe: &reqwest::Client,
    image: &str,
    label: &str,
    ahead: bool,
) -> Result<Split> {
    let spec = bench_spec("bench-split", image, label)?;
    let mut id = None;
    if ahead {
        id = Some(api.create_container(&spec).await?);
    }
    let t0 = Instant::now();
    let id = match id {
        Some(id) => id,
        None => api.create_container(&spec).await?,
    };
    let created = t0.elapsed();
    let result = async {
        api.start_container(&id).await?;
        let started = t0.elapsed();
        let state = api.inspect_container(&id, NETWORK).await?;
        let inspected = t0.elapsed();
        let ip = state.ip.context("spec container has no address")?;
        let url = format!("http://{ip}:{FN_PORT}/");
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = probe.get(&url).send().await
                && r.status() == 200
                && r.text().await.is_ok()
            {
                break;
            }
            if Instant::now() > end {
                bail!("spec container never answered at {url}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let ready = t0.elapsed();
        Ok(Split {
            create: ms(created),
            start: ms(started - created),
            inspect: ms(inspected - started),
            ready: ms(ready - inspected),
            precreated: ahead,
        })
    }
    .await;
    let _ = podman(&["rm", "-f", "-t", "0", &id]);
    result
}

/// Named samples with their median, percentiles and range.
pub struct Stats {
    pub name: &'static str,
    pub values: Vec<f64>,
}

impl Stats {
    pub fn new(name: &'static str) -> Self {
        Stats {
            name,
            values: Vec::new(),
        }
    }

    fn pct(sorted: &[f64], p: f64) -> f64 {
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[i.min(sorted.len() - 1)]
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .values
            .iter()
            .copied()
            .filter(|x| !x.is_nan())
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The median (NaN without samples).
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        if v.is_empty() {
            return f64::NAN;
        }
        Self::pct(&v, 0.5)
    }

    /// Smallest and largest sample (NaN without samples).
    pub fn range(&self) -> (f64, f64) {
        let v = self.sorted();
        match (v.first(), v.last()) {
            (Some(a), Some(b)) => (*a, *b),
            _ => (f64::NAN, f64::NAN),
        }
    }

    /// One line: count, median, p90, min, max.
    pub fn line(&self) -> String {
        let v = self.sorted();
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

/// The median of `v` (upper median for an even count).
pub fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One round of [`ColdBench::cold_and_raw`].
pub struct ColdRound {
    /// First call through the proxy to a function that never ran.
    pub cold: Duration,
    /// The proxy's own `start` figure of that call (`server-timing`).
    pub cold_start: Option<f64>,
    /// Where that start went (the proxy's `container started` log line).
    pub split: Option<Split>,
    /// `podman run -d` of the same image + first 200.
    pub raw: Duration,
    /// Whether raw ran before the cold call in this round.
    pub raw_first: bool,
    /// The function's name, URL through the proxy and its one container.
    pub name: String,
    pub url: String,
    pub id: String,
    /// The function's image (for raw starts).
    pub image: String,
}

/// Cold start vs raw Podman, and resume from paused, on a stack: one
/// never-run function per round (deployed up front) and one function that
/// pauses after 1 s idle. Cold and raw alternate their order each round (the
/// first run of an image may pay for a first mount).
pub struct ColdBench<'a> {
    stack: &'a Stack,
    cold: Vec<(String, String)>,
    pause_url: String,
    pause_id: String,
    image: Option<String>,
    /// Client for calls through the proxy (30 s timeout).
    pub client: reqwest::Client,
    /// Client for polling raw containers (no keep-alive, short timeouts).
    pub probe: reqwest::Client,
    label: String,
    pausing: bool,
    /// Whether the stack's proxy creates containers ahead of need.
    pub precreating: bool,
}

impl<'a> ColdBench<'a> {
    /// Deploys `rounds` cold functions `{prefix}-cold-N` and the pausing
    /// function `{prefix}-pause`, calls the latter once and waits for its
    /// container.
    pub async fn setup(stack: &'a Stack, prefix: &str, rounds: usize) -> Result<Self> {
        let cold = (0..rounds)
            .map(|i| {
                let name = format!("{prefix}-cold-{i}");
                let url = stack.deploy("hello", &name, "");
                (name, url)
            })
            .collect();
        let pause_name = format!("{prefix}-pause");
        let pause_url = stack.deploy(
            "hello",
            &pause_name,
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
            only_container(stack, &pause_name)
        })
        .await?;
        let precreating = until(
            Duration::from_secs(10),
            "any container created ahead",
            || (!stack.precreated(None).is_empty()).then_some(()),
        )
        .await
        .is_ok();
        eprintln!(
            "containers created ahead of need: {}",
            if precreating {
                "yes"
            } else {
                "no (an older proxy)"
            }
        );
        Ok(Self {
            stack,
            cold,
            pause_url,
            pause_id,
            image: None,
            client,
            probe,
            label: format!("cpub.bench={}", stack.node),
            pausing: true,
            precreating,
        })
    }

    /// Label of the raw containers (removed on drop of the bench).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The cold call of round `round` and a raw start of the same image, in
    /// alternating order (round 0 has no image before its cold call).
    pub async fn cold_and_raw(&mut self, round: usize) -> Result<ColdRound> {
        let (name, url) = self
            .cold
            .get(round)
            .context("no cold function left")?
            .clone();
        let raw_first = round % 2 == 1 && self.image.is_some();
        let mut raw = None;
        if raw_first {
            let img = self.image.clone().context("image")?;
            raw = Some(raw_start(&self.probe, &img, &self.label, FN_PORT).await?);
        }
        if self.precreating {
            // A cold start on this stack begins from the container created
            // ahead when the deployment was routed (proxies before that
            // change create none: `precreating` is false for them).
            let stack = self.stack;
            let ahead = until(Duration::from_secs(10), "container created ahead", || {
                (!stack.precreated(Some(&name)).is_empty()).then_some(())
            })
            .await;
            if let Err(e) = ahead {
                eprintln!("round {round}: {e}");
            }
        }
        let t0 = Instant::now();
        let h = call(&self.client, &url).await?;
        let cold = t0.elapsed();
        let kind = start_kind_of(&h).unwrap_or_default();
        if kind != "cold" {
            eprintln!("round {round}: first call reported start {kind:?}");
        }
        let cold_start = timing_dur(&h, "start");
        let split = cold_start.and_then(|dur| start_split(&self.stack.logs(), &name, dur));
        let stack = self.stack;
        let id = until(Duration::from_secs(10), "cold instance", || {
            only_container(stack, &name)
        })
        .await?;
        let image = container_image(&id).context("image of instance")?;
        self.image = Some(image.clone());
        let raw = match raw {
            Some(r) => r,
            None => raw_start(&self.probe, &image, &self.label, FN_PORT).await?,
        };
        Ok(ColdRound {
            cold,
            cold_start,
            split,
            raw,
            raw_first,
            name,
            url,
            id,
            image,
        })
    }

    /// A call to the pausing function once podman reports it paused: the
    /// call's time and the proxy's `start` figure. `None` (and never again)
    /// once the instance does not pause within 20 s.
    pub async fn resume(&mut self, round: usize) -> Result<Option<(Duration, Option<f64>)>> {
        if !self.pausing {
            return Ok(None);
        }
        let pause_id = self.pause_id.clone();
        let paused = until(Duration::from_secs(20), "pause instance paused", || {
            (container_state(&pause_id).as_deref() == Some("paused")).then_some(())
        })
        .await;
        if let Err(e) = paused {
            eprintln!("round {round}: {e}; resume is not measured");
            self.pausing = false;
            return Ok(None);
        }
        let t0 = Instant::now();
        let h = call(&self.client, &self.pause_url).await?;
        let took = t0.elapsed();
        let kind = start_kind_of(&h).unwrap_or_default();
        if kind != "paused" {
            eprintln!("round {round}: resume call reported start {kind:?}");
        }
        Ok(Some((took, timing_dur(&h, "start"))))
    }
}

impl Drop for ColdBench<'_> {
    fn drop(&mut self) {
        // Raw containers carry this label; the stack removes its own.
        remove_labelled(&self.label);
    }
}
