//! `cpub delete`: remove a function, its deployments and its instances.

use anyhow::{Context as _, Result};

use super::{Context, check_name};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Function name.
    name: String,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    check_name(&args.name)?;
    ctx.client()?
        .delete(&args.name)
        .await
        .with_context(|| format!("cannot delete {}", args.name))?;
    println!("deleted {}", args.name);
    Ok(())
}
