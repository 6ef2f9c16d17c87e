//! `cpub describe`: one function, its active configuration and its deployments.

use anyhow::{Context as _, Result};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use containerpub_wire::api::{DeploymentInfo, DeploymentStatus, FunctionInfo};
use containerpub_wire::manifest::{Runtime, Visibility};

use super::{Context, Output, TIME_FORMAT, check_name, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Function name.
    name: String,
    /// Output format. JSON is `{"function": ..., "deployments": [...]}` with
    /// both parts as the server sent them.
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
    match args.output {
        Output::Json => print_json(&serde_json::json!({
            "function": function.raw,
            "deployments": deployments.raw,
        })),
        Output::Table => {
            print!("{}", summary(&function.typed));
            println!("{}", deployments_table(&deployments.typed));
            let latest = deployments.typed.iter().max_by_key(|d| d.version);
            if let Some(failed) = latest.filter(|d| d.status == DeploymentStatus::Failed) {
                println!(
                    "\nlatest deployment (version {}) failed; its build log:",
                    failed.version
                );
                println!("{}", failed.build_log.trim_end());
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
            (Runtime::Binary, Some(entry)) => format!("binary ({entry})"),
            (Runtime::Binary, None) => "binary".to_owned(),
            (Runtime::Container, _) => "container".to_owned(),
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
