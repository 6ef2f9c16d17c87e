//! End-to-end tests of a function's life cycle (issue 13) on the real
//! stack: versions and rollback under load without a build, the retention
//! of old versions and their images, config changes without a rebuild
//! (scaling in place, environment with new instances), the CLI's deadlines
//! against a control plane that never answers, streamed and detached
//! builds, bundle checks before the upload, and streamed answers past
//! `timeout_ms`. Over 600 lines on purpose: one file per issue, and the
//! tests share their load, process-watching and bundle helpers.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use containerpub_e2e::{Stack, eventually};
use containerpub_wire::api::{DeploymentStatus, VersionInfo, VersionKind};

const HELLO: &str = "hello from ContainerPub\n";
const BONJOUR: &str = "bonjour from ContainerPub\n";

/// Waits until `url` answers 200 with `expected` (a new version serves
/// once its first instance is ready; the old one answers meanwhile).
async fn serves(client: &reqwest::Client, url: &str, expected: &str) {
    eventually(
        Duration::from_secs(30),
        &format!("{url} answers {expected:?}"),
        || async { (body(client, url).await == (200, expected.to_owned())).then_some(()) },
    )
    .await;
}

async fn body(client: &reqwest::Client, url: &str) -> (u16, String) {
    let r = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// `workers` loops of GET `url` until `stop`; returns (calls, failures as
/// text). A call fails unless it answers 200 with one of `bodies`.
fn load(
    url: &str,
    workers: usize,
    stop: Arc<AtomicBool>,
    bodies: &'static [&'static str],
) -> Vec<tokio::task::JoinHandle<(usize, Vec<String>)>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    (0..workers)
        .map(|_| {
            let (client, url, stop) = (client.clone(), url.to_owned(), stop.clone());
            tokio::spawn(async move {
                let (mut calls, mut failed) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    calls += 1;
                    match client.get(&url).send().await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let text = r.text().await.unwrap_or_default();
                            if status != 200 || !bodies.contains(&text.as_str()) {
                                failed.push(format!("{status} {text:?}"));
                            }
                        }
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (calls, failed)
            })
        })
        .collect()
}

async fn collect(
    workers: Vec<tokio::task::JoinHandle<(usize, Vec<String>)>>,
) -> (usize, Vec<String>) {
    let (mut calls, mut failed) = (0, Vec::new());
    for w in workers {
        let (c, f) = w.await.unwrap();
        calls += c;
        failed.extend(f);
    }
    (calls, failed)
}

fn versions(stack: &Stack, name: &str) -> Vec<VersionInfo> {
    let out = stack.cpub_ok(&["versions", name, "-o", "json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("versions JSON ({e}): {out}"))
}

fn active(versions: &[VersionInfo]) -> &VersionInfo {
    let mut active = versions
        .iter()
        .filter(|v| v.status == DeploymentStatus::Active);
    let one = active.next().expect("an active version");
    assert!(active.next().is_none(), "one active version: {versions:?}");
    one
}

fn image_exists(image: &str) -> bool {
    Command::new("podman")
        .args(["image", "exists", image])
        .status()
        .is_ok_and(|s| s.success())
}

/// `cpub` in a blocking task (a deploy or rollback while load runs).
async fn cpub_async(stack: &Stack, args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let control = stack.control_url();
    let token = stack.token.clone();
    let config = stack.dir.path().join("cli-config.toml");
    tokio::task::spawn_blocking(move || {
        Command::new(containerpub_e2e::bin("cpub"))
            .args(&args)
            .env("CPUB_URL", control)
            .env("CPUB_TOKEN", token)
            .env("CPUB_CONFIG", config)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn rollback_under_load_fails_no_call_and_builds_nothing() {
    let stack = Stack::start(&[]).await.unwrap();
    let name = "life-rollback";
    let url = stack.deploy("hello", name, "");
    let client = reqwest::Client::new();
    serves(&client, &url, HELLO).await;
    let v2 = containerpub_e2e::bundle("hello", name, "\n[env]\nGREETING = \"bonjour\"\n");
    stack.cpub_ok(&["deploy", v2.path().to_str().unwrap()]);
    serves(&client, &url, BONJOUR).await;

    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&url, 4, stop.clone(), &[HELLO, BONJOUR]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let out = cpub_async(&stack, &["rollback", name]).await;
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "rollback: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("v3 active (rollback to v1)"), "{said}");
    serves(&client, &url, HELLO).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (calls, failed) = collect(workers).await;
    eprintln!(
        "rollback took {took:?}; {calls} calls across it, {} failed",
        failed.len()
    );
    assert!(calls > 20, "the load kept running: {calls}");
    assert!(failed.is_empty(), "{failed:?}\n{}", stack.logs());
    assert!(
        took < Duration::from_secs(10),
        "a rollback builds nothing: {took:?}"
    );

    let list = versions(&stack, name);
    let v3 = active(&list);
    assert_eq!(
        (v3.version, v3.kind, v3.source_version),
        (3, VersionKind::Rollback, Some(1))
    );
    let v1 = list.iter().find(|v| v.version == 1).unwrap();
    assert_eq!(v3.image, v1.image, "the same image, not a new build");
    assert_eq!(v3.digest, v1.digest);
    // The build log of a rollback is empty: nothing was built.
    let table = stack.cpub_ok(&["versions", name]);
    assert!(
        table.contains("*v3") && table.contains("rollback to v1"),
        "{table}"
    );

    // A second rollback goes back to v2; --to picks any built version.
    stack.cpub_ok(&["rollback", name]);
    serves(&client, &url, BONJOUR).await;
    let out = stack.cpub_ok(&["rollback", name, "--to", "1"]);
    assert!(out.contains("v5 active (rollback to v1)"), "{out}");
    serves(&client, &url, HELLO).await;

    // Refusals name the problem.
    for (args, expected) in [
        (vec!["rollback", name, "--to", "5"], "already active"),
        (vec!["rollback", name, "--to", "99"], "has no version 99"),
        (vec!["rollback", "life-nothing"], "not found"),
    ] {
        let out = stack.cpub(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expected),
            "{args:?}: {err}"
        );
    }
    let out = stack.cpub(&["rollback", name, "--to", "0"]);
    assert!(!out.status.success());
}

#[tokio::test]
async fn old_versions_and_their_images_go_beyond_the_retention_count() {
    let stack = Stack::start(&[("CPUB_KEEP_VERSIONS", "2")]).await.unwrap();
    let name = "life-retain";
    stack.deploy("hello", name, "");
    let image_v1 = active(&versions(&stack, name)).image.clone().unwrap();
    for greeting in ["two", "three"] {
        let dir = containerpub_e2e::bundle(
            "hello",
            name,
            &format!("\n[env]\nGREETING = \"{greeting}\"\n"),
        );
        stack.cpub_ok(&["deploy", dir.path().to_str().unwrap()]);
    }
    // v3 active, v2 the rollback target; v1 is beyond the count of 2.
    let kept = eventually(Duration::from_secs(30), "v1 pruned", || async {
        let list = versions(&stack, name);
        (!list.iter().any(|v| v.version == 1)).then_some(list)
    })
    .await;
    assert_eq!(kept.iter().map(|v| v.version).collect::<Vec<_>>(), [3, 2]);
    eventually(Duration::from_secs(30), "v1's image removed", || async {
        (!image_exists(&image_v1)).then_some(())
    })
    .await;
    // A rollback to v2 keeps v2's image alive although v2's row goes once
    // it is beyond the count: the rollback row uses it.
    stack.cpub_ok(&["rollback", name]);
    let image_v2 = active(&versions(&stack, name)).image.clone().unwrap();
    let dir = containerpub_e2e::bundle("hello", name, "\n[env]\nGREETING = \"five\"\n");
    stack.cpub_ok(&["deploy", dir.path().to_str().unwrap()]);
    // v5 active, v4 (rollback of v2) is the rollback target: kept; v2, v3 go.
    let list = eventually(Duration::from_secs(30), "v2 and v3 pruned", || async {
        let list = versions(&stack, name);
        (list.len() == 2).then_some(list)
    })
    .await;
    assert_eq!(list.iter().map(|v| v.version).collect::<Vec<_>>(), [5, 4]);
    assert!(image_exists(&image_v2), "used by v4: kept");
    stack.cpub_ok(&["rollback", name]);
    let client = reqwest::Client::new();
    let url = format!("{}/fn/{name}/", stack.proxy_url());
    serves(&client, &url, "two from ContainerPub\n").await;
    // Deleting the function removes every image its rows used.
    stack.cpub_ok(&["delete", name]);
    eventually(Duration::from_secs(30), "images removed", || async {
        (!image_exists(&image_v2)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn scale_keeps_the_instances_and_env_starts_new_ones_without_a_build() {
    let stack = Stack::start(&[]).await.unwrap();
    let name = "life-config";
    let url = stack.deploy("hello", name, "\n[scaling]\nmin_instances = 1\n");
    let client = reqwest::Client::new();
    let first = eventually(Duration::from_secs(30), "one instance", || async {
        let ids = stack.containers(Some(name));
        (ids.len() == 1).then(|| ids[0].clone())
    })
    .await;
    serves(&client, &url, HELLO).await;
    let image = active(&versions(&stack, name)).image.clone().unwrap();

    // Scaling: a new version on the same image, the instance keeps serving.
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&url, 4, stop.clone(), &[HELLO, BONJOUR]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = cpub_async(
        &stack,
        &[
            "scale",
            name,
            "--min",
            "2",
            "--max",
            "4",
            "--concurrency",
            "8",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("v2 active") && said.contains("min_instances 1 -> 2"),
        "{said}"
    );
    eventually(Duration::from_secs(30), "min 2 applied", || async {
        (stack.containers(Some(name)).len() == 2).then_some(())
    })
    .await;
    assert!(
        stack.containers(Some(name)).contains(&first),
        "the running instance was kept"
    );
    let v2 = active(&versions(&stack, name)).clone();
    assert_eq!(
        (v2.kind, v2.source_version, v2.image.as_deref()),
        (VersionKind::Config, Some(1), Some(image.as_str()))
    );
    assert_eq!(
        (
            v2.config.scaling.min_instances,
            v2.config.scaling.max_instances,
            v2.config.scaling.concurrency
        ),
        (2, 4, 8)
    );

    // Environment: new instances with it, the old ones drain; no build.
    let out = cpub_async(&stack, &["env", "set", name, "GREETING=bonjour"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serves(&client, &url, BONJOUR).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (calls, failed) = collect(workers).await;
    eprintln!(
        "{calls} calls across scale and env set, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}\n{}", stack.logs());
    eventually(
        Duration::from_secs(30),
        "the old instances leave",
        || async { (!stack.containers(Some(name)).contains(&first)).then_some(()) },
    )
    .await;
    let v3 = active(&versions(&stack, name)).clone();
    assert_eq!((v3.version, v3.image.as_deref()), (3, Some(image.as_str())));
    assert_eq!(
        v3.config.env.get("GREETING").map(String::as_str),
        Some("bonjour")
    );
    assert_eq!(v3.config.scaling.min_instances, 2, "scaling carried over");

    stack.cpub_ok(&["env", "unset", name, "GREETING"]);
    serves(&client, &url, HELLO).await;

    // Refusals name the field.
    for (args, expected) in [
        (vec!["scale", name, "--max", "0"], "scaling.max_instances"),
        (
            vec!["scale", name, "--min", "9", "--max", "4"],
            "scaling.min_instances",
        ),
        (vec!["scale", name, "--memory", "1"], "resources.memory_mb"),
        (vec!["env", "set", name, "1BAD=x"], "env.1BAD"),
        (vec!["env", "set", name, "PORT=1"], "env.PORT"),
        (vec!["env", "unset", name, "NOPE"], "env.NOPE"),
        (vec!["scale", name, "--min", "2"], "nothing changes"),
        (vec!["scale", name], "nothing to change"),
        (vec!["env", "set", name, "NOEQUALS"], "KEY=VALUE"),
    ] {
        let out = stack.cpub(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expected),
            "{args:?}: {err}"
        );
    }
}

/// A control plane that accepts connections and never answers: `cpub`
/// gives up at its deadline with a message that says so, and `cpub
/// completions` needs no server at all.
#[tokio::test]
async fn the_cli_gives_up_on_a_control_plane_that_never_answers() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts and holds every connection, reading nothing, writing nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let started = Instant::now();
        let out = Command::new(containerpub_e2e::bin("cpub"))
            .args(args)
            .env("CPUB_URL", format!("http://{addr}"))
            .env("CPUB_TOKEN", "cpub_e2e_hanging")
            .env("CPUB_CONFIG", dir.path().join("config.toml"))
            .env_remove("CPUB_TIMEOUT")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (started.elapsed(), out)
    };
    for (args, env, deadline) in [
        (vec!["list", "--timeout", "2"], vec![], 2),
        (vec!["describe", "x"], vec![("CPUB_TIMEOUT", "3")], 3),
        (vec!["rollback", "x", "--timeout", "2"], vec![], 2),
    ] {
        let (took, out) = run(&args, &env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains(&format!("http://{addr} did not answer within {deadline} s"))
                && err.contains("--timeout"),
            "{args:?}: {err}"
        );
        assert!(
            took >= Duration::from_secs(deadline) && took < Duration::from_secs(deadline + 5),
            "{args:?} took {took:?}"
        );
    }
    // Nothing listens: refused at once, named as unreachable.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let started = Instant::now();
    let out = Command::new(containerpub_e2e::bin("cpub"))
        .args(["list"])
        .env("CPUB_URL", format!("http://{closed_addr}"))
        .env("CPUB_TOKEN", "cpub_e2e_hanging")
        .env("CPUB_CONFIG", dir.path().join("config.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot reach"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let out = Command::new(containerpub_e2e::bin("cpub"))
        .args(["completions", "bash"])
        .env("CPUB_CONFIG", dir.path().join("config.toml"))
        .output()
        .unwrap();
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && script.contains("rollback"),
        "{script}"
    );
}

/// A bundle directory whose build prints `{tag} first`, sleeps `pause_s`,
/// then prints `{tag} second` (a `RUN` step with busybox), and serves
/// `{tag}` with busybox httpd.
fn slow_build_bundle(name: &str, tag: &str, pause_s: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("cpub.toml"),
        format!("name = \"{name}\"\nruntime = \"container\"\nvisibility = \"public\"\n"),
    )
    .unwrap();
    std::fs::copy("/bin/busybox", p.join("busybox")).expect("/bin/busybox (busybox-static)");
    std::fs::create_dir(p.join("www")).unwrap();
    std::fs::write(p.join("www/index.html"), format!("{tag}\n")).unwrap();
    let script = format!("echo {tag} first; /bin/busybox sleep {pause_s}; echo {tag} second");
    std::fs::write(
        p.join("Containerfile"),
        format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\n\
             RUN [\"/bin/busybox\", \"sh\", \"-c\", {}]\n\
             CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
            serde_json::to_string(&script).unwrap()
        ),
    )
    .unwrap();
    dir
}

/// `cpub` with its stderr read line by line as it comes: each line with
/// the time it arrived.
struct Watched {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<(Instant, String)>,
    seen: Vec<(Instant, String)>,
}

impl Watched {
    fn spawn(stack: &Stack, args: &[&str]) -> Watched {
        use std::io::BufRead;
        let mut child = Command::new(containerpub_e2e::bin("cpub"))
            .args(args)
            .env("CPUB_URL", stack.control_url())
            .env("CPUB_TOKEN", &stack.token)
            .env("CPUB_CONFIG", stack.dir.path().join("cli-config.toml"))
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Watched {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (up to 120 s) for the stderr line `text`; when it came.
    fn wait_line(&mut self, text: &str) -> Instant {
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some((at, _)) = self.seen.iter().find(|(_, l)| l.trim() == text) {
                return *at;
            }
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no line with {text:?} in {:?}", self.seen),
            }
        }
    }

    /// Waits for the exit; (success, stdout, every stderr line).
    fn finish(mut self) -> (bool, String, String) {
        let out = self.child.wait_with_output().unwrap();
        self.seen.extend(self.lines.try_iter());
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        let t0 = self.seen.first().map(|(t, _)| *t);
        let err: Vec<String> = self
            .seen
            .into_iter()
            .map(|(t, l)| format!("[{:?}] {l}", t0.map(|t0| t.duration_since(t0))))
            .collect();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            err.join("\n"),
        )
    }
}

#[tokio::test]
async fn builds_stream_as_they_happen_detach_and_survive_ctrl_c() {
    let stack = Stack::start(&[]).await.unwrap();
    let name = "life-builds";
    let url = format!("{}/fn/{name}/", stack.proxy_url());
    let client = reqwest::Client::new();

    // Streamed: the step's first line arrives while the step still runs.
    let v1 = slow_build_bundle(name, "one", 4);
    let mut deploy = Watched::spawn(&stack, &["deploy", v1.path().to_str().unwrap()]);
    let first = deploy.wait_line("one first");
    let second = deploy.wait_line("one second");
    let (ok, stdout, stderr) = deploy.finish();
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        second.duration_since(first) >= Duration::from_secs(3),
        "the output came as it happened, not at the end: {:?}\n{stderr}",
        second.duration_since(first)
    );
    for step in [
        "==> building image",
        "STEP",
        "==> version 1 of life-builds is active",
    ] {
        assert!(stderr.contains(step), "no {step:?} in\n{stderr}");
    }
    assert!(
        stdout.contains("deployed life-builds version 1"),
        "{stdout}"
    );
    serves(&client, &url, "one\n").await;

    // Detached: back at once with a build id; the build goes on.
    // (The build's 8 s step is still running when `cpub builds` looks.)
    let v2 = slow_build_bundle(name, "two", 8);
    let started = Instant::now();
    let detached = Watched::spawn(&stack, &["deploy", "--detach", v2.path().to_str().unwrap()]);
    let (ok, out, err) = detached.finish();
    assert!(ok, "{out}\n{err}");
    eprintln!(
        "deploy --detach returned after {:?}\n{err}",
        started.elapsed()
    );
    let id: String = out
        .strip_prefix("build ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no build id in {out:?}"))
        .to_owned();
    assert!(out.contains("(version 2)"), "{out}");
    let builds = stack.cpub_ok(&["builds", name]);
    assert!(
        builds.contains(&id) && builds.contains("building"),
        "{builds}"
    );
    // build-log -f follows it to its end.
    let log = stack.cpub_ok(&["build-log", &id, "-f"]);
    assert!(
        log.contains("two first")
            && log.contains("two second")
            && log.contains("version 2 of life-builds is active"),
        "{log}"
    );
    serves(&client, &url, "two\n").await;

    // Ctrl-C while following stops following, not the build.
    let v3 = slow_build_bundle(name, "three", 3);
    let mut deploy = Watched::spawn(&stack, &["deploy", v3.path().to_str().unwrap()]);
    deploy.wait_line("three first");
    let pid = deploy.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let (ok, _, stderr) = deploy.finish();
    assert!(!ok && stderr.contains("goes on"), "{stderr}");
    eventually(
        Duration::from_secs(120),
        "version 3 built and active",
        || async {
            let list = versions(&stack, name);
            (active(&list).version == 3).then_some(())
        },
    )
    .await;
    serves(&client, &url, "three\n").await;
    let builds: Vec<containerpub_wire::api::DeploymentInfo> =
        serde_json::from_str(&stack.cpub_ok(&["builds", name, "-o", "json"])).unwrap();
    let v3 = builds.iter().find(|b| b.version == 3).unwrap();
    let log = stack.cpub_ok(&["build-log", &v3.id.to_string()]);
    assert!(log.contains("three second"), "{log}");

    // Refusals.
    for (args, expected) in [
        (vec!["build-log", "999999"], "no build with id 999999"),
        (vec!["build-log", "0"], "0"),
        (vec!["builds", "life-nothing"], "not found"),
    ] {
        let out = stack.cpub(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expected),
            "{args:?}: {err}"
        );
    }
}

#[tokio::test]
async fn bundle_checks_stop_secrets_and_foreign_binaries_before_the_upload() {
    let stack = Stack::start(&[]).await.unwrap();
    let name = "life-checks";
    let dir = containerpub_e2e::bundle("hello", name, "");
    let path = dir.path().to_str().unwrap().to_owned();
    std::fs::write(dir.path().join(".env"), "DATABASE_PASSWORD=hunter2\n").unwrap();
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    std::fs::write(
        dir.path().join("keys/deploy"),
        "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n",
    )
    .unwrap();
    let out = stack.cpub(&["deploy", &path]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for expected in [
        "error: .env looks like an environment file",
        "error: keys/deploy contains a private key",
        "nothing was uploaded",
        "--force",
    ] {
        assert!(err.contains(expected), "{expected:?} in\n{err}");
    }
    let out = stack.cpub(&["versions", name]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not found"),
        "nothing reached the control plane"
    );

    // A binary linked against a loader the platform has no base for (musl's)
    // is stopped too (the server would refuse it after the upload); glibc's
    // runs on the debian base (e2e/tests/languages.rs).
    let dynamic = containerpub_e2e::bundle("hello", name, "");
    let binary = dynamic.path().join("bin/hello");
    std::fs::write(
        &binary,
        containerpub_wire::elf::fake_elf_with_interp(62, &[6, 3, 1], "/lib/ld-musl-x86_64.so.1"),
    )
    .unwrap();
    std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = stack.cpub(&["deploy", dynamic.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("entrypoint bin/hello is dynamically linked against"),
        "{err}"
    );

    // --force uploads anyway, printing the problems as warnings; a hint
    // (node_modules) never stops a deploy.
    std::fs::create_dir_all(dir.path().join("node_modules/x")).unwrap();
    std::fs::write(dir.path().join("node_modules/x/index.js"), "").unwrap();
    let out = stack.cpub(&["deploy", "--force", &path]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("warning (--force): .env looks like"), "{err}");
    assert!(
        err.contains("warning: 1 files under node_modules/"),
        "{err}"
    );
    std::fs::remove_file(dir.path().join(".env")).unwrap();
    std::fs::remove_dir_all(dir.path().join("keys")).unwrap();
    let out = stack.cpub(&["deploy", &path]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("error:"), "{err}");
    assert!(
        err.contains("warning: 1 files under node_modules/"),
        "{err}"
    );
}

/// A function whose CGI scripts (busybox httpd) stream server-sent events:
/// `/cgi-bin/sse` 4 events 1 s apart, `/cgi-bin/pause` one event, a 4 s
/// pause, another, `/cgi-bin/long` an event a second for 12 s.
fn streaming_bundle(name: &str, resources: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("cpub.toml"),
        format!(
            "name = \"{name}\"\nruntime = \"container\"\nvisibility = \"public\"\n[resources]\n{resources}\n"
        ),
    )
    .unwrap();
    std::fs::copy("/bin/busybox", p.join("busybox")).unwrap();
    std::fs::create_dir_all(p.join("www/cgi-bin")).unwrap();
    std::fs::write(p.join("www/index.html"), "up\n").unwrap();
    for (script, body) in [
        (
            "sse",
            "for i in 1 2 3 4; do echo \"data: $i\"; echo; sleep 1; done",
        ),
        (
            "pause",
            "echo 'data: 1'; echo; sleep 4; echo 'data: 2'; echo",
        ),
        (
            "long",
            "i=0; while [ $i -lt 12 ]; do i=$((i+1)); echo \"data: $i\"; echo; sleep 1; done",
        ),
    ] {
        let path = p.join("www/cgi-bin").join(script);
        std::fs::write(
            &path,
            format!(
                "#!/bin/busybox sh\nexport PATH=/bin\nalias sleep='/bin/busybox sleep'\n\
                 printf 'Content-Type: text/event-stream\\r\\n\\r\\n'\n{}\n",
                body.replace("sleep", "/bin/busybox sleep")
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(
        p.join("Containerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\n\
         CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
    )
    .unwrap();
    dir
}

/// GETs `url` and reads the body as it comes: the `data:` events, how long
/// it took, and whether it ended cleanly.
async fn events(url: &str) -> (Vec<String>, Duration, bool) {
    let started = Instant::now();
    let client = reqwest::Client::new();
    let mut r = client.get(url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{url}");
    let mut text = String::new();
    let clean = loop {
        match r.chunk().await {
            Ok(Some(piece)) => text.push_str(&String::from_utf8_lossy(&piece)),
            Ok(None) => break true,
            Err(_) => break false,
        }
    };
    let data = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect();
    (data, started.elapsed(), clean)
}

#[tokio::test]
async fn streamed_answers_outlive_timeout_ms_within_their_idle_and_total_limits() {
    let stack = Stack::start(&[]).await.unwrap();
    let name = "life-stream";
    let dir = streaming_bundle(
        name,
        "timeout_ms = 1000\nstream_idle_ms = 2000\nmax_call_s = 6",
    );
    stack.cpub_ok(&["deploy", dir.path().to_str().unwrap()]);
    let base = format!("{}/fn/{name}", stack.proxy_url());
    serves(&reqwest::Client::new(), &format!("{base}/"), "up\n").await;

    // Data keeps flowing: 4 s of events pass a 1 s timeout_ms.
    let (data, took, clean) = events(&format!("{base}/cgi-bin/sse")).await;
    assert_eq!(
        data,
        ["1", "2", "3", "4"],
        "took {took:?}\n{}",
        stack.logs()
    );
    assert!(clean && took >= Duration::from_secs(3), "{took:?}");

    // A pause longer than stream_idle_ms ends it.
    let (data, took, _) = events(&format!("{base}/cgi-bin/pause")).await;
    assert_eq!(data, ["1"], "took {took:?}");
    assert!(
        took < Duration::from_secs(4),
        "cut at the 2 s idle limit: {took:?}"
    );

    // max_call_s caps a stream that never pauses.
    let (data, took, _) = events(&format!("{base}/cgi-bin/long")).await;
    assert!(
        (4..=7).contains(&data.len()) && took < Duration::from_secs(9),
        "cut near 6 s: {data:?} after {took:?}"
    );
}
