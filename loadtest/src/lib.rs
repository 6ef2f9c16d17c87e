//! `containerpub-loadtest`: a load generator for ContainerPub on tokio and
//! hyper 1 client connections. Closed loop (N connections back to back) or
//! open loop (constant rate, latency from the intended send time), hdrhistogram
//! percentiles, errors by kind, scenario files. Targets are loopback or
//! explicitly allowed private addresses only; every run is bounded in time.
//!
//! ```no_run
//! # async fn f() -> Result<(), containerpub_loadtest::Error> {
//! use containerpub_loadtest::{AllowList, Mode, Plan, Target, TargetSet};
//! let target = Target::parse("url", "http://127.0.0.1:8080/fn/hello/", &AllowList::default())?;
//! let mut plan = Plan::new(TargetSet::single(target));
//! plan.mode = Mode::Open { rate: 100.0 };
//! plan.connections = 8;
//! plan.requests = Some(500);
//! let report = containerpub_loadtest::run(plan).await;
//! assert_eq!(report.errors.total, 0);
//! # Ok(()) }
//! ```

mod conn;
mod duration;
mod engine;
mod error;
mod pacer;
mod plan;
mod progress;
mod report;
pub mod sampler;
pub mod scenario;
mod target;

pub use duration::parse_duration;
pub use engine::run;
pub use error::Error;
pub use plan::{
    DEFAULT_DURATION, DEFAULT_TIMEOUT, INDEX_PLACEHOLDER, MAX_BODY_BYTES, MAX_CONNECTIONS,
    MAX_DURATION, MAX_FUNCTIONS, Mode, Plan, RequestSpec, TargetSet, generated_body,
};
pub use report::{ErrorCounts, Latency, OpenLoop, Report};
pub use target::{AllowList, Target};
