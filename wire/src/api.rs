//! JSON bodies of the `/api/v1` API, shared by server and clients.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;

/// Every error response: `{"error": "...", "field": "..."}`. `field` names
/// the input at fault (a manifest key, a header, an archive path) when known.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `POST /api/v1/auth/login`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// Answer to a login: a new API token, shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    pub token: String,
    pub username: String,
    /// When the token stops working (`CPUB_LOGIN_TOKEN_LIFETIME` after the
    /// login); absent from control planes whose logins never expired.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// Life cycle of one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentStatus {
    /// Uploaded and validated; the image is being built.
    Building,
    /// Built and serving: the function's active version.
    Active,
    /// Built, then replaced by a newer version.
    Superseded,
    /// The build failed; `build_log` says why. The previous version stays active.
    Failed,
}

impl DeploymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Building => "building",
            Self::Active => "active",
            Self::Superseded => "superseded",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "building" => Self::Building,
            "active" => Self::Active,
            "superseded" => Self::Superseded,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// One deployment of a function (`GET /api/v1/functions/{name}/deployments`,
/// and the answer to a deploy).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentInfo {
    pub id: i64,
    pub function: String,
    /// 1, 2, 3 … per function.
    pub version: i32,
    pub status: DeploymentStatus,
    /// `sha256:<hex>` of the uploaded `.tar.gz`.
    pub digest: String,
    /// Podman image reference, once built.
    pub image: Option<String>,
    /// Build output; kept for failed builds too.
    pub build_log: String,
    pub created_at: DateTime<Utc>,
}

/// A function (`GET /api/v1/functions`, `GET /api/v1/functions/{name}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionInfo {
    pub name: String,
    pub owner: String,
    /// Version currently serving, if any build succeeded.
    pub active_version: Option<i32>,
    /// Manifest of the active version.
    pub config: Option<Manifest>,
    /// Invocation URL through the proxy.
    pub url: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Everything a proxy needs to serve one function.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Route {
    pub function: String,
    pub deployment_id: i64,
    pub version: i32,
    pub image: String,
    pub config: Manifest,
    /// sha256 digests of the function's live invocation keys: a
    /// `private` function's call must present a key with one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<crate::private::KeyDigest>,
    /// The function's secrets, decrypted, added to its instances'
    /// environment (names sorted; never shown by `Debug`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<crate::private::SecretVar>,
    /// The function's live HMAC signing keys with their secrets (used when
    /// its manifest's `[access] auth` accepts signatures; never shown by
    /// `Debug`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<crate::signing::SigningKey>,
}

/// `GET /api/v1/routes?since=N&wait_s=S&node=NAME`: the whole route table
/// at a revision. The call blocks (long poll) until the revision is above
/// `since` or `wait_s` passes, then answers with the current table either
/// way.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RouteTable {
    pub revision: i64,
    pub routes: Vec<Route>,
}

/// Path of the route watch, below the control plane's base URL.
pub const ROUTES_PATH: &str = "/api/v1/routes";

/// The query string of the route watch ([`RouteTable`]): the proxy
/// serialises it (`reqwest`'s `query`), the control plane deserialises it
/// (axum's `Query`); both go through `serde_urlencoded`. Unknown and repeated
/// parameters are refused; a value that does not parse is refused with a
/// message that says what was expected and what came.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    /// Revision the caller serves; absent → answer at once.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "query_value::revision"
    )]
    pub since: Option<i64>,
    /// Seconds to wait for a newer revision; more than [`MAX_WAIT_S`] waits
    /// [`MAX_WAIT_S`] ([`WatchQuery::wait`]).
    #[serde(default = "default_wait_s", deserialize_with = "query_value::seconds")]
    pub wait_s: u64,
    /// The calling proxy's node name; with `since`, it records what that
    /// node serves (so a deploy can wait until every live proxy has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeName>,
}

/// Default wait of a route watch call.
pub const DEFAULT_WAIT_S: u64 = 25;
/// Longest wait of a route watch call.
pub const MAX_WAIT_S: u64 = 60;

const fn default_wait_s() -> u64 {
    DEFAULT_WAIT_S
}

impl Default for WatchQuery {
    fn default() -> Self {
        Self {
            since: None,
            wait_s: DEFAULT_WAIT_S,
            node: None,
        }
    }
}

impl WatchQuery {
    /// How long the control plane holds the call: `wait_s`, at most
    /// [`MAX_WAIT_S`].
    pub fn wait(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.wait_s.min(MAX_WAIT_S))
    }
}

/// A node name that passed [`crate::validate_node_name`]; deserialising
/// refuses any other.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        crate::validate_node_name(&name)?;
        Ok(Self(name))
    }
}

impl From<NodeName> for String {
    fn from(name: NodeName) -> Self {
        name.0
    }
}

impl std::fmt::Display for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Query-string values (always text there) parsed with messages that name
/// what was expected; the field's name is added by the caller's path (axum:
/// `serde_path_to_error`).
mod query_value {
    use serde::de::{Deserialize, Deserializer, Error};

    pub fn revision<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("must be an integer revision, got {text:?}")))
    }

    pub fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|_| {
            D::Error::custom(format!(
                "must be a whole number of seconds (0 or more), got {text:?}"
            ))
        })
    }
}

/// A crash of a function's instance, as a proxy reports it
/// (`POST /api/v1/functions/{name}/crashes`): the latest on its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrashReport {
    /// The reporting proxy's node name.
    pub node: String,
    /// The deployment the instance ran.
    pub deployment_id: i64,
    /// Its exit code (128 + the signal when killed), when known.
    pub exit_code: Option<i32>,
    /// The last lines of its output (the server keeps at most
    /// [`MAX_CRASH_OUTPUT_BYTES`], the end).
    pub output: String,
    /// It exited before it became ready (else it had served).
    pub during_start: bool,
    /// Crashes on the node since its previous report (≥ 1).
    pub count: u32,
}

/// Most bytes of a crash's output the control plane keeps.
pub const MAX_CRASH_OUTPUT_BYTES: usize = 4096;

/// The last crash of a function on one node
/// (`GET /api/v1/functions/{name}/crashes`, newest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashInfo {
    pub node: String,
    /// Version of the deployment that crashed.
    pub version: i32,
    pub exit_code: Option<i32>,
    pub output: String,
    pub during_start: bool,
    /// Crashes reported by the node for this function so far.
    pub crashes: i64,
    /// When the last one was reported.
    pub at: DateTime<Utc>,
}

/// How a version came about (issue 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionKind {
    /// An uploaded bundle, built into an image of its own.
    Build,
    /// An earlier version's image and manifest, reactivated without a build.
    Rollback,
    /// The active image with a changed manifest (`cpub scale`, `cpub env`).
    Config,
}

impl VersionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Build => "build",
            Self::Rollback => "rollback",
            Self::Config => "config",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "build" => Self::Build,
            "rollback" => Self::Rollback,
            "config" => Self::Config,
            _ => return None,
        })
    }
}

/// One version of a function (`GET /api/v1/functions/{name}/versions`,
/// newest first; the answer to a rollback and to a config change).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: i32,
    pub deployment_id: i64,
    pub status: DeploymentStatus,
    pub kind: VersionKind,
    /// The version whose image it runs (rollbacks and config changes).
    pub source_version: Option<i32>,
    /// One line: "rollback to v2", "scale max_instances 10 -> 3".
    pub note: String,
    /// Podman image reference, once built.
    pub image: Option<String>,
    /// `sha256:<hex>` of the bundle the image was built from.
    pub digest: String,
    /// The manifest this version runs with.
    pub config: Manifest,
    pub created_at: DateTime<Utc>,
}

/// `POST /api/v1/functions/{name}/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version to reactivate; absent: the newest built version below
    /// the active one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<i32>,
}

/// `POST /api/v1/functions/{name}/config`: a new version on the active
/// image with these manifest values changed. Unset fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_instances: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Environment variables to set (added or replaced).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env_set: std::collections::BTreeMap<String, String>,
    /// Environment variables to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_unset: Vec<String>,
}

impl ConfigChange {
    /// Whether it changes nothing at all.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Applies the change to `manifest` and validates the result (the
    /// error names the manifest field). Returns one line per value that
    /// actually changed (`max_instances 10 -> 3`, `env set GREETING`),
    /// empty when the change is a no-op. An `env_unset` of a variable that
    /// is not set is an error, as is a key both set and unset.
    pub fn apply(
        &self,
        manifest: &mut Manifest,
    ) -> Result<Vec<String>, crate::manifest::ManifestError> {
        let mut changes = Vec::new();
        let s = &mut manifest.scaling;
        for (name, new, old) in [
            ("min_instances", self.min_instances, &mut s.min_instances),
            ("max_instances", self.max_instances, &mut s.max_instances),
            ("concurrency", self.concurrency, &mut s.concurrency),
        ] {
            if let Some(new) = new
                && new != *old
            {
                changes.push(format!("{name} {old} -> {new}"));
                *old = new;
            }
        }
        let r = &mut manifest.resources;
        if let Some(new) = self.memory_mb
            && new != r.memory_mb
        {
            changes.push(format!("memory_mb {} -> {new}", r.memory_mb));
            r.memory_mb = new;
        }
        if let Some(new) = self.cpu
            && new != r.cpu
        {
            changes.push(format!("cpu {} -> {new}", r.cpu));
            r.cpu = new;
        }
        for key in &self.env_unset {
            if self.env_set.contains_key(key) {
                return Err(crate::manifest::ManifestError {
                    field: format!("env.{key}"),
                    message: "is both set and unset".into(),
                });
            }
            if manifest.env.remove(key).is_none() {
                return Err(crate::manifest::ManifestError {
                    field: format!("env.{key}"),
                    message: "is not set, so it cannot be unset".into(),
                });
            }
            changes.push(format!("env unset {key}"));
        }
        for (key, value) in &self.env_set {
            if manifest.env.get(key) != Some(value) {
                manifest.env.insert(key.clone(), value.clone());
                changes.push(format!("env set {key}"));
            }
        }
        manifest.validate()?;
        Ok(changes)
    }
}

/// Whether instances of `old` can serve `new` as they are: everything but
/// `scaling.min_instances`, `max_instances` and `concurrency` (which the
/// pool applies to running instances) is the same. Memory, CPU,
/// environment, port or health path need new instances.
pub fn same_instances(old: &Manifest, new: &Manifest) -> bool {
    let mut probe = new.clone();
    probe.scaling.min_instances = old.scaling.min_instances;
    probe.scaling.max_instances = old.scaling.max_instances;
    probe.scaling.concurrency = old.scaling.concurrency;
    probe == *old
}

/// Names what an instance of `route` is made of besides its image, for a
/// label on each instance: 16 hex digits of the SHA-256 of the JSON of the
/// manifest with the three counts zeroed (what [`same_instances`] compares)
/// and of the secrets by name (they are in its environment too). A
/// restarted proxy adopts a container of an earlier deployment whose
/// digest is the route's (`cpub scale` keeps running instances, whose
/// deployment label stays the earlier id); one started before a secret
/// changed has another digest. Equal routes give equal digests within one
/// version of this crate; a version that serialises differently only makes
/// digests differ (no adoption by digest), never match wrongly.
pub fn instances_digest(route: &Route) -> String {
    use sha2::{Digest, Sha256};
    let mut probe = route.config.clone();
    probe.scaling.min_instances = 0;
    probe.scaling.max_instances = 0;
    probe.scaling.concurrency = 0;
    let secrets: std::collections::BTreeMap<&str, &str> = route
        .secrets
        .iter()
        .map(|s| (s.name.as_str(), s.value.0.as_str()))
        .collect();
    let json = serde_json::to_vec(&(probe, secrets)).expect("a manifest serialises");
    let hex = crate::signing::hex_lower(&Sha256::digest(json).into());
    String::from_utf8_lossy(&hex[..16]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<WatchQuery, String> {
        serde_urlencoded::from_str(query).map_err(|e| e.to_string())
    }

    #[test]
    fn watch_query_round_trips() {
        let node = NodeName::try_from("edge-1.a_b".to_owned()).unwrap();
        for query in [
            WatchQuery::default(),
            WatchQuery {
                since: Some(0),
                ..WatchQuery::default()
            },
            WatchQuery {
                since: Some(i64::MAX),
                wait_s: 0,
                node: Some(node.clone()),
            },
            WatchQuery {
                since: Some(-3),
                wait_s: 600,
                node: Some(node),
            },
        ] {
            let text = serde_urlencoded::to_string(&query).unwrap();
            assert_eq!(parse(&text), Ok(query.clone()), "{text}");
        }
        assert_eq!(
            serde_urlencoded::to_string(WatchQuery {
                since: Some(4),
                wait_s: 25,
                node: Some(NodeName::try_from("n1".to_owned()).unwrap()),
            })
            .unwrap(),
            "since=4&wait_s=25&node=n1"
        );
    }

    #[test]
    fn watch_query_defaults_and_clamp() {
        assert_eq!(parse(""), Ok(WatchQuery::default()));
        let q = parse("wait_s=600").unwrap();
        assert_eq!((q.wait_s, q.wait().as_secs()), (600, MAX_WAIT_S));
        assert_eq!(parse("since=7").unwrap().wait().as_secs(), DEFAULT_WAIT_S);
    }

    #[test]
    fn watch_query_refuses_bad_values() {
        for (query, expected) in [
            ("since=abc", "integer revision, got \"abc\""),
            ("since=", "integer revision, got \"\""),
            ("since=1.5", "integer revision"),
            ("since=99999999999999999999", "integer revision"),
            ("wait_s=-1", "whole number of seconds"),
            ("wait_s=1e3", "whole number of seconds"),
            ("node=", "1 to 63"),
            ("node=a%20b", "1 to 63"),
            ("node=a%0Ab", "1 to 63"),
            ("node=caf%C3%A9", "1 to 63"),
            ("since=1&since=2", "duplicate field `since`"),
            ("sinse=1", "unknown field `sinse`"),
        ] {
            let err = parse(query).unwrap_err();
            assert!(err.contains(expected), "{query}: {err}");
        }
        let long = format!("node={}", "x".repeat(64));
        assert!(parse(&long).unwrap_err().contains("1 to 63"));
    }

    /// The digest is equal exactly where `same_instances` holds: the three
    /// counts change nothing, every other field does.
    #[test]
    fn the_instances_digest_follows_same_instances() {
        use crate::private::{SecretValue, SecretVar};
        let secret = |name: &str, value: &str| SecretVar {
            name: name.into(),
            value: SecretValue(value.into()),
        };
        let base = Route {
            function: "f".into(),
            deployment_id: 1,
            version: 1,
            image: "img".into(),
            config: Manifest::parse(
                "name = \"f\"\nruntime = \"binary\"\nentrypoint = \"f\"\n[env]\nA = \"1\"\n",
            )
            .unwrap(),
            keys: Vec::new(),
            secrets: vec![secret("S", "1"), secret("T", "2")],
            signing_keys: Vec::new(),
        };
        let digest = instances_digest(&base);
        assert_eq!(digest.len(), 16);
        assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()), "{digest}");
        // The counts, the deployment, the secrets' order: the same.
        let mut scaled = base.clone();
        scaled.deployment_id = 2;
        scaled.config.scaling.min_instances = 2;
        scaled.config.scaling.max_instances = 7;
        scaled.config.scaling.concurrency = 3;
        scaled.secrets.reverse();
        assert!(same_instances(&base.config, &scaled.config));
        assert_eq!(instances_digest(&scaled), digest);
        let changes: [fn(&mut Route); 7] = [
            |r| r.config.resources.memory_mb += 1,
            |r| r.config.resources.cpu /= 2.0,
            |r| drop(r.config.env.insert("A".into(), "2".into())),
            |r| r.config.port += 1,
            |r| r.config.scaling.idle_pause_s += 1,
            |r| r.secrets[0].value = SecretValue("rotated".into()),
            |r| drop(r.secrets.pop()),
        ];
        for change in changes {
            let mut other = base.clone();
            change(&mut other);
            assert_ne!(instances_digest(&other), digest, "{other:?}");
        }
    }
}
