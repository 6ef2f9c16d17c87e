//! `cpub login`: get (or check) an API token and store it with the URL;
//! says when a login's token expires.

use std::io::{BufRead, Write};

use anyhow::{Context as _, Result, bail};

use super::Context;
use crate::client::Client;
use crate::config::{self, ConfigFile};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Control-plane URL, e.g. http://127.0.0.1:7070 [default: CPUB_URL, then the config file]
    #[arg(long)]
    url: Option<String>,
    /// User to log in as.
    #[arg(long, short = 'u', default_value = "admin")]
    username: String,
    /// Read the password from the first line of standard input.
    #[arg(long, conflicts_with = "token")]
    password_stdin: bool,
    /// Store this existing API token instead of logging in (it is checked
    /// first). On the command line it shows in the process list: prefer
    /// --token-stdin.
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Read an existing API token from the first line of standard input
    /// and store it instead of logging in (it is checked first).
    #[arg(long, conflicts_with_all = ["token", "password_stdin"])]
    token_stdin: bool,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let url = match args.url.or_else(|| ctx.settings.url.clone()) {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => bail!("no control-plane URL; pass --url URL (e.g. http://127.0.0.1:7070)"),
    };

    let given = if args.token_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the token from standard input")?;
        Some(line)
    } else {
        args.token
    };
    let (token, who, expires_at) = match given {
        Some(token) => {
            let token = token.trim().to_owned();
            if token.is_empty() {
                bail!("the token is empty");
            }
            Client::new(&url, Some(&token))?
                .functions()
                .await
                .context("the token was not accepted")?;
            (token, None, None)
        }
        None => {
            let password = if args.password_stdin {
                read_password_line(&mut std::io::stdin().lock())?
            } else {
                prompt_password(&format!("password for {} at {url}: ", args.username))?
            };
            let answer = Client::new(&url, None)?
                .login(&args.username, &password)
                .await
                .with_context(|| format!("cannot log in as {}", args.username))?;
            (answer.token, Some(answer.username), answer.expires_at)
        }
    };

    let file = ConfigFile {
        url: Some(url.clone()),
        token: Some(token),
    };
    config::save(&ctx.config_path, &file)?;
    match who {
        Some(user) => println!("logged in to {url} as {user}"),
        None => println!("token for {url} verified"),
    }
    if let Some(at) = expires_at {
        println!(
            "the token expires at {}; then log in again",
            at.format(super::TIME_FORMAT)
        );
    }
    println!("saved to {}", ctx.config_path.display());
    if std::env::var_os(containerpub_wire::ENV_TOKEN).is_some() {
        eprintln!(
            "note: {} is set and overrides the stored token",
            containerpub_wire::ENV_TOKEN
        );
    }
    Ok(())
}

/// Reads one line (the password) without its line ending.
pub(crate) fn read_password_line(input: &mut impl BufRead) -> Result<String> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        bail!("empty password on standard input");
    }
    Ok(password)
}

/// Asks for the password on the terminal (`/dev/tty`) with echo turned off
/// through `stty`, restoring echo afterwards even on error.
pub(crate) fn prompt_password(prompt: &str) -> Result<String> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no terminal to ask for the password on; use --password-stdin")?;
    let stty = |arg: &str| -> bool {
        let Ok(stdin) = tty.try_clone() else {
            return false;
        };
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(stdin)
            .status()
            .is_ok_and(|status| status.success())
    };
    (&tty)
        .write_all(prompt.as_bytes())
        .context("cannot write to the terminal")?;
    let echo_off = stty("-echo");
    let mut reader = std::io::BufReader::new(&tty);
    let result = read_password_line(&mut reader);
    if echo_off {
        stty("echo");
        let _ = (&tty).write_all(b"\n");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::read_password_line;

    #[test]
    fn password_line_loses_only_its_line_ending() {
        let mut input = &b" s3cret pass\r\nnext\n"[..];
        assert_eq!(read_password_line(&mut input).unwrap(), " s3cret pass");
        assert!(read_password_line(&mut &b"\n"[..]).is_err());
    }
}
