//! `cpub stats FUNCTION [--since 1h] [--by minute|hour]`: figures of the
//! function's calls from its execution records — calls, answers by class,
//! refusals, p50/p95/p99, cold-start share and time, queue time.

use anyhow::{Context as _, Result};
use clap::ValueEnum;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use containerpub_wire::executions::{Stats, StatsQuery, StatsRow};

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
