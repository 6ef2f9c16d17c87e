//! `wsecho`: a WebSocket echo function (RFC 6455), std only.
//!
//! - A request with `upgrade: websocket` and a `sec-websocket-key` is
//!   switched (`101` with the `sec-websocket-accept` the RFC asks for);
//!   then every text or binary frame comes back as it was sent (unmasked,
//!   same opcode), a ping gets its pong, a close is answered and ends it.
//! - Any other request gets `200 ok` (the readiness probe, plain calls).
//!
//! Limits: a request head of at most 16 KiB, a frame of at most 1 MiB
//! (a bigger one is answered with close code 1009), client frames must be
//! masked (else close 1002). One thread per connection.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};

mod sha1;

const MAX_HEAD: usize = 16 * 1024;
const MAX_FRAME: u64 = 1 << 20;
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn main() {
    exit_on_termination_signals();
    let port = std::env::var("PORT")
        .ok()
        .and_then(|p| p.trim().parse::<u16>().ok())
        .unwrap_or(8080);
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(err) => {
            eprintln!("wsecho: cannot listen on {port}: {err}");
            std::process::exit(1);
        }
    };
    eprintln!("wsecho listening on 0.0.0.0:{port}");
    for tcp in listener.incoming() {
        let Ok(tcp) = tcp else { continue };
        std::thread::spawn(move || {
            let _ = serve(tcp);
        });
    }
}

/// One connection: requests until a switch, then frames.
fn serve(mut tcp: TcpStream) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_head(&mut tcp, &mut buf)? else {
            return Ok(());
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let field = |name: &str| {
            head.split("\r\n").skip(1).find_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let upgrade = field("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
        match (upgrade, field("sec-websocket-key")) {
            (true, Some(key)) => {
                let accept = base64(&sha1::digest(format!("{key}{GUID}").as_bytes()));
                tcp.write_all(
                    format!(
                        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
                         connection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
                    )
                    .as_bytes(),
                )?;
                eprintln!("wsecho: tunnel open");
                let ended = frames(&mut tcp, buf);
                eprintln!("wsecho: tunnel closed ({ended:?})");
                return ended;
            }
            (true, None) => {
                tcp.write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 21\r\nconnection: close\r\n\r\nno sec-websocket-key\n",
                )?;
                return Ok(());
            }
            _ => tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")?,
        }
    }
}

/// Reads until `buf` holds a whole head; its length, or `None` at EOF or
/// when it is too long.
fn read_head(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(i + 4));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let mut chunk = [0u8; 4096];
        let n = tcp.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Echoes frames until a close, an error or EOF. `early` holds bytes read
/// with the head.
fn frames(tcp: &mut TcpStream, early: Vec<u8>) -> io::Result<()> {
    let mut input = early.as_slice().chain(tcp.try_clone()?);
    loop {
        let mut h = [0u8; 2];
        input.read_exact(&mut h)?;
        let (fin_op, opcode) = (h[0], h[0] & 0x0f);
        let masked = h[1] & 0x80 != 0;
        let len = match h[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                input.read_exact(&mut l)?;
                u64::from(u16::from_be_bytes(l))
            }
            127 => {
                let mut l = [0u8; 8];
                input.read_exact(&mut l)?;
                u64::from_be_bytes(l)
            }
            n => u64::from(n),
        };
        if !masked {
            return close(tcp, 1002);
        }
        if len > MAX_FRAME {
            return close(tcp, 1009);
        }
        let mut mask = [0u8; 4];
        input.read_exact(&mut mask)?;
        let mut payload = vec![0u8; len as usize];
        input.read_exact(&mut payload)?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        match opcode {
            0x8 => {
                send(tcp, 0x88, &payload)?;
                return Ok(());
            }
            0x9 => send(tcp, 0x8a, &payload)?,
            0xa => {}
            _ => send(tcp, fin_op, &payload)?,
        }
    }
}

/// Sends a close frame with `code` and ends.
fn close(tcp: &mut TcpStream, code: u16) -> io::Result<()> {
    send(tcp, 0x88, &code.to_be_bytes())
}

/// Writes one unmasked frame whose first byte is `first`.
fn send(tcp: &mut TcpStream, first: u8, payload: &[u8]) -> io::Result<()> {
    let mut frame = vec![first];
    match payload.len() {
        n @ 0..=125 => frame.push(n as u8),
        n @ 126..=0xffff => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    tcp.write_all(&frame)
}

fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// As PID 1 of a container the process would ignore SIGTERM and make its
/// stop wait for the timeout: exit at once (the same two libc calls as
/// `fnhttp`; std has no signal API).
#[cfg(target_os = "linux")]
fn exit_on_termination_signals() {
    const SIGINT: i32 = 2;
    const SIGTERM: i32 = 15;
    unsafe extern "C" {
        fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
        fn _exit(status: i32) -> !;
    }
    extern "C" fn on_signal(_: i32) {
        // SAFETY: `_exit` is async-signal-safe and takes no pointers.
        unsafe { _exit(0) }
    }
    // SAFETY: installs a handler that only calls an async-signal-safe function.
    unsafe {
        signal(SIGTERM, on_signal);
        signal(SIGINT, on_signal);
    }
}

#[cfg(not(target_os = "linux"))]
fn exit_on_termination_signals() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_value_of_rfc_6455_section_1_3() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let accept = base64(&sha1::digest(format!("{key}{GUID}").as_bytes()));
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    /// One connection served on a local listener; the client's end.
    fn connect() -> TcpStream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let _ = serve(tcp);
        });
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        tcp
    }

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [9u8, 8, 7, 6];
        let mut frame = vec![first, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    #[test]
    fn switches_echoes_pongs_and_closes() {
        let mut tcp = connect();
        // A plain request first, then the upgrade on the same connection,
        // with a frame sent right behind it.
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut ok = [0u8; 41];
        tcp.read_exact(&mut ok).unwrap();
        assert!(
            ok.ends_with(b"\r\n\r\nok\n"),
            "{:?}",
            String::from_utf8_lossy(&ok)
        );
        let mut up = b"GET / HTTP/1.1\r\nhost: x\r\nUpgrade: WebSocket\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec();
        up.extend(masked(0x81, b"early"));
        tcp.write_all(&up).unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            tcp.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(head.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        let mut frame = [0u8; 7];
        tcp.read_exact(&mut frame).unwrap();
        assert_eq!(&frame, b"\x81\x05early");
        tcp.write_all(&masked(0x89, b"hi")).unwrap();
        let mut pong = [0u8; 4];
        tcp.read_exact(&mut pong).unwrap();
        assert_eq!(&pong, b"\x8a\x02hi");
        // An unmasked frame is a protocol error (close 1002).
        tcp.write_all(b"\x81\x01x").unwrap();
        let mut close = [0u8; 4];
        tcp.read_exact(&mut close).unwrap();
        assert_eq!(&close, b"\x88\x02\x03\xea");
        // Then the connection ends (reset: the frame's byte was not read).
        assert!(matches!(tcp.read(&mut close), Ok(0) | Err(_)));
    }

    #[test]
    fn an_upgrade_without_a_key_is_refused() {
        let mut tcp = connect();
        tcp.write_all(b"GET / HTTP/1.1\r\nupgrade: websocket\r\n\r\n")
            .unwrap();
        let mut all = Vec::new();
        tcp.read_to_end(&mut all).unwrap();
        let all = String::from_utf8(all).unwrap();
        assert!(all.starts_with("HTTP/1.1 400 "), "{all}");
        let (_, body) = all.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, "no sec-websocket-key\n");
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }
}
