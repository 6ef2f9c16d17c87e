//! `GET|POST /api/v1/functions/{name}/signing-keys` and `DELETE
//! …/signing-keys/{key_id}`: a function's HMAC signing keys
//! (`crate::signing`). The secret is answered once, at creation; it is
//! stored sealed under the master key and never answered, logged or
//! audited again. Creating or revoking a key bumps the route revision and
//! answers once every live proxy applied it (bounded, as a deploy), so a
//! revoked key is refused when this answers.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use containerpub_wire::private::MAX_KEY_LABEL_LEN;
use containerpub_wire::signing::{
    SigningKeyCreateRequest, SigningKeyCreated, SigningKeyInfo, is_key_id_shaped,
};

use crate::auth::{Action, Caller};
use crate::error::{Error, Result};
use crate::routes::json;
use crate::signing;
use crate::state::AppState;

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
    let request: SigningKeyCreateRequest = if body.is_empty() {
        SigningKeyCreateRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::bad_request("body", format!("not a signing-key request: {e}")))?
    };
    let label = request.label.trim();
    if label.chars().count() > MAX_KEY_LABEL_LEN || label.chars().any(char::is_control) {
        return Err(Error::bad_request(
            "label",
            format!("must be at most {MAX_KEY_LABEL_LEN} characters without control characters"),
        ));
    }
    let (info, secret, revision) =
        signing::create(&state.db, &state.vault, &name, label, Some(user_id)).await?;
    tracing::info!(function = %name, key_id = %info.key_id, "signing key created");
    crate::watchers::await_proxies(&state, revision).await;
    Ok(json(
        StatusCode::CREATED,
        SigningKeyCreated { info, secret },
    ))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<SigningKeyInfo>>> {
    caller
        .require_function(&state.db, Action::ReadFunctions, &name)
        .await?;
    Ok(Json(signing::list(&state.db, &name).await?))
}

pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, key_id)): Path<(String, String)>,
) -> Result<StatusCode> {
    caller
        .require_function(&state.db, Action::ManageFunction, &name)
        .await?;
    if !is_key_id_shaped(&key_id) {
        let shown: String = key_id.chars().take(40).collect();
        return Err(Error::bad_request(
            "key_id",
            format!(
                "must be a signing key id (sk_ + 16 hex digits, see cpub signing-key list), got {shown:?}"
            ),
        ));
    }
    let revision = signing::revoke(&state.db, &name, &key_id).await?;
    tracing::info!(function = %name, %key_id, "signing key revoked");
    crate::watchers::await_proxies(&state, revision).await;
    Ok(StatusCode::NO_CONTENT)
}
