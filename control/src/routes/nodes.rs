//! Node credentials (admins only): `GET /api/v1/nodes`, `POST
//! /api/v1/nodes/{node}/credential[?replace=true]` (the credential is in
//! the answer, once; only its sha256 is stored) and `DELETE
//! /api/v1/nodes/{node}`. A proxy presents its node's credential to watch
//! routes and report crashes, for its own node name only; it can do nothing
//! else (`crate::auth::Caller::require`).
//!
//! A node credential never expires, so a token that expires (a login's,
//! or one created with `--expires`) may not create one (403): a leaked
//! short-lived admin token would otherwise mint a lasting credential that
//! receives every function's secrets on the route watch. Refused rather
//! than given an expiry: a node whose credential lapsed would stop getting
//! routes weeks later, far from the call that set it up.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use containerpub_wire::access::{CreatedNodeCredential, NodeCredentialQuery, NodeInfo};

use crate::auth::{self, Action, Caller};
use crate::error::{Error, Result};
use crate::routes::tokens::within_caller_expiry;
use crate::routes::watch::query_error;
use crate::state::AppState;

/// node, created by, created at, last used at.
type NodeRow = (String, String, DateTime<Utc>, Option<DateTime<Utc>>);

fn check_node(node: &str) -> Result<()> {
    containerpub_wire::validate_node_name(node).map_err(|m| Error::bad_request("node", m))
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<NodeInfo>>> {
    caller.require(Action::ManageNodes, None)?;
    let rows: Vec<NodeRow> = sqlx::query_as(
        "SELECT node, created_by, created_at, last_used_at FROM node_credentials ORDER BY node",
    )
    .fetch_all(&state.db)
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|(node, created_by, created_at, last_used_at)| NodeInfo {
                node,
                created_by,
                created_at,
                last_used_at,
            })
            .collect(),
    ))
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(node): Path<String>,
    query: std::result::Result<Query<NodeCredentialQuery>, QueryRejection>,
) -> Result<(StatusCode, Json<CreatedNodeCredential>)> {
    caller.require(Action::ManageNodes, None)?;
    check_node(&node)?;
    let Query(query) = query.map_err(|e| query_error(&e))?;
    // A node credential never expires: only a token that never expires
    // may create one (the rule of `cpub token create`).
    let (caller_expires_at, now) = auth::token_expiry(&state.db, caller.token_id).await?;
    within_caller_expiry(None, caller_expires_at, now).map_err(|outlived| {
        Error::Forbidden(format!(
            "a node credential never expires, and a credential cannot outlive the token that \
             creates it: {outlived}; create node credentials with a token that does not \
             expire (the bootstrap token, CPUB_BOOTSTRAP_TOKEN, or a lasting admin token: \
             `cpub token create --name ops` asks for your password)"
        ))
    })?;
    let token = auth::new_node_token();
    let stored = sqlx::query(
        "INSERT INTO node_credentials (node, token_hash, created_by) VALUES ($1, $2, $3) \
         ON CONFLICT (node) DO UPDATE SET token_hash = EXCLUDED.token_hash, \
             created_by = EXCLUDED.created_by, created_at = now(), last_used_at = NULL \
         WHERE $4",
    )
    .bind(&node)
    .bind(auth::token_hash(&token))
    .bind(caller.name())
    .bind(query.replace)
    .execute(&state.db)
    .await?
    .rows_affected();
    if stored == 0 {
        return Err(Error::Conflict(format!(
            "node {node} already has a credential; replace it with ?replace=true \
             (`cpub node-token create {node} --replace`)"
        )));
    }
    tracing::info!(%node, by = %caller.name(), replace = query.replace, "node credential created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedNodeCredential { node, token }),
    ))
}

pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(node): Path<String>,
) -> Result<StatusCode> {
    caller.require(Action::ManageNodes, None)?;
    check_node(&node)?;
    let removed = sqlx::query("DELETE FROM node_credentials WHERE node = $1")
        .bind(&node)
        .execute(&state.db)
        .await?
        .rows_affected();
    if removed == 0 {
        return Err(Error::NotFound(format!("node {node} has no credential")));
    }
    tracing::info!(%node, by = %caller.name(), "node credential revoked");
    Ok(StatusCode::NO_CONTENT)
}
