//! End-to-end tests of function logs on real Podman and PostgreSQL, through
//! the CLI: lines stay readable after scale to zero removed their instance,
//! `cpub logs -f` shows a new line within 1 s, the per-function rate limit
//! counts what it drops (metric and a "N lines dropped" line), lines printed
//! during a call of a `concurrency = 1` instance carry its request id, the
//! function gets a `traceparent`, and hostile output (a 100 KB line, binary
//! bytes, escapes, no final newline) comes out bounded and harmless, and
//! lines printed across a proxy restart are all stored once (after a
//! graceful stop and after a kill).
//! Uses `examples/chatty` (built by examples/build.sh).
//!
//! Over 600 lines: one test per promise of the issue, each with the stack
//! and the function it needs; they share the helpers at the top.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerpub_e2e::{RemoveImages, Stack, bin, eventually, metric_sum};
use containerpub_wire::logs::{LogLine, LogStream, MAX_LINE_BYTES};

/// `cpub logs NAME ARGS… -o json`, parsed.
fn logs(stack: &Stack, name: &str, args: &[&str]) -> Vec<LogLine> {
    let mut all = vec!["logs", name, "-o", "json"];
    all.extend_from_slice(args);
    stack
        .cpub_ok(&all)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Waits until `logs-rid` has at least `n` lines of the call `id`.
async fn stored_lines(stack: &Stack, id: &str, n: usize) -> Vec<LogLine> {
    eventually(
        Duration::from_secs(10),
        "the call's lines are stored",
        || {
            let lines = logs(stack, "logs-rid", &["--request-id", id]);
            async move { (lines.len() >= n).then_some(lines) }
        },
    )
    .await
}

fn texts(lines: &[LogLine]) -> Vec<&str> {
    lines.iter().map(|l| l.line.as_str()).collect()
}

/// A `cpub logs -f` running in the background; what it printed and when.
struct Follower {
    child: std::process::Child,
    seen: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Follower {
    fn start(stack: &Stack, name: &str) -> Self {
        let mut child = Command::new(bin("cpub"))
            .args(["logs", name, "-f", "-o", "json"])
            .env("CPUB_URL", stack.control_url())
            .env("CPUB_TOKEN", &stack.token)
            .env("CPUB_CONFIG", stack.dir.path().join("cli-config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cpub logs -f");
        let stdout = child.stdout.take().expect("stdout");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&seen);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                into.lock().unwrap().push((Instant::now(), line));
            }
        });
        Self { child, seen }
    }

    /// When the follower printed a line whose text is `text`.
    fn when(&self, text: &str) -> Option<Instant> {
        self.seen.lock().unwrap().iter().find_map(|(at, raw)| {
            let line: LogLine = serde_json::from_str(raw).ok()?;
            (line.line == text).then_some(*at)
        })
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lines_outlive_their_instance_and_follow_shows_them_within_a_second() {
    let _images = RemoveImages::of(&["logs-zero"]);
    let stack = Stack::start(&[]).await.expect("stack");
    let url = stack.deploy(
        "chatty",
        "logs-zero",
        "\n[scaling]\nidle_pause_s = 1\nidle_stop_s = 3\nkeep_warm = false\n",
    );
    let follower = Follower::start(&stack, "logs-zero");
    let client = reqwest::Client::new();
    let mut latencies = Vec::new();
    for round in 1..=3 {
        let tag = format!("round{round}");
        let r = client
            .get(format!("{url}print?n=3&tag={tag}"))
            .send()
            .await
            .expect("call");
        assert_eq!(r.status(), 200, "{}", stack.logs());
        let answered = Instant::now();
        let last = format!("{tag} 3");
        let seen = eventually(
            Duration::from_secs(5),
            "the follower shows the line",
            || {
                let at = follower.when(&last);
                async move { at }
            },
        )
        .await;
        latencies.push(seen.saturating_duration_since(answered));
    }
    eprintln!("cpub logs -f: a printed line shown after {latencies:?}");
    for latency in &latencies {
        assert!(*latency < Duration::from_secs(1), "{latencies:?}");
    }
    let instances = stack.containers(Some("logs-zero"));
    assert_eq!(instances.len(), 1, "one instance served");
    let instance = instances[0][..12].to_owned();

    // Scale to zero removes the container; its lines stay.
    eventually(Duration::from_secs(30), "the instance is removed", || {
        let gone = stack.containers(Some("logs-zero")).is_empty();
        async move { gone.then_some(()) }
    })
    .await;
    let lines = logs(&stack, "logs-zero", &["--tail", "1000"]);
    let text = texts(&lines);
    assert_eq!(text.first(), Some(&"chatty starting"), "{text:?}");
    for round in 1..=3 {
        for i in 1..=3 {
            assert!(
                text.contains(&format!("round{round} {i}").as_str()),
                "{text:?}"
            );
        }
    }
    let printed: Vec<&LogLine> = lines
        .iter()
        .filter(|l| l.line.starts_with("round"))
        .collect();
    assert_eq!(printed.len(), 9, "each line once: {text:?}");
    for line in &printed {
        assert_eq!((line.version, line.stream), (1, LogStream::Stdout));
        assert_eq!(line.instance, instance);
        assert_eq!(line.node, stack.node);
    }
    // Filters: instance prefix, version, since.
    assert_eq!(
        logs(&stack, "logs-zero", &["--instance", &instance[..6]]).len(),
        lines.len()
    );
    assert!(logs(&stack, "logs-zero", &["--version", "2"]).is_empty());
    assert_eq!(
        logs(&stack, "logs-zero", &["--since", "10m"]).len(),
        lines.len()
    );
    // The text view says the same.
    let shown = stack.cpub_ok(&["logs", "logs-zero"]);
    assert!(
        shown.contains(&format!(" v1 {instance} stdout round2 3\n")),
        "{shown}"
    );
    // Bad input is refused with a clear message.
    let out = stack.cpub(&["logs", "logs-zero", "--since", "10 parsecs"]);
    assert!(!out.status.success());
    let out = stack.cpub(&["logs", "no-such-function"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    // The function deleted: the follower stops with the reason, it does
    // not poll on forever.
    stack.cpub_ok(&["delete", "logs-zero"]);
    let mut follower = follower;
    let status = eventually(Duration::from_secs(30), "the follower stops", || {
        let status = follower.child.try_wait().expect("follower status");
        async move { status }
    })
    .await;
    assert!(!status.success(), "{status}");
}

/// `cpub scale` keeps the running instance and moves it to the new version:
/// what it prints afterwards is that version's (the control plane drops
/// lines of deployments it no longer has, and retention removes the old
/// one after ten more versions).
#[tokio::test(flavor = "multi_thread")]
async fn lines_of_an_instance_scale_kept_carry_the_version_it_serves() {
    let _images = RemoveImages::of(&["logs-scaled"]);
    let stack = Stack::start(&[]).await.expect("stack");
    let url = stack.deploy("chatty", "logs-scaled", "\n[scaling]\nmin_instances = 1\n");
    let client = reqwest::Client::new();
    let call = |tag: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let r = client
                .get(format!("{url}print?n=1&tag={tag}"))
                .send()
                .await
                .expect("call");
            assert_eq!(r.status(), 200);
        }
    };
    call("before").await;
    let said = stack.cpub_ok(&["scale", "logs-scaled", "--max", "3"]);
    assert!(said.contains("v2 active"), "{said}");
    call("after").await;
    let lines = eventually(Duration::from_secs(10), "both lines stored", || {
        let lines = logs(&stack, "logs-scaled", &["--tail", "1000"]);
        async move {
            let texts: Vec<String> = lines.iter().map(|l| l.line.clone()).collect();
            (texts.contains(&"before 1".to_owned()) && texts.contains(&"after 1".to_owned()))
                .then_some(lines)
        }
    })
    .await;
    let version = |text: &str| lines.iter().find(|l| l.line == text).map(|l| l.version);
    assert_eq!(version("before 1"), Some(1));
    assert_eq!(version("after 1"), Some(2), "{:?}", texts(&lines));
    assert_eq!(
        stack.containers(Some("logs-scaled")).len(),
        1,
        "kept, not replaced"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lines_over_the_rate_limit_are_counted_and_reported() {
    let _images = RemoveImages::of(&["logs-rate"]);
    let mut stack = Stack::start(&[]).await.expect("stack");
    stack
        .restart_proxy_with(&[
            ("CPUB_LOG_RATE_LINES", "100"),
            ("CPUB_LOG_BURST_LINES", "100"),
        ])
        .await
        .expect("proxy with a low rate limit");
    let url = stack.deploy("chatty", "logs-rate", "");
    let r = reqwest::get(format!("{url}print?n=2000&tag=burst"))
        .await
        .expect("call");
    assert_eq!(r.status(), 200);
    // Every line is either stored or counted in a "N lines dropped" line.
    let (kept, dropped) = eventually(Duration::from_secs(10), "every line accounted for", || {
        let lines = logs(&stack, "logs-rate", &["--tail", "5000"]);
        let kept = lines
            .iter()
            .filter(|l| l.line.starts_with("burst "))
            .count() as u64;
        let dropped: u64 = lines
            .iter()
            .filter(|l| l.stream == LogStream::System)
            .filter_map(|l| {
                l.line
                    .strip_suffix(" lines dropped: over the rate limit of 100 lines/s")
            })
            .map(|n| n.parse::<u64>().expect("a count"))
            .sum();
        async move { (kept + dropped == 2000).then_some((kept, dropped)) }
    })
    .await;
    eprintln!("rate limit 100 lines/s, burst 100: {kept} kept, {dropped} dropped");
    // The burst (100, less the start-up lines) and what the bucket refilled
    // meanwhile.
    let function_lines = logs(&stack, "logs-rate", &["--tail", "5000"])
        .iter()
        .filter(|l| l.stream != LogStream::System)
        .count();
    assert!(
        (100..400).contains(&function_lines),
        "{function_lines} kept"
    );
    let metrics = stack.metrics().await.expect("metrics");
    let counted = metric_sum(
        &metrics,
        "cpub_log_lines_dropped_total",
        &[("function", "logs-rate"), ("reason", "rate_limit")],
    );
    assert_eq!(counted, Some(dropped as f64), "{metrics}");
    let captured = metric_sum(
        &metrics,
        "cpub_log_lines_total",
        &[("function", "logs-rate")],
    );
    assert!(captured.is_some_and(|c| c >= 2000.0), "{captured:?}");
}

/// How many times each of `seq 1 of N` … `seq N of N` (tag `tag`) was
/// stored, once all N were.
async fn sequence_counts(stack: &Stack, name: &str, tag: &str, n: usize) -> Vec<usize> {
    eventually(
        Duration::from_secs(30),
        "every numbered line is stored",
        || {
            let lines = logs(stack, name, &["--tail", "5000"]);
            let mut counts = vec![0usize; n + 1];
            for l in &lines {
                assert_eq!(l.function, name, "{l:?}");
                let Some(rest) = l.line.strip_prefix(&format!("{tag} ")) else {
                    continue;
                };
                let i: usize = rest
                    .split(' ')
                    .next()
                    .and_then(|i| i.parse().ok())
                    .unwrap_or_else(|| panic!("a numbered line: {}", l.line));
                counts[i] += 1;
            }
            async move { counts[1..].iter().all(|c| *c > 0).then_some(counts) }
        },
    )
    .await
}

/// Lines a function prints while the proxy restarts — queued in the old
/// proxy's memory, or printed while no proxy ran — are shipped by the next
/// one, and stored exactly once after a graceful stop (SIGTERM) and after a
/// kill (SIGKILL: the next proxy reads again up to a second of lines the
/// control plane stored, and it stores them once by their place in the
/// file; issue 11).
#[tokio::test(flavor = "multi_thread")]
async fn lines_printed_across_proxy_restarts_are_all_stored() {
    let _images = RemoveImages::of(&["logs-restart"]);
    let mut stack = Stack::start(&[]).await.expect("stack");
    // No idle pause: the instance prints on its own between calls.
    let url = stack.deploy(
        "chatty",
        "logs-restart",
        "\n[scaling]\nidle_pause_s = 300\nidle_stop_s = 600\n",
    );
    let (lps, secs) = (100usize, 6usize);
    for (tag, graceful) in [("term", true), ("kill", false)] {
        let r = reqwest::get(format!("{url}spam?lps={lps}&secs={secs}&tag={tag}"))
            .await
            .expect("spam");
        assert_eq!(r.status(), 200, "{}", stack.logs());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // What the proxy about to stop dropped so far (rate limit, full
        // buffer, refused batches) is in its own metrics: read them now.
        let metrics = stack.metrics().await.expect("metrics");
        let dropped = metric_sum(
            &metrics,
            "cpub_log_lines_dropped_total",
            &[("function", "logs-restart")],
        );
        assert!(dropped.is_none_or(|d| d == 0.0), "{tag}: {dropped:?}");
        if graceful {
            assert!(
                stack.terminate_proxy(Duration::from_secs(30)),
                "the proxy stops on SIGTERM"
            );
            // What its stop dropped it says on its way out (not in metrics;
            // the first stop of this stack).
            let dropped = shutdown_drops(&stack.logs());
            assert_eq!(dropped, 0, "{tag}: lines dropped at the stop");
        } else {
            stack.stop_proxy();
        }
        // Printed while no proxy runs.
        tokio::time::sleep(Duration::from_secs(2)).await;
        stack.restart_proxy_with(&[]).await.expect("proxy again");
        let counts = sequence_counts(&stack, "logs-restart", tag, lps * secs).await;
        let twice: Vec<usize> = (1..counts.len()).filter(|i| counts[*i] > 1).collect();
        eprintln!(
            "{tag}: {} lines, {} stored more than once",
            lps * secs,
            twice.len()
        );
        assert!(twice.is_empty(), "stored twice after {tag}: {twice:?}");
        // The lines came with their place in the file: the control plane
        // keeps where the last one stored ends (what makes the lines the
        // next proxy reads again after a kill stored once).
        let (files, ends): (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), max(end_offset) FROM log_positions WHERE stream = 'stdout'",
        )
        .fetch_one(&stack.db().await)
        .await
        .expect("positions");
        assert!(files >= 1 && ends.unwrap_or(0) > 0, "{files} {ends:?}");
    }
    // The last proxy (after the kill) dropped nothing either.
    let metrics = stack.metrics().await.expect("metrics");
    let dropped = metric_sum(
        &metrics,
        "cpub_log_lines_dropped_total",
        &[("function", "logs-restart")],
    );
    assert!(dropped.is_none_or(|d| d == 0.0), "{dropped:?}");
}

/// The `lines_dropped` a stopping proxy logged, summed, in its plain
/// (`lines_dropped=3`) or JSON (`"lines_dropped":3`) form.
fn shutdown_drops(log: &str) -> u64 {
    log.match_indices("lines_dropped")
        .filter_map(|(at, key)| {
            let rest = log.get(at + key.len()..)?;
            let rest = rest
                .strip_prefix('=')
                .or_else(|| rest.strip_prefix("\":"))?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn lines_printed_during_a_call_carry_its_request_id() {
    let _images = RemoveImages::of(&["logs-rid"]);
    let stack = Stack::start(&[]).await.expect("stack");
    let url = stack.deploy("chatty", "logs-rid", "\n[scaling]\nconcurrency = 1\n");
    let client = reqwest::Client::new();
    for (id, tag) in [
        ("rid-logs-a", "alpha"),
        ("rid-logs-b", "beta"),
        ("rid-logs-a2", "gamma"),
    ] {
        let r = client
            .get(format!("{url}print?n=5&tag={tag}"))
            .header("x-request-id", id)
            .send()
            .await
            .expect("call");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-request-id"], id);
        // The next call waits for this one's lines: a line conmon reads
        // after the next call began goes to that call (ARCHITECTURE.md,
        // "Request ids"), which a loaded CI machine shows.
        stored_lines(&stack, id, 5).await;
    }
    let beta = logs(&stack, "logs-rid", &["--request-id", "rid-logs-b"]);
    assert_eq!(
        texts(&beta),
        ["beta 1", "beta 2", "beta 3", "beta 4", "beta 5"]
    );
    let alpha = logs(&stack, "logs-rid", &["--request-id", "rid-logs-a"]);
    assert_eq!(
        texts(&alpha),
        ["alpha 1", "alpha 2", "alpha 3", "alpha 4", "alpha 5"]
    );
    // Printed outside any call: no request id.
    let all = logs(&stack, "logs-rid", &[]);
    let start = all
        .iter()
        .find(|l| l.line == "chatty starting")
        .expect("start line");
    assert_eq!(start.request_id, None);

    // traceparent: created when missing (its trace id is the request id the
    // proxy made), passed on when valid, replaced when not.
    let r = client.get(format!("{url}ids")).send().await.expect("call");
    let body = r.text().await.unwrap();
    let (id, trace) = body.trim().split_once(' ').expect("two fields");
    assert_eq!(trace.len(), 55, "{trace}");
    assert_eq!(&trace[3..35], id, "trace id = the proxy's request id");
    stored_lines(&stack, id, 1).await;
    let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = client
        .get(format!("{url}ids"))
        .header("traceparent", good)
        .header("x-request-id", "rid-trace")
        .send()
        .await
        .expect("call");
    assert_eq!(r.text().await.unwrap(), format!("rid-trace {good}\n"));
    let traced = stored_lines(&stack, "rid-trace", 1).await;
    let r = client
        .get(format!("{url}ids"))
        .header("traceparent", "00-XYZ-bad")
        .send()
        .await
        .expect("call");
    let body = r.text().await.unwrap();
    let trace = body.trim().split_once(' ').expect("two fields").1;
    assert!(
        trace.starts_with("00-") && trace.len() == 55 && !trace.contains("XYZ"),
        "{trace}"
    );
    // The function logged it, and the line is found by the call's id.
    assert_eq!(
        texts(&traced),
        [format!("ids request=rid-trace traceparent={good}").as_str()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_output_is_bounded_and_harmless() {
    let _images = RemoveImages::of(&["logs-hostile"]);
    let stack = Stack::start(&[]).await.expect("stack");
    let url = stack.deploy("chatty", "logs-hostile", "");
    let r = reqwest::get(format!("{url}hostile")).await.expect("call");
    assert_eq!(r.status(), 200);
    // The last line has no newline: it is sent after a second on its own.
    let lines = eventually(Duration::from_secs(10), "the unterminated line", || {
        let lines = logs(&stack, "logs-hostile", &[]);
        let done = lines.iter().any(|l| l.line == "no newline at the end");
        async move { done.then_some(lines) }
    })
    .await;
    let huge = lines
        .iter()
        .find(|l| l.line.starts_with("hhhh"))
        .expect("the long line");
    assert_eq!(
        huge.line,
        format!(
            "{} […{} more bytes cut]",
            "h".repeat(MAX_LINE_BYTES),
            100_000 - MAX_LINE_BYTES
        )
    );
    let binary = lines
        .iter()
        .find(|l| l.line.starts_with("binary:"))
        .expect("the binary line");
    assert!(
        !binary.line.chars().any(|c| c.is_control()),
        "{:?}",
        binary.line
    );
    assert!(binary.line.ends_with("end"), "{:?}", binary.line);
    // The proxy is still fine.
    let r = reqwest::get(&url).await.expect("call");
    assert_eq!(r.text().await.unwrap(), "ok\n");
}

/// Calls `url` from `workers` keep-alive connections for `span`; the
/// latency of each call.
async fn load(url: &str, workers: usize, span: Duration) -> Vec<Duration> {
    let until = Instant::now() + span;
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut took = Vec::new();
            while Instant::now() < until {
                let t0 = Instant::now();
                let r = client.get(&url).send().await.expect("call");
                assert_eq!(r.status(), 200);
                r.bytes().await.expect("body");
                took.push(t0.elapsed());
            }
            took
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("worker"));
    }
    all
}

/// Calls a second, p50 and p99 in milliseconds.
type Summary = (f64, f64, f64);

fn summary(mut took: Vec<Duration>, span: Duration) -> Summary {
    took.sort();
    let p = |q: f64| took[((took.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    (took.len() as f64 / span.as_secs_f64(), p(0.5), p(0.99))
}

/// The goal of issue 11: a function printing 10,000 lines/s slows calls to
/// it by at most 5 %, and every line within the rate limit is stored.
/// Timing on a shared machine swings, so this is a measurement to run by
/// hand (`--ignored --nocapture`): phases with and without the printing
/// alternate, on the printing function and on a quiet one side by side.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn a_function_printing_10k_lines_per_second() {
    let _loud_images = RemoveImages::of(&["logs-loud"]);
    let _quiet_images = RemoveImages::of(&["logs-quiet"]);
    let stack = Stack::start(&[]).await.expect("stack");
    let loud = stack.deploy("chatty", "logs-loud", "");
    let quiet = stack.deploy("chatty", "logs-quiet", "");
    let span = Duration::from_secs(4);
    load(&loud, 1, Duration::from_millis(500)).await;
    load(&quiet, 1, Duration::from_millis(500)).await;
    let rounds = 4;
    let (lps, secs) = (10_000u64, 6u64);
    let mut rows = Vec::new();
    for round in 1..=rounds {
        for printing in [false, true] {
            if printing {
                let r = reqwest::get(format!("{loud}spam?lps={lps}&secs={secs}&tag=loud{round}"))
                    .await
                    .expect("spam");
                assert_eq!(r.status(), 200);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let (a, b) = tokio::join!(load(&loud, 2, span), load(&quiet, 2, span));
            let (a, b) = (summary(a, span), summary(b, span));
            println!(
                "round {round} printing={printing:<5} loud: {:.0} calls/s p50 {:.2} ms p99 {:.2} ms | quiet: {:.0} calls/s p50 {:.2} ms p99 {:.2} ms",
                a.0, a.1, a.2, b.0, b.1, b.2
            );
            rows.push((printing, a, b));
            if printing {
                // Let the printing end before the next quiet phase.
                tokio::time::sleep(Duration::from_secs(secs).saturating_sub(span)).await;
            }
        }
    }
    let mean = |printing: bool, pick: fn(&(Summary, Summary)) -> f64| {
        let v: Vec<f64> = rows
            .iter()
            .filter(|r| r.0 == printing)
            .map(|r| pick(&(r.1, r.2)))
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let off = mean(false, |r| r.0.0);
    let on = mean(true, |r| r.0.0);
    let quiet_on = mean(true, |r| r.1.0);
    println!(
        "printing function: {off:.0} calls/s without printing, {on:.0} with ({:+.1} %); quiet function meanwhile {quiet_on:.0} calls/s; p50 {:.2} → {:.2} ms",
        (on / off - 1.0) * 100.0,
        mean(false, |r| r.0.1),
        mean(true, |r| r.0.1),
    );
    // Every printed line is stored (10,000 lines/s is within the default
    // rate limit).
    let db = stack.db().await;
    let expected = (rounds * lps * secs) as i64;
    let stored: i64 = eventually(Duration::from_secs(60), "every line stored", || {
        let db = db.clone();
        async move {
            let (n,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM function_log_lines l JOIN functions f ON f.id = l.function_id \
                 WHERE f.name = 'logs-loud' AND l.line LIKE 'loud%'",
            )
            .fetch_one(&db)
            .await
            .ok()?;
            (n >= expected).then_some(n)
        }
    })
    .await;
    assert_eq!(stored, expected);
    let metrics = stack.metrics().await.expect("metrics");
    let dropped = metric_sum(
        &metrics,
        "cpub_log_lines_dropped_total",
        &[("function", "logs-loud")],
    );
    println!("{stored} lines stored of {expected}; dropped: {dropped:?}");
    assert!(dropped.is_none_or(|d| d == 0.0));
}
