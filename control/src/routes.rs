//! The HTTP API: `/healthz` and `/api/v1/*`. Every `/api/v1` route but
//! login sits behind the bearer-token middleware (handlers then call
//! `Caller::require`); every `/api/v1` route is a route of the audit layer
//! (`crate::audit::record`: mutating calls are recorded).

pub mod audit;
pub mod auth;
pub mod builds;
pub mod config;
pub mod crashes;
pub mod credentials;
pub mod deployments;
pub mod executions;
pub mod functions;
pub mod keys;
pub mod logs;
pub mod nodes;
pub mod secrets;
pub mod signing_keys;
pub mod stats;
pub mod status;
pub mod tokens;
pub mod usage;
pub mod users;
pub mod versions;
pub mod watch;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use containerpub_wire::request_id;
use tracing::Instrument;

use crate::access::InvocationKeys;
use crate::error::{Error, Result};
use crate::signing::SigningKeys;
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
        .route(
            "/functions/{name}/keys",
            get(credentials::list::<InvocationKeys>).post(credentials::create::<InvocationKeys>),
        )
        .route(
            "/functions/{name}/keys/{id}",
            delete(credentials::revoke::<InvocationKeys>),
        )
        .route("/functions/{name}/secrets", get(secrets::list))
        .route(
            "/functions/{name}/secrets/{key}",
            put(secrets::set).delete(secrets::unset),
        )
        .route(
            "/functions/{name}/signing-keys",
            get(credentials::list::<SigningKeys>).post(credentials::create::<SigningKeys>),
        )
        .route(
            "/functions/{name}/signing-keys/{key_id}",
            delete(credentials::revoke::<SigningKeys>),
        )
        .route("/functions/{name}/logs", get(logs::query))
        .route(
            "/logs",
            post(logs::ingest).layer(DefaultBodyLimit::max(
                containerpub_wire::logs::MAX_BATCH_BYTES,
            )),
        )
        .route("/functions/{name}/versions", get(versions::list))
        .route("/functions/{name}/rollback", post(versions::rollback))
        .route("/functions/{name}/config", post(config::change))
        .route("/functions/{name}/builds", get(builds::list))
        .route("/builds/{id}", get(builds::get))
        .route("/builds/{id}/log", get(builds::log))
        .route("/routes", get(watch::routes))
        .route("/whoami", get(auth::whoami))
        .route("/users", get(users::list).post(users::add))
        .route("/users/{username}", delete(users::remove))
        .route("/users/{username}/role", put(users::set_role))
        .route("/users/{username}/password", put(users::set_password))
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{id}", delete(tokens::revoke))
        .route("/nodes", get(nodes::list))
        .route("/nodes/{node}", delete(nodes::revoke))
        .route("/nodes/{node}/credential", post(nodes::create))
        .route("/audit", get(audit::list))
        .route(
            "/executions",
            post(executions::ingest).layer(DefaultBodyLimit::max(
                containerpub_wire::executions::MAX_BATCH_BYTES,
            )),
        )
        .route("/functions/{name}/executions", get(executions::list))
        .route("/functions/{name}/stats", get(stats::stats))
        .route("/functions/{name}/usage", get(usage::usage))
        .route("/status", get(status::status))
        .route(
            "/nodes/{node}/status",
            post(status::report).layer(DefaultBodyLimit::max(16 * 1024 * 1024)),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_token,
        ));
    let api = Router::new()
        .route("/auth/login", post(auth::login))
        .merge(protected)
        // Outside the token middleware: refused calls are recorded too.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::audit::record,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(crate::metrics::render))
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

/// Gives every request a span with an id (the caller's `x-request-id` when
/// it passes `containerpub_wire::request_id::is_valid`, the rule the proxy
/// applies too, else a new one) and logs its outcome.
async fn request_span(mut request: Request, next: Next) -> Response {
    let id = request_id::pick(
        request
            .headers()
            .get(request_id::HEADER)
            .map(HeaderValue::as_bytes),
    );
    let span = tracing::info_span!("request", id = %id, method = %request.method(), path = %request.uri().path());
    let route = crate::metrics::route_of(request.uri().path());
    let method = request.method().clone();
    if let Ok(value) = HeaderValue::from_str(&id) {
        request.headers_mut().insert(request_id::HEADER, value);
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
    crate::metrics::record_request(route, method.as_str(), status.as_u16(), started.elapsed());
    // The access log: one line per API request (target `cpub_access`).
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(target: "cpub_access", route, status = status.as_u16(), ms, "request failed");
        } else {
            tracing::info!(target: "cpub_access", route, status = status.as_u16(), ms, "request");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(request_id::HEADER, value);
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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    /// The id a request gets: the one the handler saw and the one answered.
    async fn id_for(incoming: Option<&[u8]>) -> (String, String) {
        let app = Router::new()
            .route(
                "/x",
                get(|request: axum::extract::Request| async move {
                    let seen = request.headers()[request_id::HEADER].as_bytes().to_vec();
                    String::from_utf8(seen).unwrap()
                }),
            )
            .layer(middleware::from_fn(request_span));
        let mut request = Request::get("/x");
        if let Some(id) = incoming {
            request = request.header(request_id::HEADER, HeaderValue::from_bytes(id).unwrap());
        }
        let response = app
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let answered = response.headers()[request_id::HEADER]
            .to_str()
            .unwrap()
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (String::from_utf8(body.to_vec()).unwrap(), answered)
    }

    #[tokio::test]
    async fn request_ids_follow_the_wire_rule() {
        // Kept: what the proxy keeps (it forwards those unchanged).
        let longest = "x".repeat(request_id::MAX_LEN);
        for id in [
            "abc",
            "0f8e2c1a-5b8d-4e3f-9a7c-2d1e0b9f8a7c",
            "a:b/c+d=",
            &longest,
        ] {
            assert!(request_id::is_valid(id.as_bytes()));
            assert_eq!(id_for(Some(id.as_bytes())).await, (id.into(), id.into()));
        }
        // Replaced: too long, control characters, not ASCII, characters that
        // could break a log line (header values that HTTP itself allows).
        let too_long = "x".repeat(request_id::MAX_LEN + 1);
        let hostile: [&[u8]; 7] = [
            too_long.as_bytes(),
            b"a\tb",
            b"caf\xc3\xa9",
            b"\xff\xfe",
            b"a b",
            b"<script>",
            b"a\"b",
        ];
        for id in hostile {
            let (seen, answered) = id_for(Some(id)).await;
            assert_ne!(seen.as_bytes(), id);
            assert_eq!(seen, answered);
            assert!(request_id::is_valid(seen.as_bytes()), "{seen:?}");
        }
        let (seen, answered) = id_for(None).await;
        assert_eq!((seen.len(), &seen), (32, &answered));
    }
}
