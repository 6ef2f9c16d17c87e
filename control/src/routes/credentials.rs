//! The handlers of a function's credentials, written once for each kind
//! ([`CredentialRoutes`]): `GET|POST /api/v1/functions/{name}/keys` and
//! `DELETE …/keys/{id}` (invocation keys, `routes/keys.rs`), `GET|POST
//! …/signing-keys` and `DELETE …/signing-keys/{key_id}` (HMAC signing keys,
//! `routes/signing_keys.rs`). The secret is answered once, at creation,
//! and never answered, logged or audited again. Creating or revoking one
//! bumps the route revision and answers once every live proxy has applied
//! it (bounded, as a deploy), so a revoked credential is refused when this
//! answers. Managing needs the owner or an admin, listing a reader.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use containerpub_wire::private::MAX_KEY_LABEL_LEN;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::{Action, Caller};
use crate::credentials::{self, Credential};
use crate::error::{Error, Result};
use crate::routes::json;
use crate::state::AppState;

/// What the HTTP API says of a credential kind beyond [`Credential`].
pub trait CredentialRoutes: Credential {
    /// The body of a creation (may be empty: the default).
    type Request: DeserializeOwned + Default;
    /// The answer to a creation, with the secret.
    type Created: Serialize;
    /// What the body of a creation is, in its error (`key`).
    const REQUEST: &'static str;

    fn label(request: &Self::Request) -> &str;
    fn created(info: Self::Info, secret: String) -> Self::Created;
    /// The id in a revocation's path, checked.
    fn parse_id(id: String) -> Result<Self::Id>;
    fn log_created(function: &str, info: &Self::Info);
    fn log_revoked(function: &str, id: &Self::Id);
}

/// Checks a label: at most [`MAX_KEY_LABEL_LEN`] characters, none a
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

pub async fn create<C: CredentialRoutes>(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<axum::response::Response> {
    caller
        .require_function(&state.db, Action::ManageFunction, &name)
        .await?;
    let (user_id, _) = caller.user()?;
    let request: C::Request = if body.is_empty() {
        C::Request::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::bad_request("body", format!("not a {} request: {e}", C::REQUEST)))?
    };
    let label = C::label(&request).trim();
    check_label(label)?;
    let (info, secret, revision) =
        credentials::create::<C>(&state.db, &state.vault, &name, label, Some(user_id)).await?;
    C::log_created(&name, &info);
    state.watchers.await_proxies(revision).await;
    Ok(json(StatusCode::CREATED, C::created(info, secret)))
}

pub async fn list<C: CredentialRoutes>(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<C::Info>>>
where
    C::Info: Serialize,
{
    caller
        .require_function(&state.db, Action::ReadFunctions, &name)
        .await?;
    Ok(Json(credentials::list::<C>(&state.db, &name).await?))
}

pub async fn revoke<C: CredentialRoutes>(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode> {
    caller
        .require_function(&state.db, Action::ManageFunction, &name)
        .await?;
    let id = C::parse_id(id)?;
    let revision = credentials::revoke::<C>(&state.db, &name, &id).await?;
    C::log_revoked(&name, &id);
    state.watchers.await_proxies(revision).await;
    Ok(StatusCode::NO_CONTENT)
}
