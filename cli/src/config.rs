//! The CLI's settings: `~/.config/cpub/config.toml` (control-plane URL and API
//! token), overridden by `CPUB_URL` / `CPUB_TOKEN`; written with mode 0600.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use containerpub_util::fs::{Modes, write_atomic};
use containerpub_wire::{ENV_TOKEN, ENV_URL};
use serde::{Deserialize, Serialize};

/// Environment variable: path of the config file (also `--config`).
pub const ENV_CONFIG: &str = "CPUB_CONFIG";

/// The file's contents. Both keys are optional so a half-written file still
/// loads; commands say which one is missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Base URL of the control plane, e.g. `http://127.0.0.1:7070`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// API token sent as `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Effective settings after applying the environment over the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub url: Option<String>,
    pub token: Option<String>,
}

impl Settings {
    /// The URL, or an error that says how to set one.
    pub fn require_url(&self) -> Result<&str> {
        self.url.as_deref().with_context(|| {
            format!("no control-plane URL configured; run `cpub login --url URL` or set {ENV_URL}")
        })
    }

    /// The token, or an error that says how to get one.
    pub fn require_token(&self) -> Result<&str> {
        self.token
            .as_deref()
            .with_context(|| format!("not logged in; run `cpub login` or set {ENV_TOKEN}"))
    }
}

/// Applies environment overrides (`lookup` is `std::env::var` in real use) to
/// the file's values. Empty variables count as unset.
pub fn resolve(file: &ConfigFile, lookup: impl Fn(&str) -> Option<String>) -> Settings {
    let env = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    Settings {
        url: env(ENV_URL).or_else(|| file.url.clone()),
        token: env(ENV_TOKEN).or_else(|| file.token.clone()),
    }
}

/// Where the config file lives: `--config`/`CPUB_CONFIG` if given, else
/// `$XDG_CONFIG_HOME/cpub/config.toml`, else `$HOME/.config/cpub/config.toml`.
pub fn path(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .context("neither XDG_CONFIG_HOME nor HOME is set; pass --config PATH")?;
            PathBuf::from(home).join(".config")
        }
    };
    Ok(base.join("cpub").join("config.toml"))
}

/// Reads the file; a missing file is an empty config.
pub fn load(path: &Path) -> Result<ConfigFile> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// Writes the file atomically (temp file + rename) with mode 0600, creating
/// its directory with mode 0700 when needed: the token is a credential.
pub fn save(path: &Path, config: &ConfigFile) -> Result<()> {
    let text = toml::to_string(config).context("cannot encode the config")?;
    write_atomic(path, text.as_bytes(), Modes::PRIVATE)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn file() -> ConfigFile {
        ConfigFile {
            url: Some("http://file:1".into()),
            token: Some("file-token".into()),
        }
    }

    #[test]
    fn env_overrides_file() {
        let settings = resolve(&file(), |name| match name {
            "CPUB_URL" => Some("http://env:2".into()),
            "CPUB_TOKEN" => Some("env-token".into()),
            _ => None,
        });
        assert_eq!(settings.url.as_deref(), Some("http://env:2"));
        assert_eq!(settings.token.as_deref(), Some("env-token"));
    }

    #[test]
    fn file_used_when_env_unset_or_empty() {
        let settings = resolve(&file(), |name| {
            (name == "CPUB_TOKEN").then(|| "  ".to_owned())
        });
        assert_eq!(settings.url.as_deref(), Some("http://file:1"));
        assert_eq!(settings.token.as_deref(), Some("file-token"));
    }

    #[test]
    fn one_variable_overrides_only_its_key() {
        let settings = resolve(&file(), |name| {
            (name == "CPUB_URL").then(|| "http://env:2".into())
        });
        assert_eq!(settings.url.as_deref(), Some("http://env:2"));
        assert_eq!(settings.token.as_deref(), Some("file-token"));
        let empty = resolve(&ConfigFile::default(), |_| None);
        assert!(empty.require_url().is_err());
        assert!(
            empty
                .require_token()
                .unwrap_err()
                .to_string()
                .contains("cpub login")
        );
    }

    #[test]
    fn save_then_load_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/cpub/config.toml");
        assert_eq!(
            load(&path).unwrap(),
            ConfigFile::default(),
            "missing file is empty"
        );
        save(&path, &file()).unwrap();
        assert_eq!(load(&path).unwrap(), file());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Overwriting an existing, too-open file tightens it again.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        save(
            &path,
            &ConfigFile {
                url: None,
                token: Some("t2".into()),
            },
        )
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).unwrap().token.as_deref(), Some("t2"));
    }

    #[test]
    fn unknown_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "url = \"http://x\"\ntokn = \"y\"\n").unwrap();
        let err = format!("{:#}", load(&path).unwrap_err());
        assert!(err.contains("tokn"), "{err}");
    }
}
