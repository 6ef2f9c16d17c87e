//! The execution records' ingest cost (issue 11), measured end to end: the
//! proxy's real shipper (`containerpub_proxy::executions`: thread-local
//! batches, encoder, bounded queue, HTTP posts) sends N realistic records to
//! a real `cpub-control` process (started here) over a real PostgreSQL
//! cluster, and the CPU seconds (utime+stime from `/proc`) of `cpub-control`
//! and of every process of the cluster (postmaster, backends, WAL writer,
//! checkpointer; exited children through the postmaster's cutime) are
//! reported per 1,000 records, with the wall time.
//!
//! `#[ignore]`: run by `scripts/ingest-bench.sh` (which makes a fresh
//! database per run and alternates builds), or by hand:
//! `CPUB_BENCH_CONTROL_BIN=… CPUB_BENCH_DATABASE_URL=… CPUB_BENCH_PG_PID=…
//! cargo test -p containerpub-proxy --test ingest_bench -- --ignored --nocapture`.
//! See docs/BENCHMARKS.md ("Execution records' ingest CPU").

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use containerpub_pool::StartKind;
use containerpub_proxy::executions::{self, Method, Raw, RecordId, Settings, ShortId};
use containerpub_proxy::routes::Entry;

const TOKEN: &str = "ingest-bench-token-0123456789abcdef";
/// Records posted but not yet acknowledged, at most (keeps the shipper's
/// channel far from full: nothing is dropped, the run measures throughput).
const IN_FLIGHT: u64 = 40_000;

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} must be set (see scripts/ingest-bench.sh)"))
}

/// utime+stime (and, with `children`, cutime+cstime) of `pid`, in ticks.
fn ticks(pid: u32, children: bool) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split(' ').collect();
    // After the comm: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some(n(11) + n(12) + if children { n(13) + n(14) } else { 0 })
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split(' ').nth(1)?.parse().ok()
}

/// CPU ticks of a PostgreSQL cluster: the postmaster with its reaped
/// children, and every live child.
fn cluster_ticks(postmaster: u32) -> u64 {
    let mut total = ticks(postmaster, true).expect("the postmaster runs");
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if ppid(pid) == Some(postmaster) {
            total += ticks(pid, false).unwrap_or(0);
        }
    }
    total
}

fn self_ticks() -> u64 {
    ticks(std::process::id(), false).unwrap_or(0)
}

/// Seconds per tick (`getconf CLK_TCK`, 100 on Linux).
const TICK_S: f64 = 0.01;

struct Control(Child);

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn entry(function: &str, deployment_id: i64) -> Arc<Entry> {
    let manifest = containerpub_wire::Manifest::parse(&format!(
        "name = \"{function}\"\nruntime = \"container\"\n"
    ))
    .unwrap();
    Arc::new(Entry {
        route: containerpub_wire::api::Route {
            function: function.into(),
            deployment_id,
            version: 1,
            image: "img".into(),
            config: manifest,
            keys: Vec::new(),
            secrets: Vec::new(),
            signing_keys: Vec::new(),
        },
        metrics: containerpub_proxy::metrics::FunctionMetrics::new(function),
        pool_handle: Default::default(),
    })
}

/// A call's record as the data path fills it: most warm 200s with a trace,
/// some cold starts, 404s and queue rejections. As on the data path, a
/// call's trace id is its request id (the proxy made both), except for one
/// call in eight, whose caller sent a `traceparent` of its own.
fn raw(i: u64) -> Raw {
    let mut request_id = containerpub_wire::request_id::generate();
    let mut trace = [0u8; 32];
    if i % 8 == 5 {
        let hex = format!(
            "{:016x}{:016x}",
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            i | 1
        );
        trace.copy_from_slice(hex.as_bytes());
    } else {
        trace.copy_from_slice(&request_id.as_bytes()[..32]);
    }
    let cold = i.is_multiple_of(100);
    let rejected = i % 500 == 7;
    Raw {
        at: SystemTime::now(),
        instance: (!rejected)
            .then(|| ShortId::new(["0123456789ab", "fedcba987654"][(i % 2) as usize])),
        request_id: RecordId::new(&mut request_id),
        trace_id: (!i.is_multiple_of(4)).then_some(trace),
        method: Method::new(if i.is_multiple_of(3) { b"POST" } else { b"GET" }),
        status: if rejected {
            429
        } else if i % 50 == 1 {
            404
        } else {
            200
        },
        start: if rejected {
            None
        } else if cold {
            Some(StartKind::Cold)
        } else {
            Some(StartKind::Warm)
        },
        queue: Duration::from_micros(i % 40),
        start_time: Duration::from_micros(if cold { 230_000 } else { 0 }),
        upstream: Duration::from_micros(300 + i % 700),
        total: Duration::from_micros(420 + i % 900),
        bytes_in: 80 + i % 40,
        bytes_out: 120 + i % 4000,
        rejection: rejected.then_some(containerpub_proxy::metrics::Rejection::QueueFull),
    }
}

fn sent() -> u64 {
    prometheus::gather()
        .iter()
        .find(|m| m.name() == "cpub_execution_records_sent_total")
        .and_then(|m| {
            m.get_metric()
                .first()
                .map(|c| c.get_counter().get_value() as u64)
        })
        .unwrap_or(0)
}

#[test]
#[ignore = "a measurement: run by scripts/ingest-bench.sh"]
fn ingest_cpu_per_record() {
    let bin = env("CPUB_BENCH_CONTROL_BIN");
    let database_url = env("CPUB_BENCH_DATABASE_URL");
    let postmaster: u32 = env("CPUB_BENCH_PG_PID").parse().expect("CPUB_BENCH_PG_PID");
    let records: u64 = std::env::var("CPUB_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("cpub-ingest-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let control = Control(
        Command::new(&bin)
            .env("CPUB_CONTROL_LISTEN", format!("127.0.0.1:{port}"))
            .env("CPUB_DATABASE_URL", &database_url)
            .env("CPUB_DATA_DIR", dir.join("data"))
            .env("CPUB_BOOTSTRAP_TOKEN", TOKEN)
            .env("CPUB_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}")),
    );
    let url = format!("http://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{url}/healthz")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cpub-control did not become healthy"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // One empty batch first: the control plane's first request (its
        // pool's connections, lazy statics) is not the measurement's.
        let r = client
            .post(format!("{url}/api/v1/executions"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(r#"{"node":"bench-node","batch":"warm-up","records":[]}"#)
            .send()
            .await
            .expect("warm-up post");
        assert!(r.status().is_success(), "warm-up post: {}", r.status());
        executions::start(Settings {
            control_url: url.clone(),
            token: TOKEN.into(),
            node: "bench-node".into(),
            spool_dir: dir.join("spool"),
            memory_bytes: 256 << 20,
            spool_bytes: 0,
        });
    });
    let entries: Vec<Arc<Entry>> = (0..4)
        .map(|i| entry(&format!("bench-fn-{i}"), 100 + i))
        .collect();
    let pid = control.0.id();
    let (c0, p0, d0) = (
        ticks(pid, false).unwrap(),
        cluster_ticks(postmaster),
        self_ticks(),
    );
    let start = Instant::now();
    let mut pushed = 0u64;
    while pushed < records {
        if pushed.is_multiple_of(4096) {
            while pushed.saturating_sub(sent()) > IN_FLIGHT {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        executions::push(&entries[(pushed % 4) as usize], raw(pushed));
        pushed += 1;
    }
    executions::flush_local();
    let deadline = Instant::now() + Duration::from_secs(300);
    while sent() < records {
        assert!(
            Instant::now() < deadline,
            "records not all stored: {} of {records}",
            sent()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let wall = start.elapsed().as_secs_f64();
    // The WAL writer and checkpointer lag the COPY a little.
    std::thread::sleep(Duration::from_millis(500));
    let (c1, p1, d1) = (
        ticks(pid, false).unwrap(),
        cluster_ticks(postmaster),
        self_ticks(),
    );
    assert_eq!(sent(), records, "stored exactly once");
    assert_eq!(executions::dropped(), 0, "nothing dropped");
    let per_k = |t: u64| t as f64 * TICK_S * 1000.0 / records as f64 * 1000.0;
    println!(
        "INGEST records={records} wall_s={wall:.2} control_cpu_s={:.2} pg_cpu_s={:.2} driver_cpu_s={:.2} \
         control_ms_per_1k={:.3} pg_ms_per_1k={:.3} total_ms_per_1k={:.3} driver_ms_per_1k={:.3}",
        (c1 - c0) as f64 * TICK_S,
        (p1 - p0) as f64 * TICK_S,
        (d1 - d0) as f64 * TICK_S,
        per_k(c1 - c0),
        per_k(p1 - p0),
        per_k(c1 - c0 + p1 - p0),
        per_k(d1 - d0),
    );
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}
