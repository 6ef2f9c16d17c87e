//! Scenario files (`loadtest/scenarios/*.toml`): a named, reviewable load
//! shape — targets, loop mode, rate or connections, bounds, bodies — turned
//! into a [`Plan`]. Unknown keys are refused; every error names its field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Deserialize;

use crate::plan::{MAX_BODY_BYTES, Mode, Plan, RequestSpec, TargetSet, generated_body};
use crate::target::{AllowList, Target};
use crate::{Error, parse_duration};

/// Where targets live when neither the scenario nor `--target-base` says.
pub const DEFAULT_BASE: &str = "http://127.0.0.1:8080";

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name shown in the report.
    pub name: String,
    /// `http://HOST:PORT` the target paths are appended to; `--target-base`
    /// overrides it. Default [`DEFAULT_BASE`].
    #[serde(default)]
    pub base: Option<String>,
    /// Pacing and bounds.
    pub load: Load,
    /// The request sent; default a bodiless GET.
    #[serde(default)]
    pub request: Request,
    /// Weighted targets; give these or `zipf`, not both.
    #[serde(default)]
    pub target: Vec<WeightedTarget>,
    /// Many functions called with Zipf-distributed popularity.
    #[serde(default)]
    pub zipf: Option<Zipf>,
    /// Directory of the file, for relative `body_file` paths.
    #[serde(skip)]
    dir: PathBuf,
}

/// `[load]`: how requests are paced and when the run ends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// `closed` (back to back per connection) or `open` (constant rate).
    pub mode: LoadMode,
    /// Requests per second; required in open loop, refused in closed loop.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Connections (open loop: the cap on concurrent requests).
    pub connections: usize,
    /// Run length, e.g. `30s`; with neither this nor `requests`, 10 s.
    #[serde(default)]
    pub duration: Option<String>,
    /// Stop after this many requests.
    #[serde(default)]
    pub requests: Option<u64>,
    /// Load this long before measuring.
    #[serde(default)]
    pub warmup: Option<String>,
    /// Per-request timeout, e.g. `10s`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Seed of the target choice.
    #[serde(default = "default_seed")]
    pub seed: u64,
}

const fn default_seed() -> u64 {
    1
}

/// The loop mode in a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadMode {
    /// Back to back per connection.
    Closed,
    /// Constant rate.
    Open,
}

/// `[request]`: method, headers and at most one body source.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// HTTP method, default GET.
    #[serde(default)]
    pub method: Option<String>,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Inline body.
    #[serde(default)]
    pub body: Option<String>,
    /// Generated body of this many bytes.
    #[serde(default)]
    pub body_bytes: Option<u64>,
    /// Body read from this file (relative to the scenario file).
    #[serde(default)]
    pub body_file: Option<PathBuf>,
}

/// `[[target]]`: one path and its share of the requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedTarget {
    /// Path (with query) under the base, e.g. `/fn/hello/`.
    pub path: String,
    /// Relative weight, default 1.
    #[serde(default = "default_weight")]
    pub weight: f64,
}

const fn default_weight() -> f64 {
    1.0
}

/// `[zipf]`: `functions` paths from a pattern with `{i}`, rank 0 hottest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zipf {
    /// Path pattern with `{i}`, e.g. `/fn/f{i}/`.
    pub path: String,
    /// Number of functions, `i` in `0..functions`.
    pub functions: usize,
    /// Zipf exponent `s` (0 = uniform, 1 = classic).
    #[serde(default = "default_exponent")]
    pub exponent: f64,
}

const fn default_exponent() -> f64 {
    1.0
}

/// Overrides from the command line.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Replaces the scenario's `base`.
    pub target_base: Option<String>,
    /// Replaces `load.duration` (and drops `load.requests`).
    pub duration: Option<Duration>,
    /// Replaces `load.requests`.
    pub requests: Option<u64>,
    /// Private addresses allowed besides loopback.
    pub allow: AllowList,
}

impl Scenario {
    /// Reads and parses a scenario file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            field: "scenario".into(),
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses scenario text; `path` is used in messages and for relative files.
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let mut scenario: Self = toml::from_str(text).map_err(|e| Error::Scenario {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        scenario.dir = path.parent().map(Path::to_owned).unwrap_or_default();
        Ok(scenario)
    }

    /// Builds the plan; refuses bad values and non-loopback targets.
    pub fn plan(&self, overrides: &Overrides) -> Result<Plan, Error> {
        let base = overrides
            .target_base
            .as_deref()
            .or(self.base.as_deref())
            .unwrap_or(DEFAULT_BASE)
            .trim_end_matches('/');
        let join = |field: &str, path: &str| {
            if path.starts_with('/') {
                Ok(format!("{base}{path}"))
            } else {
                Err(Error::invalid(
                    field,
                    format!("{path:?} must start with '/'"),
                ))
            }
        };
        let targets = match (&self.zipf, self.target.as_slice()) {
            (Some(z), []) => TargetSet::zipf(
                &join("zipf.path", &z.path)?,
                z.functions,
                z.exponent,
                &overrides.allow,
            )?,
            (None, []) => {
                return Err(Error::invalid(
                    "target",
                    "give [[target]] entries or [zipf]",
                ));
            }
            (Some(_), _) => {
                return Err(Error::invalid(
                    "zipf",
                    "give [[target]] entries or [zipf], not both",
                ));
            }
            (None, list) => TargetSet::weighted(
                list.iter()
                    .map(|t| {
                        let url = join("target.path", &t.path)?;
                        Ok((
                            Target::parse("target.path", &url, &overrides.allow)?,
                            t.weight,
                        ))
                    })
                    .collect::<Result<_, Error>>()?,
            )?,
        };
        let load = &self.load;
        let mode = match (load.mode, load.rate) {
            (LoadMode::Open, Some(rate)) => Mode::Open { rate },
            (LoadMode::Open, None) => {
                return Err(Error::invalid("load.rate", "required when mode = \"open\""));
            }
            (LoadMode::Closed, None) => Mode::Closed,
            (LoadMode::Closed, Some(_)) => {
                return Err(Error::invalid("load.rate", "only for mode = \"open\""));
            }
        };
        let duration_field = |field: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(|v| parse_duration(v).map_err(|reason| Error::invalid(field, reason)))
                .transpose()
        };
        let mut plan = Plan::new(targets);
        plan.name = Some(self.name.clone());
        plan.mode = mode;
        plan.connections = load.connections;
        plan.duration = duration_field("load.duration", &load.duration)?;
        plan.requests = load.requests;
        if overrides.duration.is_some() {
            plan.duration = overrides.duration;
            plan.requests = None;
        }
        if overrides.requests.is_some() {
            plan.requests = overrides.requests;
        }
        plan.warmup = duration_field("load.warmup", &load.warmup)?;
        if let Some(timeout) = duration_field("load.timeout", &load.timeout)? {
            plan.timeout = timeout;
        }
        plan.seed = load.seed;
        plan.request = self.request.spec(&self.dir)?;
        plan.validate().map_err(|e| match e {
            Error::Invalid { field, reason } => Error::Invalid {
                field: format!("load.{field}"),
                reason,
            },
            other => other,
        })?;
        Ok(plan)
    }
}

impl Request {
    fn spec(&self, dir: &Path) -> Result<RequestSpec, Error> {
        let method = match &self.method {
            None => Method::GET,
            Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                Error::invalid("request.method", format!("{m:?} is not an HTTP method"))
            })?,
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let field = format!("request.headers.{name}");
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Error::invalid(&field, "not a valid header name"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| Error::invalid(&field, "not a valid header value"))?;
            headers.append(name, value);
        }
        let body = match (&self.body, self.body_bytes, &self.body_file) {
            (None, None, None) => Bytes::new(),
            (Some(text), None, None) => Bytes::from(text.clone()),
            (None, Some(n), None) => generated_body(n).map_err(|e| match e {
                Error::Invalid { reason, .. } => Error::invalid("request.body_bytes", reason),
                other => other,
            })?,
            (None, None, Some(file)) => read_body("request.body_file", &dir.join(file))?,
            _ => {
                return Err(Error::invalid(
                    "request.body",
                    "give at most one of body, body_bytes, body_file",
                ));
            }
        };
        Ok(RequestSpec {
            method,
            headers,
            body,
        })
    }
}

/// Reads a body file, refusing one over [`MAX_BODY_BYTES`].
pub fn read_body(field: &str, path: &Path) -> Result<Bytes, Error> {
    let read_err = |source| Error::Read {
        field: field.to_owned(),
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_BODY_BYTES {
        return Err(Error::invalid(
            field,
            format!(
                "{} is over the limit of {MAX_BODY_BYTES} bytes",
                path.display()
            ),
        ));
    }
    std::fs::read(path).map(Bytes::from).map_err(read_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Plan, Error> {
        Scenario::parse(text, Path::new("test.toml"))?.plan(&Overrides::default())
    }

    const MINIMAL: &str = r#"
        name = "t"
        [load]
        mode = "closed"
        connections = 2
        [[target]]
        path = "/fn/hello/"
    "#;

    #[test]
    fn minimal_closed() {
        let plan = parse(MINIMAL).unwrap();
        assert_eq!(plan.mode, Mode::Closed);
        assert_eq!(plan.connections, 2);
        assert_eq!(
            plan.targets.targets()[0].url(),
            "http://127.0.0.1:8080/fn/hello/"
        );
        assert_eq!(plan.time_bound(), crate::DEFAULT_DURATION);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse(&MINIMAL.replace("connections = 2", "connections = 2\nconections = 3"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("conections"), "{err}");
        let err = parse(&format!("{MINIMAL}\n[request]\nbody_byte = 3\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("body_byte"), "{err}");
    }

    #[test]
    fn type_errors_name_the_field() {
        let err = parse(&MINIMAL.replace("connections = 2", "connections = \"many\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("connections"), "{err}");
        let err = parse(&MINIMAL.replace("mode = \"closed\"", "mode = \"sideways\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mode"), "{err}");
    }

    #[test]
    fn validation_errors_name_the_field() {
        let cases = [
            (
                MINIMAL.replace("mode = \"closed\"", "mode = \"open\""),
                "load.rate",
            ),
            (
                MINIMAL.replace("connections = 2", "connections = 0"),
                "load.connections",
            ),
            (
                MINIMAL.replace("connections = 2", "connections = 2\nduration = \"1h\""),
                "load.duration",
            ),
            (
                MINIMAL.replace("connections = 2", "connections = 2\nduration = \"soon\""),
                "load.duration",
            ),
            (
                MINIMAL.replace("connections = 2", "connections = 2\ntimeout = \"0s\""),
                "load.timeout",
            ),
            (MINIMAL.replace("/fn/hello/", "fn/hello/"), "target.path"),
            (
                format!("{MINIMAL}\n[request]\nbody = \"x\"\nbody_bytes = 3\n"),
                "request.body",
            ),
            (
                format!("{MINIMAL}\n[request]\nmethod = \"G T\"\n"),
                "request.method",
            ),
            (
                format!("{MINIMAL}\n[zipf]\npath = \"/fn/f{{i}}/\"\nfunctions = 3\n"),
                "zipf",
            ),
            (
                MINIMAL.replace("[[target]]\n        path = \"/fn/hello/\"", ""),
                "target",
            ),
        ];
        for (text, field) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{field}: ")),
                "want {field}: got {err}"
            );
        }
    }

    #[test]
    fn non_loopback_base_refused() {
        let err = parse(&format!("base = \"http://10.0.0.1:8080\"\n{MINIMAL}")).unwrap_err();
        assert!(matches!(err, Error::Refused { .. }), "{err}");
    }

    #[test]
    fn zipf_and_overrides() {
        let text = r#"
            name = "z"
            [load]
            mode = "open"
            rate = 50
            connections = 4
            duration = "30s"
            [zipf]
            path = "/fn/f{i}/"
            functions = 5
            exponent = 1.2
        "#;
        let scenario = Scenario::parse(text, Path::new("z.toml")).unwrap();
        let plan = scenario
            .plan(&Overrides {
                target_base: Some("http://localhost:9999/".into()),
                duration: Some(Duration::from_secs(2)),
                ..Overrides::default()
            })
            .unwrap();
        assert_eq!(plan.mode, Mode::Open { rate: 50.0 });
        assert_eq!(plan.duration, Some(Duration::from_secs(2)));
        let urls: Vec<_> = plan.targets.targets().iter().map(|t| t.url()).collect();
        assert_eq!(urls[0], "http://localhost:9999/fn/f0/");
        assert_eq!(urls[4], "http://localhost:9999/fn/f4/");
    }

    #[test]
    fn shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
                scenario
                    .plan(&Overrides::default())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(
                    text.starts_with('#'),
                    "{}: intent comment first",
                    path.display()
                );
                names.push(scenario.name);
            }
        }
        names.sort();
        assert_eq!(
            names,
            [
                "cold-burst",
                "large-bodies",
                "many-functions",
                "warm-steady"
            ]
        );
    }
}
