//! `GET /api/v1/functions/{name}/usage`: a function's CPU, memory, OOM
//! kills, restarts and keep-warm figures, per node and summed
//! ([`containerpub_wire::usage::FunctionUsage`]), for `cpub describe`; the
//! sum is also the `resources` of `…/stats` (`cpub stats`).
//!
//! Storage: the latest per-function figures of each node, in memory, taken
//! from the node's status report (`POST /api/v1/nodes/{node}/status`, every
//! 5 s, `super::status::report`). Bounded: one entry per node that holds a
//! credential and reported in the last 10 minutes, at most
//! [`MAX_REPORTED_FUNCTIONS`] functions each. The counters in a report count
//! from the proxy's start, so nothing is lost when the control plane
//! restarts; no history is kept (Prometheus has the metrics over time), so
//! `--since` does not apply to them. The CPU share is the increase of a
//! function's CPU seconds between a node's last two reports over the time
//! between them.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use containerpub_wire::usage::{
    FunctionReport, FunctionUsage, MAX_REPORTED_FUNCTIONS, NodeUsage, UsageTotal,
};

use crate::auth::{Action, Caller};
use crate::error::{Error, Result};
use crate::routes::executions::function_id;
use crate::state::AppState;

/// Figures older than this are not shown.
const FRESH: Duration = Duration::from_secs(60);
/// Nodes not heard from for this long are forgotten.
const FORGET: Duration = Duration::from_secs(600);

struct NodeEntry {
    at: Instant,
    keep_warm_window_s: Option<u64>,
    /// By function: the figures and the CPU share since the last report.
    functions: HashMap<String, (FunctionReport, Option<f64>)>,
}

type Store = Mutex<HashMap<String, NodeEntry>>;

fn store() -> &'static Store {
    static S: OnceLock<Store> = OnceLock::new();
    S.get_or_init(Mutex::default)
}

/// Checks the per-function part of a node report.
pub(crate) fn validate(functions: &[FunctionReport]) -> Result<()> {
    if functions.len() > MAX_REPORTED_FUNCTIONS {
        return Err(Error::too_large(
            "functions",
            format!("at most {MAX_REPORTED_FUNCTIONS} functions"),
        ));
    }
    for (i, f) in functions.iter().enumerate() {
        containerpub_wire::validate_function_name(&f.function)
            .map_err(|m| Error::bad_request(format!("functions[{i}].function"), m))?;
        if !f.cpu_seconds.is_finite() || f.cpu_seconds < 0.0 {
            return Err(Error::bad_request(
                format!("functions[{i}].cpu_seconds"),
                "must be a finite number ≥ 0",
            ));
        }
    }
    Ok(())
}

/// Keeps `node`'s latest figures (checked by [`validate`]).
pub(crate) fn record(node: &str, keep_warm_window_s: Option<u64>, functions: &[FunctionReport]) {
    let now = Instant::now();
    let mut all = store().lock().expect("usage lock");
    all.retain(|_, e| e.at.elapsed() < FORGET);
    let previous = all.remove(node);
    let elapsed = previous
        .as_ref()
        .map(|p| now.duration_since(p.at).as_secs_f64())
        .filter(|&s| s > 0.0 && s < FRESH.as_secs_f64());
    let functions = functions
        .iter()
        .map(|f| {
            let share = previous
                .as_ref()
                .zip(elapsed)
                .and_then(|(p, secs)| {
                    let (before, _) = p.functions.get(&f.function)?;
                    // A smaller total: the proxy restarted, no share.
                    (f.cpu_seconds >= before.cpu_seconds)
                        .then(|| (f.cpu_seconds - before.cpu_seconds) / secs)
                })
                .map(|s| (s * 1000.0).round() / 1000.0);
            (f.function.clone(), (f.clone(), share))
        })
        .collect();
    all.insert(
        node.to_owned(),
        NodeEntry {
            at: now,
            keep_warm_window_s,
            functions,
        },
    );
}

/// The fresh figures of `function`, per node (by name) and summed.
pub(crate) fn of_function(function: &str) -> FunctionUsage {
    let all = store().lock().expect("usage lock");
    let mut nodes: Vec<NodeUsage> = all
        .iter()
        .filter(|(_, e)| e.at.elapsed() < FRESH)
        .filter_map(|(node, e)| {
            let (report, share) = e.functions.get(function)?;
            Some(NodeUsage {
                node: node.clone(),
                reported_s_ago: e.at.elapsed().as_secs(),
                keep_warm_window_s: e.keep_warm_window_s,
                cpu_share: *share,
                report: report.clone(),
            })
        })
        .collect();
    drop(all);
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    let mut total = UsageTotal::default();
    for n in &nodes {
        total.add(n);
    }
    FunctionUsage {
        function: function.to_owned(),
        total,
        nodes,
    }
}

/// `GET /api/v1/functions/{name}/usage`.
pub async fn usage(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<FunctionUsage>> {
    caller.require(Action::ReadFunctions, None)?;
    function_id(&state.db, &name).await?;
    Ok(Json(of_function(&name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(function: &str, cpu: f64) -> FunctionReport {
        FunctionReport {
            function: function.into(),
            instances: 1,
            cpu_seconds: cpu,
            memory_bytes: 1 << 20,
            ..FunctionReport::default()
        }
    }

    #[test]
    fn latest_report_per_node_with_cpu_share() {
        // Names of this test only: the store is process-wide.
        let node = "usage-test-node";
        record(node, Some(60), &[report("usage-test-f", 1.0)]);
        let u = of_function("usage-test-f");
        assert_eq!(u.nodes.len(), 1);
        assert_eq!(u.nodes[0].cpu_share, None, "no share after one report");
        assert_eq!(u.total.memory_bytes, 1 << 20);
        std::thread::sleep(Duration::from_millis(20));
        record(node, Some(60), &[report("usage-test-f", 1.5)]);
        let u = of_function("usage-test-f");
        assert_eq!(u.nodes.len(), 1, "the latest report replaces the last");
        let share = u.total.cpu_share.expect("a share after two reports");
        assert!(share > 0.0, "{share}");
        assert_eq!(u.total.cpu_seconds, 1.5);
        // A proxy restart (smaller total): no share, the new total shown.
        record(node, Some(60), &[report("usage-test-f", 0.1)]);
        let u = of_function("usage-test-f");
        assert_eq!(u.total.cpu_share, None);
        assert_eq!(u.total.cpu_seconds, 0.1);
        assert!(of_function("usage-test-other").nodes.is_empty());
    }

    #[test]
    fn hostile_figures_are_refused() {
        assert!(validate(&[report("ok-name", 1.0)]).is_ok());
        assert!(validate(&[report("Bad Name!", 1.0)]).is_err());
        assert!(validate(&[report("f", f64::NAN)]).is_err());
        assert!(validate(&[report("f", f64::INFINITY)]).is_err());
        assert!(validate(&[report("f", -1.0)]).is_err());
    }
}
