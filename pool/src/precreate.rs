//! Containers created ahead of need: one created-but-not-started container
//! per routed deployment, so a cold start pays Podman's `start` and not its
//! `create` (docs/BENCHMARKS.md, "Cold start from a container created
//! ahead").
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
//!   pool's adoption at the next start (a `created` container is never
//!   adopted).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::podman::ContainerSpec;
use containerpub_wire::api::Route;

use crate::podman::Podman;
use crate::runtime::short;
use crate::spec;

/// The pre-created containers of one pool (see the module header).
#[derive(Debug)]
pub(crate) struct Precreator {
    podman: Podman,
    network: String,
    state: Mutex<State>,
    /// Creations and removals in flight (`close` waits for them).
    in_flight: tokio::sync::watch::Sender<usize>,
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
    /// A created, never started container of exactly `key`.
    ready: Option<String>,
    /// The creation in flight for this slot, if any.
    creating: Option<u64>,
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
    pub(crate) fn new(podman: Podman, network: String) -> Arc<Self> {
        Arc::new(Self {
            podman,
            network,
            state: Mutex::new(State::default()),
            in_flight: tokio::sync::watch::Sender::new(0),
        })
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
            state.slots.retain(|function, slot| {
                let keep = wanted
                    .get(function.as_str())
                    .is_some_and(|(_, key)| *key == slot.key);
                if !keep {
                    stale.extend(slot.ready.take());
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
                    });
                if slot.ready.is_none() && slot.creating.is_none() {
                    create.push(function.to_owned());
                }
            }
            for function in create {
                self.spawn_create(&mut state, &function);
            }
        }
        for id in stale {
            self.spawn_remove(id);
        }
    }

    /// Takes the container ahead for `function` when one of exactly `key`
    /// is there, and starts creating its successor (also when none was
    /// there: the last creation may have failed).
    pub(crate) fn take(self: &Arc<Self>, function: &str, key: &ContainerSpec) -> Option<String> {
        let mut state = self.lock();
        if state.closed {
            return None;
        }
        let slot = state.slots.get_mut(function)?;
        if slot.key != *key {
            return None;
        }
        let id = slot.ready.take();
        // A successor, or another try after a failed creation.
        if slot.creating.is_none() {
            self.spawn_create(&mut state, function);
        }
        id
    }

    /// Stops creating and removes every container ahead, waiting for the
    /// creations in flight (each removes what it made).
    pub(crate) async fn close(self: &Arc<Self>) {
        let ready: Vec<String> = {
            let mut state = self.lock();
            state.closed = true;
            state
                .slots
                .drain()
                .filter_map(|(_, mut slot)| slot.ready.take())
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
            .filter_map(|s| s.ready.clone())
            .collect()
    }

    /// Starts a creation for `function`'s slot (which must exist).
    fn spawn_create(self: &Arc<Self>, state: &mut State, function: &str) {
        let token = state.next_token;
        state.next_token += 1;
        let Some(slot) = state.slots.get_mut(function) else {
            return;
        };
        slot.creating = Some(token);
        let (route, node) = (slot.route.clone(), slot.node.clone());
        let me = Arc::clone(self);
        self.track(async move {
            let spec = spec::container_spec(&route, &node, &me.network);
            let created = me.podman.create_container(&spec).await;
            let orphan = {
                let mut state = me.lock();
                let closed = state.closed;
                match state.slots.get_mut(&route.function) {
                    Some(slot) if slot.creating == Some(token) => {
                        slot.creating = None;
                        match created {
                            Ok(id) if !closed && slot.ready.is_none() => {
                                tracing::debug!(function = %route.function, deployment = route.deployment_id, container = short(&id), "container created ahead");
                                slot.ready = Some(id);
                                None
                            }
                            Ok(id) => Some(id),
                            Err(err) => {
                                // Tried again at the next route change or start.
                                tracing::warn!(function = %route.function, %err, "creating a container ahead failed");
                                None
                            }
                        }
                    }
                    // The slot went (or was replaced) meanwhile.
                    _ => created.ok(),
                }
            };
            if let Some(id) = orphan {
                me.remove_now(&id).await;
            }
        });
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

/// Bound on one removal (the pool's next start removes what is left).
const REMOVE_TIMEOUT: Duration = Duration::from_secs(20);
