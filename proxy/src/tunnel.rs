//! The byte tunnel after a protocol switch (WebSocket): both directions
//! relayed until either side closes, under the function's stream limits —
//! `stream_idle_ms` without a byte in either direction, or `max_call_s`
//! (never below `timeout_ms`) in all, end it (issue 13). While a tunnel is
//! open its call holds its lease (counted in `cpub_in_flight_requests`)
//! and `cpub_proxy_tunnels_open{function}` counts it.

use std::sync::LazyLock;

use prometheus::IntGaugeVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::service::Call;

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
    /// A side closed (or failed).
    Closed,
    /// No byte either way for `stream_idle_ms`.
    Idle,
    /// The call reached `max_call_s`.
    Cap,
}

/// Relays between `client` and `up` until a side closes or a limit of
/// `call` ends it. Reads into two 16 KiB buffers of its own.
pub async fn relay(call: &Call, client: &mut TcpStream, up: &mut TcpStream) -> End {
    let open = TUNNELS.with_label_values(&[call.function()]);
    open.inc();
    let end = pump(call, client, up).await;
    open.dec();
    end
}

async fn pump(call: &Call, client: &mut TcpStream, up: &mut TcpStream) -> End {
    let (mut from_client, mut from_up) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut client_open, mut up_open) = (true, true);
    loop {
        let deadline = call.stream_deadline();
        let cap = call.stream_deadline_cap();
        tokio::select! {
            n = client.read(&mut from_client), if client_open => match n {
                Ok(0) | Err(_) => {
                    client_open = false;
                    let _ = up.shutdown().await;
                }
                Ok(n) => {
                    if up.write_all(from_client.get(..n).unwrap_or_default()).await.is_err() {
                        return End::Closed;
                    }
                }
            },
            n = up.read(&mut from_up), if up_open => match n {
                Ok(0) | Err(_) => {
                    up_open = false;
                    let _ = client.shutdown().await;
                }
                Ok(n) => {
                    if client.write_all(from_up.get(..n).unwrap_or_default()).await.is_err() {
                        return End::Closed;
                    }
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                return if deadline >= cap { End::Cap } else { End::Idle };
            }
        }
        if !client_open && !up_open {
            return End::Closed;
        }
    }
}
