//! Resource use and keep-warm figures of functions (issues 11 and 15): what
//! a proxy adds per function to its periodic node report
//! ([`FunctionReport`], in `POST /api/v1/nodes/{node}/status`) and what
//! `GET /api/v1/functions/{name}/usage` answers ([`FunctionUsage`]: each
//! node's latest report and their sum), which `cpub stats` (field
//! `resources` of `…/stats`) and `cpub describe` show.
//!
//! Counters (`cpu_seconds`, `oom_kills`, `restarts`, keep-warm hits and
//! misses) count from the start of each proxy, like its Prometheus
//! counters: the control plane keeps only the latest report of each node,
//! in memory, so a restart of the control plane loses nothing that the next
//! report (every 5 s) does not bring back.

use serde::{Deserialize, Serialize};

/// Most functions one node report may list.
pub const MAX_REPORTED_FUNCTIONS: usize = 100_000;

/// One function on one node, as its proxy reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionReport {
    pub function: String,
    /// Live instances (any state) on the node.
    pub instances: u32,
    /// CPU time its instances used since the proxy started, in seconds
    /// (`cpub_instance_cpu_seconds_total`).
    pub cpu_seconds: f64,
    /// Memory its instances use now, summed (cgroup usage).
    pub memory_bytes: u64,
    /// Their memory limits, summed.
    pub memory_limit_bytes: u64,
    /// The memory limit of one instance (the largest, when deployments
    /// differ); `None` when no instance is live or none has a limit.
    pub instance_memory_limit_bytes: Option<u64>,
    /// The most memory one instance reached (cgroup peak) among those seen
    /// since the proxy started.
    pub instance_memory_peak_bytes: Option<u64>,
    /// Processes the kernel killed for memory (`cpub_instance_oom_kills_total`).
    pub oom_kills: u64,
    /// Instances that died and were replaced on demand
    /// (`cpub_pool_instance_crashes_total`).
    pub restarts: u64,
    /// Whether keep-warm applies to the function on this node (the
    /// manifest's `scaling.keep_warm`, else the node's window > 0).
    pub keep_warm: bool,
    /// Calls that resumed an instance kept warm.
    pub keep_warm_hits: u64,
    /// Cold starts of the function while keep-warm wanted it warm (called
    /// within the window, no instance left: evicted, crashed, removed).
    pub keep_warm_misses: u64,
    /// Paused instances kept past their idle stop.
    pub keep_warm_kept: u64,
}

/// One node's figures for a function in `GET …/usage`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeUsage {
    pub node: String,
    /// Seconds since the node reported.
    pub reported_s_ago: u64,
    /// The node's keep-warm window in seconds (0: keep-warm off unless a
    /// manifest turns it on).
    pub keep_warm_window_s: Option<u64>,
    /// CPU cores the function used between the node's last two reports
    /// (CPU seconds per second); `None` after the first report.
    pub cpu_share: Option<f64>,
    #[serde(flatten)]
    pub report: FunctionReport,
}

/// `GET /api/v1/functions/{name}/usage`: the nodes that reported the
/// function in the last minute, and their sum in `total` (`cpu_share`
/// summed; `instance_memory_*` the largest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionUsage {
    pub function: String,
    pub total: UsageTotal,
    pub nodes: Vec<NodeUsage>,
}

/// The sum over the nodes (see [`FunctionUsage`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageTotal {
    pub instances: u64,
    pub cpu_seconds: f64,
    pub cpu_share: Option<f64>,
    pub memory_bytes: u64,
    pub memory_limit_bytes: u64,
    pub instance_memory_limit_bytes: Option<u64>,
    pub instance_memory_peak_bytes: Option<u64>,
    pub oom_kills: u64,
    pub restarts: u64,
    pub keep_warm_hits: u64,
    pub keep_warm_misses: u64,
    pub keep_warm_kept: u64,
}

impl UsageTotal {
    /// Adds one node's figures.
    pub fn add(&mut self, node: &NodeUsage) {
        let r = &node.report;
        self.instances += u64::from(r.instances);
        self.cpu_seconds += r.cpu_seconds;
        self.cpu_share = match (self.cpu_share, node.cpu_share) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.memory_bytes = self.memory_bytes.saturating_add(r.memory_bytes);
        self.memory_limit_bytes = self.memory_limit_bytes.saturating_add(r.memory_limit_bytes);
        self.instance_memory_limit_bytes = self
            .instance_memory_limit_bytes
            .max(r.instance_memory_limit_bytes);
        self.instance_memory_peak_bytes = self
            .instance_memory_peak_bytes
            .max(r.instance_memory_peak_bytes);
        self.oom_kills = self.oom_kills.saturating_add(r.oom_kills);
        self.restarts = self.restarts.saturating_add(r.restarts);
        self.keep_warm_hits = self.keep_warm_hits.saturating_add(r.keep_warm_hits);
        self.keep_warm_misses = self.keep_warm_misses.saturating_add(r.keep_warm_misses);
        self.keep_warm_kept = self.keep_warm_kept.saturating_add(r.keep_warm_kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_over_nodes() {
        let node = |cpu_share, mem, peak| NodeUsage {
            node: "n".into(),
            reported_s_ago: 1,
            keep_warm_window_s: Some(60),
            cpu_share,
            report: FunctionReport {
                function: "f".into(),
                instances: 1,
                cpu_seconds: 1.5,
                memory_bytes: mem,
                memory_limit_bytes: 100,
                instance_memory_limit_bytes: Some(100),
                instance_memory_peak_bytes: peak,
                oom_kills: 1,
                restarts: 2,
                keep_warm: true,
                keep_warm_hits: 3,
                keep_warm_misses: 4,
                keep_warm_kept: 5,
            },
        };
        let mut t = UsageTotal::default();
        t.add(&node(None, 10, Some(50)));
        t.add(&node(Some(0.25), 20, None));
        assert_eq!(t.instances, 2);
        assert_eq!(t.cpu_seconds, 3.0);
        assert_eq!(t.cpu_share, Some(0.25));
        assert_eq!((t.memory_bytes, t.memory_limit_bytes), (30, 200));
        assert_eq!(t.instance_memory_peak_bytes, Some(50));
        assert_eq!((t.oom_kills, t.restarts), (2, 4));
        assert_eq!(
            (t.keep_warm_hits, t.keep_warm_misses, t.keep_warm_kept),
            (6, 8, 10)
        );
        // The flattened wire form round-trips.
        let n = node(Some(0.5), 1, None);
        let text = serde_json::to_string(&n).unwrap();
        assert!(text.contains("\"cpu_seconds\":1.5"), "{text}");
        let back: NodeUsage = serde_json::from_str(&text).unwrap();
        assert_eq!(back.report, n.report);
    }
}
