//! `cpub versions`: a function's versions, newest first — how each came
//! about (build, rollback, config change), its status and image.

use anyhow::{Context as _, Result};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use containerpub_wire::api::{DeploymentStatus, VersionInfo, VersionKind};

use super::{Context, Output, TIME_FORMAT, check_name, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Function name.
    name: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    check_name(&args.name)?;
    let versions = ctx
        .client()?
        .versions(&args.name)
        .await
        .with_context(|| format!("cannot list the versions of {}", args.name))?;
    match args.output {
        Output::Json => print_json(&versions.raw),
        Output::Table => {
            println!("{}", table(&versions.typed));
            Ok(())
        }
    }
}

/// What a version is, in a few words: `build`, `rollback to v2`, the
/// config change's note.
pub fn origin(v: &VersionInfo) -> String {
    match v.kind {
        VersionKind::Build => "build".to_owned(),
        VersionKind::Rollback | VersionKind::Config if !v.note.is_empty() => v.note.clone(),
        VersionKind::Rollback => format!("rollback to v{}", v.source_version.unwrap_or(0)),
        VersionKind::Config => "config change".to_owned(),
    }
}

/// One row per version; the active one is marked `*`.
pub fn table(versions: &[VersionInfo]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(["VERSION", "STATUS", "ORIGIN", "IMAGE", "CREATED"]);
    for v in versions {
        let mark = if v.status == DeploymentStatus::Active {
            "*"
        } else {
            " "
        };
        table.add_row([
            format!("{mark}v{}", v.version),
            v.status.as_str().to_owned(),
            origin(v),
            v.image.clone().unwrap_or_else(|| "-".into()),
            v.created_at.format(TIME_FORMAT).to_string(),
        ]);
    }
    table
}
