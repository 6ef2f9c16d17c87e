//! `POST /api/v1/functions/{name}/config` (`cpub scale`, `cpub env`): a new
//! version on the active image with the manifest values changed, no build
//! (see `history::change_config`). Scaling changes alone keep the running
//! instances (the pool updates their set in place); memory, CPU and
//! environment changes start new instances, the old ones drain.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use containerpub_wire::api::ConfigChange;

use crate::auth::{Action, Caller};
use crate::error::{Error, Result};
use crate::history;
use crate::state::AppState;

/// Largest accepted change body.
const MAX_BODY: usize = 256 * 1024;

/// 201 + `VersionInfo` once every live proxy serves the new version.
pub async fn change(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response> {
    caller
        .require_function(&state.db, Action::ManageFunction, &name)
        .await?;
    let (user_id, username) = caller.user()?;
    if body.len() > MAX_BODY {
        return Err(Error::too_large(
            "body",
            format!("a config change is at most {MAX_BODY} bytes"),
        ));
    }
    let change: ConfigChange = serde_json::from_slice(&body)
        .map_err(|e| Error::bad_request("body", format!("not a config change: {e}")))?;
    let derived = history::change_config(&state.db, &name, user_id, &change).await?;
    tracing::info!(function = %name, version = derived.info.version, note = %derived.info.note, same_instances = derived.same_instances, user = %username, "configuration changed");
    Ok(super::versions::finish(state, &name, derived).await)
}
