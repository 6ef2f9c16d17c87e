//! End-to-end tests on the real stack (PostgreSQL, Podman, cpub-control,
//! cpub-proxy, cpub): the life of a function from deploy to delete, the
//! function contract, refused uploads, serving while the control plane
//! is down, and one proxy per state directory.

use std::time::Duration;

use containerpub_e2e::{Stack, bundle, eventually, targz};
use serde_json::Value;

const BUILD: Duration = Duration::from_secs(60);

async fn get(url: &str) -> (u16, String, reqwest::header::HeaderMap) {
    let r = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.text().await.unwrap(), headers)
}

/// Deploys examples/hello as `name` and waits until the proxy routes it;
/// returns its URL.
async fn deploy_hello(stack: &Stack, name: &str) -> String {
    let dir = bundle("hello", name, "");
    stack.cpub_ok(&["deploy", dir.path().to_str().unwrap()]);
    let url = format!("{}/fn/{name}/", stack.proxy_url());
    eventually(Duration::from_secs(15), "function routed", || async {
        (get(&url).await.0 == 200).then_some(())
    })
    .await;
    url
}

fn start_kind(headers: &reqwest::header::HeaderMap) -> String {
    let timing = headers
        .get("server-timing")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    timing
        .split(',')
        .find_map(|part| {
            part.trim()
                .strip_prefix("start;desc=\"")
                .and_then(|r| r.split('"').next())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no start entry in server-timing {timing:?}"))
}

#[tokio::test]
async fn deploy_call_redeploy_delete() {
    let stack = Stack::start(&[]).await.unwrap();
    let name = "hello-life";
    let dir = bundle("hello", name, "");
    let out = stack.cpub_ok(&["deploy", dir.path().to_str().unwrap()]);
    let url = format!("{}/fn/{name}/", stack.proxy_url());
    assert!(
        out.contains(&url),
        "deploy prints the function URL {url}:\n{out}"
    );

    // First call starts the container; the second reuses it.
    let (status, body, headers) = get(&url).await;
    assert_eq!(status, 200, "{body}\n{}", stack.logs());
    assert_eq!(body, "hello from ContainerPub\n");
    assert_eq!(start_kind(&headers), "cold");
    let (status, _, headers) = get(&format!("{url}again")).await;
    assert_eq!(status, 200);
    assert_eq!(start_kind(&headers), "warm");
    assert_eq!(
        stack.containers(Some(name)).len(),
        1,
        "one container serves both calls"
    );

    // Listing and describing through the CLI.
    let list: Value = serde_json::from_str(&stack.cpub_ok(&["list", "--output", "json"])).unwrap();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .expect("listed");
    assert_eq!(row["active_version"], 1);

    // A changed version replaces the old one.
    let dir2 = bundle("hello", name, "\n[env]\nGREETING = \"bonjour\"\n");
    stack.cpub_ok(&["deploy", dir2.path().to_str().unwrap()]);
    eventually(Duration::from_secs(15), "new version serves", || async {
        let (status, body, _) = get(&url).await;
        (status == 200 && body == "bonjour from ContainerPub\n").then_some(())
    })
    .await;
    eventually(Duration::from_secs(15), "old container removed", || async {
        (stack.containers(Some(name)).len() == 1).then_some(())
    })
    .await;
    let deployments: Value = serde_json::from_slice(
        &stack
            .api()
            .get(format!(
                "{}/api/v1/functions/{name}/deployments",
                stack.control_url()
            ))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let statuses: Vec<&str> = deployments
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["active", "superseded"], "newest first");

    // `cpub invoke` goes through the proxy too.
    let invoked = stack.cpub_ok(&["invoke", name, "--path", "/x"]);
    assert_eq!(invoked.trim_end(), "bonjour from ContainerPub");

    // Delete: 404 through the proxy, and no container left.
    stack.cpub_ok(&["delete", name]);
    eventually(
        Duration::from_secs(15),
        "deleted function answers 404",
        || async {
            let (status, body, _) = get(&url).await;
            (status == 404 && body.contains(name)).then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "containers of a deleted function removed",
        || async { stack.containers(Some(name)).is_empty().then_some(()) },
    )
    .await;
    let (status, _, _) = get(&format!("{}/fn/never-deployed/", stack.proxy_url())).await;
    assert_eq!(status, 404, "unknown function");
}

#[tokio::test]
async fn echo_proves_the_function_contract() {
    let stack = Stack::start(&[]).await.unwrap();
    let dir = bundle("echo", "echo-contract", "");
    stack.cpub_ok(&["deploy", dir.path().to_str().unwrap()]);
    let url = format!("{}/fn/echo-contract/some/path?x=1&y=two", stack.proxy_url());
    let r = reqwest::Client::new()
        .put(&url)
        .header("x-custom", "value")
        .header("x-request-id", "e2e-request-1")
        .body("payload bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", stack.logs());
    assert_eq!(r.headers()["x-request-id"], "e2e-request-1");
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/some/path", "prefix stripped");
    assert_eq!(echo["query"], "x=1&y=two");
    assert_eq!(echo["body"], "payload bytes");
    let headers = &echo["headers"];
    assert_eq!(headers["x-custom"], "value");
    assert_eq!(headers["x-request-id"], "e2e-request-1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert!(
        headers["x-forwarded-for"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "{headers}"
    );
}

#[tokio::test]
async fn refused_uploads_name_what_was_wrong() {
    let stack = Stack::start(&[("CPUB_MAX_UPLOAD_BYTES", "1048576")])
        .await
        .unwrap();
    let api = stack.api();
    let deploy = |name: &str, body: Vec<u8>| {
        api.post(format!(
            "{}/api/v1/functions/{name}/deployments",
            stack.control_url()
        ))
        .header("content-type", "application/gzip")
        .body(body)
        .send()
    };

    let bad_manifest = targz(&[(
        "cpub.toml",
        b"name = \"bad\"\nruntime = \"container\"\n[scaling]\nmax_instances = 0\n",
        0o644,
    )]);
    let r = deploy("bad", bad_manifest).await.unwrap();
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["field"], "scaling.max_instances", "{err}");

    let unknown_key = targz(&[(
        "cpub.toml",
        b"name = \"bad\"\nruntime = \"container\"\ncolour = 1\n",
        0o644,
    )]);
    let err: Value = deploy("bad", unknown_key)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(err["field"], "colour", "{err}");

    let traversal = targz(&[
        (
            "cpub.toml",
            b"name = \"bad\"\nruntime = \"container\"\n",
            0o644,
        ),
        ("../../etc/evil", b"x", 0o644),
    ]);
    let r = deploy("bad", traversal).await.unwrap();
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert!(err["error"].as_str().unwrap().contains(".."), "{err}");

    // Incompressible bytes over the 1 MiB limit.
    let mut big = Vec::with_capacity(1_200_000);
    let mut x: u32 = 1;
    while big.len() < 1_200_000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        big.extend_from_slice(&x.to_le_bytes());
    }
    let r = deploy("bad", big).await.unwrap();
    assert_eq!(r.status(), 413);

    let r = deploy("Bad_Name", targz(&[])).await.unwrap();
    assert_eq!(r.status(), 400);

    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/functions", stack.control_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no token");
    let r = stack
        .api()
        .get(format!("{}/api/v1/functions/nope", stack.control_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Nothing was recorded or left running by the refused uploads.
    let list: Value = stack
        .api()
        .get(format!("{}/api/v1/functions", stack.control_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, serde_json::json!([]));
    assert!(stack.containers(None).is_empty());
}

#[tokio::test]
async fn functions_keep_answering_without_the_control_plane() {
    let mut stack = Stack::start(&[]).await.unwrap();
    let name = "hello-offline";
    let url = deploy_hello(&stack, name).await;

    stack.stop_control();
    let (status, body, _) = get(&url).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "hello from ContainerPub\n"),
        "control plane down"
    );

    // A proxy restarted while the control plane is down serves from its snapshot.
    stack.stop_proxy();
    stack.start_proxy().await.unwrap();
    let (status, body, _) = get(&url).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "hello from ContainerPub\n"),
        "restarted proxy, control down:\n{}",
        stack.logs()
    );

    // And it catches up when the control plane is back.
    stack.start_control().await.unwrap();
    stack.cpub_ok(&["delete", name]);
    eventually(
        BUILD,
        "delete seen after the control plane came back",
        || async { (get(&url).await.0 == 404).then_some(()) },
    )
    .await;
}

/// A second cpub-proxy started by mistake with the running one's state
/// directory (and node) stops before it touches anything: it does not adopt
/// (and remove) the running proxy's instances, and says who holds the
/// directory.
#[tokio::test]
async fn a_second_proxy_on_the_same_state_directory_stops_and_touches_nothing() {
    let stack = Stack::start(&[]).await.unwrap();
    let name = "hello-one-proxy";
    let url = deploy_hello(&stack, name).await;
    let before = stack.containers(Some(name));
    assert_eq!(before.len(), 1, "one instance after the call: {before:?}");

    let (status, output) = stack.run_second_proxy(Duration::from_secs(10)).unwrap();
    let status = status.unwrap_or_else(|| panic!("the second proxy kept running:\n{output}"));
    assert_eq!(status.code(), Some(1), "{output}");
    let holder = format!("(pid {})", stack.proxy_pid().unwrap());
    assert!(
        output.contains("held by another process") && output.contains(&holder),
        "the refusal names the holder {holder}:\n{output}"
    );

    assert_eq!(stack.containers(Some(name)), before, "instances untouched");
    let (status, body, headers) = get(&url).await;
    assert_eq!((status, body.as_str()), (200, "hello from ContainerPub\n"));
    // Warm, or paused if its idle time ran out meanwhile: not a new one.
    assert_ne!(start_kind(&headers), "cold", "the same instance answers");
}
