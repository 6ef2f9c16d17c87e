//! A thin client for the Podman REST API (libpod v4) on its Unix socket.
//!
//! We speak the API directly over hyper 1 instead of through the
//! `podman-api` crate; see ARCHITECTURE.md ("Why not podman-api") for why.
//! Calls share a small pool of kept-alive connections; the event stream and
//! builds get their own (`connection.rs`). Every request is sent in origin
//! form, so Podman serves the libpod API, not its Docker-compatible one.
//!
//! Over 600 lines: a method per libpod call the project makes (about 620
//! lines, each a request and the decoding of its answer) and 45 of tests.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::connection::{Connections, StreamBody};
use crate::spec::ContainerSpec;

/// API version prefix; Podman 4.3 serves v4.
pub(crate) const API: &str = "/v4.0.0/libpod";

/// Errors from the Podman API.
#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    #[error("podman socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("podman api transport: {0}")]
    Http(#[from] hyper::Error),
    #[error("podman api transport: {0}")]
    Transport(String),
    #[error("podman api {method} {path}: {status}: {message}")]
    Api {
        method: Method,
        path: String,
        status: StatusCode,
        message: String,
    },
    #[error("podman api: unexpected answer: {0}")]
    Decode(String),
    #[error("reading build context {path}: {source}")]
    Context {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("build sandbox: {what}: {source}")]
    Sandbox {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("image store lock {path}: {source}")]
    StoreLock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("removing image {image}: images were still being made in the store after {} s", waited.as_secs())]
    StoreBusy {
        image: String,
        waited: std::time::Duration,
    },
}

impl PodmanError {
    /// The HTTP status Podman answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What `inspect` tells the pool about one container.
#[derive(Debug, Clone)]
pub struct ContainerState {
    pub id: String,
    pub name: String,
    /// `created`, `running`, `paused`, `exited`, …
    pub status: String,
    /// Host pid of the container's process (0 when not running).
    pub pid: u32,
    /// Address on the given network, if attached and running.
    pub ip: Option<IpAddr>,
    pub labels: BTreeMap<String, String>,
    /// The raw inspect document, for checks that need more.
    pub raw: Value,
}

/// One row of a container listing.
#[derive(Debug, Clone, Deserialize)]
pub struct ContainerSummary {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Names", default)]
    pub names: Vec<String>,
    #[serde(rename = "State", default)]
    pub state: String,
    /// The image as named when the container was made.
    #[serde(rename = "Image", default)]
    pub image: String,
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// Client for one Podman API socket. Cheap to clone: clones share the
/// kept-alive connections.
#[derive(Debug, Clone)]
pub struct Podman {
    conns: Connections,
}

/// Default location of the rootful Podman API socket.
pub const DEFAULT_SOCKET: &str = "/run/podman/podman.sock";

impl Podman {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            conns: Connections::new(socket.into()),
        }
    }

    pub fn socket(&self) -> &Path {
        self.conns.socket()
    }

    /// Sends `req` (origin-form URI) on a connection of its own: for
    /// answers that stream for long (builds, events).
    pub(crate) async fn send(
        &self,
        req: Request<StreamBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, PodmanError> {
        self.conns.send_own(req).await
    }

    /// Sends a request on a pooled connection; `path` is below [`API`].
    async fn send_pooled(
        &self,
        method: Method,
        path: &str,
        json_body: Option<Bytes>,
    ) -> Result<http::Response<hyper::body::Incoming>, PodmanError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{API}{path}"));
        if json_body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let req = builder
            .body(Full::new(json_body.unwrap_or_default()))
            .map_err(|e| PodmanError::Decode(format!("request {path}: {e}")))?;
        self.conns.send_pooled(req).await
    }

    /// Sends a request and reads the whole answer. Statuses in `ok_extra`
    /// (such as 304 "already started") count as success.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        ok_extra: &[StatusCode],
    ) -> Result<(StatusCode, Bytes), PodmanError> {
        let resp = self.send_pooled(method.clone(), path, body).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if status.is_success() || ok_extra.contains(&status) {
            Ok((status, bytes))
        } else {
            Err(api_error(method, path, status, &bytes))
        }
    }

    async fn call_json(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Value, PodmanError> {
        let (_, bytes) = self.call(method, path, body, &[]).await?;
        serde_json::from_slice(&bytes).map_err(|e| PodmanError::Decode(format!("{path}: {e}")))
    }

    /// `GET /_ping`-like liveness check of the API.
    pub async fn ping(&self) -> Result<(), PodmanError> {
        self.call(Method::GET, "/info", None, &[]).await.map(drop)
    }

    pub async fn image_exists(&self, name: &str) -> Result<bool, PodmanError> {
        let path = format!("/images/{}/exists", encode(name));
        match self.call(Method::GET, &path, None, &[]).await {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes an image and any container still using it, without the store
    /// lock (see [`crate::store`]). A missing image is fine.
    pub(crate) async fn remove_image_unlocked(&self, name: &str) -> Result<(), PodmanError> {
        let path = format!("/images/{}?force=true", encode(name));
        match self.call(Method::DELETE, &path, None, &[]).await {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates the bridge network if it does not exist.
    pub async fn ensure_network(&self, name: &str) -> Result<(), PodmanError> {
        self.ensure_network_with(name, None).await
    }

    /// Creates the bridge network if it does not exist, on `subnet` (CIDR,
    /// e.g. `10.90.0.0/20`) when given, else on the subnet Podman picks
    /// (a /24). An existing network is left as it is: see
    /// [`Podman::network_subnets`].
    pub async fn ensure_network_with(
        &self,
        name: &str,
        subnet: Option<&str>,
    ) -> Result<(), PodmanError> {
        let path = format!("/networks/{}/exists", encode(name));
        match self.call(Method::GET, &path, None, &[]).await {
            Ok(_) => return Ok(()),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {}
            Err(e) => return Err(e),
        }
        let mut request = json!({ "name": name, "driver": "bridge" });
        if let Some(subnet) = subnet {
            request["subnets"] = json!([{ "subnet": subnet }]);
        }
        let body = Bytes::from(request.to_string());
        match self
            .call(
                Method::POST,
                "/networks/create",
                Some(body),
                &[StatusCode::CONFLICT],
            )
            .await
        {
            Ok(_) => Ok(()),
            // Another process created it between our check and create.
            Err(e)
                if e.status() == Some(StatusCode::INTERNAL_SERVER_ERROR)
                    && e.to_string().contains("already") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The subnets (CIDR) of network `name`.
    pub async fn network_subnets(&self, name: &str) -> Result<Vec<String>, PodmanError> {
        let path = format!("/networks/{}/json", encode(name));
        let v = self.call_json(Method::GET, &path, None).await?;
        Ok(v.get("subnets")
            .and_then(Value::as_array)
            .map(|subnets| {
                subnets
                    .iter()
                    .filter_map(|s| s.get("subnet").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The bridge of network `name` (`podman2`, say); `None` for a network
    /// of another driver (a macvlan network's interface is the host's
    /// parent device, never to be touched).
    pub async fn network_bridge(&self, name: &str) -> Result<Option<String>, PodmanError> {
        let path = format!("/networks/{}/json", encode(name));
        let v = self.call_json(Method::GET, &path, None).await?;
        if v.get("driver").and_then(Value::as_str) != Some("bridge") {
            return Ok(None);
        }
        Ok(v.get("network_interface")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned))
    }

    /// Removes network `name` (it must have no containers); a missing one is fine.
    pub async fn remove_network(&self, name: &str) -> Result<(), PodmanError> {
        let path = format!("/networks/{}", encode(name));
        match self.call(Method::DELETE, &path, None, &[]).await {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates a container from `spec`; returns its id.
    pub async fn create_container(&self, spec: &ContainerSpec) -> Result<String, PodmanError> {
        let body = serde_json::to_vec(spec)
            .map_err(|e| PodmanError::Decode(format!("container spec: {e}")))?;
        let v = self
            .call_json(Method::POST, "/containers/create", Some(body.into()))
            .await?;
        v.get("Id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| PodmanError::Decode(format!("create answered without Id: {v}")))
    }

    /// Starts a container; already running (304) counts as success.
    pub async fn start_container(&self, id: &str) -> Result<(), PodmanError> {
        let path = format!("/containers/{}/start", encode(id));
        self.call(Method::POST, &path, None, &[StatusCode::NOT_MODIFIED])
            .await
            .map(drop)
    }

    /// Initializes a created container (`podman init`): its namespaces,
    /// network, cgroup and conmon are set up and runc's init process waits
    /// for the `start`, which then only runs the function's process.
    /// Already initialized (304) counts as success.
    pub async fn init_container(&self, id: &str) -> Result<(), PodmanError> {
        let path = format!("/containers/{}/init", encode(id));
        self.call(Method::POST, &path, None, &[StatusCode::NOT_MODIFIED])
            .await
            .map(drop)
    }

    pub async fn pause_container(&self, id: &str) -> Result<(), PodmanError> {
        let path = format!("/containers/{}/pause", encode(id));
        self.call(Method::POST, &path, None, &[StatusCode::NOT_MODIFIED])
            .await
            .map(drop)
    }

    pub async fn unpause_container(&self, id: &str) -> Result<(), PodmanError> {
        let path = format!("/containers/{}/unpause", encode(id));
        self.call(Method::POST, &path, None, &[StatusCode::NOT_MODIFIED])
            .await
            .map(drop)
    }

    /// Kills (SIGKILL, no stop timeout) and removes a container with its
    /// anonymous volumes at once. A missing one is fine.
    pub async fn remove_container(&self, id: &str) -> Result<(), PodmanError> {
        // libpod's names: `volumes` (Docker's `v` is ignored) and `timeout`
        // (ignored by the compatible API, which waits the stop timeout).
        let path = format!(
            "/containers/{}?force=true&volumes=true&timeout=0",
            encode(id)
        );
        // Podman 4.3 sometimes fails a removal with `…/userdata/shm: device
        // or resource busy` after it did remove the container (or on the
        // way there): one more try settles it, as gone (404) or done.
        let mut tries = 0;
        loop {
            tries += 1;
            match self.call(Method::DELETE, &path, None, &[]).await {
                Ok(_) => return Ok(()),
                Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => return Ok(()),
                Err(PodmanError::Api { message, .. })
                    if tries == 1 && message.contains("device or resource busy") =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Inspects a container; `network` selects which address is reported.
    pub async fn inspect_container(
        &self,
        id: &str,
        network: &str,
    ) -> Result<ContainerState, PodmanError> {
        let raw = self
            .call_json(
                Method::GET,
                &format!("/containers/{}/json", encode(id)),
                None,
            )
            .await?;
        let ip = raw
            .pointer(&format!("/NetworkSettings/Networks/{network}/IPAddress"))
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok());
        let labels = raw
            .pointer("/Config/Labels")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        Ok(ContainerState {
            id: raw
                .get("Id")
                .and_then(Value::as_str)
                .unwrap_or(id)
                .to_owned(),
            name: raw
                .get("Name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            status: raw
                .pointer("/State/Status")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            pid: raw
                .pointer("/State/Pid")
                .and_then(Value::as_u64)
                .unwrap_or(0) as u32,
            ip,
            labels,
            raw,
        })
    }

    /// Lists all containers (running or not) that carry every `key=value` label given.
    pub async fn list_containers(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<ContainerSummary>, PodmanError> {
        let filter: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let filters = json!({ "label": filter }).to_string();
        let path = format!("/containers/json?all=true&filters={}", encode(&filters));
        let v = self.call_json(Method::GET, &path, None).await?;
        serde_json::from_value(v).map_err(|e| PodmanError::Decode(format!("container list: {e}")))
    }
}

/// Most bytes of a container's log read when it exited (its tail is kept).
const MAX_LOG_READ_BYTES: usize = 1024 * 1024;

impl Podman {
    /// The last `lines` lines of a container's stdout and stderr (in the
    /// order written), at most `max_bytes` of them (the end is kept), as
    /// lossy UTF-8. At most [`MAX_LOG_READ_BYTES`] of Podman's answer are
    /// read: a container that printed one enormous line cannot make this
    /// hold more than that.
    pub async fn container_logs_tail(
        &self,
        id: &str,
        lines: u32,
        max_bytes: usize,
    ) -> Result<String, PodmanError> {
        let path = format!(
            "/containers/{}/logs?stdout=true&stderr=true&tail={lines}",
            encode(id)
        );
        let resp = self.send_pooled(Method::GET, &path, None).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut raw: Vec<u8> = Vec::new();
        let mut cut = false;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            let room = MAX_LOG_READ_BYTES.saturating_sub(raw.len());
            raw.extend_from_slice(&data[..data.len().min(room)]);
            if data.len() > room {
                cut = true;
                break;
            }
        }
        if !status.is_success() {
            return Err(api_error(Method::GET, &path, status, &raw));
        }
        let text = demux_logs(&raw);
        Ok(tail_str(&text, max_bytes, cut))
    }

    /// Ids of the containers (any state) created from image `image`.
    pub async fn containers_using_image(&self, image: &str) -> Result<Vec<String>, PodmanError> {
        let filters = json!({ "ancestor": [image] }).to_string();
        let path = format!("/containers/json?all=true&filters={}", encode(&filters));
        let v = self.call_json(Method::GET, &path, None).await?;
        let rows: Vec<ContainerSummary> = serde_json::from_value(v)
            .map_err(|e| PodmanError::Decode(format!("container list: {e}")))?;
        Ok(rows.into_iter().map(|c| c.id).collect())
    }
}

/// The text of a non-tty container's log stream: frames of an 8-byte head
/// (stream 0/1/2, three zero bytes, a big-endian u32 length) and the bytes.
/// Anything that is not framed so (a tty container) is taken as it is; a
/// frame cut short keeps what arrived.
fn demux_logs(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while !rest.is_empty() {
        let framed = rest.len() >= 8 && rest[0] <= 2 && rest[1..4] == [0, 0, 0];
        if !framed {
            out.extend_from_slice(rest);
            break;
        }
        let len = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let body = &rest[8..];
        let take = len.min(body.len());
        out.extend_from_slice(&body[..take]);
        rest = &body[take..];
    }
    out
}

/// The last `max_bytes` of `bytes` as lossy UTF-8, starting on a line
/// when one starts in the kept part; marked when something was cut.
fn tail_str(bytes: &[u8], max_bytes: usize, cut_before: bool) -> String {
    let mut start = bytes.len().saturating_sub(max_bytes);
    let mut cut = cut_before || start > 0;
    if start > 0
        && let Some(nl) = bytes[start..].iter().position(|b| *b == b'\n')
        && start + nl + 1 < bytes.len()
    {
        start += nl + 1;
        cut = true;
    }
    let text = String::from_utf8_lossy(&bytes[start..]);
    if cut {
        format!("[…]\n{text}")
    } else {
        text.into_owned()
    }
}

/// One container event from Podman's event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub id: String,
    /// `died`, `start`, `pause`, `remove`, …
    pub action: String,
}

impl Podman {
    /// Follows container events of containers carrying every given label,
    /// sending each into `tx` until the stream or the receiver ends.
    pub async fn container_events(
        &self,
        labels: &[(&str, &str)],
        tx: &tokio::sync::mpsc::UnboundedSender<ContainerEvent>,
    ) -> Result<(), PodmanError> {
        let label: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let filters = json!({ "type": ["container"], "label": label }).to_string();
        let path = format!("/events?stream=true&filters={}", encode(&filters));
        let req = Request::builder()
            .method(Method::GET)
            .uri(format!("{API}{path}"))
            .body(
                Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .map_err(|e| PodmanError::Decode(e.to_string()))?;
        let resp = self.send(req).await?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.into_body().collect().await?.to_bytes();
            return Err(api_error(Method::GET, "/events", status, &bytes));
        }
        let mut body = resp.into_body();
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Some(event) = parse_event(&line)
                    && tx.send(event).is_err()
                {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// Reads one event line; Podman 4 writes both `Action` and `status`.
fn parse_event(line: &[u8]) -> Option<ContainerEvent> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let action = v
        .get("Action")
        .or_else(|| v.get("status"))
        .and_then(Value::as_str)?;
    let id = v
        .pointer("/Actor/ID")
        .or_else(|| v.get("id"))
        .and_then(Value::as_str)?;
    Some(ContainerEvent {
        id: id.to_owned(),
        action: action.to_owned(),
    })
}

pub(crate) fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned())
}

fn api_error(method: Method, path: &str, status: StatusCode, body: &[u8]) -> PodmanError {
    PodmanError::Api {
        method,
        path: path.to_owned(),
        status,
        message: error_message(body),
    }
}

/// Percent-encodes a query or path component.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_events() {
        let line = br#"{"status":"died","id":"abc","Type":"container","Action":"died","Actor":{"ID":"abc","Attributes":{}}}"#;
        let event = super::parse_event(line).unwrap();
        assert_eq!(
            event,
            super::ContainerEvent {
                id: "abc".into(),
                action: "died".into()
            }
        );
        assert!(super::parse_event(b"not json").is_none());
    }

    #[test]
    fn demuxes_log_frames_and_keeps_a_bounded_tail() {
        let mut raw = vec![1, 0, 0, 0, 0, 0, 0, 5];
        raw.extend_from_slice(b"boom\n");
        raw.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 4]);
        raw.extend_from_slice(b"err\n");
        assert_eq!(super::demux_logs(&raw), b"boom\nerr\n");
        // A frame cut short keeps what arrived; an unframed stream is taken as is.
        assert_eq!(super::demux_logs(&raw[..11]), b"boo");
        assert_eq!(super::demux_logs(b"plain tty output"), b"plain tty output");
        assert_eq!(super::tail_str(b"a\nb\n", 100, false), "a\nb\n");
        let long = "line\n".repeat(1000);
        let t = super::tail_str(long.as_bytes(), 64, false);
        assert!(t.starts_with("[…]\nline\n") && t.len() <= 64 + 6, "{t:?}");
        assert_eq!(super::tail_str(b"ok", 10, true), "[…]\nok");
        // Invalid UTF-8 does not fail.
        assert_eq!(super::tail_str(&[0xff, b'x'], 10, false), "\u{fffd}x");
    }

    #[test]
    fn encodes_components() {
        assert_eq!(super::encode("localhost/a:v1"), "localhost%2Fa%3Av1");
        assert_eq!(
            super::encode(r#"{"label":["a=b"]}"#),
            "%7B%22label%22%3A%5B%22a%3Db%22%5D%7D"
        );
    }
}
