//! Making room in the node budget for a start: the least recently used
//! idle instances of *other* functions are stopped — paused ones first,
//! then running ones without calls — never below a function's
//! `min_instances`. Runs in the start's own task, off the call path; a
//! start that still finds no room fails with `PoolError::NoCapacity`
//! (503 + `retry-after` at the proxy).
//!
//! Claiming a victim follows the pause protocol (`instance.rs`): its state
//! is moved to `Gone` with a compare-and-swap first, then its in-flight
//! count is read; a call that took a slot meanwhile keeps it (the claim is
//! undone). The victim's container is removed before the start proceeds,
//! so its address and its budget share are free when the start needs them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::PoolError;
use crate::budget::{Charge, RETRY_AFTER, Short};
use crate::instance::{Instance, InstanceState};
use crate::metrics::METRICS;
use crate::pool::Inner;
use crate::runtime::short;
use crate::set::InstanceSet;

/// Rounds of eviction one start tries before it gives up (another start
/// may take the room one round freed).
const ROUNDS: usize = 4;

/// An instance that may be stopped for room, and how good a choice it is.
struct Candidate {
    set: Arc<InstanceSet>,
    instance: Arc<Instance>,
    /// Paused instances go first (`0`), then idle running ones (`1`).
    rank: u8,
    last_used_ms: u64,
}

impl Inner {
    /// Reserves room for one instance of `set`'s function, stopping idle
    /// instances of other functions when the budget is used up.
    pub(crate) async fn make_room(
        self: &Arc<Self>,
        set: &Arc<InstanceSet>,
    ) -> Result<Charge, PoolError> {
        let memory_mb = u64::from(set.route.config.resources.memory_mb);
        let mut last = None;
        for _ in 0..ROUNDS {
            let short = match self.budget.try_reserve(memory_mb) {
                Ok(charge) => return Ok(charge),
                Err(short) => short,
            };
            last = Some(short);
            let evicted = self.evict(&set.route.function, short, short.reason()).await;
            if evicted == 0 {
                break;
            }
        }
        METRICS.node_refusals.inc();
        let (used_mb, used) = self.budget.used();
        let limit = self.budget.limit();
        let reason = format!(
            "node budget: {used} of {} instances and {used_mb} of {} MiB held; {} MiB more needed; no idle instance of another function to stop",
            limit.max_instances,
            if limit.memory_mb == u64::MAX {
                "unlimited".to_owned()
            } else {
                limit.memory_mb.to_string()
            },
            last.map_or(0, |s| s.memory_mb),
        );
        Err(PoolError::NoCapacity {
            function: set.route.function.clone(),
            reason,
            retry_after: RETRY_AFTER,
        })
    }

    /// Stops least recently used idle instances of functions other than
    /// `function` until `short` would fit; returns how many it stopped.
    /// `reason` labels `cpub_node_evictions_total`.
    pub(crate) async fn evict(
        self: &Arc<Self>,
        function: &str,
        need: Short,
        reason: &str,
    ) -> usize {
        let mut candidates = self.candidates(function);
        candidates.sort_by_key(|c| (c.rank, c.last_used_ms));
        let (mut freed_mb, mut freed) = (0u64, 0u32);
        let mut victims = Vec::new();
        for c in candidates {
            if freed_mb >= need.memory_mb && freed >= need.instances {
                break;
            }
            // Never below min_instances (the count may have changed since
            // the candidates were listed).
            let min = c.set.min_instances() as usize;
            if c.set.live() <= min {
                continue;
            }
            let from = if c.rank == 0 {
                InstanceState::Paused
            } else {
                InstanceState::Ready
            };
            if !c.instance.claim_state(from, InstanceState::Gone) {
                continue;
            }
            if c.instance.in_flight() > 0 {
                // A call took a slot meanwhile: it keeps the instance.
                c.instance.set_state(from);
                continue;
            }
            freed_mb += u64::from(c.set.route.config.resources.memory_mb);
            freed += 1;
            self.idle.forget(&c.instance.id);
            c.set.remove_instance(&c.instance);
            c.set.publish();
            c.set.wake();
            let state = if c.rank == 0 { "paused" } else { "idle" };
            METRICS
                .node_evictions
                .with_label_values(&[reason, state])
                .inc();
            if c.instance.kept_warm.load(Ordering::Acquire) {
                self.keep_warm_event(&c.set.route.function, crate::usage::KeepWarmEvent::Evicted);
            }
            tracing::info!(
                function = %c.set.route.function,
                container = short(&c.instance.id),
                state,
                reason,
                for_function = function,
                "instance evicted to make room"
            );
            victims.push(c.instance);
        }
        let count = victims.len();
        // Removed before the start goes on: the address and the budget
        // share are free once this returns (each instance's charge goes
        // with its last holder, here).
        for victim in victims {
            if let Err(err) = self.runtime.remove(&victim.id).await {
                tracing::warn!(container = short(&victim.id), %err, "removing an evicted instance");
            }
        }
        count
    }

    /// Idle instances of other functions above their `min_instances`.
    fn candidates(&self, function: &str) -> Vec<Candidate> {
        let slots: Vec<_> = {
            let functions = self.functions.lock().expect("functions lock");
            functions
                .iter()
                .filter(|(name, _)| name.as_str() != function)
                .map(|(_, slot)| Arc::clone(slot))
                .collect()
        };
        let mut out = Vec::new();
        for slot in slots {
            for set in slot.sets() {
                if set.retired.load(Ordering::Acquire) {
                    continue;
                }
                let min = set.min_instances() as usize;
                let instances = set.instances();
                let live = instances
                    .iter()
                    .filter(|i| i.state() != InstanceState::Gone)
                    .count();
                if live <= min {
                    continue;
                }
                for i in instances.iter() {
                    let rank = match i.state() {
                        InstanceState::Paused => 0,
                        InstanceState::Ready if i.in_flight() == 0 => 1,
                        _ => continue,
                    };
                    out.push(Candidate {
                        set: Arc::clone(&set),
                        instance: Arc::clone(i),
                        rank,
                        last_used_ms: i.last_used_ms(),
                    });
                }
            }
        }
        out
    }
}
