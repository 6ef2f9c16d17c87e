//! Garbage collection of what deployments leave outside the database:
//! artifact files and Podman images.
//!
//! The rule: an artifact file (`<data>/artifacts/sha256/<hex>.tar.gz`,
//! shared by every deployment of the same bytes) or an image
//! (`localhost/cpub-fn-<name>:v<version>-d<deployment id>-<token>`, see
//! `build::ImageNames`: built once, and named apart from any other
//! database's) is kept while a deployment row
//! references it, so every version a function still lists can be rolled
//! back to or rebuilt; deployments go with their function or by the
//! retention rule (`history`), which calls into this module. Deleting a
//! function removes its images (the containers still using them first,
//! paused ones too, with retries) and the artifacts no other deployment
//! references. At start the control plane also removes artifact files no
//! deployment references (left by a crash between storing and recording).
//! Images are not swept at start: one Podman may serve several control
//! planes (each with its own database), so an image unknown to this
//! database is not known to be unused.
//!
//! Storing an artifact and recording its deployment happen under a
//! PostgreSQL advisory lock on the digest ([`ArtifactLock`]), and so does
//! the check-and-remove here: a deploy of the same bytes cannot lose its
//! artifact to a concurrent delete.

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerpub_podman::Podman;
use sqlx::{PgPool, Postgres, Transaction};

/// Advisory lock class of artifact digests ("cpub").
const LOCK_CLASS: i32 = 0x6370_7562;
/// How long image removal keeps trying, and its first and longest pause.
const IMAGE_REMOVAL_BUDGET: Duration = Duration::from_secs(15);
const IMAGE_RETRY_FIRST: Duration = Duration::from_millis(100);
const IMAGE_RETRY_MAX: Duration = Duration::from_secs(2);

/// A transaction holding the advisory lock of one artifact's digest until
/// it is released (or dropped: the transaction rolls back, the lock goes).
pub struct ArtifactLock(Transaction<'static, Postgres>);

impl ArtifactLock {
    /// Waits for the lock of the artifact stored at `path` (keyed by its
    /// file name, the digest).
    pub async fn acquire(db: &PgPool, path: &Path) -> Result<Self, sqlx::Error> {
        let key = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut tx = db.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(LOCK_CLASS)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        Ok(Self(tx))
    }

    /// Whether deployment `id` still exists (its function was not deleted).
    pub async fn deployment_exists(&mut self, id: i64) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM deployments WHERE id = $1)")
            .bind(id)
            .fetch_one(&mut *self.0)
            .await
    }

    pub async fn release(self) -> Result<(), sqlx::Error> {
        self.0.commit().await
    }
}

/// Removes the artifact at `path` unless a deployment references it.
/// Only files inside `dir` are ever touched. Returns whether it was removed.
pub async fn collect_artifact(db: &PgPool, dir: &Path, path: &str) -> anyhow::Result<bool> {
    let file = PathBuf::from(path);
    if file.parent() != Some(dir) {
        tracing::warn!(path, dir = %dir.display(), "not collecting an artifact outside the artifact directory");
        return Ok(false);
    }
    let mut lock = ArtifactLock::acquire(db, &file).await?;
    let used: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM deployments WHERE artifact = $1)")
            .bind(path)
            .fetch_one(&mut *lock.0)
            .await?;
    let removed = if used {
        false
    } else {
        match tokio::fs::remove_file(&file).await {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(anyhow::Error::new(e).context(format!("removing {path}"))),
        }
    };
    lock.release().await?;
    Ok(removed)
}

/// Removes every artifact file in `dir` that no deployment references.
/// Returns how many.
pub async fn sweep_artifacts(db: &PgPool, dir: &Path) -> anyhow::Result<usize> {
    let mut entries = tokio::fs::read_dir(dir).await?;
    let mut removed = 0;
    while let Some(entry) = entries.next_entry().await? {
        let path = entry.path();
        let is_artifact = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".tar.gz"));
        if !is_artifact || !entry.file_type().await?.is_file() {
            continue;
        }
        if collect_artifact(db, dir, &path.to_string_lossy()).await? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes `image`: first the containers still using it (a paused one
/// too), then the image; retried with back-off for a while, since the
/// proxies are removing the same containers at the same time (Podman then
/// answers "container … does not exist in database"). Returns the last
/// error when it gave up.
pub async fn remove_image(
    podman: &Podman,
    image: &str,
) -> Result<(), containerpub_podman::PodmanError> {
    let until = tokio::time::Instant::now() + IMAGE_REMOVAL_BUDGET;
    let mut pause = IMAGE_RETRY_FIRST;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let result = async {
            if !podman.image_exists(image).await? {
                return Ok(());
            }
            for id in podman.containers_using_image(image).await? {
                podman.remove_container(&id).await?;
            }
            podman.remove_image(image).await
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(err) if tokio::time::Instant::now() + pause < until => {
                tracing::debug!(%image, attempt, %err, "image removal failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(IMAGE_RETRY_MAX);
            }
            Err(err) => return Err(err),
        }
    }
}
