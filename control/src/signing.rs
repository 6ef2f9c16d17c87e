//! HMAC signing keys in the database (migration 0008) and what the route
//! table carries of them. A proxy needs a signing key's secret itself to
//! check a signature, so the secret is sealed like a function secret
//! (`vault.rs`: ChaCha20-Poly1305 under the master key, the associated
//! data naming the function id and `signing-key/<key_id>`, which no secret
//! name can be) and opened into `Route.signing_keys` for live keys only. A
//! revoked key keeps its row with the ciphertext wiped. Every change bumps
//! the route revision in its transaction.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use containerpub_wire::api::Route;
use containerpub_wire::private::SecretValue;
use containerpub_wire::signing::{
    KEY_ID_PREFIX, MAX_SIGNING_KEYS_PER_FUNCTION, SECRET_PREFIX, SigningKey, SigningKeyInfo,
};
use rand::RngCore;
use sqlx::{PgPool, Postgres, Transaction};

use crate::db;
use crate::error::{Error, Result};
use crate::vault::{Sealed, Vault};

fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The name a signing key's secret is sealed under (the associated data).
fn sealed_name(key_id: &str) -> String {
    format!("signing-key/{key_id}")
}

async fn lock_function(tx: &mut Transaction<'_, Postgres>, name: &str) -> Result<i64> {
    sqlx::query_scalar("SELECT id FROM functions WHERE name = $1 FOR UPDATE")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| Error::NotFound(format!("function {name:?} not found")))
}

type InfoRow = (String, String, DateTime<Utc>);

fn info((key_id, label, created_at): InfoRow) -> SigningKeyInfo {
    SigningKeyInfo {
        key_id,
        label,
        created_at,
    }
}

/// Creates a signing key for function `name`: returns its row, its secret
/// (`cpss_<64 hex>`, answered once) and the new route revision.
pub async fn create(
    pool: &PgPool,
    vault: &Vault,
    name: &str,
    label: &str,
    created_by: Option<i64>,
) -> Result<(SigningKeyInfo, String, i64)> {
    let mut tx = pool.begin().await?;
    let function_id = lock_function(&mut tx, name).await?;
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM function_signing_keys WHERE function_id = $1 AND revoked_at IS NULL",
    )
    .bind(function_id)
    .fetch_one(&mut *tx)
    .await?;
    if live >= MAX_SIGNING_KEYS_PER_FUNCTION as i64 {
        return Err(Error::Conflict(format!(
            "function {name:?} has {live} live signing keys, the most allowed: revoke one first"
        )));
    }
    let key_id = format!("{KEY_ID_PREFIX}{}", random_hex::<8>());
    let secret = format!("{SECRET_PREFIX}{}", random_hex::<32>());
    let sealed = vault.seal(function_id, &sealed_name(&key_id), &secret)?;
    let row: InfoRow = sqlx::query_as(
        "INSERT INTO function_signing_keys \
             (function_id, key_id, label, master_key_id, nonce, ciphertext, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING key_id, label, created_at",
    )
    .bind(function_id)
    .bind(&key_id)
    .bind(label)
    .bind(&sealed.key_id)
    .bind(&sealed.nonce)
    .bind(&sealed.ciphertext)
    .bind(created_by)
    .fetch_one(&mut *tx)
    .await?;
    let revision = db::bump_revision(&mut tx).await?;
    tx.commit().await?;
    Ok((info(row), secret, revision))
}

/// The live signing keys of function `name`, oldest first.
pub async fn list(pool: &PgPool, name: &str) -> Result<Vec<SigningKeyInfo>> {
    let function_id: i64 = sqlx::query_scalar("SELECT id FROM functions WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("function {name:?} not found")))?;
    let rows: Vec<InfoRow> = sqlx::query_as(
        "SELECT key_id, label, created_at FROM function_signing_keys \
         WHERE function_id = $1 AND revoked_at IS NULL ORDER BY id",
    )
    .bind(function_id)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(info).collect())
}

/// Revokes signing key `key_id` of function `name` (its sealed secret is
/// wiped); returns the new route revision.
pub async fn revoke(pool: &PgPool, name: &str, key_id: &str) -> Result<i64> {
    let mut tx = pool.begin().await?;
    let function_id = lock_function(&mut tx, name).await?;
    let done = sqlx::query(
        "UPDATE function_signing_keys SET revoked_at = now(), ciphertext = '\\x'::bytea \
         WHERE key_id = $1 AND function_id = $2 AND revoked_at IS NULL",
    )
    .bind(key_id)
    .bind(function_id)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound(format!(
            "function {name:?} has no live signing key {key_id}"
        )));
    }
    let revision = db::bump_revision(&mut tx).await?;
    tx.commit().await?;
    Ok(revision)
}

/// Fills each route's `signing_keys` (live keys, opened) from the
/// transaction that read the routes. A key that cannot be opened is left
/// out and logged by its id.
pub async fn fill_routes(
    tx: &mut Transaction<'_, Postgres>,
    vault: &Vault,
    routes: &mut [Route],
) -> Result<(), sqlx::Error> {
    type Row = (String, i64, String, String, Vec<u8>, Vec<u8>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT f.name, k.function_id, k.key_id, k.master_key_id, k.nonce, k.ciphertext \
         FROM function_signing_keys k JOIN functions f ON f.id = k.function_id \
         WHERE k.revoked_at IS NULL ORDER BY f.name, k.id",
    )
    .fetch_all(&mut **tx)
    .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let by_name: HashMap<&str, usize> = routes
        .iter()
        .enumerate()
        .map(|(i, r)| (r.function.as_str(), i))
        .collect();
    let mut found = Vec::new();
    for (function, function_id, key_id, master_key_id, nonce, ciphertext) in rows {
        let Some(&i) = by_name.get(function.as_str()) else {
            continue;
        };
        let sealed = Sealed {
            key_id: master_key_id,
            nonce,
            ciphertext,
        };
        match vault.open(function_id, &sealed_name(&key_id), &sealed) {
            Ok(secret) => found.push((
                i,
                SigningKey {
                    id: key_id,
                    secret: SecretValue(secret),
                },
            )),
            Err(err) => {
                tracing::error!(%function, %key_id, err = format!("{err:#}"), "signing key left out of the route table")
            }
        }
    }
    for (i, key) in found {
        if let Some(route) = routes.get_mut(i) {
            route.signing_keys.push(key);
        }
    }
    Ok(())
}

/// Seals again, under the primary master key, every live signing key
/// sealed under another (master key rotation, as `vault::reseal_all` does
/// for secrets); returns how many.
pub async fn reseal_all(pool: &PgPool, vault: &Vault) -> anyhow::Result<u64> {
    type Row = (i64, i64, String, String, Vec<u8>, Vec<u8>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, function_id, key_id, master_key_id, nonce, ciphertext \
         FROM function_signing_keys WHERE revoked_at IS NULL AND master_key_id <> $1",
    )
    .bind(vault.primary_id())
    .fetch_all(pool)
    .await?;
    let mut done = 0;
    for (id, function_id, key_id, master_key_id, nonce, ciphertext) in rows {
        let sealed = Sealed {
            key_id: master_key_id,
            nonce,
            ciphertext,
        };
        let name = sealed_name(&key_id);
        let secret = match vault.open(function_id, &name, &sealed) {
            Ok(secret) => secret,
            Err(err) => {
                tracing::error!(%key_id, err = format!("{err:#}"), "cannot reseal a signing key");
                continue;
            }
        };
        let fresh = vault.seal(function_id, &name, &secret)?;
        let updated = sqlx::query(
            "UPDATE function_signing_keys SET master_key_id = $2, nonce = $3, ciphertext = $4 \
             WHERE id = $1 AND nonce = $5 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(&fresh.key_id)
        .bind(&fresh.nonce)
        .bind(&fresh.ciphertext)
        .bind(&sealed.nonce)
        .execute(pool)
        .await?;
        done += updated.rows_affected();
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_names_never_collide_with_secret_names() {
        let name = sealed_name("sk_0123456789abcdef");
        assert!(containerpub_wire::private::validate_secret_name(&name).is_err());
    }

    #[test]
    fn new_ids_and_secrets_have_their_shape() {
        let id = format!("{KEY_ID_PREFIX}{}", random_hex::<8>());
        assert!(containerpub_wire::signing::is_key_id_shaped(&id), "{id}");
        let secret = format!("{SECRET_PREFIX}{}", random_hex::<32>());
        assert_eq!(secret.len(), SECRET_PREFIX.len() + 64);
    }
}
