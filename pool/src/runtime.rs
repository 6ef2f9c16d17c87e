//! The seam between pool policy and the container engine: `ContainerRuntime`,
//! with the Podman implementation. Unit tests of policy use a fake.

use std::net::SocketAddr;

use async_trait::async_trait;
use containerpub_wire::api::Route;

use crate::podman::{Podman, PodmanError};
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
    /// Podman's state: `running`, `paused`, `exited`, …
    pub state: String,
    /// Address on the function network, when attached.
    pub ip: Option<std::net::IpAddr>,
}

/// How a container ended: its exit code and the last of its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The process's exit code (128 + the signal when killed); `None` when
    /// the engine did not say.
    pub code: Option<i32>,
    /// The last lines of its stdout and stderr, at most
    /// [`OUTPUT_TAIL_BYTES`], lossy UTF-8.
    pub output: String,
}

/// Lines of output kept from a container that exited.
pub const OUTPUT_TAIL_LINES: u32 = 20;
/// Bytes of output kept from a container that exited.
pub const OUTPUT_TAIL_BYTES: usize = 2048;

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "exited with code {code}")?,
            None => f.write_str("exited")?,
        }
        let output = self.output.trim_end();
        if output.is_empty() {
            f.write_str(" (no output)")
        } else {
            write!(f, "; its last output:\n{output}")
        }
    }
}

/// Something that happened to a container outside the pool's own calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// The container's process ended (exit, kill, OOM).
    Died { id: String },
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
    /// Freezes an instance (cgroup freezer); memory is kept.
    async fn pause(&self, id: &str) -> Result<(), PoolError>;
    /// Thaws a paused instance.
    async fn resume(&self, id: &str) -> Result<(), PoolError>;
    /// How a container ended, or `None` while it has not (created, running,
    /// paused) or the engine cannot tell (the default). The container must
    /// still exist.
    async fn exit_of(&self, _id: &str) -> Result<Option<Exit>, PoolError> {
        Ok(None)
    }
    /// Follows events of `node`'s containers until the stream ends or the
    /// receiver is dropped; the caller reconnects.
    async fn events(
        &self,
        node: &str,
        tx: &tokio::sync::mpsc::UnboundedSender<RuntimeEvent>,
    ) -> Result<(), PoolError>;
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
            if matches!(state.status.as_str(), "exited" | "stopped" | "dead")
                && let Some(exit) = self.exit_of(&id).await?
            {
                // Exited before its address could even be read.
                return Err(PoolError::Crashed {
                    function: route.function.clone(),
                    exit,
                    backoff: None,
                });
            }
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
            if let Err(err) = remove_container(&self.podman, &self.network, &id).await {
                tracing::warn!(container = short(&id), %err, "removing a failed container");
            }
        }
        started
    }

    async fn remove(&self, id: &str) -> Result<(), PoolError> {
        Ok(remove_container(&self.podman, &self.network, id).await?)
    }

    async fn list_owned(&self, node: &str) -> Result<Vec<Owned>, PoolError> {
        let rows = self
            .podman
            .list_containers(&[(labels::MANAGED, "true"), (labels::NODE, node)])
            .await?;
        let mut owned = Vec::with_capacity(rows.len());
        for c in rows {
            let labels = c.labels.unwrap_or_default();
            let ip = match self.podman.inspect_container(&c.id, &self.network).await {
                Ok(state) => state.ip,
                Err(e) if e.status() == Some(http::StatusCode::NOT_FOUND) => continue,
                Err(e) => return Err(e.into()),
            };
            owned.push(Owned {
                id: c.id,
                function: labels.get(labels::FUNCTION).cloned().unwrap_or_default(),
                deployment: labels.get(labels::DEPLOYMENT).cloned().unwrap_or_default(),
                state: c.state,
                ip,
            });
        }
        Ok(owned)
    }

    async fn exit_of(&self, id: &str) -> Result<Option<Exit>, PoolError> {
        let state = self.podman.inspect_container(id, &self.network).await?;
        if !matches!(state.status.as_str(), "exited" | "stopped" | "dead") {
            return Ok(None);
        }
        let code = state
            .raw
            .pointer("/State/ExitCode")
            .and_then(serde_json::Value::as_i64)
            .and_then(|c| i32::try_from(c).ok());
        let output = match self
            .podman
            .container_logs_tail(id, OUTPUT_TAIL_LINES, OUTPUT_TAIL_BYTES)
            .await
        {
            Ok(output) => output,
            Err(err) => format!("[its output could not be read: {err}]"),
        };
        Ok(Some(Exit { code, output }))
    }

    async fn pause(&self, id: &str) -> Result<(), PoolError> {
        Ok(self.podman.pause_container(id).await?)
    }

    async fn resume(&self, id: &str) -> Result<(), PoolError> {
        Ok(self.podman.unpause_container(id).await?)
    }

    async fn events(
        &self,
        node: &str,
        tx: &tokio::sync::mpsc::UnboundedSender<RuntimeEvent>,
    ) -> Result<(), PoolError> {
        let (raw_tx, mut raw_rx) = tokio::sync::mpsc::unbounded_channel();
        let filter = [(labels::MANAGED, "true"), (labels::NODE, node)];
        let follow = self.podman.container_events(&filter, &raw_tx);
        let forward = async {
            while let Some(event) = raw_rx.recv().await {
                // Podman 4.3 names the event `died` on a libpod request (what
                // the client sends) and `die` on a Docker-compatible one
                // (told apart by the request URI's text): accept both.
                let died = matches!(event.action.as_str(), "died" | "die");
                if died && tx.send(RuntimeEvent::Died { id: event.id }).is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            result = follow => result.map_err(PoolError::from),
            () = forward => Ok(()),
        }
    }
}

/// Removes a container and rides out Podman 4.3's removal race with user
/// namespaces: `DELETE` sometimes answers 500 "unlinkat …/userdata/shm:
/// device or resource busy" (podman#11594, fixed in 4.4) for a container it
/// has in fact removed. A failed removal counts only while the container is
/// still there after three tries.
async fn remove_container(podman: &Podman, network: &str, id: &str) -> Result<(), PodmanError> {
    let mut tries = 0;
    loop {
        let err = match podman.remove_container(id).await {
            Ok(()) => return Ok(()),
            Err(err) => err,
        };
        match podman.inspect_container(id, network).await {
            Err(e) if e.status() == Some(http::StatusCode::NOT_FOUND) => return Ok(()),
            _ if tries >= 2 => return Err(err),
            _ => {}
        }
        tries += 1;
        tracing::debug!(container = short(id), %err, "removal failed; trying again");
        tokio::time::sleep(std::time::Duration::from_millis(100 * tries)).await;
    }
}

/// First 12 characters of a container id, as Podman prints them.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
