//! What the smuggling suite (`tests/smuggling.rs`) runs the proxy against:
//! a real proxy worker (as `server.rs` runs it) in front of a recording
//! instance, and three independent readings of the bytes that instance
//! received:
//!
//! - the project's own function server parser (`examples/fnhttp`), which
//!   ends lines at a bare LF like Go's net/http: the realistic victim, and
//!   also what the live instance uses to answer;
//! - hyper 1's server, fed the recorded bytes offline;
//! - a strict RFC 9112 reference parser (`strict.rs`).
//!
//! The rule every vector checks: all three see exactly the requests the
//! proxy meant to forward (count, methods, targets, bodies), with nothing
//! left over, so the instance can never see a different message boundary
//! than the proxy assumed.
//!
//! Over 600 lines: the recording instance, the proxy worker and the
//! fnhttp reading belong to one check; the parts that stand alone
//! (`strict.rs`, `oracle.rs`) are files of their own.

#![allow(dead_code)]

pub mod oracle;
pub mod strict;
pub mod tcp;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerpub_pool::testing::FakeRuntime;
use containerpub_pool::{Pool, PoolConfig};
use containerpub_proxy::engine::{self, Worker};
use containerpub_proxy::routes::Routes;
use containerpub_proxy::service::Proxy;
use containerpub_wire::Manifest;
use containerpub_wire::api::{Route, RouteTable};

/// Bound on every client read and write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The route's `resources.timeout_ms`.
pub const TIMEOUT_MS: u64 = 1500;
/// The route's `resources.max_body_bytes`.
pub const MAX_BODY: usize = 1000;
pub const HEALTH: &str = "/health";

// ---------------------------------------------------------------------------
// The three readings of what an instance received.

/// A request as a parser saw it.
#[derive(Clone, PartialEq, Eq)]
pub struct Req {
    pub method: String,
    pub target: String,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} body={:?}",
            self.method,
            self.target,
            String::from_utf8_lossy(&self.body)
        )
    }
}

pub fn req(method: &str, target: &str, body: &[u8]) -> Req {
    Req {
        method: method.into(),
        target: target.into(),
        body: body.to_vec(),
    }
}

pub use strict::Tail;

/// What one parser made of a byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub requests: Vec<Req>,
    pub tail: Tail,
}

/// The strict reference's reading.
pub fn strict_view(bytes: &[u8]) -> View {
    let (msgs, tail) = strict::requests(bytes);
    View {
        requests: msgs
            .into_iter()
            .map(|m| Req {
                method: m.method,
                target: m.target,
                body: m.body,
            })
            .collect(),
        tail,
    }
}

/// `examples/fnhttp`'s reading (LF-tolerant).
pub fn fnhttp_view(bytes: &[u8]) -> View {
    let mut r: &[u8] = bytes;
    let limits = fnhttp::Limits::default();
    let mut requests = Vec::new();
    loop {
        match fnhttp::parse_request(&mut r, &limits) {
            Ok(Some(q)) => requests.push(Req {
                method: q.method,
                target: q.target,
                body: q.body,
            }),
            Ok(None) => {
                return View {
                    requests,
                    tail: Tail::Clean,
                };
            }
            Err(fnhttp::ParseError::Incomplete) => {
                return View {
                    requests,
                    tail: Tail::Incomplete,
                };
            }
            Err(e) => {
                return View {
                    requests,
                    tail: Tail::Error(e.message().into()),
                };
            }
        }
    }
}

/// hyper 1's server reading, fed the bytes offline over an in-memory
/// stream.
pub fn hyper_view(bytes: &[u8]) -> View {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::{Bytes, Incoming};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let seen = Arc::new(Mutex::new(Vec::new()));
    let body_failed = Arc::new(Mutex::new(false));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async {
        let (client, server) = tokio::io::duplex(bytes.len() + 64 * 1024);
        let (mut from_server, mut to_server) = tokio::io::split(client);
        to_server.write_all(bytes).await.unwrap();
        to_server.shutdown().await.unwrap();
        let log = Arc::clone(&seen);
        let failed = Arc::clone(&body_failed);
        let service = hyper::service::service_fn(move |r: hyper::Request<Incoming>| {
            let log = Arc::clone(&log);
            let failed = Arc::clone(&failed);
            async move {
                let method = r.method().to_string();
                let target = r.uri().to_string();
                match r.into_body().collect().await {
                    Ok(body) => log.lock().unwrap().push(Req {
                        method,
                        target,
                        body: body.to_bytes().to_vec(),
                    }),
                    Err(_) => *failed.lock().unwrap() = true,
                }
                Ok::<_, Infallible>(hyper::Response::new(Empty::<Bytes>::new()))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .serve_connection(hyper_util::rt::TokioIo::new(server), service);
        let drain = async {
            let mut sink = Vec::new();
            let _ = from_server.read_to_end(&mut sink).await;
        };
        let run = async { tokio::join!(conn, drain).0 };
        tokio::time::timeout(Duration::from_secs(5), run).await
    });
    let requests = seen.lock().unwrap().clone();
    let tail = match result {
        Err(_) => Tail::Error("hyper did not finish".into()),
        Ok(Ok(())) if *body_failed.lock().unwrap() => Tail::Incomplete,
        Ok(Ok(())) => Tail::Clean,
        Ok(Err(e)) if e.is_incomplete_message() || *body_failed.lock().unwrap() => Tail::Incomplete,
        Ok(Err(e)) => Tail::Error(e.to_string()),
    };
    View { requests, tail }
}

/// The three readings of one upstream connection's bytes.
#[derive(Debug)]
pub struct Views {
    pub fnhttp: View,
    pub hyper: View,
    pub strict: View,
}

pub fn views(bytes: &[u8]) -> Views {
    Views {
        fnhttp: fnhttp_view(bytes),
        hyper: hyper_view(bytes),
        strict: strict_view(bytes),
    }
}

// ---------------------------------------------------------------------------
// The instance: a recording server answering by `examples/fnhttp`'s parse.

/// How the instance answers a path (instead of its echo).
#[derive(Clone)]
pub enum Script {
    /// These bytes, then the connection stays open.
    Raw(Vec<u8>),
    /// These bytes, then more after a pause, the connection open.
    Late(Vec<u8>, Duration, Vec<u8>),
    /// These bytes, then close.
    RawClose(Vec<u8>),
}

/// One connection the instance accepted.
#[derive(Debug, Default, Clone)]
pub struct ConnLog {
    /// Every byte received, in order.
    pub bytes: Vec<u8>,
    /// What the live parser made of them.
    pub requests: Vec<Req>,
    /// The live parser refused the bytes (malformed, not merely cut).
    pub error: Option<String>,
    /// The peer's address.
    peer: Option<SocketAddr>,
    /// The last `InstanceState::settles` at which the connection had
    /// nothing unread (everything before logged); `u64::MAX` once closed.
    drained: u64,
    /// `Instance::settle`'s own connection.
    marker: bool,
}

impl ConnLog {
    /// A readiness probe's or `Instance::settle`'s connection.
    fn is_probe(&self) -> bool {
        self.marker || self.bytes.starts_with(format!("GET {HEALTH} ").as_bytes())
    }
}

#[derive(Default)]
pub struct InstanceState {
    pub conns: Vec<ConnLog>,
    pub scripts: HashMap<String, Script>,
    /// Close each connection after one answer (then every upstream
    /// connection holds one forwarded request: the fuzz target's choice).
    pub close_every: bool,
    /// Late writes (`Script::Late`) not yet made.
    pub late_pending: usize,
    /// `Instance::settle` calls so far.
    pub settles: u64,
}

/// How long a connection's thread waits for bytes before it reports that
/// it has read everything (see `Instance::settle`).
const DRAIN_POLL: Duration = Duration::from_millis(2);

pub struct Instance {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<InstanceState>>,
}

/// Reads through to the stream, appending every byte to the log.
struct Tee {
    tcp: TcpStream,
    state: Arc<Mutex<InstanceState>>,
    conn: usize,
}

impl Read for Tee {
    /// Waits for bytes, `DRAIN_POLL` at a time (the socket's read
    /// timeout): each wait that ends with none reports the connection
    /// drained to `Instance::settle`.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::ErrorKind::{Interrupted, TimedOut, WouldBlock};
        loop {
            match self.tcp.peek(&mut [0u8; 1]) {
                Ok(_) => break,
                Err(e) if matches!(e.kind(), WouldBlock | TimedOut) => {
                    let mut s = self.state.lock().unwrap();
                    s.conns[self.conn].drained = s.settles;
                }
                Err(e) if e.kind() == Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let n = self.tcp.read(buf)?;
        self.state.lock().unwrap().conns[self.conn]
            .bytes
            .extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl Instance {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(InstanceState::default()));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            loop {
                let Ok((tcp, peer)) = listener.accept() else {
                    continue;
                };
                let state = Arc::clone(&shared);
                let conn = {
                    let mut s = state.lock().unwrap();
                    s.conns.push(ConnLog {
                        peer: Some(peer),
                        ..ConnLog::default()
                    });
                    s.conns.len() - 1
                };
                std::thread::spawn(move || {
                    instance_conn(tcp, conn, Arc::clone(&state));
                    state.lock().unwrap().conns[conn].drained = u64::MAX;
                });
            }
        });
        Self { addr, state }
    }

    pub fn script(&self, path: &str, script: Script) {
        self.state
            .lock()
            .unwrap()
            .scripts
            .insert(path.into(), script);
    }

    /// How much every connection had received so far.
    pub fn mark(&self) -> Vec<usize> {
        let s = self.state.lock().unwrap();
        s.conns.iter().map(|c| c.bytes.len()).collect()
    }

    /// Bytes received since `mark`, per connection (readiness probes left
    /// out), in accept order.
    pub fn since(&self, mark: &[usize]) -> Vec<Vec<u8>> {
        let s = self.state.lock().unwrap();
        s.conns
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.is_probe())
            .map(|(i, c)| c.bytes[mark.get(i).copied().unwrap_or(0)..].to_vec())
            .filter(|b| !b.is_empty())
            .collect()
    }

    /// The whole stream, from its first byte, of every connection that
    /// received bytes since `mark` (readiness probes left out). A slice from
    /// the mark can start inside a request: under load an earlier call's
    /// upstream bytes (the proxy gave up on them and closed) are read by the
    /// instance only after the next mark, and the slice is then the tail of
    /// a body, which no parser can frame.
    pub fn streams_since(&self, mark: &[usize]) -> Vec<Vec<u8>> {
        let s = self.state.lock().unwrap();
        s.conns
            .iter()
            .enumerate()
            .filter(|(i, c)| !c.is_probe() && c.bytes.len() > mark.get(*i).copied().unwrap_or(0))
            .map(|(_, c)| c.bytes.clone())
            .collect()
    }

    /// Waits (5 s at most) until the log holds every byte that reached
    /// the instance before the call, and its late writes are made. A
    /// connection of its own, once accepted, shows that every connection
    /// before it is (accepts are in order); each connection then reports
    /// that it found nothing more to read, or closes.
    pub fn settle(&self) {
        let round = {
            let mut s = self.state.lock().unwrap();
            s.settles += 1;
            s.settles
        };
        let marker = TcpStream::connect(self.addr).unwrap();
        let me = Some(marker.local_addr().unwrap());
        tcp::wait_until(Duration::from_secs(5), "the instance settled", || {
            let mut s = self.state.lock().unwrap();
            let Some(mine) = s.conns.iter_mut().find(|c| c.peer == me) else {
                return false;
            };
            mine.marker = true;
            s.late_pending == 0 && s.conns.iter().all(|c| c.drained >= round)
        });
    }

    /// Every non-probe connection's log.
    pub fn conns(&self) -> Vec<ConnLog> {
        let s = self.state.lock().unwrap();
        s.conns.iter().filter(|c| !c.is_probe()).cloned().collect()
    }
}

fn instance_conn(tcp: TcpStream, conn: usize, state: Arc<Mutex<InstanceState>>) {
    let _ = tcp.set_nodelay(true);
    tcp.set_read_timeout(Some(DRAIN_POLL)).unwrap();
    let mut out = tcp.try_clone().unwrap();
    let tee = Tee {
        tcp,
        state: Arc::clone(&state),
        conn,
    };
    let mut r = BufReader::new(tee);
    let limits = fnhttp::Limits::default();
    let mut n = 0;
    loop {
        let q = match fnhttp::parse_request(&mut r, &limits) {
            Ok(Some(q)) => q,
            Ok(None) | Err(fnhttp::ParseError::Io(_) | fnhttp::ParseError::Incomplete) => return,
            Err(e) => {
                state.lock().unwrap().conns[conn].error = Some(e.message().into());
                let _ = out.write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                return;
            }
        };
        let first = n == 0;
        n += 1;
        let script = {
            let mut s = state.lock().unwrap();
            s.conns[conn].requests.push(Req {
                method: q.method.clone(),
                target: q.target.clone(),
                body: q.body.clone(),
            });
            s.scripts.get(&q.path).cloned()
        };
        let keep = q.keep_alive();
        let written = match (q.path.as_str(), script) {
            (_, Some(Script::Raw(bytes))) => out.write_all(&bytes),
            (_, Some(Script::Late(bytes, pause, more))) => {
                // Counted before the answer leaves, so that whoever has
                // the answer sees the late write pending.
                state.lock().unwrap().late_pending += 1;
                let sent = out.write_all(&bytes);
                let mut late = out.try_clone().unwrap();
                let state = Arc::clone(&state);
                std::thread::spawn(move || {
                    std::thread::sleep(pause);
                    let _ = late.write_all(&more);
                    state.lock().unwrap().late_pending -= 1;
                });
                sent
            }
            (_, Some(Script::RawClose(bytes))) => {
                let _ = out.write_all(&bytes);
                return;
            }
            ("/ws", None) => {
                // A protocol switch, then an upper-casing echo.
                let _ = out.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n",
                );
                let mut chunk = [0u8; 4096];
                loop {
                    match r.read(&mut chunk) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if out.write_all(&chunk[..n].to_ascii_uppercase()).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            // On a reused connection: close without a word.
            ("/drop", None) if !first => return,
            (path, None) => {
                let body = if path == HEALTH {
                    b"ok".to_vec()
                } else {
                    format!("{} {} {}", q.method, q.target, q.body.len()).into_bytes()
                };
                let mut answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-target: {}\r\nx-conn: {conn}\r\n",
                    body.len(),
                    q.target
                )
                .into_bytes();
                if !keep {
                    answer.extend_from_slice(b"connection: close\r\n");
                }
                answer.extend_from_slice(b"\r\n");
                if q.method != "HEAD" {
                    answer.extend_from_slice(&body);
                }
                out.write_all(&answer)
            }
        };
        if written.is_err() || !keep || state.lock().unwrap().close_every {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// The container runtime under the pool (`containerpub_pool::testing::
// FakeRuntime`): every instance is the recording instance.

/// Function `name` from `manifest`, the manifest's lines after its name
/// (no keys, secrets or signing keys: set them on the answer).
pub fn route_from(name: &str, manifest: &str) -> Route {
    let text = format!("name = \"{name}\"\n{manifest}");
    Route {
        function: name.into(),
        deployment_id: 1,
        version: 1,
        image: "img".into(),
        config: Manifest::parse(&text).unwrap(),
        keys: Vec::new(),
        secrets: Vec::new(),
        signing_keys: Vec::new(),
    }
}

/// Function `t`: a short timeout and a small body limit.
fn route() -> Route {
    route_from(
        "t",
        &format!(
            "runtime = \"container\"\nvisibility = \"public\"\nhealth_path = \"{HEALTH}\"\n\
             [resources]\ntimeout_ms = {TIMEOUT_MS}\nmax_body_bytes = {MAX_BODY}\n\
             [scaling]\nmin_instances = 0\n"
        ),
    )
}

/// Runs one proxy worker (as `server.rs` runs it) for `routes` on its own
/// thread, its pool on `runtime` as node `node`; returns where it listens.
pub fn start_proxy(runtime: Arc<FakeRuntime>, node: &str, routes: Vec<Route>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let node = node.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let table = RouteTable {
                revision: 1,
                routes,
            };
            let config = PoolConfig {
                node,
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
                tokio::task::spawn_local(engine::serve_connection(
                    tcp,
                    peer,
                    Rc::clone(&proxy),
                    Rc::clone(&worker),
                ));
            }
        });
    });
    addr
}

/// A proxy worker and the instance behind it.
pub struct Harness {
    pub addr: SocketAddr,
    pub instance: Instance,
}

impl Harness {
    /// In front of function `t` (the smuggling suite's).
    pub fn new() -> Self {
        Self::with_route("smuggling-test", route())
    }

    /// In front of `route`, the pool running as node `node`.
    pub fn with_route(node: &str, route: Route) -> Self {
        let instance = Instance::start();
        let runtime = Arc::new(FakeRuntime::serving(instance.addr));
        let addr = start_proxy(runtime, node, vec![route]);
        Self { addr, instance }
    }

    pub fn connect(&self) -> Client {
        let tcp = TcpStream::connect(self.addr).unwrap();
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        tcp.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        tcp.set_nodelay(true).unwrap();
        Client {
            tcp,
            buf: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// Clients.

/// An answer as the client got it; its head was checked strictly.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: Vec<u8>,
    pub fields: Vec<strict::Field>,
    /// De-chunked.
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<String> {
        let all: Vec<_> = self.fields.iter().filter(|(n, _)| n == name).collect();
        assert!(
            all.len() <= 1,
            "{name} appears {} times: {self:?}",
            all.len()
        );
        all.first()
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    pub fn closes(&self) -> bool {
        self.header("connection").as_deref() == Some("close")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub struct Client {
    pub tcp: TcpStream,
    /// Bytes read and not yet parsed.
    pub buf: Vec<u8>,
}

impl Client {
    pub fn send(&mut self, bytes: &[u8]) {
        // The proxy may close after refusing a prefix: a late write can fail.
        let _ = self.tcp.write_all(bytes);
    }

    /// Reads more; 0 at the end of the connection (or a reset).
    pub fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 64 * 1024];
        // A signal can interrupt the read (libFuzzer's timers in the fuzz
        // targets that use this harness): read again.
        let read = loop {
            match self.tcp.read(&mut chunk) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match read {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => panic!(
                "reading from the proxy: {e}; unparsed: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// The next answer; `None` when the connection ends first. Its head
    /// must be strictly valid and its framing unambiguous.
    pub fn answer(&mut self, head_request: bool) -> Option<Answer> {
        let (status, fields, head_len) = loop {
            match strict::response_head(&self.buf) {
                Ok(Some(h)) => break (h.status, h.fields, h.len),
                Ok(None) => {}
                Err(e) => panic!(
                    "the client got an invalid answer head ({e}): {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
            if self.fill() == 0 {
                assert!(
                    self.buf.is_empty(),
                    "closed inside an answer head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
        };
        let head: Vec<u8> = self.buf.drain(..head_len).collect();
        let framing = strict::response_framing(status, &fields, head_request).unwrap_or_else(|e| {
            panic!(
                "ambiguous answer framing ({e}): {:?}",
                String::from_utf8_lossy(&head)
            )
        });
        let body = match framing {
            strict::Framing::Length(n) => {
                let n = n as usize;
                while self.buf.len() < n {
                    assert!(self.fill() > 0, "closed inside an answer body");
                }
                self.buf.drain(..n).collect()
            }
            strict::Framing::Chunked => loop {
                match strict::chunked(&self.buf, 0) {
                    Ok(Some(c)) => {
                        self.buf.drain(..c.len);
                        break c.data;
                    }
                    Ok(None) => assert!(self.fill() > 0, "closed inside a chunked answer"),
                    Err(e) => panic!("the client got an invalid chunked answer: {e}"),
                }
            },
            strict::Framing::Close => {
                while self.fill() > 0 {}
                std::mem::take(&mut self.buf)
            }
        };
        if status / 100 == 1 && status != 101 {
            return self.answer(head_request);
        }
        Some(Answer {
            status,
            head,
            fields,
            body,
        })
    }

    /// Whether the proxy closed the connection with nothing more sent.
    pub fn closed(&mut self) -> bool {
        self.buf.is_empty() && self.fill() == 0
    }
}
