//! HMAC signing keys in the database (migration 0008) and what the route
//! table carries of them. A proxy needs a signing key's secret itself to
//! check a signature, so the secret is sealed like a function secret
//! (`vault.rs`: ChaCha20-Poly1305 under the master key, the associated
//! data naming the function id and `signing-key/<key_id>`, which no secret
//! name can be) and opened into `Route.signing_keys` for live keys only. A
//! revoked key keeps its row with the ciphertext wiped. Every change bumps
//! the route revision in its transaction. Signing keys are a
//! [`Credential`] (`credentials.rs` creates, lists, revokes and carries
//! them); this file says what is particular to them.

use chrono::{DateTime, Utc};
use containerpub_wire::api::Route;
use containerpub_wire::private::SecretValue;
use containerpub_wire::signing::{
    KEY_ID_PREFIX, MAX_SIGNING_KEYS_PER_FUNCTION, SECRET_PREFIX, SigningKey, SigningKeyInfo,
};
use rand::RngCore;
use sqlx::{PgPool, Postgres, Transaction};

use crate::credentials::{self, Credential};
use crate::error::Result;
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

/// HMAC signing keys as a [`Credential`]: the secret is stored sealed
/// (`function_signing_keys`) and carried opened (`Route.signing_keys`);
/// revoked by its key id, which wipes the ciphertext.
pub struct SigningKeys;

type InfoRow = (String, String, DateTime<Utc>);

type RouteRow = (String, i64, String, String, Vec<u8>, Vec<u8>);

impl Credential for SigningKeys {
    const SINGULAR: &'static str = "signing key";
    const PLURAL: &'static str = "signing keys";
    const MAX_LIVE: usize = MAX_SIGNING_KEYS_PER_FUNCTION;
    const COUNT_LIVE: &'static str =
        "SELECT count(*) FROM function_signing_keys WHERE function_id = $1 AND revoked_at IS NULL";
    const LIST: &'static str = "SELECT key_id, label, created_at FROM function_signing_keys \
         WHERE function_id = $1 AND revoked_at IS NULL ORDER BY id";
    const REVOKE: &'static str = "UPDATE function_signing_keys SET revoked_at = now(), ciphertext = '\\x'::bytea \
         WHERE key_id = $1 AND function_id = $2 AND revoked_at IS NULL";
    const ROUTE_ROWS: &'static str = "SELECT f.name, k.function_id, k.key_id, k.master_key_id, k.nonce, k.ciphertext \
         FROM function_signing_keys k JOIN functions f ON f.id = k.function_id \
         WHERE k.revoked_at IS NULL ORDER BY f.name, k.id";

    type Id = String;
    type Row = InfoRow;
    type Info = SigningKeyInfo;
    type RouteRow = RouteRow;
    type Carried = SigningKey;

    fn info((key_id, label, created_at): InfoRow) -> SigningKeyInfo {
        SigningKeyInfo {
            key_id,
            label,
            created_at,
        }
    }

    /// A key id `sk_<16 hex>` and a secret `cpss_<64 hex>`, sealed.
    async fn insert(
        tx: &mut Transaction<'static, Postgres>,
        vault: &Vault,
        function_id: i64,
        label: &str,
        created_by: Option<i64>,
    ) -> Result<(InfoRow, String)> {
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
        .fetch_one(&mut **tx)
        .await?;
        Ok((row, secret))
    }

    fn function(row: &RouteRow) -> &str {
        &row.0
    }

    /// A key that cannot be opened is left out and logged by its id.
    fn carried(
        vault: &Vault,
        (function, function_id, key_id, master_key_id, nonce, ciphertext): RouteRow,
    ) -> Option<SigningKey> {
        let sealed = Sealed {
            key_id: master_key_id,
            nonce,
            ciphertext,
        };
        match vault.open(function_id, &sealed_name(&key_id), &sealed) {
            Ok(secret) => Some(SigningKey {
                id: key_id,
                secret: SecretValue(secret),
            }),
            Err(err) => {
                tracing::error!(%function, %key_id, err = format!("{err:#}"), "signing key left out of the route table");
                None
            }
        }
    }

    fn carry(route: &mut Route, key: SigningKey) {
        route.signing_keys.push(key);
    }
}

/// Fills each route's `signing_keys` (live keys, opened) from the
/// transaction that read the routes.
pub async fn fill_routes(
    tx: &mut Transaction<'_, Postgres>,
    vault: &Vault,
    routes: &mut [Route],
) -> Result<(), sqlx::Error> {
    credentials::fill_routes::<SigningKeys>(tx, vault, routes).await
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
        let Some(fresh) = vault.reseal(
            function_id,
            &name,
            &sealed,
            &format!("signing key {key_id}"),
        )?
        else {
            continue;
        };
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
