//! The HTTP API: `/healthz` and `/api/v1/*`. Every `/api/v1` route but
//! login sits behind the bearer-token middleware.

pub mod auth;
pub mod crashes;
pub mod deployments;
pub mod functions;
pub mod watch;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::RngCore;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::state::AppState;

/// The whole application.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/functions", get(functions::list))
        .route(
            "/functions/{name}",
            get(functions::get).delete(functions::delete),
        )
        .route(
            "/functions/{name}/deployments",
            get(deployments::list)
                .post(deployments::create)
                // The upload is streamed and limited by the handler.
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/functions/{name}/crashes",
            get(crashes::list).post(crashes::report),
        )
        .route("/routes", get(watch::routes))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_token,
        ));
    let api = Router::new()
        .route("/auth/login", post(auth::login))
        .merge(protected);
    Router::new()
        .route("/healthz", get(healthz))
        .nest("/api/v1", api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(require_host))
        .layer(middleware::from_fn(request_span))
        .with_state(state)
}

/// `GET /healthz`: 200 once the database answers.
async fn healthz(State(state): State<AppState>) -> Result<&'static str> {
    sqlx::query("SELECT 1")
        .execute(&state.db)
        .await
        .map_err(|_| Error::Unavailable("database unreachable".into()))?;
    Ok("ok\n")
}

async fn not_found(request: Request) -> Error {
    Error::NotFound(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}

async fn method_not_allowed(request: Request) -> Response {
    let body = containerpub_wire::api::ApiError {
        error: format!(
            "method {} not allowed on {}",
            request.method(),
            request.uri().path()
        ),
        field: None,
    };
    json(StatusCode::METHOD_NOT_ALLOWED, body)
}

/// HTTP/1.1 requires exactly one `Host` header (RFC 9112 §3.2: "A server
/// MUST respond with a 400 (Bad Request) status code to any HTTP/1.1
/// request message that lacks a Host header field and to any request
/// message that contains more than one Host header field"); hyper leaves
/// that to the application.
async fn require_host(request: Request, next: Next) -> Response {
    let hosts = request
        .headers()
        .get_all(axum::http::header::HOST)
        .iter()
        .count();
    let required = request.version() == axum::http::Version::HTTP_11;
    if hosts > 1 || (required && hosts == 0) {
        let message = if hosts > 1 {
            "the request has more than one Host header"
        } else {
            "an HTTP/1.1 request needs a Host header"
        };
        return Error::bad_request("Host", message).into_response();
    }
    next.run(request).await
}

/// Gives every request a span with an id (taken from `x-request-id` when
/// the caller sent a sane one) and logs its outcome.
async fn request_span(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let mut b = [0u8; 8];
            rand::thread_rng().fill_bytes(&mut b);
            hex::encode(b)
        });
    let span = tracing::info_span!("request", id = %id, method = %request.method(), path = %request.uri().path());
    if let Ok(value) = HeaderValue::from_str(&id) {
        request.headers_mut().insert("x-request-id", value);
    }
    // A request body that an error answer may have left unread.
    let has_body = request.headers().contains_key("transfer-encoding")
        || request
            .headers()
            .get("content-length")
            .is_some_and(|v| v.as_bytes() != b"0");
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    let ms = started.elapsed().as_millis() as u64;
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), ms, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), ms, "request done");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    if has_body && (status.is_client_error() || status.is_server_error()) {
        // The body may be unread (a 413 stops reading): say the connection
        // ends so a client does not reuse it and fail its next request.
        response
            .headers_mut()
            .insert("connection", HeaderValue::from_static("close"));
    }
    response
}

/// 400 naming `name` when it is not a valid function name.
pub(crate) fn check_name(name: &str) -> Result<()> {
    containerpub_wire::validate_function_name(name).map_err(|m| Error::bad_request("name", m))
}

/// `(status, json)` as a response.
pub(crate) fn json<T: serde::Serialize>(status: StatusCode, body: T) -> Response {
    (status, axum::Json(body)).into_response()
}
