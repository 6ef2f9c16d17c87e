//! What the kept-alive connection saves per Podman call: image-exists,
//! inspect and unpause latency with a new connection per call (a new client each time,
//! as the client did before) against the shared pooled client, alternated
//! round by round on one running container.
//!
//! `cargo run --release -p containerpub-podman --example call_latency -- [N] [ROUNDS]`
//! (N calls per mode and round, default 200; 3 rounds). Needs the Podman
//! API socket and busybox-static (scripts/setup-host.sh).

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use containerpub_podman::Podman;

fn socket() -> String {
    std::env::var("CPUB_PODMAN_SOCKET")
        .unwrap_or_else(|_| containerpub_podman::DEFAULT_SOCKET.into())
}

/// p50, p90, p99 and mean of `samples`, in µs.
fn summary(samples: &mut [Duration]) -> String {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_micros();
    let mean = samples.iter().sum::<Duration>().as_micros() / samples.len() as u128;
    format!(
        "p50 {:>6} µs  p90 {:>6} µs  p99 {:>6} µs  mean {:>6} µs",
        at(0.5),
        at(0.9),
        at(0.99),
        mean
    )
}

/// Times `n` inspects; `fresh` makes a new client (connection) for each.
async fn inspects(shared: &Podman, id: &str, n: usize, fresh: bool) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let podman = if fresh {
            Podman::new(socket())
        } else {
            shared.clone()
        };
        podman.inspect_container(id, "none").await.expect("inspect");
        out.push(t0.elapsed());
    }
    out
}

/// Times `n` image-exists checks (Podman's cheapest call: the transport
/// is most of it).
async fn exists(shared: &Podman, n: usize, fresh: bool) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let podman = if fresh {
            Podman::new(socket())
        } else {
            shared.clone()
        };
        assert!(podman.image_exists(support::IMAGE).await.expect("exists"));
        out.push(t0.elapsed());
    }
    out
}

/// Times `n` unpauses (each after an untimed pause on the shared client).
async fn unpauses(shared: &Podman, id: &str, n: usize, fresh: bool) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        shared.pause_container(id).await.expect("pause");
        let t0 = Instant::now();
        let podman = if fresh {
            Podman::new(socket())
        } else {
            shared.clone()
        };
        podman.unpause_container(id).await.expect("unpause");
        out.push(t0.elapsed());
    }
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(200, |a| a.parse().expect("N"));
    let rounds: usize = args.next().map_or(3, |a| a.parse().expect("ROUNDS"));
    let shared = support::podman();
    support::build_image(&shared).await;
    let label = format!("cpub.node=bench-latency-{}", std::process::id());
    let out = Command::new("podman")
        .args([
            "run",
            "-d",
            "--network",
            "none",
            "--tmpfs",
            "/tmp",
            "--label",
        ])
        .args([label.as_str(), support::IMAGE])
        .output()
        .expect("podman run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    for round in 1..=rounds {
        println!("round {round} (N = {n} each)");
        // Which mode goes first alternates from round to round.
        let mut modes = [
            ("connection per call", true),
            ("pooled connection  ", false),
        ];
        if round % 2 == 0 {
            modes.reverse();
        }
        for (what, fresh) in modes {
            let mut s = exists(&shared, n, fresh).await;
            println!("  exists   {what}  {}", summary(&mut s));
        }
        for (what, fresh) in modes {
            let mut s = inspects(&shared, &id, n, fresh).await;
            println!("  inspect  {what}  {}", summary(&mut s));
        }
        for (what, fresh) in modes {
            let mut s = unpauses(&shared, &id, n, fresh).await;
            println!("  unpause  {what}  {}", summary(&mut s));
        }
    }
    shared.remove_container(&id).await.expect("removal");
}
