//! The instance pool: owns function instances' life cycles on Podman and
//! leases instances to the proxy.
//!
//! Podman is reached through `containerpub-podman` (the REST client, also
//! used by the control plane to build and remove images); the proxy reaches
//! it only through the pool, hence the re-exports.
//!
//! `pool` and its policy modules own instance life cycles and lease
//! instances to the proxy (ARCHITECTURE.md lists the modules and the
//! invariants they keep); `testing` (feature `test-util`) is a fake
//! container runtime for the tests of this crate and its users.

/// The Podman REST client (`containerpub-podman`), re-exported for the
/// pool's users.
pub use containerpub_podman as podman;
pub use containerpub_podman::{DEFAULT_SOCKET, Podman, PodmanError};

/// Podman network every function instance joins.
pub const NETWORK: &str = "cpub";

/// Container labels (DESIGN.md, "Restart safety").
pub mod labels {
    /// `"true"` on every container the pool creates.
    pub const MANAGED: &str = "cpub.managed";
    /// Node (proxy) that owns the container.
    pub const NODE: &str = "cpub.node";
    /// Function name.
    pub const FUNCTION: &str = "cpub.function";
    /// Deployment id.
    pub const DEPLOYMENT: &str = "cpub.deployment";
    /// `containerpub_wire::api::instances_digest` of the deployment's
    /// manifest: a later deployment of the same image and digest (`cpub
    /// scale`) adopts the container at a restart.
    pub const INSTANCES: &str = "cpub.instances";
}

mod adopt;
mod bridge;
pub mod budget;
mod deploy;
mod evict;
pub mod health;
mod idle;
mod instance;
mod keepwarm;
mod lease;
mod lifecycle;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod pool;
mod precreate;
pub mod runtime;
mod set;
pub mod spec;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod usage;

pub use instance::{InstanceInfo, InstanceState, StartKind};
pub use lease::{FunctionHandle, Lease};
pub use lifecycle::{CrashReport, EXIT_POLL};
pub use node::{BudgetConfig, KeepWarmConfig, NodeConfig};
pub use pool::{Pool, PoolConfig};
pub use runtime::{ContainerRuntime, Exit, Owned, PodmanRuntime, RuntimeEvent, Started};

/// Errors of the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Podman(#[from] PodmanError),
    /// Pausing or resuming through the cgroup freezer failed.
    #[error("cgroup freezer: {0}")]
    Freezer(#[from] containerpub_podman::FreezeError),
    #[error("function {function}: instance failed to start: {reason}")]
    StartFailed { function: String, reason: String },
    /// The function's process exited while its instance started (or,
    /// during `backoff`, it did so last time and no start is tried yet).
    #[error("function {function}: instance {exit}{}", backoff_note(*.backoff))]
    Crashed {
        function: String,
        exit: Exit,
        backoff: Option<std::time::Duration>,
    },
    #[error("function {function}: {queue_size} calls already wait for an instance")]
    QueueFull { function: String, queue_size: usize },
    #[error("function {function}: no instance free after waiting {} ms", waited.as_millis())]
    QueueTimeout {
        function: String,
        waited: std::time::Duration,
    },
    /// The node has no room for another instance: its budget (memory or
    /// instances) is used up by instances that could not be evicted, or the
    /// engine ran out of addresses. `reason` is for the log, never for the
    /// caller.
    #[error("function {function}: no room on this node for another instance ({reason})")]
    NoCapacity {
        function: String,
        reason: String,
        /// When trying again may succeed.
        retry_after: std::time::Duration,
    },
}

impl PoolError {
    /// Whether this error is the engine running out of room (Podman's IPAM
    /// finding no free address in the function network, or the kernel
    /// refusing another process or file): a capacity problem, not a fault
    /// of the function.
    pub fn is_capacity(&self) -> bool {
        match self {
            Self::NoCapacity { .. } => true,
            Self::Podman(err) => {
                let text = err.to_string();
                CAPACITY_MARKERS.iter().any(|m| text.contains(m))
            }
            _ => false,
        }
    }
}

/// What Podman's errors say when the node is out of room (seen: Podman
/// 4.3's `IPAM error: failed to find free IP in range`).
const CAPACITY_MARKERS: &[&str] = &[
    "failed to find free IP",
    "IPAM error",
    "too many open files",
    "resource temporarily unavailable",
    "no space left on device",
];

/// The end of a [`PoolError::Crashed`] message while starts are held back.
fn backoff_note(backoff: Option<std::time::Duration>) -> String {
    match backoff {
        Some(d) => format!(
            "\n(starts are held back after crashes: the next is tried in {:.1} s)",
            d.as_secs_f64()
        ),
        None => String::new(),
    }
}
