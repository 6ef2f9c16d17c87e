//! `POST /api/v1/functions/{name}/deployments` (deploy a `.tar.gz` bundle,
//! streamed; `?detach=true` answers 202 once the build started, see
//! `routes/builds.rs`) and `GET` (the function's deployments, newest first).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use containerpub_wire::api::DeploymentInfo;

use crate::auth::{Action, Caller};
use crate::db;
use crate::deploy::{self, Deployed};
use crate::error::{Error, Result};
use crate::routes::{check_name, json};
use crate::state::AppState;

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<DeploymentInfo>>> {
    caller.require(Action::ReadFunctions, None)?;
    check_name(&name)?;
    if db::get_function(&state.db, &name).await?.is_none() {
        return Err(Error::NotFound(format!("function {name:?} not found")));
    }
    Ok(Json(db::list_deployments(&state.db, &name).await?))
}

/// 201 + `DeploymentInfo` when built and active; 422 + `DeploymentInfo`
/// (status `failed`, `build_log`) when the build failed.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    // Before the upload is read: a viewer does not get to send 64 MiB. The
    // ownership of an existing function is checked again where the version
    // is taken (`db::create_deployment`), so a function created meanwhile
    // by someone else is not taken over.
    caller.require(Action::Deploy, None)?;
    check_name(&name)?;
    let existing = db::get_function(&state.db, &name).await?;
    caller.require(Action::Deploy, existing.as_ref())?;
    let detach = crate::routes::builds::detach_query(query.as_deref())?;
    let limit = state.settings.limits.max_upload_bytes;
    if let Some(length) = headers.get(header::CONTENT_LENGTH) {
        let length: u64 = length
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::bad_request("Content-Length", "not a number"))?;
        if length > limit {
            return Err(Error::too_large(
                "Content-Length",
                format!("the upload is {length} bytes; the limit is {limit} bytes"),
            ));
        }
    }
    let upload = deploy::receive(body, &state.settings.tmp_dir(), limit).await?;
    tracing::debug!(function = %name, bytes = upload.bytes, "upload received");
    // From here on the work must finish even if the client goes away.
    if detach {
        return crate::routes::builds::start_detached(state, caller, name, upload).await;
    }
    let task = tokio::spawn(deploy::deploy(state, caller, name, upload, None));
    let deployed = task
        .await
        .map_err(|e| anyhow::anyhow!("deploy task: {e}"))??;
    Ok(match deployed {
        Deployed::Built(info) => json(StatusCode::CREATED, info),
        Deployed::Failed(info) => json(StatusCode::UNPROCESSABLE_ENTITY, info),
    })
}
