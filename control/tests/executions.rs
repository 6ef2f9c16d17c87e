//! Execution record ingest (`POST /api/v1/executions`) against a real
//! PostgreSQL: the real router (`Router::oneshot`, no socket) over a fresh
//! database per test (`CPUB_TEST_DATABASE_URL`, as `tests/api.rs`; the
//! harness is the smaller part of that file's, no Podman). What the binary
//! COPY writes is read back through `GET …/executions` and SQL: every field
//! as sent, a full batch whole, a resent batch once, a refused batch not at
//! all.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use containerpub_control::config::{BuildSettings, Limits, Settings};
use containerpub_control::state::AppState;
use containerpub_control::{auth, db, routes};
use containerpub_podman::Podman;
use containerpub_wire::executions::{
    ExecutionBatch, ExecutionInfo, ExecutionRecord, IngestResult, MAX_BATCH_RECORDS, StartKind,
};
use http_body_util::BodyExt;
use rand::RngCore;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const TOKEN: &str = "test-bootstrap-token-0123456789";

fn database_url() -> String {
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
        "no CPUB_TEST_DATABASE_URL and `scripts/pg.sh url` failed (run `scripts/pg.sh start`)"
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A database and the application over it, both gone with the value.
struct App {
    router: Router,
    state: AppState,
    base: PgConnectOptions,
    name: String,
    _data: tempfile::TempDir,
}

impl Drop for App {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
        let (base, name) = (self.base.clone(), self.name.clone());
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
                    let _ = sqlx::query(&sql).execute(&admin).await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

async fn app() -> App {
    let base: PgConnectOptions = database_url().parse().expect("CPUB_TEST_DATABASE_URL");
    let mut b = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut b);
    let name = format!("cpub_test_{}", hex::encode(b));
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
        .max_connections(4)
        .connect_with(base.clone().database(&name))
        .await
        .expect("connect to the test database");
    db::migrate(&pool).await.expect("migrations");
    auth::bootstrap(&pool, Some("correct horse battery staple"), Some(TOKEN))
        .await
        .expect("bootstrap");
    let data = tempfile::tempdir().unwrap();
    let settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: String::new(),
        data_dir: data.path().to_path_buf(),
        podman_socket: "/nonexistent".into(),
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
    };
    let (_tx, rx) = watch::channel(0);
    let state = AppState {
        db: pool.clone(),
        settings: Arc::new(settings),
        podman: Podman::new(std::path::PathBuf::from("/nonexistent")),
        revision: rx,
        watchers: Arc::default(),
        vault: Arc::new(
            containerpub_control::vault::Vault::open_or_create(&data.path().join("master.key"))
                .expect("master key"),
        ),
        shutdown: CancellationToken::new(),
        login_limits: Arc::default(),
        builds: Arc::default(),
    };
    App {
        router: routes::router(state.clone()),
        state,
        base,
        name,
        _data: data,
    }
}

impl App {
    async fn send(&self, method: &str, uri: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "control.test")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body.to_vec())
    }

    async fn ingest(&self, batch: &ExecutionBatch) -> (StatusCode, Vec<u8>) {
        self.send(
            "POST",
            "/api/v1/executions",
            serde_json::to_vec(batch).unwrap(),
        )
        .await
    }

    fn db(&self) -> &PgPool {
        &self.state.db
    }
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn record(i: usize, function: &str, deployment_id: i64) -> ExecutionRecord {
    ExecutionRecord {
        at_us: now_us() - 1_000_000 + i as i64,
        function: function.into(),
        deployment_id,
        version: 1,
        instance: Some("0123456789ab".into()),
        request_id: format!("req-{i}"),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        method: "GET".into(),
        status: 200,
        start: Some(StartKind::Warm),
        queue_us: 1,
        start_us: 0,
        upstream_us: 300,
        total_us: 400,
        bytes_in: 80,
        bytes_out: 120,
        rejection: None,
    }
}

async fn count(db: &PgPool, function: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM executions WHERE function = $1")
        .bind(function)
        .fetch_one(db)
        .await
        .unwrap();
    n
}

#[tokio::test]
async fn records_are_stored_as_sent_and_a_resent_batch_once() {
    let app = app().await;
    // A real function, so the listing shows its records.
    sqlx::query("INSERT INTO functions (name, owner_id) SELECT 'exact', min(id) FROM users")
        .execute(app.db())
        .await
        .unwrap();
    let (fid,): (i64,) = sqlx::query_as("SELECT id FROM functions WHERE name = 'exact'")
        .fetch_one(app.db())
        .await
        .unwrap();
    let (did,): (i64,) = sqlx::query_as(
        "INSERT INTO deployments (function_id, version, digest, artifact, config, status) \
         VALUES ($1, 1, 'sha256:0', '/nonexistent', '{}', 'active') RETURNING id",
    )
    .bind(fid)
    .fetch_one(app.db())
    .await
    .unwrap();
    // Every field that has a NULL, an escape in JSON or an edge value.
    let mut odd = record(0, "exact", did);
    odd.at_us = now_us() - 5_000_000 + 7;
    odd.method = "G\\E\"T\t".replace('\t', "~");
    odd.instance = None;
    odd.trace_id = None;
    odd.start = None;
    odd.status = 0;
    odd.rejection = Some("queue_full".into());
    odd.bytes_out = i64::MAX as u64;
    odd.total_us = 86_400_000_000;
    let mut cold = record(1, "exact", did);
    cold.start = Some(StartKind::Cold);
    cold.status = 503;
    cold.request_id = "rid-with.dots_and-dashes".into();
    let batch = ExecutionBatch {
        node: "node-a".into(),
        batch: "boot-1".into(),
        records: vec![odd.clone(), cold.clone()],
    };
    let (status, body) = app.ingest(&batch).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let r: IngestResult = serde_json::from_slice(&body).unwrap();
    assert_eq!((r.stored, r.skipped, r.duplicate), (2, 0, false));

    let (status, body) = app
        .send(
            "GET",
            "/api/v1/functions/exact/executions?since=1h",
            Vec::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let listed: Vec<ExecutionInfo> = serde_json::from_slice(&body).unwrap();
    // Newest first: `cold` (1 s ago), then `odd` (5 s ago).
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].record, cold);
    assert_eq!(listed[1].record, odd);
    assert_eq!(listed[1].node, "node-a");
    assert_eq!(listed[1].at.timestamp_micros(), odd.at_us);

    // Sent again (its answer was lost): stored once.
    let (status, body) = app.ingest(&batch).await;
    assert_eq!(status, StatusCode::OK);
    let r: IngestResult = serde_json::from_slice(&body).unwrap();
    assert_eq!((r.stored, r.duplicate), (0, true));
    assert_eq!(count(app.db(), "exact").await, 2);
}

#[tokio::test]
async fn a_full_batch_is_stored_whole_and_a_bad_one_not_at_all() {
    let app = app().await;
    let records: Vec<ExecutionRecord> = (0..MAX_BATCH_RECORDS)
        .map(|i| record(i, "many", 9))
        .collect();
    let batch = ExecutionBatch {
        node: "node-b".into(),
        batch: "boot-7".into(),
        records,
    };
    let (status, body) = app.ingest(&batch).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let r: IngestResult = serde_json::from_slice(&body).unwrap();
    assert_eq!(r.stored, MAX_BATCH_RECORDS as u64);
    assert_eq!(count(app.db(), "many").await, MAX_BATCH_RECORDS as i64);
    let (distinct,): (i64,) =
        sqlx::query_as("SELECT count(DISTINCT request_id) FROM executions WHERE function = 'many'")
            .fetch_one(app.db())
            .await
            .unwrap();
    assert_eq!(distinct, MAX_BATCH_RECORDS as i64);

    // One more record than a batch holds: refused, nothing stored.
    let mut over = batch.clone();
    over.batch = "boot-8".into();
    over.records.push(record(0, "over", 9));
    let (status, _) = app.ingest(&over).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(count(app.db(), "over").await, 0);

    // A bad record late in a batch: 400 naming it, nothing of the batch
    // stored, and the batch id not used up (the fixed batch goes in).
    let mut bad = ExecutionBatch {
        node: "node-b".into(),
        batch: "boot-9".into(),
        records: (0..100).map(|i| record(i, "bad", 9)).collect(),
    };
    bad.records[99].trace_id = Some("NOT-HEX".into());
    let (status, body) = app.ingest(&bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let e: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["field"], "records[99].trace_id", "{e}");
    assert_eq!(count(app.db(), "bad").await, 0);
    bad.records[99].trace_id = None;
    let (status, _) = app.ingest(&bad).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(count(app.db(), "bad").await, 100);
}

#[tokio::test]
async fn records_land_in_their_day_and_old_ones_are_skipped() {
    let app = app().await;
    let day_us: i64 = 86_400_000_000;
    let mut yesterday = record(0, "days", 3);
    yesterday.at_us = now_us() - day_us;
    let mut ancient = record(1, "days", 3);
    ancient.at_us = now_us() - 400 * day_us;
    let mut future = record(2, "days", 3);
    future.at_us = now_us() + 2 * 3_600_000_000;
    let today = record(3, "days", 3);
    let batch = ExecutionBatch {
        node: "node-c".into(),
        batch: "days-1".into(),
        records: vec![yesterday, ancient, future, today],
    };
    let (status, body) = app.ingest(&batch).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let r: IngestResult = serde_json::from_slice(&body).unwrap();
    assert_eq!((r.stored, r.skipped), (2, 2));
    // Each row in its own day's partition.
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT tableoid::regclass::text, to_char(at AT TIME ZONE 'UTC', 'YYYYMMDD') \
         FROM executions WHERE function = 'days' ORDER BY at",
    )
    .fetch_all(app.db())
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    for (partition, day) in &rows {
        assert_eq!(partition, &format!("executions_p{day}"));
    }
    assert_ne!(rows[0].1, rows[1].1);
}

#[tokio::test]
async fn a_partition_dropped_behind_the_cache_is_made_again() {
    let app = app().await;
    let batch = |id: &str| ExecutionBatch {
        node: "node-d".into(),
        batch: id.into(),
        records: (0..10).map(|i| record(i, "gone", 4)).collect(),
    };
    let (status, _) = app.ingest(&batch("gone-1")).await;
    assert_eq!(status, StatusCode::OK);
    // Today's partition goes behind the control plane's back (it remembers
    // it exists).
    let (partition,): (String,) = sqlx::query_as(
        "SELECT tableoid::regclass::text FROM executions WHERE function = 'gone' LIMIT 1",
    )
    .fetch_one(app.db())
    .await
    .unwrap();
    sqlx::query(&format!("DROP TABLE {partition}"))
        .execute(app.db())
        .await
        .unwrap();
    let (status, body) = app.ingest(&batch("gone-2")).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let r: IngestResult = serde_json::from_slice(&body).unwrap();
    assert_eq!((r.stored, r.duplicate), (10, false));
    assert_eq!(count(app.db(), "gone").await, 10);
}
