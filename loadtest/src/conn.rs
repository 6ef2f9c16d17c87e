//! One HTTP/1.1 keep-alive connection per worker and target address (hyper 1
//! client connection over a `TcpStream`), and one request attempt on it with
//! its outcome classified: a response with its status, or a connect, timeout
//! or I/O error.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};

use crate::plan::RequestSpec;
use crate::target::Target;

/// A failure that is not an HTTP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// TCP connect or HTTP handshake failed (refused, unreachable, timed out).
    Connect,
    /// The response did not end within the request timeout.
    Timeout,
    /// The connection broke while sending or receiving.
    Io,
}

/// What came of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Response { status: u16, bytes: u64 },
    Failed(Failure),
}

/// An open connection; its driver task ends when the connection is dropped.
struct Conn {
    addr: SocketAddr,
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The connections of one worker, at most one per address.
#[derive(Default)]
pub(crate) struct Connections {
    idle: Vec<Conn>,
    /// Connections opened so far.
    pub(crate) opened: u64,
}

impl Connections {
    /// An idle connection to `addr` that can take a request, if there is one.
    async fn reuse(&mut self, addr: SocketAddr) -> Option<Conn> {
        let at = self.idle.iter().position(|c| c.addr == addr)?;
        let mut conn = self.idle.swap_remove(at);
        // `ready` fails at once when the server closed the connection
        // (`connection: close`, HTTP/1.0, idle timeout): then open a new one.
        conn.sender.ready().await.ok().map(|()| conn)
    }

    async fn open(&mut self, addr: SocketAddr) -> Result<Conn, Failure> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|_| Failure::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| Failure::Connect)?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        self.opened += 1;
        Ok(Conn {
            addr,
            sender,
            driver,
        })
    }

    /// Sends `spec` to `target` and reads the whole response body, all before
    /// `deadline`. A connection that answered cleanly is kept for the next call.
    pub(crate) async fn attempt(
        &mut self,
        target: &Target,
        spec: &RequestSpec,
        deadline: Instant,
    ) -> Outcome {
        let addr = target.addr();
        let mut reused = timeout_at(deadline, self.reuse(addr)).await.ok().flatten();
        loop {
            let was_reused = reused.is_some();
            let mut conn = match reused.take() {
                Some(conn) => conn,
                None => match timeout_at(deadline, self.open(addr)).await {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(failure)) => return Outcome::Failed(failure),
                    Err(_) => return Outcome::Failed(Failure::Connect),
                },
            };
            let request = build_request(target, spec);
            let exchange = async {
                let response = conn.sender.send_request(request).await?;
                let status = response.status().as_u16();
                let mut body = response.into_body();
                let mut bytes = 0u64;
                while let Some(frame) = body.frame().await {
                    if let Some(data) = frame?.data_ref() {
                        bytes += data.len() as u64;
                    }
                }
                Ok::<_, hyper::Error>((status, bytes))
            };
            return match timeout_at(deadline, exchange).await {
                Ok(Ok((status, bytes))) => {
                    self.idle.push(conn);
                    Outcome::Response { status, bytes }
                }
                // The request was never written: the kept-alive connection
                // closed under us. Safe to send again once on a new one.
                Ok(Err(e)) if was_reused && e.is_canceled() => continue,
                Ok(Err(_)) => Outcome::Failed(Failure::Io),
                Err(_) => Outcome::Failed(Failure::Timeout),
            };
        }
    }
}

fn build_request(target: &Target, spec: &RequestSpec) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(spec.body.clone()));
    *request.method_mut() = spec.method.clone();
    *request.uri_mut() = target.path().clone();
    let headers = request.headers_mut();
    headers.clone_from(&spec.headers);
    headers.insert(HOST, target.host_header().clone());
    if !spec.body.is_empty() && !headers.contains_key(CONTENT_LENGTH) {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(spec.body.len()));
    }
    request
}
