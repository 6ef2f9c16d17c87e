//! `cpub token create|list|revoke`: the current user's API tokens. A new
//! token is printed once (only its hash is stored); listing shows names,
//! dates and scopes, never a token. A token that would outlive the one
//! in use (a login's expires) needs the user's password: read from
//! standard input with `--password-stdin`, or asked for on the terminal
//! when the control plane says so.

use std::io::{self, IsTerminal};

use anyhow::{Context as _, Result};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use containerpub_wire::access::{NewToken, Role, Timestamp, TokenInfo, parse_duration};

use super::login::{prompt_password, read_password_line};
use super::{Context, Output, TIME_FORMAT, print_json};
use crate::client::ApiFailure;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Create a token; it is printed once on standard output.
    Create {
        /// A name to tell it apart in `cpub token list`.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. 30d, 12h, 2w [default: no expiry].
        #[arg(long, value_parser = check_duration)]
        expires: Option<String>,
        /// Narrow what the token may do (never beyond your own role).
        #[arg(long)]
        role_scope: Option<Role>,
        /// Read your password from the first line of standard input: a
        /// token that outlives the one in use (a login's) needs it.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List your tokens (admins: --all for everyone's).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Revoke a token by its id (from `cpub token list`); the next call
    /// with it is refused.
    Revoke { id: i64 },
}

/// Whether the control plane refused a token for outliving the one in use:
/// a 400 naming `expires`, which the user's password lifts.
fn needs_password(err: &anyhow::Error) -> bool {
    ApiFailure::names_field(err, "expires")
}

fn check_duration(text: &str) -> Result<String, String> {
    parse_duration(text).map(|_| text.to_owned())
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let client = ctx.client()?;
    match args.command {
        Command::Create {
            name,
            expires,
            role_scope,
            password_stdin,
        } => {
            let mut new = NewToken {
                name,
                expires,
                role_scope,
                password: None,
            };
            if password_stdin {
                new.password = Some(read_password_line(&mut std::io::stdin().lock())?);
            }
            let created = match client.create_token(&new).await {
                Err(e)
                    if new.password.is_none()
                        && needs_password(&e)
                        && io::stdin().is_terminal() =>
                {
                    eprintln!("{e:#}");
                    new.password = Some(prompt_password(
                        "Your password (a token that outlives the one in use needs it): ",
                    )?);
                    client.create_token(&new).await
                }
                created => created,
            }
            .context("cannot create a token")?;
            println!("{}", created.token);
            let info = &created.info;
            let expiry = info.expires_at.map_or_else(
                || "never expires".to_owned(),
                |t| format!("expires {}", t.format(TIME_FORMAT)),
            );
            let scope = info
                .role_scope
                .map_or_else(String::new, |r| format!(", scoped to {r}"));
            eprintln!(
                "token {} ({:?}) for {}: {expiry}{scope}. It is shown only now.",
                info.id, info.name, info.username
            );
            Ok(())
        }
        Command::List { all, output } => {
            let tokens = client.tokens(all).await.context("cannot list tokens")?;
            match output {
                Output::Json => print_json(&tokens.raw),
                Output::Table => {
                    println!("{}", table(&tokens.typed));
                    Ok(())
                }
            }
        }
        Command::Revoke { id } => {
            client
                .revoke_token(id)
                .await
                .with_context(|| format!("cannot revoke token {id}"))?;
            println!("revoked token {id}");
            Ok(())
        }
    }
}

fn table(tokens: &[TokenInfo]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "ID",
        "USER",
        "NAME",
        "KIND",
        "SCOPE",
        "CREATED",
        "EXPIRES",
        "LAST USED",
    ]);
    let time = |t: Option<Timestamp>| {
        t.map_or_else(|| "-".to_owned(), |t| t.format(TIME_FORMAT).to_string())
    };
    for t in tokens {
        let id = if t.current {
            format!("{} (this)", t.id)
        } else {
            t.id.to_string()
        };
        table.add_row([
            id,
            t.username.clone(),
            t.name.clone(),
            t.kind.clone(),
            t.role_scope
                .map_or_else(|| "-".to_owned(), |r| r.to_string()),
            t.created_at.format(TIME_FORMAT).to_string(),
            time(t.expires_at),
            time(t.last_used_at),
        ]);
    }
    table
}
