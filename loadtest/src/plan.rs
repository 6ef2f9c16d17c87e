//! What a run does: targets, loop mode, bounds, the request to send. A `Plan`
//! is built by the CLI or a scenario file, or directly by a test, and handed
//! to [`crate::run`].

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};

use crate::Error;
use crate::sampler::Sampler;
use crate::target::{AllowList, Target};

/// A run given neither a duration nor a request count lasts this long.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// No run lasts longer than this (in-flight requests then get their timeout).
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// Time allowed for one request: connect, send, whole response body.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections one run may open.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Largest request body the generator builds or reads.
pub const MAX_BODY_BYTES: u64 = 256 * 1024 * 1024;
/// Most targets in a Zipf set.
pub const MAX_FUNCTIONS: usize = 100_000;
/// The placeholder replaced by the function index in a Zipf URL pattern.
pub const INDEX_PLACEHOLDER: &str = "{i}";

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Every connection sends its next request as soon as the previous
    /// response ended; latency runs from the actual send.
    Closed,
    /// Requests are due at `t0 + i / rate`; latency runs from that intended
    /// time, so time spent waiting for a free connection counts.
    Open {
        /// Requests per second.
        rate: f64,
    },
}

/// The request sent to every target.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// HTTP method.
    pub method: Method,
    /// Extra headers (`host` is set from the target).
    pub headers: HeaderMap,
    /// Body sent with every request (cheap to clone).
    pub body: Bytes,
}

impl Default for RequestSpec {
    fn default() -> Self {
        Self {
            method: Method::GET,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }
}

/// A body of `len` bytes of printable filler, the same every time.
pub fn generated_body(len: u64) -> Result<Bytes, Error> {
    if len > MAX_BODY_BYTES {
        return Err(Error::invalid(
            "body_bytes",
            format!("{len} is over the limit of {MAX_BODY_BYTES}"),
        ));
    }
    const PATTERN: &[u8] = b"containerpub-loadtest 0123456789abcdefghijklmnopqrstuvwxyz\n";
    Ok(PATTERN
        .iter()
        .copied()
        .cycle()
        .take(len as usize)
        .collect::<Vec<u8>>()
        .into())
}

/// The set of targets and how one is picked per request.
#[derive(Debug, Clone)]
pub struct TargetSet {
    targets: Vec<Target>,
    sampler: Sampler,
    description: String,
}

impl TargetSet {
    /// A single target.
    pub fn single(target: Target) -> Self {
        let description = target.url().to_owned();
        Self {
            targets: vec![target],
            sampler: Sampler::weighted(&[1.0]).expect("one positive weight"),
            description,
        }
    }

    /// Targets picked with probability proportional to their weight.
    pub fn weighted(targets: Vec<(Target, f64)>) -> Result<Self, Error> {
        let weights: Vec<f64> = targets.iter().map(|(_, w)| *w).collect();
        let sampler = Sampler::weighted(&weights).ok_or_else(|| {
            Error::invalid(
                "target.weight",
                "need at least one target and non-negative weights that are not all zero",
            )
        })?;
        let description = if targets.len() == 1 {
            targets[0].0.url().to_owned()
        } else {
            format!("{} weighted targets", targets.len())
        };
        Ok(Self {
            targets: targets.into_iter().map(|(t, _)| t).collect(),
            sampler,
            description,
        })
    }

    /// `functions` targets made from `pattern` by replacing `{i}` with
    /// `0..functions`, picked with Zipf exponent `exponent` (index 0 hottest).
    pub fn zipf(
        pattern: &str,
        functions: usize,
        exponent: f64,
        allow: &AllowList,
    ) -> Result<Self, Error> {
        if !pattern.contains(INDEX_PLACEHOLDER) {
            return Err(Error::invalid(
                "zipf.url",
                format!("{pattern:?} has no {INDEX_PLACEHOLDER} placeholder"),
            ));
        }
        if functions == 0 || functions > MAX_FUNCTIONS {
            return Err(Error::invalid(
                "zipf.functions",
                format!("{functions} is not in 1..={MAX_FUNCTIONS}"),
            ));
        }
        let sampler = Sampler::zipf(functions, exponent).ok_or_else(|| {
            Error::invalid(
                "zipf.exponent",
                format!("{exponent} is not a finite number ≥ 0"),
            )
        })?;
        let targets = (0..functions)
            .map(|i| {
                Target::parse(
                    "zipf.url",
                    &pattern.replace(INDEX_PLACEHOLDER, &i.to_string()),
                    allow,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            targets,
            sampler,
            description: format!("{pattern} × {functions} (zipf s={exponent})"),
        })
    }

    /// All targets.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// One line saying what is loaded.
    pub fn description(&self) -> &str {
        &self.description
    }

    pub(crate) fn sampler(&self) -> &Sampler {
        &self.sampler
    }
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Scenario name, shown in the report.
    pub name: Option<String>,
    /// Where requests go.
    pub targets: TargetSet,
    /// Closed or open loop.
    pub mode: Mode,
    /// Connections (closed loop: concurrency; open loop: cap on concurrency).
    pub connections: usize,
    /// Stop starting requests after this long.
    pub duration: Option<Duration>,
    /// Stop after this many requests.
    pub requests: Option<u64>,
    /// Load for this long first and throw the numbers away.
    pub warmup: Option<Duration>,
    /// Time allowed for one request.
    pub timeout: Duration,
    /// The request.
    pub request: RequestSpec,
    /// Seed of the target choice.
    pub seed: u64,
    /// Print a progress line on stderr once a second.
    pub progress: bool,
}

impl Plan {
    /// A closed-loop plan with one connection and the defaults.
    pub fn new(targets: TargetSet) -> Self {
        Self {
            name: None,
            targets,
            mode: Mode::Closed,
            connections: 1,
            duration: None,
            requests: None,
            warmup: None,
            timeout: DEFAULT_TIMEOUT,
            request: RequestSpec::default(),
            seed: 1,
            progress: false,
        }
    }

    /// Checks the numbers; messages name the field.
    pub fn validate(&self) -> Result<(), Error> {
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            return Err(Error::invalid(
                "connections",
                format!("{} is not in 1..={MAX_CONNECTIONS}", self.connections),
            ));
        }
        if let Mode::Open { rate } = self.mode
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(Error::invalid(
                "rate",
                format!("{rate} is not a positive number"),
            ));
        }
        for (field, value) in [("duration", self.duration), ("warmup", self.warmup)] {
            if let Some(d) = value
                && (d.is_zero() || d > MAX_DURATION)
            {
                return Err(Error::invalid(
                    field,
                    format!("{d:?} is not in (0, {}s]", MAX_DURATION.as_secs()),
                ));
            }
        }
        if self.requests == Some(0) {
            return Err(Error::invalid("requests", "must be at least 1"));
        }
        if self.timeout.is_zero() || self.timeout > MAX_DURATION {
            return Err(Error::invalid(
                "timeout",
                format!(
                    "{:?} is not in (0, {}s]",
                    self.timeout,
                    MAX_DURATION.as_secs()
                ),
            ));
        }
        Ok(())
    }

    /// How long requests may be started: the duration if given, the default
    /// if no count is given either, never more than [`MAX_DURATION`].
    pub fn time_bound(&self) -> Duration {
        match (self.duration, self.requests) {
            (Some(d), _) => d.min(MAX_DURATION),
            (None, Some(_)) => MAX_DURATION,
            (None, None) => DEFAULT_DURATION,
        }
    }
}
