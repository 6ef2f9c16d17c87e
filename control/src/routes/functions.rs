//! `GET /api/v1/functions`, `GET` and `DELETE /api/v1/functions/{name}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use containerpub_wire::api::FunctionInfo;

use crate::auth::{Action, Caller};
use crate::db::{self, FunctionRow};
use crate::error::{Error, Result};
use crate::gc;
use crate::routes::check_name;
use crate::state::AppState;

fn info(row: FunctionRow, public_url: &str) -> FunctionInfo {
    FunctionInfo {
        url: containerpub_wire::function_url(public_url, &row.name),
        name: row.name,
        owner: row.owner,
        active_version: row.active_version,
        config: row.config.map(|c| c.0),
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<FunctionInfo>>> {
    caller.require(Action::ReadFunctions, None)?;
    let rows = db::list_functions(&state.db).await?;
    let url = &state.settings.public_url;
    Ok(Json(rows.into_iter().map(|r| info(r, url)).collect()))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<FunctionInfo>> {
    caller.require(Action::ReadFunctions, None)?;
    check_name(&name)?;
    let row = db::get_function(&state.db, &name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("function {name:?} not found")))?;
    Ok(Json(info(row, &state.settings.public_url)))
}

/// Deletes the rows (deployments and crash rows cascade), tells proxies,
/// then removes the images (the containers still using them first, with
/// retries) and the artifacts no other deployment references (see `gc`).
/// What cannot be removed is logged, not fatal: the function is gone.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    caller.require(Action::DeleteFunction, None)?;
    check_name(&name)?;
    let row = db::get_function(&state.db, &name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("function {name:?} not found")))?;
    caller.require(Action::DeleteFunction, Some(&row))?;
    let deleted = db::delete_function(&state.db, &name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("function {name:?} not found")))?;
    tracing::info!(function = %name, versions = deleted.versions.len(), "function deleted");
    state.watchers.await_proxies(deleted.revision).await;
    // The images the rows named, and each version's name as its build gave
    // it: a failed version names none, but its build may have made one.
    let mut images: Vec<String> = deleted
        .versions
        .iter()
        .map(|&(v, id)| state.images.tag(&name, v, id))
        .collect();
    images.extend(deleted.images);
    images.sort();
    images.dedup();
    for image in images {
        if let Err(err) = gc::remove_image(&state.podman, &image).await {
            tracing::warn!(%err, %image, "could not remove the image of a deleted function");
        }
    }
    let dir = state.settings.artifacts_dir();
    for artifact in deleted.artifacts {
        match gc::collect_artifact(&state.db, &dir, &artifact).await {
            Ok(true) => tracing::debug!(%artifact, "artifact removed"),
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(err = format!("{err:#}"), %artifact, "could not remove the artifact of a deleted function")
            }
        }
    }
    Ok(StatusCode::NO_CONTENT)
}
