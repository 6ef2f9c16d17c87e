//! The isolation probe of `e2e/tests/languages.rs` for the `debian` base: a
//! dynamically linked (glibc) std-only program, built by the test with
//! `rustc`. It serves HTTP on $PORT; every answer is its report, one
//! `key value` line each (the same lines as probe.py and probe.js):
//! `root <what writing /app/written gave>`, `uid_map <its first line>`,
//! the lines of /proc/self/status, and `reach <host:port> <result>` for
//! each target of the `targets` query parameter (comma-separated, tried
//! in parallel, 2 s each).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

fn reach(target: &str) -> String {
    let Ok(addr) = target.parse::<SocketAddr>() else {
        return "bad-target".into();
    };
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(_) => "connected".into(),
        Err(e) => format!("{:?}", e.kind()),
    }
}

fn write_root() -> String {
    match std::fs::File::create("/app/written") {
        Ok(_) => "written".into(),
        Err(e) if e.raw_os_error() == Some(30) => "EROFS".into(),
        Err(e) => format!("{:?}", e.kind()),
    }
}

fn report(targets: &str) -> String {
    let mut out = format!("root {}\n", write_root());
    let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let first = uid_map.lines().next().unwrap_or_default();
    out.push_str(&format!("uid_map {}\n", first.split_whitespace().collect::<Vec<_>>().join(" ")));
    out.push_str(&std::fs::read_to_string("/proc/self/status").unwrap_or_default());
    let tries: Vec<_> = targets
        .split(',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            let t = t.to_owned();
            std::thread::spawn(move || format!("reach {t} {}\n", reach(&t)))
        })
        .collect();
    for t in tries {
        out.push_str(&t.join().unwrap_or_default());
    }
    out
}

fn serve(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim_end().is_empty() {
            break;
        }
    }
    let targets = target
        .split_once('?')
        .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("targets=")))
        .unwrap_or("");
    let body = report(targets);
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = TcpListener::bind(format!("0.0.0.0:{port}")).expect("bind");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || serve(stream));
    }
}
