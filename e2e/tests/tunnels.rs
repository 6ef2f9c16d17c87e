//! End-to-end: WebSocket tunnels on the real stack (Podman, PostgreSQL, the
//! proxy) to `examples/wsecho` (built by examples/build.sh), a function of
//! `concurrency = 1` on one instance: frames keep a tunnel open past
//! `timeout_ms`, silence ends it after `stream_idle_ms`, a busy one ends at
//! `max_call_s`, a client that never reads cannot hold one past the idle
//! limit; `cpub_proxy_tunnels_open` and the lease
//! (`cpub_in_flight_requests`) are up while it is open and back down after,
//! and the instance serves the next call at once (issue 13).

use std::time::{Duration, Instant};

use containerpub_e2e::{Stack, eventually, metric_sum, repo_root};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The function's limits.
const TIMEOUT_MS: u64 = 1000;
const IDLE_MS: u64 = 2000;
const CAP_S: u64 = 12;

/// RFC 6455 §1.3's sample key and the accept value it asks for.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn wsecho_bundle(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let bin = repo_root().join("examples/wsecho/bin/wsecho");
    assert!(
        bin.exists(),
        "{} is missing: run examples/build.sh",
        bin.display()
    );
    std::fs::create_dir_all(dir.path().join("bin")).unwrap();
    std::fs::copy(&bin, dir.path().join("bin/wsecho")).unwrap();
    std::fs::write(
        dir.path().join("cpub.toml"),
        format!(
            "name = \"{name}\"\nruntime = \"binary\"\nentrypoint = \"bin/wsecho\"\n\
             visibility = \"public\"\nhealth_path = \"/\"\n\
             [resources]\nmemory_mb = 32\ntimeout_ms = {TIMEOUT_MS}\n\
             stream_idle_ms = {IDLE_MS}\nmax_call_s = {CAP_S}\n\
             [scaling]\nmax_instances = 1\nconcurrency = 1\n"
        ),
    )
    .unwrap();
    dir
}

/// A WebSocket client connection (frames masked as RFC 6455 asks).
struct Ws {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Ws {
    async fn open(stack: &Stack, name: &str) -> Self {
        let addr = stack.proxy_url().trim_start_matches("http://").to_owned();
        // Small buffers at this end: a client that stops reading stalls
        // the tunnel after little data (what the proxy holds is its own).
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        socket.set_send_buffer_size(64 * 1024).unwrap();
        let mut tcp = socket.connect(addr.parse().unwrap()).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.write_all(
            format!(
                "GET /fn/{name}/ HTTP/1.1\r\nhost: {addr}\r\nconnection: Upgrade\r\n\
                 upgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: {KEY}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut ws = Self {
            tcp,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(ws.fill().await, "closed in the answer's head: {:?}", ws.buf);
        };
        let head = String::from_utf8_lossy(&ws.buf[..end]).to_ascii_lowercase();
        ws.buf.drain(..end);
        assert!(head.starts_with("http/1.1 101 "), "{head}");
        assert!(
            head.contains(&format!(
                "sec-websocket-accept: {}",
                ACCEPT.to_ascii_lowercase()
            )),
            "{head}"
        );
        ws
    }

    /// Reads more; false at EOF (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(20), self.tcp.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("nothing for 20 s"),
        }
    }

    async fn send_text(&mut self, text: &str) {
        assert!(text.len() < 126);
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&frame).await.unwrap();
    }

    /// The next frame's opcode and payload.
    async fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 && self.buf[1] < 126 {
                let len = usize::from(self.buf[1]);
                if self.buf.len() >= 2 + len {
                    let op = self.buf[0] & 0x0f;
                    let payload = self.buf[2..2 + len].to_vec();
                    self.buf.drain(..2 + len);
                    return Some((op, payload));
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn echo(&mut self, text: &str) {
        self.send_text(text).await;
        assert_eq!(
            self.recv().await,
            Some((0x1, text.as_bytes().to_vec())),
            "echo of {text:?}"
        );
    }

    /// Waits for the proxy to close the tunnel; when it did.
    async fn closed(&mut self) -> Instant {
        while self.fill().await {}
        Instant::now()
    }
}

/// (`cpub_proxy_tunnels_open`, `cpub_in_flight_requests`) of `name`.
async fn gauges(stack: &Stack, name: &str) -> Option<(f64, f64)> {
    let m = stack.metrics().await?;
    let labels = [("function", name)];
    Some((
        metric_sum(&m, "cpub_proxy_tunnels_open", &labels).unwrap_or(0.0),
        metric_sum(&m, "cpub_in_flight_requests", &labels).unwrap_or(0.0),
    ))
}

async fn gauges_reach(stack: &Stack, name: &str, want: (f64, f64), what: &str) {
    eventually(Duration::from_secs(10), what, || async {
        (gauges(stack, name).await == Some(want)).then_some(())
    })
    .await;
}

/// A plain call answered at once: the only instance's only slot is free.
async fn next_call_is_served(stack: &Stack, name: &str) {
    let started = Instant::now();
    let r = reqwest::get(format!("{}/fn/{name}/", stack.proxy_url()))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", stack.logs());
    assert_eq!(r.text().await.unwrap(), "ok\n");
    assert!(
        started.elapsed() < Duration::from_millis(TIMEOUT_MS),
        "the next call waited {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn websocket_tunnels_live_by_their_idle_limit_and_cap_and_give_their_lease_back() {
    let stack = Stack::start(&[]).await.unwrap();
    let name = "tun-ws";
    let dir = wsecho_bundle(name);
    stack.cpub_ok(&["deploy", dir.path().to_str().unwrap()]);
    eventually(Duration::from_secs(30), "wsecho answers", || async {
        let r = reqwest::get(format!("{}/fn/{name}/", stack.proxy_url()))
            .await
            .ok()?;
        (r.status().as_u16() == 200).then_some(())
    })
    .await;

    // Frames every 400 ms for 3 s: past timeout_ms (1 s) and past the idle
    // limit (2 s) counted from the switch.
    let mut ws = Ws::open(&stack, name).await;
    let opened = Instant::now();
    gauges_reach(&stack, name, (1.0, 1.0), "the open tunnel holds a lease").await;
    let mut quiet = Instant::now();
    let mut i = 0;
    while opened.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(400)).await;
        ws.echo(&format!("frame {i}")).await;
        quiet = Instant::now();
        i += 1;
    }
    assert_eq!(gauges(&stack, name).await, Some((1.0, 1.0)));
    // Silence: closed after the idle limit.
    let idle = ws.closed().await - quiet;
    assert!(
        idle >= Duration::from_millis(IDLE_MS - 100)
            && idle < Duration::from_millis(IDLE_MS + 1500),
        "closed {idle:?} after the last frame (stream_idle_ms = {IDLE_MS})"
    );
    gauges_reach(
        &stack,
        name,
        (0.0, 0.0),
        "the closed tunnel gave its lease back",
    )
    .await;
    next_call_is_served(&stack, name).await;

    // Frames every 300 ms without end: closed at max_call_s.
    let started = Instant::now();
    let mut ws = Ws::open(&stack, name).await;
    gauges_reach(&stack, name, (1.0, 1.0), "the second tunnel holds a lease").await;
    let mut frames = 0;
    let cut = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if ws.tcp.write_all(&[0x81, 0x80, 0, 0, 0, 0]).await.is_err() {
            break started.elapsed();
        }
        match ws.recv().await {
            Some((0x1, payload)) if payload.is_empty() => frames += 1,
            Some(other) => panic!("unexpected frame {other:?}"),
            None => break started.elapsed(),
        }
        assert!(
            started.elapsed() < Duration::from_secs(CAP_S + 10),
            "not cut at max_call_s"
        );
    };
    assert!(
        cut >= Duration::from_millis(CAP_S * 1000 - 300)
            && cut < Duration::from_millis(CAP_S * 1000 + 2000),
        "a busy tunnel ended after {cut:?} (max_call_s = {CAP_S})"
    );
    assert!(frames >= 15, "frames flowed until the cap: {frames}");
    gauges_reach(
        &stack,
        name,
        (0.0, 0.0),
        "the capped tunnel gave its lease back",
    )
    .await;
    next_call_is_served(&stack, name).await;

    // A client that sends and never reads: the echo backs up to the
    // function, which stops reading; the stalled tunnel ends at the idle
    // limit, not the cap, and gives its lease back.
    let started = Instant::now();
    let mut ws = Ws::open(&stack, name).await;
    gauges_reach(&stack, name, (1.0, 1.0), "the third tunnel holds a lease").await;
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x82, 0x80 | 125];
    frame.extend_from_slice(&mask);
    frame.extend((0..125u8).map(|i| i ^ mask[usize::from(i) % 4]));
    let mut sent = 0usize;
    let ended = loop {
        match tokio::time::timeout(Duration::from_millis(200), ws.tcp.write_all(&frame)).await {
            Ok(Ok(())) => sent += frame.len(),
            Ok(Err(_)) => break started.elapsed(),
            Err(_) => {
                // Stalled: wait for the proxy to end the tunnel.
                if gauges(&stack, name).await == Some((0.0, 0.0)) {
                    break started.elapsed();
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(CAP_S + 10),
            "the stalled tunnel stayed open"
        );
    };
    assert!(
        ended < Duration::from_secs(CAP_S),
        "a stalled tunnel ended after {ended:?}: at the idle limit, not the cap"
    );
    assert!(
        sent < 64 << 20,
        "{sent} bytes went into a tunnel nobody reads"
    );
    eprintln!("stalled tunnel: {sent} bytes sent, ended after {ended:?}");
    gauges_reach(
        &stack,
        name,
        (0.0, 0.0),
        "the stalled tunnel gave its lease back",
    )
    .await;
    next_call_is_served(&stack, name).await;
}
