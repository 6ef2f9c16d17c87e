//! A function's versions beyond builds (issue 13): rollback (an earlier
//! version's image and manifest, reactivated without a build), config
//! changes (the active image with a changed manifest) and the retention
//! rule for old versions and their images.
//!
//! Each rollback or config change is a deployment row of its own with the
//! next version number (`kind`, `source_version`, `note`: migration 0007),
//! made and activated in one transaction under the function's row lock,
//! like a build's activation (`db::activate`). So the history only grows,
//! `cpub rollback` twice goes back and forth between the last two versions,
//! and a build that finishes after a rollback ends `superseded` instead of
//! replacing it (the rollback is newer). A config change is refused while
//! a build of the function runs: it would otherwise hide that build.
//!
//! Retention: after every activation, the deployments beyond the newest
//! `keep` versions are deleted, except the active one and the default
//! rollback target (the newest built version below the active one). An
//! image is removed once no remaining row references it (a rollback row
//! keeps its source's image alive after the source row is gone); an
//! artifact likewise (`gc::collect_artifact`). Rows being built are never
//! touched.

use containerpub_wire::Manifest;
use containerpub_wire::api::{
    ConfigChange, DeploymentStatus, VersionInfo, VersionKind, same_instances,
};
use sqlx::{PgPool, Postgres, Transaction};

use crate::build;
use crate::db;
use crate::error::{Error, Result};
use crate::gc;
use crate::state::AppState;

#[derive(Debug, sqlx::FromRow)]
struct VersionRow {
    id: i64,
    version: i32,
    status: String,
    kind: String,
    source_version: Option<i32>,
    note: String,
    image: Option<String>,
    digest: String,
    artifact: String,
    config: sqlx::types::Json<Manifest>,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl VersionRow {
    fn into_info(self) -> Result<VersionInfo, sqlx::Error> {
        let status = DeploymentStatus::parse(&self.status).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown status {:?}", self.status).into())
        })?;
        let kind = VersionKind::parse(&self.kind)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown kind {:?}", self.kind).into()))?;
        Ok(VersionInfo {
            version: self.version,
            deployment_id: self.id,
            status,
            kind,
            source_version: self.source_version,
            note: self.note,
            image: self.image,
            digest: self.digest,
            config: self.config.0,
            created_at: self.created_at,
        })
    }
}

/// The select list of [`VersionRow`], as a macro so `concat!` can build
/// `&'static str` queries from it.
macro_rules! version_select {
    () => {
        "SELECT id, version, status, kind, source_version, note, image, digest, artifact, \
                config, created_at FROM deployments "
    };
}

/// The versions of `name`, newest first; 404 when there is no such function.
pub async fn list(db: &PgPool, name: &str) -> Result<Vec<VersionInfo>> {
    let function: Option<i64> = sqlx::query_scalar("SELECT id FROM functions WHERE name = $1")
        .bind(name)
        .fetch_optional(db)
        .await?;
    let Some(function) = function else {
        return Err(not_found(name));
    };
    let rows: Vec<VersionRow> = sqlx::query_as(concat!(
        version_select!(),
        "WHERE function_id = $1 ORDER BY version DESC"
    ))
    .bind(function)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(VersionRow::into_info)
        .collect::<Result<_, _>>()?)
}

fn not_found(name: &str) -> Error {
    Error::NotFound(format!("function {name:?} not found"))
}

/// What a rollback or a config change made.
#[derive(Debug)]
pub struct Derived {
    pub info: VersionInfo,
    /// The route revision proxies must reach.
    pub revision: i64,
    /// Whether the active instances can keep serving as they are (only
    /// `[scaling]` changed); else the pool starts new ones.
    pub same_instances: bool,
}

/// The function's id and active deployment, its row locked.
async fn lock_function(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
) -> Result<(i64, Option<i64>)> {
    sqlx::query_as("SELECT id, active_deployment_id FROM functions WHERE name = $1 FOR UPDATE")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| not_found(name))
}

async fn row_by_version(
    tx: &mut Transaction<'_, Postgres>,
    function: i64,
    version: i32,
) -> Result<Option<VersionRow>> {
    Ok(sqlx::query_as(concat!(
        version_select!(),
        "WHERE function_id = $1 AND version = $2"
    ))
    .bind(function)
    .bind(version)
    .fetch_optional(&mut **tx)
    .await?)
}

async fn row_by_id(tx: &mut Transaction<'_, Postgres>, id: i64) -> Result<VersionRow> {
    Ok(sqlx::query_as(concat!(version_select!(), "WHERE id = $1"))
        .bind(id)
        .fetch_one(&mut **tx)
        .await?)
}

/// The version `cpub rollback` without `--to` goes to: the newest built
/// (image present, not failed) version below `active`.
async fn default_target(
    tx: &mut Transaction<'_, Postgres>,
    function: i64,
    active: i32,
) -> Result<Option<i32>> {
    Ok(sqlx::query_scalar(
        "SELECT version FROM deployments WHERE function_id = $1 AND version < $2 \
         AND image IS NOT NULL AND status = 'superseded' ORDER BY version DESC LIMIT 1",
    )
    .bind(function)
    .bind(active)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Reactivates version `to` (default: the newest built version below the
/// active one) as a new version, without a build.
pub async fn rollback(db: &PgPool, name: &str, user: i64, to: Option<i32>) -> Result<Derived> {
    let mut tx = db.begin().await?;
    let (function, active_id) = lock_function(&mut tx, name).await?;
    let Some(active_id) = active_id else {
        return Err(Error::Conflict(format!(
            "function {name:?} has no active version to roll back from"
        )));
    };
    let active = row_by_id(&mut tx, active_id).await?;
    let target = match to {
        Some(v) if v <= 0 => {
            return Err(Error::bad_request(
                "to",
                format!("must be a version number (1 or more), got {v}"),
            ));
        }
        Some(v) => v,
        None => default_target(&mut tx, function, active.version)
            .await?
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "function {name:?} has no earlier built version than v{} to roll back to",
                    active.version
                ))
            })?,
    };
    let source = row_by_version(&mut tx, function, target)
        .await?
        .ok_or_else(|| {
            Error::NotFound(format!(
                "function {name:?} has no version {target} (see `cpub versions {name}`)"
            ))
        })?;
    if source.id == active.id {
        return Err(Error::Conflict(format!(
            "version {target} of {name:?} is already active"
        )));
    }
    let Some(image) = source.image.clone() else {
        return Err(Error::Conflict(format!(
            "version {target} of {name:?} has no image (its status is {}); only built versions can be reactivated",
            source.status
        )));
    };
    if source.status == "failed" {
        return Err(Error::Conflict(format!(
            "version {target} of {name:?} failed to build and cannot be reactivated"
        )));
    }
    let note = format!("rollback to v{target}");
    let same = same_instances(&active.config.0, &source.config.0) && active.image == source.image;
    let (info, revision) = insert_active(
        &mut tx,
        function,
        user,
        &source,
        &image,
        &source.config.0,
        VersionKind::Rollback,
        &note,
    )
    .await?;
    tx.commit().await?;
    Ok(Derived {
        info,
        revision,
        same_instances: same,
    })
}

/// A new version on the active image with `change` applied to the active
/// manifest. 400 naming the field when the result is not a valid manifest,
/// 409 while a build of the function runs, 400 when nothing changes.
pub async fn change_config(
    db: &PgPool,
    name: &str,
    user: i64,
    change: &ConfigChange,
) -> Result<Derived> {
    if change.is_empty() {
        return Err(Error::bad_request(
            "change",
            "nothing to change: give at least one value",
        ));
    }
    let mut tx = db.begin().await?;
    let (function, active_id) = lock_function(&mut tx, name).await?;
    let Some(active_id) = active_id else {
        return Err(Error::Conflict(format!(
            "function {name:?} has no active version to change; deploy it first"
        )));
    };
    let building: Option<i32> = sqlx::query_scalar(
        "SELECT version FROM deployments WHERE function_id = $1 AND status = 'building' \
         ORDER BY version DESC LIMIT 1",
    )
    .bind(function)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(v) = building {
        return Err(Error::Conflict(format!(
            "version {v} of {name:?} is building; change the configuration once it has finished"
        )));
    }
    let active = row_by_id(&mut tx, active_id).await?;
    let Some(image) = active.image.clone() else {
        return Err(Error::Conflict(format!(
            "the active version of {name:?} has no image"
        )));
    };
    let mut manifest = active.config.0.clone();
    let changes = change
        .apply(&mut manifest)
        .map_err(|e| Error::bad_request(e.field, e.message))?;
    if changes.is_empty() {
        return Err(Error::bad_request(
            "change",
            format!(
                "nothing changes: version {} already has these values",
                active.version
            ),
        ));
    }
    let mut note = changes.join(", ");
    if note.len() > 1000 {
        let mut end = 1000;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push('…');
    }
    let same = same_instances(&active.config.0, &manifest);
    let (info, revision) = insert_active(
        &mut tx,
        function,
        user,
        &active,
        &image,
        &manifest,
        VersionKind::Config,
        &note,
    )
    .await?;
    tx.commit().await?;
    Ok(Derived {
        info,
        revision,
        same_instances: same,
    })
}

/// Inserts the next version as the active one (the previous active one
/// superseded), points the function at it and bumps the route revision.
#[allow(clippy::too_many_arguments)]
async fn insert_active(
    tx: &mut Transaction<'_, Postgres>,
    function: i64,
    user: i64,
    source: &VersionRow,
    image: &str,
    manifest: &Manifest,
    kind: VersionKind,
    note: &str,
) -> Result<(VersionInfo, i64)> {
    let version: i32 = sqlx::query_scalar(
        "UPDATE functions SET last_version = last_version + 1 WHERE id = $1 RETURNING last_version",
    )
    .bind(function)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE deployments SET status = 'superseded' WHERE function_id = $1 AND status = 'active'",
    )
    .bind(function)
    .execute(&mut **tx)
    .await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO deployments (function_id, version, digest, artifact, image, config, status, \
                                  created_by, finished_at, kind, source_version, note) \
         VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, now(), $8, $9, $10) RETURNING id",
    )
    .bind(function)
    .bind(version)
    .bind(&source.digest)
    .bind(&source.artifact)
    .bind(image)
    .bind(sqlx::types::Json(manifest))
    .bind(user)
    .bind(kind.as_str())
    .bind(source.version)
    .bind(note)
    .fetch_one(&mut **tx)
    .await?;
    let visibility = match manifest.visibility {
        containerpub_wire::manifest::Visibility::Public => "public",
        containerpub_wire::manifest::Visibility::Private => "private",
    };
    sqlx::query(
        "UPDATE functions SET active_deployment_id = $2, config = $3, visibility = $4, \
                updated_at = now() WHERE id = $1",
    )
    .bind(function)
    .bind(id)
    .bind(sqlx::types::Json(manifest))
    .bind(visibility)
    .execute(&mut **tx)
    .await?;
    let revision = db::bump_revision(tx).await?;
    let info = row_by_id(tx, id).await?.into_info()?;
    Ok((info, revision))
}

/// What retention removed from the database.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub versions: Vec<i32>,
    /// Images no remaining row references.
    pub images: Vec<String>,
    /// Artifacts of the deleted rows (removed by `gc` unless still used).
    pub artifacts: Vec<String>,
}

/// Deletes the rows of `name` beyond the newest `keep` versions, except the
/// active one, the default rollback target and rows being built; returns
/// what they leave unreferenced.
pub async fn prune_rows(
    db: &PgPool,
    images: &build::ImageNames,
    name: &str,
    keep: u32,
) -> Result<Pruned> {
    let mut tx = db.begin().await?;
    let Some((function, active_id)): Option<(i64, Option<i64>)> =
        sqlx::query_as("SELECT id, active_deployment_id FROM functions WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
    else {
        return Ok(Pruned::default());
    };
    let target = match active_id {
        Some(id) => {
            let active = row_by_id(&mut tx, id).await?;
            default_target(&mut tx, function, active.version).await?
        }
        None => None,
    };
    let doomed: Vec<(i32, i64, Option<String>, String)> = sqlx::query_as(
        "DELETE FROM deployments WHERE function_id = $1 AND status IN ('superseded', 'failed') \
           AND id IS DISTINCT FROM $2 AND version IS DISTINCT FROM $3 \
           AND version NOT IN (SELECT version FROM deployments WHERE function_id = $1 \
                               ORDER BY version DESC LIMIT $4) \
         RETURNING version, id, image, artifact",
    )
    .bind(function)
    .bind(active_id)
    .bind(target)
    .bind(i64::from(keep))
    .fetch_all(&mut *tx)
    .await?;
    let mut pruned = Pruned::default();
    for (version, id, image, artifact) in doomed {
        pruned.versions.push(version);
        pruned.artifacts.push(artifact);
        match image {
            Some(image) => pruned.images.push(image),
            // A failed version names no image, but its build may have made
            // one before failing (moved to the instances' store, then not
            // activated: a control plane that died in between, a move past
            // its time limit): by the name its build gave it.
            None => pruned.images.push(images.tag(name, version, id)),
        }
    }
    pruned.versions.sort_unstable();
    pruned.images.sort();
    pruned.images.dedup();
    pruned.artifacts.sort();
    pruned.artifacts.dedup();
    let mut unused = Vec::new();
    for image in pruned.images {
        let used: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM deployments WHERE image = $1)")
                .bind(&image)
                .fetch_one(&mut *tx)
                .await?;
        if !used {
            unused.push(image);
        }
    }
    pruned.images = unused;
    tx.commit().await?;
    Ok(pruned)
}

/// Applies the retention rule to `name` and removes what it frees (images,
/// then artifacts). Failures are logged: retention runs again after the
/// next activation.
pub async fn retain(state: &AppState, name: &str) {
    let keep = state.settings.keep_versions;
    let pruned = match prune_rows(&state.db, &state.images, name, keep).await {
        Ok(p) => p,
        Err(err) => {
            tracing::warn!(function = %name, %err, "retention failed");
            return;
        }
    };
    if pruned.versions.is_empty() {
        return;
    }
    tracing::info!(function = %name, versions = ?pruned.versions, images = pruned.images.len(), "old versions removed");
    for image in &pruned.images {
        if let Err(err) = gc::remove_image(&state.podman, image).await {
            tracing::warn!(%err, %image, "could not remove the image of an old version");
        }
    }
    let dir = state.settings.artifacts_dir();
    for artifact in &pruned.artifacts {
        if let Err(err) = gc::collect_artifact(&state.db, &dir, artifact).await {
            tracing::warn!(err = format!("{err:#}"), %artifact, "could not remove the artifact of an old version");
        }
    }
}
