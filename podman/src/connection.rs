//! Connections to the Podman socket: a small pool of kept-alive HTTP/1.1
//! connections shared by every call (hyper-util's pooled client over a
//! Unix-socket connector), and a connection of its own for each long-lived
//! stream (the event stream, image builds), which would otherwise hold a
//! pooled connection for minutes.
//!
//! Every request goes out in origin form (`/v4.0.0/libpod/…`). Podman 4.3
//! tells a libpod request from a Docker-compatible one by the request URI's
//! text (the third `/`-separated part must be `libpod`), so an absolute URI
//! (`http://podman/v4.0.0/libpod/…`) is served as a compatible request:
//! events named `die`, a removal that ignores `volumes` and `timeout`, a
//! build that pulls. The pooled client is handed an absolute URI (it keys
//! its pool on the authority) and itself sends the origin form; the test
//! `tests/connection.rs` reads the request lines on a fake socket.
//!
//! A connection is driven by a task on the tokio runtime that opened it.
//! One whose runtime has ended is closed and left out of the pool, so a
//! client shared by several runtimes keeps working.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::UnixStream;

use crate::client::PodmanError;

/// Body of a request sent on its own connection (a streamed build context).
pub(crate) type StreamBody = BoxBody<Bytes, io::Error>;

/// Idle connections kept per client: calls at once beyond this open
/// connections that are closed when they finish.
const MAX_IDLE: usize = 4;
/// An idle connection is closed after this long. Long, so that a resume
/// after minutes of quiet still finds one; a connection Podman closes is
/// seen at once (end of stream) and dropped from the pool.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Authority of the absolute URIs handed to the pooled client: its pool
/// key and the `Host` field; the connector ignores it.
const AUTHORITY: &str = "podman";

/// The connections of one client. Cheap to clone (clones share the pool).
#[derive(Debug, Clone)]
pub(crate) struct Connections {
    socket: Arc<PathBuf>,
    pooled: Client<UnixConnector, Full<Bytes>>,
}

impl Connections {
    pub(crate) fn new(socket: PathBuf) -> Self {
        let socket = Arc::new(socket);
        let pooled = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(MAX_IDLE)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(UnixConnector {
                socket: Arc::clone(&socket),
            });
        Self { socket, pooled }
    }

    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `req`, whose URI is an origin-form path (`/v4.0.0/libpod/…`),
    /// on a pooled connection.
    pub(crate) async fn send_pooled(
        &self,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, PodmanError> {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        *req.uri_mut() = Uri::builder()
            .scheme("http")
            .authority(AUTHORITY)
            .path_and_query(path)
            .build()
            .map_err(|e| PodmanError::Decode(format!("request uri: {e}")))?;
        self.pooled
            .request(req)
            .await
            .map_err(|err| self.transport_error(err))
    }

    /// Sends `req` (origin-form URI) on a new connection of its own, which
    /// lives as long as the answer's body.
    pub(crate) async fn send_own(
        &self,
        mut req: Request<StreamBody>,
    ) -> Result<Response<Incoming>, PodmanError> {
        if !req.headers().contains_key(http::header::HOST) {
            req.headers_mut().insert(
                http::header::HOST,
                http::HeaderValue::from_static(AUTHORITY),
            );
        }
        let stream = UnixStream::connect(self.socket.as_path())
            .await
            .map_err(|source| PodmanError::Connect {
                path: self.socket.to_path_buf(),
                source,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(%err, "podman connection ended");
            }
        });
        Ok(sender.send_request(req).await?)
    }

    /// A pooled client's error, with the socket named when it could not
    /// be reached.
    fn transport_error(&self, err: hyper_util::client::legacy::Error) -> PodmanError {
        let mut chain = err.to_string();
        let mut io_kind = None;
        let mut source = std::error::Error::source(&err);
        while let Some(e) = source {
            chain.push_str(": ");
            chain.push_str(&e.to_string());
            if let Some(io) = e.downcast_ref::<io::Error>() {
                io_kind.get_or_insert(io.kind());
            }
            source = e.source();
        }
        if err.is_connect() {
            PodmanError::Connect {
                path: self.socket.to_path_buf(),
                source: io::Error::new(io_kind.unwrap_or(io::ErrorKind::Other), chain),
            }
        } else {
            PodmanError::Transport(chain)
        }
    }
}

/// Opens connections to the socket, whatever the URI says.
#[derive(Debug, Clone)]
struct UnixConnector {
    socket: Arc<PathBuf>,
}

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<UnixStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let socket = Arc::clone(&self.socket);
        Box::pin(async move {
            UnixStream::connect(socket.as_path())
                .await
                .map(TokioIo::new)
        })
    }
}
