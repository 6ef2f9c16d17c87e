//! `cpub signing-key create|list|revoke FUNCTION`: the HMAC signing keys of
//! a private function whose manifest's `[access] auth` accepts signatures.
//! `create` prints the secret alone on stdout (shown this once; `cpub
//! signing-key create f > f.secret` keeps it), the key id and the rest on
//! stderr.

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use containerpub_wire::signing::{SigningKeyCreated, SigningKeyInfo, is_key_id_shaped};
use reqwest::Method;

use super::{Context, Output, TIME_FORMAT, check_name, print_json};

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

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let client = ctx.client()?;
    match args.command {
        SigningKeyCommand::Create { function, label } => {
            check_name(&function)?;
            let body = serde_json::json!({ "label": label });
            let answer = client
                .call(
                    Method::POST,
                    &format!("/functions/{function}/signing-keys"),
                    Some(&body),
                )
                .await
                .with_context(|| format!("cannot create a signing key for {function}"))?
                .context("the server answered no signing key")?;
            let created: SigningKeyCreated = serde_json::from_value(answer)
                .context("unexpected answer to signing-key create")?;
            eprintln!(
                "signing key {id} for {function}; its secret is shown once (stdout). \
                 Sign calls with: cpub invoke {function} --sign {id} --sign-secret-file FILE",
                id = created.info.key_id
            );
            println!("{}", created.secret);
            Ok(())
        }
        SigningKeyCommand::List { function, output } => {
            check_name(&function)?;
            let answer = client
                .call(
                    Method::GET,
                    &format!("/functions/{function}/signing-keys"),
                    None,
                )
                .await
                .with_context(|| format!("cannot list the signing keys of {function}"))?
                .unwrap_or_default();
            if output == Output::Json {
                return print_json(&answer);
            }
            let keys: Vec<SigningKeyInfo> =
                serde_json::from_value(answer).context("unexpected answer to signing-key list")?;
            if keys.is_empty() {
                eprintln!(
                    "{function} has no signing keys; make one with `cpub signing-key create {function}`"
                );
                return Ok(());
            }
            let mut table = Table::new();
            table
                .load_preset(UTF8_FULL_CONDENSED)
                .set_header(["KEY ID", "LABEL", "CREATED"]);
            for k in keys {
                table.add_row([
                    k.key_id,
                    k.label,
                    k.created_at.format(TIME_FORMAT).to_string(),
                ]);
            }
            println!("{table}");
            Ok(())
        }
        SigningKeyCommand::Revoke { function, key_id } => {
            check_name(&function)?;
            if !is_key_id_shaped(&key_id) {
                bail!(
                    "{key_id:?} is not a signing key id (sk_ + 16 hex digits, see cpub signing-key list)"
                );
            }
            client
                .call(
                    Method::DELETE,
                    &format!("/functions/{function}/signing-keys/{key_id}"),
                    None,
                )
                .await
                .with_context(|| format!("cannot revoke signing key {key_id} of {function}"))?;
            println!("revoked signing key {key_id} of {function}");
            Ok(())
        }
    }
}
