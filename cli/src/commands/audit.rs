//! `cpub audit [--since 1h] [--user NAME] [--function NAME] [--limit N]
//! [--output json]`: the audit log of mutating calls, newest first (admins).

use anyhow::{Context as _, Result};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use containerpub_wire::access::{AuditEntry, AuditQuery};

use super::{Context, Output, TIME_FORMAT, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How far back: a duration (30m, 12h, 7d) or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only calls by this user (or node).
    #[arg(long)]
    user: Option<String>,
    /// Only calls on this function.
    #[arg(long)]
    function: Option<String>,
    /// At most this many rows [default: 10000].
    #[arg(long)]
    limit: Option<u32>,
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let entries = ctx
        .client()?
        .audit(&AuditQuery {
            since: args.since,
            user: args.user,
            function: args.function,
            limit: args.limit,
        })
        .await
        .context("cannot read the audit log")?;
    match args.output {
        Output::Json => print_json(&entries.raw),
        Output::Table if entries.typed.is_empty() => {
            eprintln!("no audited calls match");
            Ok(())
        }
        Output::Table => {
            println!("{}", table(&entries.typed));
            Ok(())
        }
    }
}

fn table(entries: &[AuditEntry]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "TIME",
        "WHO",
        "ROLE",
        "ACTION",
        "TARGET",
        "RESULT",
        "SOURCE",
        "REQUEST ID",
    ]);
    for e in entries {
        let who = e.actor.clone().unwrap_or_else(|| "-".to_owned());
        let who = match e.actor_kind {
            containerpub_wire::access::ActorKind::Node => format!("node {who}"),
            containerpub_wire::access::ActorKind::Anonymous => "(anonymous)".to_owned(),
            containerpub_wire::access::ActorKind::User => who,
        };
        let result = match &e.error {
            Some(error) => format!("{} {error}", e.status),
            None => e.status.to_string(),
        };
        table.add_row([
            e.at.format(TIME_FORMAT).to_string(),
            who,
            e.role.map_or_else(|| "-".to_owned(), |r| r.to_string()),
            e.action.clone(),
            e.target.clone(),
            result,
            e.source.clone().unwrap_or_else(|| "-".to_owned()),
            e.request_id.clone(),
        ]);
    }
    table
}
