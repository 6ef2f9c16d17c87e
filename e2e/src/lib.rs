//! Test harness for end-to-end tests of the real stack: a fresh PostgreSQL
//! database, `cpub-control` and `cpub-proxy` as real processes on free
//! loopback ports, the `cpub` CLI, and Podman. Tests in `tests/` use it.
//!
//! Needs: PostgreSQL reachable at `CPUB_TEST_DATABASE_URL` (role with
//! CREATEDB; `scripts/pg.sh start` gives one, and when the variable is
//! unset the harness asks `scripts/pg.sh url`), the Podman API socket
//! (`scripts/setup-host.sh`), the workspace binaries built
//! (`cargo build --workspace --bins`) and the examples built
//! (`examples/build.sh`). `scripts/test.sh` does all of that.
//!
//! Over 600 lines: `Stack` (about 420 lines) starts, drives and tears down
//! the whole stack for every e2e test, and the helpers below it read what
//! those tests check (containers, headers, metrics, bundles).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::Connection;

/// The password of the stack's bootstrap user `admin`.
pub const ADMIN_PASSWORD: &str = "e2e-admin-password";
pub mod bench;

/// URL of the base database of the tests: `CPUB_TEST_DATABASE_URL`, else
/// what `scripts/pg.sh url` prints for the local test cluster (its password
/// is random, in a root-only file: see `scripts/pg.sh`).
pub fn test_database_url() -> String {
    if let Some(url) = std::env::var("CPUB_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        return url;
    }
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/pg.sh"))
        .arg("url")
        .output()
        .expect("running scripts/pg.sh url");
    assert!(
        out.status.success(),
        "no CPUB_TEST_DATABASE_URL and `scripts/pg.sh url` failed (run `scripts/pg.sh start`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `url` without its password, and the password.
pub fn split_password(url: &str) -> (String, Option<String>) {
    if let (Some(scheme), Some(at)) = (url.find("://"), url.rfind('@'))
        && at > scheme
        && let Some((user, password)) = url[scheme + 3..at].split_once(':')
    {
        return (
            format!("{}{user}{}", &url[..scheme + 3], &url[at..]),
            Some(password.to_owned()),
        );
    }
    (url.to_owned(), None)
}

/// `url` with its password replaced by `***`, for messages.
pub fn redacted(url: &str) -> String {
    match split_password(url) {
        (bare, Some(_)) => bare.replacen('@', ":***@", 1),
        (bare, None) => bare,
    }
}

/// Worker threads of the stack's cpub-proxy (`CPUB_PROXY_THREADS`): the
/// cores of the 2-core machines this project runs on. Benchmarks give a
/// proxy they compare with (nginx) as many workers.
pub const PROXY_THREADS: usize = 2;

static STACKS: AtomicU32 = AtomicU32::new(0);

/// The bytes of a POST to `path` that holds the instance it is given: its
/// head and all of its body but the last byte (`b`, which ends it). The
/// proxy reads a body's first MiB before it leases an instance (a slow
/// sender holds none), so the body is one byte longer than that: the call
/// is leased, and its instance waits for the last byte.
pub fn held_post(path: &str, host: &str) -> Vec<u8> {
    const AHEAD: usize = 1 << 20;
    let mut bytes = format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
        AHEAD + 1
    )
    .into_bytes();
    bytes.resize(bytes.len() + AHEAD, b'a');
    bytes
}

/// Polls `check` every 50 ms until it returns `Some` or `within` passes.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < until, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Directory holding the workspace binaries: `CPUB_BIN_DIR` when set, else
/// the profile directory of the running executable (a test runs from
/// `<profile>/deps/`, a binary such as `pool-bench` from `<profile>/`).
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CPUB_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("deps dir");
    if dir.ends_with("deps") {
        dir.parent().expect("profile dir").to_owned()
    } else {
        dir.to_owned()
    }
}

/// Path of a workspace binary; panics with the fix when it is not built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Root of the repository.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_owned()
}

/// A port that was free a moment ago, below the kernel's ephemeral range
/// (32768–60999): a port the kernel hands out (`bind(0)`) is also the
/// local port of the next outgoing connections, and was seen taken by one
/// before the stack's process could bind it ("Address already in use").
fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let state = RandomState::new();
    for attempt in 0u32.. {
        let port = 20_000 + (state.hash_one(attempt) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    unreachable!("the loop only ends by returning")
}

/// The process listening on 127.0.0.1:`port`, as `ss` tells (`None` when
/// it cannot tell).
fn listener_pid(port: u16) -> Option<u32> {
    let out = Command::new("ss")
        .args(["-Hltnp", &format!("sport = :{port}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = &text[text.find("pid=")? + 4..];
    rest[..rest.find(',')?].parse().ok()
}

/// A running process that is killed when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it exited because its address was taken. Another process
    /// on that port may have answered for it meanwhile (its `/healthz`,
    /// then a request it cannot read), so the stack's own error may not
    /// say so.
    fn lost_its_port(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
            && std::fs::read_to_string(&self.log)
                .is_ok_and(|log| log.contains("Address already in use"))
    }

    /// Prints whether it still runs and the end of its log (for a failed
    /// test: the log lives in the stack's directory, gone after the drop).
    fn report(&mut self) {
        let state = match self.child.try_wait() {
            Ok(None) => "running".to_owned(),
            Ok(Some(status)) => format!("exited: {status}"),
            Err(err) => format!("unknown: {err}"),
        };
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(REPORTED_LOG_LINES)..];
        eprintln!(
            "--- {} (pid {}, {state}), last {} of {} log lines:\n{}",
            self.name,
            self.child.id(),
            tail.len(),
            lines.len(),
            tail.join("\n")
        );
    }
}

/// Log lines of each process a failed test's stack prints.
const REPORTED_LOG_LINES: usize = 80;

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One whole ContainerPub stack with its own database, ports, data
/// directories and node name (so stacks of parallel tests never touch each
/// other's containers).
pub struct Stack {
    pub control_addr: SocketAddr,
    pub proxy_addr: SocketAddr,
    /// The proxy's admin listener (`/metrics`).
    pub admin_addr: SocketAddr,
    /// The bootstrap admin's API token.
    pub token: String,
    /// The proxy's node credential, minted by the admin at start
    /// (`POST /api/v1/nodes/{node}/credential`, as `cpub node-token create`).
    pub node_token: String,
    pub node: String,
    pub dir: tempfile::TempDir,
    base_url: String,
    database: String,
    control: Option<Proc>,
    proxy: Option<Proc>,
    /// Extra environment for cpub-control (limits under test).
    control_env: Vec<(String, String)>,
    /// Extra environment for cpub-proxy (set before `start_proxy`).
    pub proxy_env: Vec<(String, String)>,
}

impl Stack {
    /// Starts a stack; `control_env` adds settings to cpub-control.
    pub async fn start(control_env: &[(&str, &str)]) -> Result<Stack> {
        Self::start_with(control_env, &[]).await
    }

    /// Starts a stack with settings for cpub-control and for cpub-proxy.
    pub async fn start_with(
        control_env: &[(&str, &str)],
        proxy_env: &[(&str, &str)],
    ) -> Result<Stack> {
        let n = STACKS.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let base_url = test_database_url();
        let database = format!("cpub_e2e_{pid}_{n}");
        let mut conn = sqlx::PgConnection::connect(&base_url)
            .await
            .with_context(|| {
                format!(
                    "connecting to {} (run scripts/pg.sh start)",
                    redacted(&base_url)
                )
            })?;
        sqlx::raw_sql(&format!("CREATE DATABASE {database}"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let mut stack = Stack {
            control_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            proxy_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            token: format!(
                "cpub_e2e_{pid}_{n}_{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_nanos()
            ),
            node: format!("e2e-{pid}-{n}"),
            node_token: String::new(),
            dir: tempfile::tempdir()?,
            base_url,
            database,
            control: None,
            proxy: None,
            control_env: control_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            proxy_env: proxy_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        // Another process may bind a port between `free_port` and the
        // stack's process: then the stack starts again on other ports.
        for attempt in 1.. {
            let started = match stack.start_control().await {
                Ok(()) => match stack.mint_node_token().await {
                    Ok(token) => {
                        stack.node_token = token;
                        stack.start_proxy().await
                    }
                    Err(err) => Err(err),
                },
                Err(err) => Err(err),
            };
            let lost_a_port = started.is_err() && {
                // A process that failed to bind exits within moments.
                tokio::time::sleep(Duration::from_millis(300)).await;
                [&mut stack.control, &mut stack.proxy]
                    .into_iter()
                    .flatten()
                    .any(Proc::lost_its_port)
            };
            match started {
                Err(err)
                    if attempt < 3
                        && (lost_a_port
                            || format!("{err:#}").contains("Address already in use")) =>
                {
                    stack.stop_proxy();
                    stack.stop_control();
                    stack.control_addr.set_port(free_port());
                    stack.proxy_addr.set_port(free_port());
                    stack.admin_addr.set_port(free_port());
                }
                other => return other.map(|()| stack),
            }
        }
        unreachable!("the loop only ends by returning")
    }

    fn database_url(&self) -> String {
        match self.base_url.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{}", self.database),
            None => panic!("database url without a path: {}", self.base_url),
        }
    }

    /// A connection pool on this stack's database (for checks of its rows).
    pub async fn db(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.database_url())
            .await
            .expect("connecting to the stack's database")
    }

    pub fn control_url(&self) -> String {
        format!("http://{}", self.control_addr)
    }

    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy_addr)
    }

    fn spawn(&self, name: &'static str, envs: Vec<(String, String)>) -> Result<Proc> {
        self.spawn_logged(name, name, envs)
    }

    /// Starts the binary `name` with its output in `DIR/<log>.log`.
    fn spawn_logged(
        &self,
        name: &'static str,
        log: &str,
        envs: Vec<(String, String)>,
    ) -> Result<Proc> {
        let log = self.dir.path().join(format!("{log}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(bin(name))
            .envs(envs)
            .env("CPUB_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc { name, child, log })
    }

    async fn wait_healthy(&mut self, which: &'static str, addr: SocketAddr) -> Result<()> {
        let url = format!("http://{addr}/healthz");
        let until = Instant::now() + Duration::from_secs(30);
        let client = reqwest::Client::new();
        loop {
            let proc = if which == "control" {
                self.control.as_mut()
            } else {
                self.proxy.as_mut()
            };
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                // Another test's stack may have the port and answer (seen:
                // a proxy that could not listen, and the test's calls then
                // went to another stack's proxy): only ours will do.
                if let Some(p) = &proc
                    && let Some(owner) = listener_pid(addr.port())
                    && owner != p.child.id()
                {
                    bail!(
                        "{which}: Address already in use: port {} is held by process {owner}",
                        addr.port()
                    );
                }
                return Ok(());
            }
            if let Some(p) = proc
                && let Ok(Some(status)) = p.child.try_wait()
            {
                bail!(
                    "{} exited with {status}:\n{}",
                    p.name,
                    std::fs::read_to_string(&p.log).unwrap_or_default()
                );
            }
            if Instant::now() > until {
                bail!("{which} not healthy at {url} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts (or restarts) cpub-control.
    pub async fn start_control(&mut self) -> Result<()> {
        let mut env = vec![
            ("CPUB_DATABASE_URL".into(), self.database_url()),
            ("CPUB_CONTROL_LISTEN".into(), self.control_addr.to_string()),
            (
                "CPUB_DATA_DIR".into(),
                self.dir.path().join("control").display().to_string(),
            ),
            ("CPUB_PUBLIC_URL".into(), self.proxy_url()),
            ("CPUB_BOOTSTRAP_TOKEN".into(), self.token.clone()),
            ("CPUB_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()),
        ];
        env.extend(self.control_env.iter().cloned());
        self.control = Some(self.spawn("cpub-control", env)?);
        self.wait_healthy("control", self.control_addr).await
    }

    /// Mints (or replaces) this stack's node credential with the admin token.
    async fn mint_node_token(&self) -> Result<String> {
        let url = format!(
            "{}/api/v1/nodes/{}/credential?replace=true",
            self.control_url(),
            self.node
        );
        let response = self.api().post(&url).send().await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        match body["token"].as_str() {
            Some(token) if status.is_success() => Ok(token.to_owned()),
            _ => bail!("minting the node credential: {status} {body}"),
        }
    }

    /// Kills cpub-control (SIGKILL).
    pub fn stop_control(&mut self) {
        self.control.take();
    }

    /// Starts (or restarts) cpub-proxy.
    pub async fn start_proxy(&mut self) -> Result<()> {
        let env = self.proxy_env(self.proxy_addr, self.admin_addr);
        self.proxy = Some(self.spawn("cpub-proxy", env)?);
        self.wait_healthy("proxy", self.proxy_addr).await
    }

    /// Starts another cpub-proxy with this stack's settings (its state
    /// directory and node) on ports of its own, waits up to `within` for it
    /// to exit and returns its exit status (`None`: still running, then
    /// killed) with what it printed.
    pub fn run_second_proxy(&self, within: Duration) -> Result<(Option<ExitStatus>, String)> {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut p = self.spawn_logged(
            "cpub-proxy",
            "cpub-proxy-second",
            self.proxy_env(listen, admin),
        )?;
        let until = Instant::now() + within;
        let status = loop {
            if let Some(status) = p.child.try_wait()? {
                break Some(status);
            }
            if Instant::now() >= until {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        p.kill();
        Ok((status, std::fs::read_to_string(&p.log).unwrap_or_default()))
    }

    /// cpub-proxy's settings for this stack, listening on `listen` and
    /// `admin`.
    fn proxy_env(&self, listen: SocketAddr, admin: SocketAddr) -> Vec<(String, String)> {
        let env = vec![
            ("CPUB_PROXY_LISTEN".into(), listen.to_string()),
            ("CPUB_PROXY_ADMIN_LISTEN".into(), admin.to_string()),
            ("CPUB_URL".into(), self.control_url()),
            ("CPUB_NODE_TOKEN".into(), self.node_token.clone()),
            (
                "CPUB_STATE_DIR".into(),
                self.dir.path().join("proxy").display().to_string(),
            ),
            ("CPUB_NODE".into(), self.node.clone()),
            ("CPUB_PROXY_THREADS".into(), PROXY_THREADS.to_string()),
        ];
        env.into_iter()
            .chain(self.proxy_env.iter().cloned())
            .collect()
    }

    /// Stops cpub-proxy and starts it again with `env` added (settings
    /// under test).
    pub async fn restart_proxy_with(&mut self, env: &[(&str, &str)]) -> Result<()> {
        self.stop_proxy();
        self.proxy_env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.start_proxy().await
    }

    /// Process id of the running cpub-control (for its memory use).
    pub fn control_pid(&self) -> Option<u32> {
        self.control.as_ref().map(|p| p.child.id())
    }

    /// Process id of the running cpub-proxy (for its memory use).
    pub fn proxy_pid(&self) -> Option<u32> {
        self.proxy.as_ref().map(|p| p.child.id())
    }

    /// Kills cpub-proxy (SIGKILL).
    pub fn stop_proxy(&mut self) {
        self.proxy.take();
    }

    /// Stops cpub-proxy with SIGTERM and waits (up to `within`) for it to
    /// exit; returns whether it exited in time (it is killed otherwise).
    pub fn terminate_proxy(&mut self, within: Duration) -> bool {
        let Some(mut p) = self.proxy.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &p.child.id().to_string()])
            .status();
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Ok(Some(_)) = p.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The proxy's `/metrics` text (from its admin listener), or `None`
    /// when it does not answer 200.
    pub async fn metrics(&self) -> Option<String> {
        let r = reqwest::get(format!("http://{}/metrics", self.admin_addr))
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.text().await.ok()
    }

    /// Deploys the example `example` as function `name` with extra manifest
    /// lines, panicking with the CLI output on failure; returns the
    /// function's URL through the proxy (ending in `/`).
    pub fn deploy(&self, example: &str, name: &str, extra_manifest: &str) -> String {
        let dir = bundle(example, name, extra_manifest);
        self.cpub_ok(&["deploy", dir.path().to_str().expect("utf-8 path")]);
        format!("{}/fn/{name}/", self.proxy_url())
    }

    /// Runs the `cpub` CLI against this stack.
    pub fn cpub(&self, args: &[&str]) -> Output {
        Command::new(bin("cpub"))
            .args(args)
            .env("CPUB_URL", self.control_url())
            .env("CPUB_TOKEN", &self.token)
            .env("CPUB_CONFIG", self.dir.path().join("cli-config.toml"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("running cpub")
    }

    /// Runs `cpub` and panics with its output unless it succeeds.
    pub fn cpub_ok(&self, args: &[&str]) -> String {
        let out = self.cpub(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "cpub {args:?} failed ({}):\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// An HTTP client with the API token set.
    pub fn api(&self) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            "authorization",
            format!("Bearer {}", self.token)
                .parse()
                .expect("token header"),
        );
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .expect("client")
    }

    /// Ids of the instances of this stack's node (its containers but those
    /// made ahead and never started: see [`Stack::precreated`]),
    /// optionally of one function.
    pub fn containers(&self, function: Option<&str>) -> Vec<String> {
        self.containers_by_state(function)
            .into_iter()
            .filter(|(_, state)| !is_ahead(state))
            .map(|(id, _)| id)
            .collect()
    }

    /// Ids of the containers the pool made ahead of need (Podman state
    /// `created` or `initialized`), optionally of one function.
    pub fn precreated(&self, function: Option<&str>) -> Vec<String> {
        self.containers_by_state(function)
            .into_iter()
            .filter(|(_, state)| is_ahead(state))
            .map(|(id, _)| id)
            .collect()
    }

    /// Every container of this stack's node (optionally of one function)
    /// with its Podman state.
    pub fn containers_by_state(&self, function: Option<&str>) -> Vec<(String, String)> {
        let mut args = vec![
            "ps".to_owned(),
            "-a".into(),
            "--format".into(),
            "json".into(),
            "--filter".into(),
            format!("label=cpub.node={}", self.node),
        ];
        if let Some(f) = function {
            args.extend(["--filter".into(), format!("label=cpub.function={f}")]);
        }
        let out = Command::new("podman")
            .args(&args)
            .output()
            .expect("podman ps");
        assert!(
            out.status.success(),
            "podman ps: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).expect("podman ps --format json");
        rows.iter()
            .filter_map(|row| {
                let id = row["Id"].as_str()?.to_owned();
                let state = row["State"].as_str().unwrap_or_default().to_owned();
                // The pool pauses through the cgroup freezer; Podman still
                // says running.
                let state = if state == "running" {
                    container_state(&id).unwrap_or(state)
                } else {
                    state
                };
                Some((id, state))
            })
            .collect()
    }

    /// The logs of both processes, for failure messages.
    pub fn logs(&self) -> String {
        let read = |name: &str| {
            std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
        };
        format!(
            "--- cpub-control ---\n{}\n--- cpub-proxy ---\n{}",
            read("cpub-control"),
            read("cpub-proxy")
        )
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for proc in [self.control.as_mut(), self.proxy.as_mut()]
                .into_iter()
                .flatten()
            {
                proc.report();
            }
        }
        let proxy_ran = self.proxy.take().is_some();
        self.control.take();
        // Leave nothing behind, whatever the test did. A create the killed
        // proxy had in flight (a container made ahead of need) still ends
        // in Podman after the proxy is gone, so look again for a while
        // (seen: `Created` containers of finished stacks).
        let settle = Instant::now()
            + if proxy_ran {
                Duration::from_secs(3)
            } else {
                Duration::ZERO
            };
        loop {
            let ids: Vec<String> = self
                .containers_by_state(None)
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("podman")
                    .args(["rm", "-f", "-t", "0"])
                    .args(&ids)
                    .output();
            }
            if Instant::now() >= settle {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        // The images its deployments were built into: left here, they
        // would stay in the store for good, a few per test and run, and
        // Podman 4.3 lists a store at about 0.4 s per image it holds (seen:
        // 683 images, 4 min 20 s for each `podman images`).
        let images = psql(
            &self.database_url(),
            "SELECT DISTINCT image FROM deployments WHERE image IS NOT NULL",
        );
        if let Some(images) = images {
            let images: Vec<String> = images.lines().map(str::to_owned).collect();
            containerpub_podman::testing::remove_images_cli(
                &containerpub_podman::testing::podman(),
                &images,
            );
        }
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database);
        let _ = psql(&self.base_url, &sql);
    }
}

/// Runs `sql` with `psql` on `url` and gives its unaligned output, or
/// `None` when it failed (for `Drop`: never panics). The password goes in
/// the environment: argv is visible to every local user (`ps`).
fn psql(url: &str, sql: &str) -> Option<String> {
    let (url, password) = split_password(url);
    let mut psql = Command::new("psql");
    psql.args(["-X", "-qAt"]).arg(url).arg("-c").arg(sql);
    if let Some(password) = password {
        psql.env("PGPASSWORD", password);
    }
    let out = psql.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes the images of the named functions (`localhost/cpub-fn-<name>:*`)
/// when dropped, also when the test panics: a test's functions are its own
/// (names are unique per test), and their images would otherwise pile up
/// in the instances' store across runs.
pub struct RemoveImages(Vec<String>);

impl RemoveImages {
    pub fn of<S: AsRef<str>>(functions: &[S]) -> Self {
        Self(functions.iter().map(|f| f.as_ref().to_owned()).collect())
    }
}

impl Drop for RemoveImages {
    fn drop(&mut self) {
        let mut images = Vec::new();
        for function in &self.0 {
            match function_images(function) {
                Ok(listed) => images.extend(listed),
                Err(err) => eprintln!("RemoveImages: {err}; images of {function} left"),
            }
        }
        // Under the store's lock: another test's control plane may be
        // loading an image that reuses one of these images' layers.
        containerpub_podman::testing::remove_images_cli(
            &containerpub_podman::testing::podman(),
            &images,
        );
    }
}

/// The images of function `name` in the instances' store
/// (`localhost/cpub-fn-<name>:<tag>`; a tag carries the deployment's id and
/// the database's token), or why they could not be listed. `podman images`
/// can fail while other tests hold Podman's locks: tried a few times, and a
/// failure is never read as "no images". Listed by reference: a listing of
/// the whole store costs Podman 4.3 about 0.4 s per image it holds.
pub fn function_images(name: &str) -> Result<Vec<String>, String> {
    let prefix = format!("localhost/cpub-fn-{name}:");
    let mut last_error = String::new();
    for _ in 0..5 {
        let out = Command::new("podman")
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .arg(format!("--filter=reference=localhost/cpub-fn-{name}"))
            .output()
            .map_err(|e| format!("podman images: {e}"))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with(&prefix))
                .map(str::to_owned)
                .collect());
        }
        last_error = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(format!("podman images failed: {last_error}"))
}

/// `podman inspect` of one container as JSON, or `None` when it is gone.
pub fn inspect(id: &str) -> Option<serde_json::Value> {
    let out = Command::new("podman")
        .args(["container", "inspect", id])
        .output()
        .expect("podman inspect");
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?.first().cloned()
}

/// Whether a Podman state is that of a container made ahead of need and
/// never started: `created`, or `initialized` (`podman init` done).
pub fn is_ahead(state: &str) -> bool {
    matches!(state, "created" | "initialized")
}

/// `State.Status` of a container (`running`, `paused`, `exited`, …), or
/// `None` when it is gone; `paused` also for a container Podman calls
/// `running` whose cgroup is frozen (the pool pauses through the cgroup
/// freezer: see [`frozen`]).
pub fn container_state(id: &str) -> Option<String> {
    let v = inspect(id)?;
    let status = v["State"]["Status"].as_str()?;
    if status == "running" && frozen(&v) {
        return Some("paused".into());
    }
    Some(status.to_owned())
}

/// Thaws container `id` through its cgroup freezer (what "unpause" is for
/// the pool's instances; Podman's `unpause` refuses a container it did not
/// pause). Panics naming what failed.
pub fn thaw(id: &str) {
    let v = inspect(id).unwrap_or_else(|| panic!("container {id} is gone"));
    let cgroup = v["State"]["CgroupPath"]
        .as_str()
        .unwrap_or_else(|| panic!("container {id} has no cgroup: {v}"));
    let freezer = containerpub_pool::podman::Freezer::host().expect("a cgroup freezer");
    freezer
        .thaw(cgroup)
        .unwrap_or_else(|e| panic!("thawing {id}: {e}"));
}

/// Whether the kernel froze the container of inspect document `v` (its
/// cgroup freezer says `FROZEN`).
pub fn frozen(v: &serde_json::Value) -> bool {
    let Some(cgroup) = v["State"]["CgroupPath"].as_str() else {
        return false;
    };
    containerpub_pool::podman::Freezer::host().is_some_and(|f| f.is_frozen(cgroup).unwrap_or(false))
}

/// The container's address on the `cpub` network (else on any network).
pub fn container_ip(id: &str) -> Option<std::net::IpAddr> {
    let v = inspect(id)?;
    let nets = v["NetworkSettings"]["Networks"].as_object()?;
    let pick = |n: &serde_json::Value| {
        n["IPAddress"]
            .as_str()
            .filter(|s| !s.is_empty())
            .and_then(|s| s.parse().ok())
    };
    nets.get("cpub")
        .and_then(pick)
        .or_else(|| nets.values().find_map(pick))
}

/// The image name a container runs (`localhost/cpub-fn-NAME:vN-dID-TOKEN`).
pub fn container_image(id: &str) -> Option<String> {
    let v = inspect(id)?;
    v["ImageName"]
        .as_str()
        .or_else(|| v["Config"]["Image"].as_str())
        .map(str::to_owned)
}

/// The `desc` of the `start` entry of a `server-timing` header
/// (`cold`, `paused`, `warm`), or `None` when there is none.
pub fn start_kind_of(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let timing = headers.get("server-timing")?.to_str().ok()?;
    timing.split(',').find_map(|part| {
        part.trim()
            .strip_prefix("start;desc=\"")
            .and_then(|r| r.split('"').next())
            .map(str::to_owned)
    })
}

/// The `dur` (ms) of entry `name` of a `server-timing` header.
pub fn timing_dur(headers: &reqwest::header::HeaderMap, name: &str) -> Option<f64> {
    let timing = headers.get("server-timing")?.to_str().ok()?;
    timing.split(',').find_map(|part| {
        let mut fields = part.trim().split(';');
        if fields.next()? != name {
            return None;
        }
        fields.find_map(|f| f.trim().strip_prefix("dur=")?.parse().ok())
    })
}

/// Sum of the samples of Prometheus metric `name` (exact name, e.g.
/// `cpub_cold_starts_total`) whose labels contain every `key="value"` of
/// `labels`; `None` when no sample matches.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some((l, v)) = r.split_once('}') else {
                continue;
            };
            (l, v)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue; // another metric with this prefix
        };
        let pairs: Vec<&str> = label_text.split(',').map(str::trim).collect();
        if !labels
            .iter()
            .all(|(k, v)| pairs.contains(&format!("{k}=\"{v}\"").as_str()))
        {
            continue;
        }
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// A field of `/proc/<pid>/status` in KiB (`VmHWM` is the peak resident
/// set size, `VmRSS` the current one).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|line| {
        line.strip_prefix(field)?
            .strip_prefix(':')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// Copies an example bundle into a temp dir under a new function name, with
/// extra manifest lines appended (e.g. `[env]` overrides).
pub fn bundle(example: &str, name: &str, extra_manifest: &str) -> tempfile::TempDir {
    let src = repo_root().join("examples").join(example);
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&src, dir.path());
    let manifest_path = dir.path().join("cpub.toml");
    let manifest = std::fs::read_to_string(&manifest_path).expect("example manifest");
    let mut out = String::new();
    for line in manifest.lines() {
        if line.trim_start().starts_with("name")
            && line.contains('=')
            && !line.trim_start().starts_with("name_")
        {
            out.push_str(&format!("name = \"{name}\"\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(extra_manifest);
    std::fs::write(&manifest_path, out).expect("write manifest");
    dir
}

/// A public `runtime = "container"` bundle of busybox-static (installed by
/// scripts/setup-host.sh) whose image runs `entrypoint` (a JSON array, e.g.
/// `["/busybox", "sleep", "3600"]`), with `extra_manifest` appended to its
/// `cpub.toml`: functions that crash, hang or misbehave on purpose.
pub fn busybox_bundle(name: &str, entrypoint: &str, extra_manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy("/bin/busybox", dir.path().join("busybox"))
        .expect("/bin/busybox (busybox-static, see scripts/setup-host.sh)");
    std::fs::write(
        dir.path().join("Containerfile"),
        format!("FROM scratch\nCOPY busybox /busybox\nENTRYPOINT {entrypoint}\n"),
    )
    .expect("write Containerfile");
    std::fs::write(
        dir.path().join("cpub.toml"),
        format!(
            "name = \"{name}\"\nruntime = \"container\"\nvisibility = \"public\"\n{extra_manifest}"
        ),
    )
    .expect("write manifest");
    dir
}

fn copy_dir(src: &Path, dst: &Path) {
    for entry in std::fs::read_dir(src).unwrap_or_else(|e| panic!("{}: {e}", src.display())) {
        let entry = entry.expect("dir entry");
        let to = dst.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            std::fs::create_dir_all(&to).expect("mkdir");
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).expect("copy");
        }
    }
}

/// Makes a `.tar.gz` from `(path, contents, mode)` entries, exactly as given
/// (no normalisation), for tests of what the server must refuse.
pub fn targz(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for (path, data, mode) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(*mode);
        header.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..`; write the name bytes directly for hostile archives.
        let name = path.as_bytes();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_cksum();
        builder.append(&header, *data).expect("append");
    }
    builder.into_inner().expect("tar").finish().expect("gzip")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check that a stack's process holds its own port: `ss` names
    /// this process for a port it listens on, and no process for a port
    /// nobody listens on.
    #[test]
    fn the_listener_of_a_port_is_found() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listener_pid(port), Some(std::process::id()));
        drop(listener);
        assert_eq!(listener_pid(port), None);
    }

    #[test]
    fn passwords_stay_out_of_argv_and_messages() {
        let url = "postgres://cpub:s3cr3t@127.0.0.1:25432/cpub";
        assert_eq!(
            split_password(url),
            (
                "postgres://cpub@127.0.0.1:25432/cpub".to_owned(),
                Some("s3cr3t".to_owned())
            )
        );
        assert_eq!(redacted(url), "postgres://cpub:***@127.0.0.1:25432/cpub");
        let bare = "postgres://cpub@127.0.0.1:25432/cpub";
        assert_eq!(split_password(bare), (bare.to_owned(), None));
        assert_eq!(redacted(bare), bare);
    }
}
