//! `cpub-control` binary: parse configuration, set up logging, run.

use clap::Parser;
use containerpub_control::config::{Config, EXIT_CONFIG};
use containerpub_control::server;

#[tokio::main]
async fn main() {
    let config = match Config::try_parse() {
        Ok(c) => c,
        Err(err) if err.use_stderr() => {
            let _ = err.print();
            std::process::exit(EXIT_CONFIG);
        }
        Err(err) => err.exit(), // --help, --version
    };
    let settings = match config.validate() {
        Ok(s) => s,
        Err(err) => {
            eprintln!("cpub-control: bad configuration: {err}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    if let Err(err) = containerpub_control::routes::executions::configure_retention() {
        eprintln!("cpub-control: bad configuration: {err}");
        std::process::exit(EXIT_CONFIG);
    }
    if let Err(err) = containerpub_util::logging::init() {
        eprintln!("cpub-control: bad configuration: {err}");
        std::process::exit(EXIT_CONFIG);
    }
    if let Err(err) = server::run(settings).await {
        tracing::error!(error = format!("{err:#}"), "cpub-control stopped");
        eprintln!("cpub-control: {err:#}");
        std::process::exit(1);
    }
}
