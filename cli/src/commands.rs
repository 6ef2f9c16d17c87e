//! The command line (clap) and the dispatch to one module per command.

mod delete;
mod deploy;
mod describe;
mod init;
mod invoke;
mod list;
mod login;
mod vendored;

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
}

impl Context {
    fn load(explicit: Option<&std::path::Path>) -> Result<Self> {
        let config_path = config::path(explicit)?;
        let file = config::load(&config_path)?;
        let settings = config::resolve(&file, |name| std::env::var(name).ok());
        Ok(Self {
            config_path,
            settings,
        })
    }

    /// A client with the configured URL and token, for authenticated calls.
    pub fn client(&self) -> Result<Client> {
        Client::new(
            self.settings.require_url()?,
            Some(self.settings.require_token()?),
        )
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let ctx = Context::load(cli.config.as_deref())?;
    match cli.command {
        Command::Login(args) => login::run(&ctx, args).await,
        Command::Deploy(args) => deploy::run(&ctx, args).await,
        Command::List(args) => list::run(&ctx, args).await,
        Command::Describe(args) => describe::run(&ctx, args).await,
        Command::Delete(args) => delete::run(&ctx, args).await,
        Command::Invoke(args) => invoke::run(&ctx, args).await,
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
