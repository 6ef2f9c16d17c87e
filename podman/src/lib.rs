//! ContainerPub's client of the Podman REST API (libpod v4) on its Unix
//! socket: containers, images, networks, events, and image builds in the
//! build sandbox. The pool starts function instances with it; the control
//! plane builds and removes images with it.

pub mod build;
pub mod client;
mod connection;
pub mod freezer;
pub mod spec;
pub mod store;
#[cfg(feature = "test-util")]
pub mod testing;

pub use build::{BuildLimits, BuildOutput, BuildStop, reap_orphaned_builds};
pub use client::{
    ContainerEvent, ContainerState, ContainerSummary, DEFAULT_SOCKET, Podman, PodmanError,
};
pub use freezer::{FreezeError, Freezer};
pub use spec::ContainerSpec;
pub use store::StoreHold;
