//! `cpub describe`: one function, its active configuration, its deployments
//! and the last crash of its instances on each proxy node, its keep-warm
//! policy with hits and misses, and its resource use (as the nodes last
//! reported them, `GET /functions/{name}/usage`).

use anyhow::{Context as _, Result};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use containerpub_wire::api::{CrashInfo, DeploymentInfo, DeploymentStatus, FunctionInfo};
use containerpub_wire::manifest::{Runtime, Visibility};
use containerpub_wire::usage::FunctionUsage;

use super::{Context, Output, TIME_FORMAT, check_name, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Function name.
    name: String,
    /// Output format. JSON is `{"function": ..., "deployments": [...],
    /// "crashes": [...], "usage": ...}` with each part as the server sent it.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    check_name(&args.name)?;
    let client = ctx.client()?;
    let function = client
        .function(&args.name)
        .await
        .with_context(|| format!("cannot describe {}", args.name))?;
    let deployments = client
        .deployments(&args.name)
        .await
        .with_context(|| format!("cannot list the deployments of {}", args.name))?;
    let crashes = client
        .crashes(&args.name)
        .await
        .with_context(|| format!("cannot list the crashes of {}", args.name))?;
    let usage = client
        .usage(&args.name)
        .await
        .with_context(|| format!("cannot read the usage of {}", args.name))?;
    match args.output {
        Output::Json => print_json(&serde_json::json!({
            "function": function.raw,
            "deployments": deployments.raw,
            "crashes": crashes.raw,
            "usage": usage.raw,
        })),
        Output::Table => {
            print!("{}", summary(&function.typed));
            print!("{}", keep_warm_lines(&function.typed, &usage.typed));
            if !usage.typed.nodes.is_empty() {
                print!("{}", super::stats::resource_lines(&usage.typed.total));
            }
            println!("{}", deployments_table(&deployments.typed));
            let latest = deployments.typed.iter().max_by_key(|d| d.version);
            if let Some(failed) = latest.filter(|d| d.status == DeploymentStatus::Failed) {
                println!(
                    "\nlatest deployment (version {}) failed; its build log:",
                    failed.version
                );
                println!("{}", failed.build_log.trim_end());
            }
            if !crashes.typed.is_empty() {
                print!("\n{}", crash_lines(&crashes.typed));
            }
            Ok(())
        }
    }
}

/// `key: value` lines about the function and its active manifest.
fn summary(f: &FunctionInfo) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| out.push_str(&format!("{key:<12} {value}\n"));
    line("name:", f.name.clone());
    line("owner:", f.owner.clone());
    line("url:", f.url.clone());
    line(
        "version:",
        f.active_version
            .map_or_else(|| "none active".to_owned(), |v| v.to_string()),
    );
    line("created:", f.created_at.format(TIME_FORMAT).to_string());
    line("updated:", f.updated_at.format(TIME_FORMAT).to_string());
    if let Some(m) = &f.config {
        let runtime = match (m.runtime, &m.entrypoint) {
            (Runtime::Container, _) | (_, None) => m.runtime.as_str().to_owned(),
            (runtime, Some(entry)) => format!("{} ({entry})", runtime.as_str()),
        };
        line("runtime:", runtime);
        let visibility = match m.visibility {
            Visibility::Public => "public",
            Visibility::Private => "private (needs a function key)",
        };
        line("visibility:", visibility.to_owned());
        line("port:", m.port.to_string());
        line(
            "health:",
            m.health_path
                .clone()
                .unwrap_or_else(|| "TCP connect".to_owned()),
        );
        let r = &m.resources;
        line(
            "resources:",
            format!(
                "{} MiB, {} cpu, {} pids, timeout {} ms, body ≤ {} bytes",
                r.memory_mb, r.cpu, r.pids, r.timeout_ms, r.max_body_bytes
            ),
        );
        let s = &m.scaling;
        line(
            "scaling:",
            format!(
                "{}..{} instances, concurrency {}, pause after {} s, stop after {} s",
                s.min_instances, s.max_instances, s.concurrency, s.idle_pause_s, s.idle_stop_s
            ),
        );
        if !m.env.is_empty() {
            let keys: Vec<&str> = m.env.keys().map(String::as_str).collect();
            line("env:", keys.join(", "));
        }
    }
    out
}

/// The keep-warm policy (the manifest's, else each node's window) and
/// its hits and misses since each proxy started.
fn keep_warm_lines(f: &FunctionInfo, usage: &FunctionUsage) -> String {
    let manifest = f.config.as_ref().and_then(|m| m.scaling.keep_warm);
    let mut policy = match manifest {
        Some(true) => "on (manifest)".to_owned(),
        Some(false) => "off (manifest)".to_owned(),
        None => "the node's policy".to_owned(),
    };
    let windows: Vec<String> = usage
        .nodes
        .iter()
        .map(|n| {
            let window = n
                .keep_warm_window_s
                .map_or_else(|| "window unknown".to_owned(), |w| format!("window {w} s"));
            let on = if n.report.keep_warm { "on" } else { "off" };
            format!("{}: {on}, {window}", n.node)
        })
        .collect();
    if !windows.is_empty() {
        policy.push_str(&format!(" — {}", windows.join("; ")));
    }
    let t = &usage.total;
    let calls = t.keep_warm_hits + t.keep_warm_misses;
    let rate = if calls == 0 {
        String::new()
    } else {
        format!(
            " ({:.0} % hit rate)",
            t.keep_warm_hits as f64 * 100.0 / calls as f64
        )
    };
    format!(
        "{:<12} {policy}\n{:<12} {} hits, {} misses, {} kept{rate} since the proxies started\n",
        "keep-warm:", "", t.keep_warm_hits, t.keep_warm_misses, t.keep_warm_kept
    )
}

/// One row per deployment, newest first.
fn deployments_table(deployments: &[DeploymentInfo]) -> Table {
    let mut sorted: Vec<&DeploymentInfo> = deployments.iter().collect();
    sorted.sort_by_key(|d| std::cmp::Reverse(d.version));
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(["VERSION", "STATUS", "DIGEST", "CREATED"]);
    for d in sorted {
        let digest: String = d.digest.chars().take("sha256:".len() + 12).collect();
        table.add_row([
            d.version.to_string(),
            d.status.as_str().to_owned(),
            digest,
            d.created_at.format(TIME_FORMAT).to_string(),
        ]);
    }
    table
}

/// The last crash on each node, newest first: when, where, which version,
/// the exit code, and the output's last lines (indented).
fn crash_lines(crashes: &[CrashInfo]) -> String {
    let mut out = String::new();
    for c in crashes {
        let code = c.exit_code.map_or_else(
            || "an unknown code".to_owned(),
            |code| format!("code {code}"),
        );
        let when = if c.during_start {
            "while starting"
        } else {
            "while serving"
        };
        out.push_str(&format!(
            "last crash on {}: {} — version {} exited with {code} {when} ({} crash{} so far)\n",
            c.node,
            c.at.format(TIME_FORMAT),
            c.version,
            c.crashes,
            if c.crashes == 1 { "" } else { "es" },
        ));
        let output = c.output.trim_end();
        if output.is_empty() {
            out.push_str("  (no output)\n");
        }
        for line in output.lines() {
            out.push_str("  | ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crashes_show_node_version_code_and_output() {
        let crash: CrashInfo = serde_json::from_value(serde_json::json!({
            "node": "edge-1",
            "version": 2,
            "exit_code": 3,
            "output": "starting\nboom\n",
            "during_start": true,
            "crashes": 4,
            "at": "2026-11-29T17:00:00Z",
        }))
        .unwrap();
        let text = crash_lines(&[crash]);
        assert!(text.contains("last crash on edge-1"), "{text}");
        assert!(
            text.contains("version 2 exited with code 3 while starting (4 crashes so far)"),
            "{text}"
        );
        assert!(text.contains("  | starting\n  | boom\n"), "{text}");
    }
}
