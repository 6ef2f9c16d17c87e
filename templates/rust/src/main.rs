//! A ContainerPub function in Rust (standard library only): serves HTTP/1.1
//! on $PORT, keeps connections alive, and answers every call with `handle`.
//! Swap in any HTTP framework you like; the platform only runs the binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

/// Your function: method, path (with query) and body in, status, content
/// type and body out.
fn handle(method: &str, target: &str, _body: &[u8]) -> (u16, &'static str, String) {
    let name = target
        .split_once('?')
        .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("name=")))
        .unwrap_or("world");
    let _ = method;
    (200, "text/plain; charset=utf-8", format!("hello {name} from {{name}} (rust)\n"))
}

fn serve(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(()); // the caller closed the connection
        }
        let mut parts = request_line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("/").to_owned());
        let (mut length, mut close) = (0usize, false);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        let mut body = vec![0; length.min(64 << 20)];
        reader.read_exact(&mut body)?;
        let (status, content_type, text) = handle(&method, &target, &body);
        let head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            if status < 400 { "OK" } else { "Error" },
            text.len()
        );
        out.write_all(head.as_bytes())?;
        if method != "HEAD" {
            out.write_all(text.as_bytes())?;
        }
        if close {
            return Ok(());
        }
    }
}

fn main() -> std::io::Result<()> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = TcpListener::bind(format!("0.0.0.0:{port}"))?;
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || serve(stream));
    }
    Ok(())
}
