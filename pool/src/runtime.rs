//! The seam between pool policy and the container engine: `ContainerRuntime`,
//! with the Podman implementation. Unit tests of policy use a fake.
//!
//! Over 600 lines: the trait (about 130 lines) and its one real
//! implementation, whose start, freeze, adoption and exit paths share the
//! cgroup book and the containers created ahead.

use std::net::SocketAddr;

use async_trait::async_trait;
use containerpub_wire::api::Route;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerpub_podman::freezer::{FREEZE_DEADLINE, Freezer};

use crate::bridge::Bridge;
use crate::podman::{Podman, PodmanError};
use crate::precreate::{self, Precreator};
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
    /// The image it was made from, as named then.
    pub image: String,
    /// Its `cpub.instances` label (none on containers of proxies before it).
    pub instances: Option<String>,
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
    /// The kernel killed it for memory (Podman's `State.OOMKilled`).
    pub oom_killed: bool,
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
        if self.oom_killed {
            f.write_str(", killed for memory (OOM)")?;
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
    /// Where the container's output is written (a `k8s-file` log), for
    /// log capture; `None` when the engine keeps no such file (the default).
    async fn log_path(&self, _id: &str) -> Result<Option<std::path::PathBuf>, PoolError> {
        Ok(None)
    }
    /// The routed deployments are now `routes` (`Pool::sync`): a runtime may
    /// get ready for their starts. Podman creates one container ahead for
    /// each and removes those of deployments no longer routed. Called inside
    /// a tokio runtime; must not block.
    fn prepare(&self, _routes: &[Route], _node: &str) {}
    /// The pool stops: undo what `prepare` made (Podman removes the
    /// containers created ahead).
    async fn shutdown(&self) {}
    /// How many instances the function network has addresses for, when
    /// the engine knows (the pool keeps its instance budget below it).
    fn address_capacity(&self) -> Option<u32> {
        None
    }
    /// Follows events of `node`'s containers until the stream ends or the
    /// receiver is dropped; the caller reconnects.
    async fn events(
        &self,
        node: &str,
        tx: &tokio::sync::mpsc::UnboundedSender<RuntimeEvent>,
    ) -> Result<(), PoolError>;
}

/// The kernel's `net.core.netdev_max_backlog` must exceed the function
/// bridge's ports: a broadcast (an ARP request for an instance's address)
/// is queued once per port on one CPU's backlog, newest port first, so
/// beyond the backlog the ports added first miss it and their instances
/// never answer a first connection (seen at 1,000 live with the default
/// 1,000; `scripts/setup-host.sh` checks it too).
fn backlog_needed(ports: u32) -> u32 {
    ports.saturating_mul(2)
}

fn warn_if_backlog_short(ports: u32) {
    let path = "/proc/sys/net/core/netdev_max_backlog";
    let Some(have) = std::fs::read_to_string(path)
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
    else {
        return;
    };
    let need = backlog_needed(ports);
    if have < need {
        tracing::warn!(
            netdev_max_backlog = have,
            needed = need,
            "with more live instances than net.core.netdev_max_backlog, those started first stop \
             answering new connections (ARP requests are dropped): sysctl -w net.core.netdev_max_backlog={need}"
        );
    }
}

/// Longest a started container's network may take to answer a connect
/// (an accept, or a refusal while the process is not listening yet: a
/// bridge answers either within a millisecond; the margin is for a host
/// under load, where a wrong verdict costs a fresh start).
const NETWORK_CHECK: Duration = Duration::from_secs(2);

/// Whether `addr` answers a TCP connect, by an accept or a refusal, within
/// [`NETWORK_CHECK`]. A container initialized ahead and started later must
/// (`density.sh` at 1,000 live saw some whose address answered nothing, not
/// even ARP, with a receive backlog shorter than the bridge's ports: see
/// [`backlog_needed`]; without this check their start waited out the start
/// timeout).
pub(crate) async fn network_answers(addr: SocketAddr) -> Result<(), String> {
    match tokio::time::timeout(NETWORK_CHECK, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
        Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
        Err(_) => Err(format!(
            "connect {addr}: no answer within {} ms",
            NETWORK_CHECK.as_millis()
        )),
    }
}

/// The real runtime: Podman through its REST API.
#[derive(Debug, Clone)]
pub struct PodmanRuntime {
    podman: Podman,
    network: String,
    /// Containers created ahead of need; `None` when turned off.
    precreate: Option<Arc<Precreator>>,
    /// Addresses of the network's subnets.
    addresses: Option<u32>,
    /// Containers initialized ahead at most: each holds an address.
    initialized_ahead: u32,
    /// Pauses and resumes by the cgroup freezer; `None` (no freezer found,
    /// or turned off) uses Podman's `pause`/`unpause`.
    freezer: Option<Freezer>,
    /// What the freezer needs of each instance.
    frozen: Arc<Mutex<FreezeBook>>,
    /// The network's bridge, its address pinned after each start (see
    /// `bridge`); `None` for a network without one.
    bridge: Option<Arc<Bridge>>,
}

/// Per container: its cgroup (Podman's `State.CgroupPath`, read when it
/// started or was adopted), and the containers Podman itself paused (found
/// so at adoption, from a proxy that paused through Podman): those are
/// resumed through Podman.
#[derive(Debug, Default)]
struct FreezeBook {
    cgroups: HashMap<String, String>,
    podman_paused: HashSet<String>,
}

impl PodmanRuntime {
    /// Connects and makes sure the function network exists. Containers are
    /// created ahead of need once [`ContainerRuntime::prepare`] names the
    /// routed deployments (see `precreate`).
    pub async fn new(podman: Podman, network: &str) -> Result<Self, PoolError> {
        Self::on_network(podman, network, None).await
    }

    /// [`PodmanRuntime::new`] on network `network`, created on `subnet`
    /// when it does not exist yet (an existing one keeps its subnet: its
    /// size is read and reported by [`ContainerRuntime::address_capacity`]).
    pub async fn on_network(
        podman: Podman,
        network: &str,
        subnet: Option<&str>,
    ) -> Result<Self, PoolError> {
        podman.ensure_network_with(network, subnet).await?;
        let subnets = podman.network_subnets(network).await?;
        let addresses = subnets
            .iter()
            .filter_map(|s| crate::node::subnet_hosts(s).ok())
            .fold(None, |sum: Option<u32>, n| {
                Some(sum.unwrap_or(0).saturating_add(n))
            });
        tracing::info!(network, subnets = ?subnets, addresses = ?addresses, "function network");
        if let Some(ports) = addresses.map(|a| a.min(crate::node::BRIDGE_PORTS)) {
            warn_if_backlog_short(ports);
        }
        let freezer = match Freezer::host() {
            Some(f) => match f.check().await {
                Ok(()) => Some(f),
                Err(reason) => {
                    tracing::warn!(%reason, "the cgroup freezer does not work here; pausing through Podman");
                    None
                }
            },
            None => None,
        };
        tracing::info!(freezer = ?freezer.as_ref().map(Freezer::version), "pause and resume");
        let bridge = podman
            .network_bridge(network)
            .await?
            .and_then(|name| Bridge::new(&name))
            .map(Arc::new);
        if let Some(b) = &bridge {
            // Instances adopted from an earlier proxy keep theirs.
            b.pin().await;
        }
        Ok(Self {
            precreate: Some(Precreator::new(
                podman.clone(),
                network.to_owned(),
                crate::node::DEFAULT_INITIALIZED_AHEAD as usize,
                bridge.clone(),
            )),
            podman,
            network: network.to_owned(),
            addresses,
            initialized_ahead: crate::node::DEFAULT_INITIALIZED_AHEAD,
            freezer,
            frozen: Arc::default(),
            bridge,
        })
    }

    /// The same runtime pausing through Podman's `pause`/`unpause` instead
    /// of the cgroup freezer (benchmarks compare the two).
    #[must_use]
    pub fn with_podman_pause(mut self) -> Self {
        self.freezer = None;
        self
    }

    /// Keeps `id`'s cgroup for the freezer: only a path whose last
    /// component names this container (`libpod-<id>`, `libpod-<id>.scope`
    /// with the systemd manager), never another cgroup Podman might report
    /// (a stopped container's empty path, a reused pid's).
    fn note_cgroup(&self, id: &str, raw: &serde_json::Value) {
        let Some(path) = raw.pointer("/State/CgroupPath").and_then(|v| v.as_str()) else {
            return;
        };
        let last = path.rsplit('/').next().unwrap_or_default();
        let own = !id.is_empty()
            && (last == format!("libpod-{id}") || last == format!("libpod-{id}.scope"));
        if own {
            self.book().cgroups.insert(id.to_owned(), path.to_owned());
        } else if !path.is_empty() {
            tracing::warn!(
                container = short(id),
                cgroup = path,
                "cgroup path does not name the container; not used"
            );
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, FreezeBook> {
        self.frozen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cgroup of `id`, read from Podman when not known yet.
    async fn cgroup_of(&self, id: &str) -> Result<String, PoolError> {
        if let Some(path) = self.book().cgroups.get(id) {
            return Ok(path.clone());
        }
        let state = self.podman.inspect_container(id, &self.network).await?;
        self.note_cgroup(id, &state.raw);
        let path = self.book().cgroups.get(id).cloned();
        path.ok_or_else(|| {
            containerpub_podman::FreezeError::NoCgroup {
                id: short(id).to_owned(),
                status: state.status,
            }
            .into()
        })
    }

    /// The same runtime initializing at most `n` containers ahead (0: they
    /// are only created; see `precreate`). Call before
    /// [`ContainerRuntime::prepare`].
    #[must_use]
    pub fn with_initialized_ahead(mut self, n: u32) -> Self {
        if self.precreate.is_some() {
            self.precreate = Some(Precreator::new(
                self.podman.clone(),
                self.network.clone(),
                n as usize,
                self.bridge.clone(),
            ));
        }
        self.initialized_ahead = n;
        self
    }

    /// The same runtime without containers created ahead: every start
    /// creates its container (benchmarks compare the two).
    #[must_use]
    pub fn without_precreation(mut self) -> Self {
        self.precreate = None;
        self.initialized_ahead = 0;
        self
    }

    pub fn podman(&self) -> &Podman {
        &self.podman
    }

    /// Ids of the containers created ahead and not taken yet.
    pub fn precreated(&self) -> Vec<String> {
        self.precreate
            .as_ref()
            .map(|p| p.ready_ids())
            .unwrap_or_default()
    }

    /// Reads the address of a started container; an exit before that is a
    /// crash with its exit code and output.
    async fn address(&self, route: &Route, id: &str) -> Result<Started, PoolError> {
        let state = self.podman.inspect_container(id, &self.network).await?;
        self.note_cgroup(id, &state.raw);
        if matches!(state.status.as_str(), "exited" | "stopped" | "dead")
            && let Some(exit) = self.exit_of(id).await?
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
                short(id),
                self.network,
                state.status
            ),
        })?;
        Ok(Started {
            id: id.to_owned(),
            addr: SocketAddr::new(ip, route.config.port),
        })
    }

    /// Never leaks a container that failed half-way.
    async fn remove_failed(&self, id: &str) {
        self.book().cgroups.remove(id);
        if let Err(err) = remove_container(&self.podman, &self.network, id).await {
            tracing::warn!(container = short(id), %err, "removing a failed container");
        }
    }
}

#[async_trait]
impl ContainerRuntime for PodmanRuntime {
    async fn start(&self, route: &Route, node: &str) -> Result<Started, PoolError> {
        let spec = spec::container_spec(route, node, &self.network);
        let t0 = Instant::now();
        // Until it returns, creations ahead (its own successor's too) wait.
        let _starting = self.precreate.as_ref().map(Precreator::start_begins);
        let mut ahead = match &self.precreate {
            Some(p) => {
                p.take_waiting(&route.function, &precreate::spec_key(&spec))
                    .await
            }
            None => None,
        };
        // `podman_done`: when Podman's `start` returned (then come the first
        // connect to a container initialized ahead, and the bridge's pin).
        let (id, created, ahead_kind, known, podman_done) = loop {
            if let Some(container) = ahead.take() {
                let created = t0.elapsed();
                let kind = if container.initialized {
                    "initialized"
                } else {
                    "created"
                };
                match self.podman.start_container(&container.id).await {
                    Ok(()) => {
                        let podman_done = t0.elapsed();
                        let Some(ip) = container.address else {
                            break (container.id, created, kind, None, podman_done);
                        };
                        match network_answers(SocketAddr::new(ip, route.config.port)).await {
                            Ok(()) => {
                                break (container.id, created, kind, Some(ip), podman_done);
                            }
                            Err(reason) => {
                                tracing::warn!(
                                    function = %route.function,
                                    container = short(&container.id),
                                    %reason,
                                    "container initialized ahead does not answer on its network; creating one"
                                );
                                self.remove_failed(&container.id).await;
                                continue;
                            }
                        }
                    }
                    // Removed under us (an image removal takes its
                    // containers), or broken while it waited (its init
                    // process killed): create one as usual.
                    Err(err) => {
                        tracing::warn!(
                            container = short(&container.id),
                            %err,
                            "container ahead cannot start; creating one"
                        );
                        if err.status() != Some(http::StatusCode::NOT_FOUND) {
                            self.remove_failed(&container.id).await;
                        }
                        continue;
                    }
                }
            }
            let id = self.podman.create_container(&spec).await?;
            let created = t0.elapsed();
            if let Err(err) = self.podman.start_container(&id).await {
                self.remove_failed(&id).await;
                return Err(err.into());
            }
            break (id, created, "none", None, t0.elapsed());
        };
        if let Some(b) = &self.bridge {
            b.pin().await;
        }
        let running = t0.elapsed();
        let started = match known {
            // Read after its `init`: the address is the one it runs with.
            // (An exit right after the start is seen by the pool's wait for
            // readiness: its `died` event, or its polling.)
            Some(ip) => Ok(Started {
                id: id.clone(),
                addr: SocketAddr::new(ip, route.config.port),
            }),
            None => self.address(route, &id).await,
        };
        match &started {
            Ok(_) => {
                let us = |d: std::time::Duration| d.as_micros() as u64;
                tracing::info!(
                    function = %route.function,
                    container = short(&id),
                    ahead = ahead_kind,
                    create_us = us(created),
                    start_us = us(running - created),
                    podman_us = us(podman_done - created),
                    inspect_us = us(t0.elapsed() - running),
                    "container started"
                );
            }
            Err(_) => self.remove_failed(&id).await,
        }
        started
    }

    /// The network's addresses but those the containers initialized ahead
    /// may hold.
    fn address_capacity(&self) -> Option<u32> {
        self.addresses
            .map(|a| a.saturating_sub(self.initialized_ahead))
    }

    fn prepare(&self, routes: &[Route], node: &str) {
        if let Some(p) = &self.precreate {
            p.sync(routes, node);
        }
    }

    async fn shutdown(&self) {
        if let Some(p) = &self.precreate {
            p.close().await;
        }
    }

    async fn remove(&self, id: &str) -> Result<(), PoolError> {
        // A frozen process takes no SIGKILL on cgroup v1: thaw it first.
        // Not one Podman paused itself: Podman's forced removal unpauses
        // that through runc, which fails on a cgroup already thawed.
        let cgroup = {
            let mut book = self.book();
            let podman_paused = book.podman_paused.remove(id);
            let cgroup = book.cgroups.remove(id);
            cgroup.filter(|_| !podman_paused)
        };
        if let (Some(freezer), Some(cgroup)) = (&self.freezer, cgroup)
            && let Err(err) = freezer.thaw(&cgroup)
        {
            tracing::debug!(container = short(id), %err, "thaw before removal");
        }
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
                Ok(state) => {
                    self.note_cgroup(&c.id, &state.raw);
                    state.ip
                }
                Err(e) if e.status() == Some(http::StatusCode::NOT_FOUND) => continue,
                Err(e) => return Err(e.into()),
            };
            // Podman says `running` of a container frozen through the
            // freezer (by this pool before a restart): it is paused. So is
            // one left half-frozen (`FREEZING`: a proxy killed during a
            // freeze), which a probe would find answering connections but
            // never requests; the resume thaws it.
            let mut state = c.state;
            let cgroup = self.book().cgroups.get(&c.id).cloned();
            if state == "paused" {
                self.book().podman_paused.insert(c.id.clone());
            } else if state == "running"
                && let (Some(freezer), Some(cgroup)) = (&self.freezer, cgroup)
                && !freezer.is_thawed(&cgroup).unwrap_or(true)
            {
                state = "paused".to_owned();
            }
            owned.push(Owned {
                id: c.id,
                function: labels.get(labels::FUNCTION).cloned().unwrap_or_default(),
                deployment: labels.get(labels::DEPLOYMENT).cloned().unwrap_or_default(),
                image: c.image,
                instances: labels.get(labels::INSTANCES).cloned(),
                state,
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
        let oom_killed = state
            .raw
            .pointer("/State/OOMKilled")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        Ok(Some(Exit {
            code,
            output,
            oom_killed,
        }))
    }

    async fn log_path(&self, id: &str) -> Result<Option<std::path::PathBuf>, PoolError> {
        let state = self.podman.inspect_container(id, &self.network).await?;
        Ok(crate::logs::log_path_of(&state.raw))
    }

    async fn pause(&self, id: &str) -> Result<(), PoolError> {
        let Some(freezer) = &self.freezer else {
            return Ok(self.podman.pause_container(id).await?);
        };
        let cgroup = self.cgroup_of(id).await?;
        Ok(freezer.freeze(&cgroup, FREEZE_DEADLINE).await?)
    }

    async fn resume(&self, id: &str) -> Result<(), PoolError> {
        let podman_paused = self.book().podman_paused.remove(id);
        let Some(freezer) = self.freezer.as_ref().filter(|_| !podman_paused) else {
            return Ok(self.podman.unpause_container(id).await?);
        };
        let cgroup = self.cgroup_of(id).await?;
        Ok(freezer.thaw(&cgroup)?)
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
pub(crate) async fn remove_container(
    podman: &Podman,
    network: &str,
    id: &str,
) -> Result<(), PodmanError> {
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
