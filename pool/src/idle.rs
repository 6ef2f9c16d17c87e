//! Idle tracking with moka: one entry per instance whose time-to-idle is
//! the function's `idle_pause_s` while it runs and the rest of
//! `idle_stop_s` while it is paused. A released lease does not touch the
//! cache (a `get` may run moka's upkeep, under its lock, on the caller's
//! thread): it notes the time of use in the instance (`Instance::note_use`,
//! a coarse clock); expiry sends the instance id to the pool, which sets a
//! new timer for what is left when the instance was used since, else
//! pauses or removes it. moka has no threads of its own: the
//! pool's timer calls `run_pending` every `TICK`. Depends on `instance` and
//! `set` only (not on `pool`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use tokio::sync::mpsc::UnboundedSender;

use crate::instance::{Instance, InstanceState};
use crate::set::InstanceSet;

/// How often expiries are processed; idle times are whole seconds.
pub(crate) const TICK: Duration = Duration::from_millis(200);

/// The idle time of one instance in its current state.
#[derive(Debug, Clone, Copy)]
struct IdleFor(Duration);

struct PerEntry;

impl Expiry<String, IdleFor> for PerEntry {
    fn expire_after_create(&self, _: &String, v: &IdleFor, _: Instant) -> Option<Duration> {
        Some(v.0)
    }
    fn expire_after_update(
        &self,
        _: &String,
        v: &IdleFor,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.0)
    }
}

pub(crate) struct IdleTracker {
    cache: Cache<String, IdleFor>,
}

impl IdleTracker {
    /// Expired instance ids go to `expired`; explicit removals and
    /// replacements do not.
    pub(crate) fn new(expired: UnboundedSender<String>) -> Self {
        let cache = Cache::builder()
            .expire_after(PerEntry)
            .eviction_listener(move |id: Arc<String>, _, cause| {
                if cause == RemovalCause::Expired {
                    // Cheap and infallible: a closed channel means the pool is gone.
                    let _ = expired.send(id.as_ref().clone());
                }
            })
            .build();
        Self { cache }
    }

    /// (Re)starts the idle timer of an instance for its current state.
    pub(crate) fn track(&self, set: &InstanceSet, instance: &Instance) {
        let s = &set.route.config.scaling;
        let idle = match instance.state() {
            InstanceState::Paused => s.idle_stop_s.saturating_sub(s.idle_pause_s).max(1),
            _ => s.idle_pause_s,
        };
        self.cache
            .insert(instance.id.clone(), IdleFor(Duration::from_secs(idle)));
    }

    /// Sets the idle timer of an instance to `left` (what remains of its
    /// idle time after a use since the timer was set).
    pub(crate) fn track_for(&self, instance: &Instance, left: Duration) {
        self.cache.insert(instance.id.clone(), IdleFor(left));
    }

    pub(crate) fn forget(&self, id: &str) {
        self.cache.invalidate(id);
    }

    /// Processes expiries (calls the eviction listener).
    pub(crate) fn run_pending(&self) {
        self.cache.run_pending_tasks();
    }
}
