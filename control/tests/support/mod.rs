//! What the control plane's integration tests share: a fresh PostgreSQL
//! database per test (`TestDb`, dropped with the value, also when the test
//! fails), the application over it (`TestApp`, the real router), and the
//! Podman socket of the tests that build. Included by `api.rs` and
//! `executions.rs` (`mod support;`).

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use containerpub_control::config::{BuildSettings, Limits, Settings};
use containerpub_control::state::AppState;
use containerpub_control::{auth, db, revision, routes};
use containerpub_podman::Podman;
use rand::RngCore;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-bootstrap-token-0123456789";
pub const PASSWORD: &str = "correct horse battery staple";
/// Podman's API socket as `scripts/setup-host.sh` starts it.
pub const DEFAULT_PODMAN_SOCKET: &str = "/run/podman/podman.sock";

/// The Podman API socket of the tests: `CPUB_PODMAN_SOCKET`, else the
/// default (the pool's tests read the same variable).
pub fn podman_socket() -> PathBuf {
    std::env::var_os("CPUB_PODMAN_SOCKET")
        .filter(|s| !s.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_PODMAN_SOCKET), PathBuf::from)
}

/// A Podman client for a test that needs one; fails the test with what to do
/// when the API does not answer.
pub async fn require_podman() -> Podman {
    let socket = podman_socket();
    let podman = Podman::new(socket.clone());
    if let Err(e) = podman.ping().await {
        panic!(
            "this test needs the Podman API at {} (CPUB_PODMAN_SOCKET), which does not answer: {e}\n\
             start it with `bash scripts/setup-host.sh`, or leave the Podman tests out with \
             `cargo test -p containerpub-control --test api -- --skip with_podman`",
            socket.display()
        );
    }
    podman
}

pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// `CPUB_TEST_DATABASE_URL`, else what `scripts/pg.sh url` prints for the
/// local test cluster (its password is random, in a root-only file).
pub fn test_database_url() -> String {
    if let Some(url) = std::env::var("CPUB_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        return url;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg.sh");
    let out = std::process::Command::new("bash")
        .args([script, "url"])
        .output()
        .expect("running scripts/pg.sh url");
    assert!(
        out.status.success(),
        "no CPUB_TEST_DATABASE_URL and `scripts/pg.sh url` failed (run `scripts/pg.sh start`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A database that exists for one test.
pub struct TestDb {
    base: PgConnectOptions,
    name: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn create() -> Self {
        let url = test_database_url();
        let base: PgConnectOptions = url.parse().expect("CPUB_TEST_DATABASE_URL");
        let name = format!("cpub_test_{}", random_hex(6));
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(base.clone())
            .await
            .expect("connect to the test cluster");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("CREATE DATABASE (role needs CREATEDB)");
        admin.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(base.clone().database(&name))
            .await
            .expect("connect to the test database");
        Self { base, name, pool }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let base = self.base.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(admin) = PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(base)
                    .await
                {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    if let Err(err) = sqlx::query(&sql).execute(&admin).await {
                        eprintln!("dropping {name}: {err}");
                    }
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

/// The application over a fresh database.
pub struct TestApp {
    pub router: Router,
    pub state: AppState,
    _data: tempfile::TempDir,
    pub db: TestDb,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
    }
}

pub async fn app() -> TestApp {
    app_with(64 * 1024).await
}

pub async fn app_with(max_upload_bytes: u64) -> TestApp {
    app_with_settings(|settings| settings.limits.max_upload_bytes = max_upload_bytes).await
}

/// With the given limits of the reads of records and logs.
pub async fn app_with_reads(
    max_upload_bytes: u64,
    reads: containerpub_control::reads::ReadLimits,
) -> TestApp {
    app_with_settings(|settings| {
        settings.limits.max_upload_bytes = max_upload_bytes;
        settings.reads = reads;
    })
    .await
}

/// With the test settings as `change` leaves them.
pub async fn app_with_settings(change: impl FnOnce(&mut Settings)) -> TestApp {
    let db = TestDb::create().await;
    db::migrate(&db.pool).await.expect("migrations");
    auth::bootstrap(&db.pool, Some(PASSWORD), Some(TOKEN))
        .await
        .expect("bootstrap");
    let data = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: String::new(),
        data_dir: data.path().to_path_buf(),
        podman_socket: podman_socket(),
        public_url: "http://proxy.test".into(),
        limits: Limits {
            max_upload_bytes: 64 * 1024,
            max_bundle_bytes: 8 << 20,
            max_bundle_files: 100,
        },
        build_timeout: Duration::from_secs(120),
        build: BuildSettings::default(),
        bootstrap_token: None,
        admin_password: None,
        logs: Default::default(),
        keep_versions: 10,
        reads: containerpub_control::reads::ReadLimits {
            concurrency: 4,
            timeout: Duration::from_secs(30),
        },
        login_token_lifetime: containerpub_control::config::DEFAULT_LOGIN_TOKEN_LIFETIME,
    };
    change(&mut settings);
    std::fs::create_dir_all(settings.artifacts_dir()).unwrap();
    std::fs::create_dir_all(settings.tmp_dir()).unwrap();
    let shutdown = CancellationToken::new();
    let (tx, rx) = watch::channel(db::current_revision(&db.pool).await.unwrap());
    tokio::spawn(revision::follow(db.pool.clone(), tx, shutdown.clone()));
    let reads = Arc::new(containerpub_control::reads::Reads::new(settings.reads));
    let state = AppState {
        db: db.pool.clone(),
        settings: Arc::new(settings),
        podman: Podman::new(podman_socket()),
        revision: rx,
        watchers: Arc::default(),
        vault: Arc::new(
            containerpub_control::vault::Vault::open_or_create(&data.path().join("master.key"))
                .expect("master key"),
        ),
        shutdown,
        login_limits: Arc::default(),
        builds: Arc::default(),
        images: containerpub_control::build::ImageNames::load(&db.pool)
            .await
            .expect("the database's image token"),
        reads,
    };
    TestApp {
        router: routes::router(state.clone()),
        state,
        _data: data,
        db,
    }
}
