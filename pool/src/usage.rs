//! Per-function counters the node reports to the control plane (issues 11
//! and 15): keep-warm events by function (beside the
//! `cpub_keep_warm_total{function,result}` metric they also bump), the
//! instances that died (function, container id and Podman's `OOMKilled`,
//! so the node report can attribute the kernel's OOM kills of containers
//! already gone), and the crash count of `cpub_pool_instance_crashes_total`.
//!
//! Bounded: one entry per function that had an event, pruned to the
//! functions the pool still routes on every [`Pool::function_counters`]
//! (`crate::pool::Pool`); the deaths not yet taken are at most
//! [`MAX_DEATHS`] (the oldest go first).

use std::collections::VecDeque;
use std::sync::Mutex;

use rustc_hash::FxHashMap;

use crate::metrics::METRICS;
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
}

/// The counters (see the module header).
#[derive(Default)]
pub(crate) struct Counters {
    by_function: Mutex<FxHashMap<String, Counts>>,
    deaths: Mutex<VecDeque<Death>>,
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
        let mut all = self.counters.by_function.lock().expect("counters lock");
        let mut out = Vec::with_capacity(slots.len());
        for slot in &slots {
            let Some(set) = slot.sets().into_iter().next() else {
                continue;
            };
            let counts = all.get(&slot.name).copied().unwrap_or_default();
            out.push(FunctionCounters {
                function: slot.name.clone(),
                keep_warm: self.keep_warm.enabled(&set),
                keep_warm_kept: counts.kept,
                keep_warm_hits: counts.hits,
                keep_warm_misses: counts.misses,
                restarts: METRICS.crashes.with_label_values(&[&slot.name]).get(),
            });
        }
        all.retain(|f, _| out.iter().any(|c| &c.function == f));
        out
    }
}
