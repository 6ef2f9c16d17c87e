//! End-to-end tests of the warm pool on the real stack (PostgreSQL, Podman,
//! cpub-control, cpub-proxy, cpub): pre-warming, bursts, the bounded queue,
//! pause/resume, scale to zero, a killed container, a restarted proxy, a
//! redeploy under load, and containers created ahead of need (never
//! leaked). Each test has its own stack (node) and function names. No
//! assertion is on a duration: this machine's timings swing 2×.
//!
//! Over 600 lines: ten tests, one pool behaviour each on a stack of its
//! own, sharing the helpers at the top.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use containerpub_e2e::{
    Stack, container_image, container_state, eventually, metric_sum, start_kind_of,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HELLO: &str = "hello from ContainerPub\n";

async fn get(client: &reqwest::Client, url: &str) -> (u16, String, reqwest::header::HeaderMap) {
    let r = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.text().await.unwrap_or_default(), headers)
}

fn start_kind(headers: &reqwest::header::HeaderMap) -> String {
    start_kind_of(headers).unwrap_or_else(|| {
        panic!(
            "no start entry in server-timing {:?}",
            headers.get("server-timing")
        )
    })
}

/// The only container of `function`, once there is exactly one.
async fn only_container(stack: &Stack, function: &str) -> String {
    eventually(
        Duration::from_secs(30),
        &format!("exactly one container for {function}"),
        || async {
            let ids = stack.containers(Some(function));
            (ids.len() == 1).then(|| ids[0].clone())
        },
    )
    .await
}

#[tokio::test]
async fn min_instances_are_prewarmed_and_the_first_call_is_warm() {
    let stack = Stack::start(&[]).await.unwrap();
    let name = "pool-prewarm";
    let url = stack.deploy("hello", name, "\n[scaling]\nmin_instances = 1\n");

    // Started without any call, and running.
    let id = eventually(
        Duration::from_secs(30),
        "a running pre-warmed container",
        || async {
            let ids = stack.containers(Some(name));
            (ids.len() == 1 && container_state(&ids[0]).as_deref() == Some("running"))
                .then(|| ids[0].clone())
        },
    )
    .await;
    // Podman's `running` comes before the pool's readiness probe passes; a
    // call in between joins the start and is reported cold. Wait for the
    // pool to count the instance ready.
    eventually(
        Duration::from_secs(30),
        "cpub_instances{state=ready} = 1 in /metrics",
        || async {
            let text = stack.metrics().await?;
            let ready = metric_sum(
                &text,
                "cpub_instances",
                &[("function", name), ("state", "ready")],
            )?;
            (ready >= 1.0).then_some(())
        },
    )
    .await;

    let client = reqwest::Client::new();
    let (status, body, headers) = get(&client, &url).await;
    assert_eq!((status, body.as_str()), (200, HELLO), "{}", stack.logs());
    assert_eq!(start_kind(&headers), "warm", "pre-warmed instance serves");
    assert_eq!(
        stack.containers(Some(name)),
        [id],
        "the pre-warmed container served"
    );
}

/// `n` concurrent GETs; returns the statuses (0 = transport error).
async fn burst(url: &str, n: usize) -> Vec<u16> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(n)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            let url = format!("{url}burst/{i}");
            tokio::spawn(async move {
                match client.get(&url).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body = r.text().await.unwrap_or_default();
                        if status == 200 && body != HELLO {
                            eprintln!("unexpected body: {body:?}");
                            return 1;
                        }
                        status
                    }
                    Err(e) => {
                        eprintln!("burst call {i}: {e}");
                        0
                    }
                }
            })
        })
        .collect();
    let mut statuses = Vec::with_capacity(n);
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses
}

#[tokio::test]
async fn burst_on_a_cold_function_all_succeed_with_bounded_starts() {
    let stack = Stack::start(&[]).await.unwrap();
    let name = "pool-burst";
    let url = stack.deploy(
        "hello",
        name,
        "\n[scaling]\nconcurrency = 10\nmax_instances = 10\n",
    );
    assert!(
        stack.containers(Some(name)).is_empty(),
        "cold before the burst"
    );

    let statuses = burst(&url, 100).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        ok,
        100,
        "every call of the burst succeeds; statuses: {statuses:?}\n{}",
        stack.logs()
    );
    let started = stack.containers(Some(name)).len();
    assert!(
        (1..=10).contains(&started),
        "{started} containers for a burst of 100 at concurrency 10"
    );
    eprintln!("burst of 100: {started} containers");
    let text = stack.metrics().await.expect("proxy serves /metrics");
    let cold = metric_sum(
        &text,
        "cpub_cold_starts_total",
        &[("function", name), ("kind", "cold")],
    )
    .expect("cold starts of the burst are counted");
    assert!(
        (1.0..=10.0).contains(&cold),
        "{cold} cold starts recorded for the burst"
    );
}

#[tokio::test]
async fn burst_starts_at_most_ceil_n_over_concurrency_instances() {
    // max_instances is not the bound here: 30 calls at concurrency 10 may
    // start at most 3 instances even though 20 are allowed.
    let stack = Stack::start(&[]).await.unwrap();
    let name = "pool-burst-ceil";
    let url = stack.deploy(
        "hello",
        name,
        "\n[scaling]\nconcurrency = 10\nmax_instances = 20\n",
    );
    let statuses = burst(&url, 30).await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{statuses:?}\n{}",
        stack.logs()
    );
    let started = stack.containers(Some(name)).len();
    assert!(
        (1..=3).contains(&started),
        "{started} containers for a burst of 30 at concurrency 10 (at most 3)"
    );
}

/// A POST whose body is sent but its last byte: the call holds whatever it
/// leased (or its queue place) until `finish` sends it.
struct HeldCall {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl HeldCall {
    async fn open(stack: &Stack, path: &str) -> HeldCall {
        let mut stream = TcpStream::connect(stack.proxy_addr).await.unwrap();
        let held = containerpub_e2e::held_post(path, &stack.proxy_addr.to_string());
        stream.write_all(&held).await.unwrap();
        HeldCall {
            stream,
            buf: Vec::new(),
        }
    }

    /// Status line and headers of the answer, if one arrives `within`.
    async fn head(&mut self, within: Duration) -> Option<String> {
        let until = Instant::now() + within;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(String::from_utf8_lossy(&self.buf[..end]).into_owned());
            }
            let left = until.checked_duration_since(Instant::now())?;
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return (!self.buf.is_empty())
                        .then(|| String::from_utf8_lossy(&self.buf).into_owned());
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return None,
            }
        }
    }

    async fn finish(&mut self) {
        let _ = self.stream.write_all(b"b").await;
    }
}

fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"))
}

#[tokio::test]
async fn a_full_queue_answers_429_and_a_long_wait_503() {
    // One slot (concurrency 1, max 1), two queue places. A call whose body
    // never ends holds the slot; of seven more, two hold the queue places
    // and five are refused with 429 at once; the two queued calls get 503 +
    // retry-after when their queue_timeout_ms passes.
    let stack = Stack::start(&[]).await.unwrap();
    let name = "pool-queue";
    let url = stack.deploy(
        "echo",
        name,
        "\n[scaling]\nconcurrency = 1\nmax_instances = 1\nqueue_size = 2\nqueue_timeout_ms = 3000\n",
    );
    let client = reqwest::Client::new();
    let (status, _, _) = get(&client, &url).await;
    assert_eq!(status, 200, "warm-up call\n{}", stack.logs());

    let path = format!("/fn/{name}/held");
    let mut holder = HeldCall::open(&stack, &path).await;
    eventually(
        Duration::from_secs(10),
        "the holder takes the slot",
        || async {
            let text = stack.metrics().await?;
            let held = metric_sum(&text, "cpub_in_flight_requests", &[("function", name)])?;
            (held == 1.0).then_some(())
        },
    )
    .await;

    // No metric counts the queued calls, so which two of the seven queue
    // is left to the proxy: they are told apart by their answers, in the
    // order those come (a refusal at once, a queued call's 503 only when
    // its wait has passed).
    let calls: Vec<_> = (0..7)
        .map(|i| {
            let client = client.clone();
            let url = format!("{url}over/{i}");
            tokio::spawn(async move {
                let r = client.post(&url).body("x").send().await.unwrap();
                let retry_after = r.headers().contains_key("retry-after");
                (Instant::now(), r.status().as_u16(), retry_after)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.unwrap());
    }
    answers.sort_by_key(|(at, _, _)| *at);
    let statuses: Vec<u16> = answers.iter().map(|(_, status, _)| *status).collect();
    assert_eq!(
        statuses,
        [429, 429, 429, 429, 429, 503, 503],
        "five calls beyond the slot and the queue are refused, then the two queued time out\n{}",
        stack.logs()
    );
    assert!(
        answers
            .iter()
            .all(|(_, status, retry)| *status != 503 || *retry),
        "503 after a queue wait carries retry-after: {answers:?}"
    );
    assert!(
        holder.head(Duration::from_millis(200)).await.is_none(),
        "the holder is still being served"
    );
    holder.finish().await;
    let head = holder
        .head(Duration::from_secs(20))
        .await
        .expect("holder answered");
    assert_eq!(status_of(&head), 200, "{head}");
    let (status, _, _) = get(&client, &url).await;
    assert_eq!(status, 200, "the function serves again");
    let text = stack.metrics().await.expect("proxy serves /metrics");
    // Counted once, by the proxy that answered them (the stack's own proxy).
    let rejected = metric_sum(
        &text,
        "cpub_proxy_rejections_total",
        &[("reason", "queue_full")],
    )
    .expect("rejections are counted");
    assert!(
        rejected >= 5.0,
        "the 5 refused calls are counted: {rejected}"
    );
}

#[tokio::test]
async fn an_idle_instance_is_paused_and_resumed_by_a_call() {
    let stack = Stack::start(&[]).await.unwrap();
    let name = "pool-pause";
    let url = stack.deploy(
        "hello",
        name,
        "\n[scaling]\nidle_pause_s = 1\nidle_stop_s = 600\n",
    );
    let client = reqwest::Client::new();
    let (status, _, _) = get(&client, &url).await;
    assert_eq!(status, 200, "{}", stack.logs());
    let id = only_container(&stack, name).await;

    eventually(Duration::from_secs(15), "podman reports paused", || async {
        (container_state(&id).as_deref() == Some("paused")).then_some(())
    })
    .await;

    let (status, body, headers) = get(&client, &url).await;
    assert_eq!((status, body.as_str()), (200, HELLO), "{}", stack.logs());
    assert_eq!(start_kind(&headers), "paused", "{headers:?}");
    assert_eq!(
        stack.containers(Some(name)),
        std::slice::from_ref(&id),
        "the paused container was resumed, no new one"
    );
    // The very next call finds it running (unless it is already idle again).
    let (status, _, headers) = get(&client, &url).await;
    assert_eq!(status, 200);
    assert_ne!(start_kind(&headers), "cold");
}

#[tokio::test]
async fn idle_instances_are_removed_and_the_next_call_is_cold() {
    let stack = Stack::start(&[]).await.unwrap();
    let name = "pool-zero";
    let url = stack.deploy(
        "hello",
        name,
        "\n[scaling]\nidle_pause_s = 1\nidle_stop_s = 2\nkeep_warm = false\n",
    );
    let client = reqwest::Client::new();
    let (status, _, _) = get(&client, &url).await;
    assert_eq!(status, 200, "{}", stack.logs());
    only_container(&stack, name).await;

    eventually(Duration::from_secs(30), "scaled to zero", || async {
        stack.containers(Some(name)).is_empty().then_some(())
    })
    .await;

    let (status, body, headers) = get(&client, &url).await;
    assert_eq!((status, body.as_str()), (200, HELLO), "{}", stack.logs());
    assert_eq!(start_kind(&headers), "cold");
    assert_eq!(stack.containers(Some(name)).len(), 1);
}

/// A finished call of a load worker.
#[derive(Clone, Copy, Debug)]
struct Call {
    started: Instant,
    ended: Instant,
    ok: bool,
}

/// `workers` tasks calling `url` in a loop until `stop`; `check` decides
/// whether an answer (status, body) is a success.
fn load(
    url: &str,
    workers: usize,
    stop: Arc<AtomicBool>,
    check: fn(u16, &str) -> bool,
) -> Vec<tokio::task::JoinHandle<Vec<Call>>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    (0..workers)
        .map(|_| {
            let client = client.clone();
            let url = url.to_owned();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut calls = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let ok = match client.get(&url).send().await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body = r.text().await.unwrap_or_default();
                            let ok = check(status, &body);
                            if !ok {
                                eprintln!("failed call: {status} {body:?}");
                            }
                            ok
                        }
                        Err(e) => {
                            eprintln!("failed call: {e}");
                            false
                        }
                    };
                    calls.push(Call {
                        started,
                        ended: Instant::now(),
                        ok,
                    });
                }
                calls
            })
        })
        .collect()
}

async fn collect(workers: Vec<tokio::task::JoinHandle<Vec<Call>>>) -> Vec<Call> {
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    all.sort_by_key(|c| c.ended);
    all
}

#[tokio::test]
async fn a_killed_container_fails_only_its_in_flight_calls() {
    let stack = Stack::start(&[]).await.unwrap();
    let name = "pool-kill";
    let url = stack.deploy("hello", name, "\n[scaling]\nmax_instances = 2\n");
    let client = reqwest::Client::new();
    assert_eq!(get(&client, &url).await.0, 200, "{}", stack.logs());

    const WORKERS: usize = 4;
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&url, WORKERS, stop.clone(), |s, b| s == 200 && b == HELLO);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let ids = stack.containers(Some(name));
    let victim = ids
        .iter()
        .find(|id| container_state(id).as_deref() == Some("running"))
        .unwrap_or_else(|| panic!("a running instance among {ids:?}"))
        .clone();
    let killed_at = Instant::now();
    let out = Command::new("podman")
        .args(["kill", "-s", "KILL", &victim])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podman kill: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Keep the load on until plenty of calls have ended after the kill.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let calls = collect(workers).await;

    let before = calls.iter().filter(|c| c.ended < killed_at).count();
    let after: Vec<&Call> = calls.iter().filter(|c| c.started > killed_at).collect();
    let failed: Vec<&Call> = calls.iter().filter(|c| !c.ok).collect();
    eprintln!(
        "{} calls ({before} before the kill, {} started after), {} failed",
        calls.len(),
        after.len(),
        failed.len()
    );
    assert!(
        failed.len() <= WORKERS,
        "only calls in flight at the kill may fail: {} failed\n{}",
        failed.len(),
        stack.logs()
    );
    // A failed call must have been in flight at the kill, or have been
    // routed to the dead instance before the pool saw the exit.
    let last: Vec<&Call> = calls.iter().rev().take(20).collect();
    assert_eq!(last.len(), 20, "enough calls after the kill");
    assert!(
        last.iter().all(|c| c.ok && c.started > killed_at),
        "the last 20 calls all started after the kill and succeeded\n{}",
        stack.logs()
    );
    assert!(
        container_state(&victim).as_deref() != Some("running"),
        "the killed container is not running"
    );
}

#[tokio::test]
async fn a_restarted_proxy_adopts_its_containers_and_removes_strangers() {
    let mut stack = Stack::start(&[]).await.unwrap();
    let name = "pool-adopt";
    let url = stack.deploy("hello", name, "");
    let client = reqwest::Client::new();
    let (status, _, _) = get(&client, &url).await;
    assert_eq!(status, 200, "{}", stack.logs());
    let x = only_container(&stack, name).await;
    let image = container_image(&x).expect("image of the instance");

    // SIGKILL; meanwhile a container of this node for a function that does
    // not exist appears.
    stack.stop_proxy();
    let ghost_fn = format!("ghost-{}", stack.node);
    let out = Command::new("podman")
        .args(["run", "-d", "--network", "cpub", "-e", "PORT=8080"])
        .args(["--label", "cpub.managed=true"])
        .args(["--label", &format!("cpub.node={}", stack.node)])
        .args(["--label", &format!("cpub.function={ghost_fn}")])
        .args(["--label", "cpub.deployment=999999"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podman run ghost: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ghost = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(stack.containers(Some(&ghost_fn)).len(), 1);

    stack.start_proxy().await.unwrap();
    let (status, body, headers) = get(&client, &url).await;
    assert_eq!((status, body.as_str()), (200, HELLO), "{}", stack.logs());
    assert_eq!(start_kind(&headers), "warm", "adopted instance serves warm");
    assert_eq!(
        stack.containers(Some(name)),
        std::slice::from_ref(&x),
        "same container"
    );
    eventually(Duration::from_secs(15), "stranger removed", || async {
        stack.containers(Some(&ghost_fn)).is_empty().then_some(())
    })
    .await;
    assert!(container_state(&ghost).is_none(), "ghost container gone");
    assert_eq!(
        stack.containers(None),
        std::slice::from_ref(&x),
        "no orphan of this node"
    );

    // SIGTERM no longer removes the proxy's containers either.
    assert!(
        stack.terminate_proxy(Duration::from_secs(30)),
        "proxy exits on SIGTERM\n{}",
        stack.logs()
    );
    assert_eq!(
        container_state(&x).as_deref(),
        Some("running"),
        "instance kept across SIGTERM"
    );
    stack.start_proxy().await.unwrap();
    let (status, _, headers) = get(&client, &url).await;
    assert_eq!(status, 200, "{}", stack.logs());
    assert_eq!(start_kind(&headers), "warm");
    assert_eq!(stack.containers(None), [x]);
}

/// `cpub scale` keeps the running instance (its deployment label stays v1's
/// id); a restarted proxy adopts it for v2, whose image and everything but
/// the counts are v1's, instead of removing it and starting cold.
#[tokio::test]
async fn a_restarted_proxy_adopts_the_instances_scale_kept() {
    let mut stack = Stack::start(&[]).await.unwrap();
    let name = "pool-adopt-scaled";
    let url = stack.deploy("hello", name, "\n[scaling]\nmin_instances = 1\n");
    let x = only_container(&stack, name).await;
    let said = stack.cpub_ok(&["scale", name, "--max", "3"]);
    assert!(said.contains("v2 active"), "{said}");
    assert_eq!(stack.containers(Some(name)), std::slice::from_ref(&x));

    stack.stop_proxy();
    stack.start_proxy().await.unwrap();
    let client = reqwest::Client::new();
    let (status, body, headers) = get(&client, &url).await;
    assert_eq!((status, body.as_str()), (200, HELLO), "{}", stack.logs());
    assert_eq!(start_kind(&headers), "warm", "adopted, not started");
    assert_eq!(
        stack.containers(Some(name)),
        [x],
        "the instance scale kept\n{}",
        stack.logs()
    );
}

#[tokio::test]
async fn a_redeploy_under_load_fails_no_call() {
    let stack = Stack::start(&[]).await.unwrap();
    let name = "pool-redeploy";
    let url = stack.deploy("hello", name, "");
    let client = reqwest::Client::new();
    assert_eq!(get(&client, &url).await.0, 200, "{}", stack.logs());

    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&url, 4, stop.clone(), |s, b| {
        s == 200 && (b == HELLO || b == "bonjour from ContainerPub\n")
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let dir = containerpub_e2e::bundle("hello", name, "\n[env]\nGREETING = \"bonjour\"\n");
    let path = dir.path().to_owned();
    let control = stack.control_url();
    let token = stack.token.clone();
    let config = stack.dir.path().join("cli-config.toml");
    let deployed = tokio::task::spawn_blocking(move || {
        Command::new(containerpub_e2e::bin("cpub"))
            .arg("deploy")
            .arg(&path)
            .env("CPUB_URL", control)
            .env("CPUB_TOKEN", token)
            .env("CPUB_CONFIG", config)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        deployed.status.success(),
        "deploy: {}",
        String::from_utf8_lossy(&deployed.stderr)
    );
    // Keep the load on while the old version drains.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let calls = collect(workers).await;
    let failed = calls.iter().filter(|c| !c.ok).count();
    eprintln!("{} calls across the redeploy, {failed} failed", calls.len());
    assert!(calls.len() > 20, "the load kept running: {}", calls.len());
    assert_eq!(
        failed,
        0,
        "no call fails across a redeploy\n{}",
        stack.logs()
    );

    for _ in 0..10 {
        let (status, body, _) = get(&client, &url).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "bonjour from ContainerPub\n")
        );
    }
    eventually(Duration::from_secs(30), "old instances removed", || async {
        (stack.containers(Some(name)).len() == 1).then_some(())
    })
    .await;
}

/// The `cpub.deployment` label of a container.
fn deployment_of(id: &str) -> String {
    let out = Command::new("podman")
        .args([
            "inspect",
            "--format",
            "{{index .Config.Labels \"cpub.deployment\"}}",
            id,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The one container created ahead for `function`, once there is exactly
/// one and it is not `old`.
async fn only_precreated(stack: &Stack, function: &str, old: Option<&str>) -> String {
    eventually(
        Duration::from_secs(30),
        &format!("exactly one container created ahead for {function}"),
        || async {
            let ids = stack.precreated(Some(function));
            (ids.len() == 1 && Some(ids[0].as_str()) != old).then(|| ids[0].clone())
        },
    )
    .await
}

#[tokio::test]
async fn containers_created_ahead_serve_cold_calls_and_never_leak() {
    let mut stack = Stack::start(&[]).await.unwrap();
    let name = "pool-ahead";
    let url = stack.deploy("hello", name, "");
    let client = reqwest::Client::new();

    // A routed deployment gets one container created ahead; the first call
    // starts exactly that one, and a successor is created.
    let ahead = only_precreated(&stack, name, None).await;
    // Initialized too (the proxy's default `--initialized-ahead`): the
    // start only runs the function's process.
    eventually(
        Duration::from_secs(30),
        "the container ahead initialized",
        || async { (container_state(&ahead).as_deref() == Some("initialized")).then_some(()) },
    )
    .await;
    let v1 = deployment_of(&ahead);
    let (status, body, headers) = get(&client, &url).await;
    assert_eq!((status, body.as_str()), (200, HELLO), "{}", stack.logs());
    assert_eq!(start_kind(&headers), "cold");
    assert_eq!(
        only_container(&stack, name).await,
        ahead,
        "started the one ahead"
    );
    let successor = only_precreated(&stack, name, Some(&ahead)).await;

    // A redeploy: the old deployment's container ahead goes without ever
    // running, the new deployment gets its own.
    stack.deploy("hello", name, "");
    // Settled: one instance of the new deployment running and one container
    // ahead initialized, the same one a second later. (A start in flight
    // shows its own new container as `created`, then `initialized`, before
    // `running`: under CI load one was taken for the container ahead.)
    let settled = || {
        let all = stack.containers_by_state(Some(name));
        let running: Vec<&(String, String)> = all
            .iter()
            .filter(|(_, s)| !containerpub_e2e::is_ahead(s))
            .collect();
        let ahead: Vec<&(String, String)> = all
            .iter()
            .filter(|(_, s)| containerpub_e2e::is_ahead(s))
            .collect();
        (running.len() == 1
            && running[0].1 == "running"
            && deployment_of(&running[0].0) != v1
            && ahead.len() == 1
            && ahead[0].1 == "initialized"
            && deployment_of(&ahead[0].0) != v1)
            .then(|| ahead[0].0.clone())
    };
    let fresh = eventually(
        Duration::from_secs(30),
        "the new deployment serving, with its container ahead and only it",
        || async {
            let first = settled()?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            (settled()? == first).then_some(first)
        },
    )
    .await;
    assert!(
        container_state(&successor).is_none(),
        "old container ahead removed"
    );

    // SIGKILL: the container ahead stays behind until the next proxy's
    // adoption removes it and creates its own.
    stack.stop_proxy();
    assert!(
        container_state(&fresh).is_some_and(|s| containerpub_e2e::is_ahead(&s)),
        "{:?}\n{}",
        container_state(&fresh),
        stack.logs()
    );
    stack.start_proxy().await.unwrap();
    only_precreated(&stack, name, Some(&fresh)).await;
    assert!(container_state(&fresh).is_none(), "removed by adoption");

    // SIGTERM: the proxy's shutdown removes it.
    assert!(
        stack.terminate_proxy(Duration::from_secs(30)),
        "proxy exits on SIGTERM\n{}",
        stack.logs()
    );
    assert!(
        stack.precreated(Some(name)).is_empty(),
        "container ahead removed at shutdown"
    );
    stack.start_proxy().await.unwrap();
    only_precreated(&stack, name, None).await;

    // Delete: nothing of the function is left, started or not.
    stack.cpub_ok(&["delete", name]);
    eventually(
        Duration::from_secs(30),
        "every container of the deleted function removed",
        || async {
            stack
                .containers_by_state(Some(name))
                .is_empty()
                .then_some(())
        },
    )
    .await;
}
