//! The one error type of the crate: everything that makes a plan or a
//! scenario unusable before any request is sent.

use std::path::PathBuf;

/// A configuration error; the message names the field or flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A target URL that cannot be parsed or uses something other than `http`.
    #[error("{field}: invalid target url {url:?}: {reason}")]
    Url {
        field: String,
        url: String,
        reason: String,
    },
    /// A target that is neither loopback nor an address the operator allowed.
    #[error(
        "{field}: refusing target host {host:?}: only loopback (127.0.0.0/8, ::1, localhost) or a private address given with --allow-host may be loaded"
    )]
    Refused { field: String, host: String },
    /// An `--allow-host` value that is not a private IP address.
    #[error(
        "allow-host: {0:?} is not a private IP address (10/8, 172.16/12, 192.168/16, fc00::/7)"
    )]
    AllowHost(String),
    /// A value out of range or inconsistent with another one.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// A scenario file that is not valid TOML for the scenario schema.
    #[error("scenario {path}: {message}")]
    Scenario { path: PathBuf, message: String },
    /// A file (scenario, body) that cannot be read.
    #[error("{field}: cannot read {path}: {source}")]
    Read {
        field: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
