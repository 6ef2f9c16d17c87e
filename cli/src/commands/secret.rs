//! `cpub secret set|list|unset FUNCTION KEY`: a function's secrets. The
//! value of `set` comes from stdin or `--from-file`, never from an argument
//! (arguments end up in shell history and in `ps`); one trailing newline
//! is dropped (`echo` adds it). `list` shows names only: values are never
//! answered.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use containerpub_wire::private::{
    MAX_SECRET_VALUE_BYTES, SecretInfo, validate_secret_name, validate_secret_value,
};
use reqwest::Method;

use super::{Context, Output, TIME_FORMAT, check_name, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: SecretCommand,
}

#[derive(Debug, Subcommand)]
enum SecretCommand {
    /// Set a secret (value from stdin, or --from-file); it reaches the
    /// instances started after it, e.g. at the next deploy.
    Set {
        /// Function name.
        function: String,
        /// Secret name: the environment variable the function sees (A-Z, 0-9, _).
        key: String,
        /// Read the value from this file instead of stdin.
        #[arg(long, value_name = "PATH")]
        from_file: Option<PathBuf>,
    },
    /// List a function's secret names (never their values).
    List {
        /// Function name.
        function: String,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Remove a secret.
    Unset {
        /// Function name.
        function: String,
        /// Secret name.
        key: String,
    },
}

/// Reads at most the limit + 1 bytes from `from`, drops one trailing
/// newline, and checks the value.
fn read_value(from: impl Read, source: &str) -> Result<String> {
    let mut bytes = Vec::new();
    from.take(MAX_SECRET_VALUE_BYTES as u64 + 2)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read the value from {source}"))?;
    if bytes.ends_with(b"\r\n") {
        bytes.truncate(bytes.len() - 2);
    } else if bytes.ends_with(b"\n") {
        bytes.truncate(bytes.len() - 1);
    }
    let value = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("the value from {source} is not UTF-8 text"))?;
    validate_secret_value(&value).map_err(|m| anyhow::anyhow!("the value from {source} {m}"))?;
    Ok(value)
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    match args.command {
        SecretCommand::Set {
            function,
            key,
            from_file,
        } => {
            check_name(&function)?;
            validate_secret_name(&key).map_err(|m| anyhow::anyhow!("invalid secret name: {m}"))?;
            let value = match &from_file {
                Some(path) => {
                    let file = std::fs::File::open(path)
                        .with_context(|| format!("cannot open {}", path.display()))?;
                    read_value(file, &path.display().to_string())?
                }
                None => {
                    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                        eprintln!("value of {key} (end with Ctrl-D):");
                    }
                    read_value(std::io::stdin().lock(), "stdin")?
                }
            };
            if value.is_empty() {
                bail!(
                    "the value is empty; pipe it in (`cpub secret set {function} {key} < file`) or use --from-file"
                );
            }
            let body = serde_json::json!({ "value": value });
            ctx.client()?
                .call(
                    Method::PUT,
                    &format!("/functions/{function}/secrets/{key}"),
                    Some(&body),
                )
                .await
                .with_context(|| format!("cannot set secret {key} of {function}"))?;
            println!(
                "set secret {key} of {function} (instances started from now on get it; redeploy to restart running ones)"
            );
            Ok(())
        }
        SecretCommand::List { function, output } => {
            check_name(&function)?;
            let answer = ctx
                .client()?
                .call(Method::GET, &format!("/functions/{function}/secrets"), None)
                .await
                .with_context(|| format!("cannot list the secrets of {function}"))?
                .unwrap_or_default();
            if output == Output::Json {
                return print_json(&answer);
            }
            let secrets: Vec<SecretInfo> =
                serde_json::from_value(answer).context("unexpected answer to secret list")?;
            if secrets.is_empty() {
                eprintln!("{function} has no secrets");
                return Ok(());
            }
            let mut table = Table::new();
            table
                .load_preset(UTF8_FULL_CONDENSED)
                .set_header(["NAME", "UPDATED"]);
            for s in secrets {
                table.add_row([s.name, s.updated_at.format(TIME_FORMAT).to_string()]);
            }
            println!("{table}");
            Ok(())
        }
        SecretCommand::Unset { function, key } => {
            check_name(&function)?;
            validate_secret_name(&key).map_err(|m| anyhow::anyhow!("invalid secret name: {m}"))?;
            ctx.client()?
                .call(
                    Method::DELETE,
                    &format!("/functions/{function}/secrets/{key}"),
                    None,
                )
                .await
                .with_context(|| format!("cannot remove secret {key} of {function}"))?;
            println!("removed secret {key} of {function}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_lose_one_trailing_newline_and_are_checked() {
        assert_eq!(read_value(&b"s3cret\n"[..], "t").unwrap(), "s3cret");
        assert_eq!(read_value(&b"s3cret\r\n"[..], "t").unwrap(), "s3cret");
        assert_eq!(read_value(&b"a\n\n"[..], "t").unwrap(), "a\n");
        assert_eq!(read_value(&b"no newline"[..], "t").unwrap(), "no newline");
        assert!(read_value(&b"\xff\xfe"[..], "t").is_err());
        assert!(read_value(&b"a\0b"[..], "t").is_err());
        let big = vec![b'x'; MAX_SECRET_VALUE_BYTES + 1];
        let err = read_value(&big[..], "t").unwrap_err().to_string();
        assert!(err.contains("limit"), "{err}");
    }
}
