//! `cpub executions FUNCTION [--status 5xx] [--since 1h] [--limit N]`: the
//! function's latest calls from its execution records, newest first.

use anyhow::{Context as _, Result};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use containerpub_wire::executions::{self as wire, ExecutionInfo, ExecutionsQuery};

use super::{Context, Output, TIME_FORMAT, check_name, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Function name.
    name: String,
    /// Only calls answered with this status (503) or class (5xx).
    #[arg(long, value_parser = parse_status)]
    status: Option<String>,
    /// Only calls of the last DURATION (30s, 10m, 1h, 2d) [default: 1h].
    #[arg(long, value_parser = parse_since)]
    since: Option<String>,
    /// Most calls shown.
    #[arg(long, default_value_t = wire::DEFAULT_LIST_LIMIT, value_parser = clap::value_parser!(u32).range(1..=i64::from(wire::MAX_LIST_LIMIT)))]
    limit: u32,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

fn parse_status(s: &str) -> Result<String, String> {
    wire::StatusFilter::parse(s).map(|_| s.to_owned())
}

pub(super) fn parse_since(s: &str) -> Result<String, String> {
    wire::parse_since(s).map(|_| s.to_owned())
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    check_name(&args.name)?;
    let query = ExecutionsQuery {
        status: args.status,
        since: args.since,
        limit: Some(args.limit),
    };
    let calls = ctx
        .client()?
        .get_json_query::<Vec<ExecutionInfo>, _>(
            &format!("/functions/{}/executions", args.name),
            &query,
        )
        .await
        .with_context(|| format!("cannot list the calls of {}", args.name))?;
    match args.output {
        Output::Json => print_json(&calls.raw),
        Output::Table if calls.typed.is_empty() => {
            eprintln!("no calls of {} in that window", args.name);
            Ok(())
        }
        Output::Table => {
            println!("{}", table(&calls.typed));
            Ok(())
        }
    }
}

fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

/// One row per call.
pub fn table(calls: &[ExecutionInfo]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "TIME",
        "VERSION",
        "METHOD",
        "STATUS",
        "START",
        "TOTAL ms",
        "QUEUE ms",
        "START ms",
        "UPSTREAM ms",
        "IN",
        "OUT",
        "INSTANCE",
        "REQUEST ID",
        "TRACE ID",
    ]);
    for c in calls {
        let r = &c.record;
        let status = match (&r.rejection, r.status) {
            (Some(reason), s) => format!("{s} ({reason})"),
            (None, 0) => "-".to_owned(),
            (None, s) => s.to_string(),
        };
        table.add_row([
            c.at.format(TIME_FORMAT).to_string(),
            r.version.to_string(),
            r.method.clone(),
            status,
            r.start.map_or("-", |k| k.as_str()).to_owned(),
            ms(r.total_us),
            ms(r.queue_us),
            ms(r.start_us),
            ms(r.upstream_us),
            r.bytes_in.to_string(),
            r.bytes_out.to_string(),
            r.instance.clone().unwrap_or_else(|| "-".into()),
            r.request_id.clone(),
            r.trace_id.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    table
}
