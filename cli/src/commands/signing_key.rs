//! `cpub signing-key create|list|revoke FUNCTION`: the HMAC signing keys of
//! a private function whose manifest's `[access] auth` accepts signatures.
//! `create` prints the secret alone on stdout (shown this once; `cpub
//! signing-key create f > f.secret` keeps it), the key id and the rest on
//! stderr. The commands are `credential.rs`'s; this file says what is
//! particular to signing keys.

use anyhow::{Result, bail};
use clap::Subcommand;
use containerpub_wire::signing::{SigningKeyCreated, SigningKeyInfo, is_key_id_shaped};

use super::credential::{self, CredentialKind};
use super::{Context, Output, TIME_FORMAT};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: SigningKeyCommand,
}

#[derive(Debug, Subcommand)]
enum SigningKeyCommand {
    /// Make a signing key (its secret is printed once, stored sealed).
    Create {
        /// Function name.
        function: String,
        /// A label to tell keys apart in `cpub signing-key list`.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List a function's live signing keys (ids and labels, never secrets).
    List {
        /// Function name.
        function: String,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Revoke a signing key: proxies refuse its signatures once this returns.
    Revoke {
        /// Function name.
        function: String,
        /// The key id (`sk_…`, see `cpub signing-key list`).
        key_id: String,
    },
}

/// `cpub signing-key`: the paths, words and columns of signing keys.
struct SigningKeys;

impl CredentialKind for SigningKeys {
    const PATH: &'static str = "signing-keys";
    const SINGULAR: &'static str = "signing key";
    const PLURAL: &'static str = "signing keys";
    const COMMAND: &'static str = "signing-key";
    const HEADER: &'static [&'static str] = &["KEY ID", "LABEL", "CREATED"];

    type Created = SigningKeyCreated;
    type Info = SigningKeyInfo;
    type Id = String;

    fn announce(function: &str, created: SigningKeyCreated) -> String {
        eprintln!(
            "signing key {id} for {function}; its secret is shown once (stdout). \
             Sign calls with: cpub invoke {function} --sign {id} --sign-secret-file FILE",
            id = created.info.key_id
        );
        created.secret
    }

    fn row(k: SigningKeyInfo) -> Vec<String> {
        vec![
            k.key_id,
            k.label,
            k.created_at.format(TIME_FORMAT).to_string(),
        ]
    }

    fn check_id(key_id: &String) -> Result<()> {
        if !is_key_id_shaped(key_id) {
            bail!(
                "{key_id:?} is not a signing key id (sk_ + 16 hex digits, see cpub signing-key list)"
            );
        }
        Ok(())
    }
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let client = ctx.client()?;
    match args.command {
        SigningKeyCommand::Create { function, label } => {
            credential::create::<SigningKeys>(&client, &function, &label).await
        }
        SigningKeyCommand::List { function, output } => {
            credential::list::<SigningKeys>(&client, &function, output).await
        }
        SigningKeyCommand::Revoke { function, key_id } => {
            credential::revoke::<SigningKeys>(&client, &function, &key_id).await
        }
    }
}
