//! Small uploads that would cost a lot of memory: a ~3 MB `.tar.gz` holding
//! a 600 MB PAX extended header (or a GNU long-name / long-link header),
//! which the `tar` crate reads whole into memory. Eight in parallel against
//! the real cpub-control must each get a 400 naming the limit, and the
//! process's peak RSS (`VmHWM`) must stay under 300 MB (on dfe849d it went
//! to about 3 GB).

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use containerpub_e2e::{Stack, proc_status_kib};

/// Bytes in each hostile extension header.
const HEADER_BYTES: u64 = 600_000_000;
/// The goal for the control plane's peak resident set size.
const PEAK_RSS_LIMIT_KIB: u64 = 300 * 1024;

/// A `.tar.gz` whose first entry is an extension header of `entry_type`
/// announcing (and holding) `HEADER_BYTES` bytes, then a small file. Made
/// with the `gzip` tool: a single gzip member, as `tar czf` writes.
fn hostile(entry_type: tar::EntryType) -> Vec<u8> {
    let mut header = if entry_type == tar::EntryType::XHeader {
        let mut h = tar::Header::new_ustar();
        h.set_path("PaxHeaders.0/cpub.toml").unwrap();
        h
    } else {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h
    };
    header.set_entry_type(entry_type);
    header.set_size(HEADER_BYTES);
    header.set_mode(0o644);
    header.set_cksum();
    let mut file = tar::Header::new_gnu();
    file.set_path("cpub.toml").unwrap();
    file.set_size(0);
    file.set_mode(0o644);
    file.set_cksum();

    let mut gzip = Command::new("gzip")
        .args(["-1", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    let mut stdin = gzip.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        stdin.write_all(header.as_bytes()).unwrap();
        // PAX records would be "N key=value\n"; the size is what matters.
        let chunk = vec![b'a'; 1 << 20];
        let mut left = HEADER_BYTES;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            stdin.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
        let pad = (512 - HEADER_BYTES % 512) % 512;
        stdin.write_all(&vec![0; pad as usize]).unwrap();
        stdin.write_all(file.as_bytes()).unwrap();
        stdin.write_all(&[0; 1024]).unwrap();
    });
    let mut out = Vec::new();
    gzip.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    writer.join().unwrap();
    assert!(gzip.wait().unwrap().success());
    out
}

#[tokio::test]
async fn eight_hostile_header_uploads_in_parallel_stay_under_300_mb() {
    let kinds = [
        (tar::EntryType::XHeader, "PAX extended header"),
        (tar::EntryType::GNULongName, "GNU long-name header"),
        (tar::EntryType::GNULongLink, "GNU long-link header"),
    ];
    let bodies: Vec<(Vec<u8>, &str)> = std::thread::scope(|s| {
        let handles: Vec<_> = kinds
            .iter()
            .map(|(t, what)| s.spawn(move || (hostile(*t), *what)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (body, what) in &bodies {
        assert!(
            body.len() < 8 << 20,
            "{what}: the hostile upload is {} bytes",
            body.len()
        );
    }

    let stack = Stack::start(&[]).await.unwrap();
    let pid = stack.control_pid().unwrap();
    let before = proc_status_kib(pid, "VmHWM").unwrap();
    let client = stack.api();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (body, what) = bodies[i % bodies.len()].clone();
        let client = client.clone();
        let url = format!(
            "{}/api/v1/functions/hostile-{i}/deployments",
            stack.control_url()
        );
        tasks.push(tokio::spawn(async move {
            let reply = client
                .post(&url)
                .header("content-type", "application/gzip")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = reply.status().as_u16();
            let text = reply.text().await.unwrap();
            (what, status, text)
        }));
    }
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    let peak = proc_status_kib(pid, "VmHWM").unwrap();
    eprintln!(
        "cpub-control VmHWM: {} MiB before, {} MiB after 8 hostile uploads",
        before / 1024,
        peak / 1024
    );
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "cpub-control peaked at {} MiB (limit {} MiB)",
        peak / 1024,
        PEAK_RSS_LIMIT_KIB / 1024
    );
    for (what, status, text) in replies {
        assert_eq!(status, 400, "{what}: {text}");
        let error: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(error["field"], "bundle", "{text}");
        let message = error["error"].as_str().unwrap();
        assert!(
            message.contains(what)
                && message.contains("600000000 bytes")
                && message.contains("limit"),
            "{message}"
        );
    }
    // Still serving.
    let health = reqwest::get(format!("{}/healthz", stack.control_url()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}
