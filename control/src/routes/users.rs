//! Users (admins only, but a user's own password): `GET` and `POST
//! /api/v1/users`, `DELETE /api/v1/users/{username}`, `PUT
//! /api/v1/users/{username}/role` and `PUT /api/v1/users/{username}/password`.
//!
//! Two guards keep the platform manageable: the last admin can be neither
//! removed nor demoted (the admin rows are locked while counting), and a
//! user who owns functions cannot be removed (delete them first; functions
//! are never orphaned). Removing a user revokes its tokens (rows cascade).
//! Changing a password revokes the user's login tokens (kind `login`), in
//! the same transaction, but the calling token when the user changes its
//! own; with them go the tokens they made without the password (by
//! cascade: `api_tokens.login_id`); the tokens made with the password, or
//! from a token without a login behind it, stay.
//!
//! What an admin sets here outlives the token it uses: a user added, a
//! role raised or another user's password set would let whoever used a
//! leaked login token go on after that login expires or the victim changes
//! its password. So a token that expires (a login's, or one made with an
//! expiry) does these only with the calling admin's own password in
//! `current_password` (checked and counted like a login; without it, a 400
//! naming the field), as `routes::tokens::create` asks it for a token that
//! would outlive the caller's. Removing a user and lowering a role need no
//! password: they end access, they do not make any.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use containerpub_wire::access::{
    NewUser, PasswordChange, Role, RoleChange, UserInfo, validate_password, validate_username,
};
use serde::de::DeserializeOwned;
use sqlx::{Postgres, Transaction};

use crate::auth::{self, Action, Caller, PeerAddr};
use crate::error::{Error, Result};
use crate::state::AppState;

/// A JSON body of type `T`, or a 400 that says what was expected.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8], expected: &str) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::bad_request("body", format!("expected {expected}: {e}")))
}

fn check_username(name: &str) -> Result<()> {
    validate_username(name).map_err(|m| Error::bad_request("username", m))
}

type UserRow = (String, String, DateTime<Utc>, i64);

fn user_info((username, role, created_at, functions): UserRow) -> Result<UserInfo> {
    Ok(UserInfo {
        username,
        role: Role::parse(&role).map_err(|e| anyhow::anyhow!("users.role: {e}"))?,
        created_at,
        functions,
    })
}

/// The select list of [`UserRow`], for `concat!`.
macro_rules! user_select {
    () => {
        "SELECT u.username, u.role, u.created_at, \
                (SELECT count(*) FROM functions f WHERE f.owner_id = u.id) \
         FROM users u"
    };
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<UserInfo>>> {
    caller.require(Action::ManageUsers, None)?;
    let rows: Vec<UserRow> = sqlx::query_as(concat!(user_select!(), " ORDER BY u.username"))
        .fetch_all(&state.db)
        .await?;
    Ok(Json(
        rows.into_iter().map(user_info).collect::<Result<_>>()?,
    ))
}

async fn get_user(state: &AppState, username: &str) -> Result<UserInfo> {
    let row: Option<UserRow> = sqlx::query_as(concat!(user_select!(), " WHERE u.username = $1"))
        .bind(username)
        .fetch_optional(&state.db)
        .await?;
    user_info(row.ok_or_else(|| Error::NotFound(format!("user {username:?} not found")))?)
}

pub async fn add(
    State(state): State<AppState>,
    caller: Caller,
    peer: PeerAddr,
    body: Bytes,
) -> Result<(StatusCode, Json<UserInfo>)> {
    caller.require(Action::ManageUsers, None)?;
    let new: NewUser = parse_body(
        &body,
        r#"{"username": "…", "password": "…", "role": "admin|developer|viewer", "current_password": "…"}"#,
    )?;
    check_username(&new.username)?;
    validate_password(&new.password).map_err(|m| Error::bad_request("password", m))?;
    confirm_lasting(
        &state,
        &caller,
        &peer,
        new.current_password.as_deref(),
        "adding a user",
    )
    .await?;
    let phc = auth::hash_password_async(&new.password).await?;
    let inserted = sqlx::query(
        "INSERT INTO users (username, password_hash, role) VALUES ($1, $2, $3) \
         ON CONFLICT (username) DO NOTHING",
    )
    .bind(&new.username)
    .bind(phc)
    .bind(new.role.as_str())
    .execute(&state.db)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(Error::Conflict(format!(
            "user {:?} already exists",
            new.username
        )));
    }
    tracing::info!(user = %new.username, role = %new.role, by = %caller.name(), "user added");
    Ok((
        StatusCode::CREATED,
        Json(get_user(&state, &new.username).await?),
    ))
}

/// Locks every admin row (so two calls cannot both remove "the other"
/// admin) and answers 409 when `username` is the only admin.
async fn refuse_last_admin(
    tx: &mut Transaction<'_, Postgres>,
    username: &str,
    what: &str,
) -> Result<()> {
    let admins: Vec<String> =
        sqlx::query_scalar("SELECT username FROM users WHERE role = 'admin' FOR UPDATE")
            .fetch_all(&mut **tx)
            .await?;
    if admins.len() == 1 && admins[0] == username {
        return Err(Error::Conflict(format!(
            "user {username} is the last admin and cannot be {what}; make another user admin first"
        )));
    }
    Ok(())
}

pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<StatusCode> {
    caller.require(Action::ManageUsers, None)?;
    check_username(&username)?;
    let mut tx = state.db.begin().await?;
    refuse_last_admin(&mut tx, &username, "removed").await?;
    let row: Option<(i64,)> = sqlx::query_as("SELECT id FROM users WHERE username = $1 FOR UPDATE")
        .bind(&username)
        .fetch_optional(&mut *tx)
        .await?;
    let (id,) = row.ok_or_else(|| Error::NotFound(format!("user {username:?} not found")))?;
    let owned: Vec<String> =
        sqlx::query_scalar("SELECT name FROM functions WHERE owner_id = $1 ORDER BY name")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
    if !owned.is_empty() {
        return Err(Error::Conflict(format!(
            "user {username} owns functions ({}); delete them first",
            owned.join(", ")
        )));
    }
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(user = %username, by = %caller.name(), "user removed, its tokens revoked");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn set_role(
    State(state): State<AppState>,
    caller: Caller,
    peer: PeerAddr,
    Path(username): Path<String>,
    body: Bytes,
) -> Result<Json<UserInfo>> {
    caller.require(Action::ManageUsers, None)?;
    check_username(&username)?;
    let change: RoleChange = parse_body(
        &body,
        r#"{"role": "admin|developer|viewer", "current_password": "…"}"#,
    )?;
    // Decided before the transaction, which must not wait for a second
    // connection while it holds row locks (concurrent changes would fill
    // the pool with transactions each waiting for one more). A password
    // given is checked whatever the change; without one, a token that
    // expires is refused only a raise.
    let refusal = match confirm_lasting(
        &state,
        &caller,
        &peer,
        change.current_password.as_deref(),
        "raising a role",
    )
    .await
    {
        Ok(()) => None,
        Err(needed @ Error::BadRequest { .. }) => Some(needed),
        Err(e) => return Err(e),
    };
    let mut tx = crate::db::begin_read_committed(&state.db).await?;
    if change.role != Role::Admin {
        refuse_last_admin(&mut tx, &username, "demoted").await?;
    }
    // The row is locked until the commit: the role it had decides whether
    // this is a raise.
    let old: Option<String> =
        sqlx::query_scalar("SELECT role FROM users WHERE username = $1 FOR UPDATE")
            .bind(&username)
            .fetch_optional(&mut *tx)
            .await?;
    let old = old.ok_or_else(|| Error::NotFound(format!("user {username:?} not found")))?;
    let old = Role::parse(&old).map_err(|e| anyhow::anyhow!("users.role: {e}"))?;
    if change.role > old
        && let Some(needed) = refusal
    {
        return Err(needed);
    }
    sqlx::query("UPDATE users SET role = $2 WHERE username = $1")
        .bind(&username)
        .bind(change.role.as_str())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(user = %username, role = %change.role, by = %caller.name(), "role changed");
    Ok(Json(get_user(&state, &username).await?))
}

/// Checks that `password` is user `username`'s current one, counted by the
/// login limits as a login attempt from `peer` (429 past them; 403 when it
/// is wrong): what a user proves again to change its password, or to have
/// a token that expires create a lasting one (`routes::tokens::create`).
pub(crate) async fn check_own_password(
    state: &AppState,
    peer: &PeerAddr,
    username: &str,
    password: &str,
) -> Result<()> {
    state
        .login_limits
        .attempt(&peer.text(), username)
        .map_err(|retry_after_s| Error::TooManyRequests {
            message: format!("too many password attempts; try again in {retry_after_s} s"),
            retry_after_s,
        })?;
    if auth::check_login(&state.db, username, password)
        .await?
        .is_none()
    {
        state.login_limits.failed(username);
        return Err(Error::Forbidden("the current password is wrong".to_owned()));
    }
    state.login_limits.succeeded(username);
    Ok(())
}

/// Lets the calling admin do `what`, which outlives its token: with
/// `password`, when it is the caller's own (checked and counted like a
/// login; else 403, or 429); without, when the calling token never
/// expires. Otherwise a 400 naming `current_password` (its only 400),
/// which `cpub user` reads to ask for it.
async fn confirm_lasting(
    state: &AppState,
    caller: &Caller,
    peer: &PeerAddr,
    password: Option<&str>,
    what: &str,
) -> Result<()> {
    let (_, username) = caller.user()?;
    if let Some(password) = password {
        return check_own_password(state, peer, username, password).await;
    }
    match auth::token_expiry(&state.db, caller.token_id).await? {
        (None, _) => Ok(()),
        (Some(expires_at), _) => Err(Error::bad_request(
            "current_password",
            format!(
                "{what} needs your own password: the token in use expires ({}) and what it \
                 does here would not; give \"current_password\" (`cpub user` asks for it), \
                 or use a token that does not expire",
                expires_at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
        )),
    }
}

/// A user's own password (with the current one; counted by the login
/// limits), or anyone's by an admin (with the admin's own password from a
/// token that expires, `confirm_lasting`).
pub async fn set_password(
    State(state): State<AppState>,
    caller: Caller,
    peer: PeerAddr,
    Path(username): Path<String>,
    body: Bytes,
) -> Result<StatusCode> {
    check_username(&username)?;
    let own = caller.user().is_ok_and(|(_, name)| name == username);
    if own {
        caller.require(Action::ManageOwnAccount, None)?;
    } else {
        caller.require(Action::ManageUsers, None)?;
    }
    let change: PasswordChange =
        parse_body(&body, r#"{"current_password": "…", "new_password": "…"}"#)?;
    validate_password(&change.new_password).map_err(|m| Error::bad_request("new_password", m))?;
    if own {
        let current = change.current_password.as_deref().ok_or_else(|| {
            Error::bad_request(
                "current_password",
                "changing your own password needs the current one",
            )
        })?;
        check_own_password(&state, &peer, &username, current).await?;
    } else {
        confirm_lasting(
            &state,
            &caller,
            &peer,
            change.current_password.as_deref(),
            "setting another user's password",
        )
        .await?;
    }
    let phc = auth::hash_password_async(&change.new_password).await?;
    // The calling token stays when it is the user's own (a login token
    // among them): the call proved the current password with it.
    let keep = own.then_some(caller.token_id);
    let mut tx = crate::db::begin_read_committed(&state.db).await?;
    let id: Option<i64> =
        sqlx::query_scalar("UPDATE users SET password_hash = $2 WHERE username = $1 RETURNING id")
            .bind(&username)
            .bind(phc)
            .fetch_optional(&mut *tx)
            .await?;
    let id = id.ok_or_else(|| Error::NotFound(format!("user {username:?} not found")))?;
    let revoked = revoke_logins(&mut tx, id, keep).await?;
    tx.commit().await?;
    tracing::info!(
        user = %username,
        by = %caller.name(),
        logins_revoked = revoked,
        "password changed"
    );
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes (deletes: nothing caches tokens, so the next call with one is a
/// 401) every login token of user `id` but `keep`, and by cascade the
/// tokens they made without the password (`login_id`); the tokens made
/// with it, or from a token without a login behind it, and the bootstrap
/// token stay. In the transaction that changes the password: a login
/// racing the change either committed its token before (deleted here) or
/// sees the new hash (`auth::issue_login_token`); a token being made
/// from a login waits for the change under the user's row or commits
/// before it (`routes::tokens::create`). Returns how many logins went.
async fn revoke_logins(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    keep: Option<i64>,
) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM api_tokens WHERE user_id = $1 AND kind = $2 AND id IS DISTINCT FROM $3",
    )
    .bind(id)
    .bind(auth::LOGIN_KIND)
    .bind(keep)
    .execute(&mut **tx)
    .await?
    .rows_affected())
}
