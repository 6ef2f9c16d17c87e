//! A user's API tokens: `GET /api/v1/tokens[?all=true]`, `POST
//! /api/v1/tokens` (the token is in the answer, once; only its sha256 is
//! stored) and `DELETE /api/v1/tokens/{id}` (revocation: the row goes, so
//! the next call with it is a 401 — nothing caches tokens).
//!
//! Any user manages its own tokens; admins list (`all`) and revoke anyone's.
//! A new token's scope can only narrow: it is at most the calling token's
//! effective role, so a narrowed token cannot mint a wider one. Nor can it
//! outlive the calling token: a token that expires may only create tokens
//! that expire no later than itself ([`within_caller_expiry`]); asking for
//! a later expiry, or for none, is a 400 naming `expires` and the latest
//! time allowed. Refused, not cut short: a script that asked for `30d`
//! would not otherwise learn that its token dies tomorrow. A login's
//! token expires too (`CPUB_LOGIN_TOKEN_LIFETIME`): the user's password in
//! the request (`password`, checked and counted as a login attempt) lifts
//! the bound, as a login with it could, so a leaked login token alone
//! mints no token that outlives it; without a password, a token that never
//! expires comes only from one that does not (the bootstrap token, or a
//! token created without an expiry). A token made from a login without the
//! password belongs to that login (`login_id`, migration 0020): it goes
//! when the login is revoked, by a password change too.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use containerpub_wire::access::{
    CreatedToken, NewToken, Role, TokenInfo, TokenQuery, parse_duration, validate_token_name,
};

use crate::auth::{self, Action, Caller, PeerAddr};
use crate::error::{Error, Result};
use crate::routes::users::{check_own_password, parse_body};
use crate::routes::watch::query_error;
use crate::state::AppState;

type TokenRow = (
    i64,
    String,
    String,
    String,
    Option<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

/// A token's expiry; `None`: it never expires.
type Expiry = Option<DateTime<Utc>>;

/// The select list of [`TokenRow`], for `concat!`.
macro_rules! token_select {
    () => {
        "SELECT t.id, u.username, t.name, t.kind, t.role_scope, t.created_at, t.expires_at, \
                t.last_used_at \
         FROM api_tokens t JOIN users u ON u.id = t.user_id"
    };
}

fn token_info(row: TokenRow, caller: &Caller) -> Result<TokenInfo> {
    let (id, username, name, kind, scope, created_at, expires_at, last_used_at) = row;
    Ok(TokenInfo {
        id,
        username,
        name,
        kind,
        role_scope: scope
            .as_deref()
            .map(Role::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("api_tokens.role_scope: {e}"))?,
        created_at,
        expires_at,
        last_used_at,
        current: id == caller.token_id,
    })
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: std::result::Result<Query<TokenQuery>, QueryRejection>,
) -> Result<Json<Vec<TokenInfo>>> {
    caller.require(Action::ManageOwnAccount, None)?;
    let Query(query) = query.map_err(|e| query_error(&e))?;
    let (user_id, _) = caller.user()?;
    let rows: Vec<TokenRow> = if query.all {
        caller.require(Action::ManageUsers, None)?;
        sqlx::query_as(concat!(token_select!(), " ORDER BY u.username, t.id"))
            .fetch_all(&state.db)
            .await?
    } else {
        sqlx::query_as(concat!(
            token_select!(),
            " WHERE t.user_id = $1 ORDER BY t.id"
        ))
        .bind(user_id)
        .fetch_all(&state.db)
        .await?
    };
    Ok(Json(
        rows.into_iter()
            .map(|r| token_info(r, &caller))
            .collect::<Result<_>>()?,
    ))
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    peer: PeerAddr,
    body: Bytes,
) -> Result<(StatusCode, Json<CreatedToken>)> {
    caller.require(Action::ManageOwnAccount, None)?;
    let (user_id, username) = caller.user()?;
    let new: NewToken = if body.is_empty() {
        NewToken::default()
    } else {
        parse_body(
            &body,
            r#"{"name": "…", "expires": "30d", "role_scope": "viewer|developer|admin", "password": "…"}"#,
        )?
    };
    let name = new.name.unwrap_or_else(|| "token".to_owned());
    validate_token_name(&name).map_err(|m| Error::bad_request("name", m))?;
    let lifetime = new
        .expires
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|m| Error::bad_request("expires", m))?
        .map(chrono::TimeDelta::from_std)
        .transpose()
        .map_err(|e| Error::bad_request("expires", e.to_string()))?;
    let effective = caller.role().unwrap_or(Role::Viewer);
    let scope = match new.role_scope {
        Some(scope) if scope > effective => {
            return Err(Error::bad_request(
                "role_scope",
                format!(
                    "a token's scope can only narrow: this token may act as {effective}, \
                     not {scope}"
                ),
            ));
        }
        Some(scope) => Some(scope),
        // A narrowed token mints tokens no wider than itself.
        None if Some(effective) != caller_user_role(&caller) => Some(effective),
        None => None,
    };
    // The new token's expiry and the calling token's, by the database's
    // clock (the one that decides expiry, `auth::caller_for_token`).
    // The user's password, when given, is checked; it lifts the expiry
    // bound (a login with it could make such a token) and makes the token
    // one of its own rather than its login's.
    let confirmed = match new.password.as_deref() {
        Some(password) => {
            check_own_password(&state, &peer, username, password).await?;
            true
        }
        None => false,
    };
    let (caller_expires_at, now) = auth::token_expiry(&state.db, caller.token_id).await?;
    let expires_at = lifetime.map(|lifetime| now + lifetime);
    if !confirmed && let Err(outlived) = within_caller_expiry(expires_at, caller_expires_at, now) {
        return Err(Error::bad_request(
            "expires",
            format!(
                "a token cannot outlive the token that creates it: {outlived}; ask for \
                 \"expires\": \"{}s\" or less, or confirm with your password \
                 (\"password\"; `cpub token create` asks for it)",
                outlived.left_s
            ),
        ));
    }
    // Under the user's row, shared: a password change (which updates it,
    // then revokes the logins and, by cascade, what they made) either
    // commits first, and the calling login is found gone (401), or waits
    // for this token, and revokes it with its login.
    let mut tx = crate::db::begin_read_committed(&state.db).await?;
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR SHARE")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let calling: Option<(String, Option<i64>)> =
        sqlx::query_as("SELECT kind, login_id FROM api_tokens WHERE id = $1")
            .bind(caller.token_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((kind, login_id)) = calling else {
        return Err(Error::Unauthorized("invalid or revoked API token".into()));
    };
    let login_id = match (confirmed, kind.as_str()) {
        (true, _) => None,
        (false, auth::LOGIN_KIND) => Some(caller.token_id),
        (false, _) => login_id,
    };
    let token = auth::new_token();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO api_tokens (user_id, token_hash, kind, name, role_scope, expires_at, login_id) \
         VALUES ($1, $2, 'token', $3, $4, $5, $6) RETURNING id",
    )
    .bind(user_id)
    .bind(auth::token_hash(&token))
    .bind(&name)
    .bind(scope.map(Role::as_str))
    .bind(expires_at)
    .bind(login_id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let row: TokenRow = sqlx::query_as(concat!(token_select!(), " WHERE t.id = $1"))
        .bind(id)
        .fetch_one(&state.db)
        .await?;
    tracing::info!(user = %username, token = id, %name, scope = ?scope, "token created");
    let info = token_info(row, &caller)?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token, info })))
}

/// Why a credential may not be created by the calling token: it would
/// outlive it. Displays as "this token expires at … (in … s), and … was
/// asked"; each caller words the rest (what to ask for instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outlived {
    /// When the calling token expires.
    pub limit: DateTime<Utc>,
    /// Seconds it has left (0 once past).
    pub left_s: i64,
    /// The expiry asked for (`None`: none).
    pub asked: Expiry,
}

impl std::fmt::Display for Outlived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let asked = self.asked.map_or_else(
            || "no expiry".to_owned(),
            |at| format!("an expiry at {}", at.format("%Y-%m-%d %H:%M:%S UTC")),
        );
        write!(
            f,
            "this token expires at {} (in {} s), and {asked} was asked",
            self.limit.format("%Y-%m-%d %H:%M:%S UTC"),
            self.left_s
        )
    }
}

/// A credential expiring at `expires_at` (`None`: never) may be created by
/// a token expiring at `caller_expires_at`, at `now`: a token that expires
/// creates none that outlives it, so a leaked short-lived token cannot
/// mint a lasting one (what it minted before its revocation still works,
/// but only until it would have expired itself). The one rule for API
/// tokens (a 400 on `expires`) and node credentials, which never expire
/// (a 403, `routes::nodes::create`).
pub(crate) fn within_caller_expiry(
    expires_at: Expiry,
    caller_expires_at: Expiry,
    now: DateTime<Utc>,
) -> std::result::Result<(), Outlived> {
    let Some(limit) = caller_expires_at else {
        return Ok(());
    };
    if expires_at.is_some_and(|at| at <= limit) {
        return Ok(());
    }
    Err(Outlived {
        limit,
        left_s: (limit - now).num_seconds().max(0),
        asked: expires_at,
    })
}

fn caller_user_role(caller: &Caller) -> Option<Role> {
    match &caller.principal {
        auth::Principal::User { role, .. } => Some(*role),
        auth::Principal::Node { .. } => None,
    }
}

pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    caller.require(Action::ManageOwnAccount, None)?;
    let (user_id, _) = caller.user()?;
    let id: i64 = id.parse().map_err(|_| {
        Error::bad_request("id", format!("must be a token id (a number), got {id:?}"))
    })?;
    let owner: Option<(i64, String)> = sqlx::query_as(
        "SELECT u.id, u.username FROM api_tokens t JOIN users u ON u.id = t.user_id \
         WHERE t.id = $1",
    )
    .bind(id)
    .fetch_optional(&state.db)
    .await?;
    let (owner_id, owner) = owner.ok_or_else(|| Error::NotFound(format!("no token {id}")))?;
    if owner_id != user_id && !caller.is_admin() {
        return Err(Error::Forbidden(format!(
            "token {id} belongs to user {owner}; only admins revoke other users' tokens"
        )));
    }
    sqlx::query("DELETE FROM api_tokens WHERE id = $1")
        .bind(id)
        .execute(&state.db)
        .await?;
    tracing::info!(token = id, user = %owner, by = %caller.name(), "token revoked");
    Ok(StatusCode::NO_CONTENT)
}
