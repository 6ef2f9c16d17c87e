//! Handler tests: the real router (`Router::oneshot`, no socket) against a
//! fresh PostgreSQL database per test, and real image builds through Podman.
//!
//! Database: `CPUB_TEST_DATABASE_URL` (default: `scripts/pg.sh url`, the
//! local test cluster); each test creates `cpub_test_<random>` and drops it,
//! also when the test fails.
//!
//! Podman: only the tests named `*_with_podman` use it (the API socket at
//! `CPUB_PODMAN_SOCKET`, default `/run/podman/podman.sock`); without it they
//! fail, saying so, and never pass untested. The others build nothing and run
//! without Podman: `cargo test -p containerpub-control --test api -- --skip
//! with_podman`.
//!
//! Over 600 lines: handler tests sharing one router and
//! database set-up (a fresh database each) and its request helpers.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use containerpub_control::{auth, db};
use containerpub_wire::api::{
    ApiError, DeploymentInfo, DeploymentStatus, FunctionInfo, LoginResponse, RouteTable,
};
use http_body_util::BodyExt;
use sqlx::PgPool;
use tower::ServiceExt;

mod support;

use support::*;

struct Reply {
    status: StatusCode,
    body: Vec<u8>,
}

impl Reply {
    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn error(&self) -> ApiError {
        self.json()
    }
}

impl TestApp {
    /// The route table as proxies get it.
    async fn route_table(&self) -> RouteTable {
        db::route_table(&self.state.db, &self.state.vault)
            .await
            .unwrap()
    }

    /// Sends `request` (with a `Host` header, as an HTTP/1.1 client would).
    async fn send(&self, mut request: Request<Body>) -> Reply {
        if !request.headers().contains_key(header::HOST) {
            request
                .headers_mut()
                .insert(header::HOST, "control.test".parse().unwrap());
        }
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Reply { status, body }
    }

    async fn get(&self, uri: &str) -> Reply {
        self.send(authed(Request::get(uri)).body(Body::empty()).unwrap())
            .await
    }

    async fn deploy(&self, name: &str, bundle: Vec<u8>) -> Reply {
        let request = authed(Request::post(format!(
            "/api/v1/functions/{name}/deployments"
        )))
        .header(header::CONTENT_LENGTH, bundle.len())
        .header(header::CONTENT_TYPE, "application/gzip")
        .body(Body::from(bundle))
        .unwrap();
        self.send(request).await
    }

    async fn delete_function(&self, name: &str) -> Reply {
        self.send(
            authed(Request::delete(format!("/api/v1/functions/{name}")))
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }
}

fn authed(builder: axum::http::request::Builder) -> axum::http::request::Builder {
    builder.header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
}

/// An authenticated `method` request to `uri` with a JSON `body`.
fn json_request(method: &str, uri: &str, body: impl Into<Body>) -> Request<Body> {
    authed(Request::builder().method(method).uri(uri))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

/// The id of the first user (the bootstrap admin).
async fn first_user(db: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT id FROM users LIMIT 1")
        .fetch_one(db)
        .await
        .unwrap()
}

/// Inserts function `name` of `owner` (no active deployment); its id.
async fn insert_function(db: &PgPool, name: &str, owner: i64, last_version: i32) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO functions (name, owner_id, last_version) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(name)
    .bind(owner)
    .bind(last_version)
    .fetch_one(db)
    .await
    .unwrap()
}

/// Inserts a deployment row of `function` (no artifact, no build); its id.
async fn insert_deployment(
    db: &PgPool,
    function: i64,
    version: i32,
    config: &serde_json::Value,
    status: &str,
    image: Option<&str>,
) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO deployments (function_id, version, digest, artifact, config, status, image) \
         VALUES ($1, $2, 'sha256:00', '/nowhere', $3, $4, $5) RETURNING id",
    )
    .bind(function)
    .bind(version)
    .bind(config)
    .bind(status)
    .bind(image)
    .fetch_one(db)
    .await
    .unwrap()
}

/// Function `name` of the first user with an active version 1 (image
/// `img`), as if deployed: in the route table. Its id.
async fn insert_active_function(db: &PgPool, name: &str) -> i64 {
    let owner = first_user(db).await;
    let function = insert_function(db, name, owner, 1).await;
    let config = serde_json::json!({"name": name, "runtime": "container"});
    let deployment = insert_deployment(db, function, 1, &config, "active", Some("img")).await;
    sqlx::query("UPDATE functions SET active_deployment_id = $1, config = $2 WHERE id = $3")
        .bind(deployment)
        .bind(&config)
        .bind(function)
        .execute(db)
        .await
        .unwrap();
    function
}

/// A `.tar.gz` from (path, contents); paths are written raw so unsafe ones
/// (which `tar::Builder` refuses) can be tested.
fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn container_toml(name: &str) -> String {
    format!("name = \"{name}\"\nruntime = \"container\"\nvisibility = \"public\"\n")
}

#[tokio::test]
async fn every_migration_applies_to_a_fresh_database() {
    let db = TestDb::create().await;
    db::migrate(&db.pool).await.expect("migrations apply");
    db::migrate(&db.pool)
        .await
        .expect("applying again is a no-op");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, db::MIGRATOR.iter().count());
    for table in [
        "users",
        "api_tokens",
        "functions",
        "deployments",
        "route_revision",
    ] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert!(exists, "table {table} missing");
    }
    assert_eq!(db::current_revision(&db.pool).await.unwrap(), 0);
}

#[tokio::test]
async fn bootstrap_creates_admin_once_and_adds_a_fixed_token_later() {
    let db = TestDb::create().await;
    db::migrate(&db.pool).await.unwrap();
    let first = auth::bootstrap(&db.pool, None, None).await.unwrap();
    let password = first
        .admin_password
        .expect("random password printed on first start");
    let token = first.token.expect("random token printed on first start");
    assert!(token.starts_with("cpub_"));
    assert!(
        auth::check_login(&db.pool, "admin", &password)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        auth::caller_for_token(&db.pool, &token)
            .await
            .unwrap()
            .is_some()
    );
    // Later start with a fixed token: stored once, nothing printed.
    let again = auth::bootstrap(&db.pool, None, Some(TOKEN)).await.unwrap();
    assert!(again.admin_password.is_none() && again.token.is_none());
    auth::bootstrap(&db.pool, None, Some(TOKEN)).await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM api_tokens WHERE token_hash = $1")
        .bind(auth::token_hash(TOKEN))
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(users, 1);
    // Only hashes are stored.
    let plain: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_tokens WHERE token_hash = $1 OR token_hash = $2",
    )
    .bind(TOKEN)
    .bind(&token)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(plain, 0);
}

#[tokio::test]
async fn login_gives_a_working_token_and_wrong_credentials_get_401() {
    let app = app().await;
    let login = |body: String| {
        Request::post("/api/v1/auth/login")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap()
    };

    let ok = app
        .send(login(format!(
            r#"{{"username":"admin","password":"{PASSWORD}"}}"#
        )))
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let LoginResponse {
        token, username, ..
    } = ok.json();
    assert_eq!(username, "admin");
    let request = Request::get("/api/v1/functions")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let listed = app.send(request).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert!(listed.json::<Vec<FunctionInfo>>().is_empty());

    let wrong = app
        .send(login(r#"{"username":"admin","password":"nope"}"#.into()))
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let unknown = app
        .send(login(format!(
            r#"{{"username":"root","password":"{PASSWORD}"}}"#
        )))
        .await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        wrong.error().error,
        unknown.error().error,
        "same message for both"
    );

    let malformed = app.send(login(r#"{"user":"admin"}"#.into())).await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.error().field.as_deref(), Some("body"));
}

#[tokio::test]
async fn api_routes_need_a_valid_bearer_token() {
    let app = app().await;
    let no_header = app
        .send(
            Request::get("/api/v1/functions")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(no_header.status, StatusCode::UNAUTHORIZED);
    assert!(no_header.error().error.contains("Authorization"));
    for value in ["Bearer cpub_0000", "Basic YWRtaW46eA==", "Bearer "] {
        let request = Request::get("/api/v1/routes")
            .header(header::AUTHORIZATION, value)
            .body(Body::empty())
            .unwrap();
        let reply = app.send(request).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{value}");
        let _: ApiError = reply.json();
    }
    let deploy = app
        .send(
            Request::post("/api/v1/functions/hello/deployments")
                .body(Body::from(vec![1u8; 10]))
                .unwrap(),
        )
        .await;
    assert_eq!(deploy.status, StatusCode::UNAUTHORIZED);
    let health = app
        .send(Request::get("/healthz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(health.status, StatusCode::OK);
}

#[tokio::test]
async fn bad_bundles_get_400_naming_the_field() {
    let app = app().await;
    let bad_manifest = tar_gz(&[
        (
            "cpub.toml",
            b"name = \"hello\"\nruntime = \"container\"\n[scaling]\nconcurrency = 0\n",
        ),
        ("Containerfile", b"FROM scratch\n"),
    ]);
    let reply = app.deploy("hello", bad_manifest).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error().field.as_deref(), Some("scaling.concurrency"));

    let unknown_key = tar_gz(&[(
        "cpub.toml",
        b"name = \"hello\"\nruntime = \"container\"\ncolour = 1\n",
    )]);
    let reply = app.deploy("hello", unknown_key).await;
    assert_eq!(reply.error().field.as_deref(), Some("colour"));

    // Type, range and unknown-key errors name the key with its table.
    for (extra, field) in [
        ("[env]\nX = 5\n", "env.X"),
        ("[resources]\nmemory_mbb = 64\n", "resources.memory_mbb"),
        ("port = 70000\n", "port"),
    ] {
        let toml = format!("{}{extra}", container_toml("hello"));
        let bundle = tar_gz(&[
            ("cpub.toml", toml.as_bytes()),
            ("Containerfile", b"FROM scratch\n"),
        ]);
        let reply = app.deploy("hello", bundle).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{extra}");
        let err = reply.error();
        assert_eq!(err.field.as_deref(), Some(field), "{extra}: {}", err.error);
        assert!(
            err.error.contains(&format!("cpub.toml: {field}: ")),
            "{extra}: {}",
            err.error
        );
    }

    let traversal = tar_gz(&[
        ("cpub.toml", container_toml("hello").as_bytes()),
        ("../evil", b"x"),
    ]);
    let reply = app.deploy("hello", traversal).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let err = reply.error();
    assert_eq!(err.field.as_deref(), Some("../evil"));
    assert!(err.error.contains(".."), "{}", err.error);

    let other_name = tar_gz(&[
        ("cpub.toml", container_toml("other").as_bytes()),
        ("Containerfile", b"FROM scratch\n"),
    ]);
    let reply = app.deploy("hello", other_name).await;
    assert_eq!(
        (reply.status, reply.error().field.as_deref()),
        (StatusCode::BAD_REQUEST, Some("name"))
    );

    let reply = app.deploy("Bad_Name", tar_gz(&[])).await;
    assert_eq!(
        (reply.status, reply.error().field.as_deref()),
        (StatusCode::BAD_REQUEST, Some("name"))
    );

    let reply = app.deploy("hello", b"plain text, not gzip".to_vec()).await;
    assert_eq!(
        (reply.status, reply.error().field.as_deref()),
        (StatusCode::BAD_REQUEST, Some("bundle"))
    );

    // Nothing was recorded, and no temp file was left behind.
    assert!(
        app.get("/api/v1/functions")
            .await
            .json::<Vec<FunctionInfo>>()
            .is_empty()
    );
    let leftovers = std::fs::read_dir(app.state.settings.tmp_dir())
        .unwrap()
        .count();
    assert_eq!(
        leftovers,
        0,
        "temp files left in {}",
        app.state.settings.tmp_dir().display()
    );
    let stored = std::fs::read_dir(app.state.settings.artifacts_dir())
        .unwrap()
        .count();
    assert_eq!(stored, 0, "rejected bundles must not be stored");
}

#[tokio::test]
async fn oversized_uploads_get_413() {
    let app = app_with(1000).await;
    let big = vec![0u8; 5000];
    // Declared too large: refused before reading.
    let reply = app.deploy("hello", big.clone()).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let err = reply.error();
    assert_eq!(err.field.as_deref(), Some("Content-Length"));
    assert!(err.error.contains("1000"), "{}", err.error);
    // Streamed without a length: counted.
    let chunks = futures_util::stream::iter(
        (0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; 500]))),
    );
    let request = authed(Request::post("/api/v1/functions/hello/deployments"))
        .body(Body::from_stream(chunks))
        .unwrap();
    let reply = app.send(request).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error().field.as_deref(), Some("body"));
    assert_eq!(
        std::fs::read_dir(app.state.settings.tmp_dir())
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn unknown_functions_get_404() {
    let app = app().await;
    let reply = app.get("/api/v1/functions/nope").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.error().error.contains("nope"));
    let reply = app.get("/api/v1/functions/nope/deployments").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = app
        .send(
            authed(Request::delete("/api/v1/functions/nope"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = app.get("/api/v1/nothing-here").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let _: ApiError = reply.json();
}

#[tokio::test]
async fn routes_long_poll() {
    let app = app().await;
    // Behind: answered at once.
    let started = Instant::now();
    let reply = app.get("/api/v1/routes?since=-1&wait_s=30").await;
    assert_eq!(reply.status, StatusCode::OK);
    let table: RouteTable = reply.json();
    assert_eq!(table.revision, 0);
    assert!(table.routes.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Up to date: waits for wait_s.
    let started = Instant::now();
    let reply = app.get("/api/v1/routes?since=0&wait_s=1").await;
    assert_eq!(reply.json::<RouteTable>().revision, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // Up to date, then a change: woken by NOTIFY, long before wait_s.
    let router = app.router.clone();
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let request = authed(Request::get("/api/v1/routes?since=0&wait_s=30"))
            .header(header::HOST, "control.test")
            .body(Body::empty())
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            started.elapsed(),
            serde_json::from_slice::<RouteTable>(&body).unwrap(),
        )
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tx = app.db.pool.begin().await.unwrap();
    assert_eq!(db::bump_revision(&mut tx).await.unwrap(), 1);
    tx.commit().await.unwrap();
    let (elapsed, table) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(table.revision, 1);
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");

    let reply = app.get("/api/v1/routes?since=abc").await;
    assert_eq!(
        (reply.status, reply.error().field.as_deref()),
        (StatusCode::BAD_REQUEST, Some("since"))
    );
}

/// The route table carries every function's secrets: a node credential
/// revoked or replaced while its long poll waits gets a 401 when the poll
/// ends, not the table (before, a rotation of the secrets after the
/// revocation woke the poll and handed it the new values).
#[tokio::test]
async fn a_credential_revoked_while_its_poll_waits_gets_no_table() {
    let app = app().await;
    for replace in [false, true] {
        let created = app
            .send(
                authed(Request::post(
                    "/api/v1/nodes/edge-1/credential?replace=true",
                ))
                .body(Body::empty())
                .unwrap(),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED);
        let node_token = created.json::<serde_json::Value>()["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let since = app.route_table().await.revision;
        let poll = |token: String| {
            let router = app.router.clone();
            async move {
                let request = Request::get(format!(
                    "/api/v1/routes?since={since}&wait_s=30&node=edge-1"
                ))
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(header::HOST, "control.test")
                .body(Body::empty())
                .unwrap();
                router.oneshot(request).await.unwrap().status()
            }
        };
        let waiting = tokio::spawn(poll(node_token.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "the poll waits for a change");
        let gone = if replace {
            Request::post("/api/v1/nodes/edge-1/credential?replace=true")
        } else {
            Request::delete("/api/v1/nodes/edge-1")
        };
        let reply = app.send(authed(gone).body(Body::empty()).unwrap()).await;
        assert!(reply.status.is_success(), "{}", reply.status);
        // The rotation that followed: the poll wakes.
        let mut tx = app.db.pool.begin().await.unwrap();
        db::bump_revision(&mut tx).await.unwrap();
        tx.commit().await.unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "replace={replace}");
        // And a new poll with the old credential is refused at once.
        assert_eq!(poll(node_token).await, StatusCode::UNAUTHORIZED);
    }
}

/// A token of the admin's, made for a test to revoke: the token and its id.
async fn revocable_token(app: &TestApp) -> (String, i64) {
    let created = app
        .send(json_request(
            "POST",
            "/api/v1/tokens",
            r#"{"name":"follower"}"#,
        ))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let created: containerpub_wire::access::CreatedToken = created.json();
    (created.token, created.info.id)
}

async fn revoke_token(app: &TestApp, id: i64) {
    let reply = app
        .send(json_request("DELETE", &format!("/api/v1/tokens/{id}"), ""))
        .await;
    assert!(reply.status.is_success(), "{}", reply.status);
}

/// A `GET uri` with `token`, run on its own: its status and whole body.
fn spawn_get(
    app: &TestApp,
    uri: String,
    token: String,
) -> tokio::task::JoinHandle<(StatusCode, String)> {
    let router = app.router.clone();
    tokio::spawn(async move {
        let request = bearer("GET", &uri, &token, "");
        let mut request = request;
        request
            .headers_mut()
            .insert(header::HOST, "control.test".parse().unwrap());
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    })
}

/// A log follower's token revoked while its poll waits gets a 401, not the
/// lines stored since. (Old code answered them: a revoked token read up to
/// 30 s more of a function's output.)
#[tokio::test]
async fn a_token_revoked_while_its_log_poll_waits_gets_no_lines() {
    let app = app().await;
    let db = &app.state.db;
    let function = insert_function(db, "quiet", first_user(db).await, 1).await;
    let deployment =
        insert_deployment(db, function, 1, &serde_json::json!({}), "failed", None).await;
    let (token, id) = revocable_token(&app).await;
    let waiting = spawn_get(
        &app,
        "/api/v1/functions/quiet/logs?after=0&wait_s=30".into(),
        token.clone(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the poll waits for a line");
    revoke_token(&app, id).await;
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let batch = serde_json::json!({"node": "edge-1", "groups": [{
        "function": "quiet", "deployment_id": deployment, "instance": "ab",
        "lines": [{"at_ns": now_ns, "stream": "stdout", "line": "printed after the revocation"}]
    }]});
    let reply = app
        .send(json_request("POST", "/api/v1/logs", batch.to_string()))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(!body.contains("printed after"), "{body}");
    // The same poll with a valid token gets the line.
    let page = app
        .get("/api/v1/functions/quiet/logs?after=0&wait_s=1")
        .await;
    assert!(String::from_utf8_lossy(&page.body).contains("printed after the revocation"));
}

/// A follower of a build running elsewhere whose token is revoked while it
/// waits does not get the log once the build ends: the stream ends with a
/// line saying why. (Old code sent the stored log.)
#[tokio::test]
async fn a_token_revoked_while_it_follows_a_build_gets_no_log() {
    let app = app().await;
    let db = &app.state.db;
    let function = insert_function(db, "slowbuild", first_user(db).await, 1).await;
    let build = insert_deployment(db, function, 1, &serde_json::json!({}), "building", None).await;
    let (token, id) = revocable_token(&app).await;
    let following = spawn_get(
        &app,
        format!("/api/v1/builds/{build}/log?follow=true"),
        token,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!following.is_finished(), "the follower waits for the build");
    revoke_token(&app, id).await;
    sqlx::query(
        "UPDATE deployments SET status = 'failed', build_log = 'the build printed a secret' \
         WHERE id = $1",
    )
    .bind(build)
    .execute(db)
    .await
    .unwrap();
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), following)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK, "the stream had begun");
    assert!(!body.contains("secret"), "{body}");
    assert!(
        body.contains("[follow ended: invalid or revoked API token]"),
        "{body}"
    );
}

#[tokio::test]
async fn concurrent_deploys_get_distinct_versions() {
    let app = app().await;
    let manifest = containerpub_wire::Manifest::parse(&container_toml("race")).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let pool = app.db.pool.clone();
        let manifest = manifest.clone();
        tasks.push(tokio::spawn(async move {
            db::create_deployment(&pool, "race", 1, false, &manifest, "sha256:00", "/x")
                .await
                .unwrap()
                .expect("the function's owner deploys")
                .version
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort();
    assert_eq!(versions, (1..=8).collect::<Vec<_>>());
}

/// Builds real images (needs Podman: fails without it).
#[tokio::test]
async fn deploy_build_fail_and_delete_with_podman() {
    let podman = require_podman().await;
    let app = app().await;
    let name = format!("t{}", random_hex(4));
    let bundle = tar_gz(&[
        ("cpub.toml", container_toml(&name).as_bytes()),
        (
            "Containerfile",
            b"FROM scratch\nCOPY hello.txt /hello.txt\n",
        ),
        ("hello.txt", b"hello\n"),
    ]);
    let reply = app.deploy(&name, bundle.clone()).await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let v1: DeploymentInfo = reply.json();
    assert_eq!((v1.version, v1.status), (1, DeploymentStatus::Active));
    let image = v1.image.clone().unwrap();
    let token: String = sqlx::query_scalar("SELECT token FROM image_token")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert!(
        token.len() == 12 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{token}"
    );
    let tag = |version: i32, id: i64| format!("localhost/cpub-fn-{name}:v{version}-d{id}-{token}");
    assert_eq!(image, tag(1, v1.id));
    assert!(podman.image_exists(&image).await.unwrap());
    let digest = v1.digest.strip_prefix("sha256:").unwrap();
    assert!(
        app.state
            .settings
            .artifacts_dir()
            .join(format!("{digest}.tar.gz"))
            .is_file()
    );

    // A failing build: 422 with the log; v1 stays active.
    let broken = tar_gz(&[
        ("cpub.toml", container_toml(&name).as_bytes()),
        ("Containerfile", b"FROM scratch\nCOPY missing.txt /x\n"),
    ]);
    let reply = app.deploy(&name, broken).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let v2: DeploymentInfo = reply.json();
    assert_eq!((v2.version, v2.status), (2, DeploymentStatus::Failed));
    assert!(v2.build_log.contains("missing.txt"), "{}", v2.build_log);

    // A static-binary bundle (an ELF header is enough to build the image).
    let elf = fake_static_elf();
    let binary_toml =
        format!("name = \"{name}\"\nruntime = \"binary\"\nentrypoint = \"bin/fn\"\nport = 9090\n");
    let reply = app
        .deploy(
            &name,
            tar_gz(&[("cpub.toml", binary_toml.as_bytes()), ("bin/fn", &elf)]),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let v3: DeploymentInfo = reply.json();
    assert_eq!((v3.version, v3.status), (3, DeploymentStatus::Active));

    let function: FunctionInfo = app.get(&format!("/api/v1/functions/{name}")).await.json();
    assert_eq!(function.active_version, Some(3));
    assert_eq!(function.url, format!("http://proxy.test/fn/{name}/"));
    assert_eq!(function.config.unwrap().port, 9090);
    let history: Vec<DeploymentInfo> = app
        .get(&format!("/api/v1/functions/{name}/deployments"))
        .await
        .json();
    let statuses: Vec<_> = history.iter().map(|d| (d.version, d.status)).collect();
    assert_eq!(
        statuses,
        [
            (3, DeploymentStatus::Active),
            (2, DeploymentStatus::Failed),
            (1, DeploymentStatus::Superseded)
        ]
    );
    let table: RouteTable = app.get("/api/v1/routes?since=0").await.json();
    assert_eq!(table.revision, 2, "two activations");
    assert_eq!(table.routes.len(), 1);
    assert_eq!(
        (table.routes[0].version, table.routes[0].image.as_str()),
        (3, tag(3, v3.id).as_str())
    );

    // Retention beyond one version: v1 stays (the rollback target), v2
    // goes, and with it, by the name its build gave it, the image a build
    // that failed after making it would have left (its row names none).
    let pruned =
        containerpub_control::history::prune_rows(&app.state.db, &app.state.images, &name, 1)
            .await
            .unwrap();
    assert_eq!(pruned.versions, [2]);
    assert_eq!(pruned.images, [tag(2, v2.id)]);

    let reply = app.delete_function(&name).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert!(
        !podman.image_exists(&image).await.unwrap(),
        "v1 image removed"
    );
    assert!(
        !podman.image_exists(&tag(3, v3.id)).await.unwrap(),
        "v3 image removed"
    );
    assert_eq!(
        app.get(&format!("/api/v1/functions/{name}")).await.status,
        StatusCode::NOT_FOUND
    );
    let table: RouteTable = app.get("/api/v1/routes?since=0").await.json();
    assert_eq!((table.revision, table.routes.len()), (3, 0));
    assert_eq!(
        std::fs::read_dir(app.state.settings.tmp_dir())
            .unwrap()
            .count(),
        0
    );

    // Made again, the function starts at version 1 again, under an image
    // name of its own: a removal of the first v1's image still waiting
    // for the build store (or a late build of the deleted function) never
    // names the new one.
    let reply = app.deploy(&name, bundle).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let again: DeploymentInfo = reply.json();
    assert_eq!((again.version, again.status), (1, DeploymentStatus::Active));
    let image_again = again.image.clone().unwrap();
    assert_ne!(image_again, image);
    assert!(podman.image_exists(&image_again).await.unwrap());
    let reply = app.delete_function(&name).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert!(!podman.image_exists(&image_again).await.unwrap());
}

/// 64-bit x86-64 ELF header with one PT_LOAD and no PT_INTERP.
fn fake_static_elf() -> Vec<u8> {
    let mut b = vec![0u8; 64 + 56];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2;
    b[5] = 1;
    b[6] = 1;
    b[16..18].copy_from_slice(&2u16.to_le_bytes());
    b[18..20].copy_from_slice(&62u16.to_le_bytes());
    b[32..40].copy_from_slice(&64u64.to_le_bytes());
    b[54..56].copy_from_slice(&56u16.to_le_bytes());
    b[56..58].copy_from_slice(&1u16.to_le_bytes());
    b[64..68].copy_from_slice(&1u32.to_le_bytes());
    b
}

/// Over a real socket: HTTP/1.1 without `Host` (or with two) is a 400;
/// with one `Host`, or HTTP/1.0 without, the request is served.
/// Two control planes with databases of their own, sharing one Podman
/// (versions and deployment ids start at 1 in each): the same function
/// deployed in both is built into two images, each plane's route names its
/// own, and deleting it in one leaves the other's image. Before the tags
/// carried the database's token, the second build took the first one's tag
/// (the first plane's instances then ran the second's code), the first image
/// stayed in the store untagged, and the first plane's delete removed the
/// second's image.
#[tokio::test]
async fn databases_sharing_one_podman_keep_their_images_apart() {
    let podman = require_podman().await;
    let (a, b) = (app().await, app().await);
    let name = format!("t{}", random_hex(4));
    let bundle = |text: &[u8]| {
        tar_gz(&[
            ("cpub.toml", container_toml(&name).as_bytes()),
            (
                "Containerfile",
                b"FROM scratch\nCOPY hello.txt /hello.txt\n",
            ),
            ("hello.txt", text),
        ])
    };
    let mut images = Vec::new();
    for (app, text) in [(&a, b"a\n"), (&b, b"b\n")] {
        let reply = app.deploy(&name, bundle(text)).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let info: DeploymentInfo = reply.json();
        assert_eq!(info.version, 1);
        images.push(info.image.unwrap());
    }
    assert_ne!(images[0], images[1], "one tag for two databases' images");
    let id = |image: &str| {
        let out = std::process::Command::new("podman")
            .arg("--url")
            .arg(format!("unix://{}", podman_socket().display()))
            .args(["image", "inspect", "--format", "{{.Id}}", image])
            .output()
            .expect("podman image inspect");
        assert!(out.status.success(), "{image} is gone");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let (id_a, id_b) = (id(&images[0]), id(&images[1]));
    assert_ne!(id_a, id_b, "both images are in the store, each its own");
    for (app, image) in [(&a, &images[0]), (&b, &images[1])] {
        let table: RouteTable = app.get("/api/v1/routes?since=0").await.json();
        assert_eq!(table.routes[0].image, *image);
    }
    assert_eq!(
        a.delete_function(&name).await.status,
        StatusCode::NO_CONTENT
    );
    assert!(!podman.image_exists(&images[0]).await.unwrap());
    assert_eq!(id(&images[1]), id_b, "the other database's image stays");
    assert_eq!(
        b.delete_function(&name).await.status,
        StatusCode::NO_CONTENT
    );
    assert!(!podman.image_exists(&images[1]).await.unwrap());
}

#[tokio::test]
async fn http11_without_host_is_refused_over_a_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = app().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, app.router.clone()).into_future());
    let exchange = |raw: &'static str| async move {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(raw.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
            .await
            .expect("the server answers and closes")
            .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    };
    let status = |answer: &str| answer.split(' ').nth(1).unwrap_or("").to_owned();

    let answer = exchange("GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status(&answer), "400", "{answer}");
    assert!(answer.contains("\"field\":\"Host\""), "{answer}");
    let answer =
        exchange("GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status(&answer), "400", "{answer}");
    let answer = exchange("GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status(&answer), "200", "{answer}");
    let answer = exchange("GET /healthz HTTP/1.0\r\n\r\n").await;
    assert_eq!(status(&answer), "200", "{answer}");
    server.abort();
}

/// A `.tar.gz` without its gzip trailer, or with a wrong CRC32, is refused
/// before anything is kept: no artifact file, no function, no deployment.
#[tokio::test]
async fn truncated_or_corrupt_gzip_is_refused_and_nothing_is_stored() {
    let app = app().await;
    let good = tar_gz(&[
        ("cpub.toml", container_toml("hello").as_bytes()),
        ("Containerfile", b"FROM scratch\n"),
    ]);
    let mut wrong_crc = good.clone();
    let at = wrong_crc.len() - 8;
    wrong_crc[at] ^= 0xff;
    for (bundle, expect) in [
        (good[..good.len() - 8].to_vec(), "trailer"),
        (wrong_crc, "CRC32"),
    ] {
        let reply = app.deploy("hello", bundle).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        let err = reply.error();
        assert_eq!(err.field.as_deref(), Some("bundle"));
        assert!(err.error.contains(expect), "{}", err.error);
    }
    let artifacts: Vec<_> = std::fs::read_dir(app.state.settings.artifacts_dir())
        .unwrap()
        .collect();
    assert!(artifacts.is_empty(), "{artifacts:?}");
    let tmp: Vec<_> = std::fs::read_dir(app.state.settings.tmp_dir())
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
    let (deployments,): (i64,) = sqlx::query_as("SELECT count(*) FROM deployments")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    let (functions,): (i64,) = sqlx::query_as("SELECT count(*) FROM functions")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!((deployments, functions), (0, 0));
}

#[tokio::test]
async fn crash_reports_are_checked_stored_per_node_and_listed() {
    let app = app().await;
    let db = &app.state.db;
    let owner = first_user(db).await;
    let mut deployment_of = std::collections::HashMap::new();
    for name in ["crashy", "other"] {
        let function = insert_function(db, name, owner, 1).await;
        let deployment =
            insert_deployment(db, function, 1, &serde_json::json!({}), "failed", None).await;
        deployment_of.insert(name, deployment);
    }
    let post = |name: &str, body: serde_json::Value| {
        json_request(
            "POST",
            &format!("/api/v1/functions/{name}/crashes"),
            body.to_string(),
        )
    };
    let report = |node: &str, deployment: i64, count: u32, output: &str| {
        serde_json::json!({
            "node": node, "deployment_id": deployment, "exit_code": 3,
            "output": output, "during_start": true, "count": count,
        })
    };
    let crashy = deployment_of["crashy"];
    for (node, count, output) in [
        ("edge-1", 1, "old"),
        ("edge-1", 2, "boom\0\u{1b}[31m\n"),
        ("edge-2", 1, "x"),
    ] {
        let reply = app
            .send(post("crashy", report(node, crashy, count, output)))
            .await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{:?}", reply.error());
    }
    let crashes: Vec<containerpub_wire::api::CrashInfo> =
        app.get("/api/v1/functions/crashy/crashes").await.json();
    assert_eq!(crashes.len(), 2, "one row per node: {crashes:?}");
    let edge1 = crashes.iter().find(|c| c.node == "edge-1").unwrap();
    assert_eq!(edge1.crashes, 3, "counts add up");
    assert_eq!(edge1.exit_code, Some(3));
    assert_eq!(edge1.version, 1);
    assert_eq!(
        edge1.output, "boom\u{fffd}\u{fffd}[31m\n",
        "latest output, no NUL or escape"
    );

    // Bad reports name what is wrong; nothing is stored for them.
    let cases = [
        (
            "crashy",
            report("", crashy, 1, ""),
            StatusCode::BAD_REQUEST,
            Some("node"),
        ),
        (
            "crashy",
            report("a\nb", crashy, 1, ""),
            StatusCode::BAD_REQUEST,
            Some("node"),
        ),
        (
            "crashy",
            report("n", crashy, 0, ""),
            StatusCode::BAD_REQUEST,
            Some("count"),
        ),
        (
            "crashy",
            report("n", deployment_of["other"], 1, ""),
            StatusCode::BAD_REQUEST,
            Some("deployment_id"),
        ),
        (
            "crashy",
            serde_json::json!({"node": "n"}),
            StatusCode::BAD_REQUEST,
            Some("body"),
        ),
        (
            "nope",
            report("n", crashy, 1, ""),
            StatusCode::NOT_FOUND,
            None,
        ),
    ];
    for (name, body, status, field) in cases {
        let reply = app.send(post(name, body.clone())).await;
        assert_eq!(reply.status, status, "{body}: {:?}", reply.error());
        assert_eq!(reply.error().field.as_deref(), field, "{body}");
    }
    let unauthenticated = Request::post("/api/v1/functions/crashy/crashes")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(report("n", crashy, 1, "").to_string()))
        .unwrap();
    assert_eq!(
        app.send(unauthenticated).await.status,
        StatusCode::UNAUTHORIZED
    );
    let crashes: Vec<containerpub_wire::api::CrashInfo> =
        app.get("/api/v1/functions/crashy/crashes").await.json();
    assert_eq!(crashes.len(), 2);
    assert_eq!(
        app.get("/api/v1/functions/nope/crashes").await.status,
        StatusCode::NOT_FOUND
    );

    // The rows go with their function.
    sqlx::query("DELETE FROM functions WHERE name = 'crashy'")
        .execute(db)
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM function_crashes")
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// Issue 10: invocation keys (shown once, stored hashed, digests in the
/// route table, gone once revoked) and secrets (sealed at rest, names only
/// in answers, opened in the route table), each change bumping the route
/// revision; bad input named.
#[tokio::test]
async fn keys_and_secrets_reach_the_route_table_and_nothing_else() {
    use containerpub_wire::private::{KeyCreated, KeyInfo, SecretInfo};
    let app = app().await;
    let db = &app.state.db;
    insert_active_function(db, "priv").await;
    let before = app.route_table().await.revision;

    // Keys: shown once, stored as a digest only, in the table until revoked.
    let reply = app
        .send(json_request(
            "POST",
            "/api/v1/functions/priv/keys",
            r#"{"label":"ci"}"#,
        ))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.error());
    let created: KeyCreated = reply.json();
    assert!(containerpub_wire::private::is_key_shaped(&created.key));
    assert!(created.key.starts_with(&created.info.prefix));
    let stored: Vec<String> = sqlx::query_scalar("SELECT key_hash FROM function_keys")
        .fetch_all(db)
        .await
        .unwrap();
    let digest = containerpub_control::access::key_digest(&created.key);
    assert_eq!(stored, [hex::encode(digest)], "only the hash is stored");
    let t = app.route_table().await;
    assert!(t.revision > before, "a key change bumps the revision");
    assert_eq!(t.routes[0].keys.len(), 1);
    assert_eq!(t.routes[0].keys[0].0, digest);
    let listed: Vec<KeyInfo> = app.get("/api/v1/functions/priv/keys").await.json();
    assert_eq!(listed, std::slice::from_ref(&created.info));
    assert!(
        !app.get("/api/v1/functions/priv/keys")
            .await
            .body
            .windows(20)
            .any(|w| created.key.as_bytes().windows(20).any(|k| k == w))
    );
    let revoke = format!("/api/v1/functions/priv/keys/{}", created.info.id);
    assert_eq!(
        app.send(json_request("DELETE", &revoke, "")).await.status,
        StatusCode::NO_CONTENT
    );
    assert!(
        app.route_table().await.routes[0].keys.is_empty(),
        "revoked keys leave the table"
    );
    assert_eq!(
        app.send(json_request("DELETE", &revoke, "")).await.status,
        StatusCode::NOT_FOUND
    );
    for (uri, body, status, field) in [
        ("/api/v1/functions/priv/keys/abc", "", "DELETE", "id"),
        (
            "/api/v1/functions/priv/keys",
            r#"{"label":"a\nb"}"#,
            "POST",
            "label",
        ),
        (
            "/api/v1/functions/priv/keys",
            r#"{"nope":1}"#,
            "POST",
            "body",
        ),
    ] {
        let reply = app.send(json_request(status, uri, body)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{uri} {body}");
        assert_eq!(reply.error().field.as_deref(), Some(field), "{uri} {body}");
    }
    let reply = app
        .send(json_request("POST", "/api/v1/functions/ghost/keys", ""))
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    // Secrets: sealed at rest, names only in answers, opened in the table.
    let reply = app
        .send(json_request(
            "PUT",
            "/api/v1/functions/priv/secrets/DB_PASSWORD",
            r#"{"value":"hunter2-secret"}"#,
        ))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{:?}", reply.error());
    let raw: Vec<Vec<u8>> = sqlx::query_scalar("SELECT ciphertext FROM function_secrets")
        .fetch_all(db)
        .await
        .unwrap();
    assert!(
        !raw[0].windows(7).any(|w| w == b"hunter2"),
        "sealed at rest"
    );
    let names: Vec<SecretInfo> = app.get("/api/v1/functions/priv/secrets").await.json();
    assert_eq!(
        names.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["DB_PASSWORD"]
    );
    for uri in [
        "/api/v1/functions/priv/secrets",
        "/api/v1/functions/priv",
        "/api/v1/functions",
    ] {
        let body = app.get(uri).await.body;
        assert!(
            !String::from_utf8_lossy(&body).contains("hunter2"),
            "{uri} shows a value"
        );
    }
    let t = app.route_table().await;
    assert_eq!(t.routes[0].secrets.len(), 1);
    assert_eq!(t.routes[0].secrets[0].value.0, "hunter2-secret");
    for (key, body, field) in [
        ("lower", r#"{"value":"x"}"#, "key"),
        ("PORT", r#"{"value":"x"}"#, "key"),
        ("OK", r#"{"value":"a\u0000b"}"#, "value"),
        ("OK", "hunter2", "body"),
    ] {
        let reply = app
            .send(json_request(
                "PUT",
                &format!("/api/v1/functions/priv/secrets/{key}"),
                body,
            ))
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{key} {body}");
        assert_eq!(reply.error().field.as_deref(), Some(field), "{key} {body}");
        assert!(!String::from_utf8_lossy(&reply.body).contains("hunter2"));
    }
    let unset = "/api/v1/functions/priv/secrets/DB_PASSWORD";
    assert_eq!(
        app.send(json_request("DELETE", unset, "")).await.status,
        StatusCode::NO_CONTENT
    );
    assert!(app.route_table().await.routes[0].secrets.is_empty());
    assert_eq!(
        app.send(json_request("DELETE", unset, "")).await.status,
        StatusCode::NOT_FOUND
    );
}

/// A log batch sent again with the same id (its first answer was lost) is
/// stored once; batches without an id (proxies from before it) are stored
/// as they come; a bad id is refused; ids are forgotten by age (issue 11).
#[tokio::test]
async fn a_log_batch_sent_again_is_stored_once() {
    use containerpub_wire::logs::{LogIngest, LogPage};
    let app = app().await;
    let db = &app.state.db;
    let owner = first_user(db).await;
    let function = insert_function(db, "twice", owner, 1).await;
    let deployment =
        insert_deployment(db, function, 1, &serde_json::json!({}), "failed", None).await;
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let body = |batch: Option<&str>, text: &str| {
        let mut b = serde_json::json!({"node": "edge-1", "groups": [
            {"function": "twice", "deployment_id": deployment, "instance": "ab",
             "lines": [{"at_ns": now_ns, "stream": "stdout", "line": text}]}
        ]});
        if let Some(id) = batch {
            b["batch"] = serde_json::json!(id);
        }
        json_request("POST", "/api/v1/logs", b.to_string())
    };
    let first = app.send(body(Some("boot1-1"), "once")).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.error());
    assert_eq!(
        first.json::<LogIngest>(),
        LogIngest {
            stored: 1,
            unknown: 0,
            duplicate: false,
            repeated: 0
        }
    );
    // The same batch again, and at the same time twice more.
    let again = app.send(body(Some("boot1-1"), "once")).await;
    assert_eq!(
        again.json::<LogIngest>(),
        LogIngest {
            stored: 0,
            unknown: 0,
            duplicate: true,
            repeated: 0
        }
    );
    let (a, b) = tokio::join!(
        app.send(body(Some("boot1-2"), "raced")),
        app.send(body(Some("boot1-2"), "raced"))
    );
    let (a, b): (LogIngest, LogIngest) = (a.json(), b.json());
    assert_eq!(a.stored + b.stored, 1, "{a:?} {b:?}");
    assert!(a.duplicate != b.duplicate, "{a:?} {b:?}");
    // Another node may use the same id; old proxies send none.
    let other = serde_json::json!({"node": "edge-2", "batch": "boot1-1", "groups": [
        {"function": "twice", "deployment_id": deployment, "instance": "ab",
         "lines": [{"at_ns": now_ns, "stream": "stdout", "line": "other node"}]}
    ]});
    let other = app
        .send(json_request("POST", "/api/v1/logs", other.to_string()))
        .await;
    assert_eq!(other.json::<LogIngest>().stored, 1);
    for _ in 0..2 {
        let old = app.send(body(None, "no id")).await;
        assert_eq!(old.json::<LogIngest>().stored, 1);
    }
    let page: LogPage = app.get("/api/v1/functions/twice/logs").await.json();
    let texts: Vec<&str> = page.lines.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(texts, ["once", "raced", "other node", "no id", "no id"]);
    // Hostile ids: refused, naming the field, nothing stored.
    let huge = "x".repeat(100_000);
    for bad in ["", "a b", "../x", "é", huge.as_str()] {
        let reply = app.send(body(Some(bad), "bad")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad:.20}");
        assert_eq!(reply.error().field.as_deref(), Some("batch"));
    }
    // Ids are forgotten by age, not before.
    sqlx::query("UPDATE log_batches SET at = now() - interval '2 days' WHERE batch = 'boot1-1'")
        .execute(db)
        .await
        .unwrap();
    let keep = containerpub_control::logs::BATCH_ID_KEEP;
    assert_eq!(
        containerpub_control::logs::prune_batch_ids(db, keep)
            .await
            .unwrap(),
        2,
        "both nodes' boot1-1"
    );
    let (left,): (i64,) = sqlx::query_as("SELECT count(*) FROM log_batches")
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(left, 1, "boot1-2 stays");
}

/// Lines read again from their file (a proxy killed before it saved how
/// far it shipped) are stored once: the control plane keeps, per node,
/// instance, file and stream, where the last line stored ends (migration
/// 0017). The streams interleave: a line held back unfinished on one ends
/// before lines of the other. Lines without a place (older proxies) are
/// all stored; another file, instance or node is its own; hostile places
/// are refused; places are forgotten by age (issue 11).
#[tokio::test]
async fn lines_read_again_from_their_file_are_stored_once() {
    use containerpub_wire::logs::{LogIngest, LogPage};
    let app = app().await;
    let db = &app.state.db;
    let owner = first_user(db).await;
    let function = insert_function(db, "again", owner, 1).await;
    let deployment =
        insert_deployment(db, function, 1, &serde_json::json!({}), "failed", None).await;
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    // Posts one group of lines: (stream, end) each, their text naming the
    // node, instance, file and end.
    let post = |node: &'static str,
                instance: &'static str,
                file: Option<&'static str>,
                lines: Vec<(&'static str, u64)>| {
        let lines: Vec<serde_json::Value> = lines
            .into_iter()
            .map(|(stream, end)| {
                let mut l = serde_json::json!({"at_ns": now_ns + end as i64, "stream": stream,
                                               "line": format!("{node} {instance} {file:?} {stream} {end}")});
                if file.is_some() {
                    l["end"] = serde_json::json!(end);
                }
                l
            })
            .collect();
        let mut group = serde_json::json!({"function": "again", "deployment_id": deployment,
                                           "instance": instance, "lines": lines});
        if let Some(file) = file {
            group["file"] = serde_json::json!(file);
        }
        let body = serde_json::json!({"node": node, "groups": [group]});
        let app = &app;
        async move {
            let reply = app
                .send(json_request("POST", "/api/v1/logs", body.to_string()))
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.error());
            reply.json::<LogIngest>()
        }
    };
    let out = |from: u64, to: u64| (from..=to).map(|n| ("stdout", 10 * n)).collect::<Vec<_>>();
    let stored = |stored: u64, repeated: u64| LogIngest {
        stored,
        unknown: 0,
        duplicate: false,
        repeated,
    };
    assert_eq!(post("n1", "ab", Some("7-1"), out(1, 5)).await, stored(5, 0));
    // A proxy after a kill reads 3..8 again: 6..8 are new.
    assert_eq!(post("n1", "ab", Some("7-1"), out(3, 8)).await, stored(3, 3));
    assert_eq!(post("n1", "ab", Some("7-1"), out(1, 8)).await, stored(0, 8));
    // Another file (the same inode after a rotation), instance or node:
    // lines of their own.
    assert_eq!(post("n1", "ab", Some("7-2"), out(1, 2)).await, stored(2, 0));
    assert_eq!(post("n1", "cd", Some("7-1"), out(1, 2)).await, stored(2, 0));
    assert_eq!(post("n2", "ab", Some("7-1"), out(1, 2)).await, stored(2, 0));
    // Without a place: stored as they come.
    assert_eq!(post("n1", "ab", None, out(1, 2)).await, stored(2, 0));
    assert_eq!(post("n1", "ab", None, out(1, 2)).await, stored(2, 0));
    let page: LogPage = app
        .get("/api/v1/functions/again/logs?limit=100")
        .await
        .json();
    let of_file: Vec<&str> = page
        .lines
        .iter()
        .map(|l| l.line.as_str())
        .filter(|l| l.starts_with("n1 ab Some(\"7-1\")"))
        .collect();
    let expected: Vec<String> = (1..=8)
        .map(|n| format!("n1 ab Some(\"7-1\") stdout {}", 10 * n))
        .collect();
    assert_eq!(of_file, expected, "each line once, in order");
    assert_eq!(page.lines.len(), 8 + 2 + 2 + 2 + 4);
    // The streams interleave: stdout's unfinished line (ending at 100)
    // goes after stderr's finished one (ending at 150), in this batch and
    // in a later one; then both again (a proxy after a kill), and within a
    // batch a line that does not end after its stream's one before.
    let file = Some("9-1");
    assert_eq!(
        post(
            "n3",
            "ef",
            file,
            vec![("stderr", 150), ("stdout", 100), ("stderr", 180)]
        )
        .await,
        stored(3, 0)
    );
    assert_eq!(
        post("n3", "ef", file, vec![("stderr", 200), ("stdout", 120)]).await,
        stored(2, 0)
    );
    assert_eq!(
        post(
            "n3",
            "ef",
            file,
            vec![
                ("stdout", 100),
                ("stderr", 150),
                ("stdout", 120),
                ("stdout", 130)
            ]
        )
        .await,
        stored(1, 3)
    );
    assert_eq!(
        post(
            "n3",
            "ef",
            file,
            vec![
                ("stdout", 140),
                ("stdout", 140),
                ("stdout", 135),
                ("stdout", 150)
            ]
        )
        .await,
        stored(2, 2)
    );
    // Hostile places: refused, naming the field, nothing stored.
    let long = "1".repeat(65);
    for (file, end, field) in [
        (
            serde_json::json!("7 1"),
            serde_json::json!(1),
            "groups[0].file",
        ),
        (
            serde_json::json!(""),
            serde_json::json!(1),
            "groups[0].file",
        ),
        (
            serde_json::json!(long),
            serde_json::json!(1),
            "groups[0].file",
        ),
        (
            serde_json::json!("7-1"),
            serde_json::json!(u64::MAX),
            "groups[0].lines[0].end",
        ),
        (serde_json::json!(7), serde_json::json!(1), "body"),
        (serde_json::json!("7-1"), serde_json::json!(-1), "body"),
    ] {
        let body = serde_json::json!({"node": "n1", "groups": [
            {"function": "again", "deployment_id": deployment, "instance": "ab", "file": file,
             "lines": [{"at_ns": now_ns, "stream": "stdout", "line": "bad", "end": end}]}]});
        let reply = app
            .send(json_request("POST", "/api/v1/logs", body.to_string()))
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply.error().field.as_deref(), Some(field), "{body}");
    }
    let page: LogPage = app
        .get("/api/v1/functions/again/logs?limit=100")
        .await
        .json();
    assert!(page.lines.iter().all(|l| l.line != "bad"));
    // Places are forgotten by age (with the lines' retention), not before.
    sqlx::query("UPDATE log_positions SET at = now() - interval '8 days' WHERE node = 'n2'")
        .execute(db)
        .await
        .unwrap();
    assert_eq!(
        containerpub_control::logs::prune_positions(db, 7)
            .await
            .unwrap(),
        1
    );
    let (left,): (i64,) = sqlx::query_as("SELECT count(*) FROM log_positions")
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(
        left, 5,
        "n1 ab 7-1 and 7-2, n1 cd 7-1, n3 ef 9-1 stdout and stderr"
    );
}

/// `POST /api/v1/logs` checks every line, stores it with its version, and
/// `GET /functions/{name}/logs` filters, pages and long-polls; the byte
/// limit and the age sweep remove the oldest lines (issue 11).
#[tokio::test]
async fn log_batches_are_checked_stored_queried_and_trimmed() {
    use containerpub_wire::logs::{LogIngest, LogPage};
    let app = app().await;
    let db = &app.state.db;
    let owner = first_user(db).await;
    let function = insert_function(db, "talky", owner, 2).await;
    let deployment =
        insert_deployment(db, function, 2, &serde_json::json!({}), "failed", None).await;
    let post = |body: serde_json::Value| json_request("POST", "/api/v1/logs", body.to_string());
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let batch = |function: &str, instance: &str, lines: serde_json::Value| {
        serde_json::json!({"node": "edge-1", "groups": [
            {"function": function, "deployment_id": deployment, "instance": instance, "lines": lines}
        ]})
    };
    // Refused, naming the field.
    for (body, field) in [
        (
            serde_json::json!({"node": "bad node", "groups": []}),
            "node",
        ),
        (
            batch("Bad_Name", "ab", serde_json::json!([])),
            "groups[0].function",
        ),
        (
            batch("talky", "not-hex", serde_json::json!([])),
            "groups[0].instance",
        ),
        (
            batch(
                "talky",
                "ab",
                serde_json::json!([{"at_ns": now_ns, "stream": "stdout", "request_id": "a b", "line": "x"}]),
            ),
            "groups[0].lines[0].request_id",
        ),
    ] {
        let reply = app.send(post(body)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.error().field.as_deref(), Some(field));
    }
    let too_many: Vec<serde_json::Value> = (0..10_001)
        .map(|i| serde_json::json!({"at_ns": now_ns, "stream": "stdout", "line": format!("{i}")}))
        .collect();
    let reply = app
        .send(post(batch("talky", "ab", serde_json::json!(too_many))))
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Stored, cleaned again, with the deployment's version; lines of an
    // unknown function are counted, not stored.
    let lines = serde_json::json!([
        {"at_ns": now_ns, "stream": "stdout", "line": "one"},
        {"at_ns": now_ns + 1, "stream": "stderr", "request_id": "req-1", "line": "two\u{1b}[2J\u{0}"},
        {"at_ns": now_ns + 2, "stream": "system", "line": "3 lines dropped: x"},
    ]);
    let reply = app.send(post(batch("talky", "abcdef012345", lines))).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.error());
    assert_eq!(
        reply.json::<LogIngest>(),
        LogIngest {
            stored: 3,
            unknown: 0,
            duplicate: false,
            repeated: 0
        }
    );
    let reply = app
        .send(post(batch(
            "ghost",
            "ab",
            serde_json::json!([{"at_ns": now_ns, "stream": "stdout", "line": "boo"}]),
        )))
        .await;
    assert_eq!(
        reply.json::<LogIngest>(),
        LogIngest {
            stored: 0,
            unknown: 1,
            duplicate: false,
            repeated: 0
        }
    );
    let page: LogPage = app.get("/api/v1/functions/talky/logs").await.json();
    let texts: Vec<&str> = page.lines.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(
        texts,
        ["one", "two\u{fffd}[2J\u{fffd}", "3 lines dropped: x"]
    );
    assert!(
        page.lines
            .iter()
            .all(|l| l.version == 2 && l.node == "edge-1")
    );
    assert_eq!(page.next, page.lines[2].id);
    let by_id: LogPage = app
        .get("/api/v1/functions/talky/logs?request_id=req-1")
        .await
        .json();
    assert_eq!(by_id.lines.len(), 1);
    let by_instance: LogPage = app
        .get("/api/v1/functions/talky/logs?instance=ABCDEF&limit=2")
        .await
        .json();
    assert!(
        page.lines.iter().all(|l| l.function == "talky"),
        "every line names its function"
    );
    assert_eq!(by_instance.lines.len(), 2, "prefix, any case; newest two");
    assert_eq!(by_instance.lines[1].line, "3 lines dropped: x");
    for (query, field) in [
        ("limit=0", "limit"),
        ("instance=xyz", "instance"),
        ("wait_s=31", "wait_s"),
        ("bogus=1", "bogus"),
    ] {
        let reply = app
            .get(&format!("/api/v1/functions/talky/logs?{query}"))
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(reply.error().field.as_deref(), Some(field), "{query}");
    }
    assert_eq!(
        app.get("/api/v1/functions/nobody/logs").await.status,
        StatusCode::NOT_FOUND
    );
    // A follow waits for the next line and gets it at once.
    let after = page.next;
    let started = Instant::now();
    let follow_uri = format!("/api/v1/functions/talky/logs?after={after}&wait_s=10");
    let (follow, _) = tokio::join!(app.get(&follow_uri), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.send(post(batch(
            "talky",
            "ab",
            serde_json::json!([{"at_ns": now_ns, "stream": "stdout", "line": "late"}]),
        )))
        .await
    });
    let follow: LogPage = follow.json();
    assert_eq!(follow.lines.len(), 1);
    assert_eq!(follow.lines[0].line, "late");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Retention: the byte limit keeps 90 % of it, newest lines first; the
    // age sweep removes old lines; usage follows both.
    let removed = containerpub_control::logs::trim(db, function, 200)
        .await
        .unwrap();
    assert!(removed > 0);
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT line FROM function_log_lines WHERE function_id = $1 ORDER BY id",
    )
    .bind(function)
    .fetch_all(db)
    .await
    .unwrap();
    assert_eq!(
        left,
        ["late"],
        "the oldest chunks (a batch's lines of one instance, whole) go until what is \
         left fits in 180 bytes (line + 64 per line)"
    );
    let usage: i64 =
        sqlx::query_scalar("SELECT bytes FROM function_log_usage WHERE function_id = $1")
            .bind(function)
            .fetch_one(db)
            .await
            .unwrap();
    assert_eq!(usage, 4 + 64);
    // The newest chunk stays, even alone over the limit.
    assert_eq!(
        containerpub_control::logs::trim(db, function, 1)
            .await
            .unwrap(),
        0
    );
    sqlx::query(
        "UPDATE function_log_chunks SET min_at = min_at - interval '8 days', \
         max_at = max_at - interval '8 days', \
         ats = array(SELECT a - interval '8 days' FROM unnest(ats) a)",
    )
    .execute(db)
    .await
    .unwrap();
    assert_eq!(containerpub_control::logs::sweep(db, 7).await.unwrap(), 1);
    let usage: i64 =
        sqlx::query_scalar("SELECT bytes FROM function_log_usage WHERE function_id = $1")
            .bind(function)
            .fetch_one(db)
            .await
            .unwrap();
    assert_eq!(usage, 0);
    // One batch, two groups: one of a deployment the function does not
    // have (counted, not stored); the time kept to the microsecond.
    let reply = app
        .send(post(serde_json::json!({"node": "edge-1", "groups": [
            {"function": "talky", "deployment_id": deployment, "instance": "ab",
             "lines": [{"at_ns": now_ns, "stream": "stdout", "line": "kept"}]},
            {"function": "talky", "deployment_id": deployment + 1000, "instance": "ab",
             "lines": [{"at_ns": now_ns, "stream": "stdout", "line": "lost"}]},
        ]})))
        .await;
    assert_eq!(
        reply.json::<LogIngest>(),
        LogIngest {
            stored: 1,
            unknown: 1,
            duplicate: false,
            repeated: 0
        }
    );
    let (at, line): (chrono::DateTime<chrono::Utc>, String) =
        sqlx::query_as("SELECT at, line FROM function_log_lines WHERE function_id = $1")
            .bind(function)
            .fetch_one(db)
            .await
            .unwrap();
    assert_eq!(line, "kept");
    assert_eq!(at.timestamp_micros(), now_ns.div_euclid(1000));
    // The lines have no foreign key (migrations 0009, 0010): the
    // function's deletion takes them.
    containerpub_control::db::delete_function(db, "talky")
        .await
        .unwrap()
        .expect("deleted");
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM function_log_chunks WHERE function_id = $1")
            .bind(function)
            .fetch_one(db)
            .await
            .unwrap();
    assert_eq!(left, 0);
}

/// Log lines are stored a chunk per batch and instance (migration 0010):
/// queries page across many chunks, in id order, without a gap or a line
/// twice, and a chunk that matches the request id but not the time (on
/// different lines) is passed over without cutting the page short.
#[tokio::test]
async fn log_queries_page_across_chunks() {
    use containerpub_wire::logs::LogPage;
    let app = app().await;
    let db = &app.state.db;
    let owner = first_user(db).await;
    let function = insert_function(db, "chunky", owner, 1).await;
    let deployment =
        insert_deployment(db, function, 1, &serde_json::json!({}), "failed", None).await;
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let hour_ago_ns = now_ns - 3_600 * 1_000_000_000;
    let send = |lines: serde_json::Value| {
        let body = serde_json::json!({"node": "edge-1", "groups": [
            {"function": "chunky", "deployment_id": deployment, "instance": "ab", "lines": lines}
        ]});
        app.send(json_request("POST", "/api/v1/logs", body.to_string()))
    };
    // 80 chunks in which request id "r" is on an hour-old line and a recent
    // line has none; then 100 chunks of three recent lines, "r" on the
    // middle one of every tenth.
    for i in 0..80 {
        let reply = send(serde_json::json!([
            {"at_ns": hour_ago_ns, "stream": "stdout", "request_id": "r", "line": format!("old {i}")},
            {"at_ns": now_ns, "stream": "stdout", "line": format!("new {i}")},
        ]))
        .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let mut recent = Vec::new();
    for i in 0..100 {
        let rid = if i % 10 == 0 { Some("r") } else { None };
        let lines: Vec<serde_json::Value> = (0..3)
            .map(|j| {
                let text = format!("line {i}.{j}");
                recent.push(text.clone());
                let mut line =
                    serde_json::json!({"at_ns": now_ns + j, "stream": "stderr", "line": text});
                if j == 1
                    && let Some(rid) = rid
                {
                    line["request_id"] = rid.into();
                }
                line
            })
            .collect();
        assert_eq!(send(serde_json::json!(lines)).await.status, StatusCode::OK);
    }
    let chunks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM function_log_chunks WHERE function_id = $1")
            .bind(function)
            .fetch_one(db)
            .await
            .unwrap();
    assert_eq!(chunks, 180, "one chunk per batch and instance");
    let texts = |page: &LogPage| {
        page.lines
            .iter()
            .map(|l| l.line.clone())
            .collect::<Vec<_>>()
    };
    let consecutive = |page: &LogPage| page.lines.windows(2).all(|w| w[1].id == w[0].id + 1);
    // The newest 250: the last 250 recent lines, oldest first.
    let page: LogPage = app
        .get("/api/v1/functions/chunky/logs?limit=250")
        .await
        .json();
    assert_eq!(texts(&page), recent[50..]);
    assert!(consecutive(&page));
    assert_eq!(page.next, page.lines[249].id);
    // Forward from the start, 7 at a time: every line once, in order.
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page: LogPage = app
            .get(&format!(
                "/api/v1/functions/chunky/logs?after={after}&limit=7"
            ))
            .await
            .json();
        if page.lines.is_empty() {
            assert_eq!(page.next, after);
            break;
        }
        assert!(page.lines.len() == 7 || all.len() + page.lines.len() == 460);
        assert!(page.lines[0].id > after);
        after = page.next;
        all.extend(page.lines);
    }
    assert_eq!(all.len(), 80 * 2 + 300);
    assert!(all.windows(2).all(|w| w[1].id == w[0].id + 1));
    assert_eq!(all[0].line, "old 0");
    assert_eq!(all[459].line, "line 99.2");
    // By request id within the last minute: the 80 chunks holding "r" on an
    // old line come first and give nothing; the page still holds the ten.
    let page: LogPage = app
        .get("/api/v1/functions/chunky/logs?request_id=r&since_s=60&limit=10")
        .await
        .json();
    let want: Vec<String> = (0..10).map(|i| format!("line {}.1", i * 10)).collect();
    assert_eq!(texts(&page), want);
    // By request id alone: the 80 old ones, then the ten.
    let page: LogPage = app
        .get("/api/v1/functions/chunky/logs?request_id=r&after=0&limit=5000")
        .await
        .json();
    assert_eq!(page.lines.len(), 90);
    assert!(
        page.lines
            .iter()
            .all(|l| l.request_id.as_deref() == Some("r"))
    );
    // The SQL view reads the same lines.
    let viewed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM function_log_lines WHERE function_id = $1 AND request_id = 'r'",
    )
    .bind(function)
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!(viewed, 90);
}

/// Issue 10, signing keys: the secret answered once, stored sealed (never
/// in plain text), opened into the route table for live keys only, wiped
/// on revocation; every change bumps the route revision; bad ids named.
#[tokio::test]
async fn signing_keys_reach_the_route_table_sealed_at_rest() {
    use containerpub_wire::signing::{SigningKeyCreated, SigningKeyInfo};
    let app = app().await;
    let db = &app.state.db;
    insert_active_function(db, "signed").await;
    let before = app.route_table().await.revision;

    let reply = app
        .send(json_request(
            "POST",
            "/api/v1/functions/signed/signing-keys",
            r#"{"label":"ci"}"#,
        ))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.error());
    let created: SigningKeyCreated = reply.json();
    assert!(containerpub_wire::signing::is_key_id_shaped(
        &created.info.key_id
    ));
    assert!(created.secret.starts_with("cpss_") && created.secret.len() == 69);
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT ciphertext FROM function_signing_keys")
        .fetch_one(db)
        .await
        .unwrap();
    assert!(
        !sealed
            .windows(16)
            .any(|w| created.secret.as_bytes()[5..].windows(16).any(|s| s == w)),
        "the secret is stored in plain text"
    );
    let t = app.route_table().await;
    assert!(
        t.revision > before,
        "a signing-key change bumps the revision"
    );
    assert_eq!(t.routes[0].signing_keys.len(), 1);
    assert_eq!(t.routes[0].signing_keys[0].id, created.info.key_id);
    assert_eq!(t.routes[0].signing_keys[0].secret.0, created.secret);
    let listed = app.get("/api/v1/functions/signed/signing-keys").await;
    let shown: Vec<SigningKeyInfo> = listed.json();
    assert_eq!(shown, std::slice::from_ref(&created.info));
    assert!(!String::from_utf8_lossy(&listed.body).contains(&created.secret));

    let revoke = format!(
        "/api/v1/functions/signed/signing-keys/{}",
        created.info.key_id
    );
    assert_eq!(
        app.send(json_request("DELETE", &revoke, "")).await.status,
        StatusCode::NO_CONTENT
    );
    assert!(app.route_table().await.routes[0].signing_keys.is_empty());
    let wiped: Vec<u8> = sqlx::query_scalar("SELECT ciphertext FROM function_signing_keys")
        .fetch_one(db)
        .await
        .unwrap();
    assert!(wiped.is_empty(), "revocation wipes the sealed secret");
    assert_eq!(
        app.send(json_request("DELETE", &revoke, "")).await.status,
        StatusCode::NOT_FOUND
    );
    let bad = app
        .send(json_request(
            "DELETE",
            "/api/v1/functions/signed/signing-keys/nope",
            "",
        ))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.error().field.as_deref(), Some("key_id"));
}

/// The value of the metric line that starts with `series` (name and
/// labels) in `GET /metrics`, 0 when the series is not there yet.
async fn metric_value(app: &TestApp, series: &str) -> u64 {
    let reply = app
        .send(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    String::from_utf8_lossy(&reply.body)
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().expect("a counter"))
}

/// Audit rows: (actor_kind, actor, role, target, function, status, error).
type AuditRow = (
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    i32,
    Option<String>,
);

async fn audit_rows(db: &PgPool) -> Vec<AuditRow> {
    sqlx::query_as(
        "SELECT actor_kind, actor, role, target, function, status, error \
         FROM audit_log ORDER BY id",
    )
    .fetch_all(db)
    .await
    .unwrap()
}

#[tokio::test]
async fn audit_rows_are_bounded_and_calls_without_a_valid_credential_get_none() {
    use containerpub_control::audit::MAX_TEXT_BYTES;
    use rand::Rng;
    let app = app().await;
    let db = &app.state.db;
    let long: String = rand::thread_rng()
        .sample_iter(rand::distributions::Alphanumeric)
        .take(60 * 1024)
        .map(char::from)
        .collect();
    let path = format!("/api/v1/users/{long}");
    let cut = |text: &str| {
        assert!(text.len() <= MAX_TEXT_BYTES, "{} bytes", text.len());
        text.contains("… [cut from ")
    };

    // An admin's call on a 60-KiB path: one row, its texts cut.
    let reply = app
        .send(
            authed(Request::delete(path.as_str()))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert!(reply.status.is_client_error(), "{}", reply.status);
    let rows = audit_rows(db).await;
    assert_eq!(rows.len(), 1, "the admin's call is recorded");
    let (kind, actor, _, target, _, status, error) = &rows[0];
    assert_eq!((kind.as_str(), actor.as_deref()), ("user", Some("admin")));
    assert_eq!(i32::from(reply.status.as_u16()), *status);
    assert!(cut(target), "{target}");
    assert!(target.starts_with("/api/v1/users/") && path.starts_with(&target[..400]));
    assert!(error.as_deref().is_some_and(|e| e.len() <= MAX_TEXT_BYTES));
    // The function's name is cut at a character boundary (é is 2 bytes).
    let name = "%C3%A9".repeat(10_000);
    let reply = app.delete_function(&name).await;
    assert!(reply.status.is_client_error(), "{}", reply.status);
    let rows = audit_rows(db).await;
    assert_eq!(rows.len(), 2, "{:?}", reply.error());
    let (_, _, _, target, function, _, error) = &rows[1];
    assert!(cut(target));
    let function = function.as_deref().expect("the function");
    assert!(cut(function) && function.starts_with("éééé"), "{function}");
    assert!(error.as_deref().is_none_or(|e| e.len() <= MAX_TEXT_BYTES));

    // Without a token, or with a bad one: a 401, counted, and no row.
    let series = r#"cpub_control_http_requests_total{method="DELETE",route="other",status="401"}"#;
    let counted = metric_value(&app, series).await;
    for token in [None, Some("Bearer cpub_0000"), Some("Basic YWRtaW46eA==")] {
        let mut request = Request::delete(path.as_str());
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, token);
        }
        let reply = app.send(request.body(Body::empty()).unwrap()).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{token:?}");
    }
    assert_eq!(
        audit_rows(db).await.len(),
        2,
        "no row without a valid token"
    );
    assert!(
        metric_value(&app, series).await >= counted + 3,
        "the refusals are counted in {series}"
    );
    // A login body that names nobody: no row either.
    let reply = app
        .send(
            Request::post("/api/v1/auth/login")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(long.clone()))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(audit_rows(db).await.len(), 2);

    // A valid token refused (403) is still recorded, and a failed login.
    let reply = app
        .send(json_request(
            "POST",
            "/api/v1/tokens",
            r#"{"name":"narrow","role_scope":"viewer"}"#,
        ))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.error());
    let viewer: containerpub_wire::access::CreatedToken = reply.json();
    let reply = app
        .send(
            Request::delete(path.as_str())
                .header(header::AUTHORIZATION, format!("Bearer {}", viewer.token))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = app
        .send(
            Request::post("/api/v1/auth/login")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(r#"{"username":"admin","password":"nope"}"#))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let rows = audit_rows(db).await;
    assert_eq!(rows.len(), 5, "token.create, the 403 and the login");
    let (kind, actor, role, target, _, status, error) = &rows[3];
    assert_eq!(
        (kind.as_str(), actor.as_deref(), role.as_deref(), *status),
        ("user", Some("admin"), Some("viewer"), 403)
    );
    assert!(cut(target));
    assert!(error.as_deref().is_some_and(|e| e.contains("viewer")));
    assert_eq!((rows[4].1.as_deref(), rows[4].5), (Some("admin"), 401));
    assert_eq!(
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM audit_log WHERE actor_kind = 'anonymous'"
        )
        .fetch_one(db)
        .await
        .unwrap(),
        0
    );
}

#[tokio::test]
async fn a_token_cannot_outlive_the_token_that_creates_it() {
    use containerpub_wire::access::CreatedToken;
    let app = app().await;
    let create = |token: String, body: &'static str| {
        Request::post("/api/v1/tokens")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    // The bootstrap token never expires: it may give any expiry, or none.
    let reply = app
        .send(create(TOKEN.into(), r#"{"name":"short","expires":"1h"}"#))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.error());
    let short: CreatedToken = reply.json();
    let short_expiry = short.info.expires_at.expect("an expiry");
    let reply = app
        .send(create(TOKEN.into(), r#"{"name":"lasting"}"#))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.json::<CreatedToken>().info.expires_at, None);
    let tokens = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM api_tokens")
            .fetch_one(&app.state.db)
            .await
            .unwrap()
    };
    let before = tokens().await;

    // A token that expires in an hour mints nothing later, nor lasting.
    for body in [
        r#"{"name":"forever"}"#,
        r#"{"name":"month","expires":"30d"}"#,
        r#"{"name":"late","expires":"61m"}"#,
    ] {
        let reply = app.send(create(short.token.clone(), body)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        let error = reply.error();
        assert_eq!(error.field.as_deref(), Some("expires"), "{body}");
        assert!(
            error.error.contains("cannot outlive") && error.error.contains("expires at"),
            "{}",
            error.error
        );
    }
    assert_eq!(tokens().await, before, "nothing was created");
    // Within its own lifetime: created as asked.
    let reply = app
        .send(create(
            short.token.clone(),
            r#"{"name":"shorter","expires":"30m"}"#,
        ))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.error());
    let shorter: CreatedToken = reply.json();
    let expiry = shorter.info.expires_at.expect("an expiry");
    assert!(expiry <= short_expiry);
    let left = expiry - chrono::Utc::now();
    assert!(
        left > chrono::Duration::minutes(29) && left <= chrono::Duration::minutes(30),
        "{left}"
    );
    // And what it minted is bound the same way.
    let reply = app
        .send(create(shorter.token.clone(), r#"{"name":"again"}"#))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

/// `POST /api/v1/auth/login` as `username`: the answer, as JSON.
async fn log_in(app: &TestApp, username: &str, password: &str) -> serde_json::Value {
    let body = serde_json::json!({"username": username, "password": password});
    let reply = app
        .send(
            Request::post("/api/v1/auth/login")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "login {username}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

/// The token of a login as `username`.
async fn login_token(app: &TestApp, username: &str, password: &str) -> String {
    log_in(app, username, password).await["token"]
        .as_str()
        .expect("a token in the login answer")
        .to_owned()
}

/// A token made with `by` (`POST /api/v1/tokens` with `body`: 201).
async fn made_token(app: &TestApp, by: &str, body: &str) -> String {
    let reply = app.send(bearer("POST", "/api/v1/tokens", by, body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.error());
    reply.json::<serde_json::Value>()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A `method` request to `uri` with `token` as its bearer token and a
/// JSON `body` (empty: none).
fn bearer(method: &str, uri: &str, token: &str, body: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

/// `at` is `lifetime` after a time between `before` and `after` (a second
/// either side for the clocks of the test and of PostgreSQL).
fn assert_within(
    at: chrono::DateTime<chrono::Utc>,
    before: chrono::DateTime<chrono::Utc>,
    after: chrono::DateTime<chrono::Utc>,
    lifetime: chrono::TimeDelta,
) {
    let second = chrono::TimeDelta::seconds(1);
    assert!(
        at >= before + lifetime - second && at <= after + lifetime + second,
        "{at} is not {lifetime} after a time from {before} to {after}"
    );
}

/// When the token `token` expires, as stored.
async fn stored_expiry(db: &PgPool, token: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar("SELECT expires_at FROM api_tokens WHERE token_hash = $1")
        .bind(auth::token_hash(token))
        .fetch_one(db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_login_token_expires_and_mints_nothing_that_outlives_it() {
    let app = app().await;
    let before = chrono::Utc::now();
    let answer = log_in(&app, "admin", PASSWORD).await;
    let after = chrono::Utc::now();
    let token = answer["token"].as_str().expect("a token").to_owned();
    // The answer says when it expires: 30 days (the default) after the
    // login.
    let expires_at: chrono::DateTime<chrono::Utc> = answer["expires_at"]
        .as_str()
        .and_then(|at| at.parse().ok())
        .unwrap_or_else(|| panic!("no expires_at in the login answer: {answer}"));
    assert_eq!(stored_expiry(&app.state.db, &token).await, Some(expires_at));
    assert_within(expires_at, before, after, chrono::TimeDelta::days(30));

    // What it creates expires no later than itself.
    for body in [r#"{"name":"ci"}"#, r#"{"name":"ci","expires":"31d"}"#] {
        let reply = app
            .send(bearer("POST", "/api/v1/tokens", &token, body))
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        let error = reply.error();
        assert_eq!(error.field.as_deref(), Some("expires"), "{body}");
        assert!(
            error.error.contains("cannot outlive") && error.error.contains("your password"),
            "{}",
            error.error
        );
    }
    let reply = app
        .send(bearer(
            "POST",
            "/api/v1/tokens",
            &token,
            r#"{"name":"ci","expires":"7d"}"#,
        ))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.error());

    // The user's password lifts the bound (a login with it could make such
    // a token); a wrong one is a 403 and counts as a failed login.
    let wrong = r#"{"name":"lasting","password":"not the password"}"#;
    let reply = app
        .send(bearer("POST", "/api/v1/tokens", &token, wrong))
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.error().error, "the current password is wrong");
    let right = serde_json::json!({"name": "lasting", "password": PASSWORD}).to_string();
    let reply = app
        .send(bearer("POST", "/api/v1/tokens", &token, &right))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.error());
    let lasting: containerpub_wire::access::CreatedToken = reply.json();
    assert_eq!(lasting.info.expires_at, None);
    assert_eq!(stored_expiry(&app.state.db, &lasting.token).await, None);

    // Once past its expiry (set back here rather than waited for), it is
    // refused with a message that says to log in again.
    sqlx::query(
        "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE token_hash = $1",
    )
    .bind(auth::token_hash(&token))
    .execute(&app.state.db)
    .await
    .unwrap();
    let reply = app
        .send(bearer("GET", "/api/v1/functions", &token, ""))
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let error = reply.error().error;
    assert!(
        error.contains("the login of user admin expired at")
            && error.contains("log in again (`cpub login -u admin`)"),
        "{error}"
    );
}

#[tokio::test]
async fn the_login_token_lifetime_is_the_setting_and_older_logins_get_one_at_start() {
    let lifetime = Duration::from_secs(2 * 3600);
    let app = app_with_settings(|settings| settings.login_token_lifetime = lifetime).await;
    let db = &app.state.db;
    let before = chrono::Utc::now();
    let answer: LoginResponse = serde_json::from_value(log_in(&app, "admin", PASSWORD).await)
        .expect("the CLI's form of the answer");
    let expires_at = answer.expires_at.expect("an expiry");
    assert_within(
        expires_at,
        before,
        chrono::Utc::now(),
        chrono::TimeDelta::hours(2),
    );

    // Tokens of logins from before login tokens expired: no expiry stored.
    let admin = first_user(db).await;
    let insert = |name: &'static str, kind: &'static str, age: &'static str| async move {
        let token = auth::new_token();
        sqlx::query(
            "INSERT INTO api_tokens (user_id, token_hash, kind, name, created_at) \
             VALUES ($1, $2, $3, $4, now() - $5::interval)",
        )
        .bind(admin)
        .bind(auth::token_hash(&token))
        .bind(kind)
        .bind(name)
        .bind(age)
        .execute(db)
        .await
        .unwrap();
        token
    };
    let old = insert("login", "login", "40 days").await;
    let recent = insert("login", "login", "1 day").await;
    let made = insert("ci", "token", "40 days").await;
    let thirty_days = Duration::from_secs(30 * 86_400);
    assert_eq!(
        auth::expire_old_login_tokens(db, thirty_days)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        auth::expire_old_login_tokens(db, thirty_days)
            .await
            .unwrap(),
        0,
        "once"
    );
    let err = auth::caller_for_token(db, &old).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("the login of user admin expired at"),
        "{err}"
    );
    assert!(auth::caller_for_token(db, &recent).await.unwrap().is_some());
    let (expiry, created): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT expires_at, created_at FROM api_tokens WHERE token_hash = $1")
            .bind(auth::token_hash(&recent))
            .fetch_one(db)
            .await
            .unwrap();
    assert_eq!(expiry - created, chrono::TimeDelta::days(30));
    // Tokens made on purpose, and the bootstrap token, keep theirs (none).
    assert_eq!(stored_expiry(db, &made).await, None);
    assert_eq!(stored_expiry(db, TOKEN).await, None);
    // The login just made keeps its own.
    assert_eq!(stored_expiry(db, &answer.token).await, Some(expires_at));
}

#[tokio::test]
async fn a_password_change_revokes_the_users_logins_and_what_they_made() {
    let app = app().await;
    let reply = app
        .send(json_request(
            "POST",
            "/api/v1/users",
            r#"{"username":"alice","password":"alice-password-1","role":"developer"}"#,
        ))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let token = |answer: serde_json::Value| answer["token"].as_str().unwrap().to_owned();
    let laptop = token(log_in(&app, "alice", "alice-password-1").await);
    let desktop = token(log_in(&app, "alice", "alice-password-1").await);
    let reply = app
        .send(bearer(
            "POST",
            "/api/v1/tokens",
            &laptop,
            r#"{"name":"ci","expires":"1d"}"#,
        ))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.error());
    let ci: serde_json::Value = reply.json();
    let ci = ci["token"].as_str().unwrap().to_owned();
    // One made from the desktop's login (as a thief of it would), and a
    // child of it; one made from the laptop's with her password.
    let stolen = made_token(&app, &desktop, r#"{"name":"stolen","expires":"1d"}"#).await;
    let stolen_child = made_token(&app, &stolen, r#"{"name":"child","expires":"1h"}"#).await;
    let confirmed = made_token(
        &app,
        &laptop,
        r#"{"name":"lasting","password":"alice-password-1"}"#,
    )
    .await;
    // Her own change needs the current password.
    let reply = app
        .send(bearer(
            "PUT",
            "/api/v1/users/alice/password",
            &laptop,
            r#"{"new_password":"alice-password-2"}"#,
        ))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error().field.as_deref(), Some("current_password"));
    let works = |token: String| {
        let app = &app;
        async move {
            let reply = app.send(bearer("GET", "/api/v1/whoami", &token, "")).await;
            match reply.status {
                StatusCode::OK => true,
                StatusCode::UNAUTHORIZED => false,
                other => panic!("whoami: {other}"),
            }
        }
    };
    assert!(works(laptop.clone()).await && works(desktop.clone()).await);

    // Her own change, from the laptop's login: the desktop's login ends,
    // the calling one and the token she made stay.
    let reply = app
        .send(bearer(
            "PUT",
            "/api/v1/users/alice/password",
            &laptop,
            r#"{"current_password":"alice-password-1","new_password":"alice-password-2"}"#,
        ))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert!(!works(desktop.clone()).await, "the other login is revoked");
    assert!(
        !works(stolen).await && !works(stolen_child).await,
        "what the other login made without the password goes with it"
    );
    assert!(works(laptop.clone()).await, "the calling login stays");
    assert!(works(ci.clone()).await, "what the calling login made stays");
    assert!(works(confirmed.clone()).await);

    // An admin's change: every login of hers ends, with what they made
    // without the password; the token made with it stays, and the admin's
    // own tokens are untouched.
    let phone = token(log_in(&app, "alice", "alice-password-2").await);
    let reply = app
        .send(json_request(
            "PUT",
            "/api/v1/users/alice/password",
            r#"{"new_password":"alice-password-3"}"#,
        ))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert!(!works(laptop).await && !works(phone).await);
    assert!(!works(ci).await, "made from the laptop's login");
    assert!(works(confirmed).await, "made with the password");
    assert!(works(TOKEN.to_owned()).await);
    let logins: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_tokens t JOIN users u ON u.id = t.user_id \
         WHERE u.username = 'alice' AND t.kind = 'login'",
    )
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    assert_eq!(logins, 0);
    // Her new password logs in.
    log_in(&app, "alice", "alice-password-3").await;
}

/// A token asked for with a login's token while a password change holds
/// the user's row waits for it, and is refused once the change has revoked
/// the login (a 401), rather than made after the revocation and kept.
#[tokio::test]
async fn a_token_made_from_a_login_racing_a_password_change_is_refused() {
    let app = app().await;
    let db = &app.state.db;
    let login = login_token(&app, "admin", PASSWORD).await;
    // The change's first steps, as `set_password` takes them: the user's
    // row updated (and locked) in a transaction not yet committed.
    let mut change = db.begin().await.unwrap();
    sqlx::query("UPDATE users SET password_hash = password_hash WHERE username = 'admin'")
        .execute(&mut *change)
        .await
        .unwrap();
    let router = app.router.clone();
    let asking = tokio::spawn(async move {
        let mut request = bearer(
            "POST",
            "/api/v1/tokens",
            &login,
            r#"{"name":"late","expires":"1h"}"#,
        );
        request
            .headers_mut()
            .insert(header::HOST, "control.test".parse().unwrap());
        router.oneshot(request).await.unwrap().status()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!asking.is_finished(), "the request waits for the change");
    // The change revokes the user's logins and commits.
    sqlx::query("DELETE FROM api_tokens WHERE kind = 'login'")
        .execute(&mut *change)
        .await
        .unwrap();
    change.commit().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), asking)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let late: i64 = sqlx::query_scalar("SELECT count(*) FROM api_tokens WHERE name = 'late'")
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(late, 0, "no token was made");
}

#[tokio::test]
async fn a_login_racing_a_password_change_gets_no_token() {
    let app = app().await;
    let db = &app.state.db;
    let lifetime = Duration::from_secs(3600);
    // Checked, then the password changes, then the token is asked for.
    let checked = auth::check_login(db, "admin", PASSWORD)
        .await
        .unwrap()
        .expect("the password matches");
    let reply = app
        .send(json_request(
            "PUT",
            "/api/v1/users/admin/password",
            format!(r#"{{"current_password":"{PASSWORD}","new_password":"another-password"}}"#),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert!(
        auth::issue_login_token(db, &checked, lifetime)
            .await
            .unwrap()
            .is_none()
    );

    // The change holds the user's row, uncommitted, while the token is
    // asked for: the login waits for it, then sees the new hash.
    let checked = auth::check_login(db, "admin", "another-password")
        .await
        .unwrap()
        .expect("the password matches");
    let mut change = db.begin().await.unwrap();
    sqlx::query("UPDATE users SET password_hash = 'changed' WHERE username = 'admin'")
        .execute(&mut *change)
        .await
        .unwrap();
    let pool = db.clone();
    let login =
        tokio::spawn(async move { auth::issue_login_token(&pool, &checked, lifetime).await });
    let start = Instant::now();
    while !login.is_finished() {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(db)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the login neither waited nor finished"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    change.commit().await.unwrap();
    let issued = login.await.unwrap().unwrap();
    assert!(
        issued.is_none(),
        "a token issued for a password changed meanwhile: {issued:?}"
    );
}

/// With each of `tokens` (the admin's, each expiring), `method uri body`
/// is refused without the admin's own password (a 400
/// naming `current_password` whose message says `what`), and with a wrong
/// one (403, counted as a failed login).
async fn refused_without_admin_password(
    app: &TestApp,
    tokens: &[&str],
    (method, uri): (&str, &str),
    body: &serde_json::Value,
    what: &str,
) {
    for token in tokens {
        let reply = app
            .send(bearer(method, uri, token, &body.to_string()))
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{uri}");
        let error = reply.error();
        assert_eq!(error.field.as_deref(), Some("current_password"), "{uri}");
        assert!(
            error
                .error
                .contains(&format!("{what} needs your own password")),
            "{}",
            error.error
        );
    }
    let reply = app
        .send(bearer(
            method,
            uri,
            tokens[0],
            &with_admin_password(body, "not the password"),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{uri}");
}

/// `body` with `current_password`.
fn with_admin_password(body: &serde_json::Value, password: &str) -> String {
    let mut body = body.clone();
    body["current_password"] = password.into();
    body.to_string()
}

/// Security review: what an admin does with a token that expires (a
/// login's) must not outlive it for a thief of that token. Adding a user,
/// raising a role and setting another user's password need the admin's
/// own password then (a 400 naming `current_password` without it, a 403
/// with a wrong one, and nothing changed); lowering a role does not, nor
/// does any of it from a token that never expires. (Old code let a leaked
/// login add an admin of the thief's own, who stayed after the login
/// expired or the victim changed its password.)
#[tokio::test]
async fn what_an_admin_login_makes_that_outlives_it_needs_the_admins_password() {
    let app = app().await;
    let db = &app.state.db;
    let login = login_token(&app, "admin", PASSWORD).await;
    // A token made with an expiry, from a lasting one: it expires too; and
    // one made from the login (it belongs to the login).
    let short = made_token(&app, TOKEN, r#"{"name":"short","expires":"1h"}"#).await;
    let child = made_token(&app, &login, r#"{"name":"child","expires":"1h"}"#).await;
    let tokens = &[login.as_str(), short.as_str(), child.as_str()][..];
    let role_of = |user: &'static str| async move {
        sqlx::query_scalar::<_, String>("SELECT role FROM users WHERE username = $1")
            .bind(user)
            .fetch_optional(db)
            .await
            .unwrap()
    };
    let confirmed = |method: &str, uri: &str, body: &serde_json::Value| {
        app.send(bearer(
            method,
            uri,
            &login,
            &with_admin_password(body, PASSWORD),
        ))
    };

    // Adding a user.
    let add = ("POST", "/api/v1/users");
    let eve = serde_json::json!({"username": "eve", "password": "eve-password-1", "role": "admin"});
    refused_without_admin_password(&app, tokens, add, &eve, "adding a user").await;
    assert_eq!(role_of("eve").await, None, "no user was added");
    let reply = confirmed(add.0, add.1, &eve).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.error());
    assert_eq!(role_of("eve").await.as_deref(), Some("admin"));
    // A name taken is told only after the password (a 400 first, not 409).
    refused_without_admin_password(&app, tokens, add, &eve, "adding a user").await;
    let bob = r#"{"username":"bob","password":"bob-password-1","role":"viewer"}"#;
    let reply = app.send(json_request("POST", "/api/v1/users", bob)).await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "a lasting token needs no password"
    );

    // Roles: lowering needs no password; raising does.
    let eve_role = ("PUT", "/api/v1/users/eve/role");
    let reply = app
        .send(bearer(
            eve_role.0,
            eve_role.1,
            &login,
            r#"{"role":"viewer"}"#,
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.error());
    assert_eq!(role_of("eve").await.as_deref(), Some("viewer"));
    let raise = serde_json::json!({"role": "developer"});
    refused_without_admin_password(&app, tokens, eve_role, &raise, "raising a role").await;
    assert_eq!(role_of("eve").await.as_deref(), Some("viewer"), "unchanged");
    let reply = confirmed(eve_role.0, eve_role.1, &raise).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.error());
    assert_eq!(role_of("eve").await.as_deref(), Some("developer"));
    // The attack itself: an admin of the thief's own.
    let to_admin = serde_json::json!({"role": "admin"});
    refused_without_admin_password(&app, tokens, eve_role, &to_admin, "raising a role").await;
    assert_eq!(
        role_of("eve").await.as_deref(),
        Some("developer"),
        "unchanged"
    );
    let reply = app
        .send(json_request(
            "PUT",
            "/api/v1/users/bob/role",
            r#"{"role":"admin"}"#,
        ))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "a lasting token needs no password"
    );

    // Another user's password.
    let hash_of = || async {
        sqlx::query_scalar::<_, String>("SELECT password_hash FROM users WHERE username = 'eve'")
            .fetch_one(db)
            .await
            .unwrap()
    };
    let before = hash_of().await;
    let set_eve = ("PUT", "/api/v1/users/eve/password");
    let set = serde_json::json!({"new_password": "eve-password-2"});
    refused_without_admin_password(
        &app,
        tokens,
        set_eve,
        &set,
        "setting another user's password",
    )
    .await;
    assert_eq!(hash_of().await, before, "unchanged");
    let reply = confirmed(set_eve.0, set_eve.1, &set).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{:?}", reply.error());
    log_in(&app, "eve", "eve-password-2").await;
    let reply = app
        .send(json_request(
            "PUT",
            "/api/v1/users/bob/password",
            r#"{"new_password":"bob-password-2"}"#,
        ))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::NO_CONTENT,
        "a lasting token needs no password"
    );

    // The route table holds every secret: a token that expires cannot
    // follow it; a lasting admin token can.
    for token in tokens {
        let reply = app.send(bearer("GET", "/api/v1/routes", token, "")).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert!(
            reply.error().error.contains("cannot watch routes"),
            "{:?}",
            reply.error()
        );
    }
    assert_eq!(app.get("/api/v1/routes").await.status, StatusCode::OK);

    // Each confirmation counts like a login: five wrong ones, and the next
    // is a 429, the right password too.
    for _ in 0..5 {
        let reply = app
            .send(bearer(
                add.0,
                add.1,
                &login,
                &with_admin_password(&eve, "wrong"),
            ))
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
    }
    let reply = confirmed(add.0, add.1, &eve).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
}

/// Security review: concurrent role changes each ran a query on a second
/// connection while their transaction held row locks, so enough of them at
/// once filled the pool with transactions waiting for one more, and every
/// request of the control plane stalled until the pool's 10 s timeout and
/// failed (500).
#[tokio::test]
async fn concurrent_role_changes_do_not_starve_the_pool() {
    let app = app().await;
    let n = 3 * containerpub_control::db::MAX_CONNECTIONS as usize;
    for i in 0..n {
        sqlx::query("INSERT INTO users (username, password_hash, role) VALUES ($1, 'x', 'viewer')")
            .bind(format!("crowd{i}"))
            .execute(&app.state.db)
            .await
            .unwrap();
    }
    let replies = futures_util::future::join_all((0..n).map(|i| {
        app.send(json_request(
            "PUT",
            &format!("/api/v1/users/crowd{i}/role"),
            r#"{"role":"developer"}"#,
        ))
    }))
    .await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

#[tokio::test]
async fn only_a_token_that_never_expires_creates_node_credentials() {
    let app = app().await;
    let db = &app.state.db;
    let create_token = |body: &'static str| {
        let app = &app;
        async move {
            let reply = app
                .send(bearer("POST", "/api/v1/tokens", TOKEN, body))
                .await;
            assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.error());
            let created: serde_json::Value = reply.json();
            created["token"].as_str().unwrap().to_owned()
        }
    };
    let short = create_token(r#"{"name":"short","expires":"1h"}"#).await;
    let login = login_token(&app, "admin", PASSWORD).await;
    let nodes = || async {
        sqlx::query_scalar::<_, String>("SELECT token_hash FROM node_credentials ORDER BY node")
            .fetch_all(db)
            .await
            .unwrap()
    };
    let refused = |reply: Reply, what: &str| {
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{what}");
        let error = reply.error().error;
        assert!(
            error.contains("a node credential never expires")
                && error.contains("this token expires at")
                && error.contains("the bootstrap token"),
            "{what}: {error}"
        );
    };
    for (what, token) in [("a token that expires", &short), ("a login", &login)] {
        let reply = app
            .send(bearer("POST", "/api/v1/nodes/edge-1/credential", token, ""))
            .await;
        refused(reply, what);
    }
    assert!(nodes().await.is_empty(), "nothing was created");

    // The bootstrap token never expires: it creates one.
    let reply = app
        .send(bearer("POST", "/api/v1/nodes/edge-1/credential", TOKEN, ""))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.error());
    let created: serde_json::Value = reply.json();
    let edge = created["token"].as_str().unwrap().to_owned();
    let stored = nodes().await;
    // A replacement is a creation: refused too, and the credential stays.
    let reply = app
        .send(bearer(
            "POST",
            "/api/v1/nodes/edge-1/credential?replace=true",
            &short,
            "",
        ))
        .await;
    refused(reply, "a replacement");
    assert_eq!(nodes().await, stored);
    assert!(auth::caller_for_token(db, &edge).await.unwrap().is_some());
    // Revoking takes nothing that lasts: any admin token may.
    let reply = app
        .send(bearer("DELETE", "/api/v1/nodes/edge-1", &short, ""))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    // A token the bootstrap token made without an expiry creates one too.
    let lasting = create_token(r#"{"name":"nodes"}"#).await;
    let reply = app
        .send(bearer(
            "POST",
            "/api/v1/nodes/edge-2/credential",
            &lasting,
            "",
        ))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.error());
}

#[test]
fn left_behind_uploads_and_build_contexts_are_swept_and_nothing_else() {
    use containerpub_control::server::{stale_tmp_age, sweep_tmp_dir};
    use std::time::SystemTime;
    // No database: the directory alone (`settings.tmp_dir()` at start).
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("tmp");
    std::fs::create_dir(&dir).unwrap();
    let idle = stale_tmp_age(Duration::from_secs(120));
    assert_eq!(idle, Duration::from_secs(3600), "at least an hour");
    assert_eq!(
        stale_tmp_age(Duration::from_secs(7200)),
        Duration::from_secs(4 * 3600)
    );
    let old = SystemTime::now() - Duration::from_secs(2 * 3600);
    let age = |path: &std::path::Path| {
        std::fs::File::open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    };
    let file = |name: &str, stale: bool| {
        let path = dir.join(name);
        std::fs::write(&path, b"x").unwrap();
        if stale {
            age(&path);
        }
    };
    // Left behind: an upload and a build context, unwritten for 2 hours.
    file("upload-abc123.tar.gz", true);
    std::fs::create_dir(dir.join("deploy-abc123")).unwrap();
    file("deploy-abc123/context.tar", true);
    age(&dir.join("deploy-abc123"));
    // In use (another control plane on the same data directory): kept.
    file("upload-new.tar.gz", false);
    std::fs::create_dir(dir.join("deploy-busy")).unwrap();
    file("deploy-busy/context.tar", false);
    age(&dir.join("deploy-busy"));
    // Not the control plane's: kept, however old.
    file("notes.txt", true);
    file("upload-abc.zip", true);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), b"x").unwrap();
    age(outside.path());
    std::os::unix::fs::symlink(outside.path(), dir.join("deploy-link")).unwrap();

    assert_eq!(sweep_tmp_dir(&dir, idle).unwrap(), 2);
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "deploy-busy",
            "deploy-link",
            "notes.txt",
            "upload-abc.zip",
            "upload-new.tar.gz"
        ]
    );
    assert!(outside.path().join("precious").exists());
    assert_eq!(sweep_tmp_dir(&dir, idle).unwrap(), 0);
    // With no idle time required, whatever is the control plane's goes.
    assert_eq!(sweep_tmp_dir(&dir, Duration::ZERO).unwrap(), 2);
    assert!(!dir.join("deploy-busy").exists() && !dir.join("upload-new.tar.gz").exists());
    assert!(dir.join("deploy-link").exists() && outside.path().join("precious").exists());
}
