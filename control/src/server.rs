//! Start-up and serving: directories, database and migrations, first-start
//! bootstrap, the revision follower, the listener, graceful shutdown.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use containerpub_podman::Podman;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::state::AppState;
use crate::{auth, db, gc, revision, routes, vault};

/// Runs the control plane until SIGTERM or SIGINT.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    for dir in [settings.artifacts_dir(), settings.tmp_dir()] {
        tokio::fs::create_dir_all(&dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    // What a killed run left behind (uploads, 64 MiB by default; build
    // contexts, 512 MiB). Another control plane may share the data
    // directory (nothing locks it), so only what no deploy could still be
    // using goes.
    let tmp_dir = settings.tmp_dir();
    let idle = stale_tmp_age(settings.build_timeout);
    match tokio::task::spawn_blocking(move || sweep_tmp_dir(&tmp_dir, idle)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(count = n, "removed uploads and build contexts left behind"),
        Ok(Err(err)) => tracing::warn!(%err, "sweeping the temporary directory"),
        Err(err) => tracing::warn!(%err, "sweeping the temporary directory"),
    }
    let pool = db::connect(&settings.database_url)
        .await
        .context("connecting to PostgreSQL")?;
    db::migrate(&pool).await.context("applying migrations")?;
    let images = crate::build::ImageNames::load(&pool)
        .await
        .context("reading the database's image token")?;
    let secrets = auth::bootstrap(
        &pool,
        settings.admin_password.as_deref(),
        settings.bootstrap_token.as_deref(),
    )
    .await
    .context("bootstrapping the admin user")?;
    let old_logins = auth::expire_old_login_tokens(&pool, settings.login_token_lifetime)
        .await
        .context("giving login tokens from before login expiry an expiry")?;
    if old_logins > 0 {
        tracing::info!(
            count = old_logins,
            "login tokens issued without an expiry now expire after CPUB_LOGIN_TOKEN_LIFETIME \
             from their login"
        );
    }
    let vault = vault::Vault::open_or_create(&settings.master_key_path())
        .context("opening the master key file")?;
    match vault::reseal_all(&pool, &vault).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(count = n, "secrets sealed again under the first master key"),
        Err(err) => tracing::warn!(err = format!("{err:#}"), "resealing secrets"),
    }
    match crate::signing::reseal_all(&pool, &vault).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            count = n,
            "signing keys sealed again under the first master key"
        ),
        Err(err) => tracing::warn!(err = format!("{err:#}"), "resealing signing keys"),
    }
    let stale = db::fail_stale_builds(&pool, settings.build_timeout * 2).await?;
    if stale > 0 {
        tracing::warn!(count = stale, "marked abandoned builds as failed");
    }
    let orphans = containerpub_podman::reap_orphaned_builds().await;
    if orphans > 0 {
        tracing::warn!(count = orphans, "killed the steps of abandoned builds");
    }
    // Images an earlier run moved out of the build store and could not
    // remove yet (see containerpub_podman::store).
    containerpub_podman::Podman::new(&settings.build.podman_socket)
        .remove_pending()
        .await;
    match gc::sweep_artifacts(&pool, &settings.artifacts_dir()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(count = n, "removed artifacts no deployment references"),
        Err(err) => tracing::warn!(err = format!("{err:#}"), "sweeping unreferenced artifacts"),
    }

    let shutdown = CancellationToken::new();
    crate::metrics::init();
    let retention = tokio::spawn(routes::executions::retain_forever(
        pool.clone(),
        shutdown.clone(),
    ));
    let (revision_tx, revision_rx) = watch::channel(db::current_revision(&pool).await?);
    let follower = tokio::spawn(revision::follow(
        pool.clone(),
        revision_tx,
        shutdown.clone(),
    ));

    let log_sweeper = tokio::spawn(crate::logs::sweep_forever(
        pool.clone(),
        settings.logs,
        shutdown.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let reads = Arc::new(crate::reads::Reads::new(settings.reads));
    let state = AppState {
        db: pool.clone(),
        podman: Podman::new(&settings.podman_socket),
        settings: Arc::new(settings),
        revision: revision_rx,
        watchers: Arc::default(),
        vault: Arc::new(vault),
        shutdown: shutdown.clone(),
        login_limits: Arc::default(),
        builds: Arc::default(),
        images,
        reads,
    };
    {
        let mut out = std::io::stdout().lock();
        if let Some(password) = &secrets.admin_password {
            writeln!(out, "admin password: {password}")?;
        }
        if let Some(token) = &secrets.token {
            writeln!(out, "bootstrap token: {token}")?;
        }
        writeln!(out, "cpub-control listening on http://{addr}")?;
        out.flush()?;
    }
    tracing::info!(%addr, "listening");
    let app = routes::router(state);
    let signal = shutdown.clone();
    // The peer address: login limits and the audit log's source.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            signal.cancel();
        })
        .await
        .context("serving")?;
    shutdown.cancel();
    let _ = follower.await;
    let _ = retention.await;
    let _ = log_sweeper.await;
    pool.close().await;
    Ok(())
}

/// How long an entry of the temporary directory stays unwritten before
/// [`sweep_tmp_dir`] takes it for left behind: twice the build timeout (the
/// rule `db::fail_stale_builds` applies to builds), at least an hour. An
/// upload being received is written as it arrives; a build context is
/// written before its build and removed when the build ends.
pub fn stale_tmp_age(build_timeout: Duration) -> Duration {
    (build_timeout * 2).max(Duration::from_secs(3600))
}

/// Removes what the deploy pipeline leaves in `dir` (`settings.tmp_dir()`)
/// when the control plane is killed: `upload-*.tar.gz` files and `deploy-*`
/// directories (`deploy::receive`, `deploy::deploy`), once nothing in them
/// was modified for `idle`, so a deploy another control plane on the same
/// data directory is running keeps its files. Nothing else there is
/// touched, and symbolic links are never followed. Returns how many
/// entries went; an entry that cannot be removed is logged and skipped.
pub fn sweep_tmp_dir(dir: &Path, idle: Duration) -> std::io::Result<usize> {
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let ours = (kind.is_file() && name.starts_with("upload-") && name.ends_with(".tar.gz"))
            || (kind.is_dir() && name.starts_with("deploy-"));
        if !ours {
            continue;
        }
        let newest = match newest_modification(&path) {
            Ok(t) => t,
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "reading a left-behind entry");
                continue;
            }
        };
        // A time in the future reads as just written.
        if now.duration_since(newest).unwrap_or_default() < idle {
            continue;
        }
        let result = if kind.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match result {
            Ok(()) => removed += 1,
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "removing a left-behind entry")
            }
        }
    }
    Ok(removed)
}

/// The latest modification time of `path` and, for a directory, of
/// everything under it (links not followed).
fn newest_modification(path: &Path) -> std::io::Result<SystemTime> {
    let meta = std::fs::symlink_metadata(path)?;
    let mut newest = meta.modified()?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            newest = newest.max(newest_modification(&entry?.path())?);
        }
    }
    Ok(newest)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(%err, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
