//! The HTTP/1.1 data path (`engine.rs`) end to end: a real proxy worker (a
//! current-thread runtime and a `LocalSet`, as `server.rs` runs it) with a
//! real pool on a test runtime, in front of a scripted upstream, driven by
//! raw TCP clients so that framing is checked byte for byte.
//!
//! Over 600 lines: 46 tests of one data path over a harness of about 680
//! lines (a scripted upstream that records what it received, a raw client
//! that checks framing byte for byte), which they all share.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerpub_pool::testing::FakeRuntime;
use containerpub_pool::{Pool, PoolConfig};
use containerpub_proxy::engine::{self, Worker};
use containerpub_proxy::routes::Routes;
use containerpub_proxy::service::Proxy;
use containerpub_wire::Manifest;
use containerpub_wire::api::{Route, RouteTable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "support/tcp.rs"]
mod tcp;

/// Bound on every client read and write.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The route's `resources.timeout_ms` (room for a 3 MB answer on a
/// loaded 2-core machine: at 500 ms `big_answer_arrives_whole` failed there).
const TIMEOUT_MS: u64 = 1500;
/// The route's `resources.max_body_bytes`.
const MAX_BODY: usize = 1000;
/// How much of a request body the proxy reads before it leases an
/// instance (`engine::admission::BODY_AHEAD`).
const AHEAD: usize = 1 << 20;
const REVISION: i64 = 7;
const HEALTH: &str = "/health";
/// Size of the last connection task spawned (the future of
/// `serve_connection`), which every idle client connection holds.
static CONNECTION_TASK_BYTES: AtomicUsize = AtomicUsize::new(0);

/// `/chunked`: the answer's body as the upstream writes it, one write per
/// piece (split inside chunk sizes and a trailer on purpose), with a chunk
/// extension and a trailer field.
const CHUNKED_PIECES: [&[u8]; 4] = [
    b"5;ext=one\r\nhel",
    b"lo\r\n6\r\n wor",
    b"ld\r\n0\r\nx-tr",
    b"ail: yes\r\n\r\n",
];
/// `/close`: a body delimited by the upstream closing its connection.
const CLOSE_BODY: &[u8] = b"until the connection closes";
/// `/slow`: how long the upstream waits before answering.
const SLOW: Duration = Duration::from_secs(3);
/// `/big`: size of the answer body.
const BIG_LEN: usize = 3 * 1024 * 1024 + 123;

fn big_body() -> Vec<u8> {
    (0..BIG_LEN).map(|i| (i % 251) as u8).collect()
}

// ---------------------------------------------------------------------------
// Message parsing shared by the upstream and the clients.

/// Header fields, names lowercased.
type Fields = Vec<(String, String)>;

fn collect_fields(headers: &[httparse::Header<'_>]) -> Fields {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

fn values<'a>(fields: &'a Fields, name: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// A complete chunked body at the start of a buffer.
struct Chunks {
    /// Bytes of the body on the wire.
    len: usize,
    data: Vec<u8>,
    /// The trailer section, without the final blank line.
    trailers: String,
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| from + i)
}

/// Parses a chunked body at the start of `buf`: `None` while incomplete.
fn parse_chunked(buf: &[u8]) -> Option<Chunks> {
    let mut i = 0;
    let mut data = Vec::new();
    loop {
        let end = find_crlf(buf, i)?;
        let size = buf[i..end].split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size).expect("ASCII chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        i = end + 2;
        if size == 0 {
            let start = i;
            loop {
                let end = find_crlf(buf, i)?;
                if end == i {
                    let trailers = String::from_utf8_lossy(&buf[start..i]).into_owned();
                    return Some(Chunks {
                        len: end + 2,
                        data,
                        trailers,
                    });
                }
                i = end + 2;
            }
        }
        if buf.len() < i + size + 2 {
            return None;
        }
        data.extend_from_slice(&buf[i..i + size]);
        assert_eq!(
            &buf[i + size..i + size + 2],
            b"\r\n",
            "chunk data ends in CRLF"
        );
        i += size + 2;
    }
}

// ---------------------------------------------------------------------------
// The scripted upstream.

/// A request as the upstream received it.
#[derive(Debug, Clone)]
struct Seen {
    /// Which upstream connection (0, 1, … in accept order).
    conn: usize,
    /// The request line, e.g. `GET /echo HTTP/1.1`.
    line: String,
    method: String,
    path: String,
    fields: Fields,
    head: Vec<u8>,
    /// The body as it was on the wire (chunk framing included).
    body: Vec<u8>,
}

impl Seen {
    fn values(&self, name: &str) -> Vec<&str> {
        values(&self.fields, name)
    }

    fn raw(&self) -> Vec<u8> {
        [&self.head[..], &self.body[..]].concat()
    }

    fn head_text(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }
}

struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                for conn in 0.. {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(upstream_conn(tcp, conn, Arc::clone(&log)));
                }
            });
        });
        Self { addr, seen }
    }

    /// Complete requests received, readiness probes left out.
    fn requests(&self) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|s| s.path != HEALTH).cloned().collect()
    }

    fn requests_to(&self, path: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.path == path)
            .collect()
    }

    fn last(&self) -> Seen {
        self.requests().pop().expect("the upstream got a request")
    }
}

async fn upstream_conn(mut tcp: tokio::net::TcpStream, conn: usize, log: Arc<Mutex<Vec<Seen>>>) {
    let _ = tcp.set_nodelay(true);
    let mut buf = Vec::new();
    while let Some(seen) = read_request(&mut tcp, &mut buf, conn).await {
        log.lock().unwrap().push(seen.clone());
        let close = seen
            .values("connection")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("close"));
        match answer(&mut tcp, &seen).await {
            Ok(true) if !close => {}
            _ => return,
        }
    }
}

/// Reads one whole request (content-length or chunked body); `None` when
/// the connection ends first.
async fn read_request(
    tcp: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    conn: usize,
) -> Option<Seen> {
    let (head_len, method, path, version, fields) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(n) = req.parse(buf).ok()? {
            break (
                n,
                req.method?.to_owned(),
                req.path?.to_owned(),
                req.version?,
                collect_fields(req.headers),
            );
        }
        if tcp.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    };
    let chunked = values(&fields, "transfer-encoding")
        .iter()
        .any(|v| v.contains("chunked"));
    let length: usize = values(&fields, "content-length")
        .first()
        .map_or(0, |v| v.parse().expect("a numeric content-length"));
    let body_len = loop {
        let rest = &buf[head_len..];
        let whole = if chunked {
            parse_chunked(rest).map(|c| c.len)
        } else {
            (rest.len() >= length).then_some(length)
        };
        if let Some(n) = whole {
            break n;
        }
        if tcp.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    };
    let head = buf[..head_len].to_vec();
    let body = buf[head_len..head_len + body_len].to_vec();
    buf.drain(..head_len + body_len);
    Some(Seen {
        conn,
        line: format!("{method} {path} HTTP/1.{version}"),
        method,
        path,
        fields,
        head,
        body,
    })
}

/// Answers by path; returns whether the connection stays open.
async fn answer(tcp: &mut tokio::net::TcpStream, req: &Seen) -> std::io::Result<bool> {
    let pause = || tokio::time::sleep(Duration::from_millis(20));
    let path = req.path.as_str();
    if path == HEALTH {
        tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await?;
        return Ok(true);
    }
    if path.starts_with("/echo") {
        let raw = req.raw();
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
            raw.len()
        )
        .into_bytes();
        if req.method != "HEAD" {
            out.extend_from_slice(&raw);
        }
        tcp.write_all(&out).await?;
        return Ok(true);
    }
    match path {
        "/chunked" => {
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\ntrailer: x-trail\r\n\r\n")
                .await?;
            if req.method == "HEAD" {
                return Ok(true);
            }
            for piece in CHUNKED_PIECES {
                pause().await;
                tcp.write_all(piece).await?;
            }
            Ok(true)
        }
        "/close" => {
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n")
                .await?;
            pause().await;
            tcp.write_all(CLOSE_BODY).await?;
            Ok(false)
        }
        "/continue" => {
            tcp.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            pause().await;
            tcp.write_all(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n")
                .await?;
            pause().await;
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\ncontinued")
                .await?;
            Ok(true)
        }
        "/ws" => {
            // A protocol switch (whether or not it was asked for), then an
            // upper-casing echo until the proxy closes.
            tcp.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n",
            )
            .await?;
            let mut chunk = [0u8; 1024];
            loop {
                let n = tcp.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(false);
                }
                tcp.write_all(&chunk[..n].to_ascii_uppercase()).await?;
            }
        }
        "/slow" => {
            tokio::time::sleep(SLOW).await;
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlate")
                .await?;
            Ok(true)
        }
        "/te-and-cl" => {
            tcp.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                .await?;
            Ok(true)
        }
        "/upstream-close" => {
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await?;
            Ok(false)
        }
        "/once" => {
            tcp.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: keep-alive\r\n\r\nonce",
            )
            .await?;
            Ok(false)
        }
        "/big" => {
            tcp.write_all(
                format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG_LEN}\r\n\r\n").as_bytes(),
            )
            .await?;
            for piece in big_body().chunks(64 * 1024) {
                tcp.write_all(piece).await?;
            }
            Ok(true)
        }
        _ => {
            tcp.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .await?;
            Ok(true)
        }
    }
}

// ---------------------------------------------------------------------------
// The container runtime under the pool.

// `containerpub_pool::testing::FakeRuntime`: every instance is the
// scripted upstream, or (`vanishing`) answers its readiness probe and then
// stops listening.

// ---------------------------------------------------------------------------
// The proxy under test.

/// Function `t`: a short timeout and a small body limit.
fn route() -> Route {
    route_with(MAX_BODY, "")
}

/// Function `t` with a body limit of `max_body` and `scaling` added to its
/// `[scaling]` table.
fn route_with(max_body: usize, scaling: &str) -> Route {
    let text = format!(
        "name = \"t\"\nruntime = \"container\"\nvisibility = \"public\"\nhealth_path = \"{HEALTH}\"\n\
         [resources]\ntimeout_ms = {TIMEOUT_MS}\nmax_body_bytes = {max_body}\n\
         [scaling]\nmin_instances = 0\n{scaling}"
    );
    Route {
        function: "t".into(),
        deployment_id: 1,
        version: 1,
        image: "img".into(),
        config: Manifest::parse(&text).unwrap(),
        keys: Vec::new(),
        secrets: Vec::new(),
        signing_keys: Vec::new(),
    }
}

/// Runs one proxy worker on its own thread; returns where it listens.
fn start_proxy(runtime: Arc<FakeRuntime>) -> SocketAddr {
    start_proxy_routing(runtime, route())
}

/// Runs one proxy worker routing `route` on its own thread; returns where
/// it listens.
fn start_proxy_routing(runtime: Arc<FakeRuntime>, route: Route) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let table = RouteTable {
                revision: REVISION,
                routes: vec![route],
            };
            let config = PoolConfig {
                node: "test".into(),
                start_timeout: Duration::from_secs(2),
            };
            let pool = Pool::with_runtime(runtime, config, &table.routes)
                .await
                .unwrap();
            let proxy = Rc::new(Proxy::new(Arc::new(Routes::new(&table)), pool));
            let worker = Rc::new(Worker::default());
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                let task =
                    engine::serve_connection(tcp, peer, Rc::clone(&proxy), Rc::clone(&worker));
                CONNECTION_TASK_BYTES.store(std::mem::size_of_val(&task), Ordering::Relaxed);
                tokio::task::spawn_local(task);
            }
        });
    });
    addr
}

/// A proxy, its upstream and its runtime; each test has its own.
struct Harness {
    addr: SocketAddr,
    upstream: Upstream,
    runtime: Arc<FakeRuntime>,
}

impl Harness {
    fn new() -> Self {
        Self::start(false)
    }

    /// Instances whose address refuses connections once they were found
    /// ready.
    fn vanishing() -> Self {
        Self::start(true)
    }

    /// A proxy routing `route` to instances that are all the server at
    /// `addr` (the harness's own upstream is unused).
    fn in_front_of(addr: SocketAddr, route: Route) -> Self {
        let runtime = Arc::new(FakeRuntime::serving(addr));
        Self {
            addr: start_proxy_routing(Arc::clone(&runtime), route),
            upstream: Upstream::start(),
            runtime,
        }
    }

    /// Function `t` as `route` says.
    fn routing(route: Route) -> Self {
        Self::start_routing(false, route)
    }

    fn start(vanishing: bool) -> Self {
        Self::start_routing(vanishing, route())
    }

    fn start_routing(vanishing: bool, route: Route) -> Self {
        let upstream = Upstream::start();
        let runtime = Arc::new(if vanishing {
            FakeRuntime::vanishing()
        } else {
            FakeRuntime::serving(upstream.addr)
        });
        let addr = start_proxy_routing(Arc::clone(&runtime), route);
        Self {
            addr,
            upstream,
            runtime,
        }
    }

    fn starts(&self) -> usize {
        self.runtime.starts()
    }

    fn connect(&self) -> Client {
        let tcp = TcpStream::connect(self.addr).unwrap();
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        tcp.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        tcp.set_nodelay(true).unwrap();
        Client {
            tcp,
            buf: Vec::new(),
        }
    }

    /// Waits until the proxy has read everything `c` sent.
    fn wait_read(&self, c: &Client, what: &str) {
        let port = c.tcp.local_addr().unwrap().port();
        tcp::wait_until(IO_TIMEOUT, what, || {
            tcp::sockets_of(self.addr)
                .iter()
                .any(|s| s.remote_port == port && s.rx_queue == 0)
        });
    }

    /// A new connection on which a POST to `path` with the `framing` field
    /// and the first bytes of its body were sent and read by the proxy.
    fn post_begun(&self, path: &str, framing: &str, first: &[u8]) -> Client {
        let mut c = self.connect();
        c.send(format!("POST {path} HTTP/1.1\r\nhost: x\r\n{framing}\r\n\r\n").as_bytes());
        c.send(first);
        self.wait_read(&c, "the proxy read the head and the first body bytes");
        c
    }

    /// One request on a new connection, and its answer.
    fn call(&self, request: &str) -> (Client, Response) {
        let mut client = self.connect();
        client.send(request.as_bytes());
        let response = client.response();
        (client, response)
    }
}

// ---------------------------------------------------------------------------
// Clients.

#[derive(Debug)]
struct Response {
    status: u16,
    fields: Fields,
    /// The body, de-chunked.
    body: Vec<u8>,
    /// The body as it was on the wire.
    raw_body: Vec<u8>,
    trailers: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        let all = values(&self.fields, name);
        assert!(
            all.len() <= 1,
            "{name} appears {} times: {:?}",
            all.len(),
            self.fields
        );
        all.first().copied()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body of an answer the proxy wrote itself: JSON with `error`.
    fn error(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let json: serde_json::Value = serde_json::from_slice(&self.body).expect("a JSON body");
        json["error"].as_str().expect("an error message").to_owned()
    }

    fn closes(&self) -> bool {
        self.header("connection") == Some("close")
    }
}

struct Client {
    tcp: TcpStream,
    /// Bytes read and not yet parsed.
    buf: Vec<u8>,
}

impl Client {
    fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).expect("sending to the proxy");
    }

    /// Reads more; 0 at the end of the connection.
    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.tcp.read(&mut chunk).unwrap_or_else(|e| {
            panic!(
                "reading from the proxy: {e}; unparsed: {:?}",
                String::from_utf8_lossy(&self.buf)
            )
        });
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    fn response(&mut self) -> Response {
        self.read_response(false)
    }

    fn response_to_head(&mut self) -> Response {
        self.read_response(true)
    }

    fn read_response(&mut self, head_request: bool) -> Response {
        let (head_len, status, fields) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            let parsed = resp.parse(&self.buf).unwrap_or_else(|e| {
                panic!(
                    "invalid answer head ({e}): {:?}",
                    String::from_utf8_lossy(&self.buf)
                )
            });
            if let httparse::Status::Complete(n) = parsed {
                break (n, resp.code.unwrap(), collect_fields(resp.headers));
            }
            assert!(
                self.fill() > 0,
                "closed before an answer head: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        self.buf.drain(..head_len);
        let mut r = Response {
            status,
            fields,
            body: Vec::new(),
            raw_body: Vec::new(),
            trailers: String::new(),
        };
        if head_request || status / 100 == 1 || status == 204 || status == 304 {
            return r;
        }
        if let Some(te) = r.header("transfer-encoding") {
            assert_eq!(te, "chunked");
            let chunks = loop {
                if let Some(c) = parse_chunked(&self.buf) {
                    break c;
                }
                assert!(self.fill() > 0, "closed inside a chunked body");
            };
            r.raw_body = self.buf.drain(..chunks.len).collect();
            r.body = chunks.data;
            r.trailers = chunks.trailers;
        } else if let Some(n) = r.header("content-length") {
            let n: usize = n.parse().unwrap();
            while self.buf.len() < n {
                assert!(
                    self.fill() > 0,
                    "closed after {} of {n} body bytes",
                    self.buf.len()
                );
            }
            r.body = self.buf.drain(..n).collect();
            r.raw_body = r.body.clone();
        } else {
            while self.fill() > 0 {}
            r.body = std::mem::take(&mut self.buf);
            r.raw_body = r.body.clone();
        }
        r
    }

    /// The proxy closed the connection, with nothing after the last answer.
    fn expect_closed(&mut self) {
        assert!(
            self.buf.is_empty(),
            "bytes after the answer: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        assert_eq!(
            self.fill(),
            0,
            "the connection should be closed: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: proxy.test\r\n\r\n")
}

fn is_generated_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

// ---------------------------------------------------------------------------
// Requests on their way to the instance.

#[test]
fn request_line_and_fields_are_rewritten_for_the_instance() {
    let h = Harness::new();
    let mut c = h.connect();
    c.send(
        b"GET /fn/t/echo/a?b=1 HTTP/1.1\r\nhost: example.test\r\nconnection: keep-alive, x-hop\r\n\
          x-hop: 1\r\nkeep-alive: timeout=5\r\nte: trailers\r\nupgrade: websocket\r\n\
          proxy-connection: keep-alive\r\nx-custom: kept\r\n\r\n",
    );
    let r = c.response();
    assert_eq!(r.status, 200);
    let id = r
        .header("x-request-id")
        .expect("an x-request-id")
        .to_owned();
    assert!(is_generated_id(&id), "{id}");
    let seen = h.upstream.last();
    assert_eq!(seen.line, "GET /echo/a?b=1 HTTP/1.1");
    assert_eq!(seen.values("x-request-id"), [id.as_str()]);
    assert_eq!(seen.values("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.values("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.values("host"), ["example.test"]);
    assert_eq!(seen.values("x-custom"), ["kept"]);
    for hop in [
        "connection",
        "x-hop",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
    ] {
        assert!(
            seen.values(hop).is_empty(),
            "{hop} was forwarded:\n{}",
            seen.head_text()
        );
    }
    assert_eq!(r.body, seen.raw(), "the echo is what the instance got");

    // Forwarding fields that came in are extended or replaced; a sane
    // request id is kept.
    c.send(
        b"GET /fn/t/echo/b HTTP/1.1\r\nhost: example.test\r\nx-forwarded-for: 192.0.2.1\r\n\
          x-forwarded-proto: https\r\nx-request-id: abc-123.def\r\n\r\n",
    );
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("abc-123.def"));
    let seen = h.upstream.last();
    assert_eq!(seen.line, "GET /echo/b HTTP/1.1");
    assert_eq!(seen.values("x-forwarded-for"), ["192.0.2.1, 127.0.0.1"]);
    assert_eq!(seen.values("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.values("x-request-id"), ["abc-123.def"]);

    // An id unfit for headers and logs is replaced.
    c.send(b"GET /fn/t/echo/c HTTP/1.1\r\nhost: x\r\nx-request-id: a b<c>\r\n\r\n");
    let r = c.response();
    let id = r.header("x-request-id").unwrap().to_owned();
    assert!(is_generated_id(&id), "{id}");
    assert_eq!(h.upstream.last().values("x-request-id"), [id.as_str()]);
}

#[test]
fn absolute_form_target_is_forwarded_in_origin_form() {
    let h = Harness::new();
    let (_, r) =
        h.call("GET http://example.test/fn/t/echo/abs?q=1 HTTP/1.1\r\nhost: example.test\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(h.upstream.last().line, "GET /echo/abs?q=1 HTTP/1.1");
}

#[test]
fn an_idle_connection_holds_a_small_task() {
    let h = Harness::new();
    let mut c = h.connect();
    c.send(get("/fn/t/echo/x").as_bytes());
    assert_eq!(c.response().status, 200);
    let bytes = CONNECTION_TASK_BYTES.load(Ordering::Relaxed);
    // The exchange's own state is boxed while a request is in progress.
    assert!(
        (1..=1536).contains(&bytes),
        "a connection task takes {bytes} bytes"
    );
}

#[test]
fn keep_alive_serves_many_requests_over_one_upstream_connection() {
    let h = Harness::new();
    let mut c = h.connect();
    for i in 0..20 {
        c.send(get(&format!("/fn/t/echo/{i}")).as_bytes());
        let r = c.response();
        assert_eq!(r.status, 200, "request {i}");
        assert!(!r.closes(), "request {i}");
        let line = format!("GET /echo/{i} HTTP/1.1\r\n");
        assert!(
            r.body.starts_with(line.as_bytes()),
            "request {i}: {}",
            r.text()
        );
    }
    let seen = h.upstream.requests();
    assert_eq!(seen.len(), 20);
    let conns: HashSet<usize> = seen.iter().map(|s| s.conn).collect();
    assert!(
        conns.len() < seen.len(),
        "no upstream connection was reused"
    );
    assert_eq!(
        conns.len(),
        1,
        "sequential calls on one worker share one upstream connection"
    );
    assert_eq!(h.starts(), 1);
}

#[test]
fn connection_close_from_either_side() {
    let h = Harness::new();
    // The client's close: honoured after the answer.
    let (mut c, r) = h.call("GET /fn/t/echo/x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.closes(), "{r:?}");
    c.expect_closed();
    // The instance's close: its connection is not reused, the client's
    // is kept.
    let mut c = h.connect();
    for _ in 0..2 {
        c.send(get("/fn/t/upstream-close").as_bytes());
        let r = c.response();
        assert_eq!(r.status, 200);
        assert!(!r.closes(), "{r:?}");
        assert_eq!(r.body, b"ok");
    }
    let seen = h.upstream.requests_to("/upstream-close");
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0].conn, seen[1].conn);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let h = Harness::new();
    let mut c = h.connect();
    let pipeline = [
        get("/fn/t/echo/1"),
        get("/fn/t/echo/2"),
        "POST /fn/t/echo/3 HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello".to_owned(),
        get("/fn/t/echo/4"),
    ]
    .concat();
    c.send(pipeline.as_bytes());
    for i in 1..=4 {
        let r = c.response();
        assert_eq!(r.status, 200, "answer {i}");
        assert!(
            r.text().contains(&format!(" /echo/{i} HTTP/1.1\r\n")),
            "answer {i}: {}",
            r.text()
        );
    }
    assert_eq!(h.upstream.requests_to("/echo/3")[0].body, b"hello");
}

#[test]
fn content_length_bodies_arrive_byte_exact() {
    let h = Harness::new();
    let body: Vec<u8> = (0..600u32).map(|i| b'a' + (i % 26) as u8).collect();
    let head = format!(
        "POST /fn/t/echo/post HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );

    // All at once.
    let mut c = h.connect();
    c.send(&[head.as_bytes(), &body].concat());
    let r = c.response();
    assert_eq!(r.status, 200);
    let seen = h.upstream.last();
    assert_eq!(seen.values("content-length"), ["600"]);
    assert_eq!(seen.body, body);
    assert_eq!(r.body, seen.raw());

    // The head alone, then the body in three writes.
    c.send(head.as_bytes());
    for part in [&body[..100], &body[100..350], &body[350..]] {
        std::thread::sleep(Duration::from_millis(50));
        c.send(part);
    }
    let r = c.response();
    assert_eq!(r.status, 200);
    let seen = h.upstream.last();
    assert_eq!(seen.body, body);
    assert_eq!(r.body, seen.raw());
    // The body is a limit on bytes, not requests: exactly the limit passes.
    let full = vec![b'z'; MAX_BODY];
    c.send(
        format!("POST /fn/t/echo/full HTTP/1.1\r\nhost: x\r\ncontent-length: {MAX_BODY}\r\n\r\n")
            .as_bytes(),
    );
    c.send(&full);
    assert_eq!(c.response().status, 200);
    assert_eq!(h.upstream.last().body, full);
}

#[test]
fn chunked_bodies_are_forwarded_as_chunked() {
    let h = Harness::new();
    let pieces: [&[u8]; 4] = [
        b"4;note=x\r\nab",
        b"cd\r\n3\r\nef",
        b"g\r\n1",
        b"0\r\n0123456789abcdef\r\n0\r\nx-sum: 7\r\n\r\n",
    ];
    let mut c = h.connect();
    c.send(b"POST /fn/t/echo/chunked HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n");
    c.send(pieces[0]);
    for piece in &pieces[1..] {
        std::thread::sleep(Duration::from_millis(40));
        c.send(piece);
    }
    let r = c.response();
    assert_eq!(r.status, 200);
    let seen = h.upstream.last();
    assert_eq!(seen.values("transfer-encoding"), ["chunked"]);
    assert!(seen.values("content-length").is_empty());
    assert_eq!(
        seen.body, b"4\r\nabcd\r\n3\r\nefg\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n",
        "chunks re-framed: sizes kept, no extension, no trailer"
    );
    let decoded = parse_chunked(&seen.body).unwrap();
    assert_eq!(decoded.data, b"abcdefg0123456789abcdef");
    // The connection is still in step.
    c.send(get("/fn/t/echo/next").as_bytes());
    assert_eq!(c.response().status, 200);
}

#[test]
fn expect_100_continue_gets_an_interim_answer_before_the_body() {
    let h = Harness::new();
    let mut c = h.connect();
    c.send(b"POST /fn/t/echo/expect HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n");
    let interim = c.response();
    assert_eq!(
        interim.status, 100,
        "an interim answer before the body is sent"
    );
    assert_eq!(
        h.starts(),
        0,
        "the body is read before an instance is leased (started) for the call"
    );
    c.send(b"hello");
    let r = c.response();
    assert_eq!(r.status, 200);
    let seen = h.upstream.last();
    assert_eq!(seen.body, b"hello");
    assert!(
        seen.values("expect").is_empty(),
        "expect is the proxy's business"
    );
}

/// A `content-length` body in two parts, and what the instance gets:
/// framing field, first part, rest, body.
const LENGTH_BODY_IN_TWO: (&str, &[u8], &[u8], &[u8]) =
    ("content-length: 10", b"hel", b"lo worl", b"hello worl");

/// A client that sends its body slowly holds no instance meanwhile: the
/// proxy reads a body (up to 1 MiB) before it leases one. Here the
/// function has one instance serving one call at a time; a call made
/// while another's body is still coming is answered at once, and the slow
/// one goes through once its body is whole. (Old code leased first and
/// streamed the body: the second call queued behind the slow one until the
/// function's timeout answered the slow one 504.)
#[test]
fn a_body_sent_slowly_holds_no_instance() {
    let h = Harness::routing(route_with(MAX_BODY, "max_instances = 1\nconcurrency = 1\n"));
    for (head, first, rest, body) in [
        LENGTH_BODY_IN_TWO,
        (
            "transfer-encoding: chunked",
            b"5\r\nhel",
            b"lo\r\n4\r\n wor\r\n0\r\n\r\n",
            b"5\r\nhello\r\n4\r\n wor\r\n0\r\n\r\n",
        ),
    ] {
        let mut slow = h.post_begun("/fn/t/echo/slow", head, first);
        let meanwhile = Instant::now();
        let (_, r) = h.call(&get("/fn/t/echo/meanwhile"));
        assert_eq!(r.status, 200, "{head}: {r:?}");
        assert!(
            meanwhile.elapsed() < Duration::from_millis(TIMEOUT_MS),
            "answered without waiting for the slow call's timeout"
        );
        assert_eq!(h.upstream.last().path, "/echo/meanwhile");
        slow.send(rest);
        let r = slow.response();
        assert_eq!(r.status, 200, "{head}: {r:?}");
        let seen = h.upstream.last();
        assert_eq!(seen.path, "/echo/slow");
        assert_eq!(seen.body, body, "{head}");
    }
    assert_eq!(h.starts(), 1);
}

/// A request pipelined after a body that came over several reads (read
/// ahead of the lease) is a request of its own, never part of the body:
/// after a `content-length` body, and after a chunked one with a trailer.
#[test]
fn a_request_pipelined_after_a_body_read_ahead_is_its_own() {
    let h = Harness::new();
    for (head, first, rest, body) in [
        LENGTH_BODY_IN_TWO,
        (
            "transfer-encoding: chunked",
            b"5\r\nhel",
            b"lo\r\n0\r\nx-t: y\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
    ] {
        let mut c = h.post_begun("/fn/t/echo/1", head, first);
        c.send(&[rest, get("/fn/t/echo/2").as_bytes()].concat());
        let first = c.response();
        assert_eq!(first.status, 200, "{head}: {first:?}");
        let second = c.response();
        assert_eq!(second.status, 200, "{head}: {second:?}");
        let seen = h.upstream.requests();
        let [.., one, two] = seen.as_slice() else {
            panic!("{head}: {seen:?}")
        };
        assert_eq!(
            (one.method.as_str(), one.path.as_str(), one.body.as_slice()),
            ("POST", "/echo/1", body),
            "{head}"
        );
        assert_eq!(
            (two.method.as_str(), two.path.as_str(), two.body.as_slice()),
            ("GET", "/echo/2", &b""[..]),
            "{head}"
        );
    }
}

/// A chunked body of 1-byte chunks, over the read ahead in its encoded
/// size: the first MiB leaves with the head, the rest streams (decoded at
/// most 64 KiB a pass), and the instance gets every byte in order.
#[test]
fn a_body_of_tiny_chunks_over_the_read_ahead_arrives_whole() {
    const N: usize = 400_000;
    let h = Harness::routing(route_with(N, ""));
    let data: Vec<u8> = (0..N).map(|i| b'a' + (i % 26) as u8).collect();
    let mut body = Vec::with_capacity(N * 6 + 5);
    for b in &data {
        body.extend_from_slice(b"1\r\n");
        body.push(*b);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    assert!(body.len() > 2 * AHEAD);
    let mut c = h.connect();
    c.send(b"POST /fn/t/echo/tiny HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n");
    c.send(&body);
    let r = c.response();
    assert_eq!(r.status, 200, "{r:?}");
    let seen = h.upstream.last();
    assert_eq!(seen.path, "/echo/tiny");
    let got = parse_chunked(&seen.body).expect("a whole chunked body");
    assert!(
        got.data == data,
        "{} bytes of {N} arrived, or out of order",
        got.data.len()
    );
}

/// A body not sent within the function's timeout is answered 408 by the
/// proxy, and no instance was leased (started) for it. A malformed chunked
/// body is refused before any instance too. (Old code leased an instance
/// and closed the connection without an answer.)
#[test]
fn a_body_not_sent_in_time_is_408_before_any_instance() {
    let h = Harness::new();
    for (head, first) in [
        ("content-length: 10", &b"hel"[..]),
        ("transfer-encoding: chunked", b"5\r\nhel"),
    ] {
        let mut c = h.post_begun("/fn/t/x", head, first);
        let r = c.response();
        assert_eq!(r.status, 408, "{head}: {r:?}");
        assert_eq!(
            r.error(),
            format!("request body not received within the function's timeout of {TIMEOUT_MS} ms")
        );
        assert!(r.closes());
        c.expect_closed();
    }
    let (mut c, r) = h.call("POST /fn/t/x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n");
    assert_eq!(r.status, 400, "{r:?}");
    c.expect_closed();
    assert_eq!(h.starts(), 0, "no instance was started");
}

// ---------------------------------------------------------------------------
// Limits and bad requests.

#[test]
fn content_length_over_the_limit_is_refused_before_any_instance() {
    let h = Harness::new();
    let mut c = h.connect();
    c.send(
        format!(
            "POST /fn/t/echo HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            MAX_BODY + 1
        )
        .as_bytes(),
    );
    let r = c.response();
    assert_eq!(r.status, 413);
    assert!(r.closes(), "{r:?}");
    let error = r.error();
    assert!(error.contains("1001") && error.contains("1000"), "{error}");
    c.expect_closed();
    assert_eq!(h.starts(), 0, "no instance for a refused call");
    assert!(h.upstream.requests().is_empty());
}

#[test]
fn chunked_body_growing_over_the_limit_is_refused() {
    let h = Harness::new();
    let head =
        "POST /fn/t/echo/big-chunked HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
    let chunk = |n: usize| {
        [
            format!("{n:x}\r\n").into_bytes(),
            vec![b'x'; n],
            b"\r\n".to_vec(),
        ]
        .concat()
    };

    // The whole body came with the head.
    let mut c = h.connect();
    c.send(&[head.as_bytes(), &chunk(MAX_BODY + 24), b"0\r\n\r\n"].concat());
    let r = c.response();
    assert_eq!(r.status, 413);
    assert!(r.closes());
    assert!(r.error().contains("limit"));
    c.expect_closed();

    // The body crosses the limit while the proxy reads it ahead of the
    // lease: refused before any instance.
    let mut c = h.connect();
    c.send(&[head.as_bytes(), &chunk(512)].concat());
    h.wait_read(&c, "the proxy read the first part");
    c.send(&[&chunk(600)[..], b"0\r\n\r\n"].concat());
    let r = c.response();
    assert_eq!(r.status, 413);
    assert!(r.closes());
    c.expect_closed();
    assert_eq!(h.starts(), 0, "no instance was started");

    // A body over the 1 MiB read ahead crosses the limit while it streams
    // to the instance: the rest is sent once the proxy has connected to
    // the instance (its first and only connection but the probe's).
    let big = Harness::routing(route_with(AHEAD + MAX_BODY, ""));
    let mut c = big.connect();
    c.send(&[head.as_bytes(), &chunk(AHEAD)].concat());
    tcp::wait_until(IO_TIMEOUT, "the proxy connects to the instance", || {
        tcp::connected_to(big.upstream.addr)
    });
    c.send(&[&chunk(MAX_BODY + 24)[..], b"0\r\n\r\n"].concat());
    let r = c.response();
    assert_eq!(r.status, 413);
    assert!(r.closes());
    c.expect_closed();
    assert!(
        big.upstream.requests().is_empty(),
        "the instance never got a whole request"
    );

    // Exactly the limit passes.
    let mut c = h.connect();
    c.send(
        &[
            head.as_bytes(),
            &chunk(MAX_BODY - 1),
            &chunk(1),
            b"0\r\n\r\n",
        ]
        .concat(),
    );
    assert_eq!(c.response().status, 200);
    assert_eq!(
        parse_chunked(&h.upstream.last().body).unwrap().data.len(),
        MAX_BODY
    );
}

#[test]
fn malformed_requests_are_refused_and_closed() {
    let h = Harness::new();
    let cases: [(&str, &[u8], u16); 6] = [
        (
            "chunked and content-length",
            b"POST /fn/t/echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            400,
        ),
        (
            "two content-lengths",
            b"POST /fn/t/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
            400,
        ),
        (
            "a content-length list that disagrees",
            b"POST /fn/t/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 4, 3\r\n\r\nabcd",
            400,
        ),
        (
            "a transfer-encoding not ending in chunked",
            b"POST /fn/t/echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            400,
        ),
        ("a garbage request line", b"this is not http\r\n\r\n", 400),
        (
            "a malformed chunked body",
            b"POST /fn/t/echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            400,
        ),
    ];
    for (what, request, status) in cases {
        let mut c = h.connect();
        c.send(request);
        let r = c.response();
        assert_eq!(r.status, status, "{what}");
        assert!(r.closes(), "{what}: {r:?}");
        assert!(r.error().starts_with("bad request"), "{what}");
        assert!(is_generated_id(r.header("x-request-id").unwrap()), "{what}");
        c.expect_closed();
    }

    // A head that does not end within 64 KiB.
    let mut c = h.connect();
    let mut head = b"GET /fn/t/echo HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
    head.resize(64 * 1024, b'a');
    c.send(&head);
    let r = c.response();
    assert_eq!(r.status, 431);
    assert!(r.closes());
    r.error();
    c.expect_closed();

    assert!(
        h.upstream.requests().is_empty(),
        "nothing malformed reached the instance"
    );
}

#[test]
fn paths_outside_routed_functions_are_answered_by_the_proxy() {
    let h = Harness::new();
    let mut c = h.connect();
    c.send(get("/fn/nope/x").as_bytes());
    let r = c.response();
    assert_eq!(r.status, 404);
    assert!(r.error().contains("no function named \"nope\""), "{r:?}");
    assert!(!r.closes(), "a 404 keeps the connection");

    c.send(get("/elsewhere").as_bytes());
    let r = c.response();
    assert_eq!(r.status, 404);
    assert!(r.error().contains("/fn/"), "{r:?}");

    c.send(get("/healthz").as_bytes());
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(json["revision"], REVISION);
    assert_eq!(json["routes"], 1);
    assert_eq!(h.starts(), 0);
}

// ---------------------------------------------------------------------------
// Answers on their way to the client.

#[test]
fn chunked_answer_keeps_its_chunks_for_http_1_1() {
    let h = Harness::new();
    let (mut c, r) = h.call(&get("/fn/t/chunked"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.header("content-length"), None);
    assert_eq!(
        r.raw_body, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        "chunks re-framed: sizes kept, no extension, no trailer"
    );
    assert_eq!(r.body, b"hello world");
    assert_eq!(r.header("trailer"), None, "no trailer is announced");
    assert!(!r.closes());
    c.send(get("/fn/t/echo/after").as_bytes());
    assert_eq!(c.response().status, 200);
}

#[test]
fn chunked_answer_is_dechunked_for_http_1_0_and_the_connection_closed() {
    let h = Harness::new();
    let (mut c, r) = h.call("GET /fn/t/chunked HTTP/1.0\r\nhost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.header("content-length"), None);
    assert!(r.closes(), "{r:?}");
    assert_eq!(r.body, b"hello world", "decoded, delimited by the close");
    c.expect_closed();
}

#[test]
fn http_1_0_keep_alive_is_honoured() {
    let h = Harness::new();
    let (mut c, r) = h.call("GET /fn/t/echo/k HTTP/1.0\r\nconnection: keep-alive\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("keep-alive"));
    assert!(
        r.text().starts_with("GET /echo/k HTTP/1.1\r\n"),
        "{}",
        r.text()
    );
    c.send(b"GET /fn/t/echo/l HTTP/1.0\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 200);
    assert!(r.closes());
    c.expect_closed();
}

/// RFC 9112 §6.1: no `transfer-encoding` towards an HTTP/1.0 client, not
/// even in the answer to a `HEAD`.
#[test]
fn head_of_a_chunked_answer_to_http_1_0_has_no_transfer_encoding() {
    let h = Harness::new();
    let mut c = h.connect();
    c.send(b"HEAD /fn/t/chunked HTTP/1.0\r\nhost: x\r\n\r\n");
    let r = c.response_to_head();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), None, "{r:?}");
    c.expect_closed();
}

/// RFC 9112 §6.3: an answer with both `transfer-encoding` and
/// `content-length` is framed by the former, and the latter must be
/// removed before it is forwarded (else whoever trusts `content-length`
/// downstream is desynchronised by a function's answer).
#[test]
fn answer_with_transfer_encoding_and_content_length_loses_content_length() {
    let h = Harness::new();
    let (mut c, r) = h.call(&get("/fn/t/te-and-cl"));
    if r.status == 502 {
        return; // Refusing such an answer is fine too.
    }
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        r.header("content-length"),
        None,
        "both framings relayed: {r:?}"
    );
    assert_eq!(r.body, b"hello");
    c.send(get("/fn/t/echo/after").as_bytes());
    assert_eq!(c.response().status, 200);
}

#[test]
fn close_delimited_answer_is_relayed_and_the_connection_closed() {
    let h = Harness::new();
    let (mut c, r) = h.call(&get("/fn/t/close"));
    assert_eq!(r.status, 200);
    assert!(r.closes(), "{r:?}");
    assert_eq!(r.header("content-length"), None);
    assert_eq!(r.body, CLOSE_BODY);
    c.expect_closed();
}

#[test]
fn interim_answers_from_the_instance_are_not_relayed() {
    let h = Harness::new();
    let (mut c, r) = h.call(&get("/fn/t/continue"));
    assert_eq!(
        r.status, 200,
        "the first answer the client sees is the final one"
    );
    assert_eq!(r.body, b"continued");
    c.send(get("/fn/t/echo/after").as_bytes());
    assert_eq!(c.response().status, 200);
}

#[test]
fn head_answer_has_no_body_and_the_connection_goes_on() {
    let h = Harness::new();
    let mut c = h.connect();
    c.send(b"HEAD /fn/t/echo/h HTTP/1.1\r\nhost: x\r\n\r\n");
    let r = c.response_to_head();
    assert_eq!(r.status, 200);
    let length: usize = r.header("content-length").unwrap().parse().unwrap();
    assert!(length > 0);
    assert_eq!(h.upstream.last().line, "HEAD /echo/h HTTP/1.1");
    c.send(get("/fn/t/echo/h2").as_bytes());
    let r = c.response();
    assert_eq!(r.status, 200);
    assert!(
        r.text().starts_with("GET /echo/h2 HTTP/1.1\r\n"),
        "{}",
        r.text()
    );
}

#[test]
fn big_answer_arrives_whole() {
    let h = Harness::new();
    let (mut c, r) = h.call(&get("/fn/t/big"));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(BIG_LEN.to_string().as_str())
    );
    assert_eq!(r.body.len(), BIG_LEN);
    assert!(r.body == big_body(), "the body differs");
    c.send(get("/fn/t/echo/after").as_bytes());
    assert_eq!(c.response().status, 200);
}

#[test]
fn server_timing_tells_queue_start_and_upstream() {
    let h = Harness::new();
    let mut c = h.connect();
    for kind in ["cold", "warm"] {
        c.send(get("/fn/t/echo").as_bytes());
        let r = c.response();
        assert_eq!(r.status, 200);
        let timing = r.header("server-timing").expect("server-timing");
        let parts: Vec<&str> = timing.split(", ").collect();
        let start = format!("start;desc=\"{kind}\";dur=");
        let ms = |part: &str, prefix: &str| {
            let v = part
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("{timing}: no {prefix}"));
            assert!(
                v.split_once('.').is_some_and(|(_, d)| d.len() == 3),
                "{timing}"
            );
            v.parse::<f64>().unwrap_or_else(|_| panic!("{timing}"))
        };
        assert_eq!(parts.len(), 3, "{timing}");
        ms(parts[0], "queue;dur=");
        ms(parts[1], &start);
        assert!(
            ms(parts[2], "upstream;dur=") < TIMEOUT_MS as f64,
            "{timing}"
        );
    }
}

// ---------------------------------------------------------------------------
// Failures.

#[test]
fn slow_instance_gets_504_after_the_timeout() {
    let h = Harness::new();
    let began = Instant::now();
    let (mut c, r) = h.call(&get("/fn/t/slow"));
    let took = began.elapsed();
    assert_eq!(r.status, 504);
    assert!(r.closes());
    assert!(r.error().contains(&format!("{TIMEOUT_MS} ms")), "{r:?}");
    assert!(took >= Duration::from_millis(TIMEOUT_MS), "{took:?}");
    assert!(took < Duration::from_millis(TIMEOUT_MS * 3), "{took:?}");
    c.expect_closed();
}

#[test]
fn request_is_replayed_when_a_pooled_connection_was_closed() {
    let h = Harness::new();
    let mut c = h.connect();
    for i in 0..2 {
        c.send(get("/fn/t/once").as_bytes());
        let r = c.response();
        assert_eq!(r.status, 200, "call {i}: {r:?}");
        assert_eq!(r.body, b"once");
    }
    let seen = h.upstream.requests_to("/once");
    assert_eq!(seen.len(), 2);
    assert_ne!(
        seen[0].conn, seen[1].conn,
        "the second call went over a fresh connection"
    );
    assert_eq!(
        h.starts(),
        1,
        "a closed pooled connection does not fail the instance"
    );
}

#[test]
fn unreachable_instance_is_replaced_once_then_502() {
    let h = Harness::vanishing();
    let (mut c, r) = h.call(&get("/fn/t/echo"));
    assert_eq!(r.status, 502);
    assert!(r.closes());
    assert_eq!(r.error(), "function connection failed");
    c.expect_closed();
    assert_eq!(
        h.starts(),
        2,
        "the call was tried once more on a new instance"
    );
}

#[test]
fn a_protocol_switch_the_client_asked_for_is_relayed_both_ways() {
    let h = Harness::new();
    let mut c = h.connect();
    c.send(b"GET /fn/t/ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: echo\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 101, "{r:?}");
    assert_eq!(r.header("upgrade"), Some("echo"));
    assert_eq!(r.header("connection"), Some("upgrade"));
    assert!(r.header("x-request-id").is_some());
    let seen = h.upstream.requests_to("/ws");
    let head = String::from_utf8_lossy(&seen[0].head).to_ascii_lowercase();
    assert!(head.contains("\r\nupgrade: echo\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    for word in ["hello", "tunnel"] {
        c.send(word.as_bytes());
        while c.buf.len() < word.len() {
            assert!(c.fill() > 0, "the tunnel closed");
        }
        let echoed: Vec<u8> = c.buf.drain(..word.len()).collect();
        assert_eq!(echoed, word.to_ascii_uppercase().as_bytes());
    }
}

#[test]
fn a_protocol_switch_nobody_asked_for_is_refused() {
    let h = Harness::new();
    let (mut c, r) = h.call(&get("/fn/t/ws"));
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.error().contains("101"), "{}", r.error());
    c.expect_closed();
}

// ---------------------------------------------------------------------------
// Edge hardening (issue 8): an instance scripted per test, byte for byte,
// that records every byte each of its connections received.

/// A request as a raw instance read it.
#[derive(Debug, Clone)]
struct RawRequest {
    /// Which connection (accept order) and which request on it (0, 1, …).
    conn: usize,
    nth: usize,
    method: String,
    path: String,
    /// The request's exact bytes.
    raw: Vec<u8>,
}

/// What a raw instance does with a request.
enum RawAction {
    /// Writes these bytes and waits for the next request.
    Send(Vec<u8>),
    /// Writes the first bytes, waits, writes the second (bytes after an
    /// answer), and waits for the next request.
    SendThen(Vec<u8>, Duration, Vec<u8>),
    /// Closes the connection without answering.
    Close,
}

type Script = dyn Fn(&RawRequest) -> RawAction + Send + Sync;

struct RawUpstream {
    addr: SocketAddr,
    log: Arc<RawLog>,
}

/// What a raw instance's connections did, logged as they do it.
#[derive(Default)]
struct RawLog {
    /// Every byte received, per connection in accept order.
    received: Mutex<Vec<Vec<u8>>>,
    requests: Mutex<Vec<RawRequest>>,
    /// Requests (readiness probes left out) whose action is carried out,
    /// late bytes included.
    acted: AtomicUsize,
    /// Connections whose thread is done (closed by either side).
    ended: Mutex<HashSet<usize>>,
}

/// The length, method and path of a whole request at the start of `buf`.
fn raw_request_len(buf: &[u8]) -> Option<(usize, String, String)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = req.parse(buf).ok()? else {
        return None;
    };
    let fields = collect_fields(req.headers);
    let body = &buf[head..];
    let len = if values(&fields, "transfer-encoding")
        .iter()
        .any(|v| v.contains("chunked"))
    {
        parse_chunked(body)?.len
    } else {
        let n: usize = values(&fields, "content-length")
            .first()
            .map_or(0, |v| v.parse().unwrap());
        (body.len() >= n).then_some(n)?
    };
    Some((head + len, req.method?.to_owned(), req.path?.to_owned()))
}

impl RawUpstream {
    fn start(script: impl Fn(&RawRequest) -> RawAction + Send + Sync + 'static) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(RawLog::default());
        let script: Arc<Script> = Arc::new(script);
        let shared = Arc::clone(&log);
        std::thread::spawn(move || {
            for (conn, tcp) in listener.incoming().enumerate() {
                let Ok(tcp) = tcp else { continue };
                shared.received.lock().unwrap().push(Vec::new());
                let (log, script) = (Arc::clone(&shared), Arc::clone(&script));
                std::thread::spawn(move || {
                    raw_connection(tcp, conn, &*script, &log);
                    log.ended.lock().unwrap().insert(conn);
                });
            }
        });
        Self { addr, log }
    }

    /// Requests received, readiness probes left out.
    fn requests(&self) -> Vec<RawRequest> {
        self.log.requests.lock().unwrap().clone()
    }

    /// Every byte received on connections other than readiness probes.
    fn bytes(&self) -> Vec<u8> {
        let probe = format!("GET {HEALTH} ");
        self.log
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|b| !b.starts_with(probe.as_bytes()))
            .flatten()
            .copied()
            .collect()
    }

    /// Waits until every request received is acted on, late bytes
    /// written, and all the instance wrote is in the proxy's kernel.
    fn settle(&self) {
        tcp::wait_until(Duration::from_secs(5), "the instance acted", || {
            self.log.acted.load(Ordering::SeqCst) == self.requests().len()
                && tcp::delivered(self.addr)
        });
    }

    /// Waits until every connection that carried more than a readiness
    /// probe is closed: [`RawUpstream::bytes`] is then all it will get.
    fn wait_closed(&self) {
        let probe = format!("GET {HEALTH} ");
        tcp::wait_until(
            Duration::from_secs(5),
            "the instance's connections closed",
            || {
                let received = self.log.received.lock().unwrap();
                let ended = self.log.ended.lock().unwrap();
                received
                    .iter()
                    .enumerate()
                    .all(|(conn, b)| b.starts_with(probe.as_bytes()) || ended.contains(&conn))
            },
        );
    }

    /// A proxy in front of this instance.
    fn proxy(&self) -> Harness {
        self.proxy_routing(route())
    }

    /// A proxy in front of this instance, routing `route`.
    fn proxy_routing(&self, route: Route) -> Harness {
        Harness::in_front_of(self.addr, route)
    }
}

fn raw_connection(mut tcp: TcpStream, conn: usize, script: &Script, log: &RawLog) {
    let mut buf = Vec::new();
    for nth in 0.. {
        let (len, method, path) = loop {
            if let Some(r) = raw_request_len(&buf) {
                break r;
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = match tcp.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            log.received.lock().unwrap()[conn].extend_from_slice(&chunk[..n]);
            buf.extend_from_slice(&chunk[..n]);
        };
        let req = RawRequest {
            conn,
            nth,
            method,
            path,
            raw: buf.drain(..len).collect(),
        };
        let probe = req.path == HEALTH;
        let action = if probe {
            RawAction::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec())
        } else {
            let action = script(&req);
            log.requests.lock().unwrap().push(req);
            action
        };
        let ok = match action {
            RawAction::Send(bytes) => tcp.write_all(&bytes).is_ok(),
            RawAction::SendThen(first, pause, second) => {
                tcp.write_all(&first).is_ok() && {
                    std::thread::sleep(pause);
                    tcp.write_all(&second).is_ok()
                }
            }
            RawAction::Close => false,
        };
        if !probe {
            log.acted.fetch_add(1, Ordering::SeqCst);
        }
        if !ok {
            return;
        }
    }
}

fn send(bytes: &[u8]) -> RawAction {
    RawAction::Send(bytes.to_vec())
}

impl Client {
    /// Reads until the proxy closes; returns everything after what was
    /// parsed already.
    fn rest(&mut self) -> Vec<u8> {
        while self.fill() > 0 {}
        std::mem::take(&mut self.buf)
    }

    /// Reads until at least `n` bytes are unparsed.
    fn fill_to(&mut self, n: usize) {
        while self.buf.len() < n {
            assert!(
                self.fill() > 0,
                "closed early: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }
}

/// Issue 8, point 1, the audit's reproducer as it was sent: a bare LF in a
/// trailer line used to end the body early for an LF-tolerant instance,
/// and the rest became a second request. Now the body is refused, and the
/// instance gets nothing of it. (Old code: the raw trailer was forwarded
/// and the client waited for an answer.)
#[test]
fn trailer_with_a_bare_lf_is_refused_and_never_reaches_the_instance() {
    let raw = RawUpstream::start(|_| send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
    let h = raw.proxy();
    let reproducer: &[u8] = b"POST /fn/t/echo/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\n\nPOST /stored HTTP/1.1\r\nHost: x\r\nContent-Length: 150\r\n\r\n";
    let (mut c, r) = h.call(std::str::from_utf8(reproducer).unwrap());
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.error().contains("trailer"), "{}", r.error());
    assert!(r.closes());
    c.expect_closed();
    assert!(raw.requests().is_empty());
    assert_eq!(raw.bytes(), b"", "the instance got nothing");

    // The head first, the body later: the proxy reads the body before it
    // leases an instance, and the instance gets nothing.
    let mut c = h.connect();
    c.send(&reproducer[..69]);
    h.wait_read(&c, "the proxy read the head");
    c.send(&reproducer[69..]);
    let r = c.response();
    assert_eq!(r.status, 400, "{r:?}");
    c.expect_closed();
    assert_eq!(raw.bytes(), b"", "the instance got nothing");

    // A body over the 1 MiB read ahead, the bad trailer after it: the
    // instance gets the head, the first MiB and a connection that closes,
    // never a whole request.
    let h = raw.proxy_routing(route_with(2 * AHEAD, ""));
    let mut c = h.connect();
    let chunk = [
        format!("{AHEAD:x}\r\n").into_bytes(),
        vec![b'x'; AHEAD],
        b"\r\n".to_vec(),
    ]
    .concat();
    let head_len = reproducer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap()
        + 4;
    c.send(&[&reproducer[..head_len], &chunk[..]].concat());
    tcp::wait_until(
        IO_TIMEOUT,
        "the head and the first MiB reached the instance",
        || raw.bytes().len() > AHEAD,
    );
    c.send(&reproducer[head_len..]);
    let r = c.response();
    assert_eq!(r.status, 400, "{r:?}");
    c.expect_closed();
    raw.wait_closed();
    assert!(raw.requests().is_empty());
    let got = raw.bytes();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("POST /echo/a HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\n")
            && got.ends_with(&chunk)
            && !text.contains("stored"),
        "{:?}",
        text.get(..200)
    );
}

/// Issue 8, points 1 and 7: what the instance receives of a chunked
/// request is the canonical form, byte for byte; leading zeros beyond 15
/// digits pass; codings before `chunked` are 501 and reach nothing. (Old
/// code: extensions and trailers relayed raw; the zeros refused; `gzip`
/// dropped and the coded body relayed.)
#[test]
fn chunked_requests_reach_the_instance_in_canonical_form() {
    let raw = RawUpstream::start(|_| send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
    let h = raw.proxy();
    let mut c = h.connect();
    c.send(
        b"POST /fn/t/up HTTP/1.1\r\nHost: x\r\nx-request-id: rid-1\r\n\
traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
transfer-encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
0003 ; name=\"v\\\"al\" ; flag\r\nabc\r\n00000000000000000000002\r\nde\r\n0\r\nx-sum: 5\r\n\r\n",
    );
    let r = c.response();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    let seen = raw.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        String::from_utf8_lossy(&seen[0].raw),
        "POST /up HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\nx-request-id: rid-1\r\n\
traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    );
    let mut gz = h.connect();
    gz.send(
        b"POST /fn/t/gz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!(gz.response().status, 501);
    assert_eq!(
        raw.requests().len(),
        1,
        "nothing of it reached the instance"
    );
    c.send(get("/fn/t/next").as_bytes());
    assert_eq!(c.response().status, 200, "the connection is still in step");
}

/// Issue 8, point 7: malformed chunk lines and trailers are refused with
/// 400 and reach no instance. (Old code relayed every one of them raw.)
#[test]
fn malformed_chunk_lines_and_trailers_are_refused() {
    let h = Harness::new();
    let head = "POST /fn/t/echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
    for (what, body) in [
        ("junk after the size", &b"1 junk\r\na\r\n0\r\n\r\n"[..]),
        ("a bad extension byte", b"1;a=\x01\r\na\r\n0\r\n\r\n"),
        ("a bare LF after the size", b"1\na\r\n0\r\n\r\n"),
        (
            "a trailer without colon",
            b"1\r\na\r\n0\r\nno-colon\r\n\r\n",
        ),
        (
            "obs-fold in the trailers",
            b"1\r\na\r\n0\r\nx-a: 1\r\n folded\r\n\r\n",
        ),
        (
            "content-length as a trailer",
            b"1\r\na\r\n0\r\ncontent-length: 5\r\n\r\n",
        ),
        ("host as a trailer", b"1\r\na\r\n0\r\nhost: evil\r\n\r\n"),
        ("a size over 64 bits", b"10000000000000000\r\n"),
    ] {
        let mut c = h.connect();
        c.send(&[head.as_bytes(), body].concat());
        let r = c.response();
        assert_eq!(r.status, 400, "{what}: {r:?}");
        assert!(
            r.error().starts_with("bad request: malformed chunked body"),
            "{what}"
        );
        c.expect_closed();
    }
    assert!(h.upstream.requests().is_empty());
}

/// Issue 8, point 5: extensions and trailers count towards
/// `max_body_bytes` (old code counted data only: all three passed).
#[test]
fn chunk_extensions_and_trailers_count_towards_the_body_limit() {
    let h = Harness::new();
    let head = "POST /fn/t/echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
    let ext = format!(";e={}", "x".repeat(400));
    let many_ext = format!("1{ext}\r\na\r\n1{ext}\r\nb\r\n1{ext}\r\nc\r\n0\r\n\r\n");
    let trailers = format!("1\r\na\r\n0\r\nx-t: {}\r\n\r\n", "y".repeat(MAX_BODY));
    let zeros = format!("{}1\r\na\r\n0\r\n\r\n", "0".repeat(MAX_BODY + 1));
    for (what, body) in [
        ("extensions", many_ext),
        ("trailers", trailers),
        ("zeros", zeros),
    ] {
        let mut c = h.connect();
        c.send(format!("{head}{body}").as_bytes());
        let r = c.response();
        assert_eq!(r.status, 413, "{what}: {r:?}");
        c.expect_closed();
    }
    assert!(h.upstream.requests().is_empty());
    // A chunk line over 4 KiB is refused whatever the limit.
    let mut c = h.connect();
    c.send(format!("{head}1;e={}\r\n", "x".repeat(5000)).as_bytes());
    let r = c.response();
    assert!(r.status == 400 || r.status == 413, "{r:?}");
}

/// Issue 8, points 1 and 7: an instance's chunked answer is re-framed; an
/// invalid one is a 502 while its head was not sent, and the connection
/// that carried it is closed. (Old code relayed the extension and the
/// trailer, and cut the client without an answer.)
#[test]
fn chunked_answers_are_reframed_and_invalid_ones_are_502() {
    let raw = RawUpstream::start(|req| {
        match req.path.as_str() {
        "/ext" => send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n2;a=b\r\nok\r\n0\r\nx-t: 1\r\n\r\n"),
        "/gzip" => send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n\x1f\x8b\r\n0\r\n\r\n"),
        "/bad-lf" => send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx: a\n\n"),
        "/bad-size" => send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2 junk\r\nok\r\n0\r\n\r\n"),
        "/bad-trailer" => send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\ncontent-length: 9\r\n\r\n"),
        "/late-bad" => RawAction::SendThen(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n".to_vec(),
            Duration::from_millis(50),
            b"zz\r\n".to_vec(),
        ),
        _ => send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    }
    });
    let h = raw.proxy();
    let mut c = h.connect();
    c.send(get("/fn/t/ext").as_bytes());
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.raw_body, b"2\r\nok\r\n0\r\n\r\n");
    assert_eq!(r.header("trailer"), None);
    // (Read raw: the test client takes `chunked` alone.)
    c.send(get("/fn/t/gzip").as_bytes());
    while !c.buf.ends_with(b"\r\n0\r\n\r\n") {
        assert!(c.fill() > 0);
    }
    let got = String::from_utf8_lossy(&c.buf).into_owned();
    assert!(
        got.contains("\r\ntransfer-encoding: gzip, chunked\r\n"),
        "{got}"
    );
    assert!(
        c.buf.ends_with(b"\r\n\r\n2\r\n\x1f\x8b\r\n0\r\n\r\n"),
        "{got:?}"
    );
    c.buf.clear();

    for path in ["/bad-lf", "/bad-size", "/bad-trailer"] {
        let (mut c, r) = h.call(&get(&format!("/fn/t{path}")));
        assert_eq!(r.status, 502, "{path}: {r:?}");
        assert!(
            r.error().contains("invalid answer"),
            "{path}: {}",
            r.error()
        );
        c.expect_closed();
        // The next call gets a connection of its own.
        let before = raw.requests().len();
        let (_, r) = h.call(&get("/fn/t/after"));
        assert_eq!(r.status, 200);
        let seen = raw.requests();
        assert_ne!(seen[before].conn, seen[before - 1].conn, "{path}");
    }

    // The head went out already: the client connection is cut, the
    // chunked body never ends.
    let mut c = h.connect();
    c.send(get("/fn/t/late-bad").as_bytes());
    c.fill_to(4);
    let got = String::from_utf8_lossy(&c.rest()).into_owned();
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\n2\r\nok\r\n"), "{got:?}");
}

/// Issue 8, point 2: a target with a multi-byte character used to panic
/// the connection task (the client got nothing); now such a target is 400
/// (bytes outside RFC 3986 are never relayed) and its percent-encoded form
/// passes. An answer's status line without a reason, or with an obs-text
/// one, used to panic too.
#[test]
fn odd_bytes_in_targets_and_status_lines_are_answered() {
    let raw = RawUpstream::start(|req| match req.path.as_str() {
        "/no-reason" => send(b"HTTP/1.1 200\r\ncontent-length: 2\r\n\r\nok"),
        "/obs-text" => send(b"HTTP/1.1 404 \xe9t\xe9\r\ncontent-length: 2\r\n\r\nno"),
        _ => send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    });
    let h = raw.proxy();
    for target in [&b"/fn/ab\xc3\xa9"[..], b"/fn/t/x\xc3\xa9", b"/fn/t/\xc3"] {
        let mut c = h.connect();
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
        c.send(&req);
        let r = c.response();
        assert_eq!(r.status, 400, "{r:?}");
    }
    assert!(raw.requests().is_empty());
    let mut c = h.connect();
    c.send(b"GET /fn/t/x%C3%A9 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.response().status, 200);
    assert_eq!(raw.requests()[0].path.as_bytes(), b"/x%C3%A9");
    for (path, line) in [
        ("/no-reason", "HTTP/1.1 200 OK\r\n"),
        ("/obs-text", "HTTP/1.1 404 Not Found\r\n"),
    ] {
        c.send(get(&format!("/fn/t{path}")).as_bytes());
        c.fill_to(line.len());
        assert_eq!(String::from_utf8_lossy(&c.buf[..line.len()]), line);
        let r = c.response();
        assert_eq!(r.body.len(), 2);
    }
}

/// Issue 8, point 3: bytes an instance writes after a complete answer
/// close its connection; they never become the next caller's answer. (Old
/// code reused a connection pooled less than 1 s ago unchecked: the next
/// caller got the stray answer.)
#[test]
fn bytes_after_an_answer_close_the_upstream_connection() {
    let stray: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nSTRAY!";
    let raw = RawUpstream::start(move |req| {
        let answer = match req.path.as_str() {
            "/204" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            "/304" => b"HTTP/1.1 304 Not Modified\r\ncontent-length: 6\r\n\r\n".to_vec(),
            "/head" => b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n".to_vec(),
            "/extra" => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            _ => return send(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ngood"),
        };
        if req.nth == 0 {
            // In the same write (first request on a connection) or late.
            send(&[&answer[..], stray].concat())
        } else {
            RawAction::SendThen(answer, Duration::from_millis(30), stray.to_vec())
        }
    });
    let h = raw.proxy();
    let mut c = h.connect();
    for round in 0..2 {
        for (method, path) in [
            ("GET", "/204"),
            ("GET", "/304"),
            ("HEAD", "/head"),
            ("GET", "/extra"),
        ] {
            if round == 1 {
                // Put a connection in the pool that has served one call.
                c.send(get("/fn/t/warm").as_bytes());
                assert_eq!(c.response().body, b"good");
            }
            c.send(format!("{method} /fn/t{path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes());
            let r = if method == "HEAD" {
                c.response_to_head()
            } else {
                c.response()
            };
            assert!(matches!(r.status, 200 | 204 | 304), "{path}: {r:?}");
            // The stray bytes (30 ms late on a reused connection) are at
            // the proxy's end before the next call.
            raw.settle();
            c.send(get("/fn/t/next").as_bytes());
            let r = c.response();
            assert_eq!(r.body, b"good", "round {round}, after {path}: {r:?}");
        }
    }
    // Every answer with stray bytes was the last on its connection.
    let seen = raw.requests();
    for (i, s) in seen.iter().enumerate() {
        if s.path != "/next" && s.path != "/warm" {
            assert!(
                seen[i + 1..].iter().all(|later| later.conn != s.conn),
                "{} on connection {} was followed by another call: {seen:?}",
                s.path,
                s.conn
            );
        }
    }
}

/// Issue 8, point 4: a reused connection that gives nothing back is
/// replayed on a fresh one for idempotent methods only. (Old code sent
/// the POST twice.)
#[test]
fn only_idempotent_requests_are_replayed() {
    // The second request on any connection is read and not answered.
    let raw = RawUpstream::start(|req| {
        if req.nth >= 1 {
            RawAction::Close
        } else {
            send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        }
    });
    let h = raw.proxy();
    let mut c = h.connect();
    for (method, replayed) in [
        ("POST", false),
        ("GET", true),
        ("PATCH", false),
        ("PUT", true),
        ("DELETE", true),
    ] {
        c.send(get("/fn/t/warm").as_bytes());
        assert_eq!(c.response().status, 200);
        let before = raw.requests().len();
        c.send(
            format!("{method} /fn/t/call HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc")
                .as_bytes(),
        );
        let r = c.response();
        let sent = raw.requests()[before..]
            .iter()
            .filter(|s| s.path == "/call" && s.method == method)
            .count();
        if replayed {
            assert_eq!((r.status, sent), (200, 2), "{method}: {r:?}");
        } else {
            assert_eq!((r.status, sent), (502, 1), "{method}: {r:?}");
            assert!(r.closes());
            c.expect_closed();
            c = h.connect();
        }
    }
}

/// Issue 8, point 6: bytes the client sent right behind its upgrade
/// request go into the tunnel (old code dropped them).
#[test]
fn bytes_sent_with_an_upgrade_request_reach_the_tunnel() {
    let h = Harness::new();
    let mut c = h.connect();
    c.send(
        b"GET /fn/t/ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: echo\r\n\r\nearly",
    );
    let r = c.response();
    assert_eq!(r.status, 101, "{r:?}");
    c.fill_to(5);
    assert_eq!(&c.buf[..5], b"EARLY");
}

/// Issue 8, point 7: `host` rules (RFC 9112 §3.2): missing in HTTP/1.1 or
/// repeated is 400; an absolute-form target's authority replaces it;
/// `connection` cannot remove it. (Old code forwarded all of these.)
#[test]
fn host_is_checked_replaced_and_kept() {
    let h = Harness::new();
    for bad in [
        "GET /fn/t/echo HTTP/1.1\r\n\r\n",
        "GET /fn/t/echo HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
        "GET http:///fn/t/echo HTTP/1.1\r\nhost: a\r\n\r\n",
        "GET http://user@a/fn/t/echo HTTP/1.1\r\nhost: a\r\n\r\n",
    ] {
        let (mut c, r) = h.call(bad);
        assert_eq!(r.status, 400, "{bad:?}: {r:?}");
        c.expect_closed();
    }
    assert!(h.upstream.requests().is_empty());
    let (_, r) = h.call("GET http://real.test/fn/t/echo/abs HTTP/1.1\r\nhost: other.test\r\n\r\n");
    assert_eq!(r.status, 200);
    let seen = h.upstream.last();
    assert_eq!(
        (seen.line.as_str(), seen.values("host")),
        ("GET /echo/abs HTTP/1.1", vec!["real.test"])
    );
    let (_, r) = h.call("GET /fn/t/echo/c HTTP/1.1\r\nhost: kept.test\r\nconnection: host, content-length\r\ncontent-length: 2\r\n\r\nhi");
    assert_eq!(r.status, 200);
    let seen = h.upstream.last();
    assert_eq!(seen.values("host"), ["kept.test"]);
    assert_eq!(
        (seen.values("content-length"), seen.body.as_slice()),
        (vec!["2"], &b"hi"[..])
    );
}

/// Issue 8, point 7: an answer's framing fields are normalised or
/// refused (RFC 9112 §6.3). (Old code relayed them as they came.)
#[test]
fn answer_framing_is_normalised_or_refused() {
    let raw = RawUpstream::start(|req| {
        match req.path.as_str() {
        "/cl-list" => send(b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\nContent-Length: 2\r\n\r\nok"),
        "/cl-differ" => send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!"),
        "/te-twice" => send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
        "/te-1.0" => send(b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
        "/te-cl" => send(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
        _ => send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    }
    });
    let h = raw.proxy();
    let mut c = h.connect();
    c.send(get("/fn/t/cl-list").as_bytes());
    let r = c.response();
    assert_eq!(
        (r.header("content-length"), r.body.as_slice()),
        (Some("2"), &b"ok"[..])
    );
    c.send(get("/fn/t/te-cl").as_bytes());
    let r = c.response();
    assert_eq!(
        (r.header("transfer-encoding"), r.header("content-length")),
        (Some("chunked"), None)
    );
    assert_eq!(r.body, b"ok");
    // Answered with both framings: that connection is not reused.
    c.send(get("/fn/t/after").as_bytes());
    assert_eq!(c.response().status, 200);
    let seen = raw.requests();
    assert_ne!(seen[1].conn, seen[2].conn);
    for path in ["/cl-differ", "/te-twice", "/te-1.0"] {
        let (mut c, r) = h.call(&get(&format!("/fn/t{path}")));
        assert_eq!(r.status, 502, "{path}: {r:?}");
        c.expect_closed();
    }
}

/// Review of issue 8's fixes: a field name with `_` is not relayed (a
/// server that maps `Transfer_Encoding` to `transfer-encoding` would frame
/// by it, as nginx's `underscores_in_headers off` guards against).
#[test]
fn field_names_with_underscores_are_not_relayed() {
    let raw = RawUpstream::start(|_| send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
    let h = raw.proxy();
    let mut c = h.connect();
    c.send(
        b"POST /fn/t/u HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer_Encoding: chunked\r\n\
X_Other: 1\r\nX-Fine: 1\r\n\r\nhello",
    );
    assert_eq!(c.response().status, 200);
    let seen = raw.requests();
    assert_eq!(seen.len(), 1);
    let got = String::from_utf8_lossy(&seen[0].raw).into_owned();
    assert!(!got.contains('_'), "{got:?}");
    assert!(got.contains("\r\nX-Fine: 1\r\n"), "{got:?}");
    assert!(got.ends_with("\r\n\r\nhello"), "{got:?}");
}

/// Review of issue 8's fixes: a 1xx or 204 answer carries no framing field
/// to the client, a 304 no `transfer-encoding` (RFC 9110 §8.6, RFC 9112
/// §6.1), whatever the instance wrote.
#[test]
fn bodiless_answers_reach_the_client_without_framing_fields() {
    let raw = RawUpstream::start(|req| match req.path.as_str() {
        "/204" => send(b"HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n"),
        "/204cl" => send(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nx-a: 1\r\n\r\n"),
        _ => send(b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n"),
    });
    let h = raw.proxy();
    for path in ["/204", "/204cl", "/304"] {
        let mut c = h.connect();
        c.send(get(&format!("/fn/t{path}")).as_bytes());
        while !c.buf.windows(4).any(|w| w == b"\r\n\r\n") {
            assert!(c.fill() > 0, "closed before a head");
        }
        let head = String::from_utf8_lossy(&c.buf).to_ascii_lowercase();
        assert!(head.contains("\r\nx-a: 1\r\n"), "{path}: {head:?}");
        assert!(!head.contains("transfer-encoding"), "{path}: {head:?}");
        assert!(!head.contains("content-length"), "{path}: {head:?}");
    }
}

/// An instance on 127.0.0.1 that answers 200 to every request but a POST,
/// which it refuses with a 413 after reading `take` bytes of its body and
/// closes with a reset (then `reset` is set). With `tiny_window` its
/// connections receive into a 4 KiB buffer: what the proxy writes does not
/// all fit in the kernel's buffers.
fn early_refuser(
    take: usize,
    tiny_window: bool,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicBool>) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if tiny_window {
        socket.set_recv_buffer_size(4096).unwrap();
    }
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(16).unwrap();
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    let reset = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let was_reset = Arc::clone(&reset);
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { continue };
            let reset = Arc::clone(&was_reset);
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match tcp.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let post = buf.starts_with(b"POST ");
                    buf.drain(..end);
                    if post {
                        while buf.len() < take {
                            let mut chunk = [0u8; 64 * 1024];
                            match tcp.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let _ = tcp.write_all(
                            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        );
                        let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                        drop(tcp);
                        reset.store(true, Ordering::SeqCst);
                        return;
                    }
                    if tcp
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, reset)
}

/// Review of issue 8's fixes: an instance that answers before reading a
/// body and closes (as fnhttp does past its own body limit, or a handler
/// that refuses early) makes the proxy's body write fail; that is no sign
/// of a broken instance, so it stays in the pool. (Old code marked it
/// failed: the next call started a new instance.) Bodies over the 1 MiB the
/// proxy reads ahead of the lease: the rest streams after the head.
#[test]
fn an_instance_that_answers_early_and_closes_is_not_marked_failed() {
    let (addr, reset) = early_refuser(AHEAD, false);
    let h = Harness::in_front_of(addr, route_with(2 * AHEAD, ""));
    let mut c = h.connect();
    // The proxy reads `AHEAD` bytes of the body before it leases an
    // instance, and sends them with the head; the rest follows as it comes.
    let head = format!(
        "POST /fn/t/big HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        AHEAD + 900
    );
    c.send(head.as_bytes());
    c.send(&vec![b'a'; AHEAD]);
    // The rest of the body leaves once the instance has answered and reset
    // the connection, and the reset has closed the proxy's end.
    tcp::wait_until(IO_TIMEOUT, "the instance reset the connection", || {
        reset.load(Ordering::SeqCst) && !tcp::connected_to(addr)
    });
    let _ = c.tcp.write_all(&[b'a'; 900]);
    let r = c.response();
    // The body write fails on the reset connection (the 413 went with
    // it): 502, and the instance stays.
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(h.starts(), 1);
    let (_, r) = h.call(&get("/fn/t/next"));
    assert_eq!(r.status, 200);
    assert_eq!(h.starts(), 1, "the instance was kept: no second start");
}

/// The body read ahead of the lease leaves in the head's write: an instance
/// that refuses on the head alone and resets breaks that write after the
/// head went out, and stays in the pool. (With the head counted as sent
/// only when the whole write succeeded, it was marked failed: the next
/// call started a new instance.)
#[test]
fn an_instance_that_refuses_on_the_head_is_not_marked_failed() {
    let (addr, reset) = early_refuser(0, true);
    let h = Harness::in_front_of(addr, route_with(2 * AHEAD, ""));
    let mut c = h.connect();
    c.send(
        format!("POST /fn/t/big HTTP/1.1\r\nHost: x\r\nContent-Length: {AHEAD}\r\n\r\n").as_bytes(),
    );
    c.send(&vec![b'a'; AHEAD]);
    let r = c.response();
    assert!(reset.load(Ordering::SeqCst));
    // The 413 if it was read before the reset, else 502.
    assert!(matches!(r.status, 413 | 502), "{r:?}");
    assert_eq!(h.starts(), 1);
    let (_, r) = h.call(&get("/fn/t/next"));
    assert_eq!(r.status, 200);
    assert_eq!(h.starts(), 1, "the instance was kept: no second start");
}

/// Security review of the proxy: a handler that fails and closes without
/// answering (Go's net/http on a panic, Python's http.server on an
/// exception) after the whole request was written to a fresh connection is
/// a 502 for that call only; the instance stays. (Old code marked it failed
/// whenever the request fitted the first write, so any caller could loop
/// such a call to take instances out, cutting every other call on them.)
#[test]
fn an_instance_that_closes_without_answering_a_whole_request_is_not_marked_failed() {
    let raw = RawUpstream::start(|req| match req.path.as_str() {
        "/die" => RawAction::Close,
        _ => send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    });
    let h = raw.proxy();
    for request in [
        get("/fn/t/die"),
        "POST /fn/t/die HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello".to_owned(),
    ] {
        let (mut c, r) = h.call(&request);
        assert_eq!(r.status, 502, "{request:?}: {r:?}");
        assert_eq!(r.error(), "function connection failed");
        c.expect_closed();
        let (_, r) = h.call(&get("/fn/t/next"));
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(h.starts(), 1, "the instance was kept: no second start");
    }
}

/// Security review of the proxy: a client that goes away while its call
/// waits for an instance has its connection closed when the `100 Continue`
/// it asked for cannot be written; the instance never gets the request.
/// (Old code ignored the failed write and sent the head on.)
#[test]
fn a_client_gone_before_its_100_continue_is_not_forwarded() {
    let raw = RawUpstream::start(|_| {
        send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
    });
    let runtime =
        Arc::new(FakeRuntime::serving(raw.addr).with_start_delay(Duration::from_millis(300)));
    let proxy = start_proxy(Arc::clone(&runtime));
    let h = Harness {
        addr: proxy,
        upstream: Upstream::start(),
        runtime,
    };
    let mut c = h.connect();
    let client_port = c.tcp.local_addr().unwrap().port();
    c.send(
        b"POST /fn/t/u HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n",
    );
    // The head reached the proxy and the proxy read it (it now waits for
    // the instance to start); then the client resets its connection.
    tcp::wait_until(IO_TIMEOUT, "the proxy read the head", || {
        let socks = tcp::sockets_of(h.addr);
        let sent = socks
            .iter()
            .any(|s| s.local_port == client_port && s.tx_queue == 0);
        let read = socks
            .iter()
            .any(|s| s.remote_port == client_port && s.rx_queue == 0);
        sent && read
    });
    socket2::SockRef::from(&c.tcp)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    // A call after it, on the instance the first one waited for; then
    // every connection the instance got is closed (its answers say so).
    let (_, r) = h.call(&get("/fn/t/next"));
    assert_eq!(r.status, 200, "{r:?}");
    raw.wait_closed();
    let got = String::from_utf8_lossy(&raw.bytes()).into_owned();
    assert!(!got.contains("POST"), "the request was forwarded: {got:?}");
    assert_eq!(h.starts(), 1);
}

/// Security review of the proxy: what a proxy says about the client
/// (`forwarded`, `x-real-ip`, `x-forwarded-host`, `x-forwarded-port`) is
/// not taken from the client: a function that trusts them (a reset link
/// built from `x-forwarded-host`) could be fooled. `x-forwarded-for` is
/// extended and `x-forwarded-proto` replaced, as before. (Old code passed
/// the four on unchanged.)
#[test]
fn client_forwarding_fields_do_not_reach_the_instance() {
    let h = Harness::new();
    let mut c = h.connect();
    c.send(
        b"GET /fn/t/echo/f HTTP/1.1\r\nhost: example.test\r\nForwarded: for=1.2.3.4;host=evil.test\r\n\
          X-Real-IP: 1.2.3.4\r\nx-forwarded-host: evil.test\r\nX-FORWARDED-PORT: 8443\r\n\
          x-forwarded-for: 192.0.2.1\r\nx-forwarded-proto: https\r\nx-forwarded-hosts: kept\r\n\r\n",
    );
    let r = c.response();
    assert_eq!(r.status, 200, "{r:?}");
    let seen = h.upstream.last();
    for name in [
        "forwarded",
        "x-real-ip",
        "x-forwarded-host",
        "x-forwarded-port",
    ] {
        assert!(
            seen.values(name).is_empty(),
            "{name} was forwarded:\n{}",
            seen.head_text()
        );
    }
    assert_eq!(seen.values("host"), ["example.test"]);
    assert_eq!(seen.values("x-forwarded-for"), ["192.0.2.1, 127.0.0.1"]);
    assert_eq!(seen.values("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.values("x-forwarded-hosts"), ["kept"]);
    assert!(!seen.head_text().contains("evil"), "{}", seen.head_text());
}

/// A start that fails in the engine never shows the engine's text to the
/// caller: out of addresses (Podman's IPAM error) is a 503 with
/// `retry-after`, any other engine failure a short 502 (issue 15).
#[test]
fn start_failures_answer_short_messages_without_engine_details() {
    let h = Harness::new();
    h.runtime.fail_starts_with(Some(
        "IPAM error: failed to find free IP in range: 10.89.0.1 - 10.89.0.254",
    ));
    let (_, r) = h.call(&get("/fn/t/echo"));
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("2"), "{r:?}");
    let text = r.error();
    assert_eq!(
        text,
        "function t temporarily unavailable: the node is at capacity"
    );
    h.runtime.fail_starts_with(Some(
        "OCI runtime error: runc: secret /var/lib/containers path",
    ));
    let (_, r) = h.call(&get("/fn/t/echo"));
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("retry-after"), None);
    assert_eq!(r.error(), "function t: its instance failed to start");
    for raw in [&r.body, &r.raw_body] {
        let body = String::from_utf8_lossy(raw);
        for secret in ["IPAM", "podman", "runc", "10.89", "/containers/"] {
            assert!(!body.contains(secret), "{secret} in {body}");
        }
    }
    h.runtime.fail_starts_with(None);
    let (_, r) = h.call(&get("/fn/t/echo"));
    assert_eq!(r.status, 200, "{r:?}");
}
