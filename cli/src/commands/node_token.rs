//! `cpub node-token create|list|revoke`: the credentials proxies use to
//! watch routes and report crashes (admins). A new credential is printed
//! once, alone on standard output, so scripts can capture it; give it to the
//! proxy of that node as `CPUB_NODE_TOKEN`.

use anyhow::{Context as _, Result};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use super::{Context, Output, TIME_FORMAT, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Mint the credential of a node (the proxy's CPUB_NODE name).
    Create {
        node: String,
        /// Replace the node's current credential (the old one stops working).
        #[arg(long)]
        replace: bool,
    },
    /// List nodes with a credential.
    List {
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Revoke a node's credential: its proxy can no longer follow routes
    /// (it keeps serving the routes it has).
    Revoke { node: String },
}

fn check_node(node: &str) -> Result<()> {
    containerpub_wire::validate_node_name(node)
        .map_err(anyhow::Error::msg)
        .context("invalid node name")
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let client = ctx.client()?;
    match args.command {
        Command::Create { node, replace } => {
            check_node(&node)?;
            let created = client
                .create_node_credential(&node, replace)
                .await
                .with_context(|| format!("cannot create the credential of node {node}"))?;
            println!("{}", created.token);
            eprintln!(
                "credential of node {} (shown only now): start its proxy with \
                 CPUB_NODE={} CPUB_NODE_TOKEN=<it>",
                created.node, created.node
            );
            Ok(())
        }
        Command::List { output } => {
            let nodes = client
                .nodes()
                .await
                .context("cannot list node credentials")?;
            match output {
                Output::Json => print_json(&nodes.raw),
                Output::Table => {
                    let mut table = Table::new();
                    table.load_preset(UTF8_FULL_CONDENSED).set_header([
                        "NODE",
                        "CREATED BY",
                        "CREATED",
                        "LAST USED",
                    ]);
                    for n in &nodes.typed {
                        table.add_row([
                            n.node.clone(),
                            n.created_by.clone(),
                            n.created_at.format(TIME_FORMAT).to_string(),
                            n.last_used_at.map_or_else(
                                || "-".to_owned(),
                                |t| t.format(TIME_FORMAT).to_string(),
                            ),
                        ]);
                    }
                    println!("{table}");
                    Ok(())
                }
            }
        }
        Command::Revoke { node } => {
            check_node(&node)?;
            client
                .revoke_node(&node)
                .await
                .with_context(|| format!("cannot revoke the credential of node {node}"))?;
            println!("revoked the credential of node {node}");
            Ok(())
        }
    }
}
