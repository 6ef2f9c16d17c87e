//! Deploy switching, off the call path: per function a [`FunctionSlot`]
//! holds the *active* set (the deployment that serves) and, during a
//! deploy, the *pending* set warming up. `Pool::sync` (route changes) and
//! `Pool::handle` resolve slots and start switches; a warmed-up pending set
//! is promoted by its warm-up task; a set no longer wanted is retired
//! (drained, then removed). Calls see a switch as a swap of `active`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use containerpub_wire::api::Route;
use tokio::time::Instant;

use crate::instance::InstanceState;
use crate::metrics::METRICS;
use crate::pool::Inner;
use crate::runtime::short;
use crate::set::InstanceSet;

/// How often a draining instance is checked for in-flight requests.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// One function's sets. Kept as long as the function is routed; handles
/// point here, so they outlive deploys.
pub(crate) struct FunctionSlot {
    pub(crate) name: String,
    /// The set that takes calls; `None` once the function was removed.
    /// Swapped (never locked) by deploy switching.
    pub(crate) active: ArcSwapOption<InstanceSet>,
    /// The set warming up during a deploy. Locked after `Inner::functions`
    /// when both are held.
    pub(crate) pending: Mutex<Option<Arc<InstanceSet>>>,
}

impl FunctionSlot {
    fn new(name: &str) -> Self {
        METRICS.init_function(name);
        Self {
            name: name.to_owned(),
            active: ArcSwapOption::empty(),
            pending: Mutex::new(None),
        }
    }

    pub(crate) fn pending(&self) -> std::sync::MutexGuard<'_, Option<Arc<InstanceSet>>> {
        self.pending.lock().expect("pending lock")
    }

    /// The active and the pending set.
    pub(crate) fn sets(&self) -> Vec<Arc<InstanceSet>> {
        let mut sets: Vec<_> = self.active.load_full().into_iter().collect();
        sets.extend(self.pending().clone());
        sets
    }
}

impl Inner {
    /// Applies a route table (see `Pool::sync`).
    pub(crate) fn sync_routes(self: &Arc<Self>, routes: &[Route]) {
        let wanted: HashMap<&str, &Route> =
            routes.iter().map(|r| (r.function.as_str(), r)).collect();
        let mut retired = Vec::new();
        {
            let mut functions = self.functions.lock().expect("functions lock");
            functions.retain(|name, slot| {
                if wanted.contains_key(name.as_str()) {
                    return true;
                }
                retired.extend(slot.active.swap(None));
                retired.extend(slot.pending().take());
                false
            });
        }
        for set in retired {
            self.retire(set);
        }
        for route in routes {
            self.resolve(route);
        }
    }

    /// The slot of `route`'s function, with `route`'s deployment active or
    /// warming up: creates the slot and its set, or starts a deploy's
    /// warm-up, as needed. Starts missing `min_instances`.
    pub(crate) fn resolve(self: &Arc<Self>, route: &Route) -> Arc<FunctionSlot> {
        let mut functions = self.functions.lock().expect("functions lock");
        let slot = Arc::clone(
            functions
                .entry(route.function.clone())
                .or_insert_with(|| Arc::new(FunctionSlot::new(&route.function))),
        );
        let Some(active) = slot.active.load_full() else {
            let set = Arc::new(InstanceSet::new(route.clone(), Arc::downgrade(self)));
            slot.active.store(Some(Arc::clone(&set)));
            drop(functions);
            self.ensure_min(&set);
            return slot;
        };
        // The image too: after a database was reinstalled under a running
        // proxy, its deployment 1 is not the old database's.
        if active.serving() == route.deployment_id && active.route.image == route.image {
            drop(functions);
            // A secret set or unset: the instances started from now on get
            // it (the running ones keep theirs until a deploy).
            active.follow_secrets(route);
            self.ensure_min(&active);
            return slot;
        }
        if route.image == active.route.image
            && containerpub_wire::api::same_instances(&active.route.config, &route.config)
        {
            // Only `[scaling]` changed (`cpub scale`): the running
            // instances serve the new deployment as they are.
            active.rescale(route);
            let replaced = slot.pending().take();
            drop(functions);
            if let Some(p) = replaced {
                self.retire(p);
            }
            tracing::info!(function = %route.function, deployment = route.deployment_id, "scaling changed in place");
            active.wake();
            self.ensure_min(&active);
            return slot;
        }
        let mut pending = slot.pending();
        if let Some(p) = pending.as_ref().filter(|p| {
            p.route.deployment_id == route.deployment_id && p.route.image == route.image
        }) {
            // A secret set while the deploy warms up.
            p.follow_secrets(route);
            return Arc::clone(&slot);
        }
        // A new deployment: warm it up, keep serving the old one meanwhile.
        let fresh = Arc::new(InstanceSet::new(route.clone(), Arc::downgrade(self)));
        let old_ready = active.count(InstanceState::Ready) as u32;
        let target = route
            .config
            .scaling
            .min_instances
            .max(old_ready.min(1))
            .min(route.config.scaling.max_instances);
        let replaced = pending.take();
        if target == 0 {
            slot.active.store(Some(Arc::clone(&fresh)));
            drop(pending);
            drop(functions);
            self.retire(active);
            if let Some(p) = replaced {
                self.retire(p);
            }
            return slot;
        }
        *pending = Some(Arc::clone(&fresh));
        drop(pending);
        drop(functions);
        if let Some(p) = replaced {
            self.retire(p);
        }
        tracing::info!(function = %route.function, deployment = route.deployment_id, instances = target, "warming up a new deployment");
        let me = Arc::clone(self);
        let (warming, owner) = (fresh, Arc::clone(&slot));
        tokio::spawn(async move {
            let starts: Vec<_> = (0..target).map(|_| me.start_into(&warming)).collect();
            for s in starts {
                let _ = s.await;
            }
            me.promote(&owner, &warming);
        });
        slot
    }

    /// The active set of `route`'s deployment, created without starting
    /// anything (adoption fills it; `sync` then starts what is missing).
    pub(crate) fn active_for_adoption(self: &Arc<Self>, route: &Route) -> Arc<InstanceSet> {
        let mut functions = self.functions.lock().expect("functions lock");
        let slot = functions
            .entry(route.function.clone())
            .or_insert_with(|| Arc::new(FunctionSlot::new(&route.function)));
        match slot.active.load_full() {
            Some(active)
                if active.serving() == route.deployment_id && active.route.image == route.image =>
            {
                active
            }
            old => {
                let set = Arc::new(InstanceSet::new(route.clone(), Arc::downgrade(self)));
                slot.active.store(Some(Arc::clone(&set)));
                drop(functions);
                if let Some(old) = old {
                    self.retire(old);
                }
                set
            }
        }
    }

    /// Makes a warmed-up pending set the active one; the old one drains.
    fn promote(self: &Arc<Self>, slot: &FunctionSlot, set: &Arc<InstanceSet>) {
        let old = {
            let mut pending = slot.pending();
            if !pending.as_ref().is_some_and(|p| Arc::ptr_eq(p, set)) {
                // Replaced by a newer deploy, or the function was removed.
                return;
            }
            *pending = None;
            slot.active.swap(Some(Arc::clone(set)))
        };
        tracing::info!(function = %set.route.function, deployment = set.route.deployment_id, "new deployment serving");
        if let Some(old) = old {
            // Calls queued on the old set move to the new one.
            self.retire(old);
        }
        self.ensure_min(set);
    }

    /// Drains a set in the background: no new calls; each instance is
    /// removed once its in-flight calls finish or the function's timeout
    /// passes. Calls queued on it move to the set that replaced it.
    pub(crate) fn retire(&self, set: Arc<InstanceSet>) {
        set.retired.store(true, Ordering::Release);
        let instances: Vec<_> = set.unlist_all();
        for i in &instances {
            i.set_state(InstanceState::Gone);
            self.idle.forget(&i.id);
        }
        set.publish();
        set.wake();
        let runtime = Arc::clone(&self.runtime);
        let grace = Duration::from_millis(set.route.config.resources.timeout_ms);
        tokio::spawn(async move {
            let until = Instant::now() + grace;
            for i in instances {
                while i.in_flight() > 0 && Instant::now() < until {
                    tokio::time::sleep(DRAIN_POLL).await;
                }
                match runtime.remove(&i.id).await {
                    Ok(()) => {
                        tracing::info!(function = %set.route.function, deployment = set.route.deployment_id, container = short(&i.id), "instance removed")
                    }
                    Err(err) => {
                        tracing::warn!(container = short(&i.id), %err, "removing a retired instance")
                    }
                }
            }
        });
    }
}
