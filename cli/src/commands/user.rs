//! `cpub user add|list|remove|set-role|passwd|whoami`: users and their
//! roles (admins), a user's own password, and who the current token is.
//!
//! Adding a user, raising a role or setting another user's password with a
//! token that expires (a login's) needs the admin's own password. When the
//! control plane asks for it (a 400 naming `current_password`), it is read
//! from the line after the command's own lines with `--password-stdin`, or
//! asked for on the terminal.

use std::future::Future;
use std::io::{BufRead, IsTerminal, Read};

use anyhow::{Context as _, Result, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use containerpub_wire::access::{NewUser, PasswordChange, Role, RoleChange, UserInfo};

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
    /// Add a user (admins). Its password is read from standard input with
    /// --password-stdin, else a random one is made and printed once.
    Add {
        name: String,
        /// admin (everything), developer (deploys, manages its own
        /// functions) or viewer (reads).
        #[arg(long, default_value = "developer")]
        role: Role,
        /// Read the password from the first line of standard input, and
        /// yours from the second (needed when the token in use expires).
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users, their roles and how many functions each owns (admins).
    List {
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Remove a user and revoke its tokens (admins). Refused while it owns
    /// functions, and for the last admin.
    Remove { name: String },
    /// Change a user's role (admins). The last admin cannot be demoted.
    SetRole {
        name: String,
        role: Role,
        /// Read your own password from the first line of standard input
        /// (a raise with a token that expires needs it) instead of the
        /// terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a password: your own (asks for the current one), or another
    /// user's (admins). Ends the user's logins (but, for your own, the one
    /// in use); tokens made with `cpub token create` stay.
    Passwd {
        /// The user [default: the current token's user].
        name: Option<String>,
        /// Read the passwords from standard input: for your own, the current
        /// one on the first line and the new one on the second; for another
        /// user's, the new one, then yours (needed when the token in use
        /// expires).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Who the current token belongs to, and what it may do.
    Whoami,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let client = &ctx.client()?;
    match args.command {
        Command::Add {
            name,
            role,
            password_stdin,
        } => {
            let mut stdin = std::io::stdin().lock();
            let (password, generated) = if password_stdin {
                (read_password_line(&mut stdin)?, false)
            } else {
                (random_password()?, true)
            };
            let own = password_stdin.then_some(&mut stdin as &mut dyn BufRead);
            let user = with_own_password(own, |current_password| {
                let new = NewUser {
                    username: name.clone(),
                    password: password.clone(),
                    role,
                    current_password,
                };
                async move { client.add_user(&new).await }
            })
            .await
            .with_context(|| format!("cannot add user {name}"))?;
            println!("added user {} ({})", user.username, user.role);
            if generated {
                println!("password: {password}");
                eprintln!("(shown once; the user changes it with `cpub user passwd`)");
            }
            Ok(())
        }
        Command::List { output } => {
            let users = client.users().await.context("cannot list users")?;
            match output {
                Output::Json => print_json(&users.raw),
                Output::Table => {
                    println!("{}", table(&users.typed));
                    Ok(())
                }
            }
        }
        Command::Remove { name } => {
            client
                .remove_user(&name)
                .await
                .with_context(|| format!("cannot remove user {name}"))?;
            println!("removed user {name}; its tokens no longer work");
            Ok(())
        }
        Command::SetRole {
            name,
            role,
            password_stdin,
        } => {
            let mut stdin = std::io::stdin().lock();
            let own = password_stdin.then_some(&mut stdin as &mut dyn BufRead);
            let name = name.as_str();
            let user = with_own_password(own, |current_password| {
                let change = RoleChange {
                    role,
                    current_password,
                };
                async move { client.set_role(name, &change).await }
            })
            .await
            .with_context(|| format!("cannot change the role of {name}"))?;
            println!("user {} is now {}", user.username, user.role);
            Ok(())
        }
        Command::Passwd {
            name,
            password_stdin,
        } => {
            let me = client.whoami().await.context("cannot tell who you are")?;
            let name = name.unwrap_or_else(|| me.username.clone());
            let own = name == me.username;
            let mut stdin = std::io::stdin().lock();
            let mut read = |prompt: &str| {
                if password_stdin {
                    read_password_line(&mut stdin)
                } else {
                    prompt_password(prompt)
                }
            };
            let current_password = if own {
                Some(read("current password: ")?)
            } else {
                None
            };
            let new_password = read(&format!("new password for {name}: "))?;
            if !password_stdin && read("repeat it: ")? != new_password {
                bail!("the two new passwords differ");
            }
            let change = |current_password| PasswordChange {
                current_password,
                new_password: new_password.clone(),
            };
            if own {
                client.set_password(&name, &change(current_password)).await
            } else {
                // Another user's: the admin's own password when asked for.
                let own = password_stdin.then_some(&mut stdin as &mut dyn BufRead);
                let name = name.as_str();
                with_own_password(own, |current| {
                    let change = change(current);
                    async move { client.set_password(name, &change).await }
                })
                .await
            }
            .with_context(|| format!("cannot change the password of {name}"))?;
            println!("password of {name} changed");
            if own {
                eprintln!(
                    "your other logins were ended; tokens made with `cpub token create` stay \
                     (`cpub token list`)"
                );
            } else {
                eprintln!(
                    "the logins of {name} were ended; tokens made with `cpub token create` stay \
                     (`cpub token list --all`)"
                );
            }
            Ok(())
        }
        Command::Whoami => {
            let me = client.whoami().await.context("cannot tell who you are")?;
            if me.effective_role == me.role {
                println!("{} ({})", me.username, me.role);
            } else {
                println!(
                    "{} ({}; this token is scoped to {})",
                    me.username, me.role, me.effective_role
                );
            }
            Ok(())
        }
    }
}

/// Makes `call` without the caller's own password, and again with it when
/// the control plane asks for it (a token that expires doing what outlives
/// it): the next line of `stdin` when given (`--password-stdin`; nothing
/// more is read unless asked, so a caller that keeps the pipe open is not
/// waited on), else asked for on the terminal.
async fn with_own_password<T, Fut>(
    stdin: Option<&mut dyn BufRead>,
    call: impl Fn(Option<String>) -> Fut,
) -> Result<T>
where
    Fut: Future<Output = Result<T>>,
{
    match call(None).await {
        Err(e) if ApiFailure::names_field(&e, "current_password") => {
            let password = match stdin {
                Some(mut stdin) => {
                    if std::io::stdin().is_terminal() {
                        eprintln!("{e:#}\nyour own password, on the next line:");
                    }
                    match read_password_line(&mut stdin) {
                        Ok(password) => password,
                        Err(_) => {
                            return Err(e.context(
                                "your own password is needed on the next line of standard input",
                            ));
                        }
                    }
                }
                None => {
                    eprintln!("{e:#}");
                    prompt_password("Your own password: ")?
                }
            };
            call(Some(password)).await
        }
        done => done,
    }
}

/// 18 random bytes from the kernel as hex (144 bits).
fn random_password() -> Result<String> {
    let mut bytes = [0u8; 18];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for a password; pass --password-stdin")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn table(users: &[UserInfo]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(["USER", "ROLE", "FUNCTIONS", "CREATED"]);
    for u in users {
        table.add_row([
            u.username.clone(),
            u.role.to_string(),
            u.functions.to_string(),
            u.created_at.format(TIME_FORMAT).to_string(),
        ]);
    }
    table
}
