//! `GET /api/v1/functions/{name}/secrets` (names only), `PUT` and `DELETE
//! …/secrets/{key}`: a function's secrets, sealed at rest (`vault.rs`) and
//! added to its instances' environment. Values are never answered nor
//! logged; the value travels in the request body, never in the URL.
//! Instances already running keep the environment they started with: a
//! change reaches the instances started after it (the next deploy).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use containerpub_wire::private::{
    SecretInfo, SecretSetRequest, validate_secret_name, validate_secret_value,
};

use crate::access;
use crate::auth::{Action, Caller};
use crate::error::{Error, Result};
use crate::state::AppState;

fn check_key(key: &str) -> Result<()> {
    validate_secret_name(key).map_err(|m| Error::bad_request("key", m))
}

pub async fn set(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, key)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode> {
    caller
        .require_function(&state.db, Action::ManageFunction, &name)
        .await?;
    check_key(&key)?;
    // Never echo the body in an error: it holds the value.
    let request: SecretSetRequest = serde_json::from_slice(&body)
        .map_err(|_| Error::bad_request("body", "must be {\"value\": \"<the secret as text>\"}"))?;
    validate_secret_value(&request.value).map_err(|m| Error::bad_request("value", m))?;
    let revision = access::set_secret(&state.db, &state.vault, &name, &key, &request.value).await?;
    tracing::info!(function = %name, secret = %key, "secret set");
    state.watchers.await_proxies(revision).await;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<SecretInfo>>> {
    caller
        .require_function(&state.db, Action::ReadFunctions, &name)
        .await?;
    Ok(Json(access::list_secrets(&state.db, &name).await?))
}

pub async fn unset(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, key)): Path<(String, String)>,
) -> Result<StatusCode> {
    caller
        .require_function(&state.db, Action::ManageFunction, &name)
        .await?;
    check_key(&key)?;
    let revision = access::unset_secret(&state.db, &name, &key).await?;
    tracing::info!(function = %name, secret = %key, "secret removed");
    state.watchers.await_proxies(revision).await;
    Ok(StatusCode::NO_CONTENT)
}
