//! Containers created ahead of need: one not-started container per routed
//! deployment, so a cold start pays neither Podman's `create` nor (for up
//! to [`Precreator`]'s `init_cap` of them) its `init`: the namespaces, the
//! network, the cgroup and conmon are set up ahead, and the start only runs
//! the function's process (docs/BENCHMARKS.md, "Cold start from a
//! container created ahead" and "… initialized ahead").
//!
//! An initialized container holds an address of the function network and
//! runc's waiting init process (about 4 MB, measured in ARCHITECTURE.md),
//! so at most `init_cap` are initialized; when a cold start's successor
//! finds them all in use, the one whose function had its last cold start
//! longest ago (or never) is replaced by a merely created container. Each
//! initialized one is touched (a connect its kernel refuses) after its
//! `init` and every 20 s, so that the host has its address resolved and
//! the bridge knows its port when it starts ([`keep_reachable`]).
//!
//! Rules that keep it safe:
//! - a slot holds the exact container spec (every field but the name) it
//!   was created from, and a start takes its container only when the
//!   asking route's spec is equal: a container of an old deployment (other
//!   image, labels, limits or environment) is never started for a new one,
//!   and a taken container has the isolation settings of a normal start;
//! - [`Precreator::sync`] removes the container of every deployment that is
//!   no longer routed (deploy switch, delete); a creation that finishes
//!   after its slot went removes its own container;
//! - [`Precreator::close`] (pool shutdown) removes them all and waits for
//!   creations in flight; whatever a crash leaves behind is removed by the
//!   pool's adoption at the next start (a `created` or `initialized`
//!   container is never adopted).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::podman::ContainerSpec;
use containerpub_wire::api::Route;

use crate::bridge::Bridge;
use crate::podman::Podman;
use crate::runtime::short;
use crate::spec;

/// The pre-created containers of one pool (see the module header).
#[derive(Debug)]
pub(crate) struct Precreator {
    podman: Podman,
    network: String,
    /// Containers initialized ahead at most (the rest are only created).
    init_cap: usize,
    state: Mutex<State>,
    /// Creations and removals in flight (`close` waits for them).
    in_flight: tokio::sync::watch::Sender<usize>,
    /// Counts finished creations (a start waits for one in flight).
    created: tokio::sync::watch::Sender<u64>,
    /// The runtime's starts: a creation ahead waits for a pause in them
    /// (see [`Precreator::yield_to_starts`]).
    starts: tokio::sync::watch::Sender<Starts>,
    /// Starts waiting for a creation of this pool (then none yields).
    waiting: std::sync::atomic::AtomicUsize,
    /// The network's bridge: an initialization may create it (`bridge`).
    bridge: Option<Arc<Bridge>>,
}

/// The starts in progress, and when the last one ended.
#[derive(Debug, Default, Clone, Copy)]
struct Starts {
    running: usize,
    last_end: Option<Instant>,
}

/// A start in progress ([`Precreator::start_begins`]); its end when
/// dropped.
pub(crate) struct StartInProgress(Arc<Precreator>);

impl Drop for StartInProgress {
    fn drop(&mut self) {
        self.0.starts.send_modify(|s| {
            s.running = s.running.saturating_sub(1);
            s.last_end = Some(Instant::now());
        });
    }
}

#[derive(Debug, Default)]
struct State {
    /// Set by `close`: nothing is created any more.
    closed: bool,
    /// Per function name.
    slots: HashMap<String, Slot>,
    /// Tells creations apart (see `Slot::creating`).
    next_token: u64,
}

#[derive(Debug)]
struct Slot {
    /// The spec of this slot's containers without their name.
    key: ContainerSpec,
    route: Route,
    node: String,
    /// A created (maybe initialized), never started container of exactly
    /// `key`.
    ready: Option<Ahead>,
    /// The creation in flight for this slot, if any, and whether it also
    /// initializes.
    creating: Option<(u64, bool)>,
    /// When a start last asked this slot for its container (which
    /// initialized containers give way first).
    last_taken: Option<Instant>,
}

/// A container ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ahead {
    pub(crate) id: String,
    /// `podman init` done: the start only runs the process.
    pub(crate) initialized: bool,
    /// Its address on the function network, read after the `init` (the
    /// network is set up then): a start needs no inspect. (Its cgroup is
    /// not known before the start: the freezer reads it when it needs it.)
    pub(crate) address: Option<std::net::IpAddr>,
}

/// A container spec without its (unique) name: what must be equal for a
/// pre-created container to stand in for a fresh one.
pub(crate) fn spec_key(spec: &ContainerSpec) -> ContainerSpec {
    ContainerSpec {
        name: String::new(),
        ..spec.clone()
    }
}

impl Precreator {
    pub(crate) fn new(
        podman: Podman,
        network: String,
        init_cap: usize,
        bridge: Option<Arc<Bridge>>,
    ) -> Arc<Self> {
        let me = Arc::new(Self {
            podman,
            network,
            init_cap,
            state: Mutex::new(State::default()),
            in_flight: tokio::sync::watch::Sender::new(0),
            created: tokio::sync::watch::Sender::new(0),
            starts: tokio::sync::watch::Sender::new(Starts::default()),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            bridge,
        });
        tokio::spawn(keep_reachable(Arc::downgrade(&me)));
        me
    }

    /// Where the containers initialized ahead answer (refuse) connects.
    fn initialized_addresses(&self) -> Vec<std::net::SocketAddr> {
        self.lock()
            .slots
            .values()
            .filter_map(|slot| {
                let ahead = slot.ready.as_ref().filter(|a| a.initialized)?;
                Some(std::net::SocketAddr::new(
                    ahead.address?,
                    slot.route.config.port,
                ))
            })
            .collect()
    }

    /// Marks a start of the runtime in progress until the value is dropped.
    pub(crate) fn start_begins(self: &Arc<Self>) -> StartInProgress {
        self.starts.send_modify(|s| s.running += 1);
        StartInProgress(Arc::clone(self))
    }

    /// Waits until no start has run for [`START_QUIET`], at most
    /// [`MAX_YIELD`]: Podman serves a burst of cold starts first, and the
    /// creations ahead (a `create` and an `init` take several times a
    /// start, and compete with it for Podman and the cores) follow it.
    /// Not while a start waits for one of this pool's creations, nor once
    /// closed.
    async fn yield_to_starts(&self) {
        use std::sync::atomic::Ordering;
        let until = tokio::time::Instant::now() + MAX_YIELD;
        let mut starts = self.starts.subscribe();
        loop {
            let Starts { running, last_end } = *starts.borrow_and_update();
            if self.waiting.load(Ordering::Relaxed) > 0 || self.lock().closed {
                return;
            }
            let quiet_at = match (running, last_end) {
                (0, None) => return,
                (0, Some(end)) => Some(tokio::time::Instant::from_std(end + START_QUIET)),
                _ => None,
            };
            let now = tokio::time::Instant::now();
            if quiet_at.is_some_and(|at| at <= now) || now >= until {
                return;
            }
            let wake = quiet_at.map_or(until, |at| at.min(until));
            // A change (a start begins or ends, or `close`) looks again.
            let _ = tokio::time::timeout_at(wake, starts.changed()).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("precreate lock")
    }

    /// Keeps one container ahead for each of `routes` and drops those of
    /// every deployment that is no longer routed. Must run inside a tokio
    /// runtime (creations and removals are its tasks).
    pub(crate) fn sync(self: &Arc<Self>, routes: &[Route], node: &str) {
        let mut stale = Vec::new();
        let mut create = Vec::new();
        {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            let mut wanted: HashMap<&str, (&Route, ContainerSpec)> =
                HashMap::with_capacity(routes.len());
            for route in routes {
                let key = spec_key(&spec::container_spec(route, node, &self.network));
                wanted.insert(route.function.as_str(), (route, key));
            }
            // A redeployed function keeps its place in the order of cold
            // starts.
            let mut taken = HashMap::new();
            state.slots.retain(|function, slot| {
                let keep = wanted
                    .get(function.as_str())
                    .is_some_and(|(_, key)| *key == slot.key);
                if !keep {
                    stale.extend(slot.ready.take().map(|a| a.id));
                    taken.insert(function.clone(), slot.last_taken);
                }
                keep
            });
            for (function, (route, key)) in wanted {
                let slot = state
                    .slots
                    .entry(function.to_owned())
                    .or_insert_with(|| Slot {
                        key,
                        route: route.clone(),
                        node: node.to_owned(),
                        ready: None,
                        creating: None,
                        last_taken: taken.get(function).copied().flatten(),
                    });
                if slot.ready.is_none() && slot.creating.is_none() {
                    create.push(function.to_owned());
                }
            }
            // Most recently cold-started first: they get the initialized
            // containers when there are not enough for all.
            create.sort_by_key(|f| std::cmp::Reverse(state.slots[f].last_taken));
            for function in create {
                let init = self.may_initialize(&mut state, &function);
                self.spawn_create(&mut state, &function, init);
            }
        }
        for id in stale {
            self.spawn_remove(id);
        }
    }

    /// [`Precreator::take`], after waiting (at most [`WAIT_IN_FLIGHT`]) for
    /// the creation in flight of `function`'s container when none is ready
    /// yet: a call right after a deploy or a cold start then gets the rest
    /// of that creation, not a whole new one.
    pub(crate) async fn take_waiting(
        self: &Arc<Self>,
        function: &str,
        key: &ContainerSpec,
    ) -> Option<Ahead> {
        let pending = |me: &Self| {
            let state = me.lock();
            !state.closed
                && state
                    .slots
                    .get(function)
                    .is_some_and(|s| s.key == *key && s.ready.is_none() && s.creating.is_some())
        };
        // Subscribed before looking: a creation that ends in between is seen.
        let mut done = self.created.subscribe();
        if pending(self) {
            /// Counts a waiting start until dropped (also when the start
            /// is cancelled mid-wait).
            struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
            impl Drop for Waiting<'_> {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            self.waiting
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _waiting = Waiting(&self.waiting);
            // The creation may be yielding to other starts: not to this one.
            self.starts.send_modify(|_| {});
            let _ = tokio::time::timeout(WAIT_IN_FLIGHT, async {
                while done.changed().await.is_ok() && pending(self) {}
            })
            .await;
        }
        self.take(function, key)
    }

    /// Takes the container ahead for `function` when one of exactly `key`
    /// is there, and starts creating its successor (also when none was
    /// there: the last creation may have failed).
    pub(crate) fn take(self: &Arc<Self>, function: &str, key: &ContainerSpec) -> Option<Ahead> {
        let mut state = self.lock();
        if state.closed {
            return None;
        }
        let slot = state.slots.get_mut(function)?;
        if slot.key != *key {
            return None;
        }
        slot.last_taken = Some(Instant::now());
        let ahead = slot.ready.take();
        // A successor, or another try after a failed creation.
        if slot.creating.is_none() {
            let init = self.may_initialize(&mut state, function);
            self.spawn_create(&mut state, function, init);
        }
        ahead
    }

    /// Whether `function`'s next container may be initialized: yes while
    /// fewer than `init_cap` are (or are being) initialized; else only when
    /// another function's initialized container has waited for a start
    /// longer (its last cold start older, or none): that one is removed and
    /// a merely created container made in its place.
    fn may_initialize(self: &Arc<Self>, state: &mut State, function: &str) -> bool {
        if self.init_cap == 0 {
            return false;
        }
        let in_use = state
            .slots
            .values()
            .filter(|s| {
                s.ready.as_ref().is_some_and(|a| a.initialized)
                    || s.creating.is_some_and(|(_, init)| init)
            })
            .count();
        if in_use < self.init_cap {
            return true;
        }
        let Some(mine) = state.slots.get(function).map(|s| s.last_taken) else {
            return false;
        };
        let victim = state
            .slots
            .iter()
            .filter(|(f, s)| {
                f.as_str() != function
                    && s.creating.is_none()
                    && s.ready.as_ref().is_some_and(|a| a.initialized)
                    && s.last_taken < mine
            })
            .min_by_key(|(_, s)| s.last_taken)
            .map(|(f, _)| f.clone());
        let Some(victim) = victim else {
            return false;
        };
        let Some(ahead) = state.slots.get_mut(&victim).and_then(|s| s.ready.take()) else {
            return false;
        };
        tracing::debug!(function = %victim, container = short(&ahead.id), "initialized container ahead gives way to a function started more recently");
        self.spawn_remove(ahead.id);
        self.spawn_create(state, &victim, false);
        true
    }

    /// Stops creating and removes every container ahead, waiting for the
    /// creations in flight (each removes what it made).
    pub(crate) async fn close(self: &Arc<Self>) {
        let ready: Vec<String> = {
            let mut state = self.lock();
            state.closed = true;
            // Creations yielding to starts stop waiting.
            self.starts.send_modify(|_| {});
            state
                .slots
                .drain()
                .filter_map(|(_, mut slot)| slot.ready.take().map(|a| a.id))
                .collect()
        };
        for id in ready {
            self.spawn_remove(id);
        }
        let mut in_flight = self.in_flight.subscribe();
        // The sender lives in `self`: this ends.
        let _ = in_flight.wait_for(|n| *n == 0).await;
    }

    /// Ids of the containers ahead right now (tests).
    pub(crate) fn ready_ids(&self) -> Vec<String> {
        self.lock()
            .slots
            .values()
            .filter_map(|s| s.ready.as_ref().map(|a| a.id.clone()))
            .collect()
    }

    /// Starts a creation for `function`'s slot (which must exist), with
    /// `podman init` after it when `init`.
    fn spawn_create(self: &Arc<Self>, state: &mut State, function: &str, init: bool) {
        let token = state.next_token;
        state.next_token += 1;
        let Some(slot) = state.slots.get_mut(function) else {
            return;
        };
        slot.creating = Some((token, init));
        let (route, node) = (slot.route.clone(), slot.node.clone());
        let me = Arc::clone(self);
        self.track(async move {
            let spec = spec::container_spec(&route, &node, &me.network);
            me.yield_to_starts().await;
            if me.lock().closed {
                return;
            }
            let created = me.create_ahead(&spec, init, route.config.port).await;
            let orphan = {
                let mut state = me.lock();
                let closed = state.closed;
                match state.slots.get_mut(&route.function) {
                    Some(slot) if slot.creating.is_some_and(|(t, _)| t == token) => {
                        slot.creating = None;
                        match created {
                            Ok((id, address)) if !closed && slot.ready.is_none() => {
                                tracing::debug!(function = %route.function, deployment = route.deployment_id, container = short(&id), initialized = init, "container created ahead");
                                slot.ready = Some(Ahead {
                                    id,
                                    initialized: init,
                                    address,
                                });
                                None
                            }
                            Ok((id, _)) => Some(id),
                            Err(err) => {
                                // Tried again at the next route change or start.
                                tracing::warn!(function = %route.function, %err, "creating a container ahead failed");
                                None
                            }
                        }
                    }
                    // The slot went (or was replaced) meanwhile.
                    _ => created.ok().map(|(id, _)| id),
                }
            };
            me.created.send_modify(|n| *n += 1);
            if let Some(id) = orphan {
                me.remove_now(&id).await;
            }
        });
    }

    /// Creates a container of `spec` (and `podman init`s it when `init`,
    /// after yielding to starts again: its address is read then, so the
    /// start needs no inspect, and touched on `port`, see [`touch`]).
    async fn create_ahead(
        &self,
        spec: &ContainerSpec,
        init: bool,
        port: u16,
    ) -> Result<(String, Option<std::net::IpAddr>), crate::podman::PodmanError> {
        let id = self.podman.create_container(spec).await?;
        if !init {
            return Ok((id, None));
        }
        self.yield_to_starts().await;
        if let Err(err) = self.podman.init_container(&id).await {
            self.remove_now(&id).await;
            return Err(err);
        }
        if let Some(b) = &self.bridge {
            b.pin().await;
        }
        let address = self
            .podman
            .inspect_container(&id, &self.network)
            .await
            .ok()
            .and_then(|s| s.ip);
        if let Some(ip) = address {
            touch(std::net::SocketAddr::new(ip, port)).await;
        }
        Ok((id, address))
    }

    fn spawn_remove(self: &Arc<Self>, id: String) {
        let me = Arc::clone(self);
        self.track(async move { me.remove_now(&id).await });
    }

    /// Spawns `task`, counted in `in_flight` until it ends.
    fn track(self: &Arc<Self>, task: impl std::future::Future<Output = ()> + Send + 'static) {
        /// Counts the task out when it ends, also by a panic.
        struct Done(Arc<Precreator>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.in_flight.send_modify(|n| *n -= 1);
            }
        }
        self.in_flight.send_modify(|n| *n += 1);
        let done = Done(Arc::clone(self));
        tokio::spawn(async move {
            let _done = done;
            task.await;
        });
    }

    async fn remove_now(&self, id: &str) {
        match tokio::time::timeout(
            REMOVE_TIMEOUT,
            crate::runtime::remove_container(&self.podman, &self.network, id),
        )
        .await
        {
            Ok(Ok(())) => {
                tracing::debug!(container = short(id), "container ahead removed");
            }
            Ok(Err(err)) => {
                tracing::warn!(container = short(id), %err, "removing a container ahead")
            }
            Err(_) => tracing::warn!(
                container = short(id),
                "removing a container ahead timed out"
            ),
        }
    }
}

/// How often each container initialized ahead is touched (see
/// [`keep_reachable`]): within the kernel's 60 s before it collects a stale
/// neighbour entry and the bridge's 300 s before it forgets a port.
const KEEP_REACHABLE_EVERY: Duration = Duration::from_secs(20);

/// A connect to a container initialized ahead, which its kernel refuses
/// (nothing listens before the start): the host resolves and keeps its
/// address, the bridge learns its port from the answer. A first connect
/// at the start would otherwise wait for an ARP request flooded to every
/// port of the bridge, milliseconds with a thousand instances
/// (docs/BENCHMARKS.md, "Starts without runc's mount table").
async fn touch(addr: std::net::SocketAddr) {
    if let Err(reason) = crate::runtime::network_answers(addr).await {
        tracing::debug!(%reason, "a container initialized ahead did not answer a touch");
    }
}

/// Touches the containers initialized ahead every [`KEEP_REACHABLE_EVERY`]
/// until the pool is gone or closed.
async fn keep_reachable(pool: std::sync::Weak<Precreator>) {
    loop {
        tokio::time::sleep(KEEP_REACHABLE_EVERY).await;
        let addresses = match pool.upgrade() {
            Some(p) if !p.lock().closed => p.initialized_addresses(),
            _ => return,
        };
        for addr in addresses {
            touch(addr).await;
        }
    }
}

/// How long no start must have run before a creation ahead begins.
const START_QUIET: Duration = Duration::from_millis(100);
/// Longest a creation ahead yields to starts (a steady stream of them
/// would otherwise leave every function without its container ahead).
const MAX_YIELD: Duration = Duration::from_secs(2);

/// Bound on one removal (the pool's next start removes what is left).
const REMOVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest wait of a start for the creation in flight of its container
/// ahead (create and init take 0.1–0.3 s here; a slower Podman gets a
/// fresh container instead).
const WAIT_IN_FLIGHT: Duration = Duration::from_secs(2);
