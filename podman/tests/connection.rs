//! How the client uses the Podman socket, seen from a fake socket that
//! records connections and request lines: calls share one kept-alive
//! connection, every request is in origin form (`/v4.0.0/libpod/…`, which
//! Podman needs to serve its libpod API), the event stream gets a
//! connection of its own, a connection the server closes is replaced, and
//! a missing socket is named in the error.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerpub_podman::{Podman, PodmanError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const INSPECT: &str =
    r#"{"Id":"abc","Name":"n","State":{"Status":"running","Pid":7},"Config":{"Labels":{}}}"#;

/// A fake Podman socket: answers every request with [`INSPECT`] (or one
/// event line for `/events`), keeps connections alive unless told not to.
struct Fake {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    /// (connection number, request line) of every request.
    seen: Arc<Mutex<Vec<(usize, String)>>>,
}

impl Fake {
    async fn start(close_after_answer: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("podman.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((stream, _)) = listener.accept().await {
                n += 1;
                tokio::spawn(serve(stream, n, Arc::clone(&log), close_after_answer));
            }
        });
        Self {
            _dir: dir,
            path,
            seen,
        }
    }

    fn seen(&self) -> Vec<(usize, String)> {
        self.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        let ids: std::collections::BTreeSet<usize> = self.seen().iter().map(|(c, _)| *c).collect();
        ids.len()
    }
}

async fn serve(
    mut stream: UnixStream,
    conn: usize,
    log: Arc<Mutex<Vec<(usize, String)>>>,
    close_after_answer: bool,
) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);
        let line = head.lines().next().unwrap_or_default().to_owned();
        log.lock().unwrap().push((conn, line.clone()));
        if line.contains("/events") {
            // A stream that stays open: one event, then nothing.
            let event = "{\"Action\":\"died\",\"Actor\":{\"ID\":\"abc\"}}\n";
            let answer = format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n",
                event.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
            std::future::pending::<()>().await;
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{INSPECT}",
            INSPECT.len()
        );
        if stream.write_all(answer.as_bytes()).await.is_err() || close_after_answer {
            return;
        }
    }
}

#[tokio::test]
async fn calls_share_one_connection_in_origin_form() {
    let fake = Fake::start(false).await;
    let podman = Podman::new(&fake.path);
    for _ in 0..50 {
        let state = podman.inspect_container("abc", "cpub").await.unwrap();
        assert_eq!((state.status.as_str(), state.pid), ("running", 7));
        podman.unpause_container("abc").await.unwrap();
    }
    let seen = fake.seen();
    assert_eq!(seen.len(), 100);
    assert_eq!(fake.connections(), 1, "one kept-alive connection: {seen:?}");
    assert_eq!(seen[0].1, "GET /v4.0.0/libpod/containers/abc/json HTTP/1.1");
    assert_eq!(
        seen[1].1,
        "POST /v4.0.0/libpod/containers/abc/unpause HTTP/1.1"
    );
    // Clones share the connection.
    podman.clone().ping().await.unwrap();
    assert_eq!(fake.connections(), 1);
}

#[tokio::test]
async fn calls_at_once_use_a_few_connections_then_one() {
    let fake = Fake::start(false).await;
    let podman = Podman::new(&fake.path);
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let podman = podman.clone();
            tokio::spawn(async move { podman.inspect_container("abc", "cpub").await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let busy = fake.connections();
    assert!((1..=8).contains(&busy), "{busy} connections for 8 calls");
    for _ in 0..20 {
        podman.inspect_container("abc", "cpub").await.unwrap();
    }
    assert_eq!(fake.connections(), busy, "sequential calls open none");
}

#[tokio::test]
async fn the_event_stream_has_its_own_connection() {
    let fake = Fake::start(false).await;
    let podman = Podman::new(&fake.path);
    podman.ping().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let follower = podman.clone();
    let follow =
        tokio::spawn(async move { follower.container_events(&[("cpub.node", "n1")], &tx).await });
    let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .expect("stream open");
    assert_eq!((event.id.as_str(), event.action.as_str()), ("abc", "died"));
    // The stream is still open; calls go on beside it.
    podman.inspect_container("abc", "cpub").await.unwrap();
    follow.abort();
    let seen = fake.seen();
    let events: Vec<&(usize, String)> =
        seen.iter().filter(|(_, l)| l.contains("/events")).collect();
    assert_eq!(events.len(), 1);
    assert!(
        events[0]
            .1
            .starts_with("GET /v4.0.0/libpod/events?stream=true&filters="),
        "{}",
        events[0].1
    );
    let others: Vec<usize> = seen
        .iter()
        .filter(|(_, l)| !l.contains("/events"))
        .map(|(c, _)| *c)
        .collect();
    assert_eq!(others.len(), 2);
    assert_eq!(others[0], others[1], "calls on one pooled connection");
    assert_ne!(events[0].0, others[0], "the stream on its own");
}

#[tokio::test]
async fn a_connection_the_server_closes_is_replaced() {
    let fake = Fake::start(true).await;
    let podman = Podman::new(&fake.path);
    for i in 0..20 {
        podman
            .inspect_container("abc", "cpub")
            .await
            .unwrap_or_else(|e| panic!("call {i}: {e}"));
    }
    assert_eq!(fake.connections(), 20);
}

#[tokio::test]
async fn a_missing_socket_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.sock");
    let err = Podman::new(&path).ping().await.unwrap_err();
    assert!(
        matches!(&err, PodmanError::Connect { path: p, source } if *p == path
            && source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    assert!(err.to_string().contains("absent.sock"), "{err}");
}
