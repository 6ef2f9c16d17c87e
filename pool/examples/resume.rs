//! Resume from paused, side by side: the cgroup freezer (what the pool
//! does) against Podman's `pause`/`unpause` (what it did before), on the
//! same running container, alternating which goes first every round.
//! Each figure is `resume` returning, and `resume` + the first HTTP answer
//! on a new connection (what a call to a paused instance waits for).
//!
//! ```sh
//! cargo run --release -p containerpub-pool --example resume -- 30
//! ```

use std::time::{Duration, Instant};

use containerpub_pool::{ContainerRuntime, NETWORK, PodmanRuntime};
use containerpub_pool::{DEFAULT_SOCKET, Podman};
use containerpub_wire::Manifest;
use containerpub_wire::api::Route;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IMAGE: &str = "localhost/cpub-test-busybox:1";

async fn answer(addr: std::net::SocketAddr) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert!(
        out.starts_with(b"HTTP/1."),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("rounds: a number"))
        .unwrap_or(30);
    let podman = Podman::new(DEFAULT_SOCKET);
    containerpub_podman::testing::ensure_busybox_image(&podman, IMAGE).await;
    let freezer = PodmanRuntime::new(podman.clone(), NETWORK)
        .await
        .unwrap()
        .without_precreation();
    let via_podman = PodmanRuntime::new(podman.clone(), NETWORK)
        .await
        .unwrap()
        .without_precreation()
        .with_podman_pause();
    let text = "name = \"resume-bench\"\nruntime = \"container\"\n";
    let route = Route {
        function: "resume-bench".into(),
        deployment_id: 1,
        version: 1,
        image: IMAGE.into(),
        config: Manifest::parse(text).unwrap(),
        keys: Vec::new(),
        secrets: Vec::new(),
        signing_keys: Vec::new(),
    };
    let node = format!("resume-bench-{}", std::process::id());
    let started = freezer.start(&route, &node).await.unwrap();
    containerpub_pool::health::wait_ready(started.addr, None, Duration::from_secs(10))
        .await
        .unwrap();
    let mut figures: [(Vec<f64>, Vec<f64>); 2] = Default::default();
    for round in 0..rounds {
        for k in 0..2 {
            let which = (round + k) % 2;
            let rt = if which == 0 { &freezer } else { &via_podman };
            rt.pause(&started.id).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            let t0 = Instant::now();
            rt.resume(&started.id).await.unwrap();
            let resumed = t0.elapsed();
            answer(started.addr).await;
            let answered = t0.elapsed();
            figures[which].0.push(resumed.as_secs_f64() * 1e3);
            figures[which].1.push(answered.as_secs_f64() * 1e3);
        }
    }
    freezer.remove(&started.id).await.unwrap();
    println!("resume from paused, {rounds} rounds, ms (p50 / p90 / max)");
    for (name, (resumed, answered)) in ["cgroup freezer", "podman unpause"]
        .iter()
        .zip(figures.iter_mut())
    {
        println!(
            "{name:>15}: resume {:.3} / {:.3} / {:.3}   resume+answer {:.3} / {:.3} / {:.3}",
            percentile(resumed, 0.5),
            percentile(resumed, 0.9),
            percentile(resumed, 1.0),
            percentile(answered, 0.5),
            percentile(answered, 0.9),
            percentile(answered, 1.0),
        );
    }
}
