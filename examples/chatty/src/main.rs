//! `chatty`: a function that prints, for `cpub logs`.
//!
//! - `GET /print?n=N&tag=T&stream=stderr`: prints `T 1` … `T N` (stdout
//!   unless `stream=stderr`) while it serves the call, then answers
//!   `printed N`.
//! - `GET /spam?lps=L&secs=S&tag=T&stamp=1`: prints L lines a second (in
//!   10 ms ticks, one write per tick) for S seconds in the background;
//!   answers at once. With `stamp=1` each line ends in ` t=<ns>`, the
//!   wall-clock time of its write in nanoseconds since the epoch (for
//!   latency measurements). `CHATTY_SPAM=L,S` in the environment does the
//!   same with stamps from the start.
//! - `GET /hostile`: prints a 100 KB line, a line of binary bytes and
//!   terminal escapes, and a last line without its newline.
//! - `GET /ids`: prints and answers the `x-request-id` and `traceparent` it
//!   received.
//! - `GET /burn?mb=M&ms=T`: allocates M MiB (every page written) and keeps
//!   it until the instance stops, burns CPU for T ms, then answers
//!   `held H MiB, burned T ms` (H: all it holds). For `cpub stats`; an M
//!   beyond the function's memory limit gets the instance killed for
//!   memory (OOM).
//! - anything else: `ok`.

use std::io::Write as _;
use std::time::{Duration, Instant};

use fnhttp::{Request, Response};

fn main() {
    println!("chatty starting");
    if let Ok(spec) = std::env::var("CHATTY_SPAM")
        && let Some((lps, secs)) = spec.split_once(',')
        && let (Ok(lps), Ok(secs)) = (lps.trim().parse::<u64>(), secs.trim().parse::<u64>())
    {
        std::thread::spawn(move || spam(lps.min(1_000_000), secs.min(600), "spam", true));
    }
    if let Err(err) = fnhttp::serve(handle) {
        eprintln!("chatty: {err}");
        std::process::exit(1);
    }
}

fn param<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.query
        .as_deref()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn number(req: &Request, name: &str, default: u64) -> u64 {
    param(req, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn handle(req: &Request) -> Response {
    match req.path.as_str() {
        "/print" => {
            let n = number(req, "n", 1).min(1_000_000);
            let tag = param(req, "tag").unwrap_or("line");
            let mut text = String::new();
            for i in 1..=n {
                text.push_str(&format!("{tag} {i}\n"));
            }
            let written = if param(req, "stream") == Some("stderr") {
                std::io::stderr().lock().write_all(text.as_bytes())
            } else {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes()).and_then(|()| out.flush())
            };
            match written {
                Ok(()) => Response::text(200, format!("printed {n}\n")),
                Err(e) => Response::text(500, format!("cannot print: {e}\n")),
            }
        }
        "/spam" => {
            let lps = number(req, "lps", 1000).min(1_000_000);
            let secs = number(req, "secs", 1).min(600);
            let tag = param(req, "tag").unwrap_or("spam").to_owned();
            let stamp = param(req, "stamp") == Some("1");
            std::thread::spawn(move || spam(lps, secs, &tag, stamp));
            Response::text(200, format!("printing {lps} lines/s for {secs} s\n"))
        }
        "/hostile" => {
            let mut out = std::io::stdout().lock();
            let mut bytes = vec![b'h'; 100_000];
            bytes.extend_from_slice(
                b"\nbinary:\x00\x01\xff\xfe\x1b[2J\x1b]0;title\x07end\nno newline at the end",
            );
            let written = out.write_all(&bytes).and_then(|()| out.flush());
            match written {
                Ok(()) => Response::text(200, "printed\n"),
                Err(e) => Response::text(500, format!("cannot print: {e}\n")),
            }
        }
        "/ids" => {
            let id = req.header("x-request-id").unwrap_or("-");
            let trace = req.header("traceparent").unwrap_or("-");
            println!("ids request={id} traceparent={trace}");
            Response::text(200, format!("{id} {trace}\n"))
        }
        "/burn" => {
            let mb = number(req, "mb", 0).min(16_384) as usize;
            let ms = number(req, "ms", 0).min(60_000);
            let held = hold(mb);
            let spent = burn(Duration::from_millis(ms));
            Response::text(200, format!("held {held} MiB, burned {spent} ms\n"))
        }
        _ => Response::text(200, "ok\n"),
    }
}

/// Memory `/burn` keeps, in 1 MiB blocks.
static HELD: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// Allocates `mb` more MiB, writing every page; returns all MiB held.
fn hold(mb: usize) -> usize {
    let mut held = HELD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for i in 0..mb {
        // Pages written with a value, so the kernel must back them.
        held.push(vec![(i % 251) as u8 + 1; 1 << 20]);
    }
    held.len()
}

/// Spins for `d` (CPU time); returns the milliseconds spent.
fn burn(d: Duration) -> u128 {
    let start = Instant::now();
    let mut x = 1u64;
    while start.elapsed() < d {
        for _ in 0..10_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        }
        std::hint::black_box(x);
    }
    start.elapsed().as_millis()
}

/// `lps` lines a second for `secs` seconds, numbered from 1, one write per
/// 10 ms tick.
fn spam(lps: u64, secs: u64, tag: &str, stamp: bool) {
    let start = Instant::now();
    let total = lps * secs;
    let mut sent = 0u64;
    let mut out = std::io::stdout();
    while sent < total {
        let due = ((start.elapsed().as_secs_f64() * lps as f64) as u64 + 1).min(total);
        if due > sent {
            let mut text = String::new();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            for i in sent + 1..=due {
                if stamp {
                    text.push_str(&format!("{tag} {i} of {total} t={now}\n"));
                } else {
                    text.push_str(&format!("{tag} {i} of {total}\n"));
                }
            }
            if out.write_all(text.as_bytes()).is_err() {
                return;
            }
            sent = due;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
