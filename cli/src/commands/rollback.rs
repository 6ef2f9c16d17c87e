//! `cpub rollback`: reactivate an earlier version's image and manifest
//! without a build. Without `--to`, the newest built version below the
//! active one (so two rollbacks in a row go back and forth).

use std::time::Instant;

use anyhow::{Context as _, Result};

use super::{Context, check_name};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Function name.
    name: String,
    /// The version to reactivate (see `cpub versions NAME`).
    #[arg(long, value_name = "VERSION", value_parser = clap::value_parser!(i32).range(1..))]
    to: Option<i32>,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    check_name(&args.name)?;
    let started = Instant::now();
    let version = ctx
        .client()?
        .rollback(&args.name, args.to)
        .await
        .with_context(|| format!("cannot roll {} back", args.name))?
        .typed;
    println!(
        "{} v{} active ({}) in {:.1} s",
        args.name,
        version.version,
        super::versions::origin(&version),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
