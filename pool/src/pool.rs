//! The pool's public face ([`Pool`]) and its shared state ([`Inner`]):
//! construction (adoption, background tasks), route sync, handles, and the
//! views for status pages and tests. The policy lives beside it, one
//! concept per file: `instance.rs`, `set.rs` (instance sets), `lease.rs`
//! (the call path), `lifecycle.rs` (start, resume, pause, stop, crashes),
//! `deploy.rs` (deploy switching) and `adopt.rs` (adoption at start-up).
//! They add `impl Inner` blocks, so they and this file name each other.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use containerpub_wire::api::Route;
use rustc_hash::FxHashMap;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::PoolError;
use crate::budget::Budget;
use crate::deploy::FunctionSlot;
use crate::idle::IdleTracker;
use crate::instance::{Instance, InstanceInfo, InstanceState};
use crate::keepwarm::KeepWarm;
use crate::lease::{FunctionHandle, Lease};
use crate::lifecycle::CrashReport;
use crate::node::NodeConfig;
use crate::podman::Podman;
use crate::runtime::{ContainerRuntime, PodmanRuntime, RuntimeEvent, short};
use crate::set::InstanceSet;

/// Pause before following runtime events again after the stream broke.
const EVENTS_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Node name written to `cpub.node`; containers of other nodes are never touched.
    pub node: String,
    /// How long a new instance may take to become ready.
    pub start_timeout: std::time::Duration,
}

/// The pool's shared state. Its locks are taken off the call path only
/// (route sync, handle resolution, runtime events, idle expiry).
pub(crate) struct Inner {
    pub(crate) runtime: Arc<dyn ContainerRuntime>,
    pub(crate) config: PoolConfig,
    /// Network, budget and keep-warm settings of the node.
    pub(crate) node: NodeConfig,
    /// What the live instances hold against the node budget.
    pub(crate) budget: Arc<Budget>,
    /// The cold-start tracker and keep-warm policy.
    pub(crate) keep_warm: KeepWarm,
    /// By function name (an unkeyed hash: names come from the control
    /// plane). Never read on a lease: handles point at their slot.
    pub(crate) functions: Mutex<FxHashMap<String, Arc<FunctionSlot>>>,
    pub(crate) idle: IdleTracker,
    stopped: tokio_util::sync::CancellationToken,
    /// Containers being started and waiting for readiness, woken by their
    /// `died` event.
    pub(crate) starting_ids: Mutex<FxHashMap<String, Arc<Notify>>>,
    /// `died` events of containers nobody knew (yet).
    pub(crate) recent_deaths: Mutex<VecDeque<(String, Instant)>>,
    /// Crashes not yet taken by [`Pool::next_crashes`], latest per function.
    pub(crate) crash_outbox: Mutex<FxHashMap<String, CrashReport>>,
    pub(crate) crash_posted: Notify,
    /// Log capture, when the pool was made with a log hub.
    pub(crate) logs: std::sync::OnceLock<Arc<crate::logs::LogHub>>,
    /// Per-function counters for the node report (`crate::usage`).
    pub(crate) counters: crate::usage::Counters,
}

impl Inner {
    /// Every set of every function (off the call path).
    fn all_sets(&self) -> Vec<Arc<InstanceSet>> {
        let functions = self.functions.lock().expect("functions lock");
        functions.values().flat_map(|s| s.sets()).collect()
    }

    /// Follows the output of `instance` of `set` when logs are captured:
    /// from the start of its log file, or, for an instance that ran before
    /// (`adopted`), from where the previous proxy's shipping stopped
    /// (`crate::logs::offsets`).
    pub(crate) fn follow_logs(&self, set: &InstanceSet, instance: &Instance, adopted: bool) {
        let Some(hub) = self.logs.get() else { return };
        let journal = (set.concurrency() == 1).then(|| Arc::clone(&instance.calls));
        hub.follow(
            Arc::clone(&self.runtime),
            crate::logs::Follow {
                id: instance.id.clone(),
                function: Arc::from(set.route.function.as_str()),
                deployment: set.serving_handle(),
                journal,
                adopted,
            },
        );
    }

    /// The set and instance of container `id`.
    pub(crate) fn find(&self, id: &str) -> Option<(Arc<InstanceSet>, Arc<Instance>)> {
        self.all_sets().into_iter().find_map(|set| {
            let found = set.instances().iter().find(|i| i.id == id).cloned();
            found.map(|i| (set, i))
        })
    }
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
        Self::podman_on(podman, config, NodeConfig::default(), routes).await
    }

    /// [`Pool::podman`] with the node's settings: its network (created on
    /// `node.subnet` when missing), budget and keep-warm policy.
    pub async fn podman_on(
        podman: Podman,
        config: PoolConfig,
        node: NodeConfig,
        routes: &[Route],
    ) -> Result<Pool, PoolError> {
        let runtime = PodmanRuntime::on_network(podman, &node.network, Some(&node.subnet))
            .await?
            .with_initialized_ahead(node.initialized_ahead);
        Self::with_runtime_on(Arc::new(runtime), config, node, routes).await
    }

    /// A pool on any runtime (tests use a fake), with the default node
    /// settings ([`NodeConfig::default`]).
    pub async fn with_runtime(
        runtime: Arc<dyn ContainerRuntime>,
        config: PoolConfig,
        routes: &[Route],
    ) -> Result<Pool, PoolError> {
        Self::with_runtime_on(runtime, config, NodeConfig::default(), routes).await
    }

    /// [`Pool::podman_on`] capturing logs from the start ([`Pool::with_runtime_logs`]).
    pub async fn podman_with_logs(
        podman: Podman,
        config: PoolConfig,
        node: NodeConfig,
        routes: &[Route],
        logs: Option<Arc<crate::logs::LogHub>>,
    ) -> Result<Pool, PoolError> {
        let runtime = PodmanRuntime::on_network(podman, &node.network, Some(&node.subnet))
            .await?
            .with_initialized_ahead(node.initialized_ahead);
        Self::with_runtime_logs(Arc::new(runtime), config, node, routes, logs).await
    }

    /// A pool on any runtime with the node's settings. Spawns the pool's
    /// background tasks (idle timer, runtime events) on the current
    /// runtime. An instance budget above the network's addresses is
    /// lowered to them (with a warning that says how to grow the network).
    pub async fn with_runtime_on(
        runtime: Arc<dyn ContainerRuntime>,
        config: PoolConfig,
        node: NodeConfig,
        routes: &[Route],
    ) -> Result<Pool, PoolError> {
        Self::with_runtime_logs(runtime, config, node, routes, None).await
    }

    /// [`Pool::with_runtime_on`] capturing logs into `logs` from the start:
    /// a container adoption removes (exited, not ready, not routed) has its
    /// lines after the saved offset read first, adopted instances are
    /// followed from theirs, and the instances the first route sync starts
    /// from their first line.
    pub async fn with_runtime_logs(
        runtime: Arc<dyn ContainerRuntime>,
        config: PoolConfig,
        mut node: NodeConfig,
        routes: &[Route],
        logs: Option<Arc<crate::logs::LogHub>>,
    ) -> Result<Pool, PoolError> {
        if let Some(addresses) = runtime.address_capacity()
            && addresses < node.budget.max_instances
        {
            tracing::warn!(
                network = %node.network,
                addresses,
                max_instances = node.budget.max_instances,
                "the function network has fewer addresses than the node's instance budget; \
                 the budget is lowered to them. Recreate the network on a larger subnet \
                 (scripts/setup-host.sh with CPUB_NETWORK_RECREATE=1 while no instance runs) \
                 or use another network (--network, --network-subnet)"
            );
            node.budget.max_instances = addresses.max(1);
        }
        let (idle_tx, idle_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            runtime,
            config,
            budget: Budget::new(node.budget),
            keep_warm: KeepWarm::new(node.keep_warm),
            node,
            functions: Mutex::new(FxHashMap::default()),
            idle: IdleTracker::new(idle_tx),
            stopped: tokio_util::sync::CancellationToken::new(),
            starting_ids: Mutex::default(),
            recent_deaths: Mutex::default(),
            crash_outbox: Mutex::default(),
            crash_posted: Notify::new(),
            logs: std::sync::OnceLock::new(),
            counters: crate::usage::Counters::default(),
        });
        if let Some(hub) = logs {
            let _ = inner.logs.set(hub);
        }
        inner.adopt(routes).await?;
        let pool = Pool { inner };
        pool.follow_adopted();
        pool.spawn_background(idle_rx);
        pool.sync(routes);
        Ok(pool)
    }

    /// Applies a route table: functions no longer routed drain and go; a
    /// new deployment warms up (`min_instances`, or one instance if the old
    /// one had any ready) before it takes calls and the old one drains;
    /// missing `min_instances` are started. Handles of functions still
    /// routed keep working.
    pub fn sync(&self, routes: &[Route]) {
        self.inner.sync_routes(routes);
        self.inner.runtime.prepare(routes, &self.inner.config.node);
    }

    /// The handle of `route`'s function, for leases without any lookup.
    /// A function the pool serves already keeps its deployments as `sync`
    /// set them (a handle resolved from an older route never switches back);
    /// an unknown one gets its set for `route`, as `sync` would.
    pub fn handle(&self, route: &Route) -> FunctionHandle {
        let known = self
            .inner
            .functions
            .lock()
            .expect("functions lock")
            .get(&route.function)
            .cloned();
        FunctionHandle {
            slot: known.unwrap_or_else(|| self.inner.resolve(route)),
            pool: Arc::clone(&self.inner),
        }
    }

    /// A lease of `route`'s deployment, resolving the function's slot first
    /// (a map lookup under the pool's lock, and what `sync` does for this
    /// route: a different deployment starts a switch). For tests and
    /// occasional callers; a hot path keeps a [`FunctionHandle`].
    pub fn try_lease(&self, route: &Route) -> Option<Lease> {
        self.resolved(route).try_lease()
    }

    /// [`FunctionHandle::lease`] of `route`'s function (see `try_lease`).
    pub async fn lease(&self, route: &Route) -> Result<Lease, PoolError> {
        self.resolved(route).lease().await
    }

    fn resolved(&self, route: &Route) -> FunctionHandle {
        FunctionHandle {
            slot: self.inner.resolve(route),
            pool: Arc::clone(&self.inner),
        }
    }

    /// The node's settings in force (the instance budget lowered to the
    /// network's addresses, if it had to be).
    pub fn node(&self) -> &NodeConfig {
        &self.inner.node
    }

    /// Memory (MiB, the sum of limits) and instances the live instances
    /// hold against the node budget now.
    pub fn budget_used(&self) -> (u64, u32) {
        self.inner.budget.used()
    }

    /// Calls and cold starts of `function` the keep-warm tracker holds
    /// (`None` when it was not called within the keep-warm window).
    pub fn function_stats(&self, function: &str) -> Option<(u64, u64)> {
        self.inner.keep_warm.snapshot(function)
    }

    /// Every instance the pool knows.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        let mut out = Vec::new();
        for set in self.inner.all_sets() {
            for i in set.instances().iter() {
                out.push(InstanceInfo {
                    function: set.route.function.clone(),
                    deployment_id: set.serving(),
                    id: i.id.clone(),
                    addr: i.addr,
                    in_flight: i.in_flight(),
                    state: i.state(),
                });
            }
        }
        out
    }

    /// Keep-warm figures and crash counts of every routed function
    /// (`crate::usage`).
    pub fn function_counters(&self) -> Vec<crate::usage::FunctionCounters> {
        self.inner.function_counters()
    }

    /// Instances that died since the last call (at most
    /// `crate::usage::MAX_DEATHS`).
    pub fn take_deaths(&self) -> Vec<crate::usage::Death> {
        self.inner.take_deaths()
    }

    /// With log capture on: follows every instance listed now as adopted
    /// (from its saved offset) and removes the offsets of containers gone.
    fn follow_adopted(&self) {
        let Some(hub) = self.inner.logs.get() else {
            return;
        };
        for set in self.inner.all_sets() {
            for i in set.instances().iter() {
                self.inner.follow_logs(&set, i, true);
            }
        }
        hub.prune_offsets();
    }

    /// The log capture, when on.
    pub fn logs(&self) -> Option<Arc<crate::logs::LogHub>> {
        self.inner.logs.get().cloned()
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

    /// Stops the background tasks that remove or start instances on their
    /// own (the idle timer, the runtime events: idle expiry, crashes), so
    /// the log capture can flush with nothing removed under it
    /// (`LogHub::flush`); [`Pool::shutdown`] does this too.
    pub fn stop_background(&self) {
        self.inner.stopped.cancel();
    }

    /// Stops the background tasks and removes the containers created ahead
    /// of need. Instances keep running: a pool started later for the same
    /// node adopts them.
    pub async fn shutdown(&self) {
        self.inner.stopped.cancel();
        if let Some(hub) = self.inner.logs.get() {
            hub.close();
        }
        self.inner.runtime.shutdown().await;
    }

    /// Removes every instance now (tests, and callers that want a clean stop).
    pub async fn remove_all(&self) {
        let slots: Vec<Arc<FunctionSlot>> = {
            let mut functions = self.inner.functions.lock().expect("functions lock");
            functions.drain().map(|(_, s)| s).collect()
        };
        let sets = slots
            .iter()
            .flat_map(|s| s.active.swap(None).into_iter().chain(s.pending().take()));
        for set in sets {
            set.retired
                .store(true, std::sync::atomic::Ordering::Release);
            for i in set.unlist_all() {
                i.set_state(InstanceState::Gone);
                self.inner.idle.forget(&i.id);
                if let Err(err) = self.inner.runtime.remove(&i.id).await {
                    tracing::warn!(container = short(&i.id), %err, "removing an instance");
                }
            }
            set.publish();
            set.wake();
        }
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
                crate::instance::tick_coarse_clock();
                let Some(inner) = weak.upgrade() else { return };
                inner.idle.run_pending();
                inner.keep_warm.run_pending();
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
