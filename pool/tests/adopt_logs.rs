//! A container the pool removes at start-up instead of adopting it (it
//! exited, or failed its readiness probe) has its unshipped log lines read
//! first: from the offset the previous proxy saved to the end of its file,
//! with the fake runtime (`containerpub_pool::testing`).

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use containerpub_pool::logs::{LogConfig, LogHub, offsets};
use containerpub_pool::testing::FakeRuntime;
use containerpub_pool::{NodeConfig, Owned, Pool, PoolConfig};

const T: &str = "2026-11-29T21:47:38.396301304+00:00";
/// Containers that exited while no proxy ran.
const CRASHED: &str = "aaaa56789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const NO_OFFSET: &str = "bbbb56789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn exited(id: &str) -> Owned {
    Owned {
        id: id.into(),
        function: "adopt-logs".into(),
        deployment: "7".into(),
        image: "localhost/cpub-fn-adopt-logs:v1-d7-0123456789ab".into(),
        instances: None,
        state: "exited".into(),
        ip: None,
    }
}

fn write_log(path: &Path, lines: &[&str]) -> u64 {
    let text: String = lines
        .iter()
        .map(|l| format!("{T} stdout F {l}\n"))
        .collect();
    std::fs::write(path, text).unwrap();
    std::fs::metadata(path).unwrap().ino()
}

#[tokio::test]
async fn a_container_removed_at_start_up_has_its_unshipped_lines_read_first() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(offsets::DIR_NAME);
    std::fs::create_dir_all(&dir).unwrap();
    let crashed_log = root.path().join("crashed.log");
    let ino = write_log(&crashed_log, &["shipped", "unshipped", "panic: boom"]);
    // The previous proxy had the first line acknowledged.
    let shipped = format!("{T} stdout F shipped\n").len();
    std::fs::write(
        dir.join(CRASHED),
        format!("{{\"container\":\"{CRASHED}\",\"ino\":{ino},\"offset\":{shipped}}}"),
    )
    .unwrap();
    // Without an offset (a proxy that kept none): its lines were shipped.
    let other_log = root.path().join("other.log");
    write_log(&other_log, &["old"]);

    let fake = FakeRuntime::new()
        .await
        .with_leftovers(vec![exited(CRASHED), exited(NO_OFFSET)]);
    fake.set_log_path(CRASHED, crashed_log.clone());
    fake.set_log_path(NO_OFFSET, other_log.clone());
    let fake = Arc::new(fake);
    let hub = LogHub::new(LogConfig {
        offsets_dir: Some(dir.clone()),
        ..LogConfig::default()
    })
    .unwrap();
    let config = PoolConfig {
        node: "adopt-logs-node".into(),
        start_timeout: Duration::from_secs(5),
    };
    let pool = Pool::with_runtime_logs(
        fake.clone(),
        config,
        NodeConfig::default(),
        &[],
        Some(Arc::clone(&hub)),
    )
    .await
    .unwrap();

    // Both were removed, with their files, and the offset file is gone.
    let mut removed = fake.removed();
    removed.sort();
    assert_eq!(removed, [CRASHED, NO_OFFSET]);
    assert!(!crashed_log.exists());
    assert!(!dir.join(CRASHED).exists(), "offset file pruned");
    // The lines after the saved offset were queued before.
    let got = hub.take(100, 1 << 20);
    let texts: Vec<(&str, &str, i64, &str)> = got
        .iter()
        .map(|c| {
            (
                &*c.function,
                &*c.instance,
                c.deployment_id,
                c.entry.line.as_str(),
            )
        })
        .collect();
    assert_eq!(
        texts,
        [
            ("adopt-logs", &CRASHED[..12], 7, "unshipped"),
            ("adopt-logs", &CRASHED[..12], 7, "panic: boom"),
        ]
    );
    // No proxy can read them again: a stop before they are shipped counts
    // them instead of leaving them for the next one.
    assert_eq!(hub.flush(Duration::from_millis(10)).await, (0, 2));
    pool.shutdown().await;
}
