//! The call path: a [`FunctionHandle`] (resolved once per function, off the
//! call path) leases a slot on one of its function's instances; a
//! [`Lease`] gives it back when dropped.
//!
//! A lease reads the function's active set through an `ArcSwap` and takes a
//! slot with atomics ([`crate::instance`]); it takes no lock shared with
//! other functions and never starts, switches or retires a deployment
//! itself (scale-up spawns a start for a call that has to wait). Deploy
//! switching swaps the active set under the handle (see `deploy.rs`), so a
//! handle keeps working across deploys.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::PoolError;
use crate::deploy::FunctionSlot;
use crate::instance::{Instance, InstanceState, StartKind};
use crate::pool::Inner;
use crate::runtime::short;
use crate::set::{Failure, InstanceSet};

/// One function's way into the pool, kept by the caller (the proxy keeps it
/// in its route entry). Cheap to clone.
#[derive(Clone)]
pub struct FunctionHandle {
    pub(crate) slot: Arc<FunctionSlot>,
    pub(crate) pool: Arc<Inner>,
}

impl std::fmt::Debug for FunctionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionHandle")
            .field("function", &self.slot.name)
            .finish_non_exhaustive()
    }
}

impl FunctionHandle {
    /// The function's name.
    pub fn function(&self) -> &str {
        &self.slot.name
    }

    /// Calls waiting in the queue of the function's serving set.
    pub fn queued(&self) -> u32 {
        self.slot
            .active
            .load()
            .as_ref()
            .map_or(0, |set| set.waiting.load(Ordering::Acquire))
    }

    /// A free slot right now, if there is one (the warm path of
    /// [`FunctionHandle::lease`], without its future).
    pub fn try_lease(&self) -> Option<Lease> {
        let active = self.slot.active.load();
        let set = active.as_ref()?;
        self.pool.ensure_min(set);
        let instance = set.try_acquire()?;
        Some(lease_now(set, instance))
    }

    /// Leases an instance: a free slot at once, or a place in the
    /// function's queue until a slot frees, an instance starts or a paused
    /// one resumes.
    pub async fn lease(&self) -> Result<Lease, PoolError> {
        let Some(set) = self.slot.active.load_full() else {
            return Err(removed(&self.slot.name));
        };
        self.pool.ensure_min(&set);
        if let Some(instance) = set.try_acquire() {
            return Ok(lease_now(&set, instance));
        }
        self.pool.wait_for_slot(&self.slot, set).await
    }
}

fn removed(function: &str) -> PoolError {
    PoolError::StartFailed {
        function: function.to_owned(),
        reason: "the function was removed".into(),
    }
}

/// A slot on one instance. Dropping it releases the slot, on every path.
#[derive(Debug)]
pub struct Lease {
    instance: Arc<Instance>,
    set: Arc<InstanceSet>,
    kind: StartKind,
    start: Duration,
    queued: Duration,
    /// The call is in the instance's call journal (see `note_call`).
    journaled: bool,
}

impl Lease {
    /// Names the call this lease serves: on an instance that serves one
    /// call at a time and whose logs are captured, the lines it prints
    /// until the lease is dropped carry `request_id` (`logs.rs`).
    pub fn note_call(&mut self, request_id: &str) {
        if self.set.concurrency() == 1 && !self.journaled {
            self.journaled = self.instance.calls.begin(request_id);
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.instance.addr
    }
    pub fn start_kind(&self) -> StartKind {
        self.kind
    }
    /// Time spent starting or resuming the instance (zero when warm).
    pub fn start_duration(&self) -> Duration {
        self.start
    }
    /// Time the call waited for a slot, not counting `start_duration`
    /// (zero when a slot was free at once).
    pub fn queue_duration(&self) -> Duration {
        self.queued
    }
    pub fn instance_id(&self) -> &str {
        &self.instance.id
    }
    /// The upstream failed at the connection level: the instance leaves the
    /// pool and its container is removed; demand starts a replacement.
    pub fn mark_failed(&self) {
        if let Some(inner) = self.set.pool.upgrade() {
            tracing::warn!(function = %self.set.route.function, container = short(&self.instance.id), "instance failed, removing it");
            inner.instance_failed(&self.set, &self.instance);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.journaled {
            self.instance.calls.end();
        }
        self.instance.release_slot();
        self.set.in_flight_gauge.dec();
        // The idle time counts from the end of the last call: noted here,
        // read when the instance's idle timer fires.
        self.instance.note_use();
        // Pairs with the fence in `wait_for_slot`: either the waiter sees the
        // freed slot, or this sees the waiter. Saves Notify's lock when idle.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.set.waiting.load(Ordering::Relaxed) > 0 {
            self.set.wake();
        }
    }
}

/// The lease of a slot taken at once on `instance` of `set`: warm, no
/// queue time (and no clock read: this is every warm call's path).
fn lease_now(set: &Arc<InstanceSet>, instance: Arc<Instance>) -> Lease {
    set.queue_wait.observe(0.0);
    set.in_flight_gauge.inc();
    Lease {
        instance,
        set: Arc::clone(set),
        kind: StartKind::Warm,
        start: Duration::ZERO,
        queued: Duration::ZERO,
        journaled: false,
    }
}

/// The lease of a slot already taken on `instance` of `set`, for a call
/// that arrived at `began` and waited.
fn lease_of(set: &Arc<InstanceSet>, instance: Arc<Instance>, began: Instant) -> Lease {
    let (ready_at, took, how) = instance.ready_at();
    // Became ready after this call arrived: the call waited for that start.
    let (kind, start) = if ready_at >= began && how != StartKind::Warm {
        (how, took)
    } else {
        (StartKind::Warm, Duration::ZERO)
    };
    // Queue time is the wait beyond the start or resume it waited for,
    // so the server-timing entries add up instead of overlapping.
    let queued = began.elapsed().saturating_sub(start);
    set.queue_wait.observe(queued.as_secs_f64());
    set.in_flight_gauge.inc();
    Lease {
        instance,
        set: Arc::clone(set),
        kind,
        start,
        queued,
        journaled: false,
    }
}

impl Inner {
    /// Waits in `set`'s queue for a slot; follows the function's active set
    /// when a deploy switches it meanwhile.
    pub(crate) async fn wait_for_slot(
        self: &Arc<Self>,
        slot: &FunctionSlot,
        set: Arc<InstanceSet>,
    ) -> Result<Lease, PoolError> {
        let began = Instant::now();
        let scaling = &set.route.config.scaling;
        let function = set.route.function.clone();
        let queue_size = scaling.queue_size;
        if set.waiting.fetch_add(1, Ordering::AcqRel) >= queue_size {
            set.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(PoolError::QueueFull {
                function,
                queue_size: queue_size as usize,
            });
        }
        /// This call's place in a set's queue count; moves with the call.
        struct Waiting(Arc<InstanceSet>);
        impl Drop for Waiting {
            fn drop(&mut self) {
                self.0.waiting.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let deadline = began + Duration::from_millis(scaling.queue_timeout_ms);
        let mut place = Waiting(set);
        // Pairs with the fence in `Lease::drop` (see there).
        std::sync::atomic::fence(Ordering::SeqCst);
        let mut failures_seen = place.0.failures.load(Ordering::Acquire);
        loop {
            if place.0.retired.load(Ordering::Acquire) {
                // A deploy switched sets while we waited: queue on the new one.
                let next = slot
                    .active
                    .load_full()
                    .filter(|n| !n.retired.load(Ordering::Acquire));
                let Some(next) = next else {
                    return Err(removed(&function));
                };
                next.waiting.fetch_add(1, Ordering::AcqRel);
                std::sync::atomic::fence(Ordering::SeqCst);
                failures_seen = next.failures.load(Ordering::Acquire);
                place = Waiting(next);
            }
            let set = Arc::clone(&place.0);
            let changed = set.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(instance) = set.try_acquire() {
                return Ok(lease_of(&set, instance, began));
            }
            if set.retired.load(Ordering::Acquire) {
                continue;
            }
            if set.failures.load(Ordering::Acquire) != failures_seen
                && set.count(InstanceState::Ready) == 0
            {
                let failure = set.last_failure.lock().expect("failure lock").clone();
                return Err(match failure {
                    Failure::Start(reason) => PoolError::StartFailed { function, reason },
                    Failure::Capacity(reason) => PoolError::NoCapacity {
                        function,
                        reason,
                        retry_after: crate::budget::RETRY_AFTER,
                    },
                    Failure::Crash(exit) => PoolError::Crashed {
                        function,
                        exit,
                        backoff: set.hold(),
                    },
                });
            }
            if let Some((exit, backoff)) = set.held_back() {
                // It keeps crashing and nothing could serve: say so now
                // rather than after the queue timeout.
                return Err(PoolError::Crashed {
                    function,
                    exit,
                    backoff: Some(backoff),
                });
            }
            self.scale(&set);
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(PoolError::QueueTimeout {
                    function,
                    waited: began.elapsed(),
                });
            }
        }
    }
}
