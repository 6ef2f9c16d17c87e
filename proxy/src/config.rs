//! Command-line and environment configuration of `cpub-proxy`, with
//! validation whose messages name the flag and variable at fault.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Environment variable: listen address of the proxy.
pub const ENV_LISTEN: &str = "CPUB_PROXY_LISTEN";
/// Environment variable: listen address of the admin endpoints (`/metrics`).
pub const ENV_ADMIN_LISTEN: &str = "CPUB_PROXY_ADMIN_LISTEN";
/// Default admin address: loopback only, the Prometheus exporter port range.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";
/// Environment variable: directory of the route snapshot.
pub const ENV_STATE_DIR: &str = "CPUB_STATE_DIR";
/// Environment variable: Podman REST socket.
pub const ENV_PODMAN_SOCKET: &str = "CPUB_PODMAN_SOCKET";
/// Environment variable: the node credential (`cpub node-token create NODE`).
pub const ENV_NODE_TOKEN: &str = "CPUB_NODE_TOKEN";
/// Environment variable: node name written on every container this proxy owns.
pub const ENV_NODE: &str = "CPUB_NODE";
/// Environment variable: worker threads of the proxy service.
pub const ENV_THREADS: &str = "CPUB_PROXY_THREADS";
/// Environment variable: seconds to keep serving after SIGTERM.
pub const ENV_GRACE_PERIOD_S: &str = "CPUB_PROXY_GRACE_PERIOD_S";
/// Environment variable: seconds a new instance may take to become ready.
pub const ENV_START_TIMEOUT_S: &str = "CPUB_START_TIMEOUT_S";

/// Environment variable: `on` or `off`, execution records.
pub const ENV_EXECUTIONS: &str = "CPUB_EXECUTIONS";
/// Environment variable: MiB of execution records kept in memory while the
/// control plane is away.
pub const ENV_EXECUTIONS_MEMORY_MB: &str = "CPUB_EXECUTIONS_MEMORY_MB";
/// Environment variable: MiB of execution records spooled to disk after that.
pub const ENV_EXECUTIONS_SPOOL_MB: &str = "CPUB_EXECUTIONS_SPOOL_MB";
/// Environment variable: Podman network of the function instances.
pub const ENV_NETWORK: &str = "CPUB_NETWORK";
/// Environment variable: subnet the function network is created on.
pub const ENV_NETWORK_SUBNET: &str = "CPUB_NETWORK_SUBNET";
/// Environment variable: the node's memory budget in MiB (sum of limits).
pub const ENV_NODE_MEMORY_MB: &str = "CPUB_NODE_MEMORY_MB";
/// Environment variable: the node's budget of live instances.
pub const ENV_NODE_MAX_INSTANCES: &str = "CPUB_NODE_MAX_INSTANCES";
/// Environment variable: keep-warm window in seconds (0: off).
pub const ENV_KEEP_WARM_WINDOW_S: &str = "CPUB_KEEP_WARM_WINDOW_S";
/// Environment variable: containers initialized ahead of need at most.
pub const ENV_INITIALIZED_AHEAD: &str = "CPUB_INITIALIZED_AHEAD";

/// Exit code for bad configuration (`EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// File name of the route snapshot inside the state directory.
pub const SNAPSHOT_FILE: &str = "routes.json";

/// `cpub-proxy`: the ContainerPub edge proxy.
#[derive(Debug, Clone, Parser)]
#[command(name = "cpub-proxy", version, about)]
pub struct Config {
    /// Address the proxy listens on for function calls.
    #[arg(long, env = ENV_LISTEN, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Address of the admin endpoints (`GET /metrics`, `GET /healthz`),
    /// apart from the public listener, which serves only functions and
    /// `/healthz`. Keep it off the public network: the metrics name every
    /// function.
    #[arg(long, env = ENV_ADMIN_LISTEN, default_value = DEFAULT_ADMIN_LISTEN, value_name = "ADDR")]
    pub admin_listen: SocketAddr,

    /// Base URL of the control plane; routes are watched at `/api/v1/routes`.
    #[arg(long, env = containerpub_wire::ENV_URL, default_value = "http://127.0.0.1:7070", value_name = "URL")]
    pub control_url: String,

    /// This node's credential (`cpub node-token create NODE`): it may only
    /// watch routes and report crashes for this node, unlike a user's token.
    #[arg(long = "node-token", alias = "token", env = ENV_NODE_TOKEN, hide_env_values = true, value_name = "TOKEN")]
    pub token: String,

    /// Directory of the proxy's state: the route snapshot (`routes.json`),
    /// the execution-record spool (`executions/`) and the log offsets
    /// (`log-offsets/`).
    #[arg(long, env = ENV_STATE_DIR, default_value = "/var/lib/containerpub/proxy", value_name = "DIR")]
    pub state_dir: PathBuf,

    /// Podman REST socket (`podman system service`).
    #[arg(long, env = ENV_PODMAN_SOCKET, default_value = "/run/podman/podman.sock", value_name = "PATH")]
    pub podman_socket: PathBuf,

    /// Node name written on every container this proxy owns (default: the host name).
    #[arg(long, env = ENV_NODE, value_name = "NAME")]
    pub node: Option<String>,

    /// Worker threads of the proxy service (default: the number of cores).
    #[arg(long, env = ENV_THREADS, value_name = "N")]
    pub threads: Option<usize>,

    /// Seconds to keep serving after SIGTERM before shutting down.
    #[arg(long, env = ENV_GRACE_PERIOD_S, default_value_t = 5, value_name = "S")]
    pub grace_period_s: u64,

    /// Seconds a new instance may take to become ready.
    #[arg(long, env = ENV_START_TIMEOUT_S, default_value_t = 30, value_name = "S")]
    pub start_timeout_s: u64,

    /// Execution records (one per call, sent to the control plane): `on` or `off`.
    #[arg(long, env = ENV_EXECUTIONS, default_value = "on", value_parser = ["on", "off"], value_name = "on|off")]
    pub executions: String,

    /// MiB of execution records kept in memory while the control plane is unreachable (0: only the newest batch; the rest goes to the spool).
    #[arg(long, env = ENV_EXECUTIONS_MEMORY_MB, default_value_t = 64, value_name = "MIB")]
    pub executions_memory_mb: u64,

    /// MiB of execution records spooled to `<state-dir>/executions/` after that (0: none; else at least 8, one whole batch).
    #[arg(long, env = ENV_EXECUTIONS_SPOOL_MB, default_value_t = 1024, value_name = "MIB")]
    pub executions_spool_mb: u64,
    #[command(flatten)]
    pub logs: crate::logs::LogArgs,

    /// Podman network of the function instances.
    #[arg(long, env = ENV_NETWORK, default_value = containerpub_pool::NETWORK, value_name = "NAME")]
    pub network: String,

    /// Subnet (CIDR) the function network is created on when it does not
    /// exist; an existing network keeps its own.
    #[arg(long, env = ENV_NETWORK_SUBNET, default_value = containerpub_pool::node::DEFAULT_SUBNET, value_name = "CIDR")]
    pub network_subnet: String,

    /// Memory budget of the node in MiB: the sum of the live instances'
    /// memory limits (default: the host's memory).
    #[arg(long, env = ENV_NODE_MEMORY_MB, value_name = "MIB")]
    pub node_memory_mb: Option<u64>,

    /// Live instances the node holds at most (running and paused).
    #[arg(long, env = ENV_NODE_MAX_INSTANCES, default_value_t = containerpub_pool::node::DEFAULT_MAX_INSTANCES, value_name = "N")]
    pub node_max_instances: u32,

    /// A function called within this many seconds keeps one paused
    /// instance after its idle stop (0: keep-warm off unless a manifest
    /// turns it on).
    #[arg(long, env = ENV_KEEP_WARM_WINDOW_S, default_value_t = 6 * 3600, value_name = "S")]
    pub keep_warm_window_s: u64,

    /// Containers ahead of need that are also initialized (namespaces,
    /// network, conmon set up), so that a cold start only runs the
    /// function's process; given to the functions cold-started most
    /// recently. Each holds a bridge port: with `--node-max-instances` at
    /// most 1024 (0: containers ahead are only created).
    #[arg(long, env = ENV_INITIALIZED_AHEAD, default_value_t = containerpub_pool::node::DEFAULT_INITIALIZED_AHEAD, value_name = "N")]
    pub initialized_ahead: u32,
}

/// A setting with an unusable value.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Flag and environment variable, e.g. `--token / CPUB_TOKEN`.
    pub setting: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.setting, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn bad(flag: &str, env: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: format!("--{flag} / {env}"),
        message: message.into(),
    }
}

impl Config {
    /// Checks every value and fills in the defaults that depend on the host.
    pub fn validate(mut self) -> Result<Self, ConfigError> {
        let url = reqwest::Url::parse(&self.control_url).map_err(|e| {
            bad(
                "control-url",
                containerpub_wire::ENV_URL,
                format!("{:?} is not a URL: {e}", self.control_url),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(bad(
                "control-url",
                containerpub_wire::ENV_URL,
                format!(
                    "must be an http:// or https:// URL with a host, got {:?}",
                    self.control_url
                ),
            ));
        }
        self.control_url = self.control_url.trim_end_matches('/').to_owned();

        if self.token.trim().is_empty() {
            return Err(bad("node-token", ENV_NODE_TOKEN, "must not be empty"));
        }
        if self
            .token
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad(
                "node-token",
                ENV_NODE_TOKEN,
                "must not contain spaces or control characters",
            ));
        }

        if self.admin_listen == self.listen {
            return Err(bad(
                "admin-listen",
                ENV_ADMIN_LISTEN,
                format!(
                    "must differ from the public listener ({}): /metrics stays off it",
                    self.listen
                ),
            ));
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(bad("state-dir", ENV_STATE_DIR, "must not be empty"));
        }
        if self.podman_socket.as_os_str().is_empty() {
            return Err(bad("podman-socket", ENV_PODMAN_SOCKET, "must not be empty"));
        }

        let node = match self.node.take() {
            Some(node) => node,
            None => host_name().ok_or_else(|| {
                bad(
                    "node",
                    ENV_NODE,
                    "the host name could not be read; set a node name",
                )
            })?,
        };
        containerpub_wire::validate_node_name(&node).map_err(|m| bad("node", ENV_NODE, m))?;
        self.node = Some(node);

        let threads = match self.threads {
            Some(0) => return Err(bad("threads", ENV_THREADS, "must be at least 1")),
            Some(n) if n > 1024 => {
                return Err(bad(
                    "threads",
                    ENV_THREADS,
                    format!("must be at most 1024, got {n}"),
                ));
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        self.threads = Some(threads);

        if self.grace_period_s > 3600 {
            return Err(bad(
                "grace-period-s",
                ENV_GRACE_PERIOD_S,
                format!("must be at most 3600, got {}", self.grace_period_s),
            ));
        }
        if !(1..=3600).contains(&self.start_timeout_s) {
            return Err(bad(
                "start-timeout-s",
                ENV_START_TIMEOUT_S,
                format!("must be between 1 and 3600, got {}", self.start_timeout_s),
            ));
        }
        for (flag, env, v) in [
            (
                "executions-memory-mb",
                ENV_EXECUTIONS_MEMORY_MB,
                self.executions_memory_mb,
            ),
            (
                "executions-spool-mb",
                ENV_EXECUTIONS_SPOOL_MB,
                self.executions_spool_mb,
            ),
        ] {
            if v > 1024 * 1024 {
                return Err(bad(
                    flag,
                    env,
                    format!("must be at most 1048576 (1 TiB), got {v}"),
                ));
            }
        }
        // A spool must hold one whole body: any smaller and every body
        // that leaves memory is dropped.
        let body_mb = containerpub_wire::executions::MAX_BATCH_BYTES.div_ceil(1024 * 1024) as u64;
        if (1..body_mb).contains(&self.executions_spool_mb) {
            return Err(bad(
                "executions-spool-mb",
                ENV_EXECUTIONS_SPOOL_MB,
                format!(
                    "must be 0 (no spool) or at least {body_mb} (one whole batch), got {}",
                    self.executions_spool_mb
                ),
            ));
        }
        if self.node_memory_mb.is_none() {
            self.node_memory_mb = Some(host_memory_mb().unwrap_or(u64::MAX));
        }
        self.node_config().validate().map_err(|message| {
            let (flag, env) = match message.split(':').next().unwrap_or_default() {
                "network" => ("network", ENV_NETWORK),
                "subnet" => ("network-subnet", ENV_NETWORK_SUBNET),
                "memory_mb" => ("node-memory-mb", ENV_NODE_MEMORY_MB),
                "max_instances" => ("node-max-instances", ENV_NODE_MAX_INSTANCES),
                "initialized_ahead" => ("initialized-ahead", ENV_INITIALIZED_AHEAD),
                _ => ("keep-warm-window-s", ENV_KEEP_WARM_WINDOW_S),
            };
            bad(flag, env, message)
        })?;
        Ok(self)
    }

    /// The pool's node settings (after `validate`).
    pub fn node_config(&self) -> containerpub_pool::NodeConfig {
        let defaults = containerpub_pool::NodeConfig::default();
        containerpub_pool::NodeConfig {
            network: self.network.clone(),
            subnet: self.network_subnet.clone(),
            budget: containerpub_pool::BudgetConfig {
                memory_mb: self.node_memory_mb.unwrap_or(u64::MAX),
                max_instances: self.node_max_instances,
            },
            keep_warm: containerpub_pool::KeepWarmConfig {
                window: Duration::from_secs(self.keep_warm_window_s),
                ..defaults.keep_warm
            },
            initialized_ahead: self.initialized_ahead,
        }
    }

    /// Whether execution records are on.
    pub fn executions_on(&self) -> bool {
        self.executions == "on"
    }

    /// Node name (after `validate`).
    pub fn node(&self) -> &str {
        self.node.as_deref().unwrap_or_default()
    }

    /// Worker threads (after `validate`).
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or(1)
    }

    /// How long a new instance may take to become ready.
    pub fn start_timeout(&self) -> Duration {
        Duration::from_secs(self.start_timeout_s)
    }

    /// Path of the route snapshot.
    pub fn snapshot_path(&self) -> PathBuf {
        self.state_dir.join(SNAPSHOT_FILE)
    }
}

/// The host's memory in MiB (`MemTotal` of /proc/meminfo).
fn host_memory_mb() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// The kernel's host name.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["cpub-proxy"];
        if !args.contains(&"--node") {
            argv.extend_from_slice(&["--node", "n1"]);
        }
        argv.extend_from_slice(args);
        Config::try_parse_from(argv).expect("clap parse").validate()
    }

    #[test]
    fn defaults_are_filled_in() {
        let c = parse(&["--token", "t"]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:9464".parse().unwrap());
        assert_eq!(c.grace_period_s, 5);
        assert!(c.threads() >= 1);
        assert_eq!(c.node(), "n1");
        let node = c.node_config();
        assert_eq!(node.network, "cpub");
        assert_eq!(node.subnet, "10.90.0.0/20");
        assert_eq!(node.budget.max_instances, 1_000);
        assert!(node.budget.memory_mb >= 16, "the host's memory");
        assert_eq!(
            c.snapshot_path(),
            PathBuf::from("/var/lib/containerpub/proxy/routes.json")
        );
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = parse(&["--token", "t", "--control-url", "ftp://x"]).unwrap_err();
        assert!(
            err.setting.contains("--control-url") && err.setting.contains("CPUB_URL"),
            "{err}"
        );
        let err = parse(&["--token", " "]).unwrap_err();
        assert!(err.setting.contains("CPUB_NODE_TOKEN"), "{err}");
        let err = parse(&["--token", "t", "--threads", "0"]).unwrap_err();
        assert!(err.setting.contains("--threads"), "{err}");
        let err = parse(&["--token", "t", "--admin-listen", "127.0.0.1:8080"]).unwrap_err();
        assert!(err.setting.contains("CPUB_PROXY_ADMIN_LISTEN"), "{err}");
        let err = parse(&["--token", "t", "--node", "a b"]).unwrap_err();
        assert!(err.setting.contains("--node"), "{err}");
        let err = parse(&["--token", "t", "--network-subnet", "10.0.0.0/33"]).unwrap_err();
        assert!(err.setting.contains("CPUB_NETWORK_SUBNET"), "{err}");
        let err = parse(&["--token", "t", "--node-max-instances", "5000"]).unwrap_err();
        assert!(err.setting.contains("--node-max-instances"), "{err}");
        let err = parse(&["--token", "t", "--initialized-ahead", "100"]).unwrap_err();
        assert!(
            err.setting.contains("CPUB_INITIALIZED_AHEAD") && err.message.contains("1024"),
            "{err}"
        );
        let err = parse(&["--token", "t", "--node-memory-mb", "1"]).unwrap_err();
        assert!(err.setting.contains("--node-memory-mb"), "{err}");
        let err = parse(&["--token", "t", "--executions-spool-mb", "7"]).unwrap_err();
        assert!(
            err.setting.contains("CPUB_EXECUTIONS_SPOOL_MB") && err.message.contains("at least 8"),
            "{err}"
        );
        for fine in ["0", "8"] {
            let c = parse(&["--token", "t", "--executions-spool-mb", fine]).unwrap();
            assert_eq!(c.executions_spool_mb.to_string(), fine);
        }
    }

    #[test]
    fn trailing_slash_is_dropped_from_the_control_url() {
        let c = parse(&["--token", "t", "--control-url", "http://h:7070/"]).unwrap();
        assert_eq!(c.control_url, "http://h:7070");
    }
}
