//! `cpub key create|list|revoke FUNCTION`: the invocation keys of a private
//! function. `create` prints the key alone on stdout (it is shown this
//! once; `KEY=$(cpub key create f)` keeps it), the rest on stderr. The
//! commands are `credential.rs`'s; this file says what is particular to
//! keys.

use anyhow::Result;
use clap::Subcommand;
use containerpub_wire::private::{KEY_HEADER, KeyCreated, KeyInfo};

use super::credential::{self, CredentialKind};
use super::{Context, Output, TIME_FORMAT};

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

/// `cpub key`: the paths, words and columns of invocation keys.
struct InvocationKeys;

impl CredentialKind for InvocationKeys {
    const PATH: &'static str = "keys";
    const SINGULAR: &'static str = "key";
    const PLURAL: &'static str = "keys";
    const COMMAND: &'static str = "key";
    const HEADER: &'static [&'static str] = &["ID", "PREFIX", "LABEL", "CREATED"];

    type Created = KeyCreated;
    type Info = KeyInfo;
    type Id = i64;

    fn announce(function: &str, created: KeyCreated) -> String {
        eprintln!(
            "key {} ({}) for {function}; shown once: send it as \"Authorization: Bearer <key>\" or \"{KEY_HEADER}: <key>\"",
            created.info.id, created.info.prefix
        );
        created.key
    }

    fn row(k: KeyInfo) -> Vec<String> {
        vec![
            k.id.to_string(),
            format!("{}…", k.prefix),
            k.label,
            k.created_at.format(TIME_FORMAT).to_string(),
        ]
    }
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let client = ctx.client()?;
    match args.command {
        KeyCommand::Create { function, label } => {
            credential::create::<InvocationKeys>(&client, &function, &label).await
        }
        KeyCommand::List { function, output } => {
            credential::list::<InvocationKeys>(&client, &function, output).await
        }
        KeyCommand::Revoke { function, id } => {
            credential::revoke::<InvocationKeys>(&client, &function, &id).await
        }
    }
}
