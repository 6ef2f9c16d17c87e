//! Adoption at start-up: the running or paused containers this node owns
//! that may serve a route as they are (its function and image, and its
//! deployment or `cpub.instances` digest: [`serves`]) join the pool
//! (running ones must pass a readiness probe); every other container the
//! node owns is removed, after
//! the log lines the previous proxy had not shipped are read from its file
//! when logs are captured (`LogHub::open_before_removal`: opened before,
//! read to its end after).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use containerpub_wire::api::{Route, instances_digest};

use crate::instance::{Instance, InstanceState, StartKind};
use crate::pool::Inner;
use crate::runtime::{Owned, short};
use crate::{PoolError, health};

/// Readiness budget for an adopted container at start-up.
const ADOPT_PROBE: Duration = Duration::from_secs(2);

/// Whether `c` may serve `route` as it is: its function and image (deployment
/// ids start at 1 in every database, so after a reinstall a container of
/// the old database's `x` deployment 1 would otherwise serve the new
/// one's), and its `cpub.instances` label equal to the route's digest: a
/// container of an earlier deployment serves when only the counts changed
/// since (`cpub scale` keeps running instances, and so does adoption), one
/// of the same deployment does not when a secret changed since. A container
/// without the label (of a proxy from before it) serves its own deployment.
fn serves(route: &Route, c: &Owned) -> bool {
    route.function == c.function
        && route.image == c.image
        && match c.instances.as_deref() {
            // The digest decides: a secret set since the container started
            // leaves its deployment id as it was.
            Some(digest) => digest == instances_digest(route),
            None => route.deployment_id.to_string() == c.deployment,
        }
}

impl Inner {
    /// Adopts running or paused containers of known deployments; removes
    /// every other container this node owns.
    pub(crate) async fn adopt(self: &Arc<Self>, routes: &[Route]) -> Result<(), PoolError> {
        let owned = self.runtime.list_owned(&self.config.node).await?;
        for c in owned {
            let route = routes.iter().find(|r| serves(r, &c));
            match self.try_adopt(&c, route).await {
                Some(state) => {
                    tracing::info!(container = short(&c.id), function = %c.function, state = state.as_str(), "adopted a running instance");
                }
                None => {
                    tracing::info!(container = short(&c.id), function = %c.function, state = %c.state, "removing a container this node does not serve");
                    // Its output since the last shipped line goes with it
                    // otherwise (a crash's too): opened first, read after.
                    let unread = match self.logs.get() {
                        Some(hub) => {
                            let deployment_id = c.deployment.parse().unwrap_or(0);
                            hub.open_before_removal(
                                self.runtime.as_ref(),
                                &c.id,
                                &c.function,
                                deployment_id,
                            )
                            .await
                        }
                        None => None,
                    };
                    // One container Podman cannot remove must not keep the
                    // proxy from starting (each restart would fail alike).
                    if let Err(err) = self.runtime.remove(&c.id).await {
                        tracing::warn!(container = short(&c.id), %err, "cannot remove a container this node does not serve; left as it is");
                    }
                    if let Some(unread) = unread {
                        unread.finish().await;
                    }
                }
            }
        }
        Ok(())
    }

    async fn try_adopt(
        self: &Arc<Self>,
        c: &Owned,
        route: Option<&Route>,
    ) -> Option<InstanceState> {
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
        // Not `resolve`: that would start `min_instances` before the
        // adopted instance is counted.
        let set = self.active_for_adoption(route);
        let instance = Arc::new(Instance::new(
            c.id.clone(),
            addr,
            state,
            Duration::ZERO,
            StartKind::Warm,
        ));
        // It exists already: charged even above the budget.
        instance.hold(
            self.budget
                .force(u64::from(route.config.resources.memory_mb)),
        );
        set.list(Arc::clone(&instance));
        self.idle.track(&set, &instance);
        set.publish();
        Some(state)
    }
}
