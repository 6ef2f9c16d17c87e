//! The ContainerPub edge proxy as a library: the `cpub-proxy` binary is a
//! thin `main.rs` over these modules, and the benches (`benches/`) call the
//! hot paths (route lookup, path parsing, header rewriting) directly.

pub mod access;
pub mod admin;
pub mod chunked;
pub mod config;
pub mod crashes;
pub mod engine;
pub mod executions;
pub mod h1;
pub mod ingest;
pub mod logs;
pub mod metrics;
pub mod node_status;
pub mod oom_watch;
pub mod path;
pub mod request_id;
pub mod routes;
pub mod server;
pub mod service;
pub mod signing;
pub mod trace;
pub mod tunnel;
pub mod upstream;
