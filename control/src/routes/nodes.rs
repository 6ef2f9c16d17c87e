//! Node credentials (admins only): `GET /api/v1/nodes`, `POST
//! /api/v1/nodes/{node}/credential[?replace=true]` (the credential is in
//! the answer, once; only its sha256 is stored) and `DELETE
//! /api/v1/nodes/{node}`. A proxy presents its node's credential to watch
//! routes and report crashes, for its own node name only; it can do nothing
//! else (`crate::auth::Caller::require`).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use containerpub_wire::access::{CreatedNodeCredential, NodeCredentialQuery, NodeInfo};

use crate::auth::{self, Action, Caller};
use crate::error::{Error, Result};
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
