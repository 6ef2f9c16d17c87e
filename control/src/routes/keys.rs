//! `GET|POST /api/v1/functions/{name}/keys` and `DELETE …/keys/{id}`: the
//! invocation keys of a private function. A key is answered once, at
//! creation; only its sha256 is stored. Creating or revoking a key bumps
//! the route revision and answers once every live proxy has applied it
//! (bounded, as a deploy), so a revoked key is refused when this answers.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use containerpub_wire::private::{KeyCreateRequest, KeyCreated, KeyInfo, MAX_KEY_LABEL_LEN};

use crate::access;
use crate::auth::{Action, Caller};
use crate::error::{Error, Result};
use crate::routes::json;
use crate::state::AppState;

/// Checks a key label: at most [`MAX_KEY_LABEL_LEN`] characters, none a
/// control character.
fn check_label(label: &str) -> Result<()> {
    if label.chars().count() > MAX_KEY_LABEL_LEN || label.chars().any(char::is_control) {
        return Err(Error::bad_request(
            "label",
            format!("must be at most {MAX_KEY_LABEL_LEN} characters without control characters"),
        ));
    }
    Ok(())
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<axum::response::Response> {
    caller
        .require_function(&state.db, Action::ManageFunction, &name)
        .await?;
    let (user_id, _) = caller.user()?;
    let request: KeyCreateRequest = if body.is_empty() {
        KeyCreateRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::bad_request("body", format!("not a key request: {e}")))?
    };
    let label = request.label.trim();
    check_label(label)?;
    let (info, key, revision) = access::create_key(&state.db, &name, label, Some(user_id)).await?;
    tracing::info!(function = %name, key_id = info.id, prefix = %info.prefix, "invocation key created");
    crate::watchers::await_proxies(&state, revision).await;
    Ok(json(StatusCode::CREATED, KeyCreated { info, key }))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<KeyInfo>>> {
    caller
        .require_function(&state.db, Action::ReadFunctions, &name)
        .await?;
    Ok(Json(access::list_keys(&state.db, &name).await?))
}

pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode> {
    caller
        .require_function(&state.db, Action::ManageFunction, &name)
        .await?;
    let id: i64 = id.parse().ok().filter(|id| *id > 0).ok_or_else(|| {
        Error::bad_request(
            "id",
            format!("must be a key id (a positive integer, see cpub key list), got {id:?}"),
        )
    })?;
    let revision = access::revoke_key(&state.db, &name, id).await?;
    tracing::info!(function = %name, key_id = id, "invocation key revoked");
    crate::watchers::await_proxies(&state, revision).await;
    Ok(StatusCode::NO_CONTENT)
}
