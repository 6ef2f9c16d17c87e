//! `cpub scale`: change a function's instance counts, concurrency or
//! limits without a build (a new version on the same image). Instance
//! counts and concurrency apply to the running instances; memory and CPU
//! need new instances (started before the old ones drain).

use anyhow::{Result, bail};
use containerpub_wire::api::ConfigChange;

use super::{Context, check_name};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Function name.
    name: String,
    /// Instances kept running at all times.
    #[arg(long)]
    min: Option<u32>,
    /// Upper bound on instances.
    #[arg(long)]
    max: Option<u32>,
    /// In-flight requests per instance.
    #[arg(long)]
    concurrency: Option<u32>,
    /// Memory limit per instance, in MiB (new instances).
    #[arg(long, value_name = "MIB")]
    memory: Option<u32>,
    /// CPU quota per instance, in cores, e.g. 0.5 (new instances).
    #[arg(long, value_name = "CORES")]
    cpu: Option<f64>,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    check_name(&args.name)?;
    let change = ConfigChange {
        min_instances: args.min,
        max_instances: args.max,
        concurrency: args.concurrency,
        memory_mb: args.memory,
        cpu: args.cpu,
        ..ConfigChange::default()
    };
    if change.is_empty() {
        bail!("nothing to change: give --min, --max, --concurrency, --memory or --cpu");
    }
    super::env::apply(ctx, &args.name, &change).await
}
