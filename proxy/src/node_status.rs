//! Every few seconds: reads the CPU and memory use of this node's instances
//! from their cgroups into per-function metrics, and reports the instances
//! (function, state, calls in flight) and per-function figures
//! ([`containerpub_wire::usage::FunctionReport`]: CPU seconds, memory in
//! use, limit and peak, OOM kills, restarts, keep-warm hits and misses) and
//! the failed starts other than crashes of each function that had one
//! ([`containerpub_wire::start_failures`]: counts by reason, the last
//! one's reason, message and age) to the control plane (`POST
//! /api/v1/nodes/{node}/status`) for `cpub status`, `cpub stats` and `cpub
//! describe`. A control plane from before the failures refuses a report
//! that has them (it refuses unknown keys): the reports then go without
//! them for [`WITHOUT_FAILURES_FOR`].
//!
//! Metrics (per function, summed over its instances on this node):
//! `cpub_instance_memory_bytes`, `cpub_instance_memory_limit_bytes`,
//! `cpub_instance_cpu_seconds_total` and `cpub_instance_oom_kills_total`
//! (the kernel's `oom_kill` count of each instance's memory cgroup, read
//! every 5 s), the kernel log's OOM-kill records (`crate::oom_watch`) and
//! Podman's `OOMKilled` on an instance's exit
//! (`containerpub_pool::Pool::take_deaths`): a kill that takes the instance
//! down is gone with its cgroup before a read sees it. Per container the
//! count is the largest of the three sources, so one kill seen twice
//! counts once; kernel records of containers that are not this node's
//! instances (or a death's) within a minute are dropped. The pool counts
//! every death in `cpub_pool_instance_crashes_total`, the restarts.
//!
//! cgroup paths: v1 with Podman's `cgroupfs` manager
//! (`/sys/fs/cgroup/{memory,cpuacct}/libpod_parent/libpod-<id>/`, what
//! this machine has), else v2 under `machine.slice/libpod-<id>.scope`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use containerpub_pool::Pool;
use containerpub_wire::api::ApiError;
use containerpub_wire::executions::{InstanceReport, NodeReport};
use containerpub_wire::start_failures::{FunctionStartFailures, LastStartFailure};
use containerpub_wire::usage::FunctionReport;
use prometheus::{CounterVec, IntCounterVec, IntGaugeVec, Opts};
use tracing::{debug, info};

/// How often the instances are read and reported.
pub const EVERY: Duration = Duration::from_secs(5);
/// How long reports go without their start failures after a control plane
/// refused them (one from before them); then they are tried again.
pub const WITHOUT_FAILURES_FOR: Duration = Duration::from_secs(600);

struct Metrics {
    memory: IntGaugeVec,
    limit: IntGaugeVec,
    cpu: CounterVec,
    oom: IntCounterVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let gauge = |name: &str, help: &str| {
        IntGaugeVec::new(Opts::new(name, help), &["function"]).expect("valid metric")
    };
    let counter = |name: &str, help: &str| {
        IntCounterVec::new(Opts::new(name, help), &["function"]).expect("valid metric")
    };
    let m = Metrics {
        memory: gauge(
            "cpub_instance_memory_bytes",
            "Memory used by the function's instances on this node (cgroup usage)",
        ),
        limit: gauge(
            "cpub_instance_memory_limit_bytes",
            "Memory limit of the function's instances on this node, summed",
        ),
        cpu: CounterVec::new(
            Opts::new(
                "cpub_instance_cpu_seconds_total",
                "CPU time used by the function's instances on this node, in seconds",
            ),
            &["function"],
        )
        .expect("valid metric"),
        oom: counter(
            "cpub_instance_oom_kills_total",
            "Processes of the function's instances the kernel killed for memory (cgroup oom_kill)",
        ),
    };
    let r = prometheus::default_registry();
    let _ = r.register(Box::new(m.memory.clone()));
    let _ = r.register(Box::new(m.limit.clone()));
    let _ = r.register(Box::new(m.cpu.clone()));
    let _ = r.register(Box::new(m.oom.clone()));
    m
});

/// Registers the instance metrics (a scrape shows their names from the start).
pub fn init_metrics() {
    LazyLock::force(&METRICS);
}

/// What one read of an instance's cgroups found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub memory: u64,
    pub limit: Option<u64>,
    pub cpu_ns: u64,
    pub oom_kills: u64,
    /// The most memory the cgroup used (v1 `memory.max_usage_in_bytes`,
    /// v2 `memory.peak` where the kernel has it).
    pub peak: Option<u64>,
}

fn read_u64(path: PathBuf) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a `key value` file (`memory.oom_control`, `cpu.stat`).
fn read_key(path: PathBuf, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Reads the cgroups of container `id` under `root` (`/sys/fs/cgroup`).
pub fn read_usage(root: &std::path::Path, id: &str) -> Option<Usage> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let v1 = root
        .join("memory/libpod_parent")
        .join(format!("libpod-{id}"));
    if v1.is_dir() {
        let cpu = root
            .join("cpuacct/libpod_parent")
            .join(format!("libpod-{id}"))
            .join("cpuacct.usage");
        // An unlimited v1 cgroup says so with a huge number.
        let limit = read_u64(v1.join("memory.limit_in_bytes")).filter(|&l| l < (1 << 62));
        return Some(Usage {
            memory: read_u64(v1.join("memory.usage_in_bytes"))?,
            limit,
            cpu_ns: read_u64(cpu).unwrap_or(0),
            oom_kills: read_key(v1.join("memory.oom_control"), "oom_kill").unwrap_or(0),
            peak: read_u64(v1.join("memory.max_usage_in_bytes")),
        });
    }
    let v2 = root
        .join("machine.slice")
        .join(format!("libpod-{id}.scope"));
    if v2.is_dir() {
        return Some(Usage {
            memory: read_u64(v2.join("memory.current"))?,
            limit: read_u64(v2.join("memory.max")),
            cpu_ns: read_key(v2.join("cpu.stat"), "usage_usec").unwrap_or(0) * 1000,
            oom_kills: read_key(v2.join("memory.events"), "oom_kill").unwrap_or(0),
            peak: read_u64(v2.join("memory.peak")),
        });
    }
    None
}

/// How long a container's function is remembered after it is gone, and a
/// kernel OOM record waits for its container to be known.
const REMEMBER: Duration = Duration::from_secs(60);

/// Per-instance counters seen at the last read (to add only the increase).
#[derive(Default)]
struct Seen {
    cpu_ns: HashMap<String, u64>,
    /// OOM kills counted per container.
    oom: HashMap<String, u64>,
    /// OOM kills per container from the kernel log / Podman, and when
    /// first seen.
    reported_oom: HashMap<String, (u64, Instant)>,
    /// Function of each container seen (live, or died), and when last seen.
    known: HashMap<String, (String, Instant)>,
    functions: Vec<String>,
    /// The most memory one instance of the function reached, since start.
    peak: HashMap<String, u64>,
}

/// One function's figures of this read.
#[derive(Default)]
struct Totals {
    instances: u32,
    memory: u64,
    limit: u64,
    instance_limit: Option<u64>,
}

/// Reads every instance of `pool` once: updates the metrics, returns the
/// report for the control plane.
fn sample(pool: &Pool, seen: &mut Seen) -> NodeReport {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let instances = pool.instances();
    let m = &*METRICS;
    let now = Instant::now();
    // Who died (their function, Podman's OOM flag) and what the kernel
    // killed, since the last read.
    for death in pool.take_deaths() {
        if death.oom_killed {
            let e = seen
                .reported_oom
                .entry(death.id.clone())
                .or_insert((0, now));
            e.0 = e.0.max(1);
        }
        seen.known.insert(death.id, (death.function, now));
    }
    for id in crate::oom_watch::take() {
        seen.reported_oom.entry(id).or_insert((0, now)).0 += 1;
    }
    for i in &instances {
        seen.known.insert(i.id.clone(), (i.function.clone(), now));
    }
    let mut totals: HashMap<&str, Totals> = HashMap::new();
    let mut live = HashMap::new();
    for i in &instances {
        let t = totals.entry(i.function.as_str()).or_default();
        t.instances += 1;
        let Some(usage) = read_usage(root, &i.id) else {
            continue;
        };
        t.memory += usage.memory;
        t.limit += usage.limit.unwrap_or(0);
        t.instance_limit = t.instance_limit.max(usage.limit);
        let peak = usage.peak.unwrap_or(usage.memory);
        let top = seen.peak.entry(i.function.clone()).or_default();
        *top = (*top).max(peak);
        let prev_cpu = seen.cpu_ns.get(&i.id).copied().unwrap_or(0);
        let cpu_delta = usage.cpu_ns.saturating_sub(prev_cpu);
        m.cpu
            .with_label_values(&[i.function.as_str()])
            .inc_by(cpu_delta as f64 / 1e9);
        let reported = seen.reported_oom.get(&i.id).map_or(0, |r| r.0);
        let kills = usage.oom_kills.max(reported);
        let prev_oom = seen.oom.get(&i.id).copied().unwrap_or(0);
        // Touched even at 0, so the function's series exists.
        m.oom
            .with_label_values(&[i.function.as_str()])
            .inc_by(kills.saturating_sub(prev_oom));
        seen.oom.insert(i.id.clone(), kills.max(prev_oom));
        live.insert(i.id.clone(), usage.cpu_ns);
    }
    // Kills of containers not read now (gone, or never read).
    for (id, (n, _)) in &seen.reported_oom {
        if live.contains_key(id) {
            continue;
        }
        let Some((function, _)) = seen.known.get(id) else {
            continue;
        };
        let prev = seen.oom.get(id).copied().unwrap_or(0);
        m.oom
            .with_label_values(&[function.as_str()])
            .inc_by(n.saturating_sub(prev));
        seen.oom.insert(id.clone(), prev.max(*n));
    }
    seen.known
        .retain(|_, (_, at)| now.duration_since(*at) < REMEMBER);
    seen.reported_oom
        .retain(|_, (_, at)| now.duration_since(*at) < REMEMBER);
    let known = &seen.known;
    seen.oom.retain(|id, _| known.contains_key(id));
    seen.cpu_ns = live;
    // Functions with no instance left show 0.
    for f in &seen.functions {
        if !totals.contains_key(f.as_str()) {
            m.memory.with_label_values(&[f]).set(0);
            m.limit.with_label_values(&[f]).set(0);
        }
    }
    seen.functions = totals.keys().map(|f| (*f).to_owned()).collect();
    for (function, t) in &totals {
        m.memory.with_label_values(&[function]).set(t.memory as i64);
        m.limit.with_label_values(&[function]).set(t.limit as i64);
    }
    // Every routed function, and any other with an instance (one that is
    // being removed).
    let counters = pool.function_counters();
    let start_failures = counters
        .iter()
        .filter_map(|c| {
            let f = c.start_failures.as_ref()?;
            Some(FunctionStartFailures {
                function: c.function.clone(),
                counts: f.counts.iter().map(|&(r, n)| (r.to_owned(), n)).collect(),
                last: LastStartFailure {
                    reason: f.reason.to_owned(),
                    message: f.message.clone(),
                    age_ms: u64::try_from(f.age.as_millis()).unwrap_or(u64::MAX),
                },
            })
        })
        .collect();
    let mut functions: Vec<FunctionReport> = counters
        .into_iter()
        .map(|c| FunctionReport {
            function: c.function,
            restarts: c.restarts,
            keep_warm: c.keep_warm,
            keep_warm_hits: c.keep_warm_hits,
            keep_warm_misses: c.keep_warm_misses,
            keep_warm_kept: c.keep_warm_kept,
            ..FunctionReport::default()
        })
        .collect();
    for f in totals.keys() {
        if !functions.iter().any(|r| r.function == *f) {
            functions.push(FunctionReport {
                function: (*f).to_owned(),
                ..FunctionReport::default()
            });
        }
    }
    seen.peak
        .retain(|f, _| functions.iter().any(|r| &r.function == f));
    for r in &mut functions {
        let name = [r.function.as_str()];
        r.cpu_seconds = m.cpu.with_label_values(&name).get();
        r.oom_kills = m.oom.with_label_values(&name).get();
        r.instance_memory_peak_bytes = seen.peak.get(&r.function).copied();
        if let Some(t) = totals.get(r.function.as_str()) {
            r.instances = t.instances;
            r.memory_bytes = t.memory;
            r.memory_limit_bytes = t.limit;
            r.instance_memory_limit_bytes = t.instance_limit;
        }
    }
    NodeReport {
        instances: instances
            .iter()
            .map(|i| InstanceReport {
                function: i.function.clone(),
                deployment_id: i.deployment_id,
                id: i.id.chars().take(12).collect(),
                state: i.state.as_str().to_owned(),
                in_flight: i.in_flight,
            })
            .collect(),
        functions,
        keep_warm_window_s: Some(pool.node().keep_warm.window.as_secs()),
        start_failures,
    }
}

/// Whether a refusal of a report is a control plane from before the start
/// failures (400, the whole body at fault, serde naming the unknown key).
fn refused_start_failures(status: reqwest::StatusCode, answer: &str) -> bool {
    status == reqwest::StatusCode::BAD_REQUEST
        && serde_json::from_str::<ApiError>(answer).is_ok_and(|r| {
            r.field.as_deref() == Some("body")
                && r.error.starts_with("not a node report")
                && r.error.contains("`start_failures`")
        })
}

/// Reads and reports forever.
pub async fn run(pool: Pool, control_url: String, token: String, node: String) {
    init_metrics();
    crate::oom_watch::start();
    let client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "node reports disabled: cannot build the client");
            return;
        }
    };
    let url = format!("{control_url}/api/v1/nodes/{node}/status");
    let mut seen = Seen::default();
    let mut without_failures_until: Option<Instant> = None;
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let mut report = sample(&pool, &mut seen);
        if without_failures_until.is_some_and(|t| Instant::now() < t) {
            report.start_failures.clear();
        }
        let post = |report: &NodeReport| client.post(&url).bearer_auth(&token).json(report).send();
        let sent = match post(&report).await {
            Ok(r)
                if r.status() == reqwest::StatusCode::BAD_REQUEST
                    && !report.start_failures.is_empty() =>
            {
                let status = r.status();
                let answer = r.text().await.unwrap_or_default();
                if refused_start_failures(status, &answer) {
                    info!(
                        "the control plane does not take start failures in node reports: sending them without"
                    );
                    without_failures_until = Some(Instant::now() + WITHOUT_FAILURES_FOR);
                    report.start_failures.clear();
                    post(&report).await.map(|r| r.status())
                } else {
                    Ok(status)
                }
            }
            other => other.map(|r| r.status()),
        };
        match sent {
            Ok(status) if status.is_success() => {}
            Ok(status) => debug!(%status, "node report refused"),
            Err(e) => debug!(error = %e, "node report not delivered"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node report as a control plane from before the start failures
    /// reads it (its keys, unknown ones refused).
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct OldNodeReport {
        instances: Vec<InstanceReport>,
        #[serde(default)]
        functions: Vec<FunctionReport>,
        #[serde(default)]
        keep_warm_window_s: Option<u64>,
    }

    /// What such a control plane answers (`routes::status::report`).
    fn old_control_answer(body: &[u8]) -> Option<String> {
        let e = serde_json::from_slice::<OldNodeReport>(body).err()?;
        Some(
            serde_json::to_string(&ApiError {
                error: format!("not a node report: {e}"),
                field: Some("body".into()),
            })
            .unwrap(),
        )
    }

    #[test]
    fn an_old_control_plane_refusing_start_failures_is_told_apart() {
        let mut report = NodeReport {
            instances: Vec::new(),
            functions: vec![FunctionReport {
                function: "f".into(),
                ..FunctionReport::default()
            }],
            keep_warm_window_s: Some(60),
            start_failures: Vec::new(),
        };
        // Without failures the old control plane takes the report as is.
        assert_eq!(
            old_control_answer(&serde_json::to_vec(&report).unwrap()),
            None
        );
        report.start_failures.push(FunctionStartFailures {
            function: "f".into(),
            counts: [("not_ready".to_owned(), 1)].into(),
            last: LastStartFailure {
                reason: "not_ready".into(),
                message: "not ready within 2000 ms".into(),
                age_ms: 10,
            },
        });
        let answer = old_control_answer(&serde_json::to_vec(&report).unwrap())
            .expect("an old control plane refuses the failures");
        assert!(
            refused_start_failures(reqwest::StatusCode::BAD_REQUEST, &answer),
            "{answer}"
        );
        // Other refusals are not this one.
        assert!(!refused_start_failures(
            reqwest::StatusCode::PAYLOAD_TOO_LARGE,
            &answer
        ));
        let other = r#"{"error":"function name must be 1 to 63 characters, got 0","field":"start_failures[0].function"}"#;
        assert!(!refused_start_failures(
            reqwest::StatusCode::BAD_REQUEST,
            other
        ));
        let other = r#"{"error":"not a node report: unknown field `zone`","field":"body"}"#;
        assert!(!refused_start_failures(
            reqwest::StatusCode::BAD_REQUEST,
            other
        ));
        assert!(!refused_start_failures(
            reqwest::StatusCode::BAD_REQUEST,
            "not json"
        ));
    }

    #[test]
    fn cgroup_v1_and_v2_files_are_read() {
        let root = std::env::temp_dir().join(format!(
            "cpub-cgroup-test-{}",
            containerpub_wire::request_id::generate()
        ));
        let id = "abc123";
        let mem = root.join("memory/libpod_parent/libpod-abc123");
        let cpu = root.join("cpuacct/libpod_parent/libpod-abc123");
        std::fs::create_dir_all(&mem).unwrap();
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::write(mem.join("memory.usage_in_bytes"), "1048576\n").unwrap();
        std::fs::write(mem.join("memory.limit_in_bytes"), "134217728\n").unwrap();
        std::fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        std::fs::write(cpu.join("cpuacct.usage"), "2500000000\n").unwrap();
        std::fs::write(mem.join("memory.max_usage_in_bytes"), "2097152\n").unwrap();
        assert_eq!(
            read_usage(&root, id),
            Some(Usage {
                memory: 1_048_576,
                limit: Some(134_217_728),
                cpu_ns: 2_500_000_000,
                oom_kills: 2,
                peak: Some(2_097_152),
            })
        );
        assert_eq!(read_usage(&root, "ffff"), None);
        assert_eq!(read_usage(&root, "../x"), None);

        let v2 = root.join("machine.slice/libpod-def456.scope");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("memory.current"), "4096\n").unwrap();
        std::fs::write(v2.join("memory.max"), "max\n").unwrap();
        std::fs::write(v2.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
        std::fs::write(v2.join("memory.events"), "low 0\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(
            read_usage(&root, "def456"),
            Some(Usage {
                memory: 4096,
                limit: None,
                cpu_ns: 1_500_000,
                oom_kills: 1,
                peak: None,
            })
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
