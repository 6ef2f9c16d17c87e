//! `cpub env set|unset`: change a function's environment without a build
//! (a new version on the same image; new instances start with it before
//! the old ones drain). Also the shared "apply a config change" of
//! `cpub scale`.

use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use containerpub_wire::api::ConfigChange;

use super::{Context, check_name};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Set (add or replace) variables: `cpub env set NAME KEY=VALUE...`.
    Set {
        /// Function name.
        name: String,
        /// KEY=VALUE pairs.
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
    },
    /// Remove variables: `cpub env unset NAME KEY...`.
    Unset {
        /// Function name.
        name: String,
        /// Variable names.
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let (name, change) = match args.action {
        Action::Set { name, pairs } => {
            let mut change = ConfigChange::default();
            for pair in pairs {
                let Some((key, value)) = pair.split_once('=') else {
                    bail!("{pair:?} is not KEY=VALUE");
                };
                if change
                    .env_set
                    .insert(key.to_owned(), value.to_owned())
                    .is_some()
                {
                    bail!("{key} is given twice");
                }
            }
            (name, change)
        }
        Action::Unset { name, keys } => {
            let mut change = ConfigChange::default();
            for key in keys {
                if key.contains('=') {
                    bail!("{key:?}: `env unset` takes variable names, not KEY=VALUE");
                }
                change.env_unset.push(key);
            }
            (name, change)
        }
    };
    check_name(&name)?;
    apply(ctx, &name, &change).await
}

/// Sends `change` and prints the new version and whether the running
/// instances kept serving.
pub async fn apply(ctx: &Context, name: &str, change: &ConfigChange) -> Result<()> {
    let started = Instant::now();
    let version = ctx
        .client()?
        .change_config(name, change)
        .await
        .with_context(|| format!("cannot change the configuration of {name}"))?
        .typed;
    let needs_new = change.memory_mb.is_some()
        || change.cpu.is_some()
        || !change.env_set.is_empty()
        || !change.env_unset.is_empty();
    println!(
        "{name} v{} active ({}) in {:.1} s",
        version.version,
        version.note,
        started.elapsed().as_secs_f64()
    );
    if needs_new {
        println!("new instances started with it; the previous ones drain");
    } else {
        println!("running instances kept serving (scaling applied in place)");
    }
    Ok(())
}
