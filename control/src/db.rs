//! PostgreSQL access: the pool, embedded migrations, and every query the
//! control plane runs (runtime-checked `sqlx::query*` with binds).

use std::time::Duration;

use chrono::{DateTime, Utc};
use containerpub_wire::Manifest;
use containerpub_wire::api::{DeploymentInfo, DeploymentStatus, Route, RouteTable};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres, Transaction};

/// Channel notified (payload: the new revision) whenever routes change.
pub const ROUTES_CHANNEL: &str = "cpub_routes";

/// Every migration in `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Connections of the control plane's pool.
pub const MAX_CONNECTIONS: u32 = 16;

/// Opens the pool (failing fast when the database is unreachable).
pub async fn connect(url: &str) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
}

/// A transaction at READ COMMITTED whatever the database's default: the
/// credential changes that rely on a statement seeing what committed while
/// it waited on a row lock (`routes::users::set_password`, `set_role`,
/// `routes::tokens::create`) take theirs from here.
pub async fn begin_read_committed(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// A function as stored, with its owner's name and active version.
#[derive(Debug, sqlx::FromRow)]
pub struct FunctionRow {
    pub id: i64,
    pub name: String,
    pub owner: String,
    pub active_version: Option<i32>,
    pub config: Option<sqlx::types::Json<Manifest>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The select list of [`FunctionRow`], as a macro so `concat!` can build
/// `&'static str` queries from it.
macro_rules! function_select {
    () => {
        "SELECT f.id, f.name, u.username AS owner, d.version AS active_version, \
                f.config, f.created_at, f.updated_at \
         FROM functions f JOIN users u ON u.id = f.owner_id \
         LEFT JOIN deployments d ON d.id = f.active_deployment_id"
    };
}

pub async fn list_functions(pool: &PgPool) -> Result<Vec<FunctionRow>, sqlx::Error> {
    sqlx::query_as(concat!(function_select!(), " ORDER BY f.name"))
        .fetch_all(pool)
        .await
}

pub async fn get_function(pool: &PgPool, name: &str) -> Result<Option<FunctionRow>, sqlx::Error> {
    sqlx::query_as(concat!(function_select!(), " WHERE f.name = $1"))
        .bind(name)
        .fetch_optional(pool)
        .await
}

#[derive(Debug, sqlx::FromRow)]
struct DeploymentRow {
    id: i64,
    function: String,
    version: i32,
    status: String,
    digest: String,
    image: Option<String>,
    build_log: String,
    created_at: DateTime<Utc>,
}

impl DeploymentRow {
    fn into_info(self) -> Result<DeploymentInfo, sqlx::Error> {
        let status = DeploymentStatus::parse(&self.status).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown status {:?}", self.status).into())
        })?;
        Ok(DeploymentInfo {
            id: self.id,
            function: self.function,
            version: self.version,
            status,
            digest: self.digest,
            image: self.image,
            build_log: self.build_log,
            created_at: self.created_at,
        })
    }
}

/// Deployments of a function, newest first.
pub async fn list_deployments(
    pool: &PgPool,
    function: &str,
) -> Result<Vec<DeploymentInfo>, sqlx::Error> {
    let rows: Vec<DeploymentRow> = sqlx::query_as(
        "SELECT d.id, f.name AS function, d.version, d.status, d.digest, d.image, d.build_log, \
                d.created_at \
         FROM deployments d JOIN functions f ON f.id = d.function_id \
         WHERE f.name = $1 ORDER BY d.version DESC",
    )
    .bind(function)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(DeploymentRow::into_info).collect()
}

pub async fn get_deployment(pool: &PgPool, id: i64) -> Result<DeploymentInfo, sqlx::Error> {
    let row: DeploymentRow = sqlx::query_as(
        "SELECT d.id, f.name AS function, d.version, d.status, d.digest, d.image, d.build_log, \
                d.created_at \
         FROM deployments d JOIN functions f ON f.id = d.function_id WHERE d.id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await?;
    row.into_info()
}

/// A deployment row just created, status `building`.
#[derive(Debug, Clone, Copy)]
pub struct NewDeployment {
    pub function_id: i64,
    pub deployment_id: i64,
    pub version: i32,
}

/// Creates the function if new (owned by `owner_id`), takes the next version
/// under the function row's lock, and inserts the deployment as `building`.
/// `None` when the function exists, is owned by another user and `any_owner`
/// (the caller is an admin) is false: nothing is written then.
pub async fn create_deployment(
    pool: &PgPool,
    name: &str,
    owner_id: i64,
    any_owner: bool,
    manifest: &Manifest,
    digest: &str,
    artifact: &str,
) -> Result<Option<NewDeployment>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // One statement: insert or bump `last_version`, holding the row lock
    // until commit, so concurrent deploys get distinct versions.
    let row: Option<(i64, i32)> = sqlx::query_as(
        "INSERT INTO functions (name, owner_id, visibility, last_version) VALUES ($1, $2, $3, 1) \
         ON CONFLICT (name) DO UPDATE SET last_version = functions.last_version + 1 \
         WHERE $4 OR functions.owner_id = $2 \
         RETURNING id, last_version",
    )
    .bind(name)
    .bind(owner_id)
    .bind(visibility(manifest))
    .bind(any_owner)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((function_id, version)) = row else {
        return Ok(None);
    };
    let deployment_id: i64 = sqlx::query_scalar(
        "INSERT INTO deployments \
            (function_id, version, digest, artifact, config, status, created_by) \
         VALUES ($1, $2, $3, $4, $5, 'building', $6) RETURNING id",
    )
    .bind(function_id)
    .bind(version)
    .bind(digest)
    .bind(artifact)
    .bind(sqlx::types::Json(manifest))
    .bind(owner_id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(NewDeployment {
        function_id,
        deployment_id,
        version,
    }))
}

fn visibility(manifest: &Manifest) -> &'static str {
    match manifest.visibility {
        containerpub_wire::manifest::Visibility::Public => "public",
        containerpub_wire::manifest::Visibility::Private => "private",
    }
}

/// What activation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// This deployment now serves; the route revision was bumped.
    Activated { revision: i64 },
    /// A newer version became active while this one was building: this one
    /// is recorded as built but superseded.
    Outdated,
    /// The function was deleted while this one was building.
    FunctionGone,
}

/// In one transaction: marks the deployment active and the previous active
/// one superseded, updates the function, bumps the route revision and
/// notifies proxies.
pub async fn activate(
    pool: &PgPool,
    new: NewDeployment,
    manifest: &Manifest,
    image: &str,
    build_log: &str,
) -> Result<Activation, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let current: Option<(Option<i32>,)> = sqlx::query_as(
        "SELECT (SELECT version FROM deployments WHERE id = f.active_deployment_id) \
         FROM functions f WHERE f.id = $1 FOR UPDATE",
    )
    .bind(new.function_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((active_version,)) = current else {
        return Ok(Activation::FunctionGone);
    };
    if active_version.is_some_and(|v| v > new.version) {
        sqlx::query(
            "UPDATE deployments SET status = 'superseded', image = $2, build_log = $3, \
                    finished_at = now() WHERE id = $1",
        )
        .bind(new.deployment_id)
        .bind(image)
        .bind(build_log)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(Activation::Outdated);
    }
    sqlx::query(
        "UPDATE deployments SET status = 'superseded' WHERE function_id = $1 AND status = 'active'",
    )
    .bind(new.function_id)
    .execute(&mut *tx)
    .await?;
    let updated = sqlx::query(
        "UPDATE deployments SET status = 'active', image = $2, build_log = $3, finished_at = now() \
         WHERE id = $1",
    )
    .bind(new.deployment_id)
    .bind(image)
    .bind(build_log)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(Activation::FunctionGone);
    }
    sqlx::query(
        "UPDATE functions SET active_deployment_id = $2, config = $3, visibility = $4, \
                updated_at = now() WHERE id = $1",
    )
    .bind(new.function_id)
    .bind(new.deployment_id)
    .bind(sqlx::types::Json(manifest))
    .bind(visibility(manifest))
    .execute(&mut *tx)
    .await?;
    let revision = bump_revision(&mut tx).await?;
    tx.commit().await?;
    Ok(Activation::Activated { revision })
}

/// Records a failed build; the previous version stays active.
pub async fn mark_failed(
    pool: &PgPool,
    deployment_id: i64,
    build_log: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE deployments SET status = 'failed', build_log = $2, finished_at = now() \
         WHERE id = $1 AND status = 'building'",
    )
    .bind(deployment_id)
    .bind(build_log)
    .execute(pool)
    .await?;
    Ok(())
}

/// What deleting a function removed from the database.
#[derive(Debug)]
pub struct Deleted {
    /// Versions it had with their deployment ids (so their images can be
    /// removed, also those of failed builds, which no row names).
    pub versions: Vec<(i32, i64)>,
    /// Images its rows referenced (a rollback row may keep an image whose
    /// own version was removed by retention).
    pub images: Vec<String>,
    /// Artifact paths its deployments referenced (removed once no other
    /// deployment references them, see `gc`).
    pub artifacts: Vec<String>,
    /// The new route revision.
    pub revision: i64,
}

/// Deletes a function and its deployments (and their crash rows and log
/// lines), or
/// `None` if there was no such function.
pub async fn delete_function(pool: &PgPool, name: &str) -> Result<Option<Deleted>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let id: Option<i64> = sqlx::query_scalar("SELECT id FROM functions WHERE name = $1 FOR UPDATE")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(id) = id else {
        return Ok(None);
    };
    let rows: Vec<(i32, i64, String, Option<String>)> = sqlx::query_as(
        "SELECT version, id, artifact, image FROM deployments WHERE function_id = $1 \
         ORDER BY version",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    // Its log chunks have no foreign key (migrations 0009, 0010).
    sqlx::query("DELETE FROM function_log_chunks WHERE function_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM functions WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let revision = bump_revision(&mut tx).await?;
    tx.commit().await?;
    let versions = rows.iter().map(|(v, id, _, _)| (*v, *id)).collect();
    let mut images: Vec<String> = rows.iter().filter_map(|(_, _, _, i)| i.clone()).collect();
    images.sort();
    images.dedup();
    let mut artifacts: Vec<String> = rows.into_iter().map(|(_, _, a, _)| a).collect();
    artifacts.sort();
    artifacts.dedup();
    Ok(Some(Deleted {
        versions,
        images,
        artifacts,
        revision,
    }))
}

/// Increments the route revision and queues `NOTIFY cpub_routes` (sent at
/// commit). Returns the new revision.
pub async fn bump_revision(tx: &mut Transaction<'_, Postgres>) -> Result<i64, sqlx::Error> {
    let revision: i64 =
        sqlx::query_scalar("UPDATE route_revision SET revision = revision + 1 RETURNING revision")
            .fetch_one(&mut **tx)
            .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(ROUTES_CHANNEL)
        .bind(revision.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(revision)
}

pub async fn current_revision(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT revision FROM route_revision")
        .fetch_one(pool)
        .await
}

/// function, deployment id, version, image, config.
type RouteRow = (
    String,
    i64,
    i32,
    Option<String>,
    sqlx::types::Json<Manifest>,
);

/// The route table and its revision, read from one snapshot, with each
/// function's key digests and opened secrets (`crate::access`).
pub async fn route_table(
    pool: &PgPool,
    vault: &crate::vault::Vault,
) -> Result<RouteTable, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let revision: i64 = sqlx::query_scalar("SELECT revision FROM route_revision")
        .fetch_one(&mut *tx)
        .await?;
    let rows: Vec<RouteRow> = sqlx::query_as(
        "SELECT f.name, d.id, d.version, d.image, d.config \
             FROM functions f JOIN deployments d ON d.id = f.active_deployment_id \
             ORDER BY f.name",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut routes: Vec<Route> = rows
        .into_iter()
        .filter_map(|(function, deployment_id, version, image, config)| {
            Some(Route {
                function,
                deployment_id,
                version,
                image: image?,
                config: config.0,
                keys: Vec::new(),
                secrets: Vec::new(),
                signing_keys: Vec::new(),
            })
        })
        .collect();
    crate::access::fill_routes(&mut tx, vault, &mut routes).await?;
    crate::signing::fill_routes(&mut tx, vault, &mut routes).await?;
    tx.commit().await?;
    Ok(RouteTable { revision, routes })
}

/// Marks builds left `building` for longer than `older_than` as failed (a
/// control plane died mid-build). Returns how many.
pub async fn fail_stale_builds(pool: &PgPool, older_than: Duration) -> Result<u64, sqlx::Error> {
    let secs = older_than.as_secs_f64();
    Ok(sqlx::query(
        "UPDATE deployments SET status = 'failed', finished_at = now(), \
                build_log = build_log || 'build abandoned: the control plane stopped during the build\n' \
         WHERE status = 'building' AND created_at < now() - make_interval(secs => $1)",
    )
    .bind(secs)
    .execute(pool)
    .await?
    .rows_affected())
}
