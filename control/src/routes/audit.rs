//! `GET /api/v1/audit?since=1h&user=NAME&function=NAME&limit=N` (admins
//! only): the audit log, newest first. There is no call that changes it
//! (see `crate::audit`).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use containerpub_wire::access::{
    ActorKind, AuditEntry, AuditQuery, MAX_AUDIT_ROWS, Role, parse_duration,
};

use crate::auth::{Action, Caller};
use crate::error::{Error, Result};
use crate::routes::watch::query_error;
use crate::state::AppState;

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    at: DateTime<Utc>,
    actor_kind: String,
    actor: Option<String>,
    role: Option<String>,
    action: String,
    target: String,
    function: Option<String>,
    status: i32,
    error: Option<String>,
    source: Option<String>,
    request_id: String,
}

/// `since` as a point in time: a duration back from now, or RFC 3339.
fn since(text: &str) -> Result<DateTime<Utc>> {
    if let Ok(back) = parse_duration(text) {
        let back = chrono::Duration::from_std(back)
            .map_err(|e| Error::bad_request("since", e.to_string()))?;
        return Ok(Utc::now() - back);
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            Error::bad_request(
                "since",
                format!("must be a duration (30m, 12h, 7d) or an RFC 3339 time, got {text:?}"),
            )
        })
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: std::result::Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>> {
    caller.require(Action::ReadAudit, None)?;
    let Query(query) = query.map_err(|e| query_error(&e))?;
    let since = query.since.as_deref().map(since).transpose()?;
    let limit = query.limit.unwrap_or(MAX_AUDIT_ROWS);
    if limit == 0 || limit > MAX_AUDIT_ROWS {
        return Err(Error::bad_request(
            "limit",
            format!("must be 1 to {MAX_AUDIT_ROWS}, got {limit}"),
        ));
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, at, actor_kind, actor, role, action, target, function, status, error, \
                source, request_id \
         FROM audit_log \
         WHERE ($1::timestamptz IS NULL OR at >= $1) \
           AND ($2::text IS NULL OR actor = $2) \
           AND ($3::text IS NULL OR function = $3) \
         ORDER BY id DESC LIMIT $4",
    )
    .bind(since)
    .bind(&query.user)
    .bind(&query.function)
    .bind(i64::from(limit))
    .fetch_all(&state.db)
    .await?;
    let entries = rows
        .into_iter()
        .map(|r| {
            let actor_kind = match r.actor_kind.as_str() {
                "user" => ActorKind::User,
                "node" => ActorKind::Node,
                _ => ActorKind::Anonymous,
            };
            AuditEntry {
                id: r.id,
                at: r.at,
                actor_kind,
                actor: r.actor,
                role: r.role.as_deref().and_then(|t| Role::parse(t).ok()),
                action: r.action,
                target: r.target,
                function: r.function,
                status: u16::try_from(r.status).unwrap_or_default(),
                error: r.error,
                source: r.source,
                request_id: r.request_id,
            }
        })
        .collect();
    Ok(Json(entries))
}
