//! Memory under idle keep-alive client connections: opens them, reads the
//! server's resident memory before, while idle and after they close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::IDLE_OPEN_PARALLEL;
use crate::processes::rss_kib;

/// Reads one HTTP/1.1 response with a `content-length` body; fails when the
/// server says it will close the connection.
pub(crate) async fn read_response(s: &mut TcpStream) -> Result<u16> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before a whole response");
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status")?;
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:")?.trim().parse().ok())
            .context("no content-length")?;
        if head
            .lines()
            .any(|l| l.starts_with("connection:") && l.contains("close"))
        {
            bail!("the server closes the connection");
        }
        if buf.len() >= end + 4 + len {
            return Ok(status);
        }
    }
}

/// One idle keep-alive connection: connect, one request, whole response.
pub(crate) async fn idle_conn(addr: SocketAddr, path: &str) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let status = read_response(&mut s).await?;
    if status != 200 {
        bail!("status {status}");
    }
    Ok(s)
}

/// Memory of a server under `n` idle keep-alive client connections.
pub(crate) struct Memory {
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_idle_kib: u64,
    pub(crate) rss_after_close_kib: u64,
    pub(crate) opened: usize,
    pub(crate) still_open: usize,
    pub(crate) failures: usize,
    pub(crate) first_failure: Option<String>,
}

impl Memory {
    pub(crate) fn delta_kib(&self) -> i64 {
        self.rss_idle_kib as i64 - self.rss_before_kib as i64
    }

    pub(crate) fn per_conn_bytes(&self) -> f64 {
        self.delta_kib() as f64 * 1024.0 / self.still_open.max(1) as f64
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "rss_before_kib": self.rss_before_kib,
            "rss_idle_kib": self.rss_idle_kib,
            "rss_after_close_kib": self.rss_after_close_kib,
            "delta_kib": self.delta_kib(),
            "per_conn_bytes": self.per_conn_bytes(),
            "opened": self.opened,
            "still_open": self.still_open,
            "failures": self.failures,
            "first_failure": self.first_failure,
        })
    }
}

pub(crate) async fn idle_memory(
    addr: SocketAddr,
    path: &str,
    n: usize,
    pids: &dyn Fn() -> Vec<u32>,
) -> Result<Memory> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_kib = rss_kib(&pids());
    let gate = Arc::new(tokio::sync::Semaphore::new(IDLE_OPEN_PARALLEL));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let gate = gate.clone();
        let path = path.to_owned();
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            tokio::time::timeout(Duration::from_secs(10), idle_conn(addr, &path))
                .await
                .context("timed out")?
        });
    }
    let mut conns = Vec::with_capacity(n);
    let (mut failures, mut first_failure) = (0, None);
    let end = Instant::now() + Duration::from_secs(300);
    while let Some(r) = tokio::time::timeout_at(end.into(), tasks.join_next())
        .await
        .context("opening idle connections took over 300 s")?
    {
        match r? {
            Ok(s) => conns.push(s),
            Err(e) => {
                failures += 1;
                first_failure.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let opened = conns.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle_kib = rss_kib(&pids());
    let mut probe = [0u8; 1];
    let still_open = conns
        .iter()
        .filter(|s| {
            matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    drop(conns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_close_kib = rss_kib(&pids());
    Ok(Memory {
        rss_before_kib,
        rss_idle_kib,
        rss_after_close_kib,
        opened,
        still_open,
        failures,
        first_failure,
    })
}
