//! Pool policy: which instance serves a call, when instances start, pause,
//! resume and go. Talks to containers only through `ContainerRuntime`.
//!
//! Per function there is one *active* set of instances (the deployment that
//! serves) and, during a deploy, a *pending* set warming up; the pending set
//! becomes active once its instances are ready, and the old set drains.
//! Calls without a free slot wait in a bounded queue (`Notify`) for a freed
//! slot, a started instance or a resumed one; scale-up starts only as many
//! instances as the waiting calls need.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use containerpub_wire::api::Route;
use prometheus::IntGauge;
use rustc_hash::FxHashMap;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::idle::IdleTracker;
use crate::metrics::METRICS;
use crate::podman::Podman;
use crate::runtime::{ContainerRuntime, Exit, Owned, PodmanRuntime, RuntimeEvent, short};
use crate::{NETWORK, PoolError, health};

/// How often a draining instance is checked for in-flight requests.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// Readiness budget for an adopted container at start-up.
const ADOPT_PROBE: Duration = Duration::from_secs(2);
/// Pause before following runtime events again after the stream broke.
const EVENTS_RETRY: Duration = Duration::from_millis(500);
/// While a start waits for readiness, how often the container's state is
/// read too (in case a `died` event was missed: the event stream broke).
const EXIT_POLL: Duration = Duration::from_secs(1);
/// Longest wait for the exit code and output of a container that died.
const EXIT_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Start hold after the first crash of a streak; doubles up to the max.
const CRASH_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const CRASH_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A crash this long after the previous one starts a new streak.
const CRASH_STREAK_RESET: Duration = Duration::from_secs(120);
/// `died` events of containers not (yet) known, kept this long so a start
/// that registers its container just after its death still sees it.
const RECENT_DEATHS_KEPT: Duration = Duration::from_secs(30);
const RECENT_DEATHS_MAX: usize = 256;

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Node name written to `cpub.node`; containers of other nodes are never touched.
    pub node: String,
    /// How long a new instance may take to become ready.
    pub start_timeout: Duration,
}

/// How the instance behind a lease came to serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    /// An instance was started while this call waited.
    Cold,
    /// A running instance had a free slot.
    Warm,
    /// A paused instance was resumed while this call waited.
    Paused,
}

impl StartKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cold => "cold",
            Self::Warm => "warm",
            Self::Paused => "paused",
        }
    }
}

/// Life-cycle state of an instance (`starting` instances are only counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum InstanceState {
    Ready = 0,
    Paused = 1,
    Resuming = 2,
    /// Failed, exited, draining or removed: takes no calls.
    Gone = 3,
}

impl InstanceState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Ready,
            1 => Self::Paused,
            2 => Self::Resuming,
            _ => Self::Gone,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Paused => "paused",
            Self::Resuming => "resuming",
            Self::Gone => "gone",
        }
    }
}

/// One container.
#[derive(Debug)]
pub(crate) struct Instance {
    pub(crate) id: String,
    addr: SocketAddr,
    in_flight: AtomicU32,
    state: AtomicU8,
    /// When it last became ready (start or resume), and what that took.
    ready_at: Mutex<(Instant, Duration, StartKind)>,
    /// Milliseconds since `EPOCH` of the last idle-timer touch.
    touched_ms: AtomicU64,
}

/// Reference point for `Instance::touched_ms`.
static EPOCH: std::sync::LazyLock<std::time::Instant> =
    std::sync::LazyLock::new(std::time::Instant::now);

/// A busy instance's idle timer is restarted at most this often: moka does
/// its housekeeping on the caller's thread, so a read per call would put
/// that work on the request path. Idle times are whole seconds.
const TOUCH_EVERY_MS: u64 = 250;

impl Instance {
    fn new(
        id: String,
        addr: SocketAddr,
        state: InstanceState,
        took: Duration,
        kind: StartKind,
    ) -> Self {
        Instance {
            id,
            addr,
            in_flight: AtomicU32::new(0),
            state: AtomicU8::new(state as u8),
            ready_at: Mutex::new((Instant::now(), took, kind)),
            touched_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn state(&self) -> InstanceState {
        InstanceState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, s: InstanceState) {
        self.state.store(s as u8, Ordering::Release);
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// The instances of one deployment of one function.
pub(crate) struct FunctionPool {
    pub(crate) route: Route,
    pub(crate) instances: Mutex<Vec<Arc<Instance>>>,
    /// `instances.len()`, readable without the lock (`ensure_min`'s check
    /// on every call).
    listed: AtomicU32,
    /// Starts under way.
    starting: AtomicU32,
    /// Calls waiting for a slot.
    waiting: AtomicU32,
    /// Woken on a freed slot, a ready instance, a failed start, retirement.
    changed: Notify,
    /// Bumped on every failed start; waiters that saw an older value fail.
    failures: AtomicU64,
    last_failure: Mutex<Failure>,
    /// Crash streak and start hold (back-off) of this deployment.
    crashes: Mutex<CrashState>,
    retired: AtomicBool,
    in_flight_gauge: IntGauge,
}

impl FunctionPool {
    fn new(route: Route) -> Self {
        let in_flight_gauge = METRICS
            .in_flight
            .with_label_values(&[route.function.as_str()]);
        Self {
            route,
            instances: Mutex::new(Vec::new()),
            listed: AtomicU32::new(0),
            starting: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            changed: Notify::new(),
            failures: AtomicU64::new(0),
            last_failure: Mutex::new(Failure::Start(String::new())),
            crashes: Mutex::new(CrashState::default()),
            retired: AtomicBool::new(false),
            in_flight_gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Instance>>> {
        self.instances.lock().expect("instances lock")
    }

    /// Takes a slot on the ready instance with the fewest in-flight calls
    /// below the function's concurrency.
    fn try_acquire(&self) -> Option<Arc<Instance>> {
        let limit = self.route.config.scaling.concurrency;
        let instances = self.lock();
        let best = instances
            .iter()
            .filter(|i| i.state() == InstanceState::Ready)
            .min_by_key(|i| i.in_flight())?;
        // Under the lock, so two callers cannot both take the last slot.
        let taken = best
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| Arc::clone(best))
    }

    /// What is left of the start hold after crashes, if any.
    fn hold(&self) -> Option<Duration> {
        self.crashes
            .lock()
            .expect("crashes lock")
            .held(Instant::now())
    }

    /// The last crash and the hold left, when starts are held back and no
    /// instance is up, starting or paused (a call could only wait in vain).
    fn held_back(&self) -> Option<(Exit, Duration)> {
        let (exit, left) = {
            let crashes = self.crashes.lock().expect("crashes lock");
            let left = crashes.held(Instant::now())?;
            (crashes.last.clone()?, left)
        };
        if self.starting.load(Ordering::Acquire) > 0
            || self.lock().iter().any(|i| i.state() != InstanceState::Gone)
        {
            return None;
        }
        Some((exit, left))
    }

    fn count(&self, state: InstanceState) -> usize {
        self.lock().iter().filter(|i| i.state() == state).count()
    }

    /// Publishes `cpub_instances{function,state}`.
    fn publish(&self) {
        let (mut ready, mut paused) = (0i64, 0i64);
        for i in self.lock().iter() {
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

    fn remove_instance(&self, instance: &Arc<Instance>) -> bool {
        let mut instances = self.lock();
        let before = instances.len();
        instances.retain(|i| !Arc::ptr_eq(i, instance));
        self.listed.store(instances.len() as u32, Ordering::Release);
        before != instances.len()
    }

    /// Adds an instance to the list.
    fn list(&self, instance: Arc<Instance>) {
        let mut instances = self.lock();
        instances.push(instance);
        self.listed.store(instances.len() as u32, Ordering::Release);
    }

    /// Takes every instance off the list.
    fn unlist_all(&self) -> Vec<Arc<Instance>> {
        let mut instances = self.lock();
        self.listed.store(0, Ordering::Release);
        instances.drain(..).collect()
    }
}

/// Why the last start of a set failed.
#[derive(Debug, Clone)]
enum Failure {
    /// The engine or the readiness probe failed.
    Start(String),
    /// The function's process exited while it started.
    Crash(Exit),
}

/// Consecutive crashes of a set and the start hold they impose.
#[derive(Debug, Default)]
struct CrashState {
    streak: u32,
    last_at: Option<Instant>,
    /// No start before this (calls that need one fail fast meanwhile).
    hold_until: Option<Instant>,
    last: Option<Exit>,
}

impl CrashState {
    /// What is left of the start hold, if any.
    fn held(&self, now: Instant) -> Option<Duration> {
        self.hold_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }
}

/// The hold before the next start after the `streak`-th crash in a row:
/// none after a first crash of an instance that had served (a one-off
/// kill), else 1 s doubling up to 30 s.
fn crash_backoff(streak: u32, was_ready: bool) -> Duration {
    if streak <= 1 && was_ready {
        return Duration::ZERO;
    }
    let doublings = streak.saturating_sub(1).min(16);
    (CRASH_BACKOFF_FIRST * 2u32.pow(doublings)).min(CRASH_BACKOFF_MAX)
}

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

/// A slot on one instance. Dropping it releases the slot, on every path.
#[derive(Debug)]
pub struct Lease {
    instance: Arc<Instance>,
    function: Arc<FunctionPool>,
    kind: StartKind,
    start: Duration,
    queued: Duration,
    pool: Weak<Inner>,
}

impl std::fmt::Debug for FunctionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionPool")
            .field("function", &self.route.function)
            .field("deployment", &self.route.deployment_id)
            .finish_non_exhaustive()
    }
}

impl Lease {
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
        if let Some(inner) = self.pool.upgrade() {
            tracing::warn!(function = %self.function.route.function, container = short(&self.instance.id), "instance failed, removing it");
            inner.drop_instance(&self.function, &self.instance);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.instance.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.function.in_flight_gauge.dec();
        // The idle timer starts over when a call ends (at most every
        // TOUCH_EVERY_MS per instance).
        let now_ms = EPOCH.elapsed().as_millis() as u64;
        let last = self.instance.touched_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= TOUCH_EVERY_MS
            && self
                .instance
                .touched_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            && let Some(inner) = self.pool.upgrade()
        {
            inner.idle.touch(&self.instance.id);
        }
        // Pairs with the fence in `wait_for_slot`: either the waiter sees the
        // freed slot, or this sees the waiter. Saves Notify's lock when idle.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.function.waiting.load(Ordering::Relaxed) > 0 {
            self.function.changed.notify_waiters();
        }
    }
}

/// Snapshot of one instance, for status pages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub function: String,
    pub deployment_id: i64,
    pub id: String,
    pub addr: SocketAddr,
    pub in_flight: u32,
    pub state: InstanceState,
}

/// Per function: the serving set and, during a deploy, the warming one.
#[derive(Default)]
struct Slot {
    active: Option<Arc<FunctionPool>>,
    pending: Option<Arc<FunctionPool>>,
}

pub(crate) struct Inner {
    runtime: Arc<dyn ContainerRuntime>,
    config: PoolConfig,
    /// By function name (an unkeyed hash: names come from the control
    /// plane; it is looked up on every lease).
    functions: Mutex<FxHashMap<String, Slot>>,
    idle: IdleTracker,
    stopped: tokio_util::sync::CancellationToken,
    /// Containers being started and waiting for readiness, woken by their
    /// `died` event.
    starting_ids: Mutex<FxHashMap<String, Arc<Notify>>>,
    /// `died` events of containers nobody knew (yet).
    recent_deaths: Mutex<VecDeque<(String, Instant)>>,
    /// Crashes not yet taken by [`Pool::next_crashes`], latest per function.
    crash_outbox: Mutex<FxHashMap<String, CrashReport>>,
    crash_posted: Notify,
}

/// The instance pool. Cheap to clone; usable from any tokio runtime.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("node", &self.inner.config.node)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool on Podman: ensures the `cpub` network, adopts the healthy
    /// containers this node owns for `routes` and removes the rest.
    pub async fn podman(
        podman: Podman,
        config: PoolConfig,
        routes: &[Route],
    ) -> Result<Pool, PoolError> {
        let runtime = PodmanRuntime::new(podman, NETWORK).await?;
        Self::with_runtime(Arc::new(runtime), config, routes).await
    }

    /// A pool on any runtime (tests use a fake). Spawns the pool's
    /// background tasks (idle timer, runtime events) on the current runtime.
    pub async fn with_runtime(
        runtime: Arc<dyn ContainerRuntime>,
        config: PoolConfig,
        routes: &[Route],
    ) -> Result<Pool, PoolError> {
        let (idle_tx, idle_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            runtime,
            config,
            functions: Mutex::new(FxHashMap::default()),
            idle: IdleTracker::new(idle_tx),
            stopped: tokio_util::sync::CancellationToken::new(),
            starting_ids: Mutex::default(),
            recent_deaths: Mutex::default(),
            crash_outbox: Mutex::default(),
            crash_posted: Notify::new(),
        });
        let pool = Pool { inner };
        pool.adopt(routes).await?;
        pool.spawn_background(idle_rx);
        pool.sync(routes);
        Ok(pool)
    }

    /// Applies a route table: functions no longer routed drain and go; a
    /// new deployment warms up (`min_instances`, or as many as the old one
    /// had ready) before it takes calls and the old one drains; missing
    /// `min_instances` are started.
    pub fn sync(&self, routes: &[Route]) {
        let wanted: HashMap<&str, &Route> =
            routes.iter().map(|r| (r.function.as_str(), r)).collect();
        let mut retired = Vec::new();
        {
            let mut functions = self.inner.functions.lock().expect("functions lock");
            functions.retain(|name, slot| {
                if wanted.contains_key(name.as_str()) {
                    return true;
                }
                retired.extend(slot.active.take());
                retired.extend(slot.pending.take());
                false
            });
        }
        for fp in retired {
            self.inner.retire(fp);
        }
        for route in routes {
            self.inner.route_to(route);
        }
        self.inner.runtime.prepare(routes, &self.inner.config.node);
    }

    /// A free slot of `route`'s function right now, if there is one (the
    /// warm path of [`Pool::lease`], without its future).
    pub fn try_lease(&self, route: &Route) -> Option<Lease> {
        let fp = self.inner.route_to(route);
        let instance = fp.try_acquire()?;
        Some(self.inner.lease_of(&fp, instance, Instant::now()))
    }

    /// Leases an instance of `route`'s function: a free slot at once, or a
    /// place in the function's queue until a slot frees, an instance starts
    /// or a paused one resumes.
    pub async fn lease(&self, route: &Route) -> Result<Lease, PoolError> {
        let fp = self.inner.route_to(route);
        if let Some(instance) = fp.try_acquire() {
            return Ok(self.inner.lease_of(&fp, instance, Instant::now()));
        }
        self.inner.wait_for_slot(&fp).await
    }

    /// Every instance the pool knows.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        let functions = self.inner.functions.lock().expect("functions lock");
        let mut out = Vec::new();
        for fp in functions
            .values()
            .flat_map(|s| s.active.iter().chain(s.pending.iter()))
        {
            for i in fp.lock().iter() {
                out.push(InstanceInfo {
                    function: fp.route.function.clone(),
                    deployment_id: fp.route.deployment_id,
                    id: i.id.clone(),
                    addr: i.addr,
                    in_flight: i.in_flight(),
                    state: i.state(),
                });
            }
        }
        out
    }

    /// Waits for crashes of this node's instances and takes them: the
    /// latest per function since the last call (with how many there were).
    /// One consumer (the proxy's reporter to the control plane).
    pub async fn next_crashes(&self) -> Vec<CrashReport> {
        loop {
            let posted = self.inner.crash_posted.notified();
            tokio::pin!(posted);
            posted.as_mut().enable();
            let taken: Vec<CrashReport> = {
                let mut outbox = self.inner.crash_outbox.lock().expect("crash outbox lock");
                outbox.drain().map(|(_, c)| c).collect()
            };
            if !taken.is_empty() {
                return taken;
            }
            posted.await;
        }
    }

    /// Stops the background tasks and removes the containers created ahead
    /// of need. Instances keep running: a pool started later for the same
    /// node adopts them.
    pub async fn shutdown(&self) {
        self.inner.stopped.cancel();
        self.inner.runtime.shutdown().await;
    }

    /// Removes every instance now (tests, and callers that want a clean stop).
    pub async fn remove_all(&self) {
        let all: Vec<Arc<FunctionPool>> = {
            let mut functions = self.inner.functions.lock().expect("functions lock");
            functions
                .drain()
                .flat_map(|(_, s)| s.active.into_iter().chain(s.pending))
                .collect()
        };
        for fp in all {
            fp.retired.store(true, Ordering::Release);
            let instances: Vec<_> = fp.unlist_all();
            for i in instances {
                i.set_state(InstanceState::Gone);
                self.inner.idle.forget(&i.id);
                if let Err(err) = self.inner.runtime.remove(&i.id).await {
                    tracing::warn!(container = short(&i.id), %err, "removing an instance");
                }
            }
            fp.publish();
        }
    }

    /// Adopts running or paused containers of known deployments; removes
    /// every other container this node owns.
    async fn adopt(&self, routes: &[Route]) -> Result<(), PoolError> {
        let owned = self
            .inner
            .runtime
            .list_owned(&self.inner.config.node)
            .await?;
        for c in owned {
            let route = routes
                .iter()
                .find(|r| r.function == c.function && r.deployment_id.to_string() == c.deployment);
            match self.try_adopt(&c, route).await {
                Some(state) => {
                    tracing::info!(container = short(&c.id), function = %c.function, state = state.as_str(), "adopted a running instance");
                }
                None => {
                    tracing::info!(container = short(&c.id), function = %c.function, state = %c.state, "removing a container this node does not serve");
                    self.inner.runtime.remove(&c.id).await?;
                }
            }
        }
        Ok(())
    }

    async fn try_adopt(&self, c: &Owned, route: Option<&Route>) -> Option<InstanceState> {
        let route = route?;
        let addr = SocketAddr::new(c.ip?, route.config.port);
        let state = match c.state.as_str() {
            "running" => {
                health::wait_ready(addr, route.config.health_path.as_deref(), ADOPT_PROBE)
                    .await
                    .ok()?;
                InstanceState::Ready
            }
            "paused" => InstanceState::Paused,
            _ => return None,
        };
        // Not `route_to`: that would start `min_instances` before the
        // adopted instance is counted.
        let fp = self.inner.active_for_adoption(route);
        let instance = Arc::new(Instance::new(
            c.id.clone(),
            addr,
            state,
            Duration::ZERO,
            StartKind::Warm,
        ));
        fp.list(Arc::clone(&instance));
        self.inner.idle.track(&fp, &instance);
        fp.publish();
        Some(state)
    }

    fn spawn_background(&self, mut idle_rx: mpsc::UnboundedReceiver<String>) {
        let stopped = self.inner.stopped.clone();
        // moka evicts only during cache activity or run_pending_tasks: drive it.
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::idle::TICK);
            loop {
                tokio::select! {
                    () = stopped.cancelled() => return,
                    _ = tick.tick() => {}
                    Some(id) = idle_rx.recv() => {
                        let Some(inner) = weak.upgrade() else { return };
                        inner.idle_expired(&id).await;
                        continue;
                    }
                }
                let Some(inner) = weak.upgrade() else { return };
                inner.idle.run_pending();
            }
        });
        let stopped = self.inner.stopped.clone();
        let weak = Arc::downgrade(&self.inner);
        let runtime = Arc::clone(&self.inner.runtime);
        let node = self.inner.config.node.clone();
        tokio::spawn(async move {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let follow = async {
                loop {
                    if let Err(err) = runtime.events(&node, &tx).await {
                        tracing::warn!(%err, "following container events failed; retrying");
                    }
                    tokio::time::sleep(EVENTS_RETRY).await;
                }
            };
            let handle = async {
                while let Some(RuntimeEvent::Died { id }) = rx.recv().await {
                    let Some(inner) = weak.upgrade() else { return };
                    inner.container_died(&id);
                }
            };
            tokio::select! {
                () = stopped.cancelled() => {}
                () = follow => {}
                () = handle => {}
            }
        });
    }
}

impl Inner {
    /// The set that serves `route`'s function, creating it or starting a
    /// deploy's warm-up as needed.
    fn route_to(self: &Arc<Self>, route: &Route) -> Arc<FunctionPool> {
        let mut functions = self.functions.lock().expect("functions lock");
        // Hot path: the active set serves this deployment already.
        if let Some(active) = functions
            .get(&route.function)
            .and_then(|s| s.active.as_ref())
            && active.route.deployment_id == route.deployment_id
        {
            let active = Arc::clone(active);
            drop(functions);
            self.ensure_min(&active);
            return active;
        }
        let slot = functions.entry(route.function.clone()).or_default();
        let Some(active) = slot.active.clone() else {
            let fp = Arc::new(FunctionPool::new(route.clone()));
            slot.active = Some(Arc::clone(&fp));
            drop(functions);
            self.ensure_min(&fp);
            return fp;
        };
        if slot
            .pending
            .as_ref()
            .is_some_and(|p| p.route.deployment_id == route.deployment_id)
        {
            return active;
        }
        // A new deployment: warm it up, keep serving the old one meanwhile.
        let fresh = Arc::new(FunctionPool::new(route.clone()));
        let old_ready = active.count(InstanceState::Ready) as u32;
        let target = route
            .config
            .scaling
            .min_instances
            .max(old_ready.min(1))
            .min(route.config.scaling.max_instances);
        let replaced = slot.pending.replace(Arc::clone(&fresh));
        if target == 0 {
            slot.pending = None;
            slot.active = Some(Arc::clone(&fresh));
            drop(functions);
            self.retire(active);
            if let Some(p) = replaced {
                self.retire(p);
            }
            return fresh;
        }
        drop(functions);
        if let Some(p) = replaced {
            self.retire(p);
        }
        tracing::info!(function = %route.function, deployment = route.deployment_id, instances = target, "warming up a new deployment");
        let me = Arc::clone(self);
        let warming = Arc::clone(&fresh);
        tokio::spawn(async move {
            let starts: Vec<_> = (0..target).map(|_| me.start_into(&warming)).collect();
            for s in starts {
                let _ = s.await;
            }
            me.promote(&warming);
        });
        active
    }

    /// The active set of `route`'s deployment, created without starting
    /// anything (adoption fills it; `sync` then starts what is missing).
    fn active_for_adoption(&self, route: &Route) -> Arc<FunctionPool> {
        let mut functions = self.functions.lock().expect("functions lock");
        let slot = functions.entry(route.function.clone()).or_default();
        match &slot.active {
            Some(active) if active.route.deployment_id == route.deployment_id => Arc::clone(active),
            _ => {
                let fp = Arc::new(FunctionPool::new(route.clone()));
                if let Some(old) = slot.active.replace(Arc::clone(&fp)) {
                    drop(functions);
                    self.retire(old);
                }
                fp
            }
        }
    }

    /// Makes a warmed-up pending set the active one; the old one drains.
    fn promote(self: &Arc<Self>, fp: &Arc<FunctionPool>) {
        let old = {
            let mut functions = self.functions.lock().expect("functions lock");
            let Some(slot) = functions.get_mut(&fp.route.function) else {
                return;
            };
            if !slot.pending.as_ref().is_some_and(|p| Arc::ptr_eq(p, fp)) {
                return;
            }
            slot.pending = None;
            slot.active.replace(Arc::clone(fp))
        };
        tracing::info!(function = %fp.route.function, deployment = fp.route.deployment_id, "new deployment serving");
        if let Some(old) = old {
            // Calls queued on the old set move to the new one.
            self.retire(old);
        }
        self.ensure_min(fp);
    }

    /// Starts instances until `min_instances` are up or starting.
    fn ensure_min(self: &Arc<Self>, fp: &Arc<FunctionPool>) {
        let min = fp.route.config.scaling.min_instances;
        if min == 0 || fp.retired.load(Ordering::Acquire) {
            return;
        }
        // Called on every lease: enough instances listed or starting needs
        // no lock. (A listed instance may be `Gone` for a moment: its removal
        // calls this again.)
        if fp.listed.load(Ordering::Acquire) + fp.starting.load(Ordering::Acquire) >= min {
            return;
        }
        if fp.hold().is_some() {
            // Crashing: `record_crash` calls this again when the hold ends.
            return;
        }
        let missing = {
            let instances = fp.lock();
            let have = instances
                .iter()
                .filter(|i| i.state() != InstanceState::Gone)
                .count() as u32
                + fp.starting.load(Ordering::Acquire);
            let missing = min.saturating_sub(have);
            fp.starting.fetch_add(missing, Ordering::AcqRel);
            missing
        };
        for _ in 0..missing {
            let (me, fp) = (Arc::clone(self), Arc::clone(fp));
            tokio::spawn(async move { me.run_start(&fp).await });
        }
    }

    fn lease_of(
        self: &Arc<Self>,
        fp: &Arc<FunctionPool>,
        instance: Arc<Instance>,
        began: Instant,
    ) -> Lease {
        let (ready_at, took, how) = *instance.ready_at.lock().expect("ready_at lock");
        // Became ready after this call arrived: the call waited for that start.
        let (kind, start) = if ready_at >= began && how != StartKind::Warm {
            (how, took)
        } else {
            (StartKind::Warm, Duration::ZERO)
        };
        // Queue time is the wait beyond the start or resume it waited for,
        // so the server-timing entries add up instead of overlapping.
        let queued = began.elapsed().saturating_sub(start);
        METRICS.queue_wait.observe(queued.as_secs_f64());
        fp.in_flight_gauge.inc();
        Lease {
            instance,
            function: Arc::clone(fp),
            kind,
            start,
            queued,
            pool: Arc::downgrade(self),
        }
    }

    async fn wait_for_slot(self: &Arc<Self>, fp: &Arc<FunctionPool>) -> Result<Lease, PoolError> {
        let began = Instant::now();
        let scaling = &fp.route.config.scaling;
        let function = fp.route.function.clone();
        let queue_size = scaling.queue_size;
        if fp.waiting.fetch_add(1, Ordering::AcqRel) >= queue_size {
            fp.waiting.fetch_sub(1, Ordering::AcqRel);
            METRICS
                .rejections
                .with_label_values(&[function.as_str(), "queue_full"])
                .inc();
            return Err(PoolError::QueueFull {
                function,
                queue_size: queue_size as usize,
            });
        }
        /// This call's place in a set's queue count; moves with the call.
        struct Waiting(Arc<FunctionPool>);
        impl Drop for Waiting {
            fn drop(&mut self) {
                self.0.waiting.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let mut place = Waiting(Arc::clone(fp));
        // Pairs with the fence in `Lease::drop` (see there).
        std::sync::atomic::fence(Ordering::SeqCst);
        let deadline = began + Duration::from_millis(scaling.queue_timeout_ms);
        let mut failures_seen = fp.failures.load(Ordering::Acquire);
        loop {
            if place.0.retired.load(Ordering::Acquire) {
                // A deploy switched sets while we waited: queue on the new one.
                let next = self
                    .current_route(&place.0)
                    .map(|route| self.route_to(&route));
                let Some(next) = next.filter(|n| !n.retired.load(Ordering::Acquire)) else {
                    return Err(PoolError::StartFailed {
                        function,
                        reason: "the function was removed".into(),
                    });
                };
                next.waiting.fetch_add(1, Ordering::AcqRel);
                std::sync::atomic::fence(Ordering::SeqCst);
                failures_seen = next.failures.load(Ordering::Acquire);
                place = Waiting(next);
            }
            let fp = Arc::clone(&place.0);
            let changed = fp.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(instance) = fp.try_acquire() {
                return Ok(self.lease_of(&fp, instance, began));
            }
            if fp.retired.load(Ordering::Acquire) {
                continue;
            }
            if fp.failures.load(Ordering::Acquire) != failures_seen
                && fp.count(InstanceState::Ready) == 0
            {
                let failure = fp.last_failure.lock().expect("failure lock").clone();
                METRICS
                    .rejections
                    .with_label_values(&[function.as_str(), "start_failed"])
                    .inc();
                return Err(match failure {
                    Failure::Start(reason) => PoolError::StartFailed { function, reason },
                    Failure::Crash(exit) => {
                        let backoff = fp.hold();
                        PoolError::Crashed {
                            function,
                            exit,
                            backoff,
                        }
                    }
                });
            }
            if let Some((exit, backoff)) = fp.held_back() {
                // It keeps crashing and nothing could serve: say so now
                // rather than after the queue timeout.
                METRICS
                    .rejections
                    .with_label_values(&[function.as_str(), "start_failed"])
                    .inc();
                return Err(PoolError::Crashed {
                    function,
                    exit,
                    backoff: Some(backoff),
                });
            }
            self.scale(&fp);
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                METRICS
                    .rejections
                    .with_label_values(&[function.as_str(), "queue_timeout"])
                    .inc();
                return Err(PoolError::QueueTimeout {
                    function,
                    waited: began.elapsed(),
                });
            }
        }
    }

    /// The route of the set now serving `fp`'s function.
    fn current_route(&self, fp: &FunctionPool) -> Option<Route> {
        let functions = self.functions.lock().expect("functions lock");
        let slot = functions.get(&fp.route.function)?;
        slot.pending
            .as_ref()
            .or(slot.active.as_ref())
            .map(|p| p.route.clone())
    }

    /// Adds capacity when the waiting calls need more than is coming:
    /// resumes a paused instance first, else starts one (up to max_instances).
    /// A burst of N calls so starts at most ceil(N / concurrency) instances.
    fn scale(self: &Arc<Self>, fp: &Arc<FunctionPool>) {
        let concurrency = fp.route.config.scaling.concurrency;
        let max = fp.route.config.scaling.max_instances as usize;
        let action = {
            let instances = fp.lock();
            let waiting = fp.waiting.load(Ordering::Acquire);
            let starting = fp.starting.load(Ordering::Acquire);
            let resuming = instances
                .iter()
                .filter(|i| i.state() == InstanceState::Resuming)
                .count() as u32;
            if waiting <= (starting + resuming).saturating_mul(concurrency) {
                None
            } else if let Some(paused) = instances
                .iter()
                .find(|i| i.state() == InstanceState::Paused)
            {
                paused.set_state(InstanceState::Resuming);
                Some(Some(Arc::clone(paused)))
            } else if instances
                .iter()
                .filter(|i| i.state() != InstanceState::Gone)
                .count()
                + (starting as usize)
                < max
                && fp.hold().is_none()
            {
                fp.starting.fetch_add(1, Ordering::AcqRel);
                Some(None)
            } else {
                None
            }
        };
        match action {
            Some(Some(paused)) => {
                let (me, fp) = (Arc::clone(self), Arc::clone(fp));
                tokio::spawn(async move { me.run_resume(&fp, paused).await });
            }
            Some(None) => {
                let (me, fp) = (Arc::clone(self), Arc::clone(fp));
                tokio::spawn(async move { me.run_start(&fp).await });
            }
            None => {}
        }
    }

    /// Counts a start as under way, then runs it.
    fn start_into(self: &Arc<Self>, fp: &Arc<FunctionPool>) -> tokio::task::JoinHandle<()> {
        fp.starting.fetch_add(1, Ordering::AcqRel);
        let (me, fp) = (Arc::clone(self), Arc::clone(fp));
        tokio::spawn(async move { me.run_start(&fp).await })
    }

    /// One start (already counted in `starting`), in its own task so a
    /// caller that goes away cannot leave a container behind.
    async fn run_start(self: &Arc<Self>, fp: &Arc<FunctionPool>) {
        fp.publish();
        let route = &fp.route;
        let function = route.function.as_str();
        let began = Instant::now();
        let result = self.start_instance(route).await;
        let took = began.elapsed();
        fp.starting.fetch_sub(1, Ordering::AcqRel);
        match result {
            Ok((id, addr)) => {
                METRICS
                    .starts
                    .with_label_values(&[function, "cold", "ok"])
                    .inc();
                METRICS
                    .start_seconds
                    .with_label_values(&["cold"])
                    .observe(took.as_secs_f64());
                let instance = Arc::new(Instance::new(
                    id,
                    addr,
                    InstanceState::Ready,
                    took,
                    StartKind::Cold,
                ));
                if fp.retired.load(Ordering::Acquire) {
                    // Retired while starting: nobody will call it.
                    self.remove_later(instance.id.clone());
                } else {
                    fp.list(Arc::clone(&instance));
                    self.idle.track(fp, &instance);
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
                        self.record_crash(fp, exit.clone(), false);
                        Failure::Crash(exit)
                    }
                    err => {
                        tracing::warn!(function, deployment = route.deployment_id, %err, "instance start failed");
                        Failure::Start(err.to_string())
                    }
                };
                *fp.last_failure.lock().expect("failure lock") = failure;
                fp.failures.fetch_add(1, Ordering::AcqRel);
            }
        }
        fp.publish();
        fp.changed.notify_waiters();
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

    /// Counts a crash of one of `fp`'s instances, extends its crash streak
    /// and start hold, and queues a report for the control plane.
    fn record_crash(self: &Arc<Self>, fp: &Arc<FunctionPool>, exit: Exit, was_ready: bool) {
        let function = fp.route.function.as_str();
        METRICS.crashes.with_label_values(&[function]).inc();
        let now = Instant::now();
        let hold = {
            let mut crashes = fp.crashes.lock().expect("crashes lock");
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
                    deployment_id: fp.route.deployment_id,
                    exit,
                    during_start: !was_ready,
                    at: std::time::SystemTime::now(),
                    count: count.saturating_add(1),
                },
            );
        }
        self.crash_posted.notify_one();
        if !hold.is_zero() && fp.route.config.scaling.min_instances > 0 {
            // Restore min_instances once the hold is over.
            let (me, fp) = (Arc::downgrade(self), Arc::clone(fp));
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                if let Some(me) = me.upgrade() {
                    me.ensure_min(&fp);
                }
            });
        }
    }

    async fn run_resume(self: &Arc<Self>, fp: &Arc<FunctionPool>, instance: Arc<Instance>) {
        let function = fp.route.function.as_str();
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
                *instance.ready_at.lock().expect("ready_at lock") =
                    (Instant::now(), took, StartKind::Paused);
                instance.set_state(InstanceState::Ready);
                self.idle.track(fp, &instance);
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
                self.drop_instance(fp, &instance);
            }
        }
        fp.publish();
        fp.changed.notify_waiters();
    }

    /// An idle timer fired for instance `id`: pause a ready instance, remove
    /// a paused one; busy instances and `min_instances` are kept.
    async fn idle_expired(self: &Arc<Self>, id: &str) {
        let Some((fp, instance)) = self.find(id) else {
            return;
        };
        let min = fp.route.config.scaling.min_instances as usize;
        match instance.state() {
            InstanceState::Ready => {
                let live = fp
                    .lock()
                    .iter()
                    .filter(|i| i.state() != InstanceState::Gone)
                    .count();
                if instance.in_flight() > 0 || live <= min {
                    self.idle.track(&fp, &instance);
                    return;
                }
                // Pause only if nobody takes a slot meanwhile: claim it first.
                if instance
                    .state
                    .compare_exchange(
                        InstanceState::Ready as u8,
                        InstanceState::Paused as u8,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_err()
                {
                    return;
                }
                if instance.in_flight() > 0 {
                    instance.set_state(InstanceState::Ready);
                    self.idle.track(&fp, &instance);
                    return;
                }
                match self.runtime.pause(&instance.id).await {
                    Ok(()) => {
                        tracing::debug!(function = %fp.route.function, container = short(&instance.id), "instance paused");
                        self.idle.track(&fp, &instance);
                    }
                    Err(err) => {
                        tracing::warn!(container = short(&instance.id), %err, "pause failed; removing the instance");
                        self.drop_instance(&fp, &instance);
                    }
                }
                fp.publish();
                fp.changed.notify_waiters();
            }
            InstanceState::Paused => {
                let live = fp
                    .lock()
                    .iter()
                    .filter(|i| i.state() != InstanceState::Gone)
                    .count();
                if live <= min {
                    self.idle.track(&fp, &instance);
                    return;
                }
                tracing::info!(function = %fp.route.function, container = short(&instance.id), "idle instance removed");
                self.drop_instance(&fp, &instance);
            }
            InstanceState::Resuming | InstanceState::Gone => {}
        }
    }

    fn find(&self, id: &str) -> Option<(Arc<FunctionPool>, Arc<Instance>)> {
        let functions = self.functions.lock().expect("functions lock");
        for fp in functions
            .values()
            .flat_map(|s| s.active.iter().chain(s.pending.iter()))
        {
            if let Some(i) = fp.lock().iter().find(|i| i.id == id) {
                return Some((Arc::clone(fp), Arc::clone(i)));
            }
        }
        None
    }

    /// The runtime says a container died: a serving instance leaves the
    /// pool at once (its exit is read, counted as a crash, and it is
    /// removed); a starting one wakes its start.
    fn container_died(self: &Arc<Self>, id: &str) {
        if let Some((fp, instance)) = self.find(id) {
            tracing::warn!(function = %fp.route.function, container = short(id), "instance exited");
            instance.set_state(InstanceState::Gone);
            self.idle.forget(&instance.id);
            let listed = fp.remove_instance(&instance);
            fp.publish();
            fp.changed.notify_waiters();
            let me = Arc::clone(self);
            tokio::spawn(async move {
                let exit =
                    tokio::time::timeout(EXIT_READ_TIMEOUT, me.runtime.exit_of(&instance.id));
                if let Ok(Ok(Some(exit))) = exit.await {
                    tracing::warn!(function = %fp.route.function, container = short(&instance.id), code = ?exit.code, output = %exit.output, "instance crashed");
                    me.record_crash(&fp, exit, true);
                }
                if listed && let Err(err) = me.runtime.remove(&instance.id).await {
                    tracing::warn!(container = short(&instance.id), %err, "removing an instance");
                }
                me.ensure_min(&fp);
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
    fn drop_instance(self: &Arc<Self>, fp: &Arc<FunctionPool>, instance: &Arc<Instance>) {
        instance.set_state(InstanceState::Gone);
        self.idle.forget(&instance.id);
        if fp.remove_instance(instance) {
            self.remove_later(instance.id.clone());
        }
        fp.publish();
        fp.changed.notify_waiters();
        self.ensure_min(fp);
    }

    fn remove_later(&self, id: String) {
        let runtime = Arc::clone(&self.runtime);
        tokio::spawn(async move {
            if let Err(err) = runtime.remove(&id).await {
                tracing::warn!(container = short(&id), %err, "removing an instance");
            }
        });
    }

    /// Drains a set in the background: no new calls; each instance is
    /// removed once its in-flight calls finish or the function's timeout
    /// passes. Calls queued on it move to the set that replaced it.
    fn retire(&self, fp: Arc<FunctionPool>) {
        fp.retired.store(true, Ordering::Release);
        let instances: Vec<_> = fp.unlist_all();
        for i in &instances {
            i.set_state(InstanceState::Gone);
            self.idle.forget(&i.id);
        }
        fp.publish();
        fp.changed.notify_waiters();
        let runtime = Arc::clone(&self.runtime);
        let grace = Duration::from_millis(fp.route.config.resources.timeout_ms);
        tokio::spawn(async move {
            let until = Instant::now() + grace;
            for i in instances {
                while i.in_flight() > 0 && Instant::now() < until {
                    tokio::time::sleep(DRAIN_POLL).await;
                }
                match runtime.remove(&i.id).await {
                    Ok(()) => {
                        tracing::info!(function = %fp.route.function, deployment = fp.route.deployment_id, container = short(&i.id), "instance removed")
                    }
                    Err(err) => {
                        tracing::warn!(container = short(&i.id), %err, "removing a retired instance")
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use async_trait::async_trait;
    use containerpub_wire::Manifest;
    use tokio::net::TcpListener;
    use tokio::sync::broadcast;

    use super::*;
    use crate::runtime::{Owned, Started};

    /// A runtime whose "containers" all share one local listener.
    struct Fake {
        addr: SocketAddr,
        start_delay: Duration,
        fail_starts: AtomicBool,
        starts: AtomicUsize,
        removed: Mutex<Vec<String>>,
        paused: Mutex<Vec<String>>,
        resumed: Mutex<Vec<String>>,
        leftovers: Vec<Owned>,
        events: broadcast::Sender<RuntimeEvent>,
        /// Started containers exit at once (code 3, "boom") instead of listening.
        crash_starts: AtomicBool,
        /// Their `died` event is lost (a broken event stream).
        silent_deaths: AtomicBool,
        /// A closed port: what a crashed container's address answers.
        dead_addr: SocketAddr,
        /// Containers that exited, with how.
        exited: Mutex<HashMap<String, Exit>>,
    }

    impl Fake {
        async fn new(leftovers: Vec<Owned>) -> Arc<Self> {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((s, _)) = listener.accept().await {
                    drop(s);
                }
            });
            let dead_addr = TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap()
                .local_addr()
                .unwrap();
            Arc::new(Fake {
                crash_starts: AtomicBool::new(false),
                silent_deaths: AtomicBool::new(false),
                dead_addr,
                exited: Mutex::default(),
                addr,
                start_delay: Duration::from_millis(30),
                fail_starts: AtomicBool::new(false),
                starts: AtomicUsize::new(0),
                removed: Mutex::default(),
                paused: Mutex::default(),
                resumed: Mutex::default(),
                leftovers,
                events: broadcast::channel(16).0,
            })
        }
        fn starts(&self) -> usize {
            self.starts.load(Ordering::SeqCst)
        }
        fn removed(&self) -> Vec<String> {
            self.removed.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl ContainerRuntime for Fake {
        async fn start(&self, route: &Route, _node: &str) -> Result<Started, PoolError> {
            tokio::time::sleep(self.start_delay).await;
            if self.fail_starts.load(Ordering::SeqCst) {
                return Err(PoolError::StartFailed {
                    function: route.function.clone(),
                    reason: "image missing".into(),
                });
            }
            let n = self.starts.fetch_add(1, Ordering::SeqCst);
            let id = format!("{}-{}-{n}", route.function, route.deployment_id);
            if self.crash_starts.load(Ordering::SeqCst) {
                self.exited.lock().unwrap().insert(
                    id.clone(),
                    Exit {
                        code: Some(3),
                        output: "boom\n".into(),
                    },
                );
                if !self.silent_deaths.load(Ordering::SeqCst) {
                    let (events, dead) = (self.events.clone(), id.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let _ = events.send(RuntimeEvent::Died { id: dead });
                    });
                }
                return Ok(Started {
                    id,
                    addr: self.dead_addr,
                });
            }
            Ok(Started {
                id,
                addr: self.addr,
            })
        }
        async fn exit_of(&self, id: &str) -> Result<Option<Exit>, PoolError> {
            Ok(self.exited.lock().unwrap().get(id).cloned())
        }
        async fn remove(&self, id: &str) -> Result<(), PoolError> {
            self.removed.lock().unwrap().push(id.to_owned());
            Ok(())
        }
        async fn list_owned(&self, _node: &str) -> Result<Vec<Owned>, PoolError> {
            Ok(self.leftovers.clone())
        }
        async fn pause(&self, id: &str) -> Result<(), PoolError> {
            self.paused.lock().unwrap().push(id.to_owned());
            Ok(())
        }
        async fn resume(&self, id: &str) -> Result<(), PoolError> {
            self.resumed.lock().unwrap().push(id.to_owned());
            Ok(())
        }
        async fn events(
            &self,
            _node: &str,
            tx: &mpsc::UnboundedSender<RuntimeEvent>,
        ) -> Result<(), PoolError> {
            let mut rx = self.events.subscribe();
            while let Ok(e) = rx.recv().await {
                if tx.send(e).is_err() {
                    break;
                }
            }
            Ok(())
        }
    }

    fn route_with(name: &str, deployment_id: i64, scaling: &str) -> Route {
        let text = format!(
            "name = \"{name}\"\nruntime = \"container\"\n[resources]\ntimeout_ms = 1000\n[scaling]\n{scaling}\n"
        );
        Route {
            function: name.into(),
            deployment_id,
            version: 1,
            image: "img".into(),
            config: Manifest::parse(&text).unwrap(),
        }
    }

    fn route(name: &str, deployment_id: i64, concurrency: u32, max: u32) -> Route {
        route_with(
            name,
            deployment_id,
            &format!("concurrency = {concurrency}\nmax_instances = {max}"),
        )
    }

    async fn pool_on(fake: &Arc<Fake>, routes: &[Route]) -> Pool {
        let config = PoolConfig {
            node: "test".into(),
            start_timeout: Duration::from_secs(2),
        };
        Pool::with_runtime(
            Arc::clone(fake) as Arc<dyn ContainerRuntime>,
            config,
            routes,
        )
        .await
        .unwrap()
    }

    async fn pool(fake: &Arc<Fake>) -> Pool {
        pool_on(fake, &[]).await
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(80)).await;
    }

    #[tokio::test]
    async fn removes_unknown_leftovers_and_adopts_known_ones() {
        let known = route("f", 1, 4, 3);
        let owned = |id: &str, function: &str, deployment: &str, state: &str| Owned {
            id: id.into(),
            function: function.into(),
            deployment: deployment.into(),
            state: state.into(),
            ip: Some([127, 0, 0, 1].into()),
        };
        let fake = Fake::new(vec![
            owned("ghost", "gone-fn", "1", "running"),
            owned("old-version", "f", "0", "running"),
            owned("exited", "f", "1", "exited"),
            owned("keep", "f", "1", "running"),
        ])
        .await;
        // The adopted instance must answer on its port: point the route at the fake's listener.
        let mut known = known;
        known.config.port = fake.addr.port();
        let pool = pool_on(&fake, std::slice::from_ref(&known)).await;
        let mut removed = fake.removed();
        removed.sort();
        assert_eq!(removed, ["exited", "ghost", "old-version"]);
        let lease = pool.lease(&known).await.unwrap();
        assert_eq!(lease.instance_id(), "keep");
        assert_eq!(lease.start_kind(), StartKind::Warm);
        assert_eq!(fake.starts(), 0, "adopted, not started");
    }

    #[tokio::test]
    async fn an_adopted_instance_counts_towards_min_instances() {
        let fake = Fake::new(vec![Owned {
            id: "keep".into(),
            function: "f".into(),
            deployment: "1".into(),
            state: "running".into(),
            ip: Some([127, 0, 0, 1].into()),
        }])
        .await;
        let mut known = route_with("f", 1, "min_instances = 1\nmax_instances = 1");
        known.config.port = fake.addr.port();
        let pool = pool_on(&fake, std::slice::from_ref(&known)).await;
        pool.sync(std::slice::from_ref(&known));
        settle().await;
        assert_eq!(fake.starts(), 0, "the adopted instance is the minimum");
        assert_eq!(pool.instances().len(), 1);
        let lease = pool.lease(&known).await.unwrap();
        assert_eq!(lease.instance_id(), "keep");
    }

    #[tokio::test]
    async fn first_call_is_cold_then_warm_on_the_same_instance() {
        let fake = Fake::new(vec![]).await;
        let pool = pool(&fake).await;
        let r = route("f", 1, 4, 3);
        let first = pool.lease(&r).await.unwrap();
        assert_eq!(first.start_kind(), StartKind::Cold);
        assert!(first.start_duration() >= fake.start_delay);
        let id = first.instance_id().to_owned();
        drop(first);
        let second = pool.lease(&r).await.unwrap();
        assert_eq!(second.start_kind(), StartKind::Warm);
        assert_eq!(second.instance_id(), id);
        assert_eq!(second.start_duration(), Duration::ZERO);
        assert_eq!(fake.starts(), 1);
    }

    #[tokio::test]
    async fn lease_goes_to_the_least_loaded_instance_with_room() {
        let fake = Fake::new(vec![]).await;
        let pool = pool(&fake).await;
        let r = route("f", 1, 2, 2);
        let a = pool.lease(&r).await.unwrap();
        let b = pool.lease(&r).await.unwrap();
        assert_eq!(
            a.instance_id(),
            b.instance_id(),
            "second call fits the first instance"
        );
        let c = pool.lease(&r).await.unwrap();
        assert_ne!(
            c.instance_id(),
            a.instance_id(),
            "full instance: a second one starts"
        );
        drop(a);
        let d = pool.lease(&r).await.unwrap();
        // c's instance has one call, b's has one: either is least loaded; both have room.
        assert!(d.instance_id() == b.instance_id() || d.instance_id() == c.instance_id());
        drop((b, c, d));
        assert!(
            pool.instances().iter().all(|i| i.in_flight == 0),
            "{:?}",
            pool.instances()
        );
    }

    #[tokio::test]
    async fn burst_starts_at_most_ceil_n_over_concurrency() {
        let fake = Fake::new(vec![]).await;
        let pool = pool(&fake).await;
        let r = route("f", 1, 10, 20);
        let calls: Vec<_> = (0..95)
            .map(|_| {
                let (pool, r) = (pool.clone(), r.clone());
                tokio::spawn(async move {
                    let lease = pool.lease(&r).await?;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, PoolError>(lease.instance_id().to_owned())
                })
            })
            .collect();
        for c in calls {
            c.await.unwrap().unwrap();
        }
        assert!(
            fake.starts() <= 10,
            "started {} instances for 95 calls at concurrency 10",
            fake.starts()
        );
        assert!(
            fake.starts() >= 2,
            "one instance cannot take 95 calls at once"
        );
    }

    #[tokio::test]
    async fn burst_never_exceeds_max_instances_and_queues_the_rest() {
        let fake = Fake::new(vec![]).await;
        let pool = pool(&fake).await;
        let r = route("f", 1, 2, 3);
        let calls: Vec<_> = (0..30)
            .map(|_| {
                let (pool, r) = (pool.clone(), r.clone());
                tokio::spawn(async move {
                    let lease = pool.lease(&r).await?;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    drop(lease);
                    Ok::<_, PoolError>(())
                })
            })
            .collect();
        for c in calls {
            c.await.unwrap().unwrap();
        }
        assert_eq!(fake.starts(), 3);
    }

    #[tokio::test]
    async fn full_queue_answers_queue_full_and_slow_queue_times_out() {
        let fake = Fake::new(vec![]).await;
        let pool = pool(&fake).await;
        let r = route_with(
            "f",
            1,
            "concurrency = 1\nmax_instances = 1\nqueue_size = 2\nqueue_timeout_ms = 300",
        );
        let held = pool.lease(&r).await.unwrap();
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let (pool, r) = (pool.clone(), r.clone());
                tokio::spawn(async move { pool.lease(&r).await.map(drop) })
            })
            .collect();
        settle().await;
        match pool.lease(&r).await {
            Err(PoolError::QueueFull { queue_size: 2, .. }) => {}
            other => panic!("expected QueueFull, got {other:?}"),
        }
        for w in waiters {
            match w.await.unwrap() {
                Err(PoolError::QueueTimeout { waited, .. }) => {
                    assert!(waited >= Duration::from_millis(300))
                }
                other => panic!("expected QueueTimeout, got {other:?}"),
            }
        }
        drop(held);
        pool.lease(&r).await.expect("a free slot again");
    }

    #[tokio::test]
    async fn queued_call_gets_the_freed_slot() {
        let fake = Fake::new(vec![]).await;
        let pool = pool(&fake).await;
        let r = route("f", 1, 1, 1);
        let held = pool.lease(&r).await.unwrap();
        let waiter = tokio::spawn({
            let (pool, r) = (pool.clone(), r.clone());
            async move {
                pool.lease(&r)
                    .await
                    .map(|l| (l.instance_id().to_owned(), l.queue_duration()))
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let id = held.instance_id().to_owned();
        drop(held);
        let (got, queued) = waiter.await.unwrap().unwrap();
        assert_eq!(got, id);
        assert!(queued >= Duration::from_millis(50), "{queued:?}");
    }

    #[tokio::test]
    async fn aborted_calls_release_their_slots_and_cannot_leak_containers() {
        let fake = Fake::new(vec![]).await;
        let pool = pool(&fake).await;
        let r = route("f", 1, 1, 2);
        // A call aborted while its instance starts: the start finishes in its own task.
        let call = tokio::spawn({
            let (pool, r) = (pool.clone(), r.clone());
            async move { pool.lease(&r).await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        call.abort();
        // A call aborted while it holds a lease.
        let holder = tokio::spawn({
            let (pool, r) = (pool.clone(), r.clone());
            async move {
                let _lease = pool.lease(&r).await.unwrap();
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        });
        settle().await;
        holder.abort();
        settle().await;
        let instances = pool.instances();
        assert!(
            !instances.is_empty(),
            "the started instance is kept, not leaked"
        );
        assert!(instances.iter().all(|i| i.in_flight == 0), "{instances:?}");
    }

    #[tokio::test]
    async fn failed_start_fails_waiting_calls_and_the_next_call_tries_again() {
        let fake = Fake::new(vec![]).await;
        fake.fail_starts.store(true, Ordering::SeqCst);
        let pool = pool(&fake).await;
        let r = route("f", 1, 4, 2);
        match pool.lease(&r).await {
            Err(PoolError::StartFailed { reason, .. }) => {
                assert!(reason.contains("image missing"), "{reason}")
            }
            other => panic!("expected StartFailed, got {other:?}"),
        }
        fake.fail_starts.store(false, Ordering::SeqCst);
        assert_eq!(pool.lease(&r).await.unwrap().start_kind(), StartKind::Cold);
    }

    #[tokio::test]
    async fn min_instances_are_prewarmed_and_replaced() {
        let fake = Fake::new(vec![]).await;
        let pool = pool(&fake).await;
        let r = route_with("f", 1, "min_instances = 2\nmax_instances = 4");
        pool.sync(std::slice::from_ref(&r));
        settle().await;
        assert_eq!(fake.starts(), 2, "started at deploy time");
        let lease = pool.lease(&r).await.unwrap();
        assert_eq!(
            lease.start_kind(),
            StartKind::Warm,
            "first call after a pre-warming deploy"
        );
        let id = lease.instance_id().to_owned();
        drop(lease);
        let _ = fake.events.send(RuntimeEvent::Died { id: id.clone() });
        settle().await;
        assert!(fake.removed().contains(&id), "dead instance leaves");
        assert_eq!(fake.starts(), 3, "min_instances restored");
        assert_eq!(pool.instances().len(), 2);
    }

    #[tokio::test]
    async fn dead_instance_leaves_at_once_and_demand_starts_another() {
        let fake = Fake::new(vec![]).await;
        let pool = pool(&fake).await;
        let r = route("f", 1, 4, 3);
        let id = pool.lease(&r).await.unwrap().instance_id().to_owned();
        let _ = fake.events.send(RuntimeEvent::Died { id: id.clone() });
        settle().await;
        assert!(pool.instances().is_empty());
        let next = pool.lease(&r).await.unwrap();
        assert_eq!(next.start_kind(), StartKind::Cold);
        assert_ne!(next.instance_id(), id);
    }

    #[tokio::test]
    async fn idle_instances_pause_then_resume_on_a_call_then_stop() {
        let fake = Fake::new(vec![]).await;
        let pool = pool(&fake).await;
        let r = route_with("f", 1, "idle_pause_s = 1\nidle_stop_s = 2");
        let id = pool.lease(&r).await.unwrap().instance_id().to_owned();
        let until = Instant::now() + Duration::from_secs(4);
        while fake.paused.lock().unwrap().is_empty() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            fake.paused.lock().unwrap().as_slice(),
            std::slice::from_ref(&id),
            "paused after idle_pause_s"
        );
        assert_eq!(pool.instances()[0].state, InstanceState::Paused);
        let resumed = pool.lease(&r).await.unwrap();
        assert_eq!(resumed.instance_id(), id);
        assert_eq!(resumed.start_kind(), StartKind::Paused);
        assert_eq!(fake.starts(), 1, "resumed, not started");
        drop(resumed);
        // Paused again after 1 s, removed 1 s after that (moka's timer wheel
        // rounds expiries up to about a second).
        let until = Instant::now() + Duration::from_secs(6);
        while fake.removed().is_empty() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            fake.paused.lock().unwrap().len(),
            2,
            "paused again before removal"
        );
        assert_eq!(fake.removed(), [id]);
        assert!(pool.instances().is_empty(), "scaled to zero");
    }

    #[tokio::test]
    async fn busy_and_minimum_instances_are_not_paused() {
        let fake = Fake::new(vec![]).await;
        let pool = pool(&fake).await;
        let busy = route_with("busy", 1, "idle_pause_s = 1\nidle_stop_s = 1");
        let kept = route_with(
            "kept",
            1,
            "idle_pause_s = 1\nidle_stop_s = 1\nmin_instances = 1",
        );
        pool.sync(&[busy.clone(), kept.clone()]);
        let held = pool.lease(&busy).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3000)).await;
        assert!(
            fake.paused.lock().unwrap().is_empty(),
            "{:?}",
            fake.paused.lock().unwrap()
        );
        assert!(fake.removed().is_empty());
        drop(held);
    }

    #[tokio::test]
    async fn redeploy_warms_the_new_version_before_draining_the_old() {
        let fake = Fake::new(vec![]).await;
        let pool = pool(&fake).await;
        let v1 = route("f", 1, 4, 3);
        let held = pool.lease(&v1).await.unwrap();
        let old_id = held.instance_id().to_owned();
        let v2 = route("f", 2, 4, 3);
        pool.sync(std::slice::from_ref(&v2));
        // While v2 warms up, calls still go to v1.
        let during = pool.lease(&v2).await.unwrap();
        assert_eq!(during.instance_id(), old_id);
        drop(during);
        settle().await;
        assert!(
            fake.removed().is_empty(),
            "the in-flight call on v1 is not cut off"
        );
        let after = pool.lease(&v2).await.unwrap();
        assert!(
            after.instance_id().starts_with("f-2-"),
            "{}",
            after.instance_id()
        );
        assert_eq!(
            after.start_kind(),
            StartKind::Warm,
            "v2 was warmed before it took calls"
        );
        drop(held);
        settle().await;
        assert_eq!(fake.removed(), [old_id]);
    }

    #[tokio::test]
    async fn deleted_function_loses_its_instances_and_failed_ones_leave() {
        let fake = Fake::new(vec![]).await;
        let pool = pool(&fake).await;
        let f = route("f", 1, 4, 3);
        let lease = pool.lease(&f).await.unwrap();
        lease.mark_failed();
        let id = lease.instance_id().to_owned();
        drop(lease);
        settle().await;
        assert_eq!(fake.removed(), [id]);
        assert!(pool.instances().is_empty());
        let again = pool.lease(&f).await.unwrap();
        assert_eq!(
            again.start_kind(),
            StartKind::Cold,
            "demand starts a replacement"
        );
        drop(again);
        pool.sync(&[]);
        settle().await;
        assert_eq!(fake.removed().len(), 2);
        assert!(pool.instances().is_empty());
    }

    fn crashed(result: Result<Lease, PoolError>) -> (Exit, Option<Duration>) {
        match result {
            Err(PoolError::Crashed { exit, backoff, .. }) => (exit, backoff),
            other => panic!("expected Crashed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_crash_while_starting_fails_the_waiting_calls_at_once_and_says_why() {
        let fake = Fake::new(vec![]).await;
        fake.crash_starts.store(true, Ordering::SeqCst);
        // A long start timeout: the exit, not the timeout, must end the wait.
        let pool = Pool::with_runtime(
            Arc::clone(&fake) as Arc<dyn ContainerRuntime>,
            PoolConfig {
                node: "test".into(),
                start_timeout: Duration::from_secs(30),
            },
            &[],
        )
        .await
        .unwrap();
        let r = route("crashy", 1, 4, 3);
        let began = Instant::now();
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let (pool, r) = (pool.clone(), r.clone());
                tokio::spawn(async move { pool.lease(&r).await })
            })
            .collect();
        for c in calls {
            let (exit, backoff) = crashed(c.await.unwrap());
            assert_eq!(exit.code, Some(3));
            assert_eq!(exit.output, "boom\n");
            assert!(backoff.is_some(), "a crash at start holds the next start");
        }
        assert!(
            began.elapsed() < Duration::from_millis(900),
            "the waiting calls failed {:?} after the call",
            began.elapsed()
        );
        assert_eq!(fake.starts(), 1, "three waiting calls, one start");
        settle().await;
        assert_eq!(
            fake.removed(),
            ["crashy-1-0"],
            "the exited container is removed"
        );
        let err = pool.lease(&r).await.unwrap_err().to_string();
        assert!(
            err.contains("exited with code 3")
                && err.contains("boom")
                && err.contains("next is tried"),
            "{err}"
        );
        let crashes = pool.next_crashes().await;
        assert_eq!(crashes.len(), 1, "{crashes:?}");
        assert_eq!(crashes[0].function, "crashy");
        assert_eq!(crashes[0].exit.code, Some(3));
        assert!(crashes[0].during_start);
        let counted = crate::metrics::METRICS
            .crashes
            .with_label_values(&["crashy"])
            .get();
        assert_eq!(counted, 1);
    }

    #[tokio::test]
    async fn repeated_crashes_back_off_and_calls_fail_fast_meanwhile() {
        let fake = Fake::new(vec![]).await;
        fake.crash_starts.store(true, Ordering::SeqCst);
        let pool = pool(&fake).await;
        let r = route("storm", 1, 1, 10);
        // Calls for 2.5 s: without a back-off each would start a container.
        let until = Instant::now() + Duration::from_millis(2500);
        let mut calls = 0;
        while Instant::now() < until {
            let began = Instant::now();
            let (exit, _) = crashed(pool.lease(&r).await);
            assert_eq!(exit.code, Some(3));
            assert!(began.elapsed() < Duration::from_millis(900));
            calls += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(calls > 20, "{calls} calls");
        // Crash 1 at ~0 s holds 1 s, crash 2 at ~1 s holds 2 s: two starts.
        assert!(
            (2..=3).contains(&fake.starts()),
            "{} starts for {calls} calls in 2.5 s",
            fake.starts()
        );
        // A fixed version (a new deployment) starts at once.
        fake.crash_starts.store(false, Ordering::SeqCst);
        let fixed = route("storm", 2, 1, 10);
        pool.sync(std::slice::from_ref(&fixed));
        let lease = pool.lease(&fixed).await.unwrap();
        assert!(lease.instance_id().starts_with("storm-2-"));
    }

    #[tokio::test]
    async fn a_crash_is_seen_even_when_its_event_is_lost() {
        let fake = Fake::new(vec![]).await;
        fake.crash_starts.store(true, Ordering::SeqCst);
        fake.silent_deaths.store(true, Ordering::SeqCst);
        let pool = Pool::with_runtime(
            Arc::clone(&fake) as Arc<dyn ContainerRuntime>,
            PoolConfig {
                node: "test".into(),
                start_timeout: Duration::from_secs(30),
            },
            &[],
        )
        .await
        .unwrap();
        let began = Instant::now();
        let (exit, _) = crashed(pool.lease(&route("quiet", 1, 4, 3)).await);
        assert_eq!(exit.code, Some(3));
        assert!(
            began.elapsed() < EXIT_POLL + Duration::from_millis(900),
            "{:?}",
            began.elapsed()
        );
    }

    #[tokio::test]
    async fn a_serving_instance_that_dies_is_a_crash_but_is_replaced_at_once() {
        let fake = Fake::new(vec![]).await;
        let pool = pool(&fake).await;
        let r = route("killed", 1, 4, 3);
        let id = pool.lease(&r).await.unwrap().instance_id().to_owned();
        fake.exited.lock().unwrap().insert(
            id.clone(),
            Exit {
                code: Some(137),
                output: String::new(),
            },
        );
        let _ = fake.events.send(RuntimeEvent::Died { id: id.clone() });
        settle().await;
        assert!(fake.removed().contains(&id));
        let crashes = pool.next_crashes().await;
        assert_eq!(crashes[0].exit.code, Some(137));
        assert!(!crashes[0].during_start);
        // A first crash of an instance that had served holds nothing back.
        let next = pool.lease(&r).await.unwrap();
        assert_eq!(next.start_kind(), StartKind::Cold);
    }

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
