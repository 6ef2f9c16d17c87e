//! `cpub logs FUNCTION [-f] [--since 10m] [--version N] [--instance ID]
//! [--request-id ID] [--tail N] [--output json]`: the lines a function's
//! instances printed, oldest first. Without `--since` the newest `--tail`
//! lines; with `-f` it then waits for new ones (a long poll on the control
//! plane, which answers as soon as a line is stored) until interrupted.
//! `--output json` prints one JSON object per line (`LogLine`, with the
//! function's name in `function`).

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use containerpub_wire::logs::{
    LogLine, LogQuery, LogStream, MAX_QUERY_LINES, clean_line, is_clean,
};

use super::{Context, Output, check_name};

/// How long one follow request waits on the server.
const FOLLOW_WAIT_S: u64 = 25;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Function name.
    name: String,
    /// Keep printing new lines as they come.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only lines printed in this last span: 90s, 10m, 2h, 7d (or seconds).
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    since: Option<u64>,
    /// Without --since: how many of the newest lines to print first.
    #[arg(long, default_value_t = 100, value_name = "N")]
    tail: u32,
    /// Only lines of this deployment version.
    #[arg(long, value_name = "N")]
    version: Option<i32>,
    /// Only lines of this instance (its container id or the start of it).
    #[arg(long, value_name = "ID")]
    instance: Option<String>,
    /// Only lines printed while serving this call (`x-request-id`).
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,
    /// `table`: one line of text each; `json`: one JSON object per line.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// `90s`, `10m`, `2h`, `7d` or plain seconds, as seconds.
fn parse_age(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not an age like 90s, 10m, 2h or 7d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown unit {other:?} (use s, m, h or d)")),
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("{text:?} is too long ago"))
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    check_name(&args.name)?;
    if args.tail == 0 || args.tail > MAX_QUERY_LINES {
        bail!("--tail must be 1 to {MAX_QUERY_LINES}");
    }
    if let Some(instance) = &args.instance
        && (!(4..=64).contains(&instance.len()) || !instance.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        bail!("--instance must be a container id or its first 4 or more hex digits");
    }
    if let Some(id) = &args.request_id
        && !containerpub_wire::request_id::is_valid(id.as_bytes())
    {
        bail!("--request-id must be 1 to 128 of A-Z a-z 0-9 - _ . : + / =");
    }
    let client = ctx.client()?;
    let filter = LogQuery {
        version: args.version,
        instance: args.instance.clone(),
        request_id: args.request_id.clone(),
        ..LogQuery::default()
    };
    let what = || format!("cannot read the logs of {}", args.name);
    // What is there already.
    let mut cursor = match args.since {
        Some(since_s) => {
            let mut query = LogQuery {
                since_s: Some(since_s),
                limit: Some(MAX_QUERY_LINES),
                ..filter.clone()
            };
            loop {
                let page = client.logs(&args.name, &query).await.with_context(what)?;
                print_lines(&args.name, &page.lines, args.output)?;
                if page.lines.len() < MAX_QUERY_LINES as usize {
                    break page.next;
                }
                query.since_s = None;
                query.after = Some(page.next);
            }
        }
        None => {
            let query = LogQuery {
                limit: Some(args.tail),
                ..filter.clone()
            };
            let page = client.logs(&args.name, &query).await.with_context(what)?;
            print_lines(&args.name, &page.lines, args.output)?;
            page.next
        }
    };
    if !args.follow {
        return Ok(());
    }
    let mut failures = 0u32;
    loop {
        let query = LogQuery {
            after: Some(cursor),
            limit: Some(MAX_QUERY_LINES),
            wait_s: Some(FOLLOW_WAIT_S),
            ..filter.clone()
        };
        match client.logs(&args.name, &query).await {
            Ok(page) => {
                failures = 0;
                print_lines(&args.name, &page.lines, args.output)?;
                cursor = page.next;
            }
            Err(err) if refused_for_good(&err) => return Err(err.context(what())),
            Err(err) => {
                failures += 1;
                if failures == 1 {
                    eprintln!("cpub: {:#} (trying again)", err.context(what()));
                }
                tokio::time::sleep(
                    Duration::from_secs(1).min(Duration::from_millis(250) * failures),
                )
                .await;
            }
        }
    }
}

/// Whether a follower should stop on `err`: the control plane itself (its
/// JSON error form) refused the read for a reason that asking again does
/// not change (the function was deleted, the token revoked, the query
/// refused). A 408, 429 (every read permit taken), 5xx, an unreachable
/// control plane or a 4xx page of something in front of it (a proxy while
/// the control plane restarts) pass: it tries again.
fn refused_for_good(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<crate::client::ApiFailure>())
        .any(|failure| {
            failure.from_api
                && failure.status.is_client_error()
                && !matches!(failure.status.as_u16(), 408 | 429)
        })
}

/// Prints `lines` of function `name` (a control plane that predates the
/// lines' `function` field leaves it empty: the JSON form names `name`).
fn print_lines(name: &str, lines: &[LogLine], output: Output) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for line in lines {
        match output {
            Output::Json => {
                let named;
                let line = if line.function.is_empty() {
                    named = LogLine {
                        function: name.to_owned(),
                        ..line.clone()
                    };
                    &named
                } else {
                    line
                };
                serde_json::to_writer(&mut out, line).context("cannot print JSON")?;
                writeln!(out)?;
            }
            Output::Table => writeln!(out, "{}", text_line(line))?,
        }
    }
    out.flush()?;
    Ok(())
}

/// `2026-11-29 21:47:38.396 v3 08fbcc395b6b stdout  the line [request abc]`.
/// The text is cleaned again: a terminal must not run what a server sent.
fn text_line(line: &LogLine) -> String {
    let text = if is_clean(&line.line) {
        line.line.clone()
    } else {
        clean_line(line.line.as_bytes())
    };
    let instance = if line.instance.is_empty() {
        "-"
    } else {
        line.instance.get(..12).unwrap_or(&line.instance)
    };
    let stream = match line.stream {
        LogStream::Stdout => "stdout",
        LogStream::Stderr => "stderr",
        LogStream::System => "system",
    };
    let request = line
        .request_id
        .as_deref()
        .filter(|id| containerpub_wire::request_id::is_valid(id.as_bytes()))
        .map(|id| format!(" [request {id}]"))
        .unwrap_or_default();
    format!(
        "{} v{} {instance:<12} {stream:<6} {text}{request}",
        line.at.format("%Y-%m-%d %H:%M:%S%.3f"),
        line.version,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_stops_only_on_refusals_that_asking_again_keeps() {
        let answered = |status: u16, from_api: bool| {
            anyhow::Error::new(crate::client::ApiFailure {
                status: reqwest::StatusCode::from_u16(status).unwrap(),
                error: "x".into(),
                field: None,
                from_api,
            })
            .context("cannot read the logs of f")
        };
        for status in [400, 401, 403, 404] {
            assert!(refused_for_good(&answered(status, true)), "{status}");
            // A page of a proxy in front: tried again.
            assert!(!refused_for_good(&answered(status, false)), "{status}");
        }
        for status in [408, 429, 500, 502, 503] {
            assert!(!refused_for_good(&answered(status, true)), "{status}");
        }
        assert!(!refused_for_good(&anyhow::anyhow!("connection refused")));
    }

    #[test]
    fn ages_parse() {
        assert_eq!(parse_age("90"), Ok(90));
        assert_eq!(parse_age("90s"), Ok(90));
        assert_eq!(parse_age("10m"), Ok(600));
        assert_eq!(parse_age("2h"), Ok(7200));
        assert_eq!(parse_age("7d"), Ok(604_800));
        assert!(parse_age("10x").is_err());
        assert!(parse_age("m").is_err());
        assert!(parse_age("99999999999999999999d").is_err());
    }

    #[test]
    fn a_hostile_line_is_shown_harmless() {
        let line = LogLine {
            id: 1,
            function: "f".into(),
            at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
            version: 2,
            node: "n".into(),
            instance: "0123456789abcdef".into(),
            stream: LogStream::Stderr,
            request_id: Some("bad id\u{1b}".into()),
            line: "x\u{1b}[2Jy".into(),
        };
        assert_eq!(
            text_line(&line),
            "1970-01-01 00:00:00.000 v2 0123456789ab stderr x\u{fffd}[2Jy"
        );
    }
}
