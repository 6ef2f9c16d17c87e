//! Measures two ways of capturing a container's output, side by side, on
//! real Podman: the pool's tailer of the container's `k8s-file` log (the
//! real `LogHub` code, on its `cpub-logs` thread) against Podman's log
//! stream (`GET /containers/{id}/logs?follow=true`, read by `curl` from a
//! Podman service of its own, so its CPU is this stream's alone).
//!
//! Each round starts a container of `examples/chatty` that prints `LPS`
//! stamped lines a second for `SECS` seconds (`CHATTY_SPAM`), follows it
//! one way, and reports: lines received, the delay from the line's write
//! (its stamp) to its arrival (p50, p99, max; lines written in the first
//! 200 ms after the capture began are not counted, they waited for it), and the CPU seconds spent by
//! the capture (the tailer thread; or the Podman service plus curl) and by
//! conmon (the same in both: it writes the file either way).
//!
//! `cargo run --release -p containerpub-pool --example log_capture -- LPS SECS ROUNDS`
//! (after `examples/build.sh`; as root, with Podman set up).

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerpub_pool::logs::{LogConfig, LogHub};

const IMAGE: &str = "localhost/cpub-logbench-chatty:1";

fn run(args: &[&str]) -> String {
    let out = Command::new("podman").args(args).output().expect("podman");
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// utime + stime of a process (or a task of one), in seconds.
fn cpu_s(stat_path: &str) -> f64 {
    let text = std::fs::read_to_string(stat_path).unwrap_or_default();
    let after = text.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

/// The task of this process named `name`.
fn task_named(name: &str) -> Option<String> {
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let path = entry.ok()?.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() == name {
            return Some(path.join("stat").display().to_string());
        }
    }
    None
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// The stamp at the end of a chatty line (` t=<ns>`).
fn stamp(line: &str) -> Option<i64> {
    line.rsplit_once(" t=")?.1.trim().parse().ok()
}

struct Round {
    lines: usize,
    delays_ms: Vec<f64>,
    capture_cpu_s: f64,
    conmon_cpu_s: f64,
}

fn report(method: &str, r: &mut Round, expected: usize) {
    r.delays_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        r.delays_ms
            .get(((r.delays_ms.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "{method:<5} lines {}/{expected}  delay p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  capture CPU {:.2} s  conmon CPU {:.2} s",
        r.lines,
        pct(0.5),
        pct(0.99),
        pct(1.0),
        r.capture_cpu_s,
        r.conmon_cpu_s
    );
}

fn start_container(lps: u64, secs: u64) -> (String, String) {
    let id = run(&[
        "run",
        "-d",
        "--network",
        "none",
        "-e",
        &format!("CHATTY_SPAM={lps},{secs}"),
        IMAGE,
    ]);
    let conmon = run(&["inspect", "--format", "{{.State.ConmonPid}}", &id]);
    (id, format!("/proc/{conmon}/stat"))
}

async fn round_file(hub: &Arc<LogHub>, lps: u64, secs: u64) -> Round {
    let expected = (lps * secs) as usize;
    let (id, conmon) = start_container(lps, secs);
    let path = PathBuf::from(run(&[
        "inspect",
        "--format",
        "{{.HostConfig.LogConfig.Path}}",
        &id,
    ]));
    let task = task_named("cpub-logs").expect("the cpub-logs thread");
    let (cpu0, conmon0) = (cpu_s(&task), cpu_s(&conmon));
    hub.follow_file(path, &id, "bench");
    // Lines written before the capture began wait for it: not counted in
    // the delay (the steady state is what is compared).
    let steady = now_ns() + 200_000_000;
    let mut round = Round {
        lines: 0,
        delays_ms: Vec::new(),
        capture_cpu_s: 0.0,
        conmon_cpu_s: 0.0,
    };
    let until = Instant::now() + Duration::from_secs(secs + 10);
    while round.lines < expected && Instant::now() < until {
        let _ = tokio::time::timeout(Duration::from_millis(100), hub.wait()).await;
        let now = now_ns();
        for c in hub.take(100_000, 1 << 30) {
            if let Some(t) = stamp(&c.entry.line) {
                round.lines += 1;
                if t > steady {
                    round.delays_ms.push((now - t) as f64 / 1e6);
                }
            }
        }
    }
    round.capture_cpu_s = cpu_s(&task) - cpu0;
    round.conmon_cpu_s = cpu_s(&conmon) - conmon0;
    run(&["rm", "-f", "-t", "0", &id]);
    round
}

fn round_api(socket: &str, service_stat: &str, lps: u64, secs: u64) -> Round {
    let expected = (lps * secs) as usize;
    let (id, conmon) = start_container(lps, secs);
    let (svc0, conmon0) = (cpu_s(service_stat), cpu_s(&conmon));
    let mut curl = Command::new("curl")
        .args([
            "-sN",
            "--unix-socket",
            socket,
            &format!(
                "http://d/v4.0.0/libpod/containers/{id}/logs?follow=true&stdout=true&stderr=true"
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let curl_stat = format!("/proc/{}/stat", curl.id());
    let steady = now_ns() + 200_000_000;
    let mut stdout = curl.stdout.take().expect("curl stdout");
    let received = Arc::new(Mutex::new((0usize, Vec::new())));
    let into = Arc::clone(&received);
    // Demultiplexes the frames (8-byte heads: stream, 0, 0, 0, length BE).
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 256 * 1024];
        let mut line = Vec::new();
        loop {
            let n = match stdout.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let now = now_ns();
            let mut at = 0;
            while buf.len() >= at + 8 {
                let len = u32::from_be_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]])
                    as usize;
                if buf.len() < at + 8 + len {
                    break;
                }
                for &b in &buf[at + 8..at + 8 + len] {
                    if b == b'\n' {
                        if let Some(t) = stamp(&String::from_utf8_lossy(&line)) {
                            let mut r = into.lock().unwrap();
                            r.0 += 1;
                            if t > steady {
                                r.1.push((now - t) as f64 / 1e6);
                            }
                        }
                        line.clear();
                    } else {
                        line.push(b);
                    }
                }
                at += 8 + len;
            }
            buf.drain(..at);
        }
    });
    let until = Instant::now() + Duration::from_secs(secs + 10);
    let mut curl_cpu = 0.0;
    while received.lock().unwrap().0 < expected && Instant::now() < until {
        curl_cpu = cpu_s(&curl_stat);
        std::thread::sleep(Duration::from_millis(50));
    }
    let round = {
        let r = received.lock().unwrap();
        Round {
            lines: r.0,
            delays_ms: r.1.clone(),
            capture_cpu_s: cpu_s(service_stat) - svc0 + cpu_s(&curl_stat).max(curl_cpu),
            conmon_cpu_s: cpu_s(&conmon) - conmon0,
        }
    };
    let _ = curl.kill();
    let _ = curl.wait();
    let _ = reader.join();
    run(&["rm", "-f", "-t", "0", &id]);
    round
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("LPS SECS ROUNDS"))
        .collect();
    let (lps, secs, rounds) = match args[..] {
        [lps, secs, rounds] => (lps, secs, rounds),
        _ => (10_000, 10, 3),
    };
    // The image: chatty FROM scratch.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(
        root.join("examples/chatty/bin/chatty"),
        dir.path().join("chatty"),
    )
    .expect("examples/chatty/bin/chatty (run examples/build.sh)");
    std::fs::write(
        dir.path().join("Containerfile"),
        "FROM scratch\nCOPY chatty /chatty\nCMD [\"/chatty\"]\n",
    )
    .expect("Containerfile");
    run(&[
        "build",
        "-q",
        "-t",
        IMAGE,
        &dir.path().display().to_string(),
    ]);

    // A Podman service of its own for the stream, so its CPU is measured alone.
    let socket = format!("/tmp/cpub-logbench-{}.sock", std::process::id());
    let mut service = Command::new("podman")
        .args(["system", "service", "--time=0", &format!("unix://{socket}")])
        .spawn()
        .expect("podman system service");
    let service_stat = format!("/proc/{}/stat", service.id());
    let until = Instant::now() + Duration::from_secs(10);
    while !std::path::Path::new(&socket).exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }

    let hub = LogHub::new(LogConfig {
        rate_lines_per_s: 10_000_000,
        burst_lines: 10_000_000,
        buffer_bytes: 1 << 30,
        offsets_dir: None,
    })
    .expect("log hub");
    let expected = (lps * secs) as usize;
    println!("{lps} lines/s for {secs} s, {rounds} rounds, alternating");
    for _ in 0..rounds {
        report("file", &mut round_file(&hub, lps, secs).await, expected);
        report(
            "api",
            &mut round_api(&socket, &service_stat, lps, secs),
            expected,
        );
    }
    hub.close();
    let _ = service.kill();
    let _ = service.wait();
    let _ = std::fs::remove_file(&socket);
    run(&["rmi", "-f", IMAGE]);
}
