//! `POST /api/v1/auth/login`: username and password for a new API token.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use containerpub_wire::api::{LoginRequest, LoginResponse};

use crate::auth;
use crate::error::{Error, Result};
use crate::state::AppState;

pub async fn login(State(state): State<AppState>, body: Bytes) -> Result<Json<LoginResponse>> {
    let request: LoginRequest = serde_json::from_slice(&body).map_err(|e| {
        Error::bad_request(
            "body",
            format!("expected {{\"username\": \"…\", \"password\": \"…\"}}: {e}"),
        )
    })?;
    let user_id = auth::check_login(&state.db, &request.username, &request.password)
        .await?
        .ok_or_else(|| Error::Unauthorized("wrong username or password".into()))?;
    let token = auth::issue_token(&state.db, user_id, "login").await?;
    tracing::info!(user = %request.username, "login");
    Ok(Json(LoginResponse {
        token,
        username: request.username,
    }))
}
