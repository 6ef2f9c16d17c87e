//! The audit log: every mutating call on `/api/v1` (POST, PUT, PATCH,
//! DELETE — logins included, whatever their result) becomes one row of the
//! append-only `audit_log` table (migration 0003: triggers refuse UPDATE,
//! DELETE and TRUNCATE). The API has no call that changes it.
//!
//! [`record`] is a route layer on every `/api/v1` route, so an endpoint
//! added later is audited without doing anything. Who called comes from the
//! response's extensions (the token middleware puts the [`Caller`] there,
//! login an [`Actor`]); the action from the matched route (a name from
//! [`action_name`], else `METHOD /path/{template}`); the function from the
//! route's `{name}` parameter. The handler runs in a task of its own, and
//! the row is written there once it answered: a client that goes away
//! neither cancels a mutating call half-way nor skips its row. A row that
//! cannot be written is logged as an error (the call has happened).
//!
//! The table is kept forever, so nothing a stranger sends may grow it: a
//! call that presented no valid credential (no token, or a bad, revoked or
//! expired one: the middleware's 401; a login body that names no user) gets
//! no row, only its count in `cpub_control_http_requests_total` by status
//! (`routes::request_span`, which the `CpubAuthFailureSpike` alert reads).
//! Callers with a valid token are recorded whatever their answer (a 403
//! included), and so are logins that name a user (their 401s and 429s:
//! 20 attempts a minute per address, `login_limit`). Every text a row holds
//! is cut to [`MAX_TEXT_BYTES`] at a character boundary, ending in a marker
//! that says how long it was ([`bounded`]): a path may be as long as hyper
//! lets a request line be (tens of KiB).

use std::net::SocketAddr;

use axum::extract::{
    ConnectInfo, FromRequestParts, MatchedPath, OriginalUri, RawPathParams, Request, State,
};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use containerpub_wire::access::Role;
use containerpub_wire::request_id;
use sqlx::PgPool;

use crate::auth::{Caller, Principal};
use crate::state::AppState;

/// The message of an error answer (set by `Error::into_response`).
#[derive(Debug, Clone)]
pub struct ErrorMessage(pub String);

/// Who made a call that has no [`Caller`] (login).
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub role: Option<Role>,
}

/// The audit name of a route, for the routes of this crate; others are
/// recorded as `METHOD /path/{template}`.
pub fn action_name(method: &Method, route: &str) -> Option<&'static str> {
    let route = route.strip_prefix("/api/v1").unwrap_or(route);
    Some(match (method.as_str(), route) {
        ("POST", "/auth/login") => "login",
        ("POST", "/functions/{name}/deployments") => "deploy",
        ("DELETE", "/functions/{name}") => "function.delete",
        ("POST", "/functions/{name}/crashes") => "crash.report",
        ("POST", "/users") => "user.add",
        ("DELETE", "/users/{username}") => "user.remove",
        ("PUT", "/users/{username}/role") => "user.set-role",
        ("PUT", "/users/{username}/password") => "user.passwd",
        ("POST", "/tokens") => "token.create",
        ("DELETE", "/tokens/{id}") => "token.revoke",
        ("POST", "/nodes/{node}/credential") => "node.credential.create",
        ("DELETE", "/nodes/{node}") => "node.credential.revoke",
        ("POST", "/functions/{name}/keys") => "key.create",
        ("DELETE", "/functions/{name}/keys/{id}") => "key.revoke",
        ("PUT", "/functions/{name}/secrets/{key}") => "secret.set",
        ("DELETE", "/functions/{name}/secrets/{key}") => "secret.unset",
        ("POST", "/functions/{name}/signing-keys") => "signing-key.create",
        ("DELETE", "/functions/{name}/signing-keys/{key_id}") => "signing-key.revoke",
        ("POST", "/functions/{name}/rollback") => "rollback",
        ("POST", "/functions/{name}/config") => "config.change",
        _ => return None,
    })
}

/// What a node sends as a matter of course (execution records, its status
/// every 5 s, function logs): data, not a change to the platform. Accepted,
/// such a call is not written down (it would bury the log: 17,000 status
/// reports a day per node); refused, it is, like any other call.
fn telemetry(route: &str) -> bool {
    let route = route.strip_prefix("/api/v1").unwrap_or(route);
    matches!(route, "/executions" | "/nodes/{node}/status" | "/logs")
}

/// Longest text, in bytes, the audit layer writes into a column (target,
/// function, error, action, actor, source, request id), marker included.
pub const MAX_TEXT_BYTES: usize = 512;

/// `text` as a row holds it: whole up to [`MAX_TEXT_BYTES`], else cut at a
/// character boundary and ended with `… [cut from N bytes]`, so the row is
/// still at most that long and says it is not the whole text.
pub fn bounded(text: &str) -> String {
    if text.len() <= MAX_TEXT_BYTES {
        return text.to_owned();
    }
    let marker = format!("… [cut from {} bytes]", text.len());
    let mut end = MAX_TEXT_BYTES - marker.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + marker.len());
    out.push_str(&text[..end]);
    out.push_str(&marker);
    out
}

fn mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// One row, before it is written.
#[derive(Debug)]
struct Row {
    actor_kind: &'static str,
    actor: Option<String>,
    role: Option<Role>,
    action: String,
    target: String,
    function: Option<String>,
    status: i32,
    error: Option<String>,
    source: Option<String>,
    request_id: String,
}

/// Route layer: runs a mutating call in its own task and records it.
pub async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !mutating(request.method()) {
        return next.run(request).await;
    }
    let method = request.method().clone();
    // The whole path: inside `nest("/api/v1", …)` the URI lost its prefix.
    let path = request
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| request.uri().path(), |uri| uri.path())
        .to_owned();
    let routine = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|route| telemetry(route.as_str()));
    let action = match request.extensions().get::<MatchedPath>() {
        Some(route) => action_name(&method, route.as_str())
            .map_or_else(|| format!("{method} {}", route.as_str()), str::to_owned),
        None => format!("{method} {path}"),
    };
    let (mut parts, body) = request.into_parts();
    let function = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .ok()
        .and_then(|params| {
            params
                .iter()
                .find(|(k, _)| *k == "name")
                .map(|(_, v)| bounded(v))
        })
        .filter(|_| path.contains("/functions/"));
    let target = bounded(&path);
    drop(path);
    let request = Request::from_parts(parts, body);
    let source = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_string());
    let request_id = request
        .headers()
        .get(request_id::HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let db = state.db.clone();
    let task = tokio::spawn(async move {
        let response = next.run(request).await;
        let (actor_kind, actor, role) = if let Some(caller) = response.extensions().get::<Caller>()
        {
            match &caller.principal {
                Principal::User { username, .. } => ("user", bounded(username), caller.role()),
                Principal::Node { node } => ("node", bounded(node), None),
            }
        } else if let Some(actor) = response.extensions().get::<Actor>() {
            ("user", bounded(&actor.name), actor.role)
        } else {
            // No valid credential: counted by its status in
            // `cpub_control_http_requests_total`, never a row (see above).
            return response;
        };
        if routine && actor_kind == "node" && response.status().is_success() {
            return response;
        }
        let row = Row {
            actor_kind,
            actor: Some(actor),
            role,
            action: bounded(&action),
            target,
            function,
            status: i32::from(response.status().as_u16()),
            error: response
                .extensions()
                .get::<ErrorMessage>()
                .map(|m| bounded(&m.0)),
            source: source.as_deref().map(bounded),
            request_id: bounded(&request_id),
        };
        if let Err(err) = insert(&db, &row).await {
            tracing::error!(error = %err, ?row, "could not write the audit log row");
        }
        response
    });
    match task.await {
        Ok(response) => response,
        Err(err) => {
            tracing::error!(%err, "audited call task failed");
            axum::response::IntoResponse::into_response(crate::error::Error::Internal(
                anyhow::anyhow!("audited call task: {err}"),
            ))
        }
    }
}

async fn insert(db: &PgPool, row: &Row) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (actor_kind, actor, role, action, target, function, status, \
                                error, source, request_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(row.actor_kind)
    .bind(&row.actor)
    .bind(row.role.map(Role::as_str))
    .bind(&row.action)
    .bind(&row.target)
    .bind(&row.function)
    .bind(row.status)
    .bind(&row.error)
    .bind(&row.source)
    .bind(&row.request_id)
    .execute(db)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_actions_and_the_rest() {
        assert_eq!(
            action_name(&Method::POST, "/api/v1/functions/{name}/deployments"),
            Some("deploy")
        );
        assert_eq!(
            action_name(&Method::POST, "/api/v1/auth/login"),
            Some("login")
        );
        assert_eq!(
            action_name(&Method::POST, "/api/v1/functions/{name}/keys"),
            Some("key.create")
        );
        assert_eq!(
            action_name(&Method::POST, "/api/v1/functions/{name}/stats"),
            None
        );
        assert!(telemetry("/api/v1/executions") && telemetry("/api/v1/nodes/{node}/status"));
        assert!(telemetry("/api/v1/logs") && !telemetry("/api/v1/functions/{name}/crashes"));
        assert!(mutating(&Method::POST) && mutating(&Method::DELETE) && mutating(&Method::PATCH));
        assert!(!mutating(&Method::GET) && !mutating(&Method::HEAD));
    }

    #[test]
    fn texts_are_cut_at_a_character_boundary_with_a_marker() {
        let short = "/api/v1/functions/hello";
        assert_eq!(bounded(short), short);
        let exact = "a".repeat(MAX_TEXT_BYTES);
        assert_eq!(bounded(&exact), exact);
        for long in [
            "a".repeat(MAX_TEXT_BYTES + 1),
            "é".repeat(40_000),
            "€".repeat(20_000),
            format!("x{}", "😀".repeat(20_000)),
        ] {
            let cut = bounded(&long);
            assert!(cut.len() <= MAX_TEXT_BYTES, "{} bytes", cut.len());
            assert!(cut.len() > MAX_TEXT_BYTES - 64, "{} bytes", cut.len());
            let marker = format!("… [cut from {} bytes]", long.len());
            let kept = cut.strip_suffix(&marker).expect("the marker");
            assert!(long.starts_with(kept), "{cut}");
        }
    }
}
