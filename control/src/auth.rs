//! Who is calling and what they may do: argon2 password hashes, random
//! bearer tokens stored only as sha256 hashes (users' API tokens and
//! proxies' node credentials), login tokens that expire (and stop at a
//! password change), first-start bootstrap of `admin`, the
//! middleware that resolves the bearer token of every `/api/v1` route but
//! login into a [`Caller`], and the one authorization rule,
//! [`Caller::require`], that every handler calls.
//!
//! The rule, in one place: a node credential may only watch routes and
//! report crashes, execution records, its status and function logs (for
//! its own node); a user's *effective* role is the lower
//! of its role and its token's scope; reads need `viewer`, deploys and a
//! function's management `developer` plus ownership of the function (admins
//! own everything), users, node credentials, the audit log, the route watch
//! and crash reports need `admin` (or a node credential for the last two).
//! Nothing is cached: a revoked or expired token, or a changed role, applies
//! from the next call.
//!
//! Over 600 lines with its unit tests: the rule, the token lookup and the
//! tests of every branch of the rule stay in one file, so the whole access
//! decision reads in one place.

use std::sync::LazyLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};
use containerpub_wire::access::Role;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::db::FunctionRow;
use crate::error::{Error, Result};
use crate::state::AppState;

/// Name of the user created on first start.
pub const ADMIN_USER: &str = "admin";
/// Prefix of every generated API token.
pub const TOKEN_PREFIX: &str = "cpub_";
/// Prefix of every generated node credential.
pub const NODE_TOKEN_PREFIX: &str = "cpubnode_";

/// Who presented the bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A user's API token (bootstrap, login or `cpub token create`).
    User {
        id: i64,
        username: String,
        /// The user's role now.
        role: Role,
        /// The token's scope, if it narrows the role.
        scope: Option<Role>,
    },
    /// A proxy's node credential.
    Node { node: String },
}

/// The authenticated caller, put into the request's extensions by
/// [`require_token`]; handlers take it as an extractor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    /// Row id of the token (in `api_tokens` or `node_credentials`).
    pub token_id: i64,
}

/// What a call wants to do; [`Caller::require`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// List and read functions, their deployments and crashes.
    ReadFunctions,
    /// Deploy a new function or a new version of one.
    Deploy,
    /// Delete a function.
    DeleteFunction,
    /// Change anything else about one function (keys, secrets, settings):
    /// the owner's or an admin's business.
    ManageFunction,
    /// The caller's own API tokens and password.
    ManageOwnAccount,
    /// Add, list, remove users, change their roles and passwords.
    ManageUsers,
    /// Mint, list and revoke node credentials.
    ManageNodes,
    /// Read the audit log.
    ReadAudit,
    /// Follow the route table (`GET /api/v1/routes`).
    WatchRoutes,
    /// Post a crash report (`POST /api/v1/functions/{name}/crashes`).
    ReportCrash,
    /// Post execution records and the node's status report
    /// (`POST /api/v1/executions`, `POST /api/v1/nodes/{node}/status`).
    ReportExecutions,
    /// Post captured function output (`POST /api/v1/logs`).
    ShipLogs,
}

impl Action {
    /// What the action is, for "role viewer cannot …" messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::ReadFunctions => "read functions",
            Self::Deploy => "deploy functions",
            Self::DeleteFunction => "delete functions",
            Self::ManageFunction => "manage functions",
            Self::ManageOwnAccount => "manage its own tokens and password",
            Self::ManageUsers => "manage users",
            Self::ManageNodes => "manage node credentials",
            Self::ReadAudit => "read the audit log",
            Self::WatchRoutes => "watch routes",
            Self::ReportCrash => "report crashes",
            Self::ReportExecutions => "report executions and node status",
            Self::ShipLogs => "ship function logs",
        }
    }

    /// The lowest role a user needs.
    pub fn min_role(self) -> Role {
        match self {
            Self::ReadFunctions | Self::ManageOwnAccount => Role::Viewer,
            Self::Deploy | Self::DeleteFunction | Self::ManageFunction => Role::Developer,
            Self::ManageUsers
            | Self::ManageNodes
            | Self::ReadAudit
            | Self::WatchRoutes
            | Self::ReportCrash
            | Self::ReportExecutions
            | Self::ShipLogs => Role::Admin,
        }
    }

    /// Needs the function's ownership unless the caller is an admin.
    fn owned(self) -> bool {
        matches!(
            self,
            Self::Deploy | Self::DeleteFunction | Self::ManageFunction
        )
    }

    /// What a node credential may do.
    fn for_nodes(self) -> bool {
        matches!(
            self,
            Self::WatchRoutes | Self::ReportCrash | Self::ReportExecutions | Self::ShipLogs
        )
    }
}

impl Caller {
    /// The role that applies to this call: the user's role, narrowed by the
    /// token's scope; `None` for a node.
    pub fn role(&self) -> Option<Role> {
        match &self.principal {
            Principal::User { role, scope, .. } => Some(scope.map_or(*role, |s| s.min(*role))),
            Principal::Node { .. } => None,
        }
    }

    /// The user's id and name, or a 403 for a node credential.
    pub fn user(&self) -> Result<(i64, &str)> {
        match &self.principal {
            Principal::User { id, username, .. } => Ok((*id, username)),
            Principal::Node { node } => Err(Error::Forbidden(format!(
                "a node credential (node {node}) is not a user"
            ))),
        }
    }

    /// User or node name, for logs and the audit log.
    pub fn name(&self) -> &str {
        match &self.principal {
            Principal::User { username, .. } => username,
            Principal::Node { node } => node,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role() == Some(Role::Admin)
    }

    /// The authorization rule (see the module's header): `Ok` or a 403 that
    /// says what is missing. `function` is the function the call acts on
    /// (`None` for a new one, or for calls on no function).
    pub fn require(&self, action: Action, function: Option<&FunctionRow>) -> Result<()> {
        let (username, role, user_role) = match &self.principal {
            Principal::Node { node } => {
                return if action.for_nodes() {
                    Ok(())
                } else {
                    Err(Error::Forbidden(format!(
                        "a node credential (node {node}) cannot {}: it may only watch routes \
                         and report crashes, executions, status and logs",
                        action.describe()
                    )))
                };
            }
            Principal::User { username, role, .. } => {
                (username, self.role().unwrap_or(Role::Viewer), *role)
            }
        };
        let needed = action.min_role();
        if role < needed {
            let scoped = if role < user_role {
                format!(" (this token is scoped to {role}; user {username} is {user_role})")
            } else {
                String::new()
            };
            let who = if action.for_nodes() {
                "node credentials and admins only".to_owned()
            } else {
                format!("needs {needed}")
            };
            return Err(Error::Forbidden(format!(
                "role {role} cannot {} ({who}){scoped}",
                action.describe()
            )));
        }
        if action.owned()
            && role != Role::Admin
            && let Some(f) = function
            && f.owner != *username
        {
            return Err(Error::Forbidden(format!(
                "function {} is owned by user {}; role {role} may only {} it owns",
                f.name,
                f.owner,
                action.describe()
            )));
        }
        Ok(())
    }

    /// [`Caller::require`] for a call on the existing function `name`:
    /// checks the role first (so a refused caller learns nothing about the
    /// function), then loads the function (404 if missing), then checks
    /// ownership. Returns the function's row.
    pub async fn require_function(
        &self,
        db: &sqlx::PgPool,
        action: Action,
        name: &str,
    ) -> Result<FunctionRow> {
        self.require(action, None)?;
        crate::routes::check_name(name)?;
        let row = crate::db::get_function(db, name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("function {name:?} not found")))?;
        self.require(action, Some(&row))?;
        Ok(row)
    }

    /// For node credentials: the node name a call claims (on the route
    /// watch, in a crash report) must be the credential's own.
    pub fn require_node_name(&self, claimed: Option<&str>) -> Result<()> {
        if let Principal::Node { node } = &self.principal
            && let Some(claimed) = claimed
            && claimed != node
        {
            return Err(Error::Forbidden(format!(
                "this credential belongs to node {node}, not to node {claimed}"
            )));
        }
        Ok(())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            Error::Internal(anyhow::anyhow!(
                "Caller extractor on a route without the token middleware"
            ))
        })
    }
}

/// The TCP peer's address (absent when the router runs without a socket,
/// as in handler tests): what login limits and the audit log use. Forwarded
/// headers are not trusted.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub Option<std::net::IpAddr>);

impl PeerAddr {
    /// The address as text, `unknown` without one.
    pub fn text(self) -> String {
        self.0
            .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PeerAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> std::result::Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0.ip()),
        ))
    }
}

/// 32 random bytes as hex.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A new API token: `cpub_<64 hex>` (256 random bits).
pub fn new_token() -> String {
    format!("{TOKEN_PREFIX}{}", random_hex())
}

/// A new node credential: `cpubnode_<64 hex>` (256 random bits).
pub fn new_node_token() -> String {
    format!("{NODE_TOKEN_PREFIX}{}", random_hex())
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

/// [`hash_password`] on the blocking pool.
pub async fn hash_password_async(password: &str) -> Result<String> {
    let password = password.to_owned();
    Ok(
        tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|e| anyhow::anyhow!("password hash task: {e}"))??,
    )
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

/// A user whose password matched.
#[derive(Clone)]
pub struct LoggedIn {
    pub user_id: i64,
    pub role: Role,
    /// The stored hash the password matched: a login token is issued only
    /// while it is still the user's ([`issue_login_token`]).
    password_hash: String,
}

impl std::fmt::Debug for LoggedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoggedIn")
            .field("user_id", &self.user_id)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Checks credentials; `None` for an unknown user and a wrong password alike.
pub async fn check_login(
    pool: &PgPool,
    username: &str,
    password: &str,
) -> Result<Option<LoggedIn>> {
    let row: Option<(i64, String, String)> =
        sqlx::query_as("SELECT id, password_hash, role FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(pool)
            .await?;
    let password = password.to_owned();
    let found = row.is_some();
    let (id, phc, role) = row.unwrap_or((0, String::new(), String::new()));
    let (ok, phc) = tokio::task::spawn_blocking(move || {
        let checked = if found { &phc } else { &*DUMMY_HASH };
        let ok = verify_password(&password, checked) && found;
        (ok, phc)
    })
    .await
    .map_err(|e| anyhow::anyhow!("password check task: {e}"))?;
    if !ok {
        return Ok(None);
    }
    let role = Role::parse(&role).map_err(|e| anyhow::anyhow!("users.role: {e}"))?;
    Ok(Some(LoggedIn {
        user_id: id,
        role,
        password_hash: phc,
    }))
}

/// The kind (`api_tokens.kind`) of the tokens logins issue: the ones a
/// password change revokes.
pub const LOGIN_KIND: &str = "login";

/// A login's new token, shown once, and when it expires.
#[derive(Debug)]
pub struct LoginToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// Creates and stores the token of a login, expiring `lifetime` from now
/// by the database's clock (the one [`caller_for_token`] checks expiry
/// with). `None` when the user's password changed (or the user went)
/// since [`check_login`]: the row is read `FOR SHARE`, so a login that
/// raced a password change either finishes before the change (which then
/// revokes its token) or sees the new hash and issues nothing.
pub async fn issue_login_token(
    pool: &PgPool,
    user: &LoggedIn,
    lifetime: std::time::Duration,
) -> Result<Option<LoginToken>> {
    let token = new_token();
    let expires_at: Option<DateTime<Utc>> = sqlx::query_scalar(
        "INSERT INTO api_tokens (user_id, token_hash, kind, name, expires_at) \
         SELECT id, $2, $3, $3, now() + make_interval(secs => $4) FROM users \
         WHERE id = $1 AND password_hash = $5 FOR SHARE \
         RETURNING expires_at",
    )
    .bind(user.user_id)
    .bind(token_hash(&token))
    .bind(LOGIN_KIND)
    .bind(lifetime.as_secs_f64())
    .bind(&user.password_hash)
    .fetch_optional(pool)
    .await?;
    Ok(expires_at.map(|expires_at| LoginToken { token, expires_at }))
}

/// Gives the login tokens issued before logins expired (stored without an
/// expiry) the expiry they would have had: `lifetime` after their login.
/// Run at start; those older than `lifetime` stop working at once. Returns
/// how many were changed.
pub async fn expire_old_login_tokens(pool: &PgPool, lifetime: std::time::Duration) -> Result<u64> {
    // Under the bootstrap's lock: replicas starting at once take turns.
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(BOOTSTRAP_LOCK)
        .execute(&mut *tx)
        .await?;
    let changed = sqlx::query(
        "UPDATE api_tokens SET expires_at = created_at + make_interval(secs => $2) \
         WHERE kind = $1 AND expires_at IS NULL",
    )
    .bind(LOGIN_KIND)
    .bind(lifetime.as_secs_f64())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(changed)
}

/// The advisory lock that serialises the start-up work on users and tokens
/// across replicas ("cpub" + 1).
const BOOTSTRAP_LOCK: i64 = 0x6370_7562_0001;

/// When the token `token_id` (a user's, in `api_tokens`) expires (`None`:
/// never) and the database's time now: what a token may create is bound
/// by its own expiry (`routes::tokens::within_caller_expiry`), on the clock
/// that decides expiry. A 401 when the token went since the call was let
/// in.
pub async fn token_expiry(
    pool: &PgPool,
    token_id: i64,
) -> Result<(Option<DateTime<Utc>>, DateTime<Utc>)> {
    let row: Option<(Option<DateTime<Utc>>, DateTime<Utc>)> =
        sqlx::query_as("SELECT expires_at, now() FROM api_tokens WHERE id = $1")
            .bind(token_id)
            .fetch_optional(pool)
            .await?;
    row.ok_or_else(|| Error::Unauthorized("invalid or revoked API token".into()))
}

/// Secrets generated at first start, to be printed once on stdout.
#[derive(Debug, Default)]
pub struct Bootstrapped {
    pub admin_password: Option<String>,
    pub token: Option<String>,
}

/// First start (no users): creates `admin` (role admin) and an API token.
/// Later starts: stores `bootstrap_token` for `admin` if its hash is not
/// stored yet. Serialised across replicas by an advisory lock.
pub async fn bootstrap(
    pool: &PgPool,
    admin_password: Option<&str>,
    bootstrap_token: Option<&str>,
) -> anyhow::Result<Bootstrapped> {
    let mut out = Bootstrapped::default();
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(BOOTSTRAP_LOCK)
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
            "INSERT INTO users (username, password_hash, role) VALUES ($1, $2, 'admin') \
             RETURNING id",
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
            "INSERT INTO api_tokens (user_id, token_hash, kind, name) \
             VALUES ($1, $2, 'bootstrap', 'bootstrap')",
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
            "INSERT INTO api_tokens (user_id, token_hash, kind, name) \
             SELECT id, $2, 'bootstrap', 'bootstrap' FROM users WHERE username = $1 \
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

/// A token row as the lookup finds it, in either table.
#[derive(Debug, sqlx::FromRow)]
struct TokenRow {
    /// `user` or `node`.
    kind: String,
    id: i64,
    user_id: Option<i64>,
    /// Username or node name.
    name: String,
    role: Option<String>,
    role_scope: Option<String>,
    token_name: String,
    /// `api_tokens.kind` (`bootstrap`, `login`, `token`), `node` for a node.
    token_kind: String,
    expires_at: Option<DateTime<Utc>>,
    expired: bool,
    stale: bool,
}

/// Resolves a bearer token: `Ok(None)` when no such token exists (never
/// issued, or revoked), a 401 naming the token when it expired. Records its
/// use (at most once a minute, so the long poll does not write on every
/// call). One query per call and no cache: revocation applies at once.
pub async fn caller_for_token(pool: &PgPool, token: &str) -> Result<Option<Caller>> {
    let row: Option<TokenRow> = sqlx::query_as(
        "SELECT 'user' AS kind, t.id, u.id AS user_id, u.username AS name, u.role, \
                t.role_scope, t.name AS token_name, t.kind AS token_kind, t.expires_at, \
                (t.expires_at IS NOT NULL AND t.expires_at <= now()) AS expired, \
                (t.last_used_at IS NULL OR t.last_used_at < now() - interval '60 seconds') AS stale \
         FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1 \
         UNION ALL \
         SELECT 'node', n.id, NULL, n.node, NULL, NULL, n.node, 'node', NULL, FALSE, \
                (n.last_used_at IS NULL OR n.last_used_at < now() - interval '60 seconds') \
         FROM node_credentials n WHERE n.token_hash = $1",
    )
    .bind(token_hash(token))
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let caller = caller_of(&row)?;
    let table_update = if row.kind == "node" {
        "UPDATE node_credentials SET last_used_at = now() WHERE id = $1"
    } else {
        "UPDATE api_tokens SET last_used_at = now() WHERE id = $1"
    };
    if row.stale {
        sqlx::query(table_update).bind(row.id).execute(pool).await?;
    }
    Ok(Some(caller))
}

/// The caller as the request's bearer token says now: a 401 when the
/// token was revoked, replaced or expired, or its user removed, since the
/// request was let in. For an answer given long after that check: the
/// route watch's long poll answers with every function's secrets up to a
/// minute later, and a credential revoked meanwhile must not receive them.
pub async fn recheck(pool: &PgPool, headers: &HeaderMap) -> Result<Caller> {
    caller_for_token(pool, bearer(headers)?)
        .await?
        .ok_or_else(|| Error::Unauthorized("invalid or revoked API token".into()))
}

/// The token of an `Authorization: Bearer <token>` header, or the 401
/// saying what is missing.
fn bearer(headers: &HeaderMap) -> Result<&str> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            Error::Unauthorized("missing Authorization: Bearer <token> header".into())
        })?;
    header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Error::Unauthorized("Authorization header must be \"Bearer <token>\"".into())
        })
}

/// The caller a token row names, or the 401 of an expired token.
fn caller_of(row: &TokenRow) -> Result<Caller> {
    if row.expired {
        let at = row
            .expires_at
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default();
        return Err(Error::Unauthorized(if row.token_kind == LOGIN_KIND {
            format!(
                "the login of user {} expired at {at} (a login's token works for a limited \
                 time); log in again (`cpub login -u {}`)",
                row.name, row.name
            )
        } else {
            format!(
                "API token {:?} of user {} expired at {at}; log in again (`cpub login`) and \
                 create a new one (`cpub token create`)",
                row.token_name, row.name
            )
        }));
    }
    let principal = if row.kind == "node" {
        Principal::Node {
            node: row.name.clone(),
        }
    } else {
        let parse = |text: &str| {
            Role::parse(text).map_err(|e| Error::Internal(anyhow::anyhow!("stored role: {e}")))
        };
        Principal::User {
            id: row.user_id.unwrap_or_default(),
            username: row.name.clone(),
            role: parse(row.role.as_deref().unwrap_or_default())?,
            scope: row.role_scope.as_deref().map(parse).transpose()?,
        }
    };
    Ok(Caller {
        principal,
        token_id: row.id,
    })
}

/// Middleware: `Authorization: Bearer <token>` or 401. The caller goes into
/// the request's extensions (for handlers) and the response's (for the
/// audit log, [`crate::audit`]).
pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response> {
    let caller = recheck(&state.db, request.headers()).await?;
    request.extensions_mut().insert(caller.clone());
    let mut response = next.run(request).await;
    response.extensions_mut().insert(caller);
    Ok(response)
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
        let n = new_node_token();
        assert!(n.starts_with(NODE_TOKEN_PREFIX) && n.len() == NODE_TOKEN_PREFIX.len() + 64);
    }

    fn user(role: Role, scope: Option<Role>) -> Caller {
        Caller {
            principal: Principal::User {
                id: 7,
                username: "alice".into(),
                role,
                scope,
            },
            token_id: 1,
        }
    }

    fn function(owner: &str) -> FunctionRow {
        FunctionRow {
            id: 1,
            name: "hello".into(),
            owner: owner.into(),
            active_version: None,
            config: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn refusal(result: Result<()>) -> String {
        match result {
            Err(Error::Forbidden(m)) => m,
            other => panic!("not a 403: {other:?}"),
        }
    }

    #[test]
    fn the_rule() {
        let own = function("alice");
        let other = function("bob");
        let dev = user(Role::Developer, None);
        assert!(dev.require(Action::Deploy, Some(&own)).is_ok());
        assert!(dev.require(Action::Deploy, None).is_ok());
        assert_eq!(
            refusal(dev.require(Action::DeleteFunction, Some(&other))),
            "function hello is owned by user bob; role developer may only delete functions it owns"
        );
        assert!(dev.require(Action::ReadFunctions, Some(&other)).is_ok());
        assert_eq!(
            refusal(dev.require(Action::ManageUsers, None)),
            "role developer cannot manage users (needs admin)"
        );
        assert_eq!(
            refusal(dev.require(Action::WatchRoutes, None)),
            "role developer cannot watch routes (node credentials and admins only)"
        );
        let viewer = user(Role::Viewer, None);
        assert_eq!(
            refusal(viewer.require(Action::Deploy, None)),
            "role viewer cannot deploy functions (needs developer)"
        );
        assert!(viewer.require(Action::ManageOwnAccount, None).is_ok());
        let admin = user(Role::Admin, None);
        for action in [
            Action::Deploy,
            Action::DeleteFunction,
            Action::ManageFunction,
            Action::ManageUsers,
            Action::WatchRoutes,
            Action::ReportCrash,
            Action::ReadAudit,
        ] {
            assert!(admin.require(action, Some(&other)).is_ok(), "{action:?}");
        }
        // A scope narrows, never widens.
        let scoped = user(Role::Admin, Some(Role::Viewer));
        assert_eq!(scoped.role(), Some(Role::Viewer));
        assert_eq!(
            refusal(scoped.require(Action::Deploy, None)),
            "role viewer cannot deploy functions (needs developer) \
             (this token is scoped to viewer; user alice is admin)"
        );
        assert_eq!(
            user(Role::Viewer, Some(Role::Admin)).role(),
            Some(Role::Viewer)
        );
        let node = Caller {
            principal: Principal::Node {
                node: "edge-1".into(),
            },
            token_id: 2,
        };
        assert!(node.require(Action::WatchRoutes, None).is_ok());
        assert!(node.require(Action::ReportCrash, Some(&own)).is_ok());
        assert_eq!(
            refusal(node.require(Action::ReadFunctions, None)),
            "a node credential (node edge-1) cannot read functions: it may only watch routes \
             and report crashes, executions, status and logs"
        );
        assert!(node.require_node_name(Some("edge-1")).is_ok());
        assert!(node.require_node_name(None).is_ok());
        assert_eq!(
            refusal(node.require_node_name(Some("edge-2"))),
            "this credential belongs to node edge-1, not to node edge-2"
        );
        assert!(admin.require_node_name(Some("edge-2")).is_ok());
    }
}
