//! `lang-bench`: cold start and warm throughput of a Python and a Node.js
//! hello (the `cpub init` templates, as generated) next to the static
//! binary hello (`examples/hello`), through the proxy of one stack of its
//! own, side by side in one run.
//!
//! ```sh
//! bash examples/build.sh && cargo build --release --workspace --bins
//! CPUB_TEST_DATABASE_URL=$(bash scripts/pg.sh start) \
//!   cargo run --release -p containerpub-e2e --bin lang-bench -- --rounds 6
//! ```
//!
//! - cold: per round, one never-run function of each kind (deployed up
//!   front); the first call (request in → whole answer out) through the
//!   proxy, the three kinds in a rotating order; the per-round ratio to the
//!   static hello of the same round.
//! - warm: closed-loop `cpub-loadtest` runs (the library) through the proxy
//!   against one warm function of each kind, alternating kinds, for
//!   `--load-rounds` rounds of `--duration` each, after a warm-up.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use containerpub_e2e::Stack;
use containerpub_e2e::bench::{Stats, ms};
use containerpub_loadtest::{AllowList, Mode, Plan, Target, TargetSet};

#[derive(Debug, Parser)]
#[command(
    name = "lang-bench",
    about = "Cold start and warm throughput of python / node / static hello"
)]
struct Args {
    /// Cold-start rounds (one fresh function of each kind per round).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u16).range(1..=50))]
    rounds: u16,
    /// Throughput rounds (each kind loaded once per round).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=20))]
    load_rounds: u16,
    /// Length of one throughput run, seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=120))]
    duration: u16,
    /// Connections of a throughput run.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=512))]
    connections: u16,
}

const KINDS: [&str; 3] = ["static", "python", "node"];

/// Deploys a fresh hello of `kind` as `name`; returns its URL.
fn deploy(stack: &Stack, work: &std::path::Path, kind: &str, name: &str) -> Result<String> {
    if kind == "static" {
        return Ok(stack.deploy(
            "hello",
            name,
            "\n[scaling]\nidle_pause_s = 600\nidle_stop_s = 1200\n",
        ));
    }
    let dir = work.join(name);
    let dir_str = dir.to_str().context("utf-8 path")?;
    stack.cpub_ok(&["init", "--template", kind, dir_str]);
    // The same scaling as the static hello: no pause during the bench.
    let manifest = dir.join("cpub.toml");
    let mut text = std::fs::read_to_string(&manifest)?;
    text.push_str("\n[scaling]\nidle_pause_s = 600\nidle_stop_s = 1200\n");
    std::fs::write(&manifest, text)?;
    stack.cpub_ok(&["deploy", dir_str]);
    Ok(format!("{}/fn/{name}/", stack.proxy_url()))
}

/// Named samples (the bench's names live as long as the process).
fn stats(name: String) -> Stats {
    Stats::new(Box::leak(name.into_boxed_str()))
}

async fn first_call(client: &reqwest::Client, url: &str) -> Result<Duration> {
    let t0 = Instant::now();
    let r = client.get(url).send().await?;
    let status = r.status();
    let body = r.bytes().await?;
    let took = t0.elapsed();
    if !status.is_success() || !body.starts_with(b"hello") {
        bail!("{url}: {status} {}", String::from_utf8_lossy(&body));
    }
    Ok(took)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let stack = Stack::start(&[]).await?;
    let work = tempfile::tempdir()?;
    let pid = std::process::id();
    let mut names = Vec::new();
    let result = run(&stack, work.path(), pid, &args, &mut names).await;
    if result.is_err() {
        eprintln!("{}", stack.logs());
    }
    for name in &names {
        let _ = stack.cpub(&["delete", name]);
    }
    drop(containerpub_e2e::RemoveImages::of(&names));
    result
}

async fn run(
    stack: &Stack,
    work: &std::path::Path,
    pid: u32,
    args: &Args,
    names: &mut Vec<String>,
) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    eprintln!(
        "deploying {} functions …",
        args.rounds as usize * KINDS.len()
    );
    let mut urls = Vec::new();
    for round in 0..args.rounds {
        let mut row = Vec::new();
        for kind in KINDS {
            let name = format!("lb-{kind}-{round}-{pid}");
            names.push(name.clone());
            row.push(deploy(stack, work, kind, &name)?);
        }
        urls.push(row);
    }

    let mut cold: Vec<Stats> = KINDS
        .iter()
        .map(|k| stats(format!("cold {k} (ms)")))
        .collect();
    let mut ratio: Vec<Stats> = KINDS[1..]
        .iter()
        .map(|k| stats(format!("cold {k}/static (round)")))
        .collect();
    println!("round  order                 static_ms  python_ms  node_ms");
    for (round, row) in urls.iter().enumerate() {
        let mut took = [0.0; 3];
        let order: Vec<usize> = (0..3).map(|i| (i + round) % 3).collect();
        for &k in &order {
            took[k] = ms(first_call(&client, &row[k]).await?);
            cold[k].values.push(took[k]);
        }
        ratio[0].values.push(took[1] / took[0]);
        ratio[1].values.push(took[2] / took[0]);
        let order_names: Vec<&str> = order.iter().map(|&k| KINDS[k]).collect();
        println!(
            "{round:>5}  {:<20} {:>10.1} {:>10.1} {:>8.1}",
            order_names.join(","),
            took[0],
            took[1],
            took[2]
        );
    }

    // Warm throughput on the last round's (now warm) functions.
    let allow = AllowList::new::<&str>(&[])?;
    let last = urls.last().context("no rounds")?;
    let mut rps: Vec<Stats> = KINDS
        .iter()
        .map(|k| stats(format!("warm {k} (req/s)")))
        .collect();
    let mut p50: Vec<Stats> = KINDS
        .iter()
        .map(|k| stats(format!("warm {k} p50 (ms)")))
        .collect();
    let mut p99: Vec<Stats> = KINDS
        .iter()
        .map(|k| stats(format!("warm {k} p99 (ms)")))
        .collect();
    println!();
    println!("load round  kind     req/s    p50_ms   p99_ms  errors");
    for round in 0..args.load_rounds as usize {
        for i in 0..KINDS.len() {
            let k = (i + round) % KINDS.len();
            let target = Target::parse("url", &last[k], &allow)?;
            let mut plan = Plan::new(TargetSet::single(target));
            plan.mode = Mode::Closed;
            plan.connections = args.connections.into();
            plan.timeout = Duration::from_secs(5);
            plan.warmup = Some(Duration::from_secs(2));
            plan.duration = Some(Duration::from_secs(args.duration.into()));
            let report = containerpub_loadtest::run(plan).await;
            let errors = report.requests - report.ok;
            rps[k].values.push(report.throughput_rps);
            p50[k].values.push(report.latency_ms.p50);
            p99[k].values.push(report.latency_ms.p99);
            println!(
                "{round:>10}  {:<7} {:>7.0} {:>9.2} {:>8.2}  {errors}",
                KINDS[k], report.throughput_rps, report.latency_ms.p50, report.latency_ms.p99
            );
        }
    }
    println!();
    for s in cold
        .iter()
        .chain(&ratio)
        .chain(&rps)
        .chain(&p50)
        .chain(&p99)
    {
        println!("{}", s.line());
    }
    Ok(())
}
