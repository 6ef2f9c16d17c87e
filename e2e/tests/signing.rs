//! End-to-end tests of HMAC request signing (issue 10) on the real stack: a
//! private echo function with `[access] auth = "signature"`; a call signed
//! by `cpub invoke --sign` and one signed by hand pass, without the
//! signature reaching the function; every refusal (no signature, a key
//! alone, an unknown key, a tampered body, path or method, a stale or
//! future ts, a replay, a revoked key within a second) is a 401 naming what
//! is wrong, and the proxy's execution records show none of them reached an
//! instance; a viewer cannot create a signing key, and the audit log holds
//! the creation and the revocation (never the secret).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use containerpub_e2e::{Stack, bundle, eventually};
use containerpub_wire::signing::header_value;
use reqwest::Method;
use serde_json::{Value, json};

const NAME: &str = "sig-echo";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// One call to the proxy with a request id; answers (status, body).
async fn send(
    url: &str,
    method: Method,
    body: &[u8],
    headers: &[(&str, String)],
    id: &str,
) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .header("x-request-id", id)
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let r = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn signed_calls_pass_and_every_refusal_is_401_before_the_function() {
    let stack = Stack::start(&[]).await.unwrap();
    let dir = bundle("echo", NAME, "");
    let manifest = dir.path().join("cpub.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let text = text.replace("visibility = \"public\"\n", "visibility = \"private\"\n");
    std::fs::write(
        &manifest,
        format!("{text}\n[access]\nauth = \"signature\"\n"),
    )
    .unwrap();
    stack.cpub_ok(&["deploy", dir.path().to_str().unwrap()]);
    let base = stack.proxy_url();

    // A key: its secret on stdout once, its id in the list; never listed.
    let out = stack.cpub(&["signing-key", "create", NAME, "--label", "e2e"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        secret.starts_with("cpss_") && secret.len() == 69,
        "{secret:?}"
    );
    let listed: Value = stack
        .cpub_ok(&["signing-key", "list", NAME, "-o", "json"])
        .parse()
        .unwrap();
    let key_id = listed[0]["key_id"].as_str().unwrap().to_owned();
    assert_eq!(listed[0]["label"], "e2e");
    assert!(!listed.to_string().contains(&secret));
    let described = stack.cpub_ok(&["describe", NAME]);
    assert!(!described.contains(&secret), "{described}");
    // At rest: sealed, never in plain text.
    let db = stack.db().await;
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT ciphertext FROM function_signing_keys")
        .fetch_one(&db)
        .await
        .unwrap();
    let hex_part = &secret.as_bytes()[5..];
    assert!(sealed.len() >= secret.len(), "{sealed:?}");
    assert!(
        !sealed
            .windows(16)
            .any(|w| hex_part.windows(16).any(|s| s == w)),
        "the secret is stored in plain text"
    );

    // Signed by the CLI, with the secret from a file.
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let out = stack.cpub_ok(&[
        "invoke",
        NAME,
        "--sign",
        &key_id,
        "--sign-secret-file",
        secret_file.to_str().unwrap(),
        "--path",
        "/items?limit=5",
        "-d",
        "hello signed",
    ]);
    let echoed: Value = out.parse().unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(echoed["body"], "hello signed");
    assert_eq!(echoed["query"], "limit=5");
    let seen = echoed["headers"].as_object().unwrap();
    assert!(
        !seen.contains_key("x-cpub-signature"),
        "the signature reached the function: {seen:?}"
    );
    // Without a secret source, --sign says where the secret comes from.
    let out = stack.cpub(&["invoke", NAME, "--sign", &key_id]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CPUB_SIGNING_SECRET"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Signed by hand (what docs/SIGNING.md shows with openssl).
    let target = format!("/fn/{NAME}/x?a=1");
    let url = format!("{base}{target}");
    let sign = |method: &str, target: &str, ts: i64, body: &[u8]| {
        header_value(&key_id, secret.as_bytes(), method, target, ts, body)
    };
    let t0 = now();
    let good = sign("POST", &target, t0, b"payload");
    let (status, body) = send(
        &url,
        Method::POST,
        b"payload",
        &[("x-cpub-signature", good.clone())],
        "sig-ok",
    )
    .await;
    assert_eq!(status, 200, "{body}\n{}", stack.logs());
    assert!(body.contains("\"body\":\"payload\""), "{body}");

    // Every refusal: 401 with a message naming what is wrong. (Signed for
    // another second than the good call: otherwise the signature is the
    // good one's, and refused as a replay before anything else.)
    let key = stack.cpub_ok(&["key", "create", NAME]).trim().to_owned();
    /// (request id, method, body, headers, what the answer says)
    type Refusal<'a> = (&'a str, Method, &'a [u8], Vec<(&'a str, String)>, &'a str);
    let refusals: Vec<Refusal> = vec![
        (
            "sig-none",
            Method::POST,
            b"payload",
            vec![],
            "requires a signed call",
        ),
        (
            "sig-key-only",
            Method::POST,
            b"payload",
            vec![("x-cpub-key", key.clone())],
            "requires a signed call",
        ),
        (
            "sig-unknown-key",
            Method::POST,
            b"payload",
            vec![(
                "x-cpub-signature",
                header_value(
                    "sk_ffffffffffffffff",
                    secret.as_bytes(),
                    "POST",
                    &target,
                    now(),
                    b"payload",
                ),
            )],
            "not a signing key",
        ),
        (
            "sig-wrong-secret",
            Method::POST,
            b"payload",
            vec![(
                "x-cpub-signature",
                header_value(&key_id, b"cpss_not-it", "POST", &target, now(), b"payload"),
            )],
            "bad signature",
        ),
        (
            "sig-tampered-body",
            Method::POST,
            b"payloaD",
            vec![(
                "x-cpub-signature",
                sign("POST", &target, t0 - 1, b"payload"),
            )],
            "body digest mismatch",
        ),
        (
            "sig-tampered-path",
            Method::POST,
            b"payload",
            vec![(
                "x-cpub-signature",
                sign("POST", &format!("/fn/{NAME}/x?a=2"), now(), b"payload"),
            )],
            "bad signature",
        ),
        (
            "sig-tampered-method",
            Method::PUT,
            b"payload",
            vec![(
                "x-cpub-signature",
                sign("POST", &target, t0 - 1, b"payload"),
            )],
            "bad signature",
        ),
        (
            "sig-stale",
            Method::POST,
            b"payload",
            vec![(
                "x-cpub-signature",
                sign("POST", &target, now() - 400, b"payload"),
            )],
            "in the past, outside the window",
        ),
        (
            "sig-future",
            Method::POST,
            b"payload",
            vec![(
                "x-cpub-signature",
                sign("POST", &target, now() + 400, b"payload"),
            )],
            "in the future, outside the window",
        ),
        (
            "sig-malformed",
            Method::POST,
            b"payload",
            vec![("x-cpub-signature", "keyid=x,ts=1".into())],
            "malformed x-cpub-signature",
        ),
        (
            "sig-replay",
            Method::POST,
            b"payload",
            vec![("x-cpub-signature", good.clone())],
            "replayed signature",
        ),
    ];
    let mut refused_ids = Vec::new();
    for (id, method, body, headers, want) in &refusals {
        let (status, answer) = send(&url, method.clone(), body, headers, id).await;
        assert_eq!(status, 401, "{id}: {answer}");
        assert!(answer.contains(want), "{id}: {answer} lacks {want:?}");
        refused_ids.push((*id).to_owned());
    }

    // Revocation: refused within a second of the CLI's answer.
    let revoked_at = Instant::now();
    stack.cpub_ok(&["signing-key", "revoke", NAME, &key_id]);
    let mut n = 0;
    loop {
        n += 1;
        let id = format!("sig-revoked-{n}");
        let fresh = sign("POST", &target, now(), format!("after {n}").as_bytes());
        let (status, answer) = send(
            &url,
            Method::POST,
            format!("after {n}").as_bytes(),
            &[("x-cpub-signature", fresh)],
            &id,
        )
        .await;
        if status == 401 {
            assert!(answer.contains("unknown or revoked"), "{answer}");
            refused_ids.push(id);
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "a revoked key still passes after {:?}",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stack.cpub_ok(&["signing-key", "list", NAME]).is_empty());

    // None of the refused calls reached an instance: each one's execution
    // record names the rejection and no instance; the good call has one.
    let api = stack.api();
    let executions_url = format!(
        "{}/api/v1/functions/{NAME}/executions?limit=200",
        stack.control_url()
    );
    let records: Vec<Value> = eventually(Duration::from_secs(20), "execution records", || {
        let api = api.clone();
        let url = executions_url.clone();
        let ids = refused_ids.clone();
        async move {
            let rows: Vec<Value> = api.get(&url).send().await.ok()?.json().await.ok()?;
            let all_there = ids.iter().chain(["sig-ok".to_owned()].iter()).all(|id| {
                rows.iter()
                    .any(|r| r["request_id"].as_str() == Some(id.as_str()))
            });
            all_there.then_some(rows)
        }
    })
    .await;
    for id in &refused_ids {
        let r = records
            .iter()
            .find(|r| r["request_id"].as_str() == Some(id.as_str()))
            .unwrap();
        assert_eq!(r["status"], 401, "{id}: {r}");
        assert_eq!(r["rejection"], "bad_signature", "{id}: {r}");
        assert!(r["instance"].is_null(), "{id} reached an instance: {r}");
    }
    let ok = records
        .iter()
        .find(|r| r["request_id"] == "sig-ok")
        .unwrap();
    assert!(ok["instance"].is_string(), "{ok}");

    // Roles: a viewer may list but not create; the audit log has the
    // creation and the revocation, never the secret.
    let control = stack.control_url();
    let add = api
        .post(format!("{control}/api/v1/users"))
        .json(&json!({"username": "sigview", "password": "sigview-pass-1", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(add.status().as_u16(), 201);
    let login: Value = reqwest::Client::new()
        .post(format!("{control}/api/v1/auth/login"))
        .json(&json!({"username": "sigview", "password": "sigview-pass-1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let viewer = login["token"].as_str().unwrap().to_owned();
    let refused = reqwest::Client::new()
        .post(format!("{control}/api/v1/functions/{NAME}/signing-keys"))
        .bearer_auth(&viewer)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    let text = refused.text().await.unwrap();
    assert!(text.contains("role viewer"), "{text}");
    let audit: Vec<Value> = api
        .get(format!("{control}/api/v1/audit"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = |action: &str, status: u16| {
        audit
            .iter()
            .filter(|e| e["action"] == action && e["status"] == status && e["function"] == NAME)
            .count()
    };
    assert_eq!(rows("signing-key.create", 201), 1, "{audit:?}");
    assert_eq!(rows("signing-key.create", 403), 1, "{audit:?}");
    assert_eq!(rows("signing-key.revoke", 204), 1, "{audit:?}");
    let whole = serde_json::to_string(&audit).unwrap();
    assert!(!whole.contains(&secret), "the secret is in the audit log");
    assert!(!stack.logs().contains(&secret), "the secret is in a log");
    stack.cpub_ok(&["delete", NAME]);
}
