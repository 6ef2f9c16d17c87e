//! The instance pool: the only code in ContainerPub that talks to Podman.
//!
//! `podman` is the REST client (also used by the control plane to build and
//! remove images); `pool` owns instance life cycles and leases instances to
//! the proxy.

pub mod build;
pub mod podman;

pub use build::{BuildLimits, BuildOutput, BuildStop, reap_orphaned_builds};
pub use podman::{Podman, PodmanError};

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
}

pub mod health;
mod idle;
pub mod metrics;
pub mod pool;
mod precreate;
pub mod runtime;
pub mod spec;

pub use pool::{CrashReport, InstanceInfo, InstanceState, Lease, Pool, PoolConfig, StartKind};
pub use runtime::{ContainerRuntime, Exit, Owned, PodmanRuntime, RuntimeEvent, Started};

/// Errors of the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Podman(#[from] PodmanError),
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
}

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
