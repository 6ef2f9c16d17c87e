//! End-to-end tests of execution records and the observability views on
//! the real stack: every call leaves one record (request id, trace id,
//! method, status, start kind, durations) that `cpub executions`, `cpub
//! stats` and `cpub status` show; the ingest endpoint refuses hostile
//! batches and stores a batch sent twice once; the control plane's
//! `/metrics` counts requests; every metric the shipped dashboard and alert
//! rules use exists on a live scrape; the control plane's access log has
//! one structured line per API request; and no record is lost while the
//! control plane is down for 30 s under load (the proxy spools them).
//!
//! Over 600 lines: `every_call_is_recorded_and_shown` walks one stack
//! through every view of the records in turn (each step reads what the
//! ones before stored; a stack per step would build and start it again),
//! and the outage test needs its own stack.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use containerpub_e2e::{Stack, busybox_bundle, eventually, metric_sum, repo_root};
use serde_json::Value;

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The `cpub_*` metric names the dashboard and the alert rules use, with
/// histogram suffixes taken off.
fn monitored_metrics() -> Vec<String> {
    let root = repo_root().join("monitoring");
    let mut text = std::fs::read_to_string(root.join("grafana/containerpub.json")).unwrap();
    text.push_str(&std::fs::read_to_string(root.join("prometheus/alerts.yml")).unwrap());
    let mut names = HashSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("cpub_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let name = text[start..end].trim_end_matches('_');
        if name.len() > "cpub_".len() {
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_owned());
        }
        i = end.max(start + 1);
    }
    let mut names: Vec<_> = names.into_iter().collect();
    names.sort();
    names
}

/// Metric names that have at least one sample in a scrape.
fn scraped_names(text: &str) -> HashSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
                .to_owned()
        })
        .collect()
}

async fn control_metrics(stack: &Stack) -> String {
    reqwest::get(format!("{}/metrics", stack.control_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_call_is_recorded_and_shown() {
    let mut stack = Stack::start(&[]).await.expect("stack");
    let name = format!("exec-{}", std::process::id());
    let url = stack.deploy("hello", &name, "");
    let client = reqwest::Client::new();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    for i in 0..20 {
        let mut request = client
            .get(format!("{url}path?i={i}"))
            .header("x-request-id", format!("exec-e2e-{i}"));
        if i % 2 == 0 {
            request = request.header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"));
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 200, "call {i}");
        r.bytes().await.unwrap();
    }
    let r = client
        .post(&url)
        .header("x-request-id", "exec-e2e-post")
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();

    // Within a second or so (batches leave every 250–500 ms).
    let calls = eventually(Duration::from_secs(15), "21 records listed", || {
        let out = stack.cpub(&["executions", &name, "--since", "10m", "-o", "json"]);
        async move {
            let v = json(&String::from_utf8_lossy(&out.stdout));
            (v.as_array()?.len() == 21).then_some(v)
        }
    })
    .await;
    let calls = calls.as_array().unwrap();
    let by_id = |id: &str| {
        calls
            .iter()
            .find(|c| c["request_id"] == id)
            .unwrap_or_else(|| panic!("no record of {id}: {calls:?}"))
    };
    for i in 0..20 {
        let c = by_id(&format!("exec-e2e-{i}"));
        assert_eq!(c["function"], name.as_str());
        assert_eq!(c["method"], "GET");
        assert_eq!(c["status"], 200);
        assert_eq!(c["version"], 1);
        assert_eq!(c["node"], stack.node.as_str());
        assert!(c["instance"].as_str().is_some_and(|s| s.len() == 12), "{c}");
        if i % 2 == 0 {
            assert_eq!(c["trace_id"], trace, "{c}");
        } else {
            // No traceparent sent: the one the proxy made for the call.
            let made = c["trace_id"].as_str().unwrap_or_else(|| panic!("{c}"));
            assert!(made.len() == 32 && made != trace, "{c}");
            assert!(made.bytes().all(|b| b.is_ascii_hexdigit()), "{c}");
        }
        assert!(c["total_us"].as_u64().unwrap() >= c["upstream_us"].as_u64().unwrap());
        assert!(c["bytes_out"].as_u64().unwrap() > 0);
    }
    // The first call started the instance, the others found it warm.
    assert_eq!(by_id("exec-e2e-0")["start"], "cold");
    assert!(by_id("exec-e2e-0")["start_us"].as_u64().unwrap() > 0);
    assert_eq!(by_id("exec-e2e-5")["start"], "warm");
    let post = by_id("exec-e2e-post");
    assert_eq!(post["method"], "POST");
    assert!(post["bytes_in"].as_u64().unwrap() > 1000, "{post}");
    // Newest first.
    assert_eq!(calls[0]["request_id"], "exec-e2e-post");

    // Filters.
    let out = stack.cpub_ok(&["executions", &name, "--status", "5xx", "-o", "json"]);
    assert_eq!(json(&out), serde_json::json!([]));
    let out = stack.cpub_ok(&["executions", &name, "--status", "200", "-o", "json"]);
    assert_eq!(json(&out).as_array().unwrap().len(), 21);
    let out = stack.cpub(&["executions", &name, "--status", "6xx"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("6xx"));
    let out = stack.cpub_ok(&["executions", &name]);
    assert!(out.contains("exec-e2e-7") && out.contains(trace), "{out}");

    // Stats.
    let stats = json(&stack.cpub_ok(&[
        "stats", &name, "--since", "1h", "--by", "minute", "-o", "json",
    ]));
    assert_eq!(stats["total"]["calls"], 21, "{stats}");
    assert_eq!(stats["total"]["status_2xx"], 21);
    assert_eq!(stats["total"]["status_5xx"], 0);
    assert_eq!(stats["total"]["cold_starts"], 1);
    assert!(
        stats["total"]["p99_ms"].as_f64().unwrap() >= stats["total"]["p50_ms"].as_f64().unwrap()
    );
    assert!(stats["total"]["cold_start_ms"].as_f64().unwrap() > 0.0);
    let rows = stats["rows"].as_array().unwrap();
    assert!(!rows.is_empty());
    assert_eq!(
        rows.iter()
            .map(|r| r["calls"].as_u64().unwrap())
            .sum::<u64>(),
        21
    );
    let total = &stats["total"];
    let ms = |k: &str| total[k].as_f64().unwrap_or_else(|| panic!("{k}: {total}"));
    assert!(
        ms("p50_ms") <= ms("p95_ms") && ms("p95_ms") <= ms("p99_ms"),
        "{total}"
    );
    let share = total["cold_start_share"].as_f64().unwrap();
    assert!((share - 1.0 / 21.0).abs() < 1e-9, "{total}");
    assert_eq!(total["paused_starts"], 0, "{total}");
    assert_eq!(total["rejected"], 0, "{total}");
    // Every call found a free slot or started the instance: queue times
    // are there and small.
    assert!(
        ms("queue_mean_ms") >= 0.0 && ms("queue_max_ms") >= ms("queue_mean_ms"),
        "{total}"
    );
    let hours = json(&stack.cpub_ok(&[
        "stats", &name, "--since", "1h", "--by", "hour", "-o", "json",
    ]));
    let hours = hours["rows"].as_array().unwrap();
    assert!((1..=2).contains(&hours.len()), "{hours:?}");
    assert_eq!(
        hours
            .iter()
            .map(|r| r["calls"].as_u64().unwrap())
            .sum::<u64>(),
        21
    );
    assert!(
        hours
            .iter()
            .all(|r| r["from"].as_str().unwrap().contains(":00:00")),
        "rows start on the hour: {hours:?}"
    );
    let table = stack.cpub_ok(&["stats", &name]);
    assert!(table.contains("21"), "{table}");
    let out = stack.cpub(&["stats", &name, "--by", "week"]);
    assert!(!out.status.success());

    // Status: the proxy, its revision, the function's instance (reported
    // every 5 s).
    let status = eventually(Duration::from_secs(20), "status shows the instance", || {
        let out = stack.cpub(&["status", "-o", "json"]);
        let name = name.clone();
        async move {
            let v = json(&String::from_utf8_lossy(&out.stdout));
            let f = v["functions"]
                .as_array()?
                .iter()
                .find(|f| f["name"] == name.as_str())?
                .clone();
            (f["instances"]["ready"].as_u64()? >= 1).then_some(v)
        }
    })
    .await;
    let proxy = status["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"] == stack.node.as_str())
        .expect("the proxy is listed");
    assert_eq!(proxy["revision"], status["route_revision"]);
    let f = status["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name.as_str())
        .unwrap();
    assert_eq!(f["calls_5m"], 21);
    assert_eq!(f["errors_5m"], 0);
    assert_eq!(f["active_version"], 1);
    let table = stack.cpub_ok(&["status"]);
    assert!(
        table.contains(&name) && table.contains(&stack.node),
        "{table}"
    );

    // The ingest endpoint: token, hostile batches, a batch sent twice.
    let api = stack.api();
    let ingest = format!("{}/api/v1/executions", stack.control_url());
    let r = reqwest::Client::new()
        .post(&ingest)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let record = |id: &str, function: &str| {
        serde_json::json!({
            "at_us": chrono_now_us(), "function": function, "deployment_id": 1, "version": 1,
            "request_id": id, "method": "GET", "status": 200, "queue_us": 0, "start_us": 0,
            "upstream_us": 1, "total_us": 2, "bytes_in": 1, "bytes_out": 1
        })
    };
    for (body, field) in [
        (
            serde_json::json!({"node": "n", "batch": "b", "records": [record("x", "Bad Name")]}),
            "records[0].function",
        ),
        (
            serde_json::json!({"node": "a b", "batch": "b", "records": []}),
            "node",
        ),
        (
            serde_json::json!({"node": "n", "batch": "../x", "records": []}),
            "batch",
        ),
        (
            serde_json::json!({"node": "n", "batch": "b", "records": [record("a\nb", "f")]}),
            "records[0].request_id",
        ),
    ] {
        let r = api.post(&ingest).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["field"], field, "{e}");
    }
    let r = api.post(&ingest).body("not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let batch = serde_json::json!({"node": "e2e-other", "batch": "twice-1", "records": [record("dup-1", &name)]});
    let first: Value = api
        .post(&ingest)
        .json(&batch)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["stored"], 1, "{first}");
    let again: Value = api
        .post(&ingest)
        .json(&batch)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (again["stored"].as_u64(), again["duplicate"].as_bool()),
        (Some(0), Some(true))
    );
    let db = stack.db().await;
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM executions WHERE request_id = 'dup-1'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
    // Today's partition exists.
    let (parts,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'execution_chunks'::regclass",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(parts >= 1);

    // A function that crashes at start: a start failure in `cpub status`
    // (and the crash counter on the scrape below).
    let crashing = format!("crash-{}", std::process::id());
    let dir = crashing_bundle(&crashing);
    stack.cpub_ok(&["deploy", dir.path().to_str().unwrap()]);
    let r = client
        .get(format!("{}/fn/{crashing}/", stack.proxy_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let status = eventually(Duration::from_secs(20), "the crash in cpub status", || {
        let out = stack.cpub(&["status", "-o", "json"]);
        let crashing = crashing.clone();
        async move {
            let v = json(&String::from_utf8_lossy(&out.stdout));
            v["start_failures"]
                .as_array()?
                .iter()
                .find(|f| f["function"] == crashing.as_str())
                .cloned()
        }
    })
    .await;
    assert_eq!(status["exit_code"], 3, "{status}");
    assert_eq!(status["node"], stack.node.as_str());
    let table = stack.cpub_ok(&["status"]);
    assert!(
        table.contains("start failures") && table.contains(&crashing),
        "{table}"
    );
    let calls = eventually(Duration::from_secs(15), "the 502 recorded", || {
        let out = stack.cpub(&["executions", &crashing, "-o", "json"]);
        async move {
            let v = json(&String::from_utf8_lossy(&out.stdout));
            (!v.as_array()?.is_empty()).then_some(v)
        }
    })
    .await;
    assert_eq!(calls[0]["status"], 502, "{calls}");
    assert_eq!(calls[0]["rejection"], "start_failed", "{calls}");
    // The status filter finds the 502, and only that.
    let fives = json(&stack.cpub_ok(&["executions", &crashing, "--status", "5xx", "-o", "json"]));
    let fives = fives.as_array().unwrap();
    assert_eq!(fives.len(), calls.as_array().unwrap().len(), "{fives:?}");
    assert!(fives.iter().all(|c| c["status"] == 502), "{fives:?}");
    let out = stack.cpub_ok(&["executions", &crashing, "--status", "2xx", "-o", "json"]);
    assert_eq!(json(&out), serde_json::json!([]));
    let stats = json(&stack.cpub_ok(&["stats", &crashing, "-o", "json"]));
    assert_eq!(stats["total"]["status_5xx"], fives.len(), "{stats}");
    assert_eq!(stats["total"]["rejected"], fives.len(), "{stats}");
    assert_eq!(stats["total"]["status_2xx"], 0, "{stats}");

    // The control plane's metrics, and every metric the dashboard and the
    // rules use on a live scrape (proxy or control plane).
    let control = control_metrics(&stack).await;
    // (The route label holds braces: read the line itself.)
    let listed = control
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "cpub_control_http_requests_total{method=\"GET\",route=\"/api/v1/functions/{name}/executions\",status=\"200\"} ",
            )
        })
        .and_then(|v| v.parse::<f64>().ok());
    assert!(listed.is_some_and(|n| n >= 3.0), "{control}");
    assert!(
        metric_sum(
            &control,
            "cpub_control_execution_records_ingested_total",
            &[]
        )
        .unwrap()
            >= 22.0
    );
    assert_eq!(
        metric_sum(
            &control,
            "cpub_control_deploys_total",
            &[("result", "built")]
        ),
        Some(2.0)
    );
    assert!(
        metric_sum(
            &control,
            "cpub_control_http_requests_total",
            &[("status", "401")]
        )
        .unwrap()
            >= 1.0
    );
    let wanted = monitored_metrics();
    assert!(wanted.len() >= 25, "{wanted:?}");
    let until = Instant::now() + Duration::from_secs(20);
    let missing = loop {
        let mut have = scraped_names(&stack.metrics().await.unwrap_or_default());
        have.extend(scraped_names(&control_metrics(&stack).await));
        let missing: Vec<_> = wanted
            .iter()
            .filter(|n| !have.contains(*n))
            .cloned()
            .collect();
        if missing.is_empty() || Instant::now() > until {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(missing.is_empty(), "not on a live scrape: {missing:?}");
    // The instance's memory, read from its cgroup.
    let proxy_metrics = stack.metrics().await.unwrap();
    let memory = metric_sum(
        &proxy_metrics,
        "cpub_instance_memory_bytes",
        &[("function", &name)],
    );
    assert!(memory.is_some_and(|m| m > 0.0), "{proxy_metrics}");
    let limit = metric_sum(
        &proxy_metrics,
        "cpub_instance_memory_limit_bytes",
        &[("function", &name)],
    );
    assert_eq!(limit, Some(32.0 * 1024.0 * 1024.0));

    // Retention: a partition older than the retention (7 days) goes when
    // the control plane starts (and hourly); today's stays.
    sqlx::raw_sql(
        "CREATE TABLE execution_chunks_p20000101 PARTITION OF execution_chunks \
         FOR VALUES FROM ('2000-01-01 00:00:00+00') TO ('2000-01-02 00:00:00+00')",
    )
    .execute(&db)
    .await
    .unwrap();
    stack.stop_control();
    stack.start_control().await.unwrap();
    let partitions = || async {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'execution_chunks'::regclass",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        rows.into_iter().map(|r| r.0).collect::<Vec<_>>()
    };
    eventually(
        Duration::from_secs(10),
        "the old partition dropped",
        || async {
            (!partitions()
                .await
                .contains(&"execution_chunks_p20000101".to_owned()))
            .then_some(())
        },
    )
    .await;
    assert!(!partitions().await.is_empty(), "today's partition was kept");
    // The 21 calls and the record posted by hand above.
    let out = stack.cpub_ok(&["executions", &name, "--since", "1h", "-o", "json"]);
    assert_eq!(json(&out).as_array().unwrap().len(), 22);

    stack.cpub_ok(&["delete", &name]);
    stack.cpub_ok(&["delete", &crashing]);
}

/// A `runtime = "container"` bundle whose process prints `boom` and exits
/// with code 3.
fn crashing_bundle(name: &str) -> tempfile::TempDir {
    busybox_bundle(name, r#"["/busybox", "sh", "-c", "echo boom; exit 3"]"#, "")
}

fn chrono_now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// The control plane's access log (`CPUB_LOG_FORMAT=json`): one line per
/// API request, target `cpub_access`, with the request id (the caller's),
/// method, path, route template, status and time; refusals included.
#[tokio::test]
async fn the_control_plane_logs_every_api_request_once() {
    let stack = Stack::start(&[("CPUB_LOG_FORMAT", "json")])
        .await
        .expect("stack");
    let client = reqwest::Client::new();
    let control = stack.control_url();
    let send = |path: &str, id: &str, token: bool| {
        let mut request = client
            .get(format!("{control}{path}"))
            .header("x-request-id", id);
        if token {
            request = request.bearer_auth(&stack.token);
        }
        request.send()
    };
    let ok = send("/api/v1/functions", "access-e2e-ok", true)
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-request-id"], "access-e2e-ok");
    let denied = send("/api/v1/functions", "access-e2e-denied", false)
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    let missing = send("/api/v1/functions/no-such-fn", "access-e2e-404", true)
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let cases = [
        (
            "access-e2e-ok",
            "/api/v1/functions",
            "/api/v1/functions",
            200,
        ),
        (
            "access-e2e-denied",
            "/api/v1/functions",
            "/api/v1/functions",
            401,
        ),
        (
            "access-e2e-404",
            "/api/v1/functions/no-such-fn",
            "/api/v1/functions/{name}",
            404,
        ),
    ];
    let lines = eventually(Duration::from_secs(10), "three access lines", || {
        let logs = stack.logs();
        async move {
            let control = logs.split("--- cpub-proxy ---").next().unwrap_or_default();
            let access: Vec<Value> = control
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["target"] == "cpub_access")
                .filter(|v| {
                    v["span"]["id"]
                        .as_str()
                        .is_some_and(|id| id.starts_with("access-e2e-"))
                })
                .collect();
            (access.len() >= cases.len()).then_some(access)
        }
    })
    .await;
    for (id, path, route, status) in cases {
        let mine: Vec<&Value> = lines.iter().filter(|v| v["span"]["id"] == id).collect();
        assert_eq!(mine.len(), 1, "{id}: {lines:?}");
        let line = mine[0];
        assert_eq!(line["span"]["method"], "GET", "{line}");
        assert_eq!(line["span"]["path"], path, "{line}");
        assert_eq!(line["fields"]["route"], route, "{line}");
        assert_eq!(line["fields"]["status"], status, "{line}");
        assert!(line["fields"]["ms"].is_u64(), "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
    }
}

#[tokio::test]
async fn no_record_is_lost_while_the_control_plane_is_down() {
    let mut stack = Stack::start(&[]).await.expect("stack");
    // No memory buffer beyond the newest batch, so that the outage goes
    // through the spool.
    stack.stop_proxy();
    stack
        .proxy_env
        .push(("CPUB_EXECUTIONS_MEMORY_MB".into(), "0".into()));
    stack.start_proxy().await.expect("proxy");
    let name = format!("outage-{}", std::process::id());
    let url = stack.deploy("hello", &name, "");

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (url, stop) = (url.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut answered = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("outage-{w}-{i}");
                i += 1;
                if let Ok(r) = client.get(&url).header("x-request-id", &id).send().await
                    && r.bytes().await.is_ok()
                {
                    answered.push(id);
                }
            }
            answered
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.stop_control();
    let down = Instant::now();
    let mut spooled = 0.0f64;
    while down.elapsed() < Duration::from_secs(30) {
        if let Some(m) = stack.metrics().await {
            spooled = spooled.max(metric_sum(&m, "cpub_execution_spool_bytes", &[]).unwrap_or(0.0));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stack.start_control().await.expect("control back");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = HashSet::new();
    for w in workers {
        sent.extend(w.await.unwrap());
    }
    assert!(sent.len() > 1000, "only {} calls under load", sent.len());
    assert!(
        spooled > 0.0,
        "the outage never reached the spool ({} calls)",
        sent.len()
    );

    let db = stack.db().await;
    let sent = Arc::new(sent);
    let stored = eventually(Duration::from_secs(120), "every record stored", || {
        let (db, name, sent) = (db.clone(), name.clone(), sent.clone());
        async move {
            let rows: Vec<(String,)> =
                sqlx::query_as("SELECT request_id FROM executions WHERE function = $1")
                    .bind(&name)
                    .fetch_all(&db)
                    .await
                    .ok()?;
            let ids: HashSet<&str> = rows.iter().map(|r| r.0.as_str()).collect();
            sent.iter()
                .all(|id| ids.contains(id.as_str()))
                .then_some(rows)
        }
    })
    .await;
    let stored_ids: HashSet<String> = stored.iter().map(|r| r.0.clone()).collect();
    let missing: Vec<_> = sent
        .iter()
        .filter(|id| !stored_ids.contains(*id))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "records lost, e.g. {missing:?}");
    assert_eq!(stored.len(), stored_ids.len(), "a record was stored twice");
    let m = stack.metrics().await.unwrap();
    assert_eq!(
        metric_sum(&m, "cpub_execution_records_dropped_total", &[]),
        Some(0.0)
    );
    // The proxy said so once when the outage began and once when it
    // ended, not at each of its thirty tries.
    let logs = stack.logs();
    let lines = |what: &str| {
        logs.lines()
            .filter(|l| l.contains(what) && l.contains("execution records"))
            .count()
    };
    let (began, ended) = (
        lines("cannot deliver to the control plane"),
        lines("delivering to the control plane again"),
    );
    assert!(
        (1..=2).contains(&began) && ended >= 1,
        "outage told {began} times, its end {ended} times:\n{logs}"
    );
    eprintln!(
        "{} calls, all recorded; spool peaked at {} bytes",
        sent.len(),
        spooled
    );
    stack.cpub_ok(&["delete", &name]);
}
