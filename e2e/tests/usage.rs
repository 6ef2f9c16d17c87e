//! End-to-end tests of the per-function resource and keep-warm figures on
//! the real stack (issues 11 and 15): a function that holds memory and
//! burns CPU shows both in `cpub stats` (JSON and table) and in the proxy's
//! metrics; one that allocates past its memory limit is killed for memory,
//! and the OOM kill and the restart are counted once; a function with
//! keep-warm on, paused past its idle stop and called again, shows one hit
//! in `cpub describe`; the same function whose kept instance died before
//! the call shows a miss.

use std::time::Duration;

use containerpub_e2e::{Stack, eventually, metric_sum, start_kind_of};
use serde_json::Value;

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

const MIB: u64 = 1024 * 1024;

/// `cpub stats NAME -o json`'s `resources` once `ok` holds for them.
async fn resources_when(
    stack: &Stack,
    name: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    eventually(Duration::from_secs(30), what, || {
        let out = stack.cpub(&["stats", name, "-o", "json"]);
        let stats = json(&String::from_utf8_lossy(&out.stdout));
        let r = stats["resources"].clone();
        let hit = ok(&r).then_some(r);
        async move { hit }
    })
    .await
}

#[tokio::test]
async fn memory_cpu_and_oom_kills_of_a_function_show_in_stats_and_metrics() {
    let stack = Stack::start(&[]).await.expect("stack");
    let name = format!("usage-{}", std::process::id());
    // chatty's manifest: 32 MiB.
    let url = stack.deploy("chatty", &name, "");
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{url}burn?mb=12&ms=1000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", stack.logs());
    let body = r.text().await.unwrap();
    assert!(body.starts_with("held 12 MiB, burned "), "{body}");

    // Reported every 5 s; the instance holds its 12 MiB until it stops.
    let r = resources_when(&stack, &name, "memory and CPU in stats", |r| {
        r["memory_bytes"].as_u64().is_some_and(|m| m >= 12 * MIB)
            // chatty's CPU limit is a quarter of a core: 1 s of spinning
            // is about 0.25 s of CPU.
            && r["cpu_seconds"].as_f64().is_some_and(|c| c >= 0.15)
    })
    .await;
    let memory = r["memory_bytes"].as_u64().unwrap();
    assert_eq!(r["instance_memory_limit_bytes"], 32 * MIB, "{r}");
    assert_eq!(r["memory_limit_bytes"], 32 * MIB, "{r}");
    assert!(memory <= 32 * MIB, "{r}");
    assert!(
        r["instance_memory_peak_bytes"].as_u64().unwrap() >= memory,
        "{r}"
    );
    assert_eq!(r["instances"], 1, "{r}");
    assert_eq!(
        (r["oom_kills"].as_u64(), r["restarts"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    let table = stack.cpub_ok(&["stats", &name]);
    assert!(
        table.contains("cpu:") && table.contains("since the proxies started"),
        "{table}"
    );
    assert!(
        table.contains("MiB in use of 32.0 MiB (1 instance)"),
        "{table}"
    );
    assert!(table.contains("oom kills:   0"), "{table}");
    let metrics = stack.metrics().await.unwrap();
    let labels = [("function", name.as_str())];
    assert!(
        metric_sum(&metrics, "cpub_instance_cpu_seconds_total", &labels).unwrap() >= 0.15,
        "{metrics}"
    );
    assert!(
        metric_sum(&metrics, "cpub_instance_memory_bytes", &labels).unwrap() >= (12 * MIB) as f64
    );

    // Past the limit: the kernel kills the instance; the call gets no answer.
    let r = client.get(format!("{url}burn?mb=64")).send().await.unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    // The proxy may have tried the call again on a new instance, which
    // was killed too: every restart here is one OOM kill, each counted
    // once, in stats and in the metric alike.
    let oom = eventually(
        Duration::from_secs(30),
        "the OOM kills in stats and metrics",
        || {
            let out = stack.cpub(&["stats", &name, "-o", "json"]);
            let stack = &stack;
            async move {
                let r = json(&String::from_utf8_lossy(&out.stdout))["resources"].clone();
                let kills = r["oom_kills"].as_u64()?;
                let metrics = stack.metrics().await?;
                let scraped = metric_sum(&metrics, "cpub_instance_oom_kills_total", &labels)?;
                (kills >= 1 && r["restarts"].as_u64() == Some(kills) && scraped == kills as f64)
                    .then_some(kills)
            }
        },
    )
    .await;
    assert!(oom <= 3, "one call, at most a few tries: {oom}");
    let describe = stack.cpub_ok(&["describe", &name]);
    assert!(
        describe.contains(&format!("oom kills:   {oom}")),
        "{describe}"
    );
    // The function serves again (a new instance).
    let r = client.get(format!("{url}burn?mb=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // A function no node reports: no resources, and a clear line.
    let idle = format!("usage-idle-{}", std::process::id());
    stack.deploy("hello", &idle, "\n[scaling]\nkeep_warm = false\n");
    let stats = json(&stack.cpub_ok(&["stats", &idle, "-o", "json"]));
    assert!(
        stats["resources"].is_null()
            || stats["resources"]["instances"] == 0 && stats["resources"]["memory_bytes"] == 0,
        "{stats}"
    );
    // An unknown function is a 404 for the usage too.
    let r = stack
        .api()
        .get(format!(
            "{}/api/v1/functions/nope-nope/usage",
            stack.control_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    stack.cpub_ok(&["delete", &name]);
    stack.cpub_ok(&["delete", &idle]);
}

/// `cpub describe NAME -o json`'s `usage.total` once `ok` holds for it.
async fn keep_warm_when(
    stack: &Stack,
    name: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    eventually(Duration::from_secs(40), what, || {
        let out = stack.cpub(&["describe", name, "-o", "json"]);
        let v = json(&String::from_utf8_lossy(&out.stdout));
        let total = v["usage"]["total"].clone();
        let hit = ok(&total).then_some(total);
        async move { hit }
    })
    .await
}

#[tokio::test]
async fn keep_warm_hits_and_misses_show_in_describe() {
    let stack = Stack::start(&[]).await.expect("stack");
    let name = format!("warm-{}", std::process::id());
    let url = stack.deploy(
        "hello",
        &name,
        "\n[scaling]\nidle_pause_s = 1\nidle_stop_s = 2\nkeep_warm = true\n",
    );
    let client = reqwest::Client::new();
    let call = || async {
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let kind = start_kind_of(r.headers());
        r.bytes().await.unwrap();
        kind
    };
    assert_eq!(call().await.as_deref(), Some("cold"));
    // Paused after 1 s, kept past its stop at 2 s.
    keep_warm_when(&stack, &name, "the instance kept warm", |t| {
        t["keep_warm_kept"] == 1
    })
    .await;
    assert_eq!(call().await.as_deref(), Some("paused"), "{}", stack.logs());
    let t = keep_warm_when(&stack, &name, "one hit", |t| t["keep_warm_hits"] == 1).await;
    assert_eq!(t["keep_warm_misses"], 0, "{t}");
    let out = stack.cpub_ok(&["describe", &name]);
    assert!(out.contains("keep-warm:   on (manifest)"), "{out}");
    assert!(out.contains("1 hits, 0 misses"), "{out}");
    let v = json(&stack.cpub_ok(&["describe", &name, "-o", "json"]));
    let node = &v["usage"]["nodes"][0];
    assert_eq!(node["node"], stack.node.as_str(), "{v}");
    assert_eq!(node["keep_warm"], true, "{v}");
    assert!(
        node["keep_warm_window_s"].as_u64().is_some_and(|w| w > 0),
        "{v}"
    );

    // Kept again; then its instance dies (killed from outside): the next
    // call is a cold start keep-warm wanted to avoid — a miss.
    keep_warm_when(&stack, &name, "kept again", |t| t["keep_warm_kept"] == 2).await;
    let ids = stack.containers(Some(&name));
    assert_eq!(ids.len(), 1, "{ids:?}");
    // Frozen (the pool pauses through the cgroup freezer): a signal is
    // taken only once thawed.
    assert_eq!(
        containerpub_e2e::container_state(&ids[0]).as_deref(),
        Some("paused")
    );
    containerpub_e2e::thaw(&ids[0]);
    containerpub_e2e::bench::podman(&["kill", &ids[0]]).expect("podman kill");
    eventually(
        Duration::from_secs(20),
        "the dead instance removed",
        || async { stack.containers(Some(&name)).is_empty().then_some(()) },
    )
    .await;
    assert_eq!(call().await.as_deref(), Some("cold"));
    let t = keep_warm_when(&stack, &name, "one miss", |t| t["keep_warm_misses"] == 1).await;
    assert_eq!(t["keep_warm_hits"], 1, "{t}");
    let metrics = stack.metrics().await.unwrap();
    for (result, n) in [("hit", 1.0), ("miss", 1.0)] {
        assert_eq!(
            metric_sum(
                &metrics,
                "cpub_keep_warm_total",
                &[("function", name.as_str()), ("result", result)]
            ),
            Some(n),
            "{result}: {metrics}"
        );
    }
    let out = stack.cpub_ok(&["describe", &name]);
    assert!(out.contains("1 hits, 1 misses"), "{out}");

    // Keep-warm off in the manifest: described as such, never kept.
    let off = format!("cold-{}", std::process::id());
    stack.deploy(
        "hello",
        &off,
        "\n[scaling]\nidle_pause_s = 1\nidle_stop_s = 2\nkeep_warm = false\n",
    );
    let out = stack.cpub_ok(&["describe", &off]);
    assert!(out.contains("keep-warm:   off (manifest)"), "{out}");
    stack.cpub_ok(&["delete", &name]);
    stack.cpub_ok(&["delete", &off]);
}
