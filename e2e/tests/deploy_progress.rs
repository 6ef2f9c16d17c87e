//! End-to-end: `cpub deploy`'s upload progress (issue 13) against the real
//! stack, with stderr a pipe (plain lines, no escape codes), a real
//! terminal (`script` gives the CLI a pseudo-terminal: the bar), the bar
//! forced with `CPUB_PROGRESS=bar`, none with `none`, and a bad value
//! refused. The bundle is `examples/hello` plus 1 MiB of incompressible
//! bytes, so the upload spans many chunks.

use std::process::{Command, Output, Stdio};

use containerpub_e2e::{Stack, bin, bundle};

/// `cpub deploy DIR` with `CPUB_PROGRESS` set to `progress` (or unset).
fn deploy(stack: &Stack, dir: &str, progress: Option<&str>) -> Output {
    let mut cmd = Command::new(bin("cpub"));
    cmd.args(["deploy", dir]);
    env(&mut cmd, stack, progress);
    cmd.output().expect("running cpub")
}

fn env(cmd: &mut Command, stack: &Stack, progress: Option<&str>) {
    cmd.env("CPUB_URL", stack.control_url())
        .env("CPUB_TOKEN", &stack.token)
        .env("CPUB_CONFIG", stack.dir.path().join("cli-config.toml"))
        .env_remove("CPUB_PROGRESS")
        .stdin(Stdio::null());
    if let Some(p) = progress {
        cmd.env("CPUB_PROGRESS", p);
    }
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "cpub deploy failed: {}\nstdout: {}\nstderr: {stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

#[tokio::test]
async fn deploy_shows_upload_progress_as_a_bar_on_a_terminal_and_as_plain_lines_elsewhere() {
    let stack = Stack::start(&[]).await.unwrap();
    let name = "progress";
    let dir = bundle("hello", name, "");
    // 1 MiB that gzip cannot shrink (xorshift bytes).
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(dir.path().join("noise.bin"), noise).unwrap();
    let path = dir.path().to_str().unwrap();

    // stderr is a pipe: plain lines, the quarters then the exact count.
    let stderr = ok(&deploy(&stack, path, None));
    assert!(
        !stderr.contains('\x1b') && !stderr.contains('\r'),
        "{stderr:?}"
    );
    let quarters: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("uploading: "))
        .collect();
    assert_eq!(quarters.len(), 3, "{stderr}");
    for (line, pct) in quarters.iter().zip(["25%", "50%", "75%"]) {
        assert!(line.starts_with(&format!("uploading: {pct} (")), "{line}");
        assert!(line.ends_with(" MiB)"), "{line}");
    }
    let sent: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("uploaded ")?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no byte count: {stderr}"));
    assert!(
        (1 << 20..2 << 20).contains(&sent),
        "{sent} bytes for a 1 MiB bundle"
    );

    // A terminal (a pseudo-terminal from `script`): the bar is drawn.
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c"])
        .arg(format!("{} deploy {path}", bin("cpub").display()))
        .arg("/dev/null");
    env(&mut cmd, &stack, None);
    let out = cmd.output().expect("running script (util-linux)");
    let seen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{seen}");
    assert!(
        seen.contains("uploading "),
        "no bar on a terminal: {seen:?}"
    );
    assert!(
        seen.contains("iB/") && seen.contains(" MiB"),
        "the bar shows bytes of the total: {seen:?}"
    );
    assert!(
        !seen.contains("uploading: "),
        "plain lines on a terminal: {seen:?}"
    );

    // Forced on a pipe: the bar; off: nothing about the upload.
    let stderr = ok(&deploy(&stack, path, Some("bar")));
    assert!(
        stderr.contains("uploading ") && stderr.contains("iB/"),
        "{stderr:?}"
    );
    let stderr = ok(&deploy(&stack, path, Some("none")));
    assert!(!stderr.contains("upload"), "{stderr}");

    // A bad value: a clear error, nothing uploaded.
    let before = stack.cpub_ok(&["versions", name]);
    let out = deploy(&stack, path, Some("fancy"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CPUB_PROGRESS must be auto, bar, plain or none, not \"fancy\""),
        "{stderr}"
    );
    assert_eq!(stack.cpub_ok(&["versions", name]), before);
}
