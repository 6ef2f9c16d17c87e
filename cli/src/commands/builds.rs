//! `cpub builds FUNCTION` (a function's builds, newest first) and `cpub
//! build-log ID [-f]` (a build's output; `-f` follows it until the build
//! ends). A build runs on the server whether anyone follows it or not.

use anyhow::{Context as _, Result};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use containerpub_wire::api::DeploymentInfo;

use super::{Context, Output, TIME_FORMAT, check_name, print_json};

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Function name.
    name: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// Build id (from `cpub deploy --detach` or `cpub builds`).
    #[arg(value_parser = clap::value_parser!(i64).range(1..))]
    id: i64,
    /// Follow the output until the build ends.
    #[arg(short = 'f', long)]
    follow: bool,
}

pub async fn list(ctx: &Context, args: ListArgs) -> Result<()> {
    check_name(&args.name)?;
    let builds = ctx
        .client()?
        .builds(&args.name)
        .await
        .with_context(|| format!("cannot list the builds of {}", args.name))?;
    match args.output {
        Output::Json => print_json(&builds.raw),
        Output::Table => {
            println!("{}", table(&builds.typed));
            Ok(())
        }
    }
}

pub async fn log(ctx: &Context, args: LogArgs) -> Result<()> {
    let client = ctx.client()?;
    let response = client
        .build_log(args.id, args.follow)
        .await
        .with_context(|| format!("cannot read the log of build {}", args.id))?;
    client
        .copy_log(response, &mut std::io::stdout().lock())
        .await
}

/// One row per build: id, version, status, when.
fn table(builds: &[DeploymentInfo]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(["BUILD", "VERSION", "STATUS", "STARTED"]);
    for b in builds {
        table.add_row([
            b.id.to_string(),
            format!("v{}", b.version),
            b.status.as_str().to_owned(),
            b.created_at.format(TIME_FORMAT).to_string(),
        ]);
    }
    table
}
