//! The tracing set-up of the server binaries, in one place: `CPUB_LOG`
//! filter (`tracing_subscriber::EnvFilter` syntax, default `info`),
//! `CPUB_LOG_FORMAT=plain|json` (default plain), written to stderr (stdout
//! carries only what a binary prints on purpose, such as a ready line or
//! first-start secrets), colours only on a terminal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Environment variable: log filter, e.g. `info` or `cpub_proxy=debug,info`.
pub const ENV_LOG: &str = "CPUB_LOG";
/// Environment variable: log format, `plain` or `json`.
pub const ENV_LOG_FORMAT: &str = "CPUB_LOG_FORMAT";

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

impl LogFormat {
    /// `plain` (or empty) or `json`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "plain" | "" => Some(Self::Plain),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// A logging setting that cannot be used, or a second set-up.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct LogError {
    /// The environment variable at fault (or `logging`).
    pub setting: &'static str,
    pub message: String,
}

/// The filter and format that `log` (`CPUB_LOG`) and `format`
/// (`CPUB_LOG_FORMAT`) ask for; unset means `info`, plain.
pub fn settings(
    log: Option<&str>,
    format: Option<&str>,
) -> Result<(EnvFilter, LogFormat), LogError> {
    let filter = match log {
        Some(spec) => EnvFilter::try_new(spec).map_err(|e| LogError {
            setting: ENV_LOG,
            message: format!("invalid filter {spec:?}: {e}"),
        })?,
        None => EnvFilter::new("info"),
    };
    let format = match format {
        Some(value) => LogFormat::parse(value).ok_or_else(|| LogError {
            setting: ENV_LOG_FORMAT,
            message: format!("must be \"plain\" or \"json\", got {value:?}"),
        })?,
        None => LogFormat::Plain,
    };
    Ok((filter, format))
}

/// Installs the process's subscriber from `CPUB_LOG` and `CPUB_LOG_FORMAT`
/// (a value that is not UTF-8 counts as a bad value).
pub fn init() -> Result<(), LogError> {
    let var = |name: &'static str| match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(LogError {
            setting: name,
            message: "is not valid UTF-8".into(),
        }),
    };
    let (log, format) = (var(ENV_LOG)?, var(ENV_LOG_FORMAT)?);
    let (filter, format) = settings(log.as_deref(), format.as_deref())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Plain => builder.try_init(),
    };
    installed.map_err(|e| LogError {
        setting: "logging",
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_the_environment_values() {
        let (filter, format) = settings(None, None).unwrap();
        assert_eq!(
            (filter.to_string(), format),
            ("info".into(), LogFormat::Plain)
        );
        let (filter, format) = settings(Some("cpub_proxy=debug,info"), Some("json")).unwrap();
        assert_eq!(format, LogFormat::Json);
        assert!(filter.to_string().contains("cpub_proxy=debug"), "{filter}");
        assert_eq!(settings(None, Some("")).unwrap().1, LogFormat::Plain);

        let err = settings(None, Some("xml")).unwrap_err();
        assert_eq!(err.setting, ENV_LOG_FORMAT);
        assert!(err.to_string().contains("got \"xml\""), "{err}");
        let err = settings(Some("a=b=c[x"), None).unwrap_err();
        assert_eq!(err.setting, ENV_LOG);
        assert!(
            err.to_string().starts_with("CPUB_LOG: invalid filter"),
            "{err}"
        );
    }
}
