//! Any-language functions on the real stack: every `cpub init` template
//! (rust, go, python, node, static) is generated, built where it needs a
//! build, deployed with `cpub deploy` and called through the proxy; a
//! Python and a Node.js function with vendored dependencies import them;
//! and on each base image (debian, python, node) the instance runs with
//! the same isolation as a static binary: user 65534 in a user namespace of
//! its own, read-only root, no capabilities, no-new-privileges; a probe
//! written in Python and in Node.js finds no host service, no other
//! function and no write access to its root from inside.
//!
//! Needs the base images (`scripts/base-images.sh`, run by setup-host.sh),
//! a Rust toolchain, and Go for the go template (skipped, saying so, when
//! `go` is missing).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use containerpub_e2e::{Stack, container_ip, inspect};

/// Removes a function's images when the test ends (the stack removes its
/// containers and database, not images).
struct RemoveImages(String);

impl Drop for RemoveImages {
    fn drop(&mut self) {
        let Ok(out) = Command::new("podman")
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .output()
        else {
            return;
        };
        let prefix = format!("localhost/cpub-fn-{}:", self.0);
        for image in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(&prefix))
        {
            let _ = Command::new("podman").args(["rmi", "-f", image]).output();
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The image a function's instance runs, and that image's base label
/// (`io.containerpub.base`, set by base-images.sh; empty for FROM scratch).
fn base_of_instance(stack: &Stack, name: &str) -> (String, String) {
    let ids = stack.containers(Some(name));
    let id = ids
        .first()
        .unwrap_or_else(|| panic!("no instance of {name}"));
    let state = inspect(id).expect("inspect");
    let image = state["ImageName"].as_str().unwrap_or_default().to_owned();
    let out = Command::new("podman")
        .args([
            "image",
            "inspect",
            "--format",
            "{{index .Labels \"io.containerpub.base\"}}",
            &image,
        ])
        .output()
        .unwrap();
    let label = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (
        id.clone(),
        if label == "<no value>" {
            String::new()
        } else {
            label
        },
    )
}

/// The kernel-level isolation of a running instance, read from the host.
fn assert_isolated(id: &str, what: &str) {
    let state = inspect(id).expect("inspect");
    assert_eq!(
        state["HostConfig"]["ReadonlyRootfs"], true,
        "{what}: read-only root"
    );
    assert_eq!(state["Config"]["User"], "65534:65534", "{what}: user");
    let pid = state["State"]["Pid"].as_u64().expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(field("NoNewPrivs:"), "1", "{what}: no-new-privileges");
    assert_eq!(field("CapEff:"), "0000000000000000", "{what}: capabilities");
    assert_eq!(field("CapBnd:"), "0000000000000000", "{what}: bounding set");
    // User 65534 inside a namespace of its own: a high, unshared host uid.
    let host_uid: u64 = field("Uid:")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(host_uid > 65_534 + 100_000, "{what}: host uid {host_uid}");
    let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    let first: Vec<u64> = uid_map
        .split_whitespace()
        .take(3)
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(first[0], 0, "{what}: {uid_map}");
    assert_eq!(first[1] + 65_534, host_uid, "{what}: {uid_map}");
    assert_eq!(first[2], 65_536, "{what}: {uid_map}");
}

#[tokio::test]
async fn every_template_deploys_and_answers_as_generated() {
    let stack = Stack::start(&[]).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let client = client();
    let pid = std::process::id();
    let go = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    // template, the base its instance runs on, what it answers
    let cases = [
        ("python", "python", "(python)"),
        ("node", "node", "(node)"),
        ("static", "python", "(static)"),
        ("rust", "debian", "(rust)"),
        ("go", "debian", "(go)"),
    ];
    for (template, base, marker) in cases {
        if template == "go" && !go {
            eprintln!("SKIPPED: the go template (no `go` toolchain on this machine)");
            continue;
        }
        let name = format!("lang-{template}-{pid}");
        let _cleanup = RemoveImages(name.clone());
        let dir = work.path().join(&name);
        let dir_str = dir.to_str().unwrap();
        let created = stack.cpub_ok(&["init", "--template", template, dir_str]);
        assert!(
            created.contains(&format!("created {template} function {name}")),
            "{created}"
        );
        match template {
            "rust" => run_ok(
                Command::new("cargo")
                    .args(["build", "--release", "--offline", "--quiet"])
                    .current_dir(&dir)
                    .env_remove("CARGO_TARGET_DIR")
                    .env_remove("RUSTFLAGS")
                    .env_remove("CARGO_BUILD_TARGET"),
                "cargo build of the rust template",
            ),
            "go" => run_ok(
                Command::new("go")
                    .args(["build", "-o", &name, "."])
                    .current_dir(&dir)
                    .env("GOFLAGS", "-mod=mod")
                    .env("GOCACHE", work.path().join("gocache")),
                "go build of the go template",
            ),
            _ => {}
        }
        let out = stack.cpub_ok(&["deploy", dir_str]);
        let url = format!("{}/fn/{name}/", stack.proxy_url());
        assert!(out.contains(&url), "{out}");
        let (status, body) = {
            let r = client
                .get(format!("{url}?name=e2e"))
                .send()
                .await
                .expect("call");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        };
        assert_eq!(status, 200, "{template}: {body}\n{}", stack.logs());
        if template == "static" {
            assert!(
                body.contains(&format!("hello from {name} {marker}")),
                "{body}"
            );
        } else {
            assert_eq!(
                body,
                format!("hello e2e from {name} {marker}\n"),
                "{template}"
            );
        }
        // A POST with a body, and keep-alive (the second call on the proxy's
        // pooled connection).
        if template != "static" {
            let r = client
                .post(&url)
                .body("x".repeat(70_000))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "{template}: POST");
        }
        let (id, label) = base_of_instance(&stack, &name);
        assert_eq!(label, base, "{template}: the instance's base image");
        assert_isolated(&id, &format!("{template} on the {base} base"));
        stack.cpub_ok(&["delete", &name]);
    }
}

/// A probe function in Python or Node.js: reports its ids, whether it may
/// write to its root, and which of `targets` (host:port, comma-separated)
/// it can connect to.
fn probe_bundle(dir: &Path, runtime: &str, name: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let (entry, code) = match runtime {
        "python" => (
            "probe.py",
            r#"
import json, os, socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qsl
import vendored_dep

def reach(target):
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return "connected"
    except OSError as e:
        return type(e).__name__

def write_root():
    try:
        open("/app/written", "w").close()
        return "written"
    except OSError as e:
        return type(e).__name__

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        q = dict(parse_qsl(urlsplit(self.path).query))
        out = {"uid": os.getuid(), "dep": vendored_dep.VALUE, "root": write_root(),
               "reach": {t: reach(t) for t in q.get("targets", "").split(",") if t}}
        body = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"#,
        ),
        _ => (
            "probe.js",
            r#"
const http = require("node:http"), net = require("node:net"), fs = require("node:fs");
const dep = require("vendored-dep");
function reach(target) {
  const i = target.lastIndexOf(":");
  return new Promise((done) => {
    const s = net.connect({ host: target.slice(0, i), port: Number(target.slice(i + 1)) });
    const t = setTimeout(() => { s.destroy(); done("timeout"); }, 2000);
    s.on("connect", () => { clearTimeout(t); s.destroy(); done("connected"); });
    s.on("error", (e) => { clearTimeout(t); done(e.code || "error"); });
  });
}
function writeRoot() {
  try { fs.writeFileSync("/app/written", "x"); return "written"; } catch (e) { return e.code; }
}
http.createServer(async (req, res) => {
  const q = new URL(req.url, "http://x").searchParams;
  const reachOut = {};
  for (const t of (q.get("targets") || "").split(",").filter(Boolean)) reachOut[t] = await reach(t);
  const body = JSON.stringify({ uid: process.getuid(), dep: dep.VALUE, root: writeRoot(), reach: reachOut });
  res.writeHead(200, { "content-length": Buffer.byteLength(body) });
  res.end(body);
}).listen(Number(process.env.PORT), "0.0.0.0");
"#,
        ),
    };
    std::fs::write(dir.join(entry), code).unwrap();
    match runtime {
        "python" => {
            std::fs::create_dir_all(dir.join("vendor")).unwrap();
            std::fs::write(dir.join("vendor/vendored_dep.py"), "VALUE = 'vendored'\n").unwrap();
            std::fs::write(dir.join("requirements.txt"), "vendored-dep==1.0\n").unwrap();
        }
        _ => {
            let module = dir.join("node_modules/vendored-dep");
            std::fs::create_dir_all(&module).unwrap();
            std::fs::write(module.join("index.js"), "exports.VALUE = 'vendored';\n").unwrap();
            std::fs::write(
                module.join("package.json"),
                r#"{"name":"vendored-dep","version":"1.0.0","main":"index.js"}"#,
            )
            .unwrap();
            std::fs::write(
                dir.join("package.json"),
                r#"{"name":"probe","dependencies":{"vendored-dep":"1.0.0"}}"#,
            )
            .unwrap();
        }
    }
    std::fs::write(
        dir.join("cpub.toml"),
        format!(
            "name = \"{name}\"\nruntime = \"{runtime}\"\nentrypoint = \"{entry}\"\nvisibility = \"public\"\n\
             [resources]\ntimeout_ms = 20000\n"
        ),
    )
    .unwrap();
}

#[tokio::test]
async fn python_and_node_import_vendored_dependencies_and_reach_nothing_but_their_callers() {
    let stack = Stack::start(&[]).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let client = client();
    let pid = std::process::id();
    // A host service bound to every address, as a careless one would be.
    let host_service = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let host_port = host_service.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = host_service.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });

    let names = [format!("probe-py-{pid}"), format!("probe-js-{pid}")];
    let _cleanup: Vec<RemoveImages> = names.iter().map(|n| RemoveImages(n.clone())).collect();
    for (runtime, name) in ["python", "node"].iter().zip(&names) {
        let dir = work.path().join(name);
        probe_bundle(&dir, runtime, name);
        // Without its vendored dependencies the CLI refuses the bundle.
        let vendored = if *runtime == "python" {
            "vendor"
        } else {
            "node_modules"
        };
        let aside = work.path().join(format!("{name}-{vendored}"));
        std::fs::rename(dir.join(vendored), &aside).unwrap();
        let out = stack.cpub(&["deploy", dir.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{runtime}: deployed without its dependencies"
        );
        assert!(stderr.contains(&format!("no {vendored}")), "{stderr}");
        std::fs::rename(&aside, dir.join(vendored)).unwrap();
        stack.cpub_ok(&["deploy", dir.to_str().unwrap()]);
    }
    // Start both, so each has another function's instance to try.
    for name in &names {
        let r = client
            .get(format!("{}/fn/{name}/", stack.proxy_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", stack.logs());
    }
    let ids: Vec<String> = names
        .iter()
        .map(|n| {
            stack
                .containers(Some(n))
                .first()
                .cloned()
                .expect("instance")
        })
        .collect();
    let ips: Vec<String> = ids
        .iter()
        .map(|id| container_ip(id).expect("instance address").to_string())
        .collect();
    let gateway = inspect(&ids[0]).unwrap()["NetworkSettings"]["Networks"]["cpub"]["Gateway"]
        .as_str()
        .expect("gateway")
        .to_owned();
    for (i, name) in names.iter().enumerate() {
        let own = "127.0.0.1:8080";
        let targets = format!("{own},{gateway}:{host_port},{}:8080,1.1.1.1:53", ips[1 - i]);
        let url = format!("{}/fn/{name}/?targets={targets}", stack.proxy_url());
        let text = client.get(url).send().await.unwrap().text().await.unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}: {text}"));
        assert_eq!(v["uid"], 65534, "{name}: {v}");
        assert_eq!(v["dep"], "vendored", "{name}: the vendored dependency: {v}");
        assert_ne!(v["root"], "written", "{name}: wrote to its root: {v}");
        let reach = &v["reach"];
        assert_eq!(reach["127.0.0.1:8080"], "connected", "the probe works: {v}");
        for blocked in [
            format!("{gateway}:{host_port}"),
            format!("{}:8080", ips[1 - i]),
            "1.1.1.1:53".to_owned(),
        ] {
            assert_ne!(
                reach[&blocked], "connected",
                "{name} reached {blocked}: {v}"
            );
        }
        assert_isolated(&ids[i], name);
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the host service accepted a connection from a function"
    );
}
