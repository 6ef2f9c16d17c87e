//! The engine against a real HTTP server started in the test on 127.0.0.1:0:
//! counts, open-loop pacing and latency from the intended time, errors by
//! kind, keep-alive and reconnects, Zipf spread, the JSON keys, and the
//! binary's exit codes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use containerpub_loadtest::{AllowList, Mode, Plan, Report, Target, TargetSet, run};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Default)]
struct State {
    requests: AtomicU64,
    connections: AtomicU64,
    stalled: AtomicBool,
    paths: Mutex<HashMap<String, u64>>,
}

struct Server {
    addr: SocketAddr,
    state: Arc<State>,
}

impl Server {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }
}

/// `/ok` 200, `/fail` 500, `/missing` 404, `/echo` the body back, `/close`
/// 200 with `connection: close`, `/stall` 500 ms on its first call only,
/// `/hang` 5 s, `/fn/<name>/` 200 (counted per path).
async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let respond = |status: StatusCode, body: Bytes| {
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = status;
        r
    };
    let response = match path.as_str() {
        "/ok" => respond(StatusCode::OK, Bytes::from_static(b"hello")),
        "/fail" => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from_static(b"boom"),
        ),
        "/missing" => respond(StatusCode::NOT_FOUND, Bytes::new()),
        "/echo" => respond(StatusCode::OK, body),
        "/close" => {
            let mut r = respond(StatusCode::OK, Bytes::from_static(b"bye"));
            r.headers_mut()
                .insert("connection", "close".parse().unwrap());
            r
        }
        "/stall" => {
            if !state.stalled.swap(true, Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            respond(StatusCode::OK, Bytes::new())
        }
        "/hang" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            respond(StatusCode::OK, Bytes::new())
        }
        p if p.starts_with("/fn/") => {
            *state.paths.lock().unwrap().entry(p.to_owned()).or_default() += 1;
            respond(StatusCode::OK, Bytes::new())
        }
        _ => respond(StatusCode::NOT_FOUND, Bytes::new()),
    };
    Ok(response)
}

fn plan(url: &str) -> Plan {
    let target = Target::parse("url", url, &AllowList::default()).unwrap();
    let mut plan = Plan::new(TargetSet::single(target));
    plan.timeout = Duration::from_secs(5);
    plan
}

#[tokio::test]
async fn closed_loop_counts_requests_on_kept_alive_connections() {
    let server = Server::start().await;
    let mut p = plan(&server.url("/ok"));
    p.connections = 4;
    p.requests = Some(200);
    let report = run(p).await;
    assert_eq!(report.requests, 200, "{report:#?}");
    assert_eq!(report.ok, 200);
    assert_eq!(report.errors.total, 0, "{report:#?}");
    assert_eq!(report.status.get("200"), Some(&200));
    assert_eq!(server.requests(), 200);
    assert_eq!(report.bytes_received, 200 * 5);
    assert!(
        report.connects <= 4,
        "keep-alive: {} connects",
        report.connects
    );
    assert!(server.state.connections.load(Ordering::Relaxed) <= 4);
    assert_eq!(report.mode, "closed");
    assert!(report.open_loop.is_none());
    assert!(report.latency_ms.max >= report.latency_ms.p50 && report.latency_ms.p50 > 0.0);
}

#[tokio::test]
async fn closed_loop_duration_bounds_the_run() {
    let server = Server::start().await;
    let mut p = plan(&server.url("/ok"));
    p.connections = 2;
    p.duration = Some(Duration::from_millis(300));
    let report = run(p).await;
    assert!(report.requests > 0);
    assert_eq!(report.errors.total, 0);
    assert!(
        report.elapsed_s >= 0.29 && report.elapsed_s < 3.0,
        "{}",
        report.elapsed_s
    );
    assert!(report.throughput_rps > 0.0);
}

#[tokio::test]
async fn open_loop_achieves_about_the_rate() {
    let server = Server::start().await;
    let mut p = plan(&server.url("/ok"));
    p.mode = Mode::Open { rate: 200.0 };
    p.connections = 8;
    p.duration = Some(Duration::from_secs(1));
    let report = run(p).await;
    let open = report.open_loop.expect("open-loop section");
    assert_eq!(open.scheduled, 200);
    assert_eq!(open.sent + open.dropped, open.scheduled);
    assert!(open.sent >= 100, "{open:?}");
    assert!(report.throughput_rps >= 100.0, "{report:#?}");
    // Never faster than asked: 200 requests in about a second.
    assert!(report.requests <= 200, "{report:#?}");
    assert!(report.throughput_rps <= 300.0, "{report:#?}");
    assert_eq!(report.errors.total, 0);
    // Every worker paced on a timerfd of its own.
    assert_eq!(open.coarse_timers, 0, "{open:?}");
}

#[tokio::test]
async fn open_loop_latency_runs_from_the_intended_send_time() {
    // One connection, 100 req/s, the first response takes 500 ms: the ~50
    // requests due during the stall wait for the connection, and that wait
    // is latency. With coordinated omission they would all look fast.
    let server = Server::start().await;
    let mut p = plan(&server.url("/stall"));
    p.mode = Mode::Open { rate: 100.0 };
    p.connections = 1;
    p.duration = Some(Duration::from_millis(1500));
    let report = run(p).await;
    let open = report.open_loop.unwrap();
    assert_eq!(report.errors.total, 0, "{report:#?}");
    assert!(report.latency_ms.max >= 500.0, "{report:#?}");
    // About a third of the requests were due during the stall and waited
    // 0–500 ms; p90 therefore sits well above a fast response.
    assert!(report.latency_ms.p90 >= 100.0, "{report:#?}");
    assert!(open.late >= 10, "{open:?}");
    // The wait for the connection is send lag too, and part of latency.
    assert!(open.send_lag_ms.max >= 400.0, "{open:?}");
    assert!(report.latency_ms.max >= open.send_lag_ms.max, "{report:#?}");
}

#[tokio::test]
async fn errors_by_kind_status_5xx_and_4xx() {
    let server = Server::start().await;
    let mut p = plan(&server.url("/fail"));
    p.connections = 2;
    p.requests = Some(20);
    let report = run(p).await;
    assert_eq!(report.requests, 20);
    assert_eq!(report.ok, 0);
    assert_eq!(report.errors.status_5xx, 20);
    assert_eq!(report.errors.total, 20);
    assert_eq!(
        report.errors.connect + report.errors.io + report.errors.timeout,
        0
    );
    assert_eq!(report.status.get("500"), Some(&20));

    let mut p = plan(&server.url("/missing"));
    p.requests = Some(3);
    let report = run(p).await;
    assert_eq!(report.errors.status_4xx, 3);
    assert_eq!(report.errors.total, 3);
}

#[tokio::test]
async fn errors_by_kind_connection_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut p = plan(&format!("http://{addr}/"));
    p.connections = 2;
    p.requests = Some(6);
    let report = run(p).await;
    assert_eq!(report.requests, 6);
    assert_eq!(report.errors.connect, 6, "{report:#?}");
    assert_eq!(report.errors.total, 6);
    assert_eq!(report.connects, 0);
    assert!(report.status.is_empty());
}

#[tokio::test]
async fn errors_by_kind_timeout_counts_its_latency() {
    let server = Server::start().await;
    let mut p = plan(&server.url("/hang"));
    p.requests = Some(2);
    p.timeout = Duration::from_millis(200);
    let report = run(p).await;
    assert_eq!(report.errors.timeout, 2, "{report:#?}");
    assert_eq!(report.errors.total, 2);
    assert!(report.latency_ms.max >= 200.0, "{report:#?}");
    assert!(report.elapsed_s < 3.0);
}

#[tokio::test]
async fn reconnects_when_the_server_closes() {
    let server = Server::start().await;
    let mut p = plan(&server.url("/close"));
    p.connections = 2;
    p.requests = Some(20);
    let report = run(p).await;
    assert_eq!(report.ok, 20, "{report:#?}");
    assert_eq!(report.errors.total, 0, "{report:#?}");
    assert_eq!(report.connects, 20);
}

#[tokio::test]
async fn large_bodies_are_sent_and_echoed() {
    let server = Server::start().await;
    let mut p = plan(&server.url("/echo"));
    p.request.method = Method::POST;
    p.request.body = containerpub_loadtest::generated_body(1 << 20).unwrap();
    p.connections = 2;
    p.requests = Some(6);
    let report = run(p).await;
    assert_eq!(report.errors.total, 0, "{report:#?}");
    assert_eq!(report.bytes_sent, 6 << 20);
    assert_eq!(report.bytes_received, 6 << 20);
}

#[tokio::test]
async fn zipf_targets_spread_by_rank() {
    let server = Server::start().await;
    let pattern = server.url("/fn/f{i}/");
    let targets = TargetSet::zipf(&pattern, 10, 1.0, &AllowList::default()).unwrap();
    let mut p = Plan::new(targets);
    p.connections = 4;
    p.requests = Some(3000);
    let report = run(p).await;
    assert_eq!(report.errors.total, 0);
    let paths = server.state.paths.lock().unwrap().clone();
    let count = |i: usize| paths.get(&format!("/fn/f{i}/")).copied().unwrap_or(0);
    assert_eq!((0..10).map(count).sum::<u64>(), 3000);
    assert!(
        count(0) > count(1) && count(1) > count(4) && count(4) > count(9),
        "{paths:?}"
    );
    assert!(count(9) > 0);
}

#[tokio::test]
async fn json_report_has_the_documented_keys() {
    let server = Server::start().await;
    let mut p = plan(&server.url("/ok"));
    p.mode = Mode::Open { rate: 100.0 };
    p.requests = Some(10);
    p.name = Some("keys".into());
    let report = run(p).await;
    let json = serde_json::to_value(&report).unwrap();
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&json),
        [
            "bytes_received",
            "bytes_sent",
            "connections",
            "connects",
            "elapsed_s",
            "errors",
            "latency_ms",
            "mode",
            "name",
            "ok",
            "open_loop",
            "requests",
            "status",
            "target",
            "throughput_rps"
        ]
    );
    assert_eq!(
        keys(&json["errors"]),
        [
            "connect",
            "io",
            "status_4xx",
            "status_5xx",
            "timeout",
            "total"
        ]
    );
    assert_eq!(
        keys(&json["latency_ms"]),
        ["max", "mean", "min", "p50", "p90", "p99", "p99_9"]
    );
    assert_eq!(
        keys(&json["open_loop"]),
        [
            "coarse_timers",
            "dropped",
            "late",
            "scheduled",
            "send_lag_ms",
            "sent",
            "target_rate"
        ]
    );
    assert_eq!(
        keys(&json["open_loop"]["send_lag_ms"]),
        ["max", "mean", "min", "p50", "p90", "p99", "p99_9"]
    );
    assert_eq!(json["status"]["200"], 10);
    assert_eq!(json["mode"], "open");
    let back: Report = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, report);
    // A report written before the send lag was measured still reads.
    let mut older = json;
    let open = older["open_loop"].as_object_mut().unwrap();
    open.remove("send_lag_ms");
    open.remove("coarse_timers");
    let back: Report = serde_json::from_value(older).unwrap();
    let open = back.open_loop.unwrap();
    assert_eq!(open.send_lag_ms, Default::default());
    assert_eq!(open.coarse_timers, 0);
    assert_eq!(open.sent, report.open_loop.unwrap().sent);
}

fn binary() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_cpub-loadtest"))
}

#[tokio::test]
async fn binary_json_and_exit_codes() {
    let server = Server::start().await;
    let ok = server.url("/ok");
    let fail = server.url("/fail");
    let (ok_out, fail_out, fail_allowed) = tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| binary().args(args).output().unwrap();
        (
            run(&[&ok, "-c", "2", "-n", "10", "--json"]),
            run(&[&fail, "-n", "3"]),
            run(&[&fail, "-n", "3", "--max-errors", "3"]),
        )
    })
    .await
    .unwrap();
    assert!(
        ok_out.status.success(),
        "{}",
        String::from_utf8_lossy(&ok_out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&ok_out.stdout).unwrap();
    assert_eq!(json["requests"], 10);
    assert_eq!(fail_out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&fail_out.stdout).contains("status 5xx"));
    assert!(fail_allowed.status.success());
}

#[test]
fn binary_refuses_non_loopback_targets_and_bad_scenarios() {
    let out = binary()
        .args(["http://10.1.2.3:8080/fn/hello/", "-n", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing target host \"10.1.2.3\""),
        "{stderr}"
    );

    let out = binary()
        .args(["http://example.com/", "-n", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));

    // Allowed explicitly (nothing listens there, so stop at one quick request).
    let out = binary()
        .args(["http://10.1.2.3:9/", "--allow-host", "8.8.8.8", "-n", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow-host"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "name = \"x\"\n[load]\nmode = \"closed\"\nconnections = 1\nrat = 5\n",
    )
    .unwrap();
    let out = binary().arg("run").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rat"));
}

/// Runs the binary under `sh` with `ulimit` set first.
fn binary_with_ulimit(ulimit: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit {ulimit} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_cpub-loadtest"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn binary_raises_its_open_files_limit_or_says_it_is_short() {
    let server = Server::start().await;
    let ok = server.url("/ok");
    // 40 open-loop workers hold a timerfd and a connection each: about 90
    // descriptors with the runtime's, above a soft limit of 48.
    let (soft, hard) = tokio::task::spawn_blocking(move || {
        let args = [ok.as_str(), "-c", "40", "-r", "400", "-d", "1s", "--json"];
        (
            binary_with_ulimit("-Sn 48", &args),
            binary_with_ulimit("-n 48", &args),
        )
    })
    .await
    .unwrap();
    // Only the soft limit lowered: raised to the hard one, every request
    // answered and every worker on its timerfd.
    assert!(
        soft.status.success(),
        "{}",
        String::from_utf8_lossy(&soft.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&soft.stdout).unwrap();
    assert_eq!(json["errors"]["total"], 0, "{json}");
    assert_eq!(json["open_loop"]["coarse_timers"], 0, "{json}");
    // The hard limit lowered too: it cannot be raised, and says so.
    let stderr = String::from_utf8_lossy(&hard.stderr);
    assert!(
        stderr.contains("40 connections need about 144 open files; the limit is 48"),
        "{stderr}"
    );
}
