//! The life cycle of instances: start (with its readiness probe and crash
//! detection), resume, pause and removal on idleness, death of a serving
//! instance, crash streaks and their start hold, and scale-up for waiting
//! calls. Every container operation runs in a task of its own, so a caller
//! that goes away cannot leave a container behind.
//!
//! Over 600 lines: one `impl Inner` of the life-cycle transitions, which
//! call one another (a start records its crash, an expiry pauses or
//! removes, a death removes the instance and starts another while
//! `min_instances` asks for one); its tests are in `tests/policy.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use containerpub_wire::api::Route;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::instance::{Instance, InstanceState, StartKind};
use crate::metrics::METRICS;
use crate::pool::Inner;
use crate::runtime::{Exit, short};
use crate::set::{CRASH_STREAK_RESET, Failure, InstanceSet, crash_backoff};
use crate::usage::KeepWarmEvent;
use crate::{PoolError, health};

/// While a start waits for readiness, how often the container's state is
/// read too (in case a `died` event was missed: the event stream broke).
pub const EXIT_POLL: Duration = Duration::from_secs(1);
/// Longest wait for the exit code and output of a container that died.
const EXIT_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an instance whose call failed may take to show it exited.
const FAILED_EXIT_WAIT: Duration = Duration::from_secs(1);
/// `died` events of containers not (yet) known, kept this long so a start
/// that registers its container just after its death still sees it.
const RECENT_DEATHS_KEPT: Duration = Duration::from_secs(30);
const RECENT_DEATHS_MAX: usize = 256;

/// A crash of one of this node's instances, for the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashReport {
    pub function: String,
    pub deployment_id: i64,
    pub exit: Exit,
    /// It exited before it became ready (else it had served).
    pub during_start: bool,
    pub at: std::time::SystemTime,
    /// Crashes of the function since the last report taken (≥ 1).
    pub count: u32,
}

impl Inner {
    /// Starts instances until `min_instances` are up or starting. Called
    /// on every lease: when enough are listed or starting it reads three
    /// atomics of the set and nothing else.
    pub(crate) fn ensure_min(self: &Arc<Self>, set: &Arc<InstanceSet>) {
        let min = set.min_instances();
        if min == 0 || set.retired.load(Ordering::Acquire) {
            return;
        }
        // A listed instance may be `Gone` for a moment: its removal calls
        // this again.
        if set.listed.load(Ordering::Acquire) + set.starting.load(Ordering::Acquire) >= min {
            return;
        }
        if set.hold().is_some() {
            // Crashing: `record_crash` calls this again when the hold ends.
            return;
        }
        let missing = {
            let _edit = set.edit();
            let have = set.live() as u32 + set.starting.load(Ordering::Acquire);
            let missing = min.saturating_sub(have);
            set.starting.fetch_add(missing, Ordering::AcqRel);
            missing
        };
        for _ in 0..missing {
            let (me, set) = (Arc::clone(self), Arc::clone(set));
            tokio::spawn(async move { me.run_start(&set).await });
        }
    }

    /// Adds capacity when the waiting calls need more than is coming:
    /// resumes a paused instance first, else starts one (up to max_instances).
    /// A burst of N calls so starts at most ceil(N / concurrency) instances.
    pub(crate) fn scale(self: &Arc<Self>, set: &Arc<InstanceSet>) {
        let concurrency = set.concurrency();
        let max = set.max_instances() as usize;
        let action = {
            let _edit = set.edit();
            let instances = set.instances();
            let waiting = set.waiting.load(Ordering::Acquire);
            let starting = set.starting.load(Ordering::Acquire);
            let resuming = instances
                .iter()
                .filter(|i| i.state() == InstanceState::Resuming)
                .count() as u32;
            if waiting <= (starting + resuming).saturating_mul(concurrency) {
                None
            } else if let Some(paused) = instances
                .iter()
                .find(|i| i.claim_state(InstanceState::Paused, InstanceState::Resuming))
            {
                Some(Some(Arc::clone(paused)))
            } else if instances
                .iter()
                .filter(|i| i.state() != InstanceState::Gone)
                .count()
                + (starting as usize)
                < max
                && set.hold().is_none()
            {
                set.starting.fetch_add(1, Ordering::AcqRel);
                Some(None)
            } else {
                None
            }
        };
        match action {
            Some(Some(paused)) => {
                let (me, set) = (Arc::clone(self), Arc::clone(set));
                tokio::spawn(async move { me.run_resume(&set, paused).await });
            }
            Some(None) => {
                let (me, set) = (Arc::clone(self), Arc::clone(set));
                tokio::spawn(async move { me.run_start(&set).await });
            }
            None => {}
        }
    }

    /// Counts a start as under way, then runs it.
    pub(crate) fn start_into(
        self: &Arc<Self>,
        set: &Arc<InstanceSet>,
    ) -> tokio::task::JoinHandle<()> {
        set.starting.fetch_add(1, Ordering::AcqRel);
        let (me, set) = (Arc::clone(self), Arc::clone(set));
        tokio::spawn(async move { me.run_start(&set).await })
    }

    /// One start (already counted in `starting`), in its own task so a
    /// caller that goes away cannot leave a container behind.
    async fn run_start(self: &Arc<Self>, set: &Arc<InstanceSet>) {
        set.publish();
        let route = &set.start_route();
        let function = route.function.as_str();
        let began = Instant::now();
        // A call waits for this start and nothing else could serve it.
        let none_live = set.live() == 0 && set.waiting.load(Ordering::Acquire) > 0;
        let result = match self.make_room(set).await {
            Ok(charge) => match self.start_instance(route).await {
                Err(err) if err.is_capacity() => {
                    // The engine is out of room (addresses, say) although
                    // the budget was not: free one instance and try again.
                    tracing::warn!(function, %err, "the engine is out of room; evicting");
                    let one = crate::budget::Short {
                        memory_mb: 0,
                        instances: 1,
                    };
                    if self.evict(function, one, "addresses").await > 0 {
                        self.start_instance(route).await
                    } else {
                        Err(err)
                    }
                }
                started => started,
            }
            .map(|started| (started, charge)),
            Err(err) => Err(err),
        };
        let took = began.elapsed();
        set.starting.fetch_sub(1, Ordering::AcqRel);
        match result {
            Ok(((id, addr), charge)) => {
                METRICS
                    .starts
                    .with_label_values(&[function, "cold", "ok"])
                    .inc();
                METRICS
                    .start_seconds
                    .with_label_values(&["cold"])
                    .observe(took.as_secs_f64());
                if self.keep_warm.cold_start(set, none_live) {
                    self.keep_warm_event(function, KeepWarmEvent::Miss);
                }
                let instance = Arc::new(Instance::new(
                    id,
                    addr,
                    InstanceState::Ready,
                    took,
                    StartKind::Cold,
                ));
                instance.hold(charge);
                if set.retired.load(Ordering::Acquire) {
                    // Retired while starting: nobody will call it.
                    self.remove_instance_later(instance);
                } else {
                    set.list(Arc::clone(&instance));
                    self.follow_logs(set, &instance, false);
                    self.idle.track(set, &instance);
                    tracing::info!(function, deployment = route.deployment_id, container = short(&instance.id), addr = %addr, ms = took.as_millis() as u64, "instance ready");
                    // Died between its readiness and its listing: the event
                    // found nobody then.
                    let died = self
                        .recent_deaths
                        .lock()
                        .expect("recent deaths lock")
                        .iter()
                        .any(|(dead, _)| *dead == instance.id);
                    if died {
                        self.container_died(&instance.id);
                    }
                }
            }
            Err(err) => {
                METRICS
                    .starts
                    .with_label_values(&[function, "cold", "error"])
                    .inc();
                let failure = match err {
                    PoolError::Crashed { exit, .. } => {
                        tracing::warn!(function, deployment = route.deployment_id, code = ?exit.code, output = %exit.output, "instance crashed while starting");
                        self.record_crash(set, "", exit.clone(), false);
                        Failure::Crash(exit)
                    }
                    err if err.is_capacity() => {
                        tracing::warn!(function, deployment = route.deployment_id, %err, "no room for an instance");
                        METRICS
                            .start_failures
                            .with_label_values(&[function, "capacity"])
                            .inc();
                        self.start_failed(function, "capacity", &err);
                        Failure::Capacity(err.to_string())
                    }
                    err => {
                        tracing::warn!(function, deployment = route.deployment_id, %err, "instance start failed");
                        let reason = match err {
                            PoolError::Podman(_) | PoolError::Freezer(_) => "runtime",
                            _ => "not_ready",
                        };
                        METRICS
                            .start_failures
                            .with_label_values(&[function, reason])
                            .inc();
                        self.start_failed(function, reason, &err);
                        Failure::Start(err.to_string())
                    }
                };
                *set.last_failure.lock().expect("failure lock") = failure;
                set.failures.fetch_add(1, Ordering::AcqRel);
            }
        }
        set.publish();
        set.wake();
    }

    /// Starts one container and waits until it is ready — or until it
    /// exits: its `died` event (or, should the event stream be broken, a
    /// look at its state every [`EXIT_POLL`]) ends the wait at once, and
    /// the error carries its exit code and last output. A container that
    /// never became ready is removed at once.
    async fn start_instance(&self, route: &Route) -> Result<(String, SocketAddr), PoolError> {
        let started = self.runtime.start(route, &self.config.node).await?;
        let id = started.id.clone();
        let died = self.watch_start(&id);
        let health = route.config.health_path.as_deref();
        let probe = health::wait_ready(started.addr, health, self.config.start_timeout);
        let poll = async {
            loop {
                tokio::time::sleep(EXIT_POLL).await;
                if let Ok(Some(exit)) = self.runtime.exit_of(&id).await {
                    return exit;
                }
            }
        };
        let outcome = tokio::select! {
            ready = probe => ready.map_err(Some),
            () = died.notified() => Err(None),
            exit = poll => {
                tracing::debug!(container = short(&id), "exit seen by polling, not by an event");
                Err(Some(format!("{exit}")))
            }
        };
        self.starting_ids
            .lock()
            .expect("starting ids lock")
            .remove(&id);
        let probe_error = match outcome {
            Ok(()) => return Ok((started.id, started.addr)),
            Err(probe_error) => probe_error,
        };
        // Exited (or not ready in time: it may have exited too).
        let exit = match tokio::time::timeout(EXIT_READ_TIMEOUT, self.runtime.exit_of(&id)).await {
            Ok(Ok(exit)) => exit,
            Ok(Err(err)) => {
                tracing::warn!(container = short(&id), %err, "reading how an instance ended");
                None
            }
            Err(_) => None,
        };
        self.remove_later(id);
        Err(match (exit, probe_error) {
            (Some(exit), _) => PoolError::Crashed {
                function: route.function.clone(),
                exit,
                backoff: None,
            },
            (None, Some(reason)) => PoolError::StartFailed {
                function: route.function.clone(),
                reason,
            },
            (None, None) => PoolError::StartFailed {
                function: route.function.clone(),
                reason: "the instance exited while it started".into(),
            },
        })
    }

    /// Registers a starting container so its `died` event wakes the start
    /// (also when the event came just before).
    fn watch_start(&self, id: &str) -> Arc<Notify> {
        let died = Arc::new(Notify::new());
        self.starting_ids
            .lock()
            .expect("starting ids lock")
            .insert(id.to_owned(), Arc::clone(&died));
        let seen = self
            .recent_deaths
            .lock()
            .expect("recent deaths lock")
            .iter()
            .any(|(dead, _)| dead == id);
        if seen {
            died.notify_one();
        }
        died
    }

    /// Counts a crash of one of `set`'s instances, extends its crash streak
    /// and start hold, and queues a report for the control plane. `id`:
    /// the container (empty when it died starting).
    fn record_crash(
        self: &Arc<Self>,
        set: &Arc<InstanceSet>,
        id: &str,
        exit: Exit,
        was_ready: bool,
    ) {
        let function = set.route.function.as_str();
        METRICS.crashes.with_label_values(&[function]).inc();
        if !id.is_empty() {
            self.death(function, id, exit.oom_killed);
        }
        let now = Instant::now();
        let hold = {
            let mut crashes = set.crashes.lock().expect("crashes lock");
            if crashes
                .last_at
                .is_some_and(|at| now.duration_since(at) > CRASH_STREAK_RESET)
            {
                crashes.streak = 0;
            }
            crashes.streak = crashes.streak.saturating_add(1);
            crashes.last_at = Some(now);
            crashes.last = Some(exit.clone());
            let hold = crash_backoff(crashes.streak, was_ready);
            crashes.hold_until = (!hold.is_zero()).then(|| now + hold);
            tracing::info!(
                function,
                streak = crashes.streak,
                hold_ms = hold.as_millis() as u64,
                "crash recorded"
            );
            hold
        };
        {
            let mut outbox = self.crash_outbox.lock().expect("crash outbox lock");
            let count = outbox.get(function).map_or(0, |c| c.count);
            outbox.insert(
                function.to_owned(),
                CrashReport {
                    function: function.to_owned(),
                    deployment_id: set.serving(),
                    exit,
                    during_start: !was_ready,
                    at: std::time::SystemTime::now(),
                    count: count.saturating_add(1),
                },
            );
        }
        self.crash_posted.notify_one();
        if !hold.is_zero() && set.min_instances() > 0 {
            // Restore min_instances once the hold is over.
            let (me, set) = (Arc::downgrade(self), Arc::clone(set));
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                if let Some(me) = me.upgrade() {
                    me.ensure_min(&set);
                }
            });
        }
    }

    async fn run_resume(self: &Arc<Self>, set: &Arc<InstanceSet>, instance: Arc<Instance>) {
        let function = set.route.function.as_str();
        // After a freeze in flight (`idle_expired` holds the lock from its
        // claim of the state until the freeze is done).
        let _freezing = instance.freezing.lock().await;
        let began = Instant::now();
        match self.runtime.resume(&instance.id).await {
            Ok(()) => {
                let took = began.elapsed();
                METRICS
                    .starts
                    .with_label_values(&[function, "paused", "ok"])
                    .inc();
                METRICS
                    .start_seconds
                    .with_label_values(&["paused"])
                    .observe(took.as_secs_f64());
                instance.set_ready_at(took, StartKind::Paused);
                instance.set_state(InstanceState::Ready);
                if instance.kept_warm.swap(false, Ordering::AcqRel) {
                    self.keep_warm_event(function, KeepWarmEvent::Hit);
                }
                self.idle.track(set, &instance);
                tracing::debug!(
                    function,
                    container = short(&instance.id),
                    us = took.as_micros() as u64,
                    "instance resumed"
                );
            }
            Err(err) => {
                METRICS
                    .starts
                    .with_label_values(&[function, "paused", "error"])
                    .inc();
                tracing::warn!(function, container = short(&instance.id), %err, "resume failed; removing the instance");
                self.drop_instance(set, &instance);
            }
        }
        set.publish();
        set.wake();
    }

    /// An idle timer fired for instance `id`: pause a ready instance, remove
    /// a paused one; busy instances and `min_instances` are kept.
    pub(crate) async fn idle_expired(self: &Arc<Self>, id: &str) {
        let Some((set, instance)) = self.find(id) else {
            return;
        };
        let min = set.min_instances() as usize;
        match instance.state() {
            InstanceState::Ready => {
                // Used since the timer was set: it runs on for what is left
                // of the idle time after that use.
                let idle = Duration::from_secs(set.route.config.scaling.idle_pause_s);
                if let Some(left) = instance.idle_left(idle) {
                    self.idle.track_for(&instance, left);
                    return;
                }
                if instance.in_flight() > 0 || set.live() <= min {
                    self.idle.track(&set, &instance);
                    return;
                }
                // Held until the freeze is done: a resume that claims the
                // instance meanwhile thaws after it (`run_resume`).
                let _freezing = instance.freezing.lock().await;
                // Pause only if nobody takes a slot meanwhile: claim the
                // state first, then look at the slots (`Instance::take_slot`
                // does the converse).
                if !instance.claim_state(InstanceState::Ready, InstanceState::Paused) {
                    return;
                }
                if instance.in_flight() > 0 {
                    instance.set_state(InstanceState::Ready);
                    self.idle.track(&set, &instance);
                    return;
                }
                match self.runtime.pause(&instance.id).await {
                    Ok(()) => {
                        tracing::debug!(function = %set.route.function, container = short(&instance.id), "instance paused");
                        self.idle.track(&set, &instance);
                        self.keep_warm.used(&set);
                    }
                    Err(err) => {
                        // A failed freeze was thawed again; the instance is
                        // removed (a resume waiting for it then fails and
                        // its calls get a new instance).
                        tracing::warn!(container = short(&instance.id), %err, "pause failed; removing the instance");
                        self.drop_instance(&set, &instance);
                    }
                }
                set.publish();
                set.wake();
            }
            InstanceState::Paused => {
                if set.live() <= min {
                    self.idle.track(&set, &instance);
                    return;
                }
                let function = set.route.function.as_str();
                if min == 0
                    && set.live() == 1
                    && self.keep_warm.enabled(&set)
                    && self.keep_warm.recently_called(function)
                {
                    // Predictive keep-warm: the last instance stays paused.
                    if !instance.kept_warm.swap(true, Ordering::AcqRel) {
                        self.keep_warm_event(function, KeepWarmEvent::Kept);
                        tracing::debug!(
                            function,
                            container = short(&instance.id),
                            "instance kept warm"
                        );
                    }
                    self.idle.track(&set, &instance);
                    return;
                }
                if instance.kept_warm.load(Ordering::Acquire) {
                    self.keep_warm_event(&set.route.function, KeepWarmEvent::Expired);
                }
                tracing::info!(function = %set.route.function, container = short(&instance.id), "idle instance removed");
                self.drop_instance(&set, &instance);
            }
            InstanceState::Resuming | InstanceState::Gone => {}
        }
    }

    /// A call found the instance's connection failing: it leaves the pool
    /// at once; when its container exited (it died under the call: a
    /// crash, an OOM kill), that is read and counted as a crash before the
    /// container is removed. A container that does not exit within
    /// [`FAILED_EXIT_WAIT`] is removed all the same.
    pub(crate) fn instance_failed(
        self: &Arc<Self>,
        set: &Arc<InstanceSet>,
        instance: &Arc<Instance>,
    ) {
        instance.set_state(InstanceState::Gone);
        self.idle.forget(&instance.id);
        let listed = set.remove_instance(instance);
        set.publish();
        set.wake();
        self.ensure_min(set);
        if !listed {
            // `container_died` took it (and reads its exit).
            return;
        }
        let (me, set, instance) = (Arc::clone(self), Arc::clone(set), Arc::clone(instance));
        tokio::spawn(async move {
            let began = Instant::now();
            loop {
                let exit =
                    tokio::time::timeout(EXIT_READ_TIMEOUT, me.runtime.exit_of(&instance.id)).await;
                if let Ok(Ok(Some(exit))) = exit {
                    tracing::warn!(function = %set.route.function, container = short(&instance.id), code = ?exit.code, oom = exit.oom_killed, output = %exit.output, "instance crashed under a call");
                    me.record_crash(&set, &instance.id, exit, true);
                    break;
                }
                if began.elapsed() >= FAILED_EXIT_WAIT {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if let Err(err) = me.runtime.remove(&instance.id).await {
                tracing::warn!(container = short(&instance.id), %err, "removing an instance");
            }
            drop(instance);
        });
    }

    /// The runtime says a container died: a serving instance leaves the
    /// pool at once (its exit is read, counted as a crash, and it is
    /// removed); a starting one wakes its start.
    pub(crate) fn container_died(self: &Arc<Self>, id: &str) {
        if let Some((set, instance)) = self.find(id) {
            tracing::warn!(function = %set.route.function, container = short(id), "instance exited");
            instance.set_state(InstanceState::Gone);
            self.idle.forget(&instance.id);
            let listed = set.remove_instance(&instance);
            set.publish();
            set.wake();
            let me = Arc::clone(self);
            tokio::spawn(async move {
                let exit =
                    tokio::time::timeout(EXIT_READ_TIMEOUT, me.runtime.exit_of(&instance.id));
                if let Ok(Ok(Some(exit))) = exit.await {
                    tracing::warn!(function = %set.route.function, container = short(&instance.id), code = ?exit.code, output = %exit.output, "instance crashed");
                    me.record_crash(&set, &instance.id, exit, true);
                }
                if listed && let Err(err) = me.runtime.remove(&instance.id).await {
                    tracing::warn!(container = short(&instance.id), %err, "removing an instance");
                }
                me.ensure_min(&set);
            });
            return;
        }
        let waiting = self
            .starting_ids
            .lock()
            .expect("starting ids lock")
            .get(id)
            .cloned();
        match waiting {
            Some(died) => died.notify_one(),
            None => {
                let now = Instant::now();
                let mut recent = self.recent_deaths.lock().expect("recent deaths lock");
                while recent
                    .front()
                    .is_some_and(|(_, at)| now.duration_since(*at) > RECENT_DEATHS_KEPT)
                    || recent.len() >= RECENT_DEATHS_MAX
                {
                    recent.pop_front();
                }
                recent.push_back((id.to_owned(), now));
            }
        }
    }

    /// Takes an instance out of the pool and removes its container.
    pub(crate) fn drop_instance(
        self: &Arc<Self>,
        set: &Arc<InstanceSet>,
        instance: &Arc<Instance>,
    ) {
        instance.set_state(InstanceState::Gone);
        self.idle.forget(&instance.id);
        if set.remove_instance(instance) {
            self.remove_instance_later(Arc::clone(instance));
        }
        set.publish();
        set.wake();
        self.ensure_min(set);
    }

    /// Removes an instance's container in a task that holds the instance
    /// (and so its budget share) until the container is gone.
    pub(crate) fn remove_instance_later(&self, instance: Arc<Instance>) {
        let runtime = Arc::clone(&self.runtime);
        tokio::spawn(async move {
            if let Err(err) = runtime.remove(&instance.id).await {
                tracing::warn!(container = short(&instance.id), %err, "removing an instance");
            }
            drop(instance);
        });
    }

    fn remove_later(&self, id: String) {
        let runtime = Arc::clone(&self.runtime);
        tokio::spawn(async move {
            if let Err(err) = runtime.remove(&id).await {
                tracing::warn!(container = short(&id), %err, "removing an instance");
            }
        });
    }
}
