//! Tracing set-up in one place: `CPUB_LOG` filter (default `info`),
//! `CPUB_LOG_FORMAT=plain|json`, written to stderr (stdout carries only the
//! ready line and first-start secrets).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, ENV_LOG, ENV_LOG_FORMAT};

pub fn init() -> Result<(), ConfigError> {
    let filter = match std::env::var(ENV_LOG) {
        Ok(spec) => EnvFilter::try_new(&spec).map_err(|e| ConfigError {
            setting: ENV_LOG.into(),
            message: format!("invalid filter {spec:?}: {e}"),
        })?,
        Err(_) => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match std::env::var(ENV_LOG_FORMAT).as_deref() {
        Ok("json") => builder.json().init(),
        Ok("plain") | Err(_) => builder.init(),
        Ok(other) => {
            return Err(ConfigError {
                setting: ENV_LOG_FORMAT.into(),
                message: format!("must be \"plain\" or \"json\", got {other:?}"),
            });
        }
    }
    Ok(())
}
