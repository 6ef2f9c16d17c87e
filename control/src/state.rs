//! Shared state handed to every handler.

use std::sync::Arc;

use containerpub_podman::Podman;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;

/// Cheap to clone: every field is a handle.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub settings: Arc<Settings>,
    pub podman: Podman,
    /// Latest known route revision, fed by [`crate::revision::follow`].
    pub revision: watch::Receiver<i64>,
    /// Proxies following the routes, and the revision each has applied.
    pub watchers: Arc<crate::watchers::Watchers>,
    /// The master keys that seal function secrets (`crate::vault`).
    pub vault: Arc<crate::vault::Vault>,
    /// Cancelled on shutdown: long polls answer at once.
    pub shutdown: CancellationToken,
    /// Login attempts per address and user (`crate::login_limit`).
    pub login_limits: Arc<crate::login_limit::LoginLimiter>,
    /// Output of the builds running here, for followers.
    pub builds: Arc<crate::builds::LiveBuilds>,
    /// The names of the images this database's builds make.
    pub images: crate::build::ImageNames,
    /// Permits and limits of the reads of records and logs.
    pub reads: Arc<crate::reads::Reads>,
}
