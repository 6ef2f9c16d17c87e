//! `POST /api/v1/auth/login`: username and password for a new API token
//! (kind `login`) that expires after `CPUB_LOGIN_TOKEN_LIFETIME` (the
//! answer says when), rate-limited per source address and per user
//! (`crate::login_limit`), and
//! `GET /api/v1/whoami`: who the presented token belongs to.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use containerpub_wire::access::WhoAmI;
use containerpub_wire::api::{LoginRequest, LoginResponse};

use crate::audit::Actor;
use crate::auth::{self, Action, Caller, PeerAddr, Principal};
use crate::error::{Error, Result};
use crate::state::AppState;

pub async fn login(State(state): State<AppState>, peer: PeerAddr, body: Bytes) -> Response {
    let request: LoginRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return Error::bad_request(
                "body",
                format!("expected {{\"username\": \"…\", \"password\": \"…\"}}: {e}"),
            )
            .into_response();
        }
    };
    let mut actor = Actor {
        name: request.username.chars().take(128).collect(),
        role: None,
    };
    let mut response = match try_login(&state, peer, request).await {
        Ok((answer, role)) => {
            actor.role = Some(role);
            Json(answer).into_response()
        }
        Err(err) => err.into_response(),
    };
    response.extensions_mut().insert(actor);
    response
}

async fn try_login(
    state: &AppState,
    peer: PeerAddr,
    request: LoginRequest,
) -> Result<(LoginResponse, containerpub_wire::access::Role)> {
    let address = peer.text();
    let limits = &state.login_limits;
    limits
        .attempt(&address, &request.username)
        .map_err(|retry_after_s| Error::TooManyRequests {
            message: format!(
                "too many login attempts for user {:?} or from {address}; try again in \
                 {retry_after_s} s",
                request.username
            ),
            retry_after_s,
        })?;
    let Some(user) = auth::check_login(&state.db, &request.username, &request.password).await?
    else {
        limits.failed(&request.username);
        return Err(Error::Unauthorized("wrong username or password".into()));
    };
    limits.succeeded(&request.username);
    let lifetime = state.settings.login_token_lifetime;
    let Some(issued) = auth::issue_login_token(&state.db, &user, lifetime).await? else {
        // The password changed (or the user went) since it was checked.
        return Err(Error::Unauthorized("wrong username or password".into()));
    };
    tracing::info!(
        user = %request.username,
        role = %user.role,
        expires_at = %issued.expires_at,
        "login"
    );
    Ok((
        LoginResponse {
            token: issued.token,
            username: request.username,
            expires_at: Some(issued.expires_at),
        },
        user.role,
    ))
}

/// Who the caller is and what its token may do.
pub async fn whoami(caller: Caller) -> Result<Json<WhoAmI>> {
    caller.require(Action::ManageOwnAccount, None)?;
    let Principal::User { username, role, .. } = &caller.principal else {
        return Err(Error::Forbidden("a node credential is not a user".into()));
    };
    Ok(Json(WhoAmI {
        username: username.clone(),
        role: *role,
        effective_role: caller.role().unwrap_or(*role),
        token_id: caller.token_id,
    }))
}
