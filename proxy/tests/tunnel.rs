//! WebSocket tunnels (`tunnel.rs`) under the function's stream limits, end
//! to end through a real proxy worker and pool in front of a scripted
//! instance: traffic keeps a tunnel open past `timeout_ms`, a silent one
//! ends after `stream_idle_ms`, a busy one at `max_call_s`, a peer that
//! never reads cannot hold it (or make the proxy buffer), and the lease and
//! the open-tunnel gauge go back when it ends (issue 13). The proxy and
//! the route are `support`'s; the instance is this file's own.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use containerpub_pool::testing::FakeRuntime;
use containerpub_wire::api::Route;
use support::{route_from, start_proxy};

/// The route's `timeout_ms`: every tunnel below outlives it.
const TIMEOUT_MS: u64 = 200;
/// The route's `stream_idle_ms`.
const IDLE_MS: u64 = 700;
/// The route's `max_call_s`.
const CAP_S: u64 = 3;
/// Bound on client reads and writes that should not block.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The scripted instance: `/ws/echo` switches protocols and upper-cases
/// what it gets back; `/ws/flood` switches and writes without end, never
/// reading (counting what it got out in `flooded`); `/ws/deaf` switches
/// and neither reads nor writes; anything else is a `200 ok`.
struct Instance {
    addr: SocketAddr,
    flooded: Arc<AtomicU64>,
}

impl Instance {
    fn start() -> Self {
        // Small kernel buffers on the instance's side (accepted sockets
        // inherit them), so what the hostile tests count is mostly the
        // proxy's own sockets.
        let socket = small_buffers();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        socket.listen(64).unwrap();
        let listener: TcpListener = socket.into();
        let addr = listener.local_addr().unwrap();
        let flooded = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&flooded);
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                let count = Arc::clone(&count);
                std::thread::spawn(move || instance_conn(tcp, &count));
            }
        });
        Self { addr, flooded }
    }
}

fn instance_conn(mut tcp: TcpStream, flooded: &AtomicU64) {
    let _ = tcp.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        // One request head (the calls here have no body).
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
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
        const SWITCH: &[u8] =
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n";
        match path.as_str() {
            "/ws/echo" => {
                let _ = tcp.write_all(SWITCH);
                let mut chunk = [0u8; 4096];
                loop {
                    match tcp.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tcp.write_all(&chunk[..n].to_ascii_uppercase()).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            "/ws/flood" => {
                let _ = tcp.write_all(SWITCH);
                let block = vec![b'x'; 64 * 1024];
                while let Ok(n) = tcp.write(&block) {
                    flooded.fetch_add(n as u64, Ordering::Relaxed);
                }
                return;
            }
            "/ws/deaf" => {
                let _ = tcp.write_all(SWITCH);
                // Holds the connection without reading it.
                std::thread::sleep(Duration::from_secs(60));
                return;
            }
            _ => {
                if tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Function `name` with the limits above, one instance taking one call at
/// a time.
fn route(name: &str) -> Route {
    route_from(
        name,
        &format!(
            "runtime = \"container\"\nvisibility = \"public\"\n\
             [resources]\ntimeout_ms = {TIMEOUT_MS}\nstream_idle_ms = {IDLE_MS}\nmax_call_s = {CAP_S}\n\
             [scaling]\nmin_instances = 0\nmax_instances = 1\nconcurrency = 1\n"
        ),
    )
}

/// A proxy worker (`support::start_proxy`) for function `name` in front of
/// the scripted instance.
struct Harness {
    addr: SocketAddr,
    name: String,
    instance: Instance,
    runtime: Arc<FakeRuntime>,
}

impl Harness {
    fn new(name: &str) -> Self {
        let instance = Instance::start();
        let runtime = Arc::new(FakeRuntime::serving(instance.addr));
        let addr = start_proxy(Arc::clone(&runtime), "tunnel-test", vec![route(name)]);
        Self {
            addr,
            name: name.into(),
            instance,
            runtime,
        }
    }

    fn connect(&self) -> TcpStream {
        let socket = small_buffers();
        socket.connect(&self.addr.into()).unwrap();
        let tcp: TcpStream = socket.into();
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        tcp.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp
    }

    /// A tunnel to `path`: the connection after the `101`'s head.
    fn open(&self, path: &str) -> TcpStream {
        let mut tcp = self.connect();
        write!(
            tcp,
            "GET /fn/{}{path} HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
            self.name
        )
        .unwrap();
        let head = read_head(&mut tcp);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        tcp
    }

    /// `cpub_proxy_tunnels_open` and `cpub_in_flight_requests` (leases
    /// held) for this function.
    fn gauges(&self) -> (i64, i64) {
        (
            gauge("cpub_proxy_tunnels_open", &self.name),
            gauge("cpub_in_flight_requests", &self.name),
        )
    }

    /// Waits for both gauges to read `want`.
    fn gauges_reach(&self, want: (i64, i64)) {
        let until = Instant::now() + Duration::from_secs(5);
        while self.gauges() != want {
            assert!(
                Instant::now() < until,
                "gauges {:?}, want {want:?}",
                self.gauges()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A plain call after a tunnel: served at once by the same instance
    /// (whose only slot the tunnel held), so the lease came back.
    fn next_call_is_served(&self) {
        let started = Instant::now();
        let mut tcp = self.connect();
        write!(tcp, "GET /fn/{}/ HTTP/1.1\r\nhost: x\r\n\r\n", self.name).unwrap();
        let head = read_head(&mut tcp);
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(
            started.elapsed() < Duration::from_millis(TIMEOUT_MS),
            "the next call waited {:?}",
            started.elapsed()
        );
        assert_eq!(self.runtime.starts(), 1, "one instance served everything");
    }
}

/// A TCP socket with 64 KiB kernel buffers each way (set before connect
/// or listen, so the window is sized from the start).
fn small_buffers() -> socket2::Socket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.set_send_buffer_size(64 * 1024).unwrap();
    socket
}

fn gauge(name: &str, function: &str) -> i64 {
    prometheus::gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "function" && l.value() == function)
        })
        .map(|m| m.get_gauge().get_value() as i64)
        .sum()
}

fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tcp.read(&mut byte).unwrap(), 1, "closed in the head");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Waits (up to `IO_TIMEOUT`) for the proxy to close `tcp`, discarding
/// what arrives; returns when it closed.
fn closed_at(tcp: &mut TcpStream) -> Instant {
    let mut sink = vec![0u8; 64 * 1024];
    loop {
        match tcp.read(&mut sink) {
            Ok(0) => return Instant::now(),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Instant::now(),
            Err(e) => panic!("the tunnel was not closed: {e}"),
        }
    }
}

/// Sends `word` and reads it back upper-cased.
fn echo(tcp: &mut TcpStream, word: &str) {
    tcp.write_all(word.as_bytes()).unwrap();
    let mut got = vec![0u8; word.len()];
    tcp.read_exact(&mut got).unwrap();
    assert_eq!(got, word.to_ascii_uppercase().as_bytes());
}

#[test]
fn traffic_keeps_a_tunnel_open_past_timeout_ms_and_silence_ends_it_at_the_idle_limit() {
    let h = Harness::new("tun-idle");
    let mut tcp = h.open("/ws/echo");
    let opened = Instant::now();
    h.gauges_reach((1, 1));
    // Frames every 100 ms for 1.5 s: past timeout_ms (200 ms) and past
    // the idle limit (700 ms) counted from the switch.
    let mut i = 0;
    let mut quiet = Instant::now();
    while opened.elapsed() < Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(100));
        echo(&mut tcp, &format!("frame {i};"));
        quiet = Instant::now();
        i += 1;
    }
    assert_eq!(h.gauges(), (1, 1), "still open while data flows");
    // Then silence: closed after the idle limit, well before the cap.
    let closed = closed_at(&mut tcp) - quiet;
    assert!(
        closed >= Duration::from_millis(IDLE_MS - 50)
            && closed < Duration::from_millis(IDLE_MS + 800),
        "closed {closed:?} after the last frame"
    );
    h.gauges_reach((0, 0));
    h.next_call_is_served();
}

#[test]
fn a_busy_tunnel_ends_at_max_call_s() {
    let h = Harness::new("tun-cap");
    let started = Instant::now();
    let mut tcp = h.open("/ws/echo");
    h.gauges_reach((1, 1));
    let mut i = 0;
    let closed = loop {
        tcp.write_all(format!("frame {i};").as_bytes())
            .unwrap_or(());
        i += 1;
        let mut got = [0u8; 64];
        match tcp.read(&mut got) {
            Ok(0) => break started.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break started.elapsed(),
            Err(e) => panic!("{e}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(CAP_S + 5),
            "not cut at the cap"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        closed >= Duration::from_millis(CAP_S * 1000 - 100)
            && closed < Duration::from_millis(CAP_S * 1000 + 1500),
        "a busy tunnel closed after {closed:?} (max_call_s = {CAP_S})"
    );
    assert!(i > 20, "frames flowed until the cap: {i}");
    h.gauges_reach((0, 0));
    h.next_call_is_served();
}

/// The function writes without end and the client never reads: the proxy
/// holds one buffer, the flood stops at the sockets' buffers, and the
/// stalled tunnel ends at the idle limit (before, a write blocked inside
/// the relay was never timed: the tunnel and its lease stayed forever).
#[test]
fn a_client_that_never_reads_cannot_hold_a_tunnel_or_swell_the_proxy() {
    let h = Harness::new("tun-deaf-client");
    let tcp = h.open("/ws/flood");
    let opened = Instant::now();
    h.gauges_reach((1, 1));
    // Wait for the flood to stall (nothing read on this side).
    let mut last = u64::MAX;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = h.instance.flooded.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
        assert!(
            opened.elapsed() < Duration::from_secs(CAP_S),
            "the flood did not stall"
        );
    }
    // Past the two 64 KiB ends, only the proxy's two kernel buffers on this
    // path can hold bytes (here at most 32 MiB received + 4 MiB to send,
    // `tcp_rmem`/`tcp_wmem`) besides its one 16 KiB buffer; a proxy that
    // kept reading would pass gigabytes in the idle time.
    assert!(
        last < 64 << 20,
        "the function got {last} bytes out to a client that reads nothing"
    );
    h.gauges_reach((0, 0));
    let ended = opened.elapsed();
    assert!(
        ended < Duration::from_millis(CAP_S * 1000),
        "the stalled tunnel ended at the idle limit, not the cap: {ended:?}"
    );
    drop(tcp.shutdown(std::net::Shutdown::Both));
    h.next_call_is_served();
}

/// The client writes without end and the function never reads: the same
/// from the other side.
#[test]
fn a_function_that_never_reads_cannot_hold_a_tunnel() {
    let h = Harness::new("tun-deaf-function");
    let mut tcp = h.open("/ws/deaf");
    let opened = Instant::now();
    h.gauges_reach((1, 1));
    tcp.set_nonblocking(true).unwrap();
    let block = vec![b'y'; 64 * 1024];
    let mut sent = 0u64;
    let ended = loop {
        match tcp.write(&block) {
            Ok(n) => sent += n as u64,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => break opened.elapsed(),
        }
        if h.gauges() == (0, 0) {
            break opened.elapsed();
        }
        assert!(
            opened.elapsed() < Duration::from_secs(CAP_S + 5),
            "the tunnel stayed open"
        );
    };
    assert!(sent < 64 << 20, "the proxy took {sent} bytes nobody reads");
    assert!(
        ended < Duration::from_millis(CAP_S * 1000),
        "the stalled tunnel ended at the idle limit, not the cap: {ended:?}"
    );
    h.gauges_reach((0, 0));
    h.next_call_is_served();
}
