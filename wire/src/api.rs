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
}

/// `GET /api/v1/routes?since=N&wait_s=S`: the whole route table at a
/// revision. The call blocks (long poll) until the revision is above `since`
/// or `wait_s` passes, then answers with the current table either way.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RouteTable {
    pub revision: i64,
    pub routes: Vec<Route>,
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
