//! Users and API tokens: argon2 password hashes, random bearer tokens stored
//! only as sha256 hashes, first-start bootstrap of `admin`, and the
//! middleware that guards every `/api/v1` route but login.

use std::sync::LazyLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::error::{Error, Result};
use crate::state::AppState;

/// Name of the user created on first start.
pub const ADMIN_USER: &str = "admin";
/// Prefix of every generated API token.
pub const TOKEN_PREFIX: &str = "cpub_";

/// The authenticated caller, put into request extensions by [`require_token`].
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: i64,
    pub username: String,
}

/// 32 random bytes as hex.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A new API token: `cpub_<64 hex>`.
pub fn new_token() -> String {
    format!("{TOKEN_PREFIX}{}", random_hex())
}

/// What is stored for a token: its sha256 as hex.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// argon2id PHC string of a password (CPU-heavy: call off the async threads).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    Ok(hash.to_string())
}

/// Checks a password against a stored PHC string (CPU-heavy).
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| {
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

/// A hash verified when the user does not exist, so that an unknown user
/// and a wrong password take the same time.
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password("not a real password").expect("argon2 of a constant"));

/// Checks credentials; `None` for an unknown user and a wrong password alike.
pub async fn check_login(pool: &PgPool, username: &str, password: &str) -> Result<Option<i64>> {
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT id, password_hash FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(pool)
            .await?;
    let password = password.to_owned();
    let found = row.is_some();
    let (id, phc) = row.unwrap_or((0, String::new()));
    let ok = tokio::task::spawn_blocking(move || {
        let phc = if found { phc } else { DUMMY_HASH.clone() };
        verify_password(&password, &phc) && found
    })
    .await
    .map_err(|e| anyhow::anyhow!("password check task: {e}"))?;
    Ok(ok.then_some(id))
}

/// Creates and stores a new token for a user; returns the token (shown once).
pub async fn issue_token(pool: &PgPool, user_id: i64, kind: &str) -> Result<String> {
    let token = new_token();
    sqlx::query("INSERT INTO api_tokens (user_id, token_hash, kind) VALUES ($1, $2, $3)")
        .bind(user_id)
        .bind(token_hash(&token))
        .bind(kind)
        .execute(pool)
        .await?;
    Ok(token)
}

/// Secrets generated at first start, to be printed once on stdout.
#[derive(Debug, Default)]
pub struct Bootstrapped {
    pub admin_password: Option<String>,
    pub token: Option<String>,
}

/// First start (no users): creates `admin` and an API token. Later starts:
/// stores `bootstrap_token` for `admin` if its hash is not stored yet.
/// Serialised across replicas by an advisory lock.
pub async fn bootstrap(
    pool: &PgPool,
    admin_password: Option<&str>,
    bootstrap_token: Option<&str>,
) -> anyhow::Result<Bootstrapped> {
    const LOCK_KEY: i64 = 0x6370_7562_0001; // "cpub" + 1
    let mut out = Bootstrapped::default();
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut *tx)
        .await?;
    if users == 0 {
        let password = match admin_password {
            Some(p) => p.to_owned(),
            None => {
                let p = random_hex()[..24].to_owned();
                out.admin_password = Some(p.clone());
                p
            }
        };
        let phc = tokio::task::spawn_blocking(move || hash_password(&password)).await??;
        let admin_id: i64 = sqlx::query_scalar(
            "INSERT INTO users (username, password_hash) VALUES ($1, $2) RETURNING id",
        )
        .bind(ADMIN_USER)
        .bind(phc)
        .fetch_one(&mut *tx)
        .await?;
        let token = match bootstrap_token {
            Some(t) => t.to_owned(),
            None => {
                let t = new_token();
                out.token = Some(t.clone());
                t
            }
        };
        sqlx::query(
            "INSERT INTO api_tokens (user_id, token_hash, kind) VALUES ($1, $2, 'bootstrap')",
        )
        .bind(admin_id)
        .bind(token_hash(&token))
        .execute(&mut *tx)
        .await?;
        tracing::info!(
            user = ADMIN_USER,
            "created the first user and its API token"
        );
    } else if let Some(token) = bootstrap_token {
        let added = sqlx::query(
            "INSERT INTO api_tokens (user_id, token_hash, kind) \
             SELECT id, $2, 'bootstrap' FROM users WHERE username = $1 \
             ON CONFLICT (token_hash) DO NOTHING",
        )
        .bind(ADMIN_USER)
        .bind(token_hash(token))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if added > 0 {
            tracing::info!(user = ADMIN_USER, "stored the configured bootstrap token");
        }
    }
    tx.commit().await?;
    Ok(out)
}

/// Finds the user of a bearer token, and records its use (at most once a
/// minute, so the long poll does not write on every call).
pub async fn caller_for_token(pool: &PgPool, token: &str) -> Result<Option<Caller>> {
    let row: Option<(i64, i64, String, bool)> = sqlx::query_as(
        "SELECT t.id, u.id, u.username, \
                (t.last_used_at IS NULL OR t.last_used_at < now() - interval '60 seconds') \
         FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1",
    )
    .bind(token_hash(token))
    .fetch_optional(pool)
    .await?;
    let Some((token_id, user_id, username, stale)) = row else {
        return Ok(None);
    };
    if stale {
        sqlx::query("UPDATE api_tokens SET last_used_at = now() WHERE id = $1")
            .bind(token_id)
            .execute(pool)
            .await?;
    }
    Ok(Some(Caller { user_id, username }))
}

/// Middleware: `Authorization: Bearer <token>` or 401.
pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response> {
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            Error::Unauthorized("missing Authorization: Bearer <token> header".into())
        })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Error::Unauthorized("Authorization header must be \"Bearer <token>\"".into())
        })?;
    let caller = caller_for_token(&state.db, token)
        .await?
        .ok_or_else(|| Error::Unauthorized("invalid or revoked API token".into()))?;
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_round_trip() {
        let phc = hash_password("s3cret").unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify_password("s3cret", &phc));
        assert!(!verify_password("S3cret", &phc));
        assert!(!verify_password("s3cret", "garbage"));
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        let h = token_hash(&a);
        assert_eq!(h.len(), 64);
        assert!(!h.contains(&a[TOKEN_PREFIX.len()..]));
        assert_eq!(h, token_hash(&a));
    }
}
