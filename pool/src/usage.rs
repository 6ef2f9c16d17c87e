//! Per-function counters the node reports to the control plane (issues 11
//! and 15): keep-warm events by function (beside the
//! `cpub_keep_warm_total{function,result}` metric they also bump), the
//! instances that died (function, container id and Podman's `OOMKilled`,
//! so the node report can attribute the kernel's OOM kills of containers
//! already gone), the crash count of `cpub_pool_instance_crashes_total`,
//! and the failed starts other than crashes (issue 11: the counts of
//! `cpub_pool_start_failures_total{function,reason}` and the last one's
//! reason, message and time).
//!
//! Bounded: one entry per function that had an event, pruned to the
//! functions the pool still routes on every [`Pool::function_counters`]
//! (`crate::pool::Pool`); a failure's message is cut to
//! [`MAX_MESSAGE_BYTES`]; the deaths not yet taken are at most
//! [`MAX_DEATHS`] (the oldest go first).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use containerpub_wire::start_failures::{MAX_MESSAGE_BYTES, clean_message};
use rustc_hash::FxHashMap;
use tokio::time::Instant;

use crate::PoolError;
use crate::metrics::{METRICS, START_FAILURE_REASONS};
use crate::pool::Inner;

/// Deaths kept until someone takes them.
pub const MAX_DEATHS: usize = 1024;

/// A keep-warm event (the `result` label of `cpub_keep_warm_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeepWarmEvent {
    Kept,
    Hit,
    Miss,
    Evicted,
    Expired,
}

impl KeepWarmEvent {
    fn label(self) -> &'static str {
        match self {
            Self::Kept => "kept",
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Evicted => "evicted",
            Self::Expired => "expired",
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    kept: u64,
    hits: u64,
    misses: u64,
}

/// An instance that died (a crash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    pub function: String,
    /// Its container id.
    pub id: String,
    /// Podman said the kernel killed it for memory (not every Podman
    /// knows: 4.3 with runc on cgroup v1 says false).
    pub oom_killed: bool,
}

/// What the pool counts per function for the node report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FunctionCounters {
    pub function: String,
    /// Whether keep-warm applies to the function here.
    pub keep_warm: bool,
    pub keep_warm_kept: u64,
    pub keep_warm_hits: u64,
    pub keep_warm_misses: u64,
    /// Instances of the function that died (`cpub_pool_instance_crashes_total`).
    pub restarts: u64,
    /// Failed starts other than crashes; `None` when the function had none
    /// since it was routed here.
    pub start_failures: Option<StartFailures>,
}

/// A function's failed starts other than crashes (a readiness probe that
/// timed out, the engine failing, no room on the node).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StartFailures {
    /// By reason (`START_FAILURE_REASONS` of `crate::metrics`), since the
    /// proxy started: the values of `cpub_pool_start_failures_total`;
    /// reasons at 0 are left out.
    pub counts: Vec<(&'static str, u64)>,
    /// The last one's reason,
    pub reason: &'static str,
    /// its message (one line of at most `MAX_MESSAGE_BYTES`, without the
    /// function's name),
    pub message: String,
    /// and how long ago it happened.
    pub age: Duration,
}

/// The last failed start of a function.
#[derive(Debug)]
struct LastFailure {
    reason: &'static str,
    message: String,
    at: Instant,
}

/// The counters (see the module header).
#[derive(Default)]
pub(crate) struct Counters {
    by_function: Mutex<FxHashMap<String, Counts>>,
    deaths: Mutex<VecDeque<Death>>,
    last_failures: Mutex<FxHashMap<String, LastFailure>>,
}

impl Inner {
    /// Counts a keep-warm event of `function` (metric and node report).
    pub(crate) fn keep_warm_event(&self, function: &str, event: KeepWarmEvent) {
        METRICS
            .keep_warm
            .with_label_values(&[function, event.label()])
            .inc();
        let mut all = self.counters.by_function.lock().expect("counters lock");
        let counts = all.entry(function.to_owned()).or_default();
        match event {
            KeepWarmEvent::Kept => counts.kept += 1,
            KeepWarmEvent::Hit => counts.hits += 1,
            KeepWarmEvent::Miss => counts.misses += 1,
            KeepWarmEvent::Evicted | KeepWarmEvent::Expired => {}
        }
    }

    /// Instance `id` of `function` died.
    pub(crate) fn death(&self, function: &str, id: &str, oom_killed: bool) {
        let mut deaths = self.counters.deaths.lock().expect("deaths lock");
        if deaths.len() >= MAX_DEATHS {
            deaths.pop_front();
        }
        deaths.push_back(Death {
            function: function.to_owned(),
            id: id.to_owned(),
            oom_killed,
        });
    }

    /// A start of `function` failed for `reason` (a label of
    /// `cpub_pool_start_failures_total`, which the caller bumps) with `err`.
    pub(crate) fn start_failed(&self, function: &str, reason: &'static str, err: &PoolError) {
        let text = err.to_string();
        let prefix = format!("function {function}: ");
        let text = text.strip_prefix(&prefix).unwrap_or(&text);
        let message = clean_message(text);
        debug_assert!(message.len() <= MAX_MESSAGE_BYTES);
        let mut all = self.counters.last_failures.lock().expect("failures lock");
        all.insert(
            function.to_owned(),
            LastFailure {
                reason,
                message,
                at: Instant::now(),
            },
        );
    }

    /// The deaths since the last call.
    pub(crate) fn take_deaths(&self) -> Vec<Death> {
        let mut deaths = self.counters.deaths.lock().expect("deaths lock");
        deaths.drain(..).collect()
    }

    /// Every routed function's counters; forgets those of functions gone.
    pub(crate) fn function_counters(&self) -> Vec<FunctionCounters> {
        let slots: Vec<_> = {
            let functions = self.functions.lock().expect("functions lock");
            functions.values().cloned().collect()
        };
        let mut failures = self.counters.last_failures.lock().expect("failures lock");
        let mut all = self.counters.by_function.lock().expect("counters lock");
        let mut out = Vec::with_capacity(slots.len());
        for slot in &slots {
            let Some(set) = slot.sets().into_iter().next() else {
                continue;
            };
            let counts = all.get(&slot.name).copied().unwrap_or_default();
            let start_failures = failures.get(&slot.name).map(|last| StartFailures {
                counts: START_FAILURE_REASONS
                    .iter()
                    .map(|&r| {
                        let n = METRICS
                            .start_failures
                            .with_label_values(&[slot.name.as_str(), r])
                            .get();
                        (r, n)
                    })
                    .filter(|&(_, n)| n > 0)
                    .collect(),
                reason: last.reason,
                message: last.message.clone(),
                age: last.at.elapsed(),
            });
            out.push(FunctionCounters {
                function: slot.name.clone(),
                keep_warm: self.keep_warm.enabled(&set),
                keep_warm_kept: counts.kept,
                keep_warm_hits: counts.hits,
                keep_warm_misses: counts.misses,
                restarts: METRICS.crashes.with_label_values(&[&slot.name]).get(),
                start_failures,
            });
        }
        all.retain(|f, _| out.iter().any(|c| &c.function == f));
        failures.retain(|f, _| out.iter().any(|c| &c.function == f));
        out
    }
}
