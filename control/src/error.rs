//! The control plane's error type. Client errors become a JSON
//! [`containerpub_wire::api::ApiError`] that names what was wrong; internal
//! errors are logged and answered with a generic 500.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use containerpub_wire::api::ApiError;

/// Every failure a handler can answer with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: the request is wrong; `field` names the input at fault.
    #[error("{message}")]
    BadRequest {
        field: Option<String>,
        message: String,
    },
    /// 401: no valid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated, but not allowed; says what is missing.
    #[error("{0}")]
    Forbidden(String),
    /// 404: the named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 409: the request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// 413: a size limit was exceeded.
    #[error("{message}")]
    TooLarge {
        field: Option<String>,
        message: String,
    },
    /// 429: too many attempts; try again after `retry_after_s` seconds.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after_s: u64 },
    /// 503: a dependency (Podman, PostgreSQL) is unavailable right now.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or an infrastructure failure; details only in the log.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadRequest {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub fn too_large(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::TooLarge {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        Self::Internal(anyhow::Error::new(err).context("database"))
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Self::Internal(anyhow::Error::new(err).context("i/o"))
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            Self::TooManyRequests { retry_after_s, .. } => Some(*retry_after_s),
            _ => None,
        };
        let body = match self {
            Self::BadRequest { field, message } | Self::TooLarge { field, message } => ApiError {
                error: message,
                field,
            },
            Self::Unauthorized(m)
            | Self::Forbidden(m)
            | Self::NotFound(m)
            | Self::Conflict(m)
            | Self::TooManyRequests { message: m, .. } => ApiError {
                error: m,
                field: None,
            },
            Self::Unavailable(m) => {
                tracing::warn!(error = %m, "dependency unavailable");
                ApiError {
                    error: m,
                    field: None,
                }
            }
            Self::Internal(err) => {
                tracing::error!(error = format!("{err:#}"), "internal error");
                ApiError {
                    error: "internal error (see the control plane's log)".into(),
                    field: None,
                }
            }
        };
        // The message, for the audit log (`crate::audit`).
        let message = crate::audit::ErrorMessage(body.error.clone());
        let mut response = (status, Json(body)).into_response();
        response.extensions_mut().insert(message);
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
