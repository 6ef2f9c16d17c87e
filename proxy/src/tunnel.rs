//! The byte tunnel after a protocol switch (WebSocket): both directions
//! relayed until either side closes, under the function's stream limits —
//! `stream_idle_ms` without a byte moving in either direction, or
//! `max_call_s` (never below `timeout_ms`) in all, end it (issue 13). While
//! a tunnel is open its call holds its lease (counted in
//! `cpub_in_flight_requests`) and `cpub_proxy_tunnels_open{function}`
//! counts it; both go back down when the tunnel ends, however it ends.
//!
//! The two directions run as two futures of one task beside one timer, so
//! a side that stops reading stalls only the direction towards it, and a
//! stalled write is still cut by the timer (a write awaited inside a
//! `select!` arm would not be). Each direction has one 16 KiB buffer and
//! reads again only after it wrote what it read: a peer that never reads
//! costs the tunnel nothing beyond that buffer and the kernel's socket
//! buffers.

use std::cell::Cell;
use std::sync::LazyLock;

use prometheus::IntGaugeVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::time::Instant;

use crate::service::Call;

/// Size of each direction's buffer.
const BUF: usize = 16 * 1024;

/// Open tunnels per function.
static TUNNELS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    let gauge = IntGaugeVec::new(
        prometheus::Opts::new(
            "cpub_proxy_tunnels_open",
            "Open protocol-switch (WebSocket) tunnels, each holding an instance lease",
        ),
        &["function"],
    )
    .expect("tunnel gauge");
    prometheus::default_registry()
        .register(Box::new(gauge.clone()))
        .expect("tunnel gauge registered once");
    gauge
});

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed, or a write failed.
    Closed,
    /// No byte moved either way for `stream_idle_ms`.
    Idle,
    /// The call reached `max_call_s`.
    Cap,
}

/// Counts one open tunnel for as long as it lives (also when the
/// connection's task is dropped mid-tunnel).
struct Open(prometheus::IntGauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Relays between `client` and `up` until both sides close, a write fails
/// or a limit of `call` ends it.
pub async fn relay(call: &Call, client: &mut TcpStream, up: &mut TcpStream) -> End {
    let open = Open(TUNNELS.with_label_values(&[call.function()]));
    open.0.inc();
    let end = pump(call, client, up).await;
    drop(open);
    end
}

async fn pump(call: &Call, client: &mut TcpStream, up: &mut TcpStream) -> End {
    let idle = call.stream_idle();
    let cap = call.stream_deadline_cap();
    let last = Cell::new(Instant::now());
    let (mut client_r, mut client_w) = client.split();
    let (mut up_r, mut up_w) = up.split();
    let (mut to_up, mut to_client) = (vec![0u8; BUF], vec![0u8; BUF]);
    let forth = copy(&mut client_r, &mut up_w, &mut to_up, &last);
    let back = copy(&mut up_r, &mut client_w, &mut to_client, &last);
    let timer = async {
        loop {
            tokio::time::sleep_until((last.get() + idle).min(cap)).await;
            let now = Instant::now();
            if now >= cap {
                return End::Cap;
            }
            if now >= last.get() + idle {
                return End::Idle;
            }
        }
    };
    tokio::pin!(forth, back, timer);
    let (mut forth_done, mut back_done) = (false, false);
    loop {
        tokio::select! {
            ok = &mut forth, if !forth_done => {
                if !ok {
                    return End::Closed;
                }
                forth_done = true;
            }
            ok = &mut back, if !back_done => {
                if !ok {
                    return End::Closed;
                }
                back_done = true;
            }
            end = &mut timer => return end,
        }
        if forth_done && back_done {
            return End::Closed;
        }
    }
}

/// Copies `from` to `to` until `from` ends (then shuts `to`'s sending side:
/// `true`) or a write fails (`false`). Every byte read or written marks
/// `last`.
async fn copy(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    buf: &mut [u8],
    last: &Cell<Instant>,
) -> bool {
    loop {
        let n = match from.read(buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return true;
            }
            Ok(n) => n,
        };
        last.set(Instant::now());
        let mut rest = buf.get(..n).unwrap_or_default();
        while !rest.is_empty() {
            match to.write(rest).await {
                Ok(0) | Err(_) => return false,
                Ok(k) => {
                    rest = rest.get(k..).unwrap_or_default();
                    last.set(Instant::now());
                }
            }
        }
    }
}
