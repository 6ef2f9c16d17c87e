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
//! a Rust toolchain, and Go for the go template (`scripts/test.sh` installs
//! Debian's golang-go; without `go` the test fails, it never skips).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use containerpub_e2e::{RemoveImages, Stack, container_ip, inspect};

/// A client that opens a connection per call: the calls are separated by
/// builds that can last longer than the proxy keeps an idle connection
/// (30–60 s), and a call sent on a pooled connection just as the proxy
/// closed it failed with `IncompleteMessage` in CI.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
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
    // The go template is built with the host's Go: scripts/test.sh installs
    // Debian's golang-go. A missing toolchain fails the test, never skips it.
    let go = Command::new("go").arg("version").output();
    assert!(
        go.as_ref().is_ok_and(|o| o.status.success()),
        "the go template's test needs `go` (Debian's golang-go, installed by scripts/test.sh): {go:?}"
    );
    // template, the base its instance runs on, what it answers
    let cases = [
        ("python", "python", "(python)"),
        ("node", "node", "(node)"),
        ("static", "python", "(static)"),
        ("rust", "debian", "(rust)"),
        ("go", "debian", "(go)"),
    ];
    for (template, base, marker) in cases {
        let name = format!("lang-{template}-{pid}");
        let _cleanup = RemoveImages::of(&[&name]);
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

/// The bases under test: base image, runtime, the probe's source
/// (`tests/probes/`), its entrypoint in the bundle.
const BASES: [(&str, &str, &str, &str); 3] = [
    ("debian", "binary", include_str!("probes/probe.rs"), "probe"),
    (
        "python",
        "python",
        include_str!("probes/probe.py"),
        "probe.py",
    ),
    ("node", "node", include_str!("probes/probe.js"), "probe.js"),
];

/// Writes the probe function of one base: the debian probe compiled with
/// `rustc` (dynamically linked against glibc, so it runs on the debian
/// base); the Python and Node.js probes with a vendored dependency each.
fn probe_bundle(dir: &Path, base: usize, name: &str) {
    let (_, runtime, code, entry) = BASES[base];
    std::fs::create_dir_all(dir).unwrap();
    match runtime {
        "binary" => {
            let src = dir.with_extension("rs");
            std::fs::write(&src, code).unwrap();
            run_ok(
                Command::new("rustc")
                    .args(["--edition", "2021", "-O", "-C", "strip=symbols", "-o"])
                    .arg(dir.join(entry))
                    .arg(&src)
                    .env_remove("RUSTFLAGS"),
                "rustc of the debian probe",
            );
        }
        "python" => {
            std::fs::write(dir.join(entry), code).unwrap();
            std::fs::create_dir_all(dir.join("vendor")).unwrap();
            std::fs::write(dir.join("vendor/vendored_dep.py"), "VALUE = 'vendored'\n").unwrap();
            std::fs::write(dir.join("requirements.txt"), "vendored-dep==1.0\n").unwrap();
        }
        _ => {
            std::fs::write(dir.join(entry), code).unwrap();
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

/// A probe's report: `key value` lines (the `/proc/self/status` lines keep
/// their `Key:`); `reach` lines become `reach <target>` keys.
fn parse_report(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let key = words.next()?;
            let key = if key == "reach" {
                format!("reach {}", words.next()?)
            } else {
                key.to_owned()
            };
            Some((key, words.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

/// PostgreSQL's port from the test database URL.
fn postgres_port() -> u16 {
    let url = containerpub_e2e::test_database_url();
    let host_port = url.rsplit('@').next().unwrap().split('/').next().unwrap();
    host_port
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .expect("port in the database URL")
}

/// The host's IPv4 addresses other than loopback (eth0, Podman bridges).
fn host_addresses() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .expect("ip addr");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            Some(words.next()?.split('/').next()?.to_owned())
        })
        .filter(|ip| !ip.starts_with("127."))
        .collect()
}

/// The namespace a process is in (`/proc/<pid>/ns/<kind>`'s link).
fn namespace(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/{kind}: {e}"))
        .to_string_lossy()
        .into_owned()
}

/// The isolation of a function on each base image, one parameterised run:
/// a probe function per base (debian: a glibc-linked binary; python;
/// node — each in its base's own language, as the bases have no shell or
/// busybox) is deployed, and every property is checked for every base, from
/// the host (`podman inspect`, `/proc/<pid>`) and from inside (the probe's
/// own report): its own network namespace, not the host's; a read-only
/// root (writing /app gives EROFS); no capabilities and no-new-privileges;
/// user 65534 in a user namespace of its own; and no connection to the
/// control plane, the proxy, PostgreSQL or a host service on any address,
/// to another function's instance or to the internet, while it reaches
/// itself. Python and Node.js bundles without their vendored dependencies
/// are refused, and the probes import them.
#[tokio::test]
async fn every_base_isolates_its_functions_as_a_static_binary_is() {
    // Declared before the stack: dropped after it, once its containers are gone.
    let pid = std::process::id();
    let names: Vec<String> = BASES
        .iter()
        .map(|(base, ..)| format!("iso-{base}-{pid}"))
        .collect();
    let _cleanup = RemoveImages::of(&names);
    let stack = Stack::start(&[]).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let client = client();
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

    for (i, name) in names.iter().enumerate() {
        let dir = work.path().join(name);
        probe_bundle(&dir, i, name);
        let vendored = match BASES[i].1 {
            "python" => Some("vendor"),
            "node" => Some("node_modules"),
            _ => None,
        };
        if let Some(vendored) = vendored {
            // Without its vendored dependencies the CLI refuses the bundle.
            let aside = work.path().join(format!("{name}-{vendored}"));
            std::fs::rename(dir.join(vendored), &aside).unwrap();
            let out = stack.cpub(&["deploy", dir.to_str().unwrap()]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success(),
                "{name}: deployed without its dependencies"
            );
            assert!(stderr.contains(&format!("no {vendored}")), "{stderr}");
            std::fs::rename(&aside, dir.join(vendored)).unwrap();
        }
        stack.cpub_ok(&["deploy", dir.to_str().unwrap()]);
    }
    // Start all three, so each has other functions' instances to try.
    for name in &names {
        let r = client
            .get(format!("{}/fn/{name}/", stack.proxy_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{name}: {}", stack.logs());
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

    // What must stay out of reach: the host's services through the
    // gateway (the control plane, the proxy and its admin port bind
    // loopback; PostgreSQL; a test service on every address), the test
    // service on each host address, the internet.
    let mut blocked = vec![
        (format!("{gateway}:{host_port}"), "a host service (gateway)"),
        (
            format!("{gateway}:{}", stack.control_addr.port()),
            "the control plane",
        ),
        (
            format!("{gateway}:{}", stack.proxy_addr.port()),
            "the proxy",
        ),
        (
            format!("{gateway}:{}", stack.admin_addr.port()),
            "the proxy's admin port",
        ),
        (format!("{gateway}:{}", postgres_port()), "PostgreSQL"),
        (
            format!("127.0.0.1:{}", stack.control_addr.port()),
            "the control plane (loopback)",
        ),
        (
            format!("127.0.0.1:{}", postgres_port()),
            "PostgreSQL (loopback)",
        ),
        ("1.1.1.1:53".to_owned(), "the internet"),
    ];
    for ip in host_addresses() {
        blocked.push((format!("{ip}:{host_port}"), "a host service (host address)"));
    }

    // property -> base -> what was seen (printed as the test's table).
    let mut table: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    let mut see =
        |property: &'static str, seen: String| table.entry(property).or_default().push(seen);
    let host_net = namespace("self", "net");
    let host_user = namespace("self", "user");
    for (i, name) in names.iter().enumerate() {
        let base = BASES[i].0;
        let what = format!("{name} on the {base} base");
        let (id, label) = base_of_instance(&stack, name);
        assert_eq!(label, base, "{what}: the instance's base image");
        // From the host.
        assert_isolated(&id, &what);
        let state = inspect(&id).unwrap();
        let proc_pid = state["State"]["Pid"].as_u64().expect("pid").to_string();
        let net = namespace(&proc_pid, "net");
        assert_ne!(net, host_net, "{what}: the host's network namespace");
        assert_ne!(
            namespace(&proc_pid, "user"),
            host_user,
            "{what}: the host's user namespace"
        );
        let network_mode = state["HostConfig"]["NetworkMode"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_ne!(network_mode, "host", "{what}: host network");
        // From inside.
        let other = format!("{}:8080", ips[(i + 1) % ips.len()]);
        let mut targets = vec!["127.0.0.1:8080".to_owned(), other.clone()];
        targets.extend(blocked.iter().map(|(t, _)| t.clone()));
        let url = format!(
            "{}/fn/{name}/?targets={}",
            stack.proxy_url(),
            targets.join(",")
        );
        let text = client.get(url).send().await.unwrap().text().await.unwrap();
        let report = parse_report(&text);
        let get = |key: &str| {
            report
                .get(key)
                .cloned()
                .unwrap_or_else(|| panic!("{what}: no `{key}` in the report:\n{text}"))
        };
        if base != "debian" {
            assert_eq!(get("dep"), "vendored", "{what}: the vendored dependency");
        }
        assert_eq!(get("root"), "EROFS", "{what}: writing /app:\n{text}");
        assert_eq!(get("Uid:"), "65534 65534 65534 65534", "{what}: uid inside");
        assert_eq!(get("Gid:"), "65534 65534 65534 65534", "{what}: gid inside");
        assert_eq!(
            get("CapEff:"),
            "0000000000000000",
            "{what}: capabilities inside"
        );
        assert_eq!(
            get("CapPrm:"),
            "0000000000000000",
            "{what}: permitted capabilities"
        );
        assert_eq!(
            get("CapBnd:"),
            "0000000000000000",
            "{what}: bounding set inside"
        );
        assert_eq!(get("NoNewPrivs:"), "1", "{what}: no-new-privileges inside");
        let uid_map = get("uid_map");
        let map: Vec<u64> = uid_map.split(' ').map(|n| n.parse().unwrap()).collect();
        assert!(
            map.len() == 3 && map[0] == 0 && map[1] > 65_534 && map[2] == 65_536,
            "{what}: uid_map inside {uid_map}"
        );
        assert_eq!(
            get("reach 127.0.0.1:8080"),
            "connected",
            "{what}: the probe reaches itself:\n{text}"
        );
        let reached_other = get(&format!("reach {other}"));
        assert_ne!(
            reached_other, "connected",
            "{what} reached another function ({other})"
        );
        let mut refused = Vec::new();
        for (target, service) in &blocked {
            let seen = get(&format!("reach {target}"));
            assert_ne!(
                seen, "connected",
                "{what} reached {service} at {target}:\n{text}"
            );
            refused.push(format!("{service} {target}: {seen}"));
        }
        see("host network namespace", format!("{base}: own {net}"));
        see(
            "read-only root",
            format!("{base}: /app write {}", get("root")),
        );
        see(
            "capabilities",
            format!(
                "{base}: CapEff {} CapBnd {}",
                get("CapEff:"),
                get("CapBnd:")
            ),
        );
        see(
            "no-new-privileges",
            format!("{base}: {}", get("NoNewPrivs:")),
        );
        see(
            "user namespace",
            format!("{base}: uid 65534 inside, uid_map {uid_map}"),
        );
        see(
            "other function",
            format!("{base}: {other}: {reached_other}"),
        );
        see("host services", format!("{base}: {}", refused.join("; ")));
    }
    for (property, rows) in &table {
        eprintln!("{property}:");
        for row in rows {
            eprintln!("  {row}");
        }
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the host service accepted a connection from a function"
    );
}
