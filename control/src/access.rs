//! Invocation keys and sealed secrets in the database (migration 0004), and
//! what the route table carries of them: the sha256 digests of each
//! function's live keys and its secrets, opened with the master key
//! (`vault.rs`). Every change bumps the route revision in its transaction,
//! so proxies learn a new or revoked key, or a changed secret, through the
//! route watch's long poll within milliseconds. Keys are a
//! [`Credential`] (`credentials.rs` creates, lists, revokes and carries
//! them); this file says what is particular to them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use containerpub_wire::api::Route;
use containerpub_wire::private::{
    KEY_PREFIX, KeyDigest, KeyInfo, MAX_KEYS_PER_FUNCTION, MAX_SECRETS_PER_FUNCTION, SecretInfo,
    SecretValue, SecretVar,
};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, Transaction};

use crate::credentials::{self, Credential, function_id, lock_function};
use crate::db;
use crate::error::{Error, Result};
use crate::vault::{Sealed, Vault};

/// Characters of a key kept to recognise it (`cpk_` + 4 hex digits).
const PREFIX_LEN: usize = KEY_PREFIX.len() + 4;

/// A new invocation key: `cpk_<64 hex>` (32 random bytes).
pub fn new_key() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

/// The digest stored and sent to proxies.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Invocation keys as a [`Credential`]: only a key's sha256 is stored
/// (`function_keys`) and carried (`Route.keys`); revoked by its numeric id.
pub struct InvocationKeys;

type KeyRow = (i64, String, String, DateTime<Utc>);

impl Credential for InvocationKeys {
    const SINGULAR: &'static str = "key";
    const PLURAL: &'static str = "keys";
    const MAX_LIVE: usize = MAX_KEYS_PER_FUNCTION;
    const COUNT_LIVE: &'static str =
        "SELECT count(*) FROM function_keys WHERE function_id = $1 AND revoked_at IS NULL";
    const LIST: &'static str = "SELECT id, label, prefix, created_at FROM function_keys \
         WHERE function_id = $1 AND revoked_at IS NULL ORDER BY id";
    const REVOKE: &'static str = "UPDATE function_keys SET revoked_at = now() \
         WHERE id = $1 AND function_id = $2 AND revoked_at IS NULL";
    const ROUTE_ROWS: &'static str = "SELECT f.name, k.key_hash FROM function_keys k \
         JOIN functions f ON f.id = k.function_id \
         WHERE k.revoked_at IS NULL ORDER BY f.name, k.id";

    type Id = i64;
    type Row = KeyRow;
    type Info = KeyInfo;
    type RouteRow = (String, String);
    type Carried = KeyDigest;

    fn info((id, label, prefix, created_at): KeyRow) -> KeyInfo {
        KeyInfo {
            id,
            label,
            prefix,
            created_at,
        }
    }

    /// The key itself is never stored: its sha256 and its prefix are.
    async fn insert(
        tx: &mut Transaction<'static, Postgres>,
        _vault: &Vault,
        function_id: i64,
        label: &str,
        created_by: Option<i64>,
    ) -> Result<(KeyRow, String)> {
        let key = new_key();
        let row: KeyRow = sqlx::query_as(
            "INSERT INTO function_keys (function_id, label, key_hash, prefix, created_by) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id, label, prefix, created_at",
        )
        .bind(function_id)
        .bind(label)
        .bind(hex::encode(key_digest(&key)))
        .bind(&key[..PREFIX_LEN])
        .bind(created_by)
        .fetch_one(&mut **tx)
        .await?;
        Ok((row, key))
    }

    fn function((function, _): &(String, String)) -> &str {
        function
    }

    /// A stored hash that is not one is left out.
    fn carried(_vault: &Vault, (_, hash): (String, String)) -> Option<KeyDigest> {
        KeyDigest::from_hex(&hash)
    }

    fn carry(route: &mut Route, digest: KeyDigest) {
        route.keys.push(digest);
    }
}

/// Seals and stores secret `key` of function `name` (replacing its value);
/// returns the new route revision.
pub async fn set_secret(
    pool: &PgPool,
    vault: &Vault,
    name: &str,
    key: &str,
    value: &str,
) -> Result<i64> {
    let mut tx = pool.begin().await?;
    let function_id = lock_function(&mut tx, name).await?;
    let (count, exists): (i64, bool) = sqlx::query_as(
        "SELECT count(*), coalesce(bool_or(name = $2), false) FROM function_secrets WHERE function_id = $1",
    )
    .bind(function_id)
    .bind(key)
    .fetch_one(&mut *tx)
    .await?;
    if !exists && count >= MAX_SECRETS_PER_FUNCTION as i64 {
        return Err(Error::Conflict(format!(
            "function {name:?} has {count} secrets, the most allowed"
        )));
    }
    let sealed = vault.seal(function_id, key, value)?;
    sqlx::query(
        "INSERT INTO function_secrets (function_id, name, key_id, nonce, ciphertext) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (function_id, name) DO UPDATE SET key_id = EXCLUDED.key_id, \
             nonce = EXCLUDED.nonce, ciphertext = EXCLUDED.ciphertext, updated_at = now()",
    )
    .bind(function_id)
    .bind(key)
    .bind(&sealed.key_id)
    .bind(&sealed.nonce)
    .bind(&sealed.ciphertext)
    .execute(&mut *tx)
    .await?;
    let revision = db::bump_revision(&mut tx).await?;
    tx.commit().await?;
    Ok(revision)
}

/// The secret names of function `name`.
pub async fn list_secrets(pool: &PgPool, name: &str) -> Result<Vec<SecretInfo>> {
    let function_id = function_id(pool, name).await?;
    let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT name, updated_at FROM function_secrets WHERE function_id = $1 ORDER BY name",
    )
    .bind(function_id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, updated_at)| SecretInfo { name, updated_at })
        .collect())
}

/// Removes secret `key` of function `name`; returns the new route revision.
pub async fn unset_secret(pool: &PgPool, name: &str, key: &str) -> Result<i64> {
    let mut tx = pool.begin().await?;
    let function_id = lock_function(&mut tx, name).await?;
    let done = sqlx::query("DELETE FROM function_secrets WHERE function_id = $1 AND name = $2")
        .bind(function_id)
        .bind(key)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound(format!(
            "function {name:?} has no secret {key}"
        )));
    }
    let revision = db::bump_revision(&mut tx).await?;
    tx.commit().await?;
    Ok(revision)
}

/// Fills each route's `keys` and `secrets` from the transaction that read
/// the routes (one snapshot). A secret that cannot be opened (its master
/// key is no longer listed) is left out and logged by name.
pub async fn fill_routes(
    tx: &mut Transaction<'_, Postgres>,
    vault: &Vault,
    routes: &mut [Route],
) -> Result<(), sqlx::Error> {
    credentials::fill_routes::<InvocationKeys>(tx, vault, routes).await?;
    type SecretRow = (String, i64, String, String, Vec<u8>, Vec<u8>);
    let secrets: Vec<SecretRow> = sqlx::query_as(
        "SELECT f.name, s.function_id, s.name, s.key_id, s.nonce, s.ciphertext \
         FROM function_secrets s JOIN functions f ON f.id = s.function_id \
         ORDER BY f.name, s.name",
    )
    .fetch_all(&mut **tx)
    .await?;
    let by_name: HashMap<String, usize> = routes
        .iter()
        .enumerate()
        .map(|(i, r)| (r.function.clone(), i))
        .collect();
    for (function, function_id, name, key_id, nonce, ciphertext) in secrets {
        let Some(&i) = by_name.get(&function) else {
            continue;
        };
        let sealed = Sealed {
            key_id,
            nonce,
            ciphertext,
        };
        match vault.open(function_id, &name, &sealed) {
            Ok(value) => routes[i].secrets.push(SecretVar {
                name,
                value: SecretValue(value),
            }),
            Err(err) => {
                tracing::error!(%function, secret = %name, err = format!("{err:#}"), "secret left out of the route table")
            }
        }
    }
    Ok(())
}
