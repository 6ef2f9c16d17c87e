//! Ships the node's function logs to the control plane: the pool captures
//! every instance's lines (`containerpub_pool::logs`), this task takes them
//! in batches (at most [`MAX_BATCH_LINES`] lines or [`BATCH_BYTES`], after a
//! short wait for more) and posts each to `POST /api/v1/logs` with the
//! proxy's token, as crash reports are (the proxy never opens PostgreSQL).
//!
//! A batch that cannot be delivered is kept and sent again (back-off 0.5 s
//! doubling to 10 s) while the pool's queue keeps filling up to its bound;
//! past that, lines are dropped and counted there. Each batch carries an
//! id (`<boot id>-<sequence>`), so a batch sent again after its answer was
//! lost (a timeout) is stored once; a control plane from before ids refuses
//! the field, and batches then go without one for ten minutes. Each group
//! names the file its lines were read from (its inode and first record's
//! time) and each line where it ends there, so lines read again after a kill (the offset saved before
//! it is up to a second old) are stored once; a control plane from before
//! them refuses the fields, and batches then go without for ten minutes. A batch
//! whose content the control plane refuses (400 or 422: it would be refused
//! again) is dropped and its lines counted
//! (`cpub_log_lines_dropped_total{reason="rejected"}`); every other status
//! (401/403 while a token is rotated, 404/413 from an ingress, 408, 429,
//! 5xx) and a 2xx whose body is not the control plane's answer are sent
//! again (the rule of `crate::ingest`, which the execution records follow
//! too). The answer says how many lines belonged to functions that no
//! longer exist.
//!
//! What the control plane answered (stored, or refused for good) is handed
//! back to the hub ([`LogHub::acknowledge`]), which moves each container's
//! saved offset past those lines: a proxy that stops (or dies) with lines
//! queued leaves them for the next one to read again from the files. At a
//! graceful stop [`shutdown`] gives the shipper a few seconds to empty the
//! queue and saves the offsets.

use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crate::ingest::{self, Outage, Verdict, verdict_of};
use containerpub_pool::logs::{Captured, LogConfig, LogHub, offsets};
use containerpub_wire::logs::{INGEST_PATH, LogBatch, LogGroup, LogIngest, MAX_BATCH_LINES};
use prometheus::{IntCounterVec, register_int_counter_vec};
use tracing::{debug, info, warn};

pub const ENV_LOG_RATE: &str = "CPUB_LOG_RATE_LINES";
pub const ENV_LOG_BURST: &str = "CPUB_LOG_BURST_LINES";
pub const ENV_LOG_BUFFER_MB: &str = "CPUB_LOG_BUFFER_MB";

/// Bytes of lines in one batch (the control plane reads up to 16 MiB).
const BATCH_BYTES: usize = 4 << 20;
/// Wait for more lines after the first before a batch leaves.
const LINGER: Duration = Duration::from_millis(100);
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// After a control plane refused a batch id (or the lines' places in their
/// files), batches go without this long before the proxy tries again (it
/// may have been upgraded).
const WITHOUT_IDS_FOR: Duration = Duration::from_secs(600);

/// The flags of log capture (flattened into `cpub-proxy`'s).
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Lines per second each function may log from this node; the rest are
    /// dropped and counted. 0 turns log capture off.
    #[arg(long, env = ENV_LOG_RATE, default_value_t = 10_000, value_name = "N")]
    pub log_rate_lines: u32,
    /// Lines a function may log at once above its rate.
    #[arg(long, env = ENV_LOG_BURST, default_value_t = 50_000, value_name = "N")]
    pub log_burst_lines: u32,
    /// MiB of log lines kept on the node while the control plane does not
    /// take them.
    #[arg(long, env = ENV_LOG_BUFFER_MB, default_value_t = 64, value_name = "MIB")]
    pub log_buffer_mb: u32,
}

impl LogArgs {
    /// The capture settings, or `None` when capture is off; offsets are
    /// kept in `<state_dir>/log-offsets`.
    pub fn config(&self, state_dir: &Path) -> Option<LogConfig> {
        (self.log_rate_lines > 0).then(|| LogConfig {
            rate_lines_per_s: self.log_rate_lines,
            burst_lines: self.log_burst_lines.max(1),
            buffer_bytes: (self.log_buffer_mb.max(1) as usize) << 20,
            offsets_dir: Some(state_dir.join(offsets::DIR_NAME)),
        })
    }
}

static BATCHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "cpub_log_batches_total",
        "Log batches posted to the control plane: ok, error (sent again), rejected (dropped).",
        &["result"]
    )
    .expect("register cpub_log_batches_total")
});

/// Posts the hub's lines forever.
pub async fn ship(hub: Arc<LogHub>, control_url: String, token: String, node: String) {
    let client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            warn!(error = %e, "log shipping disabled: cannot build the client");
            return;
        }
    };
    let url = format!("{control_url}{INGEST_PATH}");
    let boot = containerpub_wire::request_id::generate();
    let mut seq = 0u64;
    // Until then batches go without an id, or without the lines' places in
    // their files: the control plane predates them.
    let mut no_ids_until: Option<tokio::time::Instant> = None;
    let mut no_positions_until: Option<tokio::time::Instant> = None;
    let mut outage = Outage::new("log lines");
    loop {
        hub.wait().await;
        tokio::time::sleep(LINGER).await;
        let lines = hub.take(MAX_BATCH_LINES, BATCH_BYTES);
        if lines.is_empty() {
            continue;
        }
        seq += 1;
        let mut body = to_wire(&node, &lines);
        if no_ids_until.is_none_or(|t| tokio::time::Instant::now() >= t) {
            body.batch = Some(batch_id(&boot, seq));
        }
        if no_positions_until.is_some_and(|t| tokio::time::Instant::now() < t) {
            without_positions(&mut body);
        }
        let mut pause = RETRY_FIRST;
        loop {
            let sent = client
                .post(&url)
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await;
            match verdict_of::<LogIngest>(sent).await {
                Verdict::Stored(answer) => {
                    BATCHES.with_label_values(&["ok"]).inc();
                    outage.delivered();
                    hub.acknowledge(&lines);
                    if answer.duplicate {
                        debug!(lines = lines.len(), "log batch had been stored before");
                    } else if answer.repeated > 0 {
                        debug!(
                            lines = answer.repeated,
                            "log lines read again were stored before"
                        );
                    } else if answer.unknown > 0 {
                        debug!(
                            lines = answer.unknown,
                            "log lines of removed functions dropped"
                        );
                    }
                    break;
                }
                Verdict::Refused(status, text) => {
                    outage.delivered(); // it answered: reachable again
                    if body.batch.is_some() && refused_the_batch_id(status, &text) {
                        // A control plane from before batch ids: send this
                        // batch (and the next ones for a while) without.
                        info!("the control plane does not take log batch ids: sending none");
                        no_ids_until = Some(tokio::time::Instant::now() + WITHOUT_IDS_FOR);
                        body.batch = None;
                        continue;
                    }
                    if has_positions(&body) && refused_positions(status, &text) {
                        // One from before the lines' places: send them
                        // without (a kill may then store lines twice).
                        info!("the control plane does not take log line positions: sending none");
                        no_positions_until = Some(tokio::time::Instant::now() + WITHOUT_IDS_FOR);
                        without_positions(&mut body);
                        continue;
                    }
                    BATCHES.with_label_values(&["rejected"]).inc();
                    hub.reject(&lines);
                    let text = ingest::excerpt(&text);
                    warn!(%status, body = %text, lines = lines.len(), "log batch refused; dropped");
                    break;
                }
                Verdict::Again(why) => {
                    BATCHES.with_label_values(&["error"]).inc();
                    if !outage.failed(&why) {
                        debug!(why, "log batch not taken; trying again");
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }
}

/// Whether a refusal is a control plane from before batch ids reading one
/// (400, the whole body at fault: ``not a log batch: unknown field `batch`…``).
fn refused_the_batch_id(status: reqwest::StatusCode, answer: &str) -> bool {
    refused_field(status, answer, &["batch"])
}

/// Whether a refusal is a control plane from before lines' places in their
/// file reading them (``unknown field `file`…``, or `end`).
fn refused_positions(status: reqwest::StatusCode, answer: &str) -> bool {
    refused_field(status, answer, &["file", "end"])
}

/// Whether `batch` names a line's place in its file.
fn has_positions(batch: &LogBatch) -> bool {
    batch
        .groups
        .iter()
        .any(|g| g.file.is_some() || g.lines.iter().any(|l| l.end.is_some()))
}

/// A 400 for the whole body naming one of `fields` as unknown.
fn refused_field(status: reqwest::StatusCode, answer: &str, fields: &[&str]) -> bool {
    status == reqwest::StatusCode::BAD_REQUEST
        && serde_json::from_str::<containerpub_wire::api::ApiError>(answer).is_ok_and(|r| {
            r.field.as_deref() == Some("body")
                && r.error.starts_with("not a log batch")
                && fields
                    .iter()
                    .any(|f| r.error.contains(&format!("unknown field `{f}`")))
        })
}

/// `batch` without the lines' places in their files (for a control plane
/// from before them).
fn without_positions(batch: &mut LogBatch) {
    for group in &mut batch.groups {
        group.file = None;
        for line in &mut group.lines {
            line.end = None;
        }
    }
}

/// A batch's id: this process's boot id (a random request id: letters,
/// digits and `-`) and the batch's number, at most 128 bytes.
fn batch_id(boot: &str, seq: u64) -> String {
    let id = format!("{boot}-{seq}");
    if containerpub_wire::logs::is_valid_batch_id(&id) {
        id
    } else {
        // Never with the generator of today; still an id the control plane takes.
        format!("b-{seq}")
    }
}

/// On the way out (after the workers stopped): gives the shipper up to
/// `timeout` to send what is queued, then saves every container's
/// acknowledged offset; what is left is read again by the next proxy, or
/// counted (`reason="shutdown"`) when it cannot be.
pub async fn shutdown(hub: &LogHub, timeout: Duration) {
    let (again, lost) = hub.flush(timeout).await;
    if again > 0 || lost > 0 {
        info!(
            lines_for_next_proxy = again,
            lines_dropped = lost,
            "log lines not shipped before the stop"
        );
    }
}

/// The wire form: consecutive lines of one instance (and file) in one
/// group.
pub fn to_wire(node: &str, lines: &[Captured]) -> LogBatch {
    let mut groups: Vec<LogGroup> = Vec::new();
    for c in lines {
        match groups.last_mut() {
            Some(g)
                if g.deployment_id == c.deployment_id
                    && g.instance == *c.instance
                    && g.function == *c.function
                    && g.file.as_deref() == c.file.as_deref() =>
            {
                g.lines.push(c.entry.clone());
            }
            _ => groups.push(LogGroup {
                function: c.function.to_string(),
                deployment_id: c.deployment_id,
                instance: c.instance.to_string(),
                file: c.file.as_deref().map(str::to_owned),
                lines: vec![c.entry.clone()],
            }),
        }
    }
    LogBatch {
        node: node.to_owned(),
        batch: None,
        groups,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use containerpub_wire::logs::{LogEntry, LogStream};

    use super::*;

    fn captured(function: &str, instance: &str, line: &str) -> Captured {
        Captured {
            function: Arc::from(function),
            deployment_id: 1,
            instance: Arc::from(instance),
            entry: LogEntry {
                at_ns: 1,
                stream: LogStream::Stdout,
                request_id: None,
                line: line.into(),
                end: None,
            },
            source: None,
            file: None,
        }
    }

    #[test]
    fn consecutive_lines_of_an_instance_share_a_group_and_order_is_kept() {
        let lines = [
            captured("f", "a", "1"),
            captured("f", "a", "2"),
            captured("f", "b", "3"),
            captured("g", "b", "4"),
            captured("f", "a", "5"),
        ];
        let batch = to_wire("n", &lines);
        let shape: Vec<(&str, &str, usize)> = batch
            .groups
            .iter()
            .map(|g| (g.function.as_str(), g.instance.as_str(), g.lines.len()))
            .collect();
        assert_eq!(
            shape,
            [("f", "a", 2), ("f", "b", 1), ("g", "b", 1), ("f", "a", 1)]
        );
    }

    #[test]
    fn lines_of_another_file_start_a_group_that_names_it() {
        let mut lines = [
            captured("f", "a", "1"),
            captured("f", "a", "2"),
            captured("f", "a", "3"),
            captured("f", "a", "4"),
        ];
        lines[0].file = Some(Arc::from("7-1"));
        lines[1].file = Some(Arc::from("7-1"));
        lines[2].file = Some(Arc::from("7-2"));
        lines[1].entry.end = Some(20);
        let mut batch = to_wire("n", &lines);
        let shape: Vec<(Option<&str>, usize)> = batch
            .groups
            .iter()
            .map(|g| (g.file.as_deref(), g.lines.len()))
            .collect();
        assert_eq!(shape, [(Some("7-1"), 2), (Some("7-2"), 1), (None, 1)]);
        assert!(has_positions(&batch));
        assert_eq!(batch.groups[0].lines[1].end, Some(20));
        without_positions(&mut batch);
        assert!(batch.groups.iter().all(|g| g.file.is_none()));
        assert!(!has_positions(&batch));
        assert!(batch.groups[0].lines.iter().all(|l| l.end.is_none()));
        // What a control plane before them answers to either field.
        let bad = reqwest::StatusCode::BAD_REQUEST;
        let file = r#"{"error":"not a log batch: unknown field `file`, expected one of `function`, `deployment_id`, `instance`, `lines` at line 1 column 80","field":"body"}"#;
        let end = r#"{"error":"not a log batch: unknown field `end`, expected one of `at_ns`, `stream`, `request_id`, `line` at line 1 column 99","field":"body"}"#;
        assert!(refused_positions(bad, file) && refused_positions(bad, end));
        assert!(!refused_positions(reqwest::StatusCode::FORBIDDEN, file));
        assert!(!refused_the_batch_id(bad, file));
        let batch_id = r#"{"error":"not a log batch: unknown field `batch`, expected `node` or `groups` at line 1 column 25","field":"body"}"#;
        assert!(!refused_positions(bad, batch_id));
    }

    #[test]
    fn an_old_control_plane_refusing_the_batch_id_is_recognised() {
        // What a control plane from before batch ids answers (200 bytes at
        // most are read).
        let old = r#"{"error":"not a log batch: unknown field `batch`, expected `node` or `groups` at line 1 column 25","field":"body"}"#;
        let bad = reqwest::StatusCode::BAD_REQUEST;
        assert!(refused_the_batch_id(bad, old));
        assert!(!refused_the_batch_id(reqwest::StatusCode::FORBIDDEN, old));
        let new = r#"{"error":"must be 1 to 128 letters, digits and '-'","field":"batch"}"#;
        assert!(!refused_the_batch_id(bad, new));
        let other = r#"{"error":"not a log batch: missing field `node`","field":"body"}"#;
        assert!(!refused_the_batch_id(bad, other));
        assert!(!refused_the_batch_id(bad, "<html>"));
    }

    /// Answers each request with the next of `answers` (status and body),
    /// then with the last one; returns the URL and the bodies received.
    async fn scripted_control_plane(
        answers: Vec<(u16, &'static str)>,
    ) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&bodies);
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buf = [0u8; 8192];
                // The head, then Content-Length bytes of body.
                let body = loop {
                    let Ok(read) = stream.read(&mut buf).await else {
                        break None;
                    };
                    if read == 0 {
                        break None;
                    }
                    request.extend_from_slice(&buf[..read]);
                    let text = String::from_utf8_lossy(&request).into_owned();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let length: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break Some(text[end + 4..].to_owned());
                    }
                };
                let Some(body) = body else { continue };
                seen.lock().unwrap().push(body);
                let (status, text) = answers[n.min(answers.len() - 1)];
                n += 1;
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        (url, bodies)
    }

    fn rejected_lines(function: &str) -> f64 {
        prometheus::gather()
            .iter()
            .filter(|m| m.name() == "cpub_log_lines_dropped_total")
            .flat_map(|m| m.get_metric().iter())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "function" && l.value() == function)
                    && m.get_label()
                        .iter()
                        .any(|l| l.name() == "reason" && l.value() == "rejected")
            })
            .map(|m| m.get_counter().get_value())
            .sum()
    }

    #[tokio::test]
    async fn a_batch_refused_for_auth_or_size_or_answered_by_something_else_is_sent_again() {
        let function = "ship-unit-retry";
        let (url, bodies) = scripted_control_plane(vec![
            (401, r#"{"error":"token expired"}"#),
            (413, "<html>too large</html>"),
            (200, "<html>welcome</html>"),
            (200, r#"{"stored":2,"unknown":0}"#),
        ])
        .await;
        let log = std::env::temp_dir().join(format!("cpub-ship-unit-{}.log", std::process::id()));
        let t = "2026-11-29T21:47:38.396301304+00:00";
        std::fs::write(&log, format!("{t} stdout F one\n{t} stdout F two\n")).unwrap();
        let hub = LogHub::new(LogConfig::default()).unwrap();
        hub.follow_file(log.clone(), "abc", function);
        let shipper = tokio::spawn(ship(Arc::clone(&hub), url, "t".into(), "n1".into()));
        tokio::time::timeout(Duration::from_secs(20), async {
            while bodies.lock().unwrap().len() < 4 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the batch is sent four times");
        // Acknowledged by the last answer: nothing in flight, nothing lost.
        assert_eq!(hub.flush(Duration::from_secs(5)).await, (0, 0));
        shipper.abort();
        let bodies = bodies.lock().unwrap().clone();
        assert_eq!(bodies.len(), 4, "sent until stored, then no more");
        let batches: Vec<LogBatch> = bodies
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect();
        assert!(batches[0].batch.is_some());
        assert!(
            batches.iter().all(|b| b.batch == batches[0].batch),
            "the same batch each time"
        );
        assert_eq!(rejected_lines(function), 0.0);
        let _ = std::fs::remove_file(
            std::env::temp_dir().join(format!("cpub-ship-unit-{}.log", std::process::id())),
        );
    }

    #[tokio::test]
    async fn lines_name_their_place_unless_the_control_plane_refuses_it() {
        let function = "ship-unit-positions";
        let (url, bodies) = scripted_control_plane(vec![
            (
                400,
                r#"{"error":"not a log batch: unknown field `file`, expected one of `function`, `deployment_id`, `instance`, `lines` at line 1 column 80","field":"body"}"#,
            ),
            (200, r#"{"stored":2,"unknown":0}"#),
        ])
        .await;
        let log = std::env::temp_dir().join(format!("cpub-ship-pos-{}.log", std::process::id()));
        let t = "2026-11-29T21:47:38.396301304+00:00";
        let (one, two) = (format!("{t} stdout F one\n"), format!("{t} stdout F two\n"));
        std::fs::write(&log, format!("{one}{two}")).unwrap();
        let ino = std::fs::metadata(&log).unwrap().ino();
        // The inode and the digits of the first record's time.
        let file = format!("{ino}-202611292147383963013040000");
        let hub = LogHub::new(LogConfig::default()).unwrap();
        hub.follow_file(log.clone(), "abc", function);
        let shipper = tokio::spawn(ship(Arc::clone(&hub), url, "t".into(), "n1".into()));
        tokio::time::timeout(Duration::from_secs(20), async {
            while bodies.lock().unwrap().len() < 2 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the batch is sent twice");
        assert_eq!(hub.flush(Duration::from_secs(5)).await, (0, 0));
        shipper.abort();
        let batches: Vec<LogBatch> = bodies
            .lock()
            .unwrap()
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect();
        assert_eq!(batches.len(), 2);
        // First naming the file and where each line ends in it...
        let first = &batches[0].groups[0];
        assert_eq!(first.file.as_deref(), Some(file.as_str()));
        let ends: Vec<Option<u64>> = first.lines.iter().map(|l| l.end).collect();
        let (a, b) = (one.len() as u64, (one.len() + two.len()) as u64);
        assert_eq!(ends, [Some(a), Some(b)]);
        // ...then, refused, the same lines and id without them.
        let second = &batches[1];
        assert_eq!(second.batch, batches[0].batch);
        assert_eq!(second.groups[0].file, None);
        assert!(second.groups[0].lines.iter().all(|l| l.end.is_none()));
        assert_eq!(second.groups[0].lines.len(), 2);
        assert_eq!(rejected_lines(function), 0.0);
        let _ = std::fs::remove_file(&log);
    }

    #[test]
    fn batch_ids_are_unique_per_batch_and_valid() {
        let boot = containerpub_wire::request_id::generate();
        let (a, b) = (batch_id(&boot, 1), batch_id(&boot, 2));
        assert_ne!(a, b);
        assert!(containerpub_wire::logs::is_valid_batch_id(&a), "{a}");
        assert_ne!(boot, containerpub_wire::request_id::generate());
        assert_eq!(batch_id("bad boot/", 3), "b-3");
        assert!(containerpub_wire::logs::is_valid_batch_id(&batch_id(
            &"x".repeat(200),
            u64::MAX
        )));
    }
}
