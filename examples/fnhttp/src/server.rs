//! Connections: listen on `$PORT`, one thread per connection, keep-alive,
//! answer parse errors, turn handler panics into 500, write responses with
//! `Content-Length`.

use std::io::{self, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::parse::{self, Limits, ParseError};
use crate::{Request, Response, reason};

/// Port used when `$PORT` is unset.
pub const DEFAULT_PORT: u16 = 8080;
/// An idle keep-alive connection (or a stalled request) is closed after this.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections served at once by default; more get a 503 and are closed.
/// Keeps the thread count under a function's default `pids` limit (64).
/// `FNHTTP_MAX_CONNECTIONS` raises it for functions given more pids.
const DEFAULT_MAX_CONNECTIONS: usize = 48;

fn max_connections() -> usize {
    std::env::var("FNHTTP_MAX_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_MAX_CONNECTIONS)
}
/// Longest wait for the client to close after the server is done.
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves `handler` on `0.0.0.0:$PORT` (default 8080) until the process is
/// stopped. SIGTERM and SIGINT end the process at once with status 0: as PID
/// 1 of a container it would otherwise ignore them.
pub fn serve<F>(handler: F) -> io::Result<()>
where
    F: Fn(&Request) -> Response + Send + Sync + 'static,
{
    let port = match std::env::var("PORT") {
        Ok(value) if !value.trim().is_empty() => value.trim().parse::<u16>().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("PORT={value:?} is not a port number"),
            )
        })?,
        _ => DEFAULT_PORT,
    };
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    exit_on_termination_signals();
    eprintln!("listening on 0.0.0.0:{port}");
    serve_listener(listener, handler)
}

/// Serves `handler` on an already bound listener (tests use port 0).
pub fn serve_listener<F>(listener: TcpListener, handler: F) -> io::Result<()>
where
    F: Fn(&Request) -> Response + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    let active = Arc::new(AtomicUsize::new(0));
    let max_connections = max_connections();
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(err) => {
                // Out of file descriptors and the like: back off, keep serving.
                eprintln!("accept failed: {err}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= max_connections {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = write_response(
                &mut stream,
                error_response(503, "too many connections"),
                false,
                false,
            );
            continue;
        }
        let handler = Arc::clone(&handler);
        let guard = ActiveGuard(Arc::clone(&active));
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                let _guard = guard;
                handle_connection(stream, &*handler);
            });
        if let Err(err) = spawned {
            eprintln!("cannot start a connection thread: {err}");
        }
    }
    Ok(())
}

/// Decrements the connection count when a connection thread ends.
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves requests on one connection until it closes, fails, or a request
/// asks to close it.
pub fn handle_connection(stream: TcpStream, handler: &dyn Fn(&Request) -> Response) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    serve_stream(BufReader::new(read_half), &stream, handler);
    linger(&stream);
}

/// Closes gently: stop writing, then read and drop what the client still
/// sends (briefly), so that unread input does not make the kernel answer with
/// a reset that could destroy the response the client has not read yet.
fn linger(mut stream: &TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(LINGER_TIMEOUT));
    let deadline = std::time::Instant::now() + LINGER_TIMEOUT;
    let mut buf = [0u8; 4096];
    let mut drained = 0usize;
    while drained < 64 * 1024 && std::time::Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// The connection loop over any reader/writer pair.
fn serve_stream<R: Read, W: Write>(
    mut reader: BufReader<R>,
    mut writer: W,
    handler: &dyn Fn(&Request) -> Response,
) {
    let limits = Limits::default();
    loop {
        let head = match parse::read_head(&mut reader, &limits) {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(err) => return answer_error(&mut writer, &err),
        };
        let has_body = head.framing != parse::Framing::Length(0);
        if head.expects_continue
            && has_body
            && writer
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .and_then(|()| writer.flush())
                .is_err()
        {
            return;
        }
        let request = match parse::read_body(&mut reader, head, &limits) {
            Ok(request) => request,
            Err(err) => return answer_error(&mut writer, &err),
        };
        let keep_alive = request.keep_alive();
        let response = catch_unwind(AssertUnwindSafe(|| handler(&request)))
            .unwrap_or_else(|_| error_response(500, "the handler panicked"));
        let head_only = request.method == "HEAD";
        if write_response(&mut writer, response, keep_alive, head_only).is_err() || !keep_alive {
            return;
        }
    }
}

fn answer_error<W: Write>(writer: &mut W, err: &ParseError) {
    if let Some(status) = err.status() {
        let _ = write_response(writer, error_response(status, err.message()), false, false);
    }
}

fn error_response(status: u16, message: &str) -> Response {
    Response::text(status, format!("{message}\n"))
}

/// Writes one response. Framing headers set by the handler are replaced;
/// header lines containing CR or LF are dropped (no response splitting).
fn write_response<W: Write>(
    writer: &mut W,
    response: Response,
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    let status = if (100..=999).contains(&response.status) {
        response.status
    } else {
        500
    };
    let no_body = status < 200 || status == 204 || status == 304;
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
    for (name, value) in &response.headers {
        let framing = ["content-length", "transfer-encoding", "connection"]
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f));
        let unsafe_text = |s: &str| s.bytes().any(|b| b == b'\r' || b == b'\n');
        if framing || name.is_empty() || unsafe_text(name) || unsafe_text(value) {
            continue;
        }
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if !no_body {
        out.extend_from_slice(format!("content-length: {}\r\n", response.body.len()).as_bytes());
    }
    out.extend_from_slice(if keep_alive {
        b"connection: keep-alive\r\n"
    } else {
        b"connection: close\r\n"
    });
    out.extend_from_slice(b"\r\n");
    if !no_body && !head_only {
        out.extend_from_slice(&response.body);
    }
    writer.write_all(&out)?;
    writer.flush()
}

/// Makes SIGTERM and SIGINT end the process immediately (`_exit(0)`). Without
/// a handler, PID 1 in a container ignores both, and `podman stop` would have
/// to wait for its timeout and SIGKILL. std has no signal API, hence the two
/// libc declarations.
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
    use std::io::{BufRead, Read};
    use std::net::TcpListener;

    use super::*;

    fn start(handler: fn(&Request) -> Response) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve_listener(listener, handler));
        addr
    }

    fn echo_path(req: &Request) -> Response {
        if req.path == "/panic" {
            panic!("test panic");
        }
        Response::text(
            200,
            format!(
                "{} {} {}",
                req.method,
                req.path,
                String::from_utf8_lossy(&req.body)
            ),
        )
    }

    /// Reads one response: (status line, headers, body).
    fn read_response<R: BufRead>(r: &mut R) -> (String, Vec<String>, Vec<u8>) {
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        let mut headers = Vec::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let line = line.trim_end().to_owned();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.strip_prefix("content-length: ") {
                length = v.parse().unwrap();
            }
            headers.push(line);
        }
        let mut body = vec![0; length];
        r.read_exact(&mut body).unwrap();
        (status.trim_end().to_owned(), headers, body)
    }

    #[test]
    fn keep_alive_chunked_then_close() {
        let addr = start(echo_path);
        let mut stream = TcpStream::connect(addr).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        stream
            .write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let (status, headers, body) = read_response(&mut reader);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            headers.contains(&"connection: keep-alive".to_owned()),
            "{headers:?}"
        );
        assert_eq!(body, b"GET /one ");
        stream
            .write_all(b"POST /two HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
            .unwrap();
        let (status, headers, body) = read_response(&mut reader);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            headers.contains(&"connection: close".to_owned()),
            "{headers:?}"
        );
        assert_eq!(body, b"POST /two abc");
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "connection should be closed");
    }

    #[test]
    fn malformed_gets_400_and_close() {
        let addr = start(echo_path);
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nBroken header\r\n\r\n")
            .unwrap();
        let mut all = String::new();
        stream.read_to_string(&mut all).unwrap();
        assert!(all.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{all}");
        assert!(all.contains("connection: close"), "{all}");
    }

    #[test]
    fn handler_panic_is_500_and_server_lives_on() {
        let addr = start(echo_path);
        let mut stream = TcpStream::connect(addr).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        stream.write_all(b"GET /panic HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(
            read_response(&mut reader).0,
            "HTTP/1.1 500 Internal Server Error"
        );
        stream.write_all(b"HEAD /after HTTP/1.1\r\n\r\n").unwrap();
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK\r\n");
    }

    #[test]
    fn expect_continue_gets_100_first() {
        let addr = start(echo_path);
        let mut stream = TcpStream::connect(addr).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        stream
            .write_all(b"PUT /x HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
            .unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
        reader.read_line(&mut line).unwrap();
        stream.write_all(b"ok").unwrap();
        assert_eq!(read_response(&mut reader).2, b"PUT /x ok");
    }

    #[test]
    fn written_responses_are_framed_and_safe() {
        let mut out = Vec::new();
        let response = Response::text(200, "body")
            .with_header("Content-Length", "999")
            .with_header("X-Evil", "a\r\nInjected: yes")
            .with_header("X-Fine", "ok");
        write_response(&mut out, response, true, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\nX-Fine: ok\r\n\
             content-length: 4\r\nconnection: keep-alive\r\n\r\nbody"
        );
        let mut out = Vec::new();
        write_response(&mut out, Response::new(204), false, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"
        );
    }
}
