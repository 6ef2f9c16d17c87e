//! The instances of one deployment of one function (an *instance set*):
//! the list (read without a lock, copied on write), the counts scale-up
//! reads, the queue's wake-up, the last start failure and the crash streak.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use containerpub_wire::api::Route;
use containerpub_wire::private::SecretVar;
use prometheus::{Histogram, IntGauge};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::instance::{Instance, InstanceState};
use crate::metrics::METRICS;
use crate::pool::Inner;
use crate::runtime::Exit;

/// Start hold after the first crash of a streak; doubles up to the max.
const CRASH_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const CRASH_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A crash this long after the previous one starts a new streak.
pub(crate) const CRASH_STREAK_RESET: Duration = Duration::from_secs(120);

/// The instances of one deployment of one function.
pub(crate) struct InstanceSet {
    /// The route the set was made for. Its `[scaling]` counts and its
    /// deployment id may have been superseded in place (see `rescale`).
    pub(crate) route: Route,
    /// `min_instances`, `max_instances`, `concurrency` in force.
    min: AtomicU32,
    max: AtomicU32,
    concurrency: AtomicU32,
    /// The deployment the set serves: `route`'s, or a later one that
    /// differs only in `[scaling]` (issue 13: `cpub scale`). Shared with
    /// the log followers of its instances, whose lines carry it.
    serving: Arc<AtomicI64>,
    /// The function's secrets as the latest route names them: a secret
    /// set or unset changes the route, not the deployment, and instances
    /// started after it get it (README, "Secrets").
    secrets: ArcSwap<Vec<SecretVar>>,
    /// The list, read on every lease without a lock; replaced (under
    /// `edit`) when an instance joins or leaves.
    instances: ArcSwap<Vec<Arc<Instance>>>,
    /// Held to change the list and to take scale decisions (so two callers
    /// cannot both decide to start the one instance that is missing).
    edit: Mutex<()>,
    /// `instances.len()`, read by `ensure_min`'s check on every lease.
    pub(crate) listed: AtomicU32,
    /// Starts under way.
    pub(crate) starting: AtomicU32,
    /// Calls waiting for a slot.
    pub(crate) waiting: AtomicU32,
    /// Woken on a freed slot, a ready instance, a failed start, retirement.
    pub(crate) changed: Notify,
    /// Bumped on every failed start; waiters that saw an older value fail.
    pub(crate) failures: AtomicU64,
    pub(crate) last_failure: Mutex<Failure>,
    /// Crash streak and start hold (back-off) of this deployment.
    pub(crate) crashes: Mutex<CrashState>,
    pub(crate) retired: AtomicBool,
    /// The pool, for what a lease does rarely (idle touch, `mark_failed`):
    /// a lease never touches a count shared with other functions.
    pub(crate) pool: Weak<Inner>,
    pub(crate) in_flight_gauge: IntGauge,
    pub(crate) queue_wait: Histogram,
}

impl std::fmt::Debug for InstanceSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceSet")
            .field("function", &self.route.function)
            .field("deployment", &self.route.deployment_id)
            .finish_non_exhaustive()
    }
}

impl InstanceSet {
    pub(crate) fn new(route: Route, pool: Weak<Inner>) -> Self {
        let function = [route.function.as_str()];
        Self {
            in_flight_gauge: METRICS.in_flight.with_label_values(&function),
            queue_wait: METRICS.queue_wait.with_label_values(&function),
            min: AtomicU32::new(route.config.scaling.min_instances),
            max: AtomicU32::new(route.config.scaling.max_instances),
            concurrency: AtomicU32::new(route.config.scaling.concurrency),
            serving: Arc::new(AtomicI64::new(route.deployment_id)),
            secrets: ArcSwap::from_pointee(route.secrets.clone()),
            route,
            instances: ArcSwap::from_pointee(Vec::new()),
            edit: Mutex::new(()),
            listed: AtomicU32::new(0),
            starting: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            changed: Notify::new(),
            failures: AtomicU64::new(0),
            last_failure: Mutex::new(Failure::Start(String::new())),
            crashes: Mutex::new(CrashState::default()),
            retired: AtomicBool::new(false),
            pool,
        }
    }

    /// `min_instances` in force.
    pub(crate) fn min_instances(&self) -> u32 {
        self.min.load(Ordering::Relaxed)
    }

    /// `max_instances` in force.
    pub(crate) fn max_instances(&self) -> u32 {
        self.max.load(Ordering::Relaxed)
    }

    /// `concurrency` in force.
    pub(crate) fn concurrency(&self) -> u32 {
        self.concurrency.load(Ordering::Relaxed)
    }

    /// The deployment the set serves now.
    pub(crate) fn serving(&self) -> i64 {
        self.serving.load(Ordering::Acquire)
    }

    /// Serves `route` (a later deployment whose instances are the same:
    /// `containerpub_wire::api::same_instances`, same image) with the
    /// running instances: only the counts change. Lowering `concurrency`
    /// lets calls in flight finish; lowering `max_instances` stops no
    /// instance, the extra ones leave when idle.
    pub(crate) fn rescale(&self, route: &Route) {
        let s = &route.config.scaling;
        self.min.store(s.min_instances, Ordering::Relaxed);
        self.max.store(s.max_instances, Ordering::Relaxed);
        self.concurrency.store(s.concurrency, Ordering::Relaxed);
        self.serving.store(route.deployment_id, Ordering::Release);
        self.follow_secrets(route);
    }

    /// Takes `route`'s secrets (a later route of the deployment the set
    /// serves) for the instances started from now on.
    pub(crate) fn follow_secrets(&self, route: &Route) {
        if **self.secrets.load() != route.secrets {
            self.secrets.store(Arc::new(route.secrets.clone()));
        }
    }

    /// The route a new instance starts from: the set's, with the
    /// deployment it serves, the counts in force and the latest secrets
    /// (so its labels name what it is: `spec.rs`).
    pub(crate) fn start_route(&self) -> Route {
        let mut route = self.route.clone();
        route.deployment_id = self.serving();
        let s = &mut route.config.scaling;
        s.min_instances = self.min_instances();
        s.max_instances = self.max_instances();
        s.concurrency = self.concurrency();
        route.secrets = (**self.secrets.load()).clone();
        route
    }

    /// The deployment the set serves, as its instances' log followers read
    /// it when they ship a line.
    pub(crate) fn serving_handle(&self) -> Arc<AtomicI64> {
        Arc::clone(&self.serving)
    }

    /// The current list (a snapshot: it does not change under the caller).
    pub(crate) fn instances(&self) -> arc_swap::Guard<Arc<Vec<Arc<Instance>>>> {
        self.instances.load()
    }

    /// Serialises list changes and scale decisions of this set.
    pub(crate) fn edit(&self) -> MutexGuard<'_, ()> {
        self.edit.lock().expect("instance set lock")
    }

    /// Takes a slot on the ready instance with the fewest in-flight calls
    /// below the function's concurrency. Lock-free.
    pub(crate) fn try_acquire(&self) -> Option<Arc<Instance>> {
        let limit = self.concurrency();
        let instances = self.instances.load();
        let best = instances
            .iter()
            .filter(|i| i.state() == InstanceState::Ready)
            .min_by_key(|i| i.in_flight())?;
        best.take_slot(limit).then(|| Arc::clone(best))
    }

    /// What is left of the start hold after crashes, if any.
    pub(crate) fn hold(&self) -> Option<Duration> {
        self.crashes
            .lock()
            .expect("crashes lock")
            .held(Instant::now())
    }

    /// The last crash and the hold left, when starts are held back and no
    /// instance is up, starting or paused (a call could only wait in vain).
    pub(crate) fn held_back(&self) -> Option<(Exit, Duration)> {
        let (exit, left) = {
            let crashes = self.crashes.lock().expect("crashes lock");
            let left = crashes.held(Instant::now())?;
            (crashes.last.clone()?, left)
        };
        if self.starting.load(Ordering::Acquire) > 0
            || self
                .instances()
                .iter()
                .any(|i| i.state() != InstanceState::Gone)
        {
            return None;
        }
        Some((exit, left))
    }

    pub(crate) fn count(&self, state: InstanceState) -> usize {
        self.instances()
            .iter()
            .filter(|i| i.state() == state)
            .count()
    }

    /// Instances that are not `Gone`.
    pub(crate) fn live(&self) -> usize {
        self.instances()
            .iter()
            .filter(|i| i.state() != InstanceState::Gone)
            .count()
    }

    /// Publishes `cpub_instances{function,state}`.
    pub(crate) fn publish(&self) {
        let (mut ready, mut paused) = (0i64, 0i64);
        for i in self.instances().iter() {
            match i.state() {
                InstanceState::Ready | InstanceState::Resuming => ready += 1,
                InstanceState::Paused => paused += 1,
                InstanceState::Gone => {}
            }
        }
        let f = self.route.function.as_str();
        METRICS
            .instances
            .with_label_values(&[f, "ready"])
            .set(ready);
        METRICS
            .instances
            .with_label_values(&[f, "paused"])
            .set(paused);
        METRICS
            .instances
            .with_label_values(&[f, "starting"])
            .set(i64::from(self.starting.load(Ordering::Acquire)));
    }

    /// Takes `instance` off the list; whether it was listed.
    pub(crate) fn remove_instance(&self, instance: &Arc<Instance>) -> bool {
        let _edit = self.edit();
        let current = self.instances.load_full();
        let kept: Vec<_> = current
            .iter()
            .filter(|i| !Arc::ptr_eq(i, instance))
            .cloned()
            .collect();
        let removed = kept.len() != current.len();
        self.store(kept);
        removed
    }

    /// Adds an instance to the list.
    pub(crate) fn list(&self, instance: Arc<Instance>) {
        let _edit = self.edit();
        let mut next = Vec::clone(&self.instances.load_full());
        next.push(instance);
        self.store(next);
    }

    /// Takes every instance off the list.
    pub(crate) fn unlist_all(&self) -> Vec<Arc<Instance>> {
        let _edit = self.edit();
        let all = Vec::clone(&self.instances.load_full());
        self.store(Vec::new());
        all
    }

    fn store(&self, list: Vec<Arc<Instance>>) {
        self.listed.store(list.len() as u32, Ordering::Release);
        self.instances.store(Arc::new(list));
    }

    /// Wakes the calls queued on this set.
    pub(crate) fn wake(&self) {
        self.changed.notify_waiters();
    }
}

/// Why the last start of a set failed.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The engine or the readiness probe failed (the text is for the log).
    Start(String),
    /// No room on the node (budget used up, or the engine out of
    /// addresses); the text is for the log.
    Capacity(String),
    /// The function's process exited while it started.
    Crash(Exit),
}

/// Consecutive crashes of a set and the start hold they impose.
#[derive(Debug, Default)]
pub(crate) struct CrashState {
    pub(crate) streak: u32,
    pub(crate) last_at: Option<Instant>,
    /// No start before this (calls that need one fail fast meanwhile).
    pub(crate) hold_until: Option<Instant>,
    pub(crate) last: Option<Exit>,
}

impl CrashState {
    /// What is left of the start hold, if any.
    pub(crate) fn held(&self, now: Instant) -> Option<Duration> {
        self.hold_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }
}

/// The hold before the next start after the `streak`-th crash in a row:
/// none after a first crash of an instance that had served (a one-off
/// kill), else 1 s doubling up to 30 s.
pub(crate) fn crash_backoff(streak: u32, was_ready: bool) -> Duration {
    if streak <= 1 && was_ready {
        return Duration::ZERO;
    }
    let doublings = streak.saturating_sub(1).min(16);
    (CRASH_BACKOFF_FIRST * 2u32.pow(doublings)).min(CRASH_BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_backoff_doubles_up_to_30_s() {
        assert_eq!(crash_backoff(1, true), Duration::ZERO);
        assert_eq!(crash_backoff(1, false), Duration::from_secs(1));
        assert_eq!(crash_backoff(2, false), Duration::from_secs(2));
        assert_eq!(crash_backoff(3, true), Duration::from_secs(4));
        assert_eq!(crash_backoff(6, false), Duration::from_secs(30));
        assert_eq!(crash_backoff(u32::MAX, false), Duration::from_secs(30));
    }
}
