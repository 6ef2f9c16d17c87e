//! The node budget: how much memory (the sum of the memory limits of the
//! live instances) and how many live instances one node may hold, and the
//! charge each instance holds against it.

use std::time::Duration;

/// What a caller turned away for lack of room is told to wait
/// (`retry-after`): an idle instance is paused or stopped within seconds.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::metrics::METRICS;
use crate::node::BudgetConfig;

const MIB: u64 = 1024 * 1024;

/// What the node's live instances hold against its budget. Changed off
/// the call path only: a start reserves (`try_reserve`), a removed
/// instance's [`Charge`] gives back.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: BudgetConfig,
    memory_mb: AtomicU64,
    instances: AtomicU32,
}

/// Which part of the budget a start did not fit in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Short {
    /// MiB missing (0: memory fits).
    pub(crate) memory_mb: u64,
    /// Instances missing (0 or 1).
    pub(crate) instances: u32,
}

impl Short {
    /// The label of `cpub_node_evictions_total{reason}`.
    pub(crate) fn reason(self) -> &'static str {
        if self.memory_mb > 0 {
            "memory"
        } else {
            "instances"
        }
    }
}

impl Budget {
    pub(crate) fn new(limit: BudgetConfig) -> Arc<Self> {
        let memory = limit.memory_mb.saturating_mul(MIB);
        METRICS
            .node_budget_memory
            .set(i64::try_from(memory).unwrap_or(i64::MAX));
        METRICS
            .node_budget_instances
            .set(i64::from(limit.max_instances));
        Arc::new(Self {
            limit,
            memory_mb: AtomicU64::new(0),
            instances: AtomicU32::new(0),
        })
    }

    pub(crate) fn limit(&self) -> BudgetConfig {
        self.limit
    }

    /// Memory (MiB) and instances held now.
    pub(crate) fn used(&self) -> (u64, u32) {
        (
            self.memory_mb.load(Ordering::Acquire),
            self.instances.load(Ordering::Acquire),
        )
    }

    /// Reserves one instance of `memory_mb`, or says what is missing.
    pub(crate) fn try_reserve(self: &Arc<Self>, memory_mb: u64) -> Result<Charge, Short> {
        let max = self.limit.max_instances;
        let counted = self
            .instances
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        let limit_mb = self.limit.memory_mb;
        let reserved = self
            .memory_mb
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(memory_mb)
                    .filter(|total| *total <= limit_mb)
            });
        match (counted, reserved) {
            (Ok(_), Ok(_)) => {
                self.publish();
                Ok(Charge {
                    budget: Arc::clone(self),
                    memory_mb,
                })
            }
            (counted, reserved) => {
                if counted.is_ok() {
                    self.instances.fetch_sub(1, Ordering::AcqRel);
                }
                if reserved.is_ok() {
                    self.memory_mb.fetch_sub(memory_mb, Ordering::AcqRel);
                }
                let used_mb = reserved.unwrap_or_else(|used| used);
                Err(Short {
                    memory_mb: used_mb.saturating_add(memory_mb).saturating_sub(limit_mb),
                    instances: u32::from(counted.is_err()),
                })
            }
        }
    }

    /// Charges an instance whatever the budget says (adoption at start-up:
    /// the instance exists already).
    pub(crate) fn force(self: &Arc<Self>, memory_mb: u64) -> Charge {
        self.instances.fetch_add(1, Ordering::AcqRel);
        self.memory_mb.fetch_add(memory_mb, Ordering::AcqRel);
        self.publish();
        Charge {
            budget: Arc::clone(self),
            memory_mb,
        }
    }

    fn publish(&self) {
        let (mb, n) = self.used();
        METRICS
            .node_memory
            .set(i64::try_from(mb.saturating_mul(MIB)).unwrap_or(i64::MAX));
        METRICS.node_instances.set(i64::from(n));
    }
}

/// One live instance's share of the budget, given back when dropped: an
/// instance holds it until its container is removed.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: Arc<Budget>,
    memory_mb: u64,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.instances.fetch_sub(1, Ordering::AcqRel);
        self.budget
            .memory_mb
            .fetch_sub(self.memory_mb, Ordering::AcqRel);
        self.budget.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_fit_both_limits_and_are_given_back() {
        let budget = Budget::new(BudgetConfig {
            memory_mb: 256,
            max_instances: 3,
        });
        let a = budget.try_reserve(128).unwrap();
        let b = budget.try_reserve(128).unwrap();
        assert_eq!(budget.used(), (256, 2));
        let short = budget.try_reserve(64).unwrap_err();
        assert_eq!(
            short,
            Short {
                memory_mb: 64,
                instances: 0
            }
        );
        assert_eq!(short.reason(), "memory");
        assert_eq!(budget.used(), (256, 2), "a refusal holds nothing");
        drop(a);
        let c = budget.try_reserve(64).unwrap();
        let d = budget.try_reserve(16).unwrap();
        let short = budget.try_reserve(16).unwrap_err();
        assert_eq!(short.instances, 1);
        assert_eq!(short.reason(), "instances");
        drop((b, c, d));
        assert_eq!(budget.used(), (0, 0));
        let forced: Vec<_> = (0..5).map(|_| budget.force(128)).collect();
        assert_eq!(budget.used(), (640, 5));
        assert!(budget.try_reserve(16).is_err());
        drop(forced);
        assert_eq!(budget.used(), (0, 0));
    }
}
