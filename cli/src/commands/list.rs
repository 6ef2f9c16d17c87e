//! `cpub list`: the caller's functions as a table or as the server's JSON.

use anyhow::{Context as _, Result};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use containerpub_wire::api::FunctionInfo;

use super::{Context, Output, TIME_FORMAT, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let functions = ctx
        .client()?
        .functions()
        .await
        .context("cannot list functions")?;
    match args.output {
        Output::Json => print_json(&functions.raw),
        Output::Table if functions.typed.is_empty() => {
            eprintln!("no functions yet; deploy one with `cpub deploy DIR`");
            Ok(())
        }
        Output::Table => {
            println!("{}", table(&functions.typed));
            Ok(())
        }
    }
}

/// One row per function: name, active version, URL, last update.
pub fn table(functions: &[FunctionInfo]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(["NAME", "VERSION", "URL", "UPDATED"]);
    for f in functions {
        let version = f
            .active_version
            .map_or_else(|| "-".to_owned(), |v| v.to_string());
        table.add_row([
            f.name.clone(),
            version,
            f.url.clone(),
            f.updated_at.format(TIME_FORMAT).to_string(),
        ]);
    }
    table
}
