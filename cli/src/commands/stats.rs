//! `cpub stats FUNCTION [--since 1h] [--by minute|hour]`: figures of the
//! function's calls from its execution records — calls, answers by class,
//! refusals, p50/p95/p99, cold-start share and time, queue time — and the
//! CPU, memory, OOM kills and restarts of its instances as the nodes last
//! reported them (not bound by `--since`: counters count from each proxy's
//! start).

use anyhow::{Context as _, Result};
use clap::ValueEnum;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use containerpub_wire::executions::{Stats, StatsQuery, StatsRow};
use containerpub_wire::usage::UsageTotal;

use super::executions::parse_since;
use super::{Context, Output, TIME_FORMAT, check_name, print_json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum By {
    Minute,
    Hour,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Function name.
    name: String,
    /// The last DURATION (30s, 10m, 1h, 2d) [default: 1h].
    #[arg(long, value_parser = parse_since)]
    since: Option<String>,
    /// One row per minute or hour besides the total.
    #[arg(long, value_enum)]
    by: Option<By>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    check_name(&args.name)?;
    let query = StatsQuery {
        since: args.since,
        by: args.by.map(|b| match b {
            By::Minute => "minute".to_owned(),
            By::Hour => "hour".to_owned(),
        }),
    };
    let stats = ctx
        .client()?
        .get_json_query::<Stats, _>(&format!("/functions/{}/stats", args.name), &query)
        .await
        .with_context(|| format!("cannot read the stats of {}", args.name))?;
    match args.output {
        Output::Json => print_json(&stats.raw),
        Output::Table => {
            println!("{}", table(&stats.typed));
            match &stats.typed.resources {
                Some(r) => print!("{}", resource_lines(r)),
                None => println!("resources: no node reported the function in the last minute"),
            }
            Ok(())
        }
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

fn row(label: String, r: &StatsRow) -> Vec<String> {
    vec![
        label,
        r.calls.to_string(),
        r.status_2xx.to_string(),
        r.status_3xx.to_string(),
        r.status_4xx.to_string(),
        r.status_5xx.to_string(),
        r.no_answer.to_string(),
        r.rejected.to_string(),
        opt_ms(r.p50_ms),
        opt_ms(r.p95_ms),
        opt_ms(r.p99_ms),
        format!("{} ({:.1} %)", r.cold_starts, r.cold_start_share * 100.0),
        opt_ms(r.cold_start_ms),
        r.paused_starts.to_string(),
        opt_ms(r.queue_mean_ms),
        opt_ms(r.queue_max_ms),
    ]
}

/// The total first, then one row per bucket.
pub fn table(stats: &Stats) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "FROM",
        "CALLS",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "NO ANSWER",
        "REFUSED",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "COLD",
        "COLD ms",
        "RESUMED",
        "QUEUE ms",
        "QUEUE max ms",
    ]);
    table.add_row(row(
        format!("total since {}", stats.since.format(TIME_FORMAT)),
        &stats.total,
    ));
    for r in &stats.rows {
        table.add_row(row(r.from.format(TIME_FORMAT).to_string(), r));
    }
    table
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `key: value` lines of a function's resource use (`cpub stats`, `cpub
/// describe`).
pub fn resource_lines(r: &UsageTotal) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| out.push_str(&format!("{key:<12} {value}\n"));
    let share = r.cpu_share.map_or_else(String::new, |s| {
        format!(", {:.1} % of a core now", s * 100.0)
    });
    line(
        "cpu:",
        format!("{:.3} s since the proxies started{share}", r.cpu_seconds),
    );
    let per_instance = match (r.instance_memory_limit_bytes, r.instance_memory_peak_bytes) {
        (Some(limit), Some(peak)) => {
            format!("; one instance: limit {}, peak {}", mib(limit), mib(peak))
        }
        (Some(limit), None) => format!("; one instance: limit {}", mib(limit)),
        (None, Some(peak)) => format!("; one instance: peak {}", mib(peak)),
        (None, None) => String::new(),
    };
    line(
        "memory:",
        format!(
            "{} in use of {} ({} instance{}){per_instance}",
            mib(r.memory_bytes),
            mib(r.memory_limit_bytes),
            r.instances,
            if r.instances == 1 { "" } else { "s" }
        ),
    );
    line("oom kills:", r.oom_kills.to_string());
    line("restarts:", r.restarts.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_show_cpu_memory_oom_and_restarts() {
        let r = UsageTotal {
            instances: 2,
            cpu_seconds: 1.25,
            cpu_share: Some(0.5),
            memory_bytes: 3 << 20,
            memory_limit_bytes: 256 << 20,
            instance_memory_limit_bytes: Some(128 << 20),
            instance_memory_peak_bytes: Some(2 << 20),
            oom_kills: 1,
            restarts: 4,
            ..UsageTotal::default()
        };
        let text = resource_lines(&r);
        assert!(
            text.contains("1.250 s since the proxies started, 50.0 % of a core"),
            "{text}"
        );
        assert!(
            text.contains("3.0 MiB in use of 256.0 MiB (2 instances); one instance: limit 128.0 MiB, peak 2.0 MiB"),
            "{text}"
        );
        assert!(text.contains("oom kills:   1"), "{text}");
        assert!(text.contains("restarts:    4"), "{text}");
    }
}
