//! The command line (clap) and the dispatch to one module per command.

mod audit;
mod builds;
mod completions;
mod credential;
mod delete;
mod deploy;
mod describe;
mod env;
mod executions;
mod init;
mod invoke;
mod key;
mod list;
mod login;
mod logs;
mod node_token;
mod rollback;
mod scale;
mod secret;
mod signing_key;
mod stats;
mod status;
mod token;
mod user;
mod vendored;
mod versions;

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::client::Client;
use crate::config::{self, ENV_CONFIG, Settings};

/// cpub — deploy and manage ContainerPub functions.
#[derive(Debug, Parser)]
#[command(name = "cpub", version, about)]
pub struct Cli {
    /// Config file [default: $XDG_CONFIG_HOME/cpub/config.toml or ~/.config/cpub/config.toml]
    #[arg(long, global = true, env = ENV_CONFIG, value_name = "PATH")]
    config: Option<PathBuf>,

    /// Deadline of each call to the control plane, in seconds (a deploy
    /// gets at least 20 minutes for its build; the connection itself must
    /// open within 5 s).
    #[arg(long, global = true, env = "CPUB_TIMEOUT", value_name = "SECONDS",
          default_value_t = crate::client::DEFAULT_DEADLINE_S,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Log in to a control plane and store its URL and an API token.
    Login(login::Args),
    /// Pack a function directory and deploy it (waits for the image build).
    Deploy(deploy::Args),
    /// List functions.
    List(list::Args),
    /// Show one function and its deployments.
    Describe(describe::Args),
    /// Delete a function and all its deployments.
    Delete(delete::Args),
    /// Call a function through the proxy and print its answer.
    Invoke(invoke::Args),
    /// Users and roles (admins), passwords, who you are.
    User(user::Args),
    /// Your API tokens: create (shown once), list, revoke.
    Token(token::Args),
    /// Proxies' node credentials (admins).
    NodeToken(node_token::Args),
    /// The audit log of mutating calls (admins).
    Audit(audit::Args),
    /// Invocation keys of a private function: create, list, revoke.
    Key(key::Args),
    /// Secrets of a function (environment at instance start): set, list, unset.
    Secret(secret::Args),
    /// HMAC signing keys of a private function: create, list, revoke.
    SigningKey(signing_key::Args),
    /// List a function's latest calls (execution records).
    Executions(executions::Args),
    /// Figures of a function's calls: errors, percentiles, cold starts, queueing.
    Stats(stats::Args),
    /// The platform: proxies, functions and their instances, start failures.
    Status(status::Args),
    /// Print (or follow with -f) what a function's instances printed.
    Logs(logs::Args),
    /// List a function's versions (builds, rollbacks, config changes).
    Versions(versions::Args),
    /// Reactivate an earlier version without a build.
    Rollback(rollback::Args),
    /// Change instance counts, concurrency, memory or CPU without a build.
    Scale(scale::Args),
    /// Set or unset environment variables without a build.
    Env(env::Args),
    /// Print a shell completion script (bash, zsh, fish).
    Completions(completions::Args),
    /// List a function's builds, newest first.
    Builds(builds::ListArgs),
    /// Print a build's output; -f follows it until the build ends.
    BuildLog(builds::LogArgs),
    /// Create a function directory from a template (rust, go, python, node, static).
    Init(init::Args),
}

/// How listing commands print.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable tables.
    #[default]
    Table,
    /// The server's JSON, pretty-printed.
    Json,
}

/// What every command may need: where the config file is and the effective settings.
pub struct Context {
    pub config_path: PathBuf,
    pub settings: Settings,
    /// Deadline of each call (`--timeout`).
    pub deadline: std::time::Duration,
}

impl Context {
    fn load(explicit: Option<&std::path::Path>, timeout_s: u64) -> Result<Self> {
        let config_path = config::path(explicit)?;
        let file = config::load(&config_path)?;
        let settings = config::resolve(&file, |name| std::env::var(name).ok());
        Ok(Self {
            config_path,
            settings,
            deadline: std::time::Duration::from_secs(timeout_s),
        })
    }

    /// A client with the configured URL and token, for authenticated calls.
    pub fn client(&self) -> Result<Client> {
        Ok(Client::new(
            self.settings.require_url()?,
            Some(self.settings.require_token()?),
        )?
        .with_deadline(self.deadline))
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    if let Command::Completions(args) = cli.command {
        // Needs no configuration.
        return completions::run(args);
    }
    let ctx = Context::load(cli.config.as_deref(), cli.timeout)?;
    match cli.command {
        Command::Login(args) => login::run(&ctx, args).await,
        Command::Deploy(args) => deploy::run(&ctx, args).await,
        Command::List(args) => list::run(&ctx, args).await,
        Command::Describe(args) => describe::run(&ctx, args).await,
        Command::Delete(args) => delete::run(&ctx, args).await,
        Command::Invoke(args) => invoke::run(&ctx, args).await,
        Command::User(args) => user::run(&ctx, args).await,
        Command::Token(args) => token::run(&ctx, args).await,
        Command::NodeToken(args) => node_token::run(&ctx, args).await,
        Command::Audit(args) => audit::run(&ctx, args).await,
        Command::Key(args) => key::run(&ctx, args).await,
        Command::Secret(args) => secret::run(&ctx, args).await,
        Command::SigningKey(args) => signing_key::run(&ctx, args).await,
        Command::Executions(args) => executions::run(&ctx, args).await,
        Command::Stats(args) => stats::run(&ctx, args).await,
        Command::Status(args) => status::run(&ctx, args).await,
        Command::Logs(args) => logs::run(&ctx, args).await,
        Command::Versions(args) => versions::run(&ctx, args).await,
        Command::Rollback(args) => rollback::run(&ctx, args).await,
        Command::Scale(args) => scale::run(&ctx, args).await,
        Command::Env(args) => env::run(&ctx, args).await,
        Command::Completions(_) => unreachable!("handled above"),
        Command::Builds(args) => builds::list(&ctx, args).await,
        Command::BuildLog(args) => builds::log(&ctx, args).await,
        Command::Init(args) => init::run(args),
    }
}

/// Checks a function name given on the command line before it goes into a URL.
pub fn check_name(name: &str) -> Result<()> {
    containerpub_wire::validate_function_name(name)
        .map_err(anyhow::Error::msg)
        .context("invalid function name")
}

/// Prints a JSON value as the server sent it, pretty.
pub fn print_json(value: &serde_json::Value) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).context("cannot print JSON")?
    );
    Ok(())
}

/// `strftime` format of timestamps in tables (the wire types are UTC).
pub const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S UTC";

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
