//! Predictive keep-warm (issue 15): a function called within its keep-warm
//! window keeps one paused instance after its idle stop, so its next call
//! is a resume (milliseconds) instead of a cold start.
//!
//! The cold-start tracker is a moka cache of per-function records (calls
//! seen, cold starts, last call), whose entries live `window` after their
//! last update: "called within the window" is "has an entry". It is fed off
//! the call path — a cold start, and an instance going idle (its pause,
//! with the calls its function took so far, read from the function's
//! queue-wait histogram that every lease counts anyway) — so a lease does
//! no more work than before. The decision is taken when a paused instance
//! reaches its idle stop: the function's last instance (and no
//! `min_instances`) is kept when the tracker has the function and
//! keep-warm is on for it (the manifest's `scaling.keep_warm`, else the
//! node's window > 0). A kept instance is still paused: it holds its budget
//! share and is the first the eviction stops (LRU, paused first). Its idle
//! timer runs again; once the window passes without a call, it is removed.
//!
//! `cpub_keep_warm_total{function,result}` counts (and `crate::usage`
//! per function for the node report) `kept`, `hit` (a call resumed a
//! kept instance), `miss` (a cold start with no instance of a function the
//! tracker had: keep-warm wanted it warm and it was not), `evicted` and
//! `expired`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use moka::sync::Cache;

use crate::node::KeepWarmConfig;
use crate::set::InstanceSet;

/// What the tracker knows of one function.
#[derive(Debug, Default)]
pub struct FunctionStats {
    /// Calls seen (as of the last idle event of one of its instances).
    pub calls: AtomicU64,
    /// Cold starts.
    pub cold_starts: AtomicU64,
}

/// The cold-start tracker and the policy (see the module header).
pub(crate) struct KeepWarm {
    config: KeepWarmConfig,
    tracker: Cache<String, Arc<FunctionStats>>,
}

impl KeepWarm {
    pub(crate) fn new(config: KeepWarmConfig) -> Self {
        // When the node's window is off a manifest may still turn
        // keep-warm on: the default window applies then.
        let window = if config.window.is_zero() {
            KeepWarmConfig::default().window
        } else {
            config.window
        };
        Self {
            config,
            tracker: Cache::builder()
                .max_capacity(config.max_functions)
                .time_to_idle(window)
                .build(),
        }
    }

    /// Whether keep-warm applies to `set`'s function.
    pub(crate) fn enabled(&self, set: &InstanceSet) -> bool {
        set.route
            .config
            .scaling
            .keep_warm
            .unwrap_or(!self.config.window.is_zero())
    }

    fn stats(&self, function: &str) -> Arc<FunctionStats> {
        self.tracker
            .get_with_by_ref(function, || Arc::new(FunctionStats::default()))
    }

    /// Whether `function` was called within the window.
    pub(crate) fn recently_called(&self, function: &str) -> bool {
        self.tracker.contains_key(function)
    }

    /// A cold start of `set`'s function; `none_live` when it had no
    /// instance at all (a call waited for it). True when it is a miss:
    /// keep-warm wanted the function warm (the caller counts it).
    pub(crate) fn cold_start(&self, set: &InstanceSet, none_live: bool) -> bool {
        let function = set.route.function.as_str();
        let miss = none_live && self.enabled(set) && self.recently_called(function);
        let stats = self.stats(function);
        stats.cold_starts.fetch_add(1, Ordering::Relaxed);
        stats
            .calls
            .fetch_max(set.queue_wait.get_sample_count(), Ordering::Relaxed);
        miss
    }

    /// An instance of `set`'s function went idle after being used: the
    /// function was called (its record starts its window again).
    pub(crate) fn used(&self, set: &InstanceSet) {
        let stats = self.stats(&set.route.function);
        stats
            .calls
            .fetch_max(set.queue_wait.get_sample_count(), Ordering::Relaxed);
    }

    /// Calls and cold starts of `function` the tracker holds (tests, views).
    pub(crate) fn snapshot(&self, function: &str) -> Option<(u64, u64)> {
        self.tracker.get(function).map(|s| {
            (
                s.calls.load(Ordering::Relaxed),
                s.cold_starts.load(Ordering::Relaxed),
            )
        })
    }

    /// Housekeeping (expiry), driven by the pool's timer like the idle
    /// tracker: moka has no threads.
    pub(crate) fn run_pending(&self) {
        self.tracker.run_pending_tasks();
    }
}
