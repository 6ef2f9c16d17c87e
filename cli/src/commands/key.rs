//! `cpub key create|list|revoke FUNCTION`: the invocation keys of a private
//! function. `create` prints the key alone on stdout (it is shown this
//! once; `KEY=$(cpub key create f)` keeps it), the rest on stderr.

use anyhow::{Context as _, Result};
use clap::Subcommand;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use containerpub_wire::private::{KEY_HEADER, KeyCreated, KeyInfo};
use reqwest::Method;

use super::{Context, Output, TIME_FORMAT, check_name, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Make a key for a private function (printed once, stored hashed).
    Create {
        /// Function name.
        function: String,
        /// A label to tell keys apart in `cpub key list`.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List a function's live keys (ids, labels and prefixes, never keys).
    List {
        /// Function name.
        function: String,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Revoke a key: proxies refuse it (403) once this returns.
    Revoke {
        /// Function name.
        function: String,
        /// The key's id (see `cpub key list`).
        id: i64,
    },
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let client = ctx.client()?;
    match args.command {
        KeyCommand::Create { function, label } => {
            check_name(&function)?;
            let body = serde_json::json!({ "label": label });
            let answer = client
                .call(
                    Method::POST,
                    &format!("/functions/{function}/keys"),
                    Some(&body),
                )
                .await
                .with_context(|| format!("cannot create a key for {function}"))?
                .context("the server answered no key")?;
            let created: KeyCreated =
                serde_json::from_value(answer).context("unexpected answer to key create")?;
            eprintln!(
                "key {} ({}) for {function}; shown once: send it as \"Authorization: Bearer <key>\" or \"{KEY_HEADER}: <key>\"",
                created.info.id, created.info.prefix
            );
            println!("{}", created.key);
            Ok(())
        }
        KeyCommand::List { function, output } => {
            check_name(&function)?;
            let answer = client
                .call(Method::GET, &format!("/functions/{function}/keys"), None)
                .await
                .with_context(|| format!("cannot list the keys of {function}"))?
                .unwrap_or_default();
            if output == Output::Json {
                return print_json(&answer);
            }
            let keys: Vec<KeyInfo> =
                serde_json::from_value(answer).context("unexpected answer to key list")?;
            if keys.is_empty() {
                eprintln!("{function} has no keys; make one with `cpub key create {function}`");
                return Ok(());
            }
            let mut table = Table::new();
            table
                .load_preset(UTF8_FULL_CONDENSED)
                .set_header(["ID", "PREFIX", "LABEL", "CREATED"]);
            for k in keys {
                table.add_row([
                    k.id.to_string(),
                    format!("{}…", k.prefix),
                    k.label,
                    k.created_at.format(TIME_FORMAT).to_string(),
                ]);
            }
            println!("{table}");
            Ok(())
        }
        KeyCommand::Revoke { function, id } => {
            check_name(&function)?;
            client
                .call(
                    Method::DELETE,
                    &format!("/functions/{function}/keys/{id}"),
                    None,
                )
                .await
                .with_context(|| format!("cannot revoke key {id} of {function}"))?;
            println!("revoked key {id} of {function}");
            Ok(())
        }
    }
}
