//! The PostgreSQL clusters of `scripts/pg.sh` are locked down: no `trust`,
//! the superuser only by peer authentication over the socket for the
//! `postgres` OS user, the application role `cpub` no superuser and only
//! with its password. Checked as an unprivileged local user (`nobody`) on
//! the test cluster the suite runs against, on a fresh stack-mode cluster
//! (`CPUB_PG_CREATEDB=0`, as `scripts/up.sh` makes it) and on a cluster
//! made the old way (`initdb --auth=trust`, password `cpub`), which
//! `pg.sh start` must migrate. The stack's cluster flushes to disk (fsync
//! on), also when it was running without; a new cluster has data
//! checksums. Needs root (to act as `nobody`) and `psql`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use containerpub_e2e::{repo_root, test_database_url};

/// Parts of `postgres://user:password@host:port/db`.
struct Url {
    password: String,
    host: String,
    port: u16,
}

fn parse(url: &str) -> Url {
    let rest = url.strip_prefix("postgres://").expect("postgres:// URL");
    let (auth, rest) = rest.split_once('@').expect("user:password@");
    let (_, password) = auth.split_once(':').expect("a password in the URL");
    let (hostport, _) = rest.split_once('/').expect("/database");
    let (host, port) = hostport.rsplit_once(':').expect("host:port");
    Url {
        password: password.to_owned(),
        host: host.to_owned(),
        port: port.parse().expect("port"),
    }
}

/// `psql -c 'select …'` run as OS user `os_user`; `Ok(output)` when it
/// connected and answered, `Err(stderr)` when refused.
fn psql_as(
    os_user: &str,
    host: &str,
    port: u16,
    user: &str,
    password: Option<&str>,
) -> Result<String, String> {
    psql(
        os_user,
        (host, port, "cpub"),
        user,
        password,
        "select current_user || ' ' || rolsuper || ' ' || rolcreatedb from pg_roles where rolname = current_user",
    )
}

/// `sql` by `psql` run as OS user `os_user` against `(host, port,
/// database)` as the role `user`.
fn psql(
    os_user: &str,
    (host, port, database): (&str, u16, &str),
    user: &str,
    password: Option<&str>,
    sql: &str,
) -> Result<String, String> {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", os_user, "--", "psql", "-X", "-w", "-qtA"])
        .args(["-h", host, "-p", &port.to_string()])
        .args(["-U", user, "-d", database, "-c", sql])
        .env_remove("PGPASSWORD")
        .env("PGCONNECT_TIMEOUT", "10")
        .current_dir("/")
        .stdin(Stdio::null());
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let out = cmd.output().expect("runuser psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// A server setting (`show NAME`), asked as the superuser over the socket.
fn setting(dir: &Path, port: u16, name: &str) -> String {
    let socket = dir.to_str().unwrap();
    psql(
        "postgres",
        (socket, port, "postgres"),
        "postgres",
        None,
        &format!("show {name}"),
    )
    .unwrap_or_else(|e| panic!("show {name}: {e}"))
}

/// The cluster's server process (first line of `postmaster.pid`): another
/// one after a restart.
fn postmaster(dir: &Path) -> String {
    let pid = std::fs::read_to_string(dir.join("postmaster.pid")).expect("postmaster.pid");
    pid.lines().next().unwrap_or_default().to_owned()
}

fn assert_root() {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "these checks run as root (they act as the users nobody and postgres)"
    );
}

/// Every check on one cluster: `url` as printed by `pg.sh start`, its
/// data (and socket) directory, whether the role may create databases.
fn assert_locked_down(url: &str, dir: &Path, createdb: bool) {
    let u = parse(url);
    let socket = dir.to_str().unwrap();
    // Refused: anyone but the postgres OS user as the superuser, over TCP
    // or the socket; the application role without (or with a wrong)
    // password.
    for (os_user, host, user, password) in [
        ("nobody", u.host.as_str(), "postgres", None),
        ("nobody", u.host.as_str(), "cpub", None),
        ("nobody", u.host.as_str(), "cpub", Some("cpub")),
        (
            "nobody",
            u.host.as_str(),
            "postgres",
            Some(u.password.as_str()),
        ),
        ("nobody", socket, "postgres", None),
        ("nobody", socket, "cpub", None),
        ("root", socket, "postgres", None),
        ("root", socket, "cpub", None),
        ("postgres", u.host.as_str(), "postgres", None),
        ("postgres", socket, "cpub", None),
    ] {
        let result = psql_as(os_user, host, u.port, user, password);
        assert!(
            result.is_err(),
            "OS user {os_user} got in as {user} at {host}:{} (password: {}): {result:?}",
            u.port,
            password.is_some()
        );
    }
    // Allowed: the right password, from any local user; the superuser as
    // the postgres OS user over the socket.
    let answer = psql_as("nobody", &u.host, u.port, "cpub", Some(&u.password))
        .expect("the role cpub with its password");
    assert_eq!(
        answer,
        format!("cpub false {createdb}"),
        "cpub: not superuser; createdb = {createdb}"
    );
    let answer = psql_as("postgres", socket, u.port, "postgres", None)
        .expect("postgres over the socket by peer");
    assert!(answer.starts_with("postgres true"), "{answer}");

    // No trust line; the secrets are private.
    let hba = std::fs::read_to_string(dir.join("pg_hba.conf")).unwrap();
    for line in hba.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        assert!(
            !line.split_whitespace().any(|w| w == "trust"),
            "pg_hba.conf: {line}"
        );
    }
    let meta = std::fs::metadata(dir.join("cpub-password")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(!u.password.is_empty() && u.password != "cpub");
}

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// A cluster of this test in its own directory and port; stopped and
/// removed when dropped.
struct Cluster {
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    fn new() -> Self {
        let n = CLUSTERS.fetch_add(1, Ordering::SeqCst);
        // Directly under /var/tmp: the postgres user must reach it.
        let dir = PathBuf::from(format!("/var/tmp/cpub-pgtest-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Cluster { dir, port }
    }

    fn pg_sh(&self, command: &str, createdb: bool) -> String {
        self.pg_sh_fsync(command, createdb, None)
    }

    /// `pg.sh` with `CPUB_PG_FSYNC` set to `fsync`, or unset.
    fn pg_sh_fsync(&self, command: &str, createdb: bool, fsync: Option<&str>) -> String {
        let out = self
            .pg_sh_command(command, createdb, fsync)
            .output()
            .expect("pg.sh");
        pg_sh_output(command, out)
    }

    /// The command of `pg.sh <command>` on this cluster.
    fn pg_sh_command(&self, command: &str, createdb: bool, fsync: Option<&str>) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("scripts/pg.sh"))
            .arg(command)
            .env("CPUB_PG_DIR", &self.dir)
            .env("CPUB_PG_PORT", self.port.to_string())
            .env("CPUB_PG_CREATEDB", if createdb { "1" } else { "0" })
            .env_remove("CPUB_PG_FSYNC");
        if let Some(fsync) = fsync {
            cmd.env("CPUB_PG_FSYNC", fsync);
        }
        cmd
    }

    /// Runs a server binary (`initdb`, `pg_ctl`, `psql`) as postgres.
    fn as_postgres(&self, program: &str, args: &[&str]) {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .unwrap()
            .map(|e| e.unwrap().path().join("bin"))
            .max()
            .unwrap();
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join(program))
            .args(args)
            .current_dir("/")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// What a `pg.sh` run printed, once it succeeded.
fn pg_sh_output(command: &str, out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "pg.sh {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/pg.sh"))
            .arg("stop")
            .env("CPUB_PG_DIR", &self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The cluster this test suite runs against (`scripts/test.sh` starts it
/// with `pg.sh start`).
#[test]
fn the_test_cluster_refuses_unprivileged_local_users_and_does_not_flush() {
    assert_root();
    let dir = std::env::var_os("CPUB_PG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/containerpub-pg"));
    let url = test_database_url();
    assert_locked_down(&url, &dir, true);
    // Throwaway databases: no flushing, unless someone asked for it.
    let asked = std::env::var("CPUB_PG_FSYNC").unwrap_or_else(|_| "off".into());
    assert_eq!(
        setting(&dir, parse(&url).port, "fsync"),
        asked,
        "the test cluster's fsync is not what CPUB_PG_FSYNC (default off) asks: \
         start it again with `bash scripts/pg.sh stop; bash scripts/pg.sh start`"
    );
}

/// What `scripts/up.sh` makes on a fresh machine: no CREATEDB either.
#[test]
fn a_fresh_stack_cluster_is_locked_down_and_flushes() {
    assert_root();
    let cluster = Cluster::new();
    let url = cluster.pg_sh("start", false);
    assert_locked_down(&url, &cluster.dir, false);
    assert_eq!(setting(&cluster.dir, cluster.port, "fsync"), "on");
    assert_eq!(setting(&cluster.dir, cluster.port, "data_checksums"), "on");
    let server = postmaster(&cluster.dir);
    // Idempotent: a second start keeps the password, the lock and the
    // server.
    assert_eq!(cluster.pg_sh("start", false), url);
    assert_eq!(cluster.pg_sh("url", false), url);
    assert_locked_down(&url, &cluster.dir, false);
    assert_eq!(postmaster(&cluster.dir), server, "restarted for nothing");
}

/// Starts at once (`scripts/up.sh` and `scripts/test.sh` in two shells, or
/// two test runs, on a machine where the cluster is not running) take turns
/// (a lock on the data directory): each succeeds and prints the same
/// URL, and one server runs. Without the lock, two `initdb` or two
/// `pg_ctl start` raced, and one run failed.
#[test]
fn starts_at_once_take_turns() {
    assert_root();
    let cluster = Cluster::new();
    let runs: Vec<_> = (0..3)
        .map(|_| {
            cluster
                .pg_sh_command("start", false, None)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("pg.sh start")
        })
        .collect();
    let urls: Vec<String> = runs
        .into_iter()
        .map(|run| pg_sh_output("start", run.wait_with_output().expect("pg.sh start")))
        .collect();
    assert!(urls.iter().all(|u| *u == urls[0]), "{urls:?}");
    assert_locked_down(&urls[0], &cluster.dir, false);
}

/// A cluster made by the old `pg.sh` (everyone in as superuser, no
/// password) is migrated by the next `pg.sh start`, while it runs.
#[test]
fn an_old_trust_cluster_is_migrated_on_start_and_flushes_in_stack_mode() {
    assert_root();
    let cluster = Cluster::new();
    std::fs::create_dir_all(&cluster.dir).unwrap();
    let chown = Command::new("chown")
        .arg("postgres:postgres")
        .arg(&cluster.dir)
        .status()
        .unwrap();
    assert!(chown.success());
    let dir = cluster.dir.to_str().unwrap();
    let port = cluster.port.to_string();
    cluster.as_postgres(
        "initdb",
        &["-D", dir, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
    );
    let options = format!("-p {port} -c listen_addresses=127.0.0.1 -k {dir} -c fsync=off");
    let log = format!("{dir}/server.log");
    cluster.as_postgres(
        "pg_ctl",
        &[
            "-D", dir, "-l", &log, "-w", "-t", "60", "-o", &options, "start",
        ],
    );
    for sql in [
        "create role cpub login password 'cpub' createdb",
        "create database cpub owner cpub",
    ] {
        cluster.as_postgres(
            "psql",
            &[
                "-h", dir, "-p", &port, "-U", "postgres", "-d", "postgres", "-c", sql,
            ],
        );
    }
    // The hole, before: nobody gets in as the superuser.
    assert!(psql_as("nobody", "127.0.0.1", cluster.port, "postgres", None).is_ok());

    let server = postmaster(&cluster.dir);
    let url = cluster.pg_sh("start", true);
    assert_locked_down(&url, &cluster.dir, true);
    // Test mode leaves a running cluster's flushing as it is.
    assert_eq!(setting(&cluster.dir, cluster.port, "fsync"), "off");
    assert_eq!(postmaster(&cluster.dir), server);
    // Stack mode takes CREATEDB away from an existing role, and restarts
    // a cluster running with fsync off with it on (on the same port).
    let url = cluster.pg_sh("start", false);
    assert_locked_down(&url, &cluster.dir, false);
    assert_eq!(setting(&cluster.dir, cluster.port, "fsync"), "on");
    let restarted = postmaster(&cluster.dir);
    assert_ne!(restarted, server);
    // Not the other way round by default: test mode keeps it on.
    assert_eq!(cluster.pg_sh("start", true), url);
    assert_eq!(setting(&cluster.dir, cluster.port, "fsync"), "on");
    assert_eq!(postmaster(&cluster.dir), restarted);
    // Asked for by name, it is (a benchmark's reused cluster).
    assert_eq!(cluster.pg_sh_fsync("start", true, Some("off")), url);
    assert_eq!(setting(&cluster.dir, cluster.port, "fsync"), "off");
    assert_ne!(postmaster(&cluster.dir), restarted);
}
