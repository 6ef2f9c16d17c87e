//! Per-function credentials in the database: what invocation keys
//! (`access.rs`, `function_keys`) and HMAC signing keys (`signing.rs`,
//! `function_signing_keys`) have in common. Each is created under a cap of
//! live ones (its secret answered once), listed without its secret,
//! revoked (the row kept), and carried to proxies in the route table for
//! live ones only. The operations are written once here; a kind supplies
//! its SQL, its rows and how it mints, names and carries a credential
//! ([`Credential`]). Every change locks the function's row and bumps the
//! route revision in its transaction.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;

use containerpub_wire::api::Route;
use sqlx::postgres::PgRow;
use sqlx::{Encode, FromRow, PgPool, Postgres, Transaction, Type};

use crate::db;
use crate::error::{Error, Result};
use crate::vault::Vault;

/// The kind-specific parts of a per-function credential.
pub trait Credential {
    /// Its name in messages, one and several (`key`, `keys`).
    const SINGULAR: &'static str;
    const PLURAL: &'static str;
    /// How many live ones a function may have.
    const MAX_LIVE: usize;
    /// SQL: the number of live ones of function `$1`.
    const COUNT_LIVE: &'static str;
    /// SQL: the [`Self::Row`]s of the live ones of function `$1`, oldest
    /// first.
    const LIST: &'static str;
    /// SQL: revokes live credential `$1` of function `$2`.
    const REVOKE: &'static str;
    /// SQL: the [`Self::RouteRow`]s of every live one, by function name
    /// and then oldest first.
    const ROUTE_ROWS: &'static str;

    /// The id a caller revokes it by.
    type Id: for<'q> Encode<'q, Postgres> + Type<Postgres> + Display + Clone + Send + Sync;
    /// A row as [`Self::LIST`] and the insert return it.
    type Row: for<'r> FromRow<'r, PgRow> + Send + Unpin;
    /// What the API lists (never the secret).
    type Info;
    /// A row as [`Self::ROUTE_ROWS`] returns it.
    type RouteRow: for<'r> FromRow<'r, PgRow> + Send + Unpin;
    /// What a route carries of one.
    type Carried;

    fn info(row: Self::Row) -> Self::Info;

    /// Mints a new credential of function `function_id` and inserts its
    /// row; returns the row and the secret (answered once, never stored
    /// in the clear).
    fn insert<'a>(
        tx: &'a mut Transaction<'static, Postgres>,
        vault: &'a Vault,
        function_id: i64,
        label: &'a str,
        created_by: Option<i64>,
    ) -> impl Future<Output = Result<(Self::Row, String)>> + Send + 'a;

    /// The function a route row belongs to.
    fn function(row: &Self::RouteRow) -> &str;

    /// What a route carries of a row, or `None` (logged) when it cannot
    /// be carried.
    fn carried(vault: &Vault, row: Self::RouteRow) -> Option<Self::Carried>;

    fn carry(route: &mut Route, carried: Self::Carried);
}

/// The id of function `name`, locked for the transaction (so a delete or
/// another change waits), or 404.
pub(crate) async fn lock_function(tx: &mut Transaction<'_, Postgres>, name: &str) -> Result<i64> {
    sqlx::query_scalar("SELECT id FROM functions WHERE name = $1 FOR UPDATE")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| Error::NotFound(format!("function {name:?} not found")))
}

/// The id of function `name`, or 404.
pub(crate) async fn function_id(pool: &PgPool, name: &str) -> Result<i64> {
    sqlx::query_scalar("SELECT id FROM functions WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("function {name:?} not found")))
}

/// Creates a credential for function `name`: returns its row, its secret
/// (answered once) and the new route revision. A conflict once the
/// function has [`Credential::MAX_LIVE`] live ones.
pub async fn create<C: Credential>(
    pool: &PgPool,
    vault: &Vault,
    name: &str,
    label: &str,
    created_by: Option<i64>,
) -> Result<(C::Info, String, i64)> {
    let mut tx = pool.begin().await?;
    let function_id = lock_function(&mut tx, name).await?;
    let live: i64 = sqlx::query_scalar(C::COUNT_LIVE)
        .bind(function_id)
        .fetch_one(&mut *tx)
        .await?;
    if live >= C::MAX_LIVE as i64 {
        return Err(Error::Conflict(format!(
            "function {name:?} has {live} live {}, the most allowed: revoke one first",
            C::PLURAL
        )));
    }
    let (row, secret) = C::insert(&mut tx, vault, function_id, label, created_by).await?;
    let revision = db::bump_revision(&mut tx).await?;
    tx.commit().await?;
    Ok((C::info(row), secret, revision))
}

/// The live credentials of function `name`, oldest first.
pub async fn list<C: Credential>(pool: &PgPool, name: &str) -> Result<Vec<C::Info>> {
    let function_id = function_id(pool, name).await?;
    let rows: Vec<C::Row> = sqlx::query_as(C::LIST)
        .bind(function_id)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(C::info).collect())
}

/// Revokes credential `id` of function `name`; returns the new route
/// revision, or 404 when the function has no such live one.
pub async fn revoke<C: Credential>(pool: &PgPool, name: &str, id: &C::Id) -> Result<i64> {
    let mut tx = pool.begin().await?;
    let function_id = lock_function(&mut tx, name).await?;
    let done = sqlx::query(C::REVOKE)
        .bind(id.clone())
        .bind(function_id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound(format!(
            "function {name:?} has no live {} {id}",
            C::SINGULAR
        )));
    }
    let revision = db::bump_revision(&mut tx).await?;
    tx.commit().await?;
    Ok(revision)
}

/// Fills each route with what it carries of its function's live
/// credentials, from the transaction that read the routes (one snapshot).
pub async fn fill_routes<C: Credential>(
    tx: &mut Transaction<'_, Postgres>,
    vault: &Vault,
    routes: &mut [Route],
) -> Result<(), sqlx::Error> {
    let rows: Vec<C::RouteRow> = sqlx::query_as(C::ROUTE_ROWS).fetch_all(&mut **tx).await?;
    if rows.is_empty() {
        return Ok(());
    }
    let by_name: HashMap<&str, usize> = routes
        .iter()
        .enumerate()
        .map(|(i, r)| (r.function.as_str(), i))
        .collect();
    let mut found = Vec::new();
    for row in rows {
        let Some(&i) = by_name.get(C::function(&row)) else {
            continue;
        };
        if let Some(carried) = C::carried(vault, row) {
            found.push((i, carried));
        }
    }
    for (i, carried) in found {
        if let Some(route) = routes.get_mut(i) {
            C::carry(route, carried);
        }
    }
    Ok(())
}
