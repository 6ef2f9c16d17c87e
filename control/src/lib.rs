//! `cpub-control`, the ContainerPub control plane: the `/api/v1` REST API,
//! authentication, the deploy pipeline (upload → validate → store → build →
//! activate) and the route watch proxies follow. The only crate that opens a
//! PostgreSQL connection.

pub mod access;
pub mod archive;
pub mod audit;
pub mod auth;
pub mod build;
pub mod builds;
pub mod config;
pub mod containerfile;
pub mod credentials;
pub mod db;
pub mod deploy;
pub mod elf;
pub mod error;
pub mod gc;
pub mod histogram;
pub mod history;
pub mod login_limit;
pub mod logs;
pub mod metrics;
pub mod pgcopy;
pub mod reads;
pub mod revision;
pub mod routes;
pub mod runtimes;
pub mod server;
pub mod signing;
pub mod state;
pub mod vault;
pub mod watchers;
