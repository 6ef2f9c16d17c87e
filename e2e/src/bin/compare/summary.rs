//! The figures' summary: median and spread over rounds, the table's cells,
//! the machine and its load in the JSON report.

use std::process::Command;

use containerpub_e2e::bench::Stats;
use containerpub_e2e::repo_root;
use serde_json::{Map, Value, json};

use crate::memory::Memory;
use crate::processes::nginx_binary;
use crate::{Args, Figure, Kind, Round, TargetRound};

/// Median (mean of the middle two for an even count), min and max, NaNs
/// left out.
pub(crate) fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
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

pub(crate) fn num(x: f64) -> String {
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

pub(crate) fn cell(values: &[f64]) -> String {
    match spread(values) {
        Some((m, lo, hi)) => format!("{} [{}–{}]", num(m), num(lo), num(hi)),
        None => "-".into(),
    }
}

pub(crate) fn spread_json(values: &[f64]) -> Value {
    match spread(values) {
        Some((m, lo, hi)) => {
            json!({ "median": m, "min": lo, "max": hi, "values": values.iter().map(|x| nan_null(*x)).collect::<Vec<_>>() })
        }
        None => Value::Null,
    }
}

pub(crate) fn machine() -> Value {
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
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(crate) fn nan_null(x: f64) -> Value {
    if x.is_finite() { json!(x) } else { Value::Null }
}

/// Prints the table of the rounds' figures, per target and as ratios per
/// round; returns the same as JSON.
pub(crate) fn print_table(args: &Args, figs: &[Figure], rounds: &[Round]) -> Map<String, Value> {
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
    let mut summary = Map::new();
    for fig in figs {
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
    summary
}

/// Prints the goals of the issues against the figures (reported, never
/// asserted: a benchmark's figures swing); returns the records pairs'
/// on/off ratios.
pub(crate) fn print_goals(
    args: &Args,
    rounds: &[Round],
    records: &[(bool, TargetRound)],
    cold: &Stats,
    resume: &Stats,
    [proxy_mem, nginx_mem]: [&Memory; 2],
) -> Vec<f64> {
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
    records_on_off
}
