//! The bundle manifest `cpub.toml`: parsing with unknown keys rejected,
//! defaults, and validation whose errors name the offending field.
//!
//! Over 600 lines with its unit tests: about 450 of code and 190 of tests
//! of the refusals.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A manifest problem. `field` is the dotted path of the key at fault
/// (`scaling.max_instances`), or `""` when the file as a whole is unreadable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cpub.toml: {field}: {message}")]
pub struct ManifestError {
    pub field: String,
    pub message: String,
}

impl ManifestError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// How the function's image is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// The bundle's `Containerfile` is built as it is.
    Container,
    /// `entrypoint` is a Linux x86-64 executable; the platform writes the
    /// Containerfile: `FROM scratch` for a static one, the `debian` base
    /// image (glibc) for a dynamically linked one.
    Binary,
    /// `entrypoint` is a Python 3.11 script run by `python3` on the `python`
    /// base image, with the whole bundle in `/app` and `/app/vendor` on the
    /// import path (dependencies are vendored in the bundle).
    Python,
    /// `entrypoint` is a JavaScript file run by `node` (Node.js 18) on the
    /// `node` base image, with the whole bundle (and its `node_modules`) in
    /// `/app`.
    Node,
}

impl Runtime {
    /// The name used in `cpub.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Container => "container",
            Self::Binary => "binary",
            Self::Python => "python",
            Self::Node => "node",
        }
    }
}

/// Who may call the function through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    Public,
    #[default]
    Private,
}

/// How callers of a `private` function prove they may call it
/// (`[access] auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Auth {
    /// An invocation key (`x-cpub-key` or `Authorization: Bearer`).
    #[default]
    Key,
    /// An HMAC signature (`x-cpub-signature`, `crate::signing`) only.
    Signature,
    /// Either; a call that carries a signature is judged by it.
    KeyOrSignature,
}

impl Auth {
    /// Whether keys are accepted.
    pub fn accepts_key(self) -> bool {
        matches!(self, Self::Key | Self::KeyOrSignature)
    }

    /// Whether signatures are accepted.
    pub fn accepts_signature(self) -> bool {
        matches!(self, Self::Signature | Self::KeyOrSignature)
    }
}

/// `[access]`: how a private function's callers authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Access {
    /// `key` (the default), `signature` or `key-or-signature`.
    #[serde(default)]
    pub auth: Auth,
}

impl Access {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// `cpub.toml`, the manifest at the root of every bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Function name; must equal the name the bundle is deployed under.
    pub name: String,
    /// How the image is built.
    pub runtime: Runtime,
    /// Path inside the bundle of what the platform runs: the executable
    /// (`binary`), the script (`python`, `node`); not with `container`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    /// TCP port the function serves HTTP/1.1 on; passed as `$PORT`.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Readiness probe path: ready at the first response below 500. When
    /// unset, ready when the port accepts a TCP connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<String>,
    /// `public` needs no key; `private` needs a function key.
    #[serde(default)]
    pub visibility: Visibility,
    /// How a private function's callers authenticate (left out of the
    /// serialised form when default, so older readers still parse it).
    #[serde(default, skip_serializing_if = "Access::is_default")]
    pub access: Access,
    /// Plain environment defaults.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Per-instance limits.
    #[serde(default)]
    pub resources: Resources,
    /// Instance counts and idle timers.
    #[serde(default)]
    pub scaling: Scaling,
}

/// `[resources]`: limits applied to every instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory limit in MiB (swap is set equal: no swap use).
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// CPU quota in cores (0.5 = half a core).
    #[serde(default = "default_cpu")]
    pub cpu: f64,
    /// Maximum number of processes and threads.
    #[serde(default = "default_pids")]
    pub pids: u32,
    /// Longest wait for the answer's head, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Once the head is sent: longest pause between two pieces of the
    /// answer's body (a streamed answer: SSE, chunked) or of a WebSocket
    /// tunnel, in milliseconds.
    #[serde(default = "default_stream_idle_ms")]
    pub stream_idle_ms: u64,
    /// Longest a call may last in all, streamed answers and tunnels
    /// included, in seconds (at most 900: 15 minutes).
    #[serde(default = "default_max_call_s")]
    pub max_call_s: u64,
    /// Largest request body the proxy forwards, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
}

/// `[scaling]`: how many instances and when idle ones are paused or removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scaling {
    /// Instances kept running at all times.
    #[serde(default)]
    pub min_instances: u32,
    /// Upper bound on instances.
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    /// In-flight requests per instance.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Seconds idle before an instance is paused.
    #[serde(default = "default_idle_pause_s")]
    pub idle_pause_s: u64,
    /// Seconds idle before a paused instance is removed.
    #[serde(default = "default_idle_stop_s")]
    pub idle_stop_s: u64,
    /// Calls that may wait for a free slot at once; one more gets 429.
    #[serde(default = "default_queue_size")]
    pub queue_size: u32,
    /// Longest wait for a slot in milliseconds; then 503 with `retry-after`.
    #[serde(default = "default_queue_timeout_ms")]
    pub queue_timeout_ms: u64,
    /// Predictive keep-warm for this function: `true` keeps one paused
    /// instance after the idle stop while the function is called within the
    /// node's keep-warm window, `false` never; unset follows the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_warm: Option<bool>,
}

const fn default_port() -> u16 {
    8080
}
const fn default_memory_mb() -> u32 {
    128
}
const fn default_cpu() -> f64 {
    0.5
}
const fn default_pids() -> u32 {
    64
}
const fn default_timeout_ms() -> u64 {
    30_000
}
const fn default_stream_idle_ms() -> u64 {
    30_000
}
const fn default_max_call_s() -> u64 {
    300
}
const fn default_max_body_bytes() -> u64 {
    6 * 1024 * 1024
}
const fn default_max_instances() -> u32 {
    10
}
const fn default_concurrency() -> u32 {
    16
}
const fn default_idle_pause_s() -> u64 {
    30
}
const fn default_idle_stop_s() -> u64 {
    600
}
const fn default_queue_size() -> u32 {
    1_000
}
const fn default_queue_timeout_ms() -> u64 {
    10_000
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            memory_mb: default_memory_mb(),
            cpu: default_cpu(),
            pids: default_pids(),
            timeout_ms: default_timeout_ms(),
            stream_idle_ms: default_stream_idle_ms(),
            max_call_s: default_max_call_s(),
            max_body_bytes: default_max_body_bytes(),
        }
    }
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            min_instances: 0,
            max_instances: default_max_instances(),
            concurrency: default_concurrency(),
            idle_pause_s: default_idle_pause_s(),
            idle_stop_s: default_idle_stop_s(),
            queue_size: default_queue_size(),
            queue_timeout_ms: default_queue_timeout_ms(),
            keep_warm: None,
        }
    }
}

impl Manifest {
    /// Parses and validates `cpub.toml` text.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| toml_error(e, text))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks every value; the error names the first field at fault.
    pub fn validate(&self) -> Result<(), ManifestError> {
        crate::validate_function_name(&self.name).map_err(|m| ManifestError::new("name", m))?;
        match (self.runtime, &self.entrypoint) {
            (Runtime::Binary | Runtime::Python | Runtime::Node, None) => {
                return Err(ManifestError::new(
                    "entrypoint",
                    format!("required when runtime = \"{}\"", self.runtime.as_str()),
                ));
            }
            (Runtime::Binary | Runtime::Python | Runtime::Node, Some(path)) => {
                validate_bundle_path(path).map_err(|m| ManifestError::new("entrypoint", m))?
            }
            (Runtime::Container, Some(_)) => {
                return Err(ManifestError::new(
                    "entrypoint",
                    "not allowed with runtime = \"container\" (a container sets its own ENTRYPOINT)",
                ));
            }
            (Runtime::Container, None) => {}
        }
        if self.visibility == Visibility::Public && !self.access.is_default() {
            return Err(ManifestError::new(
                "access.auth",
                "applies to private functions only: set visibility = \"private\" or remove [access]",
            ));
        }
        if self.port == 0 {
            return Err(ManifestError::new("port", "must be between 1 and 65535"));
        }
        if let Some(path) = &self.health_path
            && (!path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(ManifestError::new(
                "health_path",
                format!("must be an absolute URL path like \"/health\", got {path:?}"),
            ));
        }
        for (key, value) in &self.env {
            let valid_key = !key.is_empty()
                && !key.as_bytes()[0].is_ascii_digit()
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid_key {
                return Err(ManifestError::new(
                    &format!("env.{key}"),
                    "names must use A-Z, a-z, 0-9 and '_' and not start with a digit",
                ));
            }
            if key == "PORT" {
                return Err(ManifestError::new(
                    "env.PORT",
                    "is set by the platform from `port`",
                ));
            }
            if value.contains('\0') {
                return Err(ManifestError::new(
                    &format!("env.{key}"),
                    "must not contain NUL",
                ));
            }
        }
        let r = &self.resources;
        check_range("resources.memory_mb", r.memory_mb.into(), 16, 65_536)?;
        if !(r.cpu.is_finite() && (0.01..=64.0).contains(&r.cpu)) {
            return Err(ManifestError::new(
                "resources.cpu",
                format!("must be between 0.01 and 64 cores, got {}", r.cpu),
            ));
        }
        check_range("resources.pids", r.pids.into(), 8, 32_768)?;
        check_range("resources.timeout_ms", r.timeout_ms, 100, 900_000)?;
        check_range("resources.stream_idle_ms", r.stream_idle_ms, 100, 900_000)?;
        // Never below `timeout_ms` in effect (the proxy takes the larger).
        check_range("resources.max_call_s", r.max_call_s, 1, 900)?;
        check_range("resources.max_body_bytes", r.max_body_bytes, 0, 1 << 30)?;
        let s = &self.scaling;
        check_range("scaling.max_instances", s.max_instances.into(), 1, 1_000)?;
        check_range(
            "scaling.min_instances",
            s.min_instances.into(),
            0,
            s.max_instances.into(),
        )?;
        check_range("scaling.concurrency", s.concurrency.into(), 1, 10_000)?;
        check_range("scaling.idle_pause_s", s.idle_pause_s, 1, 86_400)?;
        check_range(
            "scaling.idle_stop_s",
            s.idle_stop_s,
            s.idle_pause_s,
            604_800,
        )?;
        check_range("scaling.queue_size", s.queue_size.into(), 0, 100_000)?;
        check_range("scaling.queue_timeout_ms", s.queue_timeout_ms, 1, 600_000)?;
        Ok(())
    }
}

fn check_range(field: &str, value: u64, min: u64, max: u64) -> Result<(), ManifestError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ManifestError::new(
            field,
            format!("must be between {min} and {max}, got {value}"),
        ))
    }
}

/// A relative path that stays inside the bundle: no leading `/`, no `..`.
pub fn validate_bundle_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.starts_with('/') {
        return Err(format!(
            "must be a relative path inside the bundle, got {path:?}"
        ));
    }
    if path.split('/').any(|part| part == "..") || path.contains('\0') {
        return Err(format!("must not leave the bundle, got {path:?}"));
    }
    Ok(())
}

/// Turns a TOML error into a manifest error naming the key at fault with
/// its table (`resources.memory_mb`, `env.X`, `port`): the path comes from
/// `serde_path_to_error`; an unknown or missing key is appended to it.
/// `field` is `""` only when the text is not TOML at all.
fn toml_error(err: serde_path_to_error::Error<toml::de::Error>, text: &str) -> ManifestError {
    let mut parts: Vec<String> = Vec::new();
    for segment in err.path().iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => match parts.last_mut() {
                Some(last) => last.push_str(&format!("[{index}]")),
                None => parts.push(format!("[{index}]")),
            },
            serde_path_to_error::Segment::Map { key }
            | serde_path_to_error::Segment::Enum { variant: key } => parts.push(key.clone()),
            serde_path_to_error::Segment::Unknown => {}
        }
    }
    let inner = err.into_inner();
    let message = inner.message().trim_end().to_owned();
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    if let Some(key) = named
        && parts.last().map(String::as_str) != Some(key)
    {
        parts.push(key.to_owned());
    }
    let field = parts.join(".");
    let message = match inner.span() {
        Some(span) => {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
            format!("{message} (line {line}, column {column})")
        }
        None => message,
    };
    ManifestError { field, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "name = \"hello\"\nruntime = \"binary\"\nentrypoint = \"bin/hello\"\n";

    #[test]
    fn minimal_manifest_gets_defaults() {
        let m = Manifest::parse(MINIMAL).unwrap();
        assert_eq!(m.port, 8080);
        assert_eq!(m.visibility, Visibility::Private);
        assert_eq!(m.resources.memory_mb, 128);
        assert_eq!(m.scaling.concurrency, 16);
    }

    #[test]
    fn unknown_key_names_the_field() {
        let err = Manifest::parse(&format!("{MINIMAL}colour = \"red\"\n")).unwrap_err();
        assert_eq!(err.field, "colour", "{err}");
        let err = Manifest::parse(&format!("{MINIMAL}[scaling]\nmax_instance = 3\n")).unwrap_err();
        assert_eq!(err.field, "scaling.max_instance", "{err}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            ("[resources]\nmemory_mb = 1\n", "resources.memory_mb"),
            ("[resources]\ncpu = 0.0\n", "resources.cpu"),
            (
                "[scaling]\nmin_instances = 5\nmax_instances = 2\n",
                "scaling.min_instances",
            ),
            ("[scaling]\nconcurrency = 0\n", "scaling.concurrency"),
            ("health_path = \"health\"\n", "health_path"),
            ("port = 0\n", "port"),
            (
                "[scaling]\nqueue_timeout_ms = 0\n",
                "scaling.queue_timeout_ms",
            ),
            ("[env]\nPORT = \"1\"\n", "env.PORT"),
            ("[env]\n\"1X\" = \"1\"\n", "env.1X"),
        ];
        for (extra, field) in cases {
            let err = Manifest::parse(&format!("{MINIMAL}{extra}")).unwrap_err();
            assert_eq!(err.field, field, "{extra}: {err}");
        }
    }

    #[test]
    fn runtime_and_entrypoint_must_agree() {
        let err = Manifest::parse("name = \"a\"\nruntime = \"binary\"\n").unwrap_err();
        assert_eq!(err.field, "entrypoint");
        let err = Manifest::parse("name = \"a\"\nruntime = \"container\"\nentrypoint = \"x\"\n")
            .unwrap_err();
        assert_eq!(err.field, "entrypoint");
        let err = Manifest::parse("name = \"a\"\nruntime = \"binary\"\nentrypoint = \"../x\"\n")
            .unwrap_err();
        assert_eq!(err.field, "entrypoint");
        let err = Manifest::parse("name = \"a\"\nruntime = \"java\"\n").unwrap_err();
        assert!(err.message.contains("java"), "{err}");
        for runtime in ["python", "node"] {
            let err =
                Manifest::parse(&format!("name = \"a\"\nruntime = \"{runtime}\"\n")).unwrap_err();
            assert_eq!(err.field, "entrypoint", "{err}");
            assert!(err.message.contains(runtime), "{err}");
            let m = Manifest::parse(&format!(
                "name = \"a\"\nruntime = \"{runtime}\"\nentrypoint = \"server.x\"\n"
            ))
            .unwrap();
            assert_eq!(m.runtime.as_str(), runtime);
            let err = Manifest::parse(&format!(
                "name = \"a\"\nruntime = \"{runtime}\"\nentrypoint = \"/app/x\"\n"
            ))
            .unwrap_err();
            assert_eq!(err.field, "entrypoint", "{err}");
        }
    }

    #[test]
    fn type_range_and_unknown_key_errors_name_the_field_with_its_table() {
        let cases = [
            ("[env]\nX = 5\n", "env.X", "invalid type"),
            (
                "[resources]\nmemory_mbb = 5\n",
                "resources.memory_mbb",
                "unknown field",
            ),
            (
                "[resources]\nmemory_mb = \"big\"\n",
                "resources.memory_mb",
                "invalid type",
            ),
            (
                "[resources]\nmemory_mb = -1\n",
                "resources.memory_mb",
                "invalid value",
            ),
            (
                "[resources]\ncpu = \"1\"\n",
                "resources.cpu",
                "invalid type",
            ),
            ("port = 70000\n", "port", "invalid value"),
            ("port = \"80\"\n", "port", "invalid type"),
            ("visibility = \"secret\"\n", "visibility", "unknown variant"),
            (
                "[scaling]\nmax_instances = 1.5\n",
                "scaling.max_instances",
                "invalid type",
            ),
            (
                "[scaling]\nmax_instance = 3\n",
                "scaling.max_instance",
                "unknown field",
            ),
            (
                "[resources]\npids = 5000000000\n",
                "resources.pids",
                "invalid value",
            ),
            (
                "[scaling]\nidle_pause_s = -5\n",
                "scaling.idle_pause_s",
                "invalid value",
            ),
            ("scaling = 3\n", "scaling", "invalid type"),
            ("env = [\"A\"]\n", "env", "invalid type"),
            ("colour = \"red\"\n", "colour", "unknown field"),
            ("health_path = 1\n", "health_path", "invalid type"),
            (
                "[access]\nauth = \"hmac\"\n",
                "access.auth",
                "unknown variant",
            ),
            ("[access]\nmode = \"key\"\n", "access.mode", "unknown field"),
        ];
        for (extra, field, kind) in cases {
            let err = Manifest::parse(&format!("{MINIMAL}{extra}")).unwrap_err();
            assert_eq!(err.field, field, "{extra}: {err}");
            assert!(err.message.contains(kind), "{extra}: {err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("cpub.toml: {field}: ")),
                "{err}"
            );
            assert!(err.message.contains("(line "), "{extra}: {err}");
        }
        let err = Manifest::parse("runtime = \"binary\"\nentrypoint = \"x\"\n").unwrap_err();
        assert_eq!(err.field, "name", "{err}");
        assert!(err.message.contains("missing field"), "{err}");
        let err = Manifest::parse("name = \"a\"\nruntime = \"java\"\n").unwrap_err();
        assert_eq!(err.field, "runtime", "{err}");
        // Not TOML at all: the file as a whole.
        let err = Manifest::parse("name = \"a\"\nruntime = [\n").unwrap_err();
        assert_eq!(err.field, "", "{err}");
    }

    #[test]
    fn access_auth_is_chosen_for_private_functions_only() {
        assert_eq!(Manifest::parse(MINIMAL).unwrap().access.auth, Auth::Key);
        for (text, auth) in [
            ("key", Auth::Key),
            ("signature", Auth::Signature),
            ("key-or-signature", Auth::KeyOrSignature),
        ] {
            let m = Manifest::parse(&format!("{MINIMAL}[access]\nauth = \"{text}\"\n")).unwrap();
            assert_eq!(m.access.auth, auth);
            // The default is left out of the serialised form; others kept.
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json.contains("\"access\""), auth != Auth::Key, "{json}");
            assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
        }
        assert!(Auth::KeyOrSignature.accepts_key() && Auth::KeyOrSignature.accepts_signature());
        assert!(!Auth::Signature.accepts_key() && !Auth::Key.accepts_signature());
        let err = Manifest::parse(&format!(
            "{MINIMAL}visibility = \"public\"\n[access]\nauth = \"signature\"\n"
        ))
        .unwrap_err();
        assert_eq!(err.field, "access.auth", "{err}");
    }

    #[test]
    fn round_trips_through_json() {
        let m = Manifest::parse(MINIMAL).unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
    }
}
