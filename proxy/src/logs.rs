//! Ships the node's function logs to the control plane: the pool captures
//! every instance's lines (`containerpub_pool::logs`), this task takes them
//! in batches (at most [`MAX_BATCH_LINES`] lines or [`BATCH_BYTES`], after a
//! short wait for more) and posts each to `POST /api/v1/logs` with the
//! proxy's token, as crash reports are (the proxy never opens PostgreSQL).
//!
//! A batch that cannot be delivered is kept and sent again (back-off 0.5 s
//! doubling to 10 s) while the pool's queue keeps filling up to its bound;
//! past that, lines are dropped and counted there. A batch the control
//! plane refuses (4xx) is dropped and its lines counted
//! (`cpub_log_lines_dropped_total{reason="rejected"}`); the answer says how
//! many lines belonged to functions that no longer exist.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use containerpub_pool::logs::{Captured, LogConfig, LogHub};
use containerpub_wire::logs::{INGEST_PATH, LogBatch, LogGroup, LogIngest, MAX_BATCH_LINES};
use prometheus::{IntCounterVec, register_int_counter_vec};
use tracing::{debug, warn};

pub const ENV_LOG_RATE: &str = "CPUB_LOG_RATE_LINES";
pub const ENV_LOG_BURST: &str = "CPUB_LOG_BURST_LINES";
pub const ENV_LOG_BUFFER_MB: &str = "CPUB_LOG_BUFFER_MB";

/// Bytes of lines in one batch (the control plane reads up to 16 MiB).
const BATCH_BYTES: usize = 4 << 20;
/// Wait for more lines after the first before a batch leaves.
const LINGER: Duration = Duration::from_millis(100);
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

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
    /// The capture settings, or `None` when capture is off.
    pub fn config(&self) -> Option<LogConfig> {
        (self.log_rate_lines > 0).then(|| LogConfig {
            rate_lines_per_s: self.log_rate_lines,
            burst_lines: self.log_burst_lines.max(1),
            buffer_bytes: (self.log_buffer_mb.max(1) as usize) << 20,
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
    loop {
        hub.wait().await;
        tokio::time::sleep(LINGER).await;
        let lines = hub.take(MAX_BATCH_LINES, BATCH_BYTES);
        if lines.is_empty() {
            continue;
        }
        let body = to_wire(&node, &lines);
        let mut pause = RETRY_FIRST;
        loop {
            match client
                .post(&url)
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {
                    BATCHES.with_label_values(&["ok"]).inc();
                    if let Ok(answer) = r.json::<LogIngest>().await
                        && answer.unknown > 0
                    {
                        debug!(
                            lines = answer.unknown,
                            "log lines of removed functions dropped"
                        );
                    }
                    break;
                }
                Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                    BATCHES.with_label_values(&["rejected"]).inc();
                    let status = r.status();
                    let text: String = r
                        .text()
                        .await
                        .unwrap_or_default()
                        .chars()
                        .take(200)
                        .collect();
                    for group in &body.groups {
                        hub.count_rejected(&group.function, group.lines.len() as u64);
                    }
                    warn!(%status, body = %text, lines = lines.len(), "log batch refused; dropped");
                    break;
                }
                Ok(r) => {
                    BATCHES.with_label_values(&["error"]).inc();
                    debug!(status = %r.status(), "log batch not taken; trying again");
                }
                Err(e) => {
                    BATCHES.with_label_values(&["error"]).inc();
                    debug!(error = %e, "log batch not delivered; trying again");
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }
}

/// The wire form: consecutive lines of one instance in one group.
pub fn to_wire(node: &str, lines: &[Captured]) -> LogBatch {
    let mut groups: Vec<LogGroup> = Vec::new();
    for c in lines {
        match groups.last_mut() {
            Some(g)
                if g.deployment_id == c.deployment_id
                    && g.instance == *c.instance
                    && g.function == *c.function =>
            {
                g.lines.push(c.entry.clone());
            }
            _ => groups.push(LogGroup {
                function: c.function.to_string(),
                deployment_id: c.deployment_id,
                instance: c.instance.to_string(),
                lines: vec![c.entry.clone()],
            }),
        }
    }
    LogBatch {
        node: node.to_owned(),
        groups,
    }
}

#[cfg(test)]
mod tests {
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
            },
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
}
