//! `cpub status`: the platform at a glance — the route revision, the proxies
//! and the revision each serves, the functions with their instances by state
//! and calls of the last 5 minutes, and the start failures of the last
//! hour: crashes and failed starts of the other kinds (`not_ready`,
//! `runtime`, `capacity`), newest first.

use anyhow::{Context as _, Result};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use containerpub_wire::executions::PlatformStatus;

use super::{Context, Output, TIME_FORMAT, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let status = ctx
        .client()?
        .get_json_query::<PlatformStatus, _>("/status", &[] as &[(&str, &str)])
        .await
        .context("cannot read the platform status")?;
    match args.output {
        Output::Json => print_json(&status.raw),
        Output::Table => {
            print!("{}", text(&status.typed));
            Ok(())
        }
    }
}

/// The three tables, with headings.
pub fn text(s: &PlatformStatus) -> String {
    let mut out = format!("route revision {}\n\nproxies\n", s.route_revision);
    let mut proxies = Table::new();
    proxies
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(["NODE", "REVISION", "SEEN", "INSTANCES"]);
    for p in &s.proxies {
        proxies.add_row([
            p.node.clone(),
            p.revision.to_string(),
            format!("{} s ago", p.seen_s_ago),
            p.instances.map_or_else(|| "-".into(), |n| n.to_string()),
        ]);
    }
    out.push_str(&format!("{proxies}\n\nfunctions\n"));
    let mut functions = Table::new();
    functions.load_preset(UTF8_FULL_CONDENSED).set_header([
        "NAME",
        "VERSION",
        "INSTANCES",
        "CALLS (5 min)",
        "ERRORS (5 min)",
    ]);
    for f in &s.functions {
        let instances = if f.instances.is_empty() {
            "-".to_owned()
        } else {
            f.instances
                .iter()
                .map(|(state, n)| format!("{n} {state}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        functions.add_row([
            f.name.clone(),
            f.active_version
                .map_or_else(|| "-".into(), |v| v.to_string()),
            instances,
            f.calls_5m.to_string(),
            f.errors_5m.to_string(),
        ]);
    }
    out.push_str(&format!("{functions}\n"));
    if s.start_failures.is_empty() {
        out.push_str("\nno start failures in the last hour\n");
    } else {
        let mut failures = Table::new();
        failures.load_preset(UTF8_FULL_CONDENSED).set_header([
            "FUNCTION", "NODE", "REASON", "COUNT", "EXIT", "LAST", "MESSAGE",
        ]);
        for c in &s.start_failures {
            failures.add_row([
                c.function.clone(),
                c.node.clone(),
                c.reason.clone(),
                c.times().to_string(),
                c.exit_code.map_or_else(|| "-".into(), |v| v.to_string()),
                c.at.format(TIME_FORMAT).to_string(),
                c.message.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        out.push_str(&format!("\nstart failures (last hour)\n{failures}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_failures_of_every_kind_show_with_their_reason_and_count() {
        // An older control plane's answer: crashes only, without reason,
        // message or count.
        let old = r#"{"route_revision":3,"proxies":[],"functions":[],"start_failures":[
            {"function":"boom","node":"n1","exit_code":3,"during_start":true,"crashes":4,
             "at":"2026-01-02T03:04:05Z"}]}"#;
        let s: PlatformStatus = serde_json::from_str(old).unwrap();
        assert_eq!(s.start_failures[0].reason, "crash");
        assert_eq!(s.start_failures[0].times(), 4);
        let t = text(&s);
        assert!(
            t.contains("crash") && t.contains('4') && t.contains("boom"),
            "{t}"
        );

        let new = r#"{"route_revision":3,"proxies":[],"functions":[],"start_failures":[
            {"function":"slow","node":"n1","reason":"not_ready","message":"not ready within 2000 ms",
             "count":2,"counts":{"not_ready":2,"capacity":1},"exit_code":null,
             "during_start":true,"crashes":0,"at":"2026-01-02T03:04:06Z"}]}"#;
        let s: PlatformStatus = serde_json::from_str(new).unwrap();
        let t = text(&s);
        for part in [
            "REASON",
            "not_ready",
            "slow",
            "not ready within 2000 ms",
            "2",
        ] {
            assert!(t.contains(part), "{part}: {t}");
        }
    }
}
