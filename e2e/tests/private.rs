//! End-to-end tests of issue 10's access part on the real stack: private
//! functions (401 without a key, 403 with a wrong or revoked one, 200 with
//! either header form, the key never reaching the function, revocation
//! within a second), secrets (injected as environment, never shown by
//! `describe`, `secret list` or the logs), the `cpub deploy` warning, and
//! `/metrics` only on the proxy's admin listener.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use containerpub_e2e::{Stack, bundle, eventually, metric_sum};
use serde_json::Value;

/// `example` as function `name` with `visibility` replaced by `visibility`
/// (or removed when `None`).
fn private_bundle(example: &str, name: &str, visibility: Option<&str>) -> tempfile::TempDir {
    let dir = bundle(example, name, "");
    let path = dir.path().join("cpub.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let line = "visibility = \"public\"\n";
    assert!(text.contains(line), "the example sets visibility");
    let replacement = visibility.map_or_else(String::new, |v| format!("visibility = \"{v}\"\n"));
    std::fs::write(&path, text.replace(line, &replacement)).unwrap();
    dir
}

async fn call(url: &str, headers: &[(&str, &str)]) -> (u16, reqwest::header::HeaderMap, String) {
    let client = reqwest::Client::new();
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let r = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

/// The header names the echo function received.
fn received_headers(body: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["headers"]
        .as_object()
        .expect("headers object")
        .keys()
        .cloned()
        .collect()
}

#[tokio::test]
async fn private_functions_need_a_live_key_which_never_reaches_them() {
    let stack = Stack::start(&[]).await.unwrap();
    let name = "priv-echo";
    let dir = private_bundle("echo", name, None);
    let out = stack.cpub(&["deploy", dir.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "deploy failed: {stderr}");
    assert!(
        stderr.contains("does not set `visibility`") && stderr.contains("private"),
        "deploy warns about the implicit visibility:\n{stderr}"
    );
    let url = format!("{}/fn/{name}/", stack.proxy_url());

    // No key: 401 with a challenge, and the function is never started.
    let (status, headers, body) = call(&url, &[]).await;
    assert_eq!(status, 401, "{body}\n{}", stack.logs());
    assert_eq!(
        headers.get("www-authenticate").map(|v| v.to_str().unwrap()),
        Some("Bearer realm=\"cpub\"")
    );
    assert!(body.contains("cpub key create"), "{body}");
    assert!(
        stack.containers(Some(name)).is_empty(),
        "no instance for a refused call"
    );

    let key = stack.cpub_ok(&["key", "create", name, "--label", "e2e"]);
    let key = key.trim().to_owned();
    assert!(key.starts_with("cpk_") && key.len() == 68, "{key:?}");
    let listed = stack.cpub_ok(&["key", "list", name]);
    assert!(listed.contains("e2e") && !listed.contains(&key), "{listed}");

    // Either header form passes, and neither reaches the function.
    let bearer = format!("Bearer {key}");
    for headers in [
        vec![("x-cpub-key", key.as_str())],
        vec![("authorization", bearer.as_str())],
    ] {
        let (status, _, body) = call(&format!("{url}h"), &headers).await;
        assert_eq!(status, 200, "{headers:?}: {body}\n{}", stack.logs());
        let seen = received_headers(&body);
        assert!(
            !seen
                .iter()
                .any(|h| h == "x-cpub-key" || h == "authorization"),
            "the key reached the function: {seen:?}"
        );
        assert!(!body.contains(&key), "the key reached the function: {body}");
    }
    // With x-cpub-key, the function keeps its own Authorization.
    let (status, _, body) = call(
        &url,
        &[("x-cpub-key", &key), ("authorization", "Basic YTpi")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(received_headers(&body).contains(&"authorization".to_owned()));

    // Wrong keys: 403, in both forms.
    let wrong = format!("cpk_{}", "0".repeat(64));
    let wrong_bearer = format!("Bearer {wrong}");
    for headers in [
        vec![("x-cpub-key", wrong.as_str())],
        vec![("authorization", wrong_bearer.as_str())],
        vec![("x-cpub-key", "short")],
    ] {
        let (status, headers_back, body) = call(&url, &headers).await;
        assert_eq!(status, 403, "{headers:?}: {body}");
        assert!(headers_back.get("www-authenticate").is_none());
    }

    // Revocation: refused (403) within a second.
    let id = stack
        .cpub_ok(&["key", "list", name, "-o", "json"])
        .parse::<Value>()
        .unwrap()[0]["id"]
        .as_i64()
        .unwrap();
    let began = Instant::now();
    stack.cpub_ok(&["key", "revoke", name, &id.to_string()]);
    let revoked_at = Instant::now();
    loop {
        let (status, _, _) = call(&url, &[("x-cpub-key", &key)]).await;
        if status == 403 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "a revoked key still served 1 s after `cpub key revoke` returned"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "revocation: refused {} ms after `cpub key revoke` started ({} ms after it returned)",
        began.elapsed().as_millis(),
        revoked_at.elapsed().as_millis()
    );

    // Counted on the admin listener; the public one has no /metrics.
    let text = stack.metrics().await.expect("admin /metrics");
    for reason in ["missing_key", "bad_key"] {
        let n = metric_sum(&text, "cpub_proxy_rejections_total", &[("reason", reason)]);
        assert!(n.unwrap_or(0.0) >= 1.0, "{reason}: {n:?}");
    }
    let (status, _, _) = call(&format!("{}/metrics", stack.proxy_url()), &[]).await;
    assert_eq!(status, 404, "the public listener serves no /metrics");
    let (status, _, _) = call(&format!("{}/healthz", stack.proxy_url()), &[]).await;
    assert_eq!(status, 200);

    // Explicit visibility: no warning; public needs no key.
    let dir = private_bundle("echo", name, Some("public"));
    let out = stack.cpub(&["deploy", dir.path().to_str().unwrap()]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("does not set"));
    let (status, _, body) = call(&url, &[]).await;
    assert_eq!(status, 200, "{body}");
}

/// Runs `cpub secret set` with `value` on stdin.
fn set_secret_from_stdin(stack: &Stack, function: &str, key: &str, value: &str) {
    let mut child = Command::new(containerpub_e2e::bin("cpub"))
        .args(["secret", "set", function, key])
        .env("CPUB_URL", stack.control_url())
        .env("CPUB_TOKEN", &stack.token)
        .env("CPUB_CONFIG", stack.dir.path().join("cli-config.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running cpub");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{value}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cpub secret set (stdin) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn secrets_reach_the_environment_and_nothing_else() {
    let stack = Stack::start(&[]).await.unwrap();
    let name = "secret-hello";
    stack.deploy("hello", name, "");
    let url = format!("{}/fn/{name}/", stack.proxy_url());
    let value = "s3cr3t-greeting-7f1d";

    // The value never goes on a command line: a file, or stdin.
    let file = stack.dir.path().join("greeting.txt");
    std::fs::write(&file, format!("{value}\n")).unwrap();
    stack.cpub_ok(&[
        "secret",
        "set",
        name,
        "GREETING",
        "--from-file",
        file.to_str().unwrap(),
    ]);
    set_secret_from_stdin(&stack, name, "OTHER", "from-stdin");
    let listed = stack.cpub_ok(&["secret", "list", name]);
    assert!(
        listed.contains("GREETING") && listed.contains("OTHER"),
        "{listed}"
    );

    // Instances started after the change have it (a redeploy starts them).
    stack.deploy("hello", name, "");
    let (status, _, body) = call(&url, &[]).await;
    assert_eq!(status, 200, "{body}\n{}", stack.logs());
    assert_eq!(body, format!("{value} from ContainerPub\n"));

    for args in [
        vec!["describe", name],
        vec!["describe", name, "-o", "json"],
        vec!["secret", "list", name, "-o", "json"],
        vec!["list", "-o", "json"],
    ] {
        let out = stack.cpub_ok(&args);
        assert!(
            !out.contains(value),
            "cpub {args:?} shows the value:\n{out}"
        );
    }
    assert!(!stack.logs().contains(value), "a log shows the value");
    // At rest: sealed in the database.
    let db = stack.db().await;
    let raw: Vec<Vec<u8>> = sqlx::query_scalar("SELECT ciphertext FROM function_secrets")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(raw.len(), 2);
    assert!(raw.iter().all(|c| !c.windows(6).any(|w| w == b"s3cr3t")));

    // The new deployment's instance replaces the running one once ready.
    stack.cpub_ok(&["secret", "unset", name, "GREETING"]);
    stack.deploy("hello", name, "");
    eventually(
        Duration::from_secs(30),
        "the redeployed function answers without the unset secret",
        || async {
            let (_, _, body) = call(&url, &[]).await;
            (body == "hello from ContainerPub\n").then_some(())
        },
    )
    .await;
    let out = stack.cpub(&["secret", "unset", name, "GREETING"]);
    assert!(!out.status.success(), "unsetting a missing secret fails");
}
