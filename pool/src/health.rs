//! Readiness probing of a freshly started instance: TCP accept, or an HTTP
//! GET of `health_path` answering below 500, retried every millisecond for
//! the first [`FAST_PHASE`] (a function usually listens within a few ms of
//! Podman's `start`; a doubling back-off from the first try lost up to half
//! of that wait), then with back-off until the start timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

/// Retry delay during the first [`FAST_PHASE`] of a probe (a failed
/// connect to a bridge address is one SYN answered by a RST: cheap).
const FAST_RETRY: Duration = Duration::from_millis(1);
/// How long a probe retries every [`FAST_RETRY`] before backing off.
pub const FAST_PHASE: Duration = Duration::from_millis(50);
/// First retry delay after the fast phase; doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(2);
const MAX_BACKOFF: Duration = Duration::from_millis(100);
/// Bound on one probe attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits until `addr` is ready or `deadline` passes; the error says what the
/// last attempt saw.
pub async fn wait_ready(
    addr: SocketAddr,
    health_path: Option<&str>,
    deadline: Duration,
) -> Result<(), String> {
    let began = Instant::now();
    let until = began + deadline;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let last = match timeout(ATTEMPT_TIMEOUT, probe(addr, health_path)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => format!("probe of {addr} timed out"),
        };
        let fast = began.elapsed() < FAST_PHASE;
        let pause = if fast { FAST_RETRY } else { backoff };
        if Instant::now() + pause > until {
            return Err(format!(
                "not ready within {} ms: {last}",
                deadline.as_millis()
            ));
        }
        sleep(pause).await;
        if !fast {
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

async fn probe(addr: SocketAddr, health_path: Option<&str>) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let Some(path) = health_path else {
        return Ok(());
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nuser-agent: cpub-health\r\nconnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send probe: {e}"))?;
    let mut head = [0u8; 12];
    stream
        .read_exact(&mut head)
        .await
        .map_err(|e| format!("read probe answer: {e}"))?;
    let status: u16 = std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", String::from_utf8_lossy(&head)))?;
    if status < 500 {
        Ok(())
    } else {
        Err(format!("GET {path} answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn server(status: u16) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                    )
                    .await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn ready_on_tcp_accept_and_on_http_below_500() {
        let ok = server(404).await;
        wait_ready(ok, None, Duration::from_secs(1)).await.unwrap();
        wait_ready(ok, Some("/health"), Duration::from_secs(1))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn not_ready_on_500_or_closed_port() {
        let bad = server(503).await;
        let err = wait_ready(bad, Some("/"), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(err.contains("503"), "{err}");
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let err = wait_ready(closed, None, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(err.contains("connect"), "{err}");
    }
}
