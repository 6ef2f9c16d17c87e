//! Small I/O helpers that more than one ContainerPub binary needs, with no
//! project policy in them: [`fs::write_atomic`] (the CLI's config file, the
//! proxy's route snapshot) and, behind the `logging` feature, the tracing
//! set-up of `cpub-control` and `cpub-proxy` ([`logging::init`]).
//!
//! Why a crate of its own: the only crate all of them share is
//! `containerpub-wire`, which is the contract between the processes and
//! stays free of I/O; the CLI must not depend on the server crates.

pub mod fs;
#[cfg(feature = "logging")]
pub mod logging;
