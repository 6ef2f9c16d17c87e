//! `pool-bench`: cold start, resume and warm-call cost of the warm pool,
//! measured on the real stack against raw Podman, alternating in one run
//! (this machine's timings swing 2× from minute to minute: only side-by-side
//! figures compare).
//!
//! ```sh
//! cargo build --release --workspace --bins
//! CPUB_TEST_DATABASE_URL=$(bash scripts/pg.sh start) \
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
//! - split: where a cold start goes (create / start / inspect / ready),
//!   from the proxy's `container started` log line, and for the pool's own
//!   spec through the pool's Podman client with the create on the clock
//!   and created ahead (order alternating).
//!
//! Cold and raw alternate their order each round (the first run of an image
//! may pay for a first mount). Loopback and container addresses only.
//!
//! `--userns-compare` adds, per round, what the instance's user namespace
//! costs a cold start: the pool's own container spec through the pool's
//! Podman client (create, start, inspect, first 200) as production runs it
//! (`--userns=auto`) and without the user namespace, in alternating order.
//! The variant without exists in this bench only.

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use clap::builder::TypedValueParser as _;
use containerpub_e2e::Stack;
use containerpub_e2e::bench::{
    ColdBench, FN_PORT, Split, Stats, Userns, call, median_of, ms, only_container, podman,
    raw_api_start, spec_split, spec_start,
};
use containerpub_e2e::container_ip;
use containerpub_pool::Podman;

/// A value out of its range is refused, naming the flag and the range.
#[derive(Debug, Parser)]
#[command(
    name = "pool-bench",
    about = "Cold start, resume and warm-call cost of the warm pool against raw Podman"
)]
struct Args {
    /// Rounds (one cold start of each kind per round).
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u16).range(1..=100).map(usize::from))]
    rounds: usize,
    /// Warm calls per round, through the proxy and straight to the instance.
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u16).range(10..=10_000).map(usize::from))]
    warm_calls: usize,
    /// Also measure what the instance's user namespace costs a cold start.
    #[arg(long)]
    userns_compare: bool,
}

/// The command line; `--help` and a bad flag exit here (clap).
fn args() -> Result<Args> {
    Ok(Args::parse())
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
    if result.is_err() {
        eprintln!("{}", stack.logs());
    }
    result
}

async fn run(stack: &Stack, args: &Args) -> Result<()> {
    let port = FN_PORT;
    // One never-run function per round for cold starts, one that pauses.
    eprintln!("deploying {} functions …", args.rounds + 1);
    let mut bench = ColdBench::setup(stack, "bench", args.rounds).await?;
    let client = bench.client.clone();

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
    let mut spec_userns = Stats::new("spec→200 userns (ms)");
    let mut spec_host = Stats::new("spec→200 no userns (ms)");
    let mut userns_ratio = Stats::new("userns/no userns (round)");
    let podman_api = Podman::new(containerpub_pool::podman::DEFAULT_SOCKET);
    // Where the time goes: the proxy's cold start, and the pool's spec
    // through the pool's Podman client without and with a container
    // created ahead.
    let mut split_proxy = SplitStats::new("proxy cold");
    let mut split_fresh = SplitStats::new("spec fresh");
    let mut split_ahead = SplitStats::new("spec ahead");

    println!(
        "round  order     cold_ms  start_ms   raw_ms  rawapi_ms  cold/raw  resume_ms  warm_proxy_us  warm_direct_us"
    );
    for round in 0..args.rounds {
        let cr = bench.cold_and_raw(round).await?;
        let (c, r) = (cr.cold, cr.raw);
        let ra = raw_api_start(&bench.probe, &cr.image, &stack.node, port).await?;
        raw_api.values.push(ms(ra));
        ratio_api.values.push(ms(c) / ms(ra));
        cold.values.push(ms(c));
        if let Some(s) = cr.cold_start {
            cold_start.values.push(s);
        }
        raw.values.push(ms(r));
        ratio.values.push(ms(c) / ms(r));

        if let Some(split) = cr.split {
            split_proxy.push(split);
        }
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for ahead in order {
            let split =
                spec_split(&podman_api, &bench.probe, &cr.image, bench.label(), ahead).await?;
            if ahead {
                split_ahead.push(split);
            } else {
                split_fresh.push(split);
            }
        }

        // Resume from paused (skipped for good once an instance never pauses).
        let d = bench.resume(round).await?;
        if let Some((took, start)) = d {
            resume.values.push(ms(took));
            if let Some(s) = start {
                resume_start.values.push(s);
            }
        }
        let (name, url) = (&cr.name, &cr.url);

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
            if cr.raw_first { "raw,cold" } else { "cold,raw" },
            ms(c),
            cr.cold_start.unwrap_or(f64::NAN),
            ms(r),
            ms(ra),
            ms(c) / ms(r),
            d.map_or(f64::NAN, |(took, _)| ms(took)),
            mp,
            md
        );
        if args.userns_compare {
            let order = if round % 2 == 0 {
                [Userns::Auto, Userns::Host]
            } else {
                [Userns::Host, Userns::Auto]
            };
            let (mut with, mut without) = (0.0, 0.0);
            for variant in order {
                let took =
                    ms(
                        spec_start(&podman_api, &bench.probe, &cr.image, bench.label(), variant)
                            .await?,
                    );
                match variant {
                    Userns::Auto => with = took,
                    Userns::Host => without = took,
                }
            }
            spec_userns.values.push(with);
            spec_host.values.push(without);
            userns_ratio.values.push(with / without);
            println!(
                "       userns ({}): {with:.1} ms, without: {without:.1} ms, ratio {:.2}",
                if round % 2 == 0 { "first" } else { "second" },
                with / without
            );
        }
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
    println!();
    println!(
        "split of a cold start, medians in ms (create / start / inspect / ready = probe + pool; precreated starts of n)"
    );
    for s in [&split_proxy, &split_fresh, &split_ahead] {
        println!("{}", s.line());
    }
    if args.userns_compare {
        for s in [&spec_userns, &spec_host, &userns_ratio] {
            println!("{}", s.line());
        }
        println!(
            "userns/no userns of medians: {:.2}",
            spec_userns.median() / spec_host.median()
        );
    }
    println!(
        "cold/raw of medians: {:.2}; cold/raw API of medians: {:.2}; warm proxy/direct of medians: {:.2}",
        cold.median() / raw.median(),
        cold.median() / raw_api.median(),
        warm_proxy.median() / warm_direct.median()
    );
    Ok(())
}

/// Medians of [`Split`]s.
struct SplitStats {
    name: &'static str,
    create: Stats,
    start: Stats,
    inspect: Stats,
    ready: Stats,
    total: Stats,
    precreated: usize,
}

impl SplitStats {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            create: Stats::new("create"),
            start: Stats::new("start"),
            inspect: Stats::new("inspect"),
            ready: Stats::new("ready"),
            total: Stats::new("total"),
            precreated: 0,
        }
    }

    fn push(&mut self, s: Split) {
        self.create.values.push(s.create);
        self.start.values.push(s.start);
        self.inspect.values.push(s.inspect);
        self.ready.values.push(s.ready);
        self.total
            .values
            .push(s.create + s.start + s.inspect + s.ready);
        self.precreated += usize::from(s.precreated);
    }

    fn line(&self) -> String {
        let n = self.total.values.len();
        if n == 0 {
            return format!("{:<12} (no samples)", self.name);
        }
        let (lo, hi) = self.total.range();
        format!(
            "{:<12} n={n:<3} create {:>6.1}  start {:>6.1}  inspect {:>5.1}  ready {:>5.1}  total {:>6.1} [{lo:.1}–{hi:.1}]  precreated {}/{n}",
            self.name,
            self.create.median(),
            self.start.median(),
            self.inspect.median(),
            self.ready.median(),
            self.total.median(),
            self.precreated,
        )
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn flags_and_defaults() {
        Args::command().debug_assert();
        let a = Args::try_parse_from(["pool-bench"]).unwrap();
        assert_eq!((a.rounds, a.warm_calls, a.userns_compare), (10, 200, false));
        let a = Args::try_parse_from([
            "pool-bench",
            "--rounds",
            "5",
            "--warm-calls",
            "50",
            "--userns-compare",
        ])
        .unwrap();
        assert_eq!((a.rounds, a.warm_calls, a.userns_compare), (5, 50, true));
        for bad in [
            &["--rounds", "101"][..],
            &["--warm-calls", "9"],
            &["--rounds", "x"],
        ] {
            let argv = std::iter::once("pool-bench").chain(bad.iter().copied());
            let err = Args::try_parse_from(argv).unwrap_err().to_string();
            assert!(err.contains(bad[0]), "{bad:?}: {err}");
        }
    }
}
