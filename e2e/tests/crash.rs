//! End-to-end tests of failure and clean-up on real Podman: a function that
//! crashes at start fails its callers fast with the reason, backs off, is
//! removed and shows in `cpub describe`; a function that never becomes
//! ready shows in `cpub status` as a `not_ready` start failure; a deleted
//! function leaves nothing behind (containers, images, artifacts, rows),
//! even when its instance was paused.

use std::path::Path;
use std::time::{Duration, Instant};

use containerpub_e2e::{
    RemoveImages, Stack, busybox_bundle, container_state, eventually, function_images, metric_sum,
};

/// A `runtime = "container"` bundle whose process prints `boom` and exits
/// with code 3.
fn crashing_bundle(name: &str) -> tempfile::TempDir {
    busybox_bundle(
        name,
        r#"["/busybox", "sh", "-c", "echo starting; echo boom; exit 3"]"#,
        "[resources]\nmemory_mb = 32\n[scaling]\nconcurrency = 1\nmax_instances = 10\n",
    )
}

/// A `runtime = "container"` bundle whose process lives on and never
/// listens (busybox's `sleep`): its starts end at the start timeout.
fn silent_bundle(name: &str) -> tempfile::TempDir {
    busybox_bundle(
        name,
        r#"["/busybox", "sleep", "3600"]"#,
        "[resources]\nmemory_mb = 32\n[scaling]\nconcurrency = 1\nmax_instances = 2\n",
    )
}

async fn call(client: &reqwest::Client, url: &str) -> (u16, String) {
    let r = client.get(url).send().await.expect("call");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn a_crashing_function_fails_fast_says_why_backs_off_and_shows_in_describe() {
    let stack = Stack::start(&[]).await.unwrap();
    let name = "crash-at-start";
    let _cleanup = RemoveImages::of(&[name]);
    let bundle = crashing_bundle(name);
    stack.cpub_ok(&["deploy", bundle.path().to_str().unwrap()]);
    let url = format!("{}/fn/{name}/", stack.proxy_url());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // The first call waits for a cold start that crashes: a 502 that says
    // why, well before the 10 s queue timeout (and the 30 s start timeout).
    let began = Instant::now();
    let (status, body) = call(&client, &url).await;
    let took = began.elapsed();
    eprintln!("first call: {status} after {took:?}: {body}");
    assert_eq!(status, 502, "{body}\n{}", stack.logs());
    assert!(
        took < Duration::from_secs(5),
        "the crash took {took:?} to reach the caller"
    );
    assert!(body.contains("exited with code 3"), "{body}");
    assert!(body.contains("boom"), "{body}");

    // A burst, then calls for 3 s: all fail fast with the last crash, and
    // the back-off keeps the number of containers started small.
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { call(&client, &url).await })
        })
        .collect();
    for b in burst {
        let (status, body) = b.await.unwrap();
        assert_eq!(status, 502, "{body}");
        assert!(body.contains("code 3"), "{body}");
    }
    let until = Instant::now() + Duration::from_secs(3);
    let mut calls = 0;
    let mut slowest = Duration::ZERO;
    while Instant::now() < until {
        let began = Instant::now();
        let (status, body) = call(&client, &url).await;
        slowest = slowest.max(began.elapsed());
        assert_eq!(status, 502, "{body}");
        assert!(body.contains("boom"), "{body}");
        calls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = stack.metrics().await.expect("metrics");
    let starts = metric_sum(
        &text,
        "cpub_cold_starts_total",
        &[("function", name), ("kind", "cold")],
    )
    .unwrap_or(0.0);
    let crashes = metric_sum(
        &text,
        "cpub_pool_instance_crashes_total",
        &[("function", name)],
    )
    .unwrap_or(0.0);
    eprintln!(
        "{} calls in all: {starts} starts, {crashes} crashes counted, slowest later call {slowest:?}",
        calls + 21
    );
    assert!(
        (1.0..=4.0).contains(&starts),
        "{starts} containers started for {} calls of a crashing function",
        calls + 21
    );
    assert!(
        crashes >= 1.0 && crashes <= starts,
        "{crashes} crashes, {starts} starts"
    );

    // The exited containers go at once, not after a 30 s start timeout.
    eventually(
        Duration::from_secs(5),
        "the crashed containers are removed",
        || async { stack.containers(Some(name)).is_empty().then_some(()) },
    )
    .await;

    // The proxy reported the crash; describe shows it (API and CLI).
    let crashes: Vec<serde_json::Value> = eventually(
        Duration::from_secs(5),
        "the crash reaches the control plane",
        || async {
            let r = stack
                .api()
                .get(format!(
                    "{}/api/v1/functions/{name}/crashes",
                    stack.control_url()
                ))
                .send()
                .await
                .ok()?;
            let v: Vec<serde_json::Value> = r.json().await.ok()?;
            (!v.is_empty()).then_some(v)
        },
    )
    .await;
    assert_eq!(crashes.len(), 1, "{crashes:?}");
    assert_eq!(crashes[0]["node"], stack.node.as_str());
    assert_eq!(crashes[0]["exit_code"], 3);
    assert_eq!(crashes[0]["version"], 1);
    assert_eq!(crashes[0]["during_start"], true);
    assert!(crashes[0]["output"].as_str().unwrap().contains("boom"));
    let described = stack.cpub_ok(&["describe", name]);
    assert!(
        described.contains("exited with code 3 while starting") && described.contains("| boom"),
        "{described}"
    );
    stack.cpub_ok(&["delete", name]);
    let images = function_images(name).unwrap();
    assert!(images.is_empty(), "{images:?}");
}

#[tokio::test]
async fn a_function_that_never_becomes_ready_shows_in_cpub_status_as_not_ready() {
    // A short start timeout, so the start fails before the call's queue
    // timeout (10 s).
    let stack = Stack::start_with(&[], &[("CPUB_START_TIMEOUT_S", "2")])
        .await
        .unwrap();
    let name = format!("never-ready-{}", std::process::id());
    let _cleanup = RemoveImages::of(&[&name]);
    let bundle = silent_bundle(&name);
    stack.cpub_ok(&["deploy", bundle.path().to_str().unwrap()]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let (status, body) = call(&client, &format!("{}/fn/{name}/", stack.proxy_url())).await;
    assert_eq!(status, 502, "{body}\n{}", stack.logs());

    // The node's next report brings it to `cpub status` (every 5 s).
    let failure = eventually(
        Duration::from_secs(20),
        "the failed start in cpub status",
        || {
            let out = stack.cpub(&["status", "-o", "json"]);
            let name = name.clone();
            async move {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                v["start_failures"]
                    .as_array()?
                    .iter()
                    .find(|f| f["function"] == name.as_str())
                    .cloned()
            }
        },
    )
    .await;
    assert_eq!(failure["reason"], "not_ready", "{failure}");
    assert_eq!(failure["node"], stack.node.as_str(), "{failure}");
    assert!(
        failure["count"].as_i64().is_some_and(|n| n >= 1),
        "{failure}"
    );
    assert_eq!(
        failure["counts"]["not_ready"], failure["count"],
        "{failure}"
    );
    assert!(failure["exit_code"].is_null(), "{failure}");
    let message = failure["message"].as_str().unwrap_or_default();
    assert!(message.contains("not ready within 2000 ms"), "{failure}");
    let table = stack.cpub_ok(&["status"]);
    assert!(
        table.contains("start failures") && table.contains(&name) && table.contains("not_ready"),
        "{table}"
    );
    // Not a crash: nothing in `function_crashes`.
    let crashes: Vec<serde_json::Value> = stack
        .api()
        .get(format!(
            "{}/api/v1/functions/{name}/crashes",
            stack.control_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(crashes.is_empty(), "{crashes:?}");

    // A node report is checked and what is kept bounded: a bad reason is a
    // 400 naming it; a long message is cut to one line; a function that
    // does not exist and a failure older than an hour are not shown.
    let report = format!("{}/api/v1/nodes/e2e-other/status", stack.control_url());
    let entry = |function: &str, reason: &str, message: &str, age_ms: u64| {
        serde_json::json!({"function": function, "counts": {reason: 7},
            "last": {"reason": reason, "message": message, "age_ms": age_ms}})
    };
    let r = stack
        .api()
        .post(&report)
        .json(&serde_json::json!({"instances": [],
            "start_failures": [entry(&name, "Not Ready", "m", 0)]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["field"], "start_failures[0].counts", "{e}");
    // A function listed twice in one report: refused, naming the entry.
    let r = stack
        .api()
        .post(&report)
        .json(&serde_json::json!({"instances": [], "start_failures": [
            entry(&name, "runtime", "m", 0),
            entry(&name, "capacity", "m", 0),
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["field"], "start_failures[1].function", "{e}");
    let long = format!("engine said:\n\x1b[31m{}", "x".repeat(100_000));
    let r = stack
        .api()
        .post(&report)
        .json(&serde_json::json!({"instances": [], "start_failures": [
            entry(&name, "runtime", &long, 0),
            entry("no-such-function", "runtime", "m", 0),
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap_or_default());
    // Another node's failure of the same function, older than the hour.
    let old_report = format!("{}/api/v1/nodes/e2e-old/status", stack.control_url());
    let r = stack
        .api()
        .post(&old_report)
        .json(&serde_json::json!({"instances": [], "start_failures": [
            entry(&name, "capacity", "old", u64::MAX),
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap_or_default());
    let out = stack.cpub_ok(&["status", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let failures = v["start_failures"].as_array().unwrap();
    assert!(
        !failures.iter().any(|f| f["node"] == "e2e-old"),
        "a failure older than the hour is not shown: {failures:?}"
    );
    let rows: Vec<&serde_json::Value> = failures
        .iter()
        .filter(|f| f["node"] == "e2e-other")
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (&rows[0]["function"], &rows[0]["reason"], &rows[0]["count"]),
        (
            &serde_json::json!(name),
            &serde_json::json!("runtime"),
            &serde_json::json!(7)
        )
    );
    let message = rows[0]["message"].as_str().unwrap();
    assert!(message.starts_with("engine said: "), "{message}");
    assert!(
        message.len() <= 256 && !message.chars().any(char::is_control),
        "{message}"
    );
    stack.cpub_ok(&["delete", &name]);
}

/// Files under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn deleting_a_function_with_a_paused_instance_leaves_nothing_behind() {
    let stack = Stack::start(&[]).await.unwrap();
    let name = "gc-paused";
    let _cleanup = RemoveImages::of(&[name]);
    // Two versions: both images and artifacts exist until the delete.
    stack.deploy("hello", name, "\n[scaling]\nidle_pause_s = 1\n");
    let url = stack.deploy(
        "hello",
        name,
        "\n[env]\nGREETING = \"v2\"\n[scaling]\nidle_pause_s = 1\n",
    );
    let client = reqwest::Client::new();
    let (status, body) = call(&client, &url).await;
    assert_eq!(status, 200, "{body}\n{}", stack.logs());
    let images = function_images(name).unwrap();
    assert_eq!(images.len(), 2, "{images:?}");
    let artifacts_dir = stack.dir.path().join("control").join("artifacts");
    assert_eq!(files_under(&artifacts_dir).len(), 2, "two bundles stored");

    // Wait until the idle instance is paused.
    let id = eventually(
        Duration::from_secs(10),
        "the instance is paused",
        || async {
            stack
                .containers(Some(name))
                .into_iter()
                .find(|id| container_state(id).as_deref() == Some("paused"))
        },
    )
    .await;

    stack.cpub_ok(&["delete", name]);
    assert!(
        container_state(&id).is_none(),
        "the paused container is gone when delete answers"
    );
    assert!(stack.containers(Some(name)).is_empty());
    let images = function_images(name).unwrap();
    assert!(
        images.is_empty(),
        "images left: {images:?}\n{}",
        stack.logs()
    );
    assert!(
        files_under(&artifacts_dir).is_empty(),
        "artifacts left: {:?}",
        files_under(&artifacts_dir)
    );
    let db = stack.db().await;
    for (table, query) in [
        ("functions", "SELECT count(*) FROM functions"),
        ("deployments", "SELECT count(*) FROM deployments"),
        ("function_crashes", "SELECT count(*) FROM function_crashes"),
    ] {
        let n: i64 = sqlx::query_scalar(query).fetch_one(&db).await.unwrap();
        assert_eq!(n, 0, "rows left in {table}");
    }
    db.close().await;
}
