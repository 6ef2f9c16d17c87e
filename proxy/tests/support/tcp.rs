//! The kernel's view of a test instance's loopback TCP connections
//! (`/proc/net/tcp`), so that a test waits for a connection to open or to
//! be reset, or for written bytes to reach the peer, instead of sleeping;
//! and `wait_until`, the polling with a deadline. Shared by `support/mod.rs` and `engine.rs` (included there by
//! path).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One IPv4 TCP socket with an end on the port asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sock {
    pub local_port: u16,
    pub remote_port: u16,
    /// `/proc/net/tcp`'s `st`: 0x01 established, 0x0A listening, …
    pub state: u8,
    /// Bytes written and not yet acknowledged by the peer, sent or not
    /// (Nagle's algorithm holds a small write while an earlier one waits
    /// for the peer's delayed acknowledgement).
    pub tx_queue: u32,
    /// Bytes received and not yet read by the application.
    pub rx_queue: u32,
}

/// `/proc/net/tcp`'s `st` of an established connection.
pub const ESTABLISHED: u8 = 0x01;

/// Every IPv4 loopback socket whose local or remote end is `addr`'s port
/// (both ends of each connection to `addr`, and `addr`'s listener).
pub fn sockets_of(addr: SocketAddr) -> Vec<Sock> {
    let port = addr.port();
    let text = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let port_of = |field: &str| {
        let (_, hex) = field.split_once(':')?;
        u16::from_str_radix(hex, 16).ok()
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some(Sock {
                local_port: port_of(fields.get(1)?)?,
                remote_port: port_of(fields.get(2)?)?,
                state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
                tx_queue: u32::from_str_radix(fields.get(4)?.split_once(':')?.0, 16).ok()?,
                rx_queue: u32::from_str_radix(fields.get(4)?.split_once(':')?.1, 16).ok()?,
            })
        })
        .filter(|s| s.local_port == port || s.remote_port == port)
        .collect()
}

/// Polls `done` every millisecond until it holds; panics naming `what`
/// after `within`.
pub fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < until, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Some connection to `addr` is established on the connecting side (a
/// connection closed on that side, or reset by `addr`'s end, is not).
pub fn connected_to(addr: SocketAddr) -> bool {
    sockets_of(addr)
        .iter()
        .any(|s| s.remote_port == addr.port() && s.state == ESTABLISHED)
}

/// Everything `addr`'s end of its connections wrote is in the peers'
/// kernels (acknowledged), ready for them to read.
pub fn delivered(addr: SocketAddr) -> bool {
    sockets_of(addr)
        .iter()
        .all(|s| s.local_port != addr.port() || s.tx_queue == 0)
}
