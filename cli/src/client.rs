//! HTTP client for the control plane's `/api/v1` API, and the errors (with a
//! hint for the user) that its answers turn into.
//!
//! Over 600 lines with its unit tests: about 570 of code (a method per API
//! call, each a request and the error hints for its answers) and 100 of tests.

mod access;

use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result};
use containerpub_wire::api::{
    ApiError, ConfigChange, CrashInfo, DeploymentInfo, FunctionInfo, LoginRequest, LoginResponse,
    RollbackRequest, VersionInfo,
};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

/// `User-Agent` of every request the CLI sends.
pub const USER_AGENT: &str = concat!("cpub/", env!("CARGO_PKG_VERSION"));

/// Longest wait for a TCP connection to the control plane (or the proxy).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default deadline of one call, from sending to the end of the answer
/// (`--timeout`, `CPUB_TIMEOUT`).
pub const DEFAULT_DEADLINE_S: u64 = 30;

/// Deadline of a deploy: the upload and the server-side build (the control
/// plane's default build limit is 10 minutes) in one call.
pub const DEPLOY_DEADLINE: Duration = Duration::from_secs(20 * 60);

/// The server answered with an error status; `error`/`field` come from its
/// `ApiError` body (or the raw body when it was not one).
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub error: String,
    pub field: Option<String>,
    /// The body was the control plane's error form (`{"error": …}`), not a
    /// page of something in front of it (a proxy, a load balancer).
    pub from_api: bool,
}

impl ApiFailure {
    /// Whether `err` is (or was caused by) the control plane's 400 naming
    /// `field`: what it answers when a call needs a value it did not get.
    pub fn names_field(err: &anyhow::Error, field: &str) -> bool {
        err.chain()
            .filter_map(|cause| cause.downcast_ref::<Self>())
            .any(|failure| {
                failure.from_api
                    && failure.status.as_u16() == 400
                    && failure.field.as_deref() == Some(field)
            })
    }
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server answered {}: {}", self.status, self.error)?;
        if let Some(field) = &self.field {
            write!(f, " (field `{field}`)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiFailure {}

impl ApiFailure {
    /// Reads an error response's body.
    pub async fn from_response(response: Response) -> Self {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        match serde_json::from_str::<ApiError>(&body) {
            Ok(api) => Self {
                status,
                error: api.error,
                field: api.field,
                from_api: true,
            },
            Err(_) => {
                let text = body.trim();
                let error = if text.is_empty() {
                    status.canonical_reason().unwrap_or("no message").to_owned()
                } else {
                    text.chars().take(500).collect()
                };
                Self {
                    status,
                    error,
                    field: None,
                    from_api: false,
                }
            }
        }
    }

    fn hint(&self) -> Option<String> {
        Some(
            match self.status {
                StatusCode::UNAUTHORIZED => {
                    "check the credentials, or log in again with `cpub login` (or set CPUB_TOKEN)"
                }
                StatusCode::FORBIDDEN => "this token's user may not do that",
                StatusCode::NOT_FOUND => "check the name with `cpub list`",
                StatusCode::PAYLOAD_TOO_LARGE => {
                    "the bundle is too large; leave out files with a .cpubignore"
                }
                StatusCode::BAD_REQUEST if self.field.is_some() => {
                    "fix the named field or file in the bundle and deploy again"
                }
                s if s.is_server_error() => "the control plane failed; check its logs",
                _ => return None,
            }
            .to_owned(),
        )
    }
}

/// The control plane could not be reached at all.
#[derive(Debug)]
pub struct Unreachable {
    pub url: String,
    pub source: reqwest::Error,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot reach {}: {}",
            self.url,
            error_chain(&self.source)
        )
    }
}

impl std::error::Error for Unreachable {}

/// The control plane (or the proxy) did not answer within the deadline.
#[derive(Debug)]
pub struct TimedOut {
    pub url: String,
    pub after: Duration,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} did not answer within {} s",
            self.url,
            self.after.as_secs_f64()
        )
    }
}

impl std::error::Error for TimedOut {}

/// A transport error as `Unreachable`, or `TimedOut` when a deadline ran out
/// (the connect timeout counts as unreachable).
pub fn transport_error(url: &str, deadline: Duration, source: reqwest::Error) -> anyhow::Error {
    if source.is_timeout() && !source.is_connect() {
        TimedOut {
            url: url.to_owned(),
            after: deadline,
        }
        .into()
    } else {
        Unreachable {
            url: url.to_owned(),
            source,
        }
        .into()
    }
}

/// Renders an error and its sources on one line (reqwest hides the cause,
/// such as "connection refused", in `source()`).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A hint for the user about `err`, if one of its causes is known.
pub fn hint_for(err: &anyhow::Error) -> Option<String> {
    err.chain().find_map(|cause| {
        if let Some(failure) = cause.downcast_ref::<ApiFailure>() {
            failure.hint()
        } else if cause.downcast_ref::<Unreachable>().is_some() {
            Some("is cpub-control running there? set the URL with `cpub login --url URL` or CPUB_URL".into())
        } else if cause.downcast_ref::<TimedOut>().is_some() {
            Some("the server accepted the connection but did not answer in time; check that it is not hung or overloaded, or allow more time with --timeout SECONDS (CPUB_TIMEOUT)".into())
        } else {
            None
        }
    })
}

/// The answer to a deploy: the build either produced the new active version
/// or failed with a log, or (detached) it started.
pub enum DeployAnswer {
    Active(DeploymentInfo),
    Failed(DeploymentInfo),
    /// 202: the build runs on the server; its id is the deployment's.
    Started(DeploymentInfo),
}

/// A JSON answer both as the server sent it (for `--output json`) and typed.
pub struct Json<T> {
    pub raw: serde_json::Value,
    pub typed: T,
}

/// Client for one control plane.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    /// Deadline of every call but a deploy.
    deadline: Duration,
}

impl Client {
    /// A client for `base` (`http://host:port`, any trailing `/` ignored).
    pub fn new(base: &str, token: Option<&str>) -> Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        reqwest::Url::parse(&base)
            .with_context(|| format!("invalid control-plane URL {base:?}"))?;
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            http,
            base,
            token: token.map(str::to_owned),
            deadline: Duration::from_secs(DEFAULT_DEADLINE_S),
        })
    }

    /// Sets the deadline of every call but a deploy.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    fn authed(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends with the call's deadline (covering the answer's body too),
    /// mapping transport errors to `Unreachable` / `TimedOut`; the status
    /// is not checked.
    async fn send_raw(&self, request: RequestBuilder) -> Result<Response> {
        self.send_within(request, self.deadline).await
    }

    async fn send_within(&self, request: RequestBuilder, deadline: Duration) -> Result<Response> {
        self.authed(request)
            .timeout(deadline)
            .send()
            .await
            .map_err(|source| transport_error(&self.base, deadline, source))
    }

    /// Reads a JSON answer (its body is under the call's deadline too).
    async fn read_json(&self, response: Response, what: &str) -> Result<serde_json::Value> {
        let bytes = response
            .bytes()
            .await
            .map_err(|source| transport_error(&self.base, self.deadline, source))
            .with_context(|| format!("cannot read the answer to {what}"))?;
        serde_json::from_slice(&bytes).with_context(|| format!("invalid JSON from {what}"))
    }

    /// Sends and turns any non-2xx answer into an `ApiFailure`.
    async fn send(&self, request: RequestBuilder) -> Result<Response> {
        let response = self.send_raw(request).await?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(ApiFailure::from_response(response).await.into())
        }
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<Json<T>> {
        let response = self.send(self.http.get(self.url(path))).await?;
        let raw = self.read_json(response, &format!("GET {path}")).await?;
        let typed = serde_json::from_value(raw.clone())
            .with_context(|| format!("unexpected answer to GET {path}"))?;
        Ok(Json { raw, typed })
    }

    /// `GET path?query` as JSON (the views of execution records).
    pub async fn get_json_query<T: DeserializeOwned, Q: serde::Serialize + ?Sized>(
        &self,
        path: &str,
        query: &Q,
    ) -> Result<Json<T>> {
        let response = self
            .send(self.http.get(self.url(path)).query(query))
            .await?;
        let raw: serde_json::Value = response
            .json()
            .await
            .with_context(|| format!("invalid JSON from GET {path}"))?;
        let typed = serde_json::from_value(raw.clone())
            .with_context(|| format!("unexpected answer to GET {path}"))?;
        Ok(Json { raw, typed })
    }

    /// `POST /auth/login`.
    pub async fn login(&self, username: &str, password: &str) -> Result<LoginResponse> {
        let body = LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        let response = self
            .send(self.http.post(self.url("/auth/login")).json(&body))
            .await?;
        let raw = self.read_json(response, "POST /auth/login").await?;
        serde_json::from_value(raw).context("invalid login answer")
    }

    /// `GET /functions`.
    pub async fn functions(&self) -> Result<Json<Vec<FunctionInfo>>> {
        self.get_json("/functions").await
    }

    /// `GET /functions/{name}`.
    pub async fn function(&self, name: &str) -> Result<Json<FunctionInfo>> {
        self.get_json(&format!("/functions/{name}")).await
    }

    /// `GET /functions/{name}/deployments`.
    pub async fn deployments(&self, name: &str) -> Result<Json<Vec<DeploymentInfo>>> {
        self.get_json(&format!("/functions/{name}/deployments"))
            .await
    }

    /// `GET /functions/{name}/crashes`: the last crash per proxy node.
    pub async fn crashes(&self, name: &str) -> Result<Json<Vec<CrashInfo>>> {
        self.get_json(&format!("/functions/{name}/crashes")).await
    }

    /// `GET /functions/{name}/usage`.
    pub async fn usage(&self, name: &str) -> Result<Json<containerpub_wire::usage::FunctionUsage>> {
        self.get_json(&format!("/functions/{name}/usage")).await
    }

    /// `GET /functions/{name}/logs` (a long poll when `query` waits).
    pub async fn logs(
        &self,
        name: &str,
        query: &containerpub_wire::logs::LogQuery,
    ) -> Result<containerpub_wire::logs::LogPage> {
        let path = format!("/functions/{name}/logs");
        let response = self
            .send(self.http.get(self.url(&path)).query(query))
            .await?;
        response
            .json()
            .await
            .with_context(|| format!("unexpected answer to GET {path}"))
    }

    /// `GET /functions/{name}/versions`, newest first.
    pub async fn versions(&self, name: &str) -> Result<Json<Vec<VersionInfo>>> {
        self.get_json(&format!("/functions/{name}/versions")).await
    }

    async fn post_json<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Json<T>> {
        let response = self.send(self.http.post(self.url(path)).json(body)).await?;
        let raw = self.read_json(response, &format!("POST {path}")).await?;
        let typed = serde_json::from_value(raw.clone())
            .with_context(|| format!("unexpected answer to POST {path}"))?;
        Ok(Json { raw, typed })
    }

    /// `POST /functions/{name}/rollback`: the new active version.
    pub async fn rollback(&self, name: &str, to: Option<i32>) -> Result<Json<VersionInfo>> {
        self.post_json(
            &format!("/functions/{name}/rollback"),
            &RollbackRequest { to },
        )
        .await
    }

    /// `POST /functions/{name}/config`: the new active version.
    pub async fn change_config(
        &self,
        name: &str,
        change: &ConfigChange,
    ) -> Result<Json<VersionInfo>> {
        self.post_json(&format!("/functions/{name}/config"), change)
            .await
    }

    /// `GET /functions/{name}/builds`, newest first, without logs.
    pub async fn builds(&self, name: &str) -> Result<Json<Vec<DeploymentInfo>>> {
        self.get_json(&format!("/functions/{name}/builds")).await
    }

    /// `GET /builds/{id}`: the build's deployment and stored log.
    pub async fn build(&self, id: i64) -> Result<Json<DeploymentInfo>> {
        self.get_json(&format!("/builds/{id}")).await
    }

    /// `GET /builds/{id}/log`: the answer, to be read as it comes. With
    /// `follow`, it lasts as long as the build (at most [`DEPLOY_DEADLINE`]).
    pub async fn build_log(&self, id: i64, follow: bool) -> Result<Response> {
        let query = if follow { "?follow=true" } else { "" };
        let request = self.http.get(self.url(&format!("/builds/{id}/log{query}")));
        let deadline = if follow {
            DEPLOY_DEADLINE.max(self.deadline)
        } else {
            self.deadline
        };
        let response = self.send_within(request, deadline).await?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(ApiFailure::from_response(response).await.into())
        }
    }

    /// Copies a build log answer to `out` as its pieces arrive.
    pub async fn copy_log(
        &self,
        mut response: Response,
        out: &mut impl std::io::Write,
    ) -> Result<()> {
        while let Some(piece) = response
            .chunk()
            .await
            .map_err(|source| transport_error(&self.base, DEPLOY_DEADLINE, source))
            .context("the build log broke off")?
        {
            out.write_all(&piece)
                .context("cannot write the build log")?;
            out.flush().context("cannot write the build log")?;
        }
        Ok(())
    }

    /// `DELETE /functions/{name}`.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.send(self.http.delete(self.url(&format!("/functions/{name}"))))
            .await?;
        Ok(())
    }

    /// `POST /functions/{name}/deployments` with a `.tar.gz` body of `len`
    /// bytes. Returns once the server has built (or failed to build) it.
    /// With `detach`, the server answers 202 as soon as the build started.
    /// Why the control plane cut an upload short, when it did so on
    /// purpose: a refusal that does not depend on the body (no or a
    /// wrong token, a role or scope without the right, an unknown
    /// function, too many requests) is answered before the body is read,
    /// and the connection closed — the client then sees only its write
    /// failing (EPIPE or a reset), never the answer. The same request with
    /// an empty body gets that answer; any other answer to it says nothing
    /// about the cut, and the transport error stands.
    async fn refusal_of_upload(&self, name: &str, query: &str) -> Option<anyhow::Error> {
        let probe = self
            .http
            .post(self.url(&format!("/functions/{name}/deployments{query}")))
            .header(reqwest::header::CONTENT_TYPE, "application/gzip")
            .header(reqwest::header::CONTENT_LENGTH, 0)
            .body(Vec::new());
        let response = self.send_within(probe, self.deadline).await.ok()?;
        let refused = matches!(
            response.status(),
            StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::NOT_FOUND
                | StatusCode::TOO_MANY_REQUESTS
        );
        if !refused {
            return None;
        }
        Some(ApiFailure::from_response(response).await.into())
    }

    pub async fn deploy(
        &self,
        name: &str,
        body: reqwest::Body,
        len: u64,
        detach: bool,
    ) -> Result<DeployAnswer> {
        let query = if detach { "?detach=true" } else { "" };
        let request = self
            .http
            .post(self.url(&format!("/functions/{name}/deployments{query}")))
            .header(reqwest::header::CONTENT_TYPE, "application/gzip")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body);
        let deadline = DEPLOY_DEADLINE.max(self.deadline);
        let response = match self.send_within(request, deadline).await {
            Ok(response) => response,
            Err(err) if err.downcast_ref::<Unreachable>().is_some() => {
                return Err(self.refusal_of_upload(name, query).await.unwrap_or(err));
            }
            Err(err) => return Err(err),
        };
        let status = response.status();
        if status.is_success() || status == StatusCode::UNPROCESSABLE_ENTITY {
            let text = response
                .text()
                .await
                .map_err(|source| transport_error(&self.base, deadline, source))
                .context("cannot read the deploy answer")?;
            if let Ok(info) = serde_json::from_str::<DeploymentInfo>(&text) {
                return Ok(if status == StatusCode::ACCEPTED {
                    DeployAnswer::Started(info)
                } else if status.is_success() {
                    DeployAnswer::Active(info)
                } else {
                    DeployAnswer::Failed(info)
                });
            }
            let failure = match serde_json::from_str::<ApiError>(&text) {
                Ok(api) => ApiFailure {
                    status,
                    error: api.error,
                    field: api.field,
                    from_api: true,
                },
                Err(err) => ApiFailure {
                    status,
                    error: format!("unexpected deploy answer ({err}): {}", text.trim()),
                    field: None,
                    from_api: false,
                },
            };
            return Err(failure.into());
        }
        Err(ApiFailure::from_response(response).await.into())
    }

    /// `method` on `path` (below `/api/v1`) with an optional JSON body; the
    /// answer's JSON, or `None` for an empty one (204). For the commands
    /// that need no parsing of their own (`key`, `secret`).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Option<serde_json::Value>> {
        let mut request = self.http.request(method.clone(), self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.send(request).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let value = response
            .json()
            .await
            .with_context(|| format!("invalid JSON from {method} {path}"))?;
        Ok(Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_message_names_the_field() {
        let failure = ApiFailure {
            status: StatusCode::BAD_REQUEST,
            error: "must be between 1 and 1000, got 0".into(),
            field: Some("scaling.max_instances".into()),
            from_api: true,
        };
        assert_eq!(
            failure.to_string(),
            "server answered 400 Bad Request: must be between 1 and 1000, got 0 \
             (field `scaling.max_instances`)"
        );
        let err = anyhow::Error::new(failure).context("deploying hello");
        assert!(hint_for(&err).unwrap().contains("field"));
    }

    /// A control plane that refuses a deploy before reading its body and
    /// closes (what axum does for a caller without the right): when the
    /// reset wins the race against the answer, the CLI asks again with an
    /// empty body and shows the refusal, not "cannot reach" (seen in CI: a
    /// viewer-scoped token's deploy failed with EPIPE instead of the 403).
    #[tokio::test]
    async fn an_upload_refused_before_its_body_shows_the_refusal() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&heads);
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && tcp.read(&mut byte).await.unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                seen.lock().unwrap().push(head.clone());
                if !head.contains("content-length: 0\r\n") {
                    // The answer lost to the reset (the race seen in CI,
                    // made certain here): the upload is cut, nothing read.
                    // A zero linger resets at once; it never blocks.
                    #[allow(deprecated)]
                    let _ = tcp.set_linger(Some(Duration::ZERO));
                    drop(tcp);
                    continue;
                }
                let body = br#"{"error":"this token is scoped to viewer"}"#;
                let answer = format!(
                    "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
                let _ = tcp.write_all(body).await;
                drop(tcp);
            }
        });
        let client = Client::new(&format!("http://{addr}"), Some("t")).unwrap();
        // Streamed in chunks, as `cpub deploy` sends a bundle (a body whole
        // in memory lets hyper read the early answer by itself).
        let chunks = 512usize;
        let len = chunks * 64 * 1024;
        let stream = futures_util::stream::iter(
            (0..chunks).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; 64 * 1024]))),
        );
        let err = client
            .deploy("f", reqwest::Body::wrap_stream(stream), len as u64, true)
            .await
            .map(|_| ())
            .unwrap_err();
        let shown = format!("{err:#}");
        assert!(
            shown.contains("403") && shown.contains("scoped to viewer"),
            "{shown}"
        );
        let heads = heads.lock().unwrap();
        assert!(
            heads.iter().any(|h| h.contains("content-length: 0")),
            "{heads:?}"
        );
    }

    #[test]
    fn a_login_answer_without_an_expiry_still_reads() {
        // From a control plane whose login tokens never expired.
        let old: LoginResponse = serde_json::from_str(r#"{"token":"cpub_x","username":"a"}"#)
            .expect("an answer without expires_at");
        assert_eq!(old.expires_at, None);
        let new: LoginResponse = serde_json::from_str(
            r#"{"token":"cpub_x","username":"a","expires_at":"2030-01-02T03:04:05Z"}"#,
        )
        .unwrap();
        assert_eq!(
            new.expires_at.map(|at| at.to_rfc3339()),
            Some("2030-01-02T03:04:05+00:00".to_owned())
        );
    }

    #[test]
    fn unauthorized_hints_at_login() {
        let err = anyhow::Error::new(ApiFailure {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid token".into(),
            field: None,
            from_api: true,
        })
        .context("listing functions");
        assert!(hint_for(&err).unwrap().contains("cpub login"));
        assert!(hint_for(&anyhow::anyhow!("other")).is_none());
    }
}
