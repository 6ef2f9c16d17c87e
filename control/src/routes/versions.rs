//! `GET /api/v1/functions/{name}/versions` (every version, newest first)
//! and `POST /api/v1/functions/{name}/rollback` (reactivate an earlier
//! version's image without a build; see `history`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use containerpub_wire::api::{RollbackRequest, VersionInfo};

use crate::auth::{Action, Caller};
use crate::error::{Error, Result};
use crate::history::{self, Derived};
use crate::routes::json;
use crate::state::AppState;

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<VersionInfo>>> {
    caller
        .require_function(&state.db, Action::ReadFunctions, &name)
        .await?;
    Ok(Json(history::list(&state.db, &name).await?))
}

/// 201 + `VersionInfo` of the new active version once every live proxy
/// serves it. An empty body rolls back to the newest built version below
/// the active one.
pub async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response> {
    caller
        .require_function(&state.db, Action::ManageFunction, &name)
        .await?;
    let (user_id, username) = caller.user()?;
    let request: RollbackRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::bad_request("body", format!("not a rollback request: {e}")))?
    };
    let derived = history::rollback(&state.db, &name, user_id, request.to).await?;
    tracing::info!(function = %name, version = derived.info.version, to = ?derived.info.source_version, user = %username, "rolled back");
    Ok(finish(state, &name, derived).await)
}

/// Waits until the proxies serve the new version, applies retention in the
/// background, and answers 201 with the version.
pub(crate) async fn finish(state: AppState, name: &str, derived: Derived) -> Response {
    state.watchers.await_proxies(derived.revision).await;
    let name = name.to_owned();
    tokio::spawn(async move { history::retain(&state, &name).await });
    json(StatusCode::CREATED, derived.info)
}
