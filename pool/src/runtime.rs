//! The seam between pool policy and the container engine: `ContainerRuntime`,
//! with the Podman implementation. Unit tests of policy use a fake.

use std::net::SocketAddr;

use async_trait::async_trait;
use containerpub_wire::api::Route;

use crate::podman::Podman;
use crate::{PoolError, labels, spec};

/// A started container as the pool sees it.
#[derive(Debug, Clone)]
pub struct Started {
    pub id: String,
    /// Where the function listens; re-read after every start.
    pub addr: SocketAddr,
}

/// A container this node owns, found at start-up.
#[derive(Debug, Clone)]
pub struct Owned {
    pub id: String,
    pub function: String,
    pub deployment: String,
}

/// What the pool needs from a container engine.
#[async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Creates and starts one instance of `route`'s deployment and returns its address.
    /// Readiness is the pool's business (see `health`).
    async fn start(&self, route: &Route, node: &str) -> Result<Started, PoolError>;
    /// Kills and removes an instance; a missing one is fine.
    async fn remove(&self, id: &str) -> Result<(), PoolError>;
    /// Lists every container labelled as owned by `node`.
    async fn list_owned(&self, node: &str) -> Result<Vec<Owned>, PoolError>;
}

/// The real runtime: Podman through its REST API.
#[derive(Debug, Clone)]
pub struct PodmanRuntime {
    podman: Podman,
    network: String,
}

impl PodmanRuntime {
    /// Connects and makes sure the function network exists.
    pub async fn new(podman: Podman, network: &str) -> Result<Self, PoolError> {
        podman.ensure_network(network).await?;
        Ok(Self {
            podman,
            network: network.to_owned(),
        })
    }

    pub fn podman(&self) -> &Podman {
        &self.podman
    }
}

#[async_trait]
impl ContainerRuntime for PodmanRuntime {
    async fn start(&self, route: &Route, node: &str) -> Result<Started, PoolError> {
        let spec = spec::container_spec(route, node, &self.network);
        let id = self.podman.create_container(&spec).await?;
        let started = async {
            self.podman.start_container(&id).await?;
            let state = self.podman.inspect_container(&id, &self.network).await?;
            let ip = state.ip.ok_or_else(|| PoolError::StartFailed {
                function: route.function.clone(),
                reason: format!(
                    "container {} has no address on network {} (status {})",
                    short(&id),
                    self.network,
                    state.status
                ),
            })?;
            Ok::<_, PoolError>(Started {
                id: id.clone(),
                addr: SocketAddr::new(ip, route.config.port),
            })
        }
        .await;
        if started.is_err() {
            // Never leak a container that failed half-way.
            if let Err(err) = self.podman.remove_container(&id).await {
                tracing::warn!(container = short(&id), %err, "removing a failed container");
            }
        }
        started
    }

    async fn remove(&self, id: &str) -> Result<(), PoolError> {
        Ok(self.podman.remove_container(id).await?)
    }

    async fn list_owned(&self, node: &str) -> Result<Vec<Owned>, PoolError> {
        let rows = self
            .podman
            .list_containers(&[(labels::MANAGED, "true"), (labels::NODE, node)])
            .await?;
        Ok(rows
            .into_iter()
            .map(|c| {
                let labels = c.labels.unwrap_or_default();
                Owned {
                    id: c.id,
                    function: labels.get(labels::FUNCTION).cloned().unwrap_or_default(),
                    deployment: labels.get(labels::DEPLOYMENT).cloned().unwrap_or_default(),
                }
            })
            .collect())
    }
}

/// First 12 characters of a container id, as Podman prints them.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
