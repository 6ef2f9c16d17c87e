//! Command-line flags and `CPUB_*` environment variables of `cpub-control`,
//! with validation whose messages name the setting at fault.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

pub const ENV_LISTEN: &str = "CPUB_CONTROL_LISTEN";
pub const ENV_DATABASE_URL: &str = "CPUB_DATABASE_URL";
pub const ENV_DATA_DIR: &str = "CPUB_DATA_DIR";
pub const ENV_PODMAN_SOCKET: &str = "CPUB_PODMAN_SOCKET";
pub const ENV_PUBLIC_URL: &str = "CPUB_PUBLIC_URL";
pub const ENV_MAX_UPLOAD_BYTES: &str = "CPUB_MAX_UPLOAD_BYTES";
pub const ENV_MAX_BUNDLE_BYTES: &str = "CPUB_MAX_BUNDLE_BYTES";
pub const ENV_MAX_BUNDLE_FILES: &str = "CPUB_MAX_BUNDLE_FILES";
pub const ENV_BUILD_TIMEOUT_S: &str = "CPUB_BUILD_TIMEOUT_S";
pub const ENV_BUILD_MEMORY_MB: &str = "CPUB_BUILD_MEMORY_MB";
pub const ENV_BUILD_CPUS: &str = "CPUB_BUILD_CPUS";
pub const ENV_BUILD_PIDS: &str = "CPUB_BUILD_PIDS";
pub const ENV_BUILD_MAX_OUTPUT_BYTES: &str = "CPUB_BUILD_MAX_OUTPUT_BYTES";
pub const ENV_BUILD_BASE_IMAGES: &str = "CPUB_BUILD_BASE_IMAGES";
pub const ENV_BUILD_PODMAN_SOCKET: &str = "CPUB_BUILD_PODMAN_SOCKET";
pub const ENV_BUILD_USERNS_SIZE: &str = "CPUB_BUILD_USERNS_SIZE";
pub const ENV_BOOTSTRAP_TOKEN: &str = "CPUB_BOOTSTRAP_TOKEN";
pub const ENV_ADMIN_PASSWORD: &str = "CPUB_ADMIN_PASSWORD";
pub const ENV_KEEP_VERSIONS: &str = "CPUB_KEEP_VERSIONS";
pub const ENV_READ_CONCURRENCY: &str = "CPUB_READ_CONCURRENCY";
pub const ENV_READ_TIMEOUT_S: &str = "CPUB_READ_TIMEOUT_S";
pub const ENV_LOGIN_TOKEN_LIFETIME: &str = "CPUB_LOGIN_TOKEN_LIFETIME";

/// Exit code for bad configuration (`EX_USAGE` from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// Shortest accepted `CPUB_BOOTSTRAP_TOKEN`.
pub const MIN_BOOTSTRAP_TOKEN_LEN: usize = 16;

/// How long a login's token works unless configured otherwise.
pub const DEFAULT_LOGIN_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
/// Shortest accepted `CPUB_LOGIN_TOKEN_LIFETIME`: below it a session ends
/// in the middle of a deploy's build or a followed log.
pub const MIN_LOGIN_TOKEN_LIFETIME: Duration = Duration::from_secs(3_600);
/// Longest accepted `CPUB_LOGIN_TOKEN_LIFETIME`: a session of more than a
/// year is a token that never expires in all but name.
pub const MAX_LOGIN_TOKEN_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

/// The control plane's settings.
#[derive(Debug, Clone, Parser)]
#[command(name = "cpub-control", version, about = "ContainerPub control plane")]
pub struct Config {
    /// Address the HTTP API listens on.
    #[arg(long, env = ENV_LISTEN, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// PostgreSQL URL (required), e.g. postgres://cpub:cpub@127.0.0.1:5432/cpub.
    #[arg(long, env = ENV_DATABASE_URL, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Directory for stored artifacts (`artifacts/sha256/`) and temp files (`tmp/`).
    #[arg(long, env = ENV_DATA_DIR, default_value = "/var/lib/containerpub/control")]
    pub data_dir: PathBuf,
    /// Podman REST API socket used to build and remove images.
    #[arg(long, env = ENV_PODMAN_SOCKET, default_value = containerpub_podman::DEFAULT_SOCKET)]
    pub podman_socket: PathBuf,
    /// Base URL of the proxy; a function's URL is `{public_url}/fn/{name}/`.
    #[arg(long, env = ENV_PUBLIC_URL, default_value = "http://127.0.0.1:8080")]
    pub public_url: String,
    /// Largest accepted upload (compressed bundle), in bytes.
    #[arg(long, env = ENV_MAX_UPLOAD_BYTES, default_value_t = 64 * 1024 * 1024)]
    pub max_upload_bytes: u64,
    /// Largest accepted bundle once decompressed, in bytes.
    #[arg(long, env = ENV_MAX_BUNDLE_BYTES, default_value_t = 512 * 1024 * 1024)]
    pub max_bundle_bytes: u64,
    /// Most entries (files, directories, links) a bundle may hold.
    #[arg(long, env = ENV_MAX_BUNDLE_FILES, default_value_t = 10_000)]
    pub max_bundle_files: u64,
    /// Longest an image build may take, in seconds.
    #[arg(long, env = ENV_BUILD_TIMEOUT_S, default_value_t = 600)]
    pub build_timeout_s: u64,
    /// Memory of each build step (no swap), in MiB.
    #[arg(long, env = ENV_BUILD_MEMORY_MB, default_value_t = 1024)]
    pub build_memory_mb: u64,
    /// CPU of each build step, in cores (e.g. 0.5).
    #[arg(long, env = ENV_BUILD_CPUS, default_value_t = 1.0)]
    pub build_cpus: f64,
    /// Processes and threads a build may run at once.
    #[arg(long, env = ENV_BUILD_PIDS, default_value_t = 512)]
    pub build_pids: u64,
    /// Most output a build may print before it is stopped, in bytes.
    #[arg(long, env = ENV_BUILD_MAX_OUTPUT_BYTES, default_value_t = 64 * 1024 * 1024)]
    pub build_max_output_bytes: u64,
    /// Images a Containerfile may start FROM besides `scratch`
    /// (comma-separated exact references; none by default).
    #[arg(long, env = ENV_BUILD_BASE_IMAGES, value_delimiter = ',')]
    pub build_base_images: Vec<String>,
    /// Podman REST API socket that runs builds: a service with a store of
    /// its own (`vfs`), see scripts/setup-host.sh. Images are moved from it
    /// to `--podman-socket` once built.
    #[arg(long, env = ENV_BUILD_PODMAN_SOCKET, default_value = containerpub_podman::build::DEFAULT_BUILD_SOCKET)]
    pub build_podman_socket: PathBuf,
    /// Ids of each build's user namespace (1024 to 65536); 0 runs build
    /// steps as host root (only for a build socket without a `vfs` store).
    #[arg(long, env = ENV_BUILD_USERNS_SIZE, default_value_t = DEFAULT_BUILD_USERNS_SIZE)]
    pub build_userns_size: u32,
    /// API token created for `admin` (stored hashed). Random when unset on first start.
    #[arg(long, env = ENV_BOOTSTRAP_TOKEN, hide_env_values = true)]
    pub bootstrap_token: Option<String>,
    /// Password of `admin` on first start. Random when unset.
    #[arg(long, env = ENV_ADMIN_PASSWORD, hide_env_values = true)]
    pub admin_password: Option<String>,
    #[command(flatten)]
    pub logs: crate::logs::LogArgs,
    /// Versions kept per function (with their images); older ones are
    /// deleted after each activation, except the active version and the
    /// one `cpub rollback` would go to.
    #[arg(long, env = ENV_KEEP_VERSIONS, default_value_t = 10)]
    pub keep_versions: u32,
    /// Most reads of execution records and logs (`cpub stats`, `cpub
    /// executions`, `cpub logs`) that run at once, at most half the
    /// database pool; another waits up to 2 s, then gets 429.
    #[arg(long, env = ENV_READ_CONCURRENCY, default_value_t = 4)]
    pub read_concurrency: u64,
    /// Longest one query of such a read runs before PostgreSQL stops it
    /// (the caller is told to ask for a shorter window). Below the CLI's
    /// 30-s deadline, so `cpub` gets the answer instead of hanging up.
    #[arg(long, env = ENV_READ_TIMEOUT_S, default_value_t = 20)]
    pub read_timeout_s: u64,
    /// How long the token of a login (`POST /api/v1/auth/login`, `cpub
    /// login`) works: a whole number and a unit (`12h`, `30d`, `2w`), from
    /// 1 hour to 365 days. A token's expiry is fixed when it is issued.
    #[arg(long, env = ENV_LOGIN_TOKEN_LIFETIME, default_value = "30d")]
    pub login_token_lifetime: String,
}

/// A configuration problem; `setting` names the flag and its variable.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

fn err(flag: &str, env: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: format!("--{flag} / {env}"),
        message: message.into(),
    }
}

/// Settings after validation: what the server actually runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub database_url: String,
    pub data_dir: PathBuf,
    pub podman_socket: PathBuf,
    /// Without trailing `/`.
    pub public_url: String,
    pub limits: Limits,
    pub build_timeout: Duration,
    pub build: BuildSettings,
    pub bootstrap_token: Option<String>,
    pub admin_password: Option<String>,
    /// Retention of function logs.
    pub logs: crate::logs::Retention,
    /// Versions kept per function (`history::retain`), at least 1.
    pub keep_versions: u32,
    /// Reads of records and logs for callers (`crate::reads`).
    pub reads: crate::reads::ReadLimits,
    /// How long a login's token works (`auth::issue_login_token`), within
    /// [`MIN_LOGIN_TOKEN_LIFETIME`] and [`MAX_LOGIN_TOKEN_LIFETIME`].
    pub login_token_lifetime: Duration,
}

/// The build sandbox: limits of each image build, the base images a
/// Containerfile may use and the Podman service that builds.
#[derive(Debug, Clone)]
pub struct BuildSettings {
    pub limits: containerpub_podman::BuildLimits,
    /// Allowed `FROM` images besides `scratch` (exact references).
    pub base_images: Vec<String>,
    /// The Podman API that runs builds (its own store; see `build::run`).
    pub podman_socket: PathBuf,
}

/// Ids of a build's user namespace unless configured otherwise.
pub const DEFAULT_BUILD_USERNS_SIZE: u32 = 65536;

impl Default for BuildSettings {
    fn default() -> Self {
        Self {
            limits: containerpub_podman::BuildLimits {
                userns_size: DEFAULT_BUILD_USERNS_SIZE,
                ..containerpub_podman::BuildLimits::default()
            },
            base_images: Vec::new(),
            podman_socket: containerpub_podman::build::DEFAULT_BUILD_SOCKET.into(),
        }
    }
}

/// Upload and bundle limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_upload_bytes: u64,
    pub max_bundle_bytes: u64,
    pub max_bundle_files: u64,
}

impl Config {
    /// Checks every setting; the error names the first one at fault.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let database_url = match self.database_url.as_deref().map(str::trim) {
            None | Some("") => {
                return Err(err("database-url", ENV_DATABASE_URL, "is required"));
            }
            Some(url) if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) => {
                return Err(err(
                    "database-url",
                    ENV_DATABASE_URL,
                    "must start with postgres:// or postgresql://",
                ));
            }
            Some(url) => url.to_owned(),
        };
        if self.data_dir.as_os_str().is_empty() || !self.data_dir.is_absolute() {
            return Err(err(
                "data-dir",
                ENV_DATA_DIR,
                format!("must be an absolute path, got {:?}", self.data_dir),
            ));
        }
        let public_url = self.public_url.trim_end_matches('/').to_owned();
        let rest = public_url
            .strip_prefix("http://")
            .or_else(|| public_url.strip_prefix("https://"));
        if rest.is_none_or(|host| host.is_empty() || host.contains(char::is_whitespace)) {
            return Err(err(
                "public-url",
                ENV_PUBLIC_URL,
                format!(
                    "must be an http:// or https:// URL, got {:?}",
                    self.public_url
                ),
            ));
        }
        let positive = [
            (
                "max-upload-bytes",
                ENV_MAX_UPLOAD_BYTES,
                self.max_upload_bytes,
            ),
            (
                "max-bundle-bytes",
                ENV_MAX_BUNDLE_BYTES,
                self.max_bundle_bytes,
            ),
            (
                "max-bundle-files",
                ENV_MAX_BUNDLE_FILES,
                self.max_bundle_files,
            ),
            ("build-timeout-s", ENV_BUILD_TIMEOUT_S, self.build_timeout_s),
            ("build-memory-mb", ENV_BUILD_MEMORY_MB, self.build_memory_mb),
            ("build-pids", ENV_BUILD_PIDS, self.build_pids),
            (
                "keep-versions",
                ENV_KEEP_VERSIONS,
                self.keep_versions.into(),
            ),
            (
                "build-max-output-bytes",
                ENV_BUILD_MAX_OUTPUT_BYTES,
                self.build_max_output_bytes,
            ),
            (
                "read-concurrency",
                ENV_READ_CONCURRENCY,
                self.read_concurrency,
            ),
            ("read-timeout-s", ENV_READ_TIMEOUT_S, self.read_timeout_s),
        ];
        for (flag, env, value) in positive {
            if value == 0 {
                return Err(err(flag, env, "must be greater than 0"));
            }
        }
        let half_pool = u64::from(crate::db::MAX_CONNECTIONS / 2);
        if self.read_concurrency > half_pool {
            return Err(err(
                "read-concurrency",
                ENV_READ_CONCURRENCY,
                format!(
                    "must be at most {half_pool} (half the {} database connections: the rest \
                     serve deploys, route watches and the proxies' batches), got {}",
                    crate::db::MAX_CONNECTIONS,
                    self.read_concurrency
                ),
            ));
        }
        if self.read_timeout_s > 3600 {
            return Err(err(
                "read-timeout-s",
                ENV_READ_TIMEOUT_S,
                format!("must be at most 3600, got {}", self.read_timeout_s),
            ));
        }
        if !(self.build_cpus.is_finite() && self.build_cpus >= 0.01 && self.build_cpus <= 1024.0) {
            return Err(err(
                "build-cpus",
                ENV_BUILD_CPUS,
                format!(
                    "must be between 0.01 and 1024 cores, got {}",
                    self.build_cpus
                ),
            ));
        }
        if self.build_userns_size != 0 && !(1024..=65536).contains(&self.build_userns_size) {
            return Err(err(
                "build-userns-size",
                ENV_BUILD_USERNS_SIZE,
                format!(
                    "must be 0 (no user namespace) or between 1024 and 65536, got {}",
                    self.build_userns_size
                ),
            ));
        }
        let base_images: Vec<String> = self
            .build_base_images
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if let Some(bad) = base_images
            .iter()
            .find(|s| s.contains(char::is_whitespace) || s.contains('$') || s.contains("cpub-fn-"))
        {
            return Err(err(
                "build-base-images",
                ENV_BUILD_BASE_IMAGES,
                format!(
                    "{bad:?} is not a base image reference (function images are never allowed)"
                ),
            ));
        }
        if let Some(token) = &self.bootstrap_token
            && (token.len() < MIN_BOOTSTRAP_TOKEN_LEN || token.chars().any(char::is_whitespace))
        {
            return Err(err(
                "bootstrap-token",
                ENV_BOOTSTRAP_TOKEN,
                format!("must be at least {MIN_BOOTSTRAP_TOKEN_LEN} characters without whitespace"),
            ));
        }
        if self.admin_password.as_deref().is_some_and(str::is_empty) {
            return Err(err(
                "admin-password",
                ENV_ADMIN_PASSWORD,
                "must not be empty",
            ));
        }
        let login_token_lifetime = login_token_lifetime(&self.login_token_lifetime)?;
        let logs = self.logs.validate()?;
        Ok(Settings {
            login_token_lifetime,
            logs,
            listen: self.listen,
            database_url,
            data_dir: self.data_dir,
            podman_socket: self.podman_socket,
            public_url,
            limits: Limits {
                max_upload_bytes: self.max_upload_bytes,
                max_bundle_bytes: self.max_bundle_bytes,
                max_bundle_files: self.max_bundle_files,
            },
            build_timeout: Duration::from_secs(self.build_timeout_s),
            build: BuildSettings {
                limits: containerpub_podman::BuildLimits {
                    memory_bytes: self.build_memory_mb.saturating_mul(1 << 20),
                    millicpus: (self.build_cpus * 1000.0).round() as u64,
                    pids: self.build_pids,
                    max_output_bytes: self.build_max_output_bytes,
                    userns_size: self.build_userns_size,
                    ..containerpub_podman::BuildLimits::default()
                },
                base_images,
                podman_socket: self.build_podman_socket,
            },
            bootstrap_token: self.bootstrap_token,
            admin_password: self.admin_password,
            keep_versions: self.keep_versions,
            reads: crate::reads::ReadLimits {
                concurrency: self.read_concurrency as usize,
                timeout: Duration::from_secs(self.read_timeout_s),
            },
        })
    }
}

/// `--login-token-lifetime`: the `30d` syntax of `cpub token create
/// --expires`, within the bounds.
fn login_token_lifetime(text: &str) -> Result<Duration, ConfigError> {
    let setting = |message: String| err("login-token-lifetime", ENV_LOGIN_TOKEN_LIFETIME, message);
    let lifetime = containerpub_wire::access::parse_duration(text).map_err(setting)?;
    if !(MIN_LOGIN_TOKEN_LIFETIME..=MAX_LOGIN_TOKEN_LIFETIME).contains(&lifetime) {
        return Err(setting(format!(
            "must be from 1h to 365d (a login's token must expire, and within a year), got {text:?}"
        )));
    }
    Ok(lifetime)
}

impl Settings {
    pub fn artifacts_dir(&self) -> PathBuf {
        self.data_dir.join("artifacts").join("sha256")
    }

    /// The master key file that seals function secrets (`crate::vault`).
    pub fn master_key_path(&self) -> PathBuf {
        self.data_dir.join(crate::vault::MASTER_KEY_FILE)
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.data_dir.join("tmp")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, ConfigError> {
        let mut argv = vec!["cpub-control"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv).expect("clap parse").validate()
    }

    #[test]
    fn defaults_apply() {
        let s = parse(&["--database-url", "postgres://a@b/c"]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(s.limits.max_upload_bytes, 64 << 20);
        assert_eq!(s.limits.max_bundle_bytes, 512 << 20);
        assert_eq!(s.limits.max_bundle_files, 10_000);
        assert_eq!(s.build_timeout, Duration::from_secs(600));
        assert_eq!(s.build.limits, BuildSettings::default().limits);
        assert_eq!(s.build.limits.userns_size, 65536);
        assert_eq!(
            s.build.podman_socket,
            PathBuf::from("/run/podman/cpub-build.sock")
        );
        assert!(s.build.base_images.is_empty());
        assert_eq!(s.public_url, "http://127.0.0.1:8080");
        assert_eq!(s.reads.concurrency, 4);
        assert_eq!(s.reads.timeout, Duration::from_secs(20));
        assert_eq!(s.login_token_lifetime, Duration::from_secs(30 * 86_400));
    }

    #[test]
    fn login_token_lifetime_is_bounded() {
        let lifetime = |value: &str| {
            parse(&[
                "--database-url",
                "postgres://x",
                "--login-token-lifetime",
                value,
            ])
        };
        for (value, secs) in [
            ("1h", 3_600),
            ("12h", 43_200),
            ("2w", 14 * 86_400),
            ("365d", 365 * 86_400),
        ] {
            assert_eq!(
                lifetime(value).unwrap().login_token_lifetime,
                Duration::from_secs(secs),
                "{value}"
            );
        }
        for bad in ["0", "0d", "59m", "366d", "100w", "30", "forever", ""] {
            let e = lifetime(bad).unwrap_err();
            assert!(
                e.setting.contains("CPUB_LOGIN_TOKEN_LIFETIME")
                    && e.setting.contains("--login-token-lifetime"),
                "{bad}: {e}"
            );
        }
        assert!(lifetime("366d").unwrap_err().message.contains("365d"));
    }

    #[test]
    fn errors_name_the_setting() {
        // CPUB_DATABASE_URL may be set in the test environment; only assert
        // on settings given explicitly.
        let e = parse(&["--database-url", "mysql://x"]).unwrap_err();
        assert!(e.setting.contains("CPUB_DATABASE_URL"), "{e}");
        let e = parse(&["--database-url", "postgres://x", "--public-url", "ftp://x"]).unwrap_err();
        assert!(e.setting.contains("public-url"), "{e}");
        let e = parse(&["--database-url", "postgres://x", "--max-bundle-files", "0"]).unwrap_err();
        assert!(e.setting.contains("CPUB_MAX_BUNDLE_FILES"), "{e}");
        let e = parse(&[
            "--database-url",
            "postgres://x",
            "--build-userns-size",
            "70000",
        ])
        .unwrap_err();
        assert!(e.setting.contains("CPUB_BUILD_USERNS_SIZE"), "{e}");
        assert!(e.message.contains("70000"), "{e}");
        let s = parse(&["--database-url", "postgres://x", "--build-userns-size", "0"]).unwrap();
        assert_eq!(s.build.limits.userns_size, 0);
        let e = parse(&[
            "--database-url",
            "postgres://x",
            "--bootstrap-token",
            "short",
        ])
        .unwrap_err();
        assert!(e.setting.contains("CPUB_BOOTSTRAP_TOKEN"), "{e}");
        let e = parse(&["--database-url", "postgres://x", "--data-dir", "rel"]).unwrap_err();
        assert!(e.setting.contains("data-dir"), "{e}");
        // Reads of records and logs keep half the database pool for the rest.
        let e = parse(&["--database-url", "postgres://x", "--read-concurrency", "9"]).unwrap_err();
        assert!(e.setting.contains("CPUB_READ_CONCURRENCY"), "{e}");
        assert!(e.message.contains("at most 8"), "{e}");
        let s = parse(&["--database-url", "postgres://x", "--read-concurrency", "8"]).unwrap();
        assert_eq!(s.reads.concurrency, 8);
        for bad in ["0", "3601"] {
            let e =
                parse(&["--database-url", "postgres://x", "--read-timeout-s", bad]).unwrap_err();
            assert!(e.setting.contains("CPUB_READ_TIMEOUT_S"), "{bad}: {e}");
        }
    }
}
