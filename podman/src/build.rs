//! Image builds in a sandbox: the deployer's `RUN` steps get no network,
//! bounded memory, CPU, processes, wall-clock time and output, and Podman
//! never pulls a base image.
//!
//! What Podman 4.3's `POST /libpod/build` does with each knob (read in its
//! source, `pkg/api/handlers/compat/images_build.go`, and seen here):
//! - `networkmode` is a *policy* name. Anything else than `NetworkDisabled`,
//!   `NetworkEnabled` or a number means default, and the API's default puts
//!   `RUN` steps in the HOST's network namespace. `NetworkDisabled` gives
//!   each `RUN` a fresh network namespace with only `lo`.
//! - `isolation=oci` is explicit: with `chroot` isolation (the service's
//!   `BUILDAH_ISOLATION` could pick it) `RUN` steps see the host's network
//!   whatever `networkmode` says (seen: `eth0` inside the step).
//! - `pull` is ignored by the libpod endpoint; `pullpolicy=never` is what
//!   stops pulls (a missing value means "pull if missing"). Podman decides
//!   "libpod endpoint" from the request URI's text (`split("/")[2] ==
//!   "libpod"`): the request must be sent in origin form (`/v4.0.0/libpod/…`),
//!   an absolute URI makes it a Docker-compatible request.
//! - `memory`/`memswap`, `cpuperiod`/`cpuquota` and `ulimits` reach each
//!   `RUN` container. There is no pids limit parameter, and `nproc` does not
//!   bind uid 0; so each build gets its own cgroup (`cgroupparent`), made
//!   here with `pids.max` set: every `RUN` step of the build runs in a child
//!   of it, and the whole tree is killed through it (`cgroup.kill`).
//! - `dropcaps` takes capabilities from `RUN` steps (see [`DROPPED_CAPS`]).
//! - `idmappingoptions={"AutoUserNs":true,"AutoUserNsOpts":{"Size":N}}`
//!   (when [`BuildLimits::userns_size`] is set) runs the build in a user
//!   namespace of N ids that Podman picks, free, from its store's
//!   subordinate ids: root in a `RUN` step is an unprivileged host id. Only
//!   a store that chowns layers (the `vfs` driver) builds correct images
//!   that way: with overlay's idmapped mounts, Buildah 1.28 leaves the root
//!   directory owned by host root (runc: `mkdir …/rootfs/proc: permission
//!   denied`) and commits files owned by the HOST ids. So builds go to a
//!   Podman service of their own (`scripts/setup-host.sh`), and
//!   [`Podman::move_image`] hands the image to the instances' store. Its
//!   `vfs` chown path skips the working container's `/`, left to host root;
//!   the service's OCI runtime, `scripts/cpub-build-runc` (runc behind a
//!   check), gives that one directory to the namespace's root before each
//!   step, so a stage `FROM` an image can `RUN` (runc creates `/proc`,
//!   `/run`, …) and create entries in `/`.
//! - Dropping the API connection does NOT stop a running `RUN` step (seen:
//!   the step and its storage container stay until the step exits). So the
//!   wall clock and the output cap kill the build's cgroup, then give Podman
//!   a moment to fail the step and remove its container.
//!
//! The output is read as it streams: only a bounded tail is kept in memory.
//!
//! Over 600 lines on purpose: the build request, its streamed output, the
//! build's cgroup and the move of the built image are one sandbox, tested
//! together; the last 60 lines are unit tests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use http::{Method, Request};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::Value;

use crate::client::{Podman, PodmanError, encode, error_message};

/// Where `scripts/setup-host.sh` starts the Podman service that builds
/// (a store of its own, `vfs`, and its own runtime: see the module
/// documentation).
pub const DEFAULT_BUILD_SOCKET: &str = "/run/podman/cpub-build.sock";

/// Limits of one image build.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BuildLimits {
    /// Memory of each `RUN` step (no swap), bytes.
    pub memory_bytes: u64,
    /// CPU time of each `RUN` step, in thousandths of a core.
    pub millicpus: u64,
    /// Processes (and threads) of the whole build at once.
    pub pids: u64,
    /// Open files per process.
    pub nofile: u64,
    /// Most build output (bytes of text) before the build is stopped.
    pub max_output_bytes: u64,
    /// Bytes of the end of the output kept (in memory and in the result).
    pub log_tail_bytes: usize,
    /// Ids of the build's user namespace (`--userns=auto:size=N`); 0: none,
    /// `RUN` steps run as host root. Needs a `vfs` store (module docs).
    pub userns_size: u32,
}

impl Default for BuildLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 1 << 30,
            millicpus: 1000,
            pids: 512,
            nofile: 1024,
            max_output_bytes: 64 << 20,
            log_tail_bytes: 1 << 20,
            userns_size: 0,
        }
    }
}

/// Why the platform stopped a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStop {
    /// The wall clock ran out.
    Timeout(Duration),
    /// The output passed the cap (bytes).
    OutputLimit(u64),
}

impl std::fmt::Display for BuildStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout(t) => write!(
                f,
                "the build was stopped: it ran longer than the build time limit of {} s",
                t.as_secs()
            ),
            Self::OutputLimit(n) => write!(
                f,
                "the build was stopped: its output exceeded the limit of {n} bytes"
            ),
        }
    }
}

/// Outcome of an image build: the tail of Podman's output, and whether it
/// succeeded.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    pub ok: bool,
    /// The last [`BuildLimits::log_tail_bytes`] of the output (with a note
    /// of how much was cut), ending with the reason of a stop.
    pub log: String,
    /// Bytes of output the build produced in all.
    pub output_bytes: u64,
    /// Set when the platform stopped the build.
    pub stopped: Option<BuildStop>,
}

/// Capabilities taken from `RUN` steps (Podman's default set keeps them).
/// Left: CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETUID, SETGID, which build
/// tools use on their own files; a step has no network, so the network ones
/// serve nothing.
const DROPPED_CAPS: &[&str] = &[
    "CAP_AUDIT_WRITE",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_SYS_CHROOT",
];

/// Longest JSON line of the build stream kept whole; a longer one is taken
/// as raw text (Podman sends one line per chunk of output).
const MAX_LINE: usize = 4 << 20;
/// How long Podman gets to fail the killed step and remove its container.
const STOP_GRACE: Duration = Duration::from_secs(15);

impl Podman {
    /// Builds `tag` from an uncompressed tar of the build context, with the
    /// Containerfile at `containerfile`, under the default [`BuildLimits`]
    /// and a 10-minute wall clock.
    pub async fn build_image(
        &self,
        context_tar: &Path,
        containerfile: &str,
        tag: &str,
    ) -> Result<BuildOutput, PodmanError> {
        self.build_image_with(
            context_tar,
            containerfile,
            tag,
            &BuildLimits::default(),
            Duration::from_secs(600),
        )
        .await
    }

    /// Builds `tag` in the build sandbox (see the module documentation),
    /// stopping it after `timeout`. A failed or stopped build is `ok:
    /// false` with the reason in the log, not an error; errors mean Podman
    /// (or the cgroup file system) could not be used.
    pub async fn build_image_with(
        &self,
        context_tar: &Path,
        containerfile: &str,
        tag: &str,
        limits: &BuildLimits,
        timeout: Duration,
    ) -> Result<BuildOutput, PodmanError> {
        self.build_image_observed(context_tar, containerfile, tag, limits, timeout, None)
            .await
    }

    /// [`Podman::build_image_with`], handing each piece of the build's
    /// output to `observer` as it arrives (to show it live; the tail is
    /// still kept in the answer). The observer must not block.
    pub async fn build_image_observed(
        &self,
        context_tar: &Path,
        containerfile: &str,
        tag: &str,
        limits: &BuildLimits,
        timeout: Duration,
        observer: Option<BuildObserver>,
    ) -> Result<BuildOutput, PodmanError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // No image leaves this store while the build makes its own.
        let hold = self.hold_store().await?;
        let cgroup = BuildCgroup::create(limits.pids).map_err(|source| PodmanError::Sandbox {
            what: "creating the build's cgroup (is cpub-control root on the Podman host?)",
            source,
        })?;
        let mut run = BuildRun {
            tail: LogTail::new(limits.log_tail_bytes),
            output_bytes: 0,
            ok: true,
            stopped: None,
            observer,
        };
        let result = self
            .stream_build(
                context_tar,
                containerfile,
                tag,
                limits,
                timeout,
                deadline,
                &cgroup,
                &mut run,
            )
            .await;
        if run.stopped.is_some() {
            cgroup.kill();
        }
        cgroup.remove().await;
        let checked = match (result, run.stopped) {
            (Err(err), _) => Err(err),
            // A stop between steps may have let Podman finish the image.
            (Ok(()), Some(_)) => self.image_exists(tag).await,
            (Ok(()), None) if run.ok => self.image_exists(tag).await,
            (Ok(()), None) => Ok(false),
        };
        drop(hold);
        let exists = match checked {
            Ok(exists) => exists,
            Err(err) => {
                self.remove_pending().await;
                return Err(err);
            }
        };
        if let Some(stop) = run.stopped {
            run.ok = false;
            if exists {
                self.remove_when_idle(tag).await;
            }
            run.tail.push_str(&format!("error: {stop}\n"));
        } else if run.ok && !exists {
            run.ok = false;
            run.tail
                .push_str("error: build reported success but the image is missing\n");
        }
        self.remove_pending().await;
        Ok(BuildOutput {
            ok: run.ok,
            log: run.tail.into_string(),
            output_bytes: run.output_bytes,
            stopped: run.stopped,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream_build(
        &self,
        context_tar: &Path,
        containerfile: &str,
        tag: &str,
        limits: &BuildLimits,
        timeout: Duration,
        deadline: tokio::time::Instant,
        cgroup: &BuildCgroup,
        run: &mut BuildRun,
    ) -> Result<(), PodmanError> {
        let file =
            tokio::fs::File::open(context_tar)
                .await
                .map_err(|source| PodmanError::Context {
                    path: context_tar.to_owned(),
                    source,
                })?;
        let stream = tokio_util::io::ReaderStream::new(file).map_ok(Frame::data);
        let body = StreamBody::new(stream).boxed();
        let query = BuildQuery::new(tag, containerfile, limits, cgroup.parent_param());
        let path = format!("/build?{}", query.encode()?);
        let req = Request::builder()
            .method(Method::POST)
            // Origin-form on purpose: Podman 4.3 tells libpod requests from
            // Docker-compatible ones by the third `/`-separated part of the
            // request URI, so an absolute URI (`http://podman/v4.0.0/libpod/…`)
            // is taken as a Docker request, where `pullpolicy` is ignored and
            // a missing base image is pulled.
            .uri(format!("{}{path}", crate::client::API))
            .header("host", "podman")
            .header("content-type", "application/x-tar")
            .body(body)
            .map_err(|e| PodmanError::Decode(e.to_string()))?;
        let resp = match tokio::time::timeout_at(deadline, self.send(req)).await {
            Ok(resp) => resp?,
            Err(_) => {
                run.stopped = Some(BuildStop::Timeout(timeout));
                return Ok(());
            }
        };
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            // Podman answers 4xx/5xx with a JSON message for bad requests.
            let mut bytes = Vec::new();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    let room = MAX_LINE.saturating_sub(bytes.len());
                    bytes.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            run.ok = false;
            run.tail.push_str(&error_message(&bytes));
            run.tail.push_str("\n");
            return Ok(());
        }
        let mut pending: Vec<u8> = Vec::new();
        let mut grace_until: Option<tokio::time::Instant> = None;
        loop {
            let until = grace_until.unwrap_or(deadline);
            let frame = tokio::select! {
                frame = body.frame() => frame,
                () = tokio::time::sleep_until(until) => {
                    if grace_until.is_some() {
                        tracing::warn!(image = tag, "a stopped build did not end within the grace time");
                        return Ok(());
                    }
                    run.stopped = Some(BuildStop::Timeout(timeout));
                    cgroup.kill();
                    grace_until = Some(tokio::time::Instant::now() + STOP_GRACE);
                    continue;
                }
            };
            let Some(frame) = frame else { break };
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            let mut rest: &[u8] = &data;
            while !rest.is_empty() {
                match rest.iter().position(|b| *b == b'\n') {
                    Some(end) => {
                        if pending.is_empty() {
                            run.line(&rest[..end]);
                        } else {
                            pending.extend_from_slice(&rest[..end]);
                            run.line(&pending);
                            pending.clear();
                        }
                        rest = &rest[end + 1..];
                    }
                    None => {
                        pending.extend_from_slice(rest);
                        rest = &[];
                        if pending.len() > MAX_LINE {
                            run.raw(&pending);
                            pending.clear();
                        }
                    }
                }
            }
            if run.stopped.is_none() && run.output_bytes > limits.max_output_bytes {
                run.stopped = Some(BuildStop::OutputLimit(limits.max_output_bytes));
                cgroup.kill();
                grace_until = Some(tokio::time::Instant::now() + STOP_GRACE);
            }
        }
        if !pending.is_empty() {
            run.line(&pending);
        }
        Ok(())
    }
}

impl Podman {
    /// Moves image `tag` from this Podman's store to `to`'s (streamed:
    /// `GET /images/{tag}/get` into `POST /images/load`), then removes it
    /// here once no build runs ([`Podman::remove_when_idle`]), also when
    /// the move failed. Both stores are held while the image is copied.
    pub async fn move_image(&self, tag: &str, to: &Podman) -> Result<(), PodmanError> {
        let moved = async {
            let _from = self.hold_store().await?;
            let _to = to.hold_store().await?;
            self.copy_image(tag, to).await
        }
        .await;
        self.remove_when_idle(tag).await;
        moved
    }

    async fn copy_image(&self, tag: &str, to: &Podman) -> Result<(), PodmanError> {
        let get = format!("/images/{}/get?format=docker-archive", encode(tag));
        let req = Request::builder()
            .method(Method::GET)
            .uri(format!("{}{get}", crate::client::API))
            .header("host", "podman")
            .body(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .map_err(|e| PodmanError::Decode(e.to_string()))?;
        let resp = self.send(req).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.into_body().collect().await?.to_bytes();
            return Err(PodmanError::Api {
                method: Method::GET,
                path: get,
                status,
                message: error_message(&body),
            });
        }
        let archive = resp.into_body().map_err(std::io::Error::other).boxed();
        let load = "/images/load";
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("{}{load}", crate::client::API))
            .header("host", "podman")
            .header("content-type", "application/x-tar")
            .body(archive)
            .map_err(|e| PodmanError::Decode(e.to_string()))?;
        let resp = to.send(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(PodmanError::Api {
                method: Method::POST,
                path: load.into(),
                status,
                message: error_message(&body),
            });
        }
        Ok(())
    }
}

/// Sees a build's output as it arrives (see [`Podman::build_image_observed`]).
pub type BuildObserver = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// State of one build's output stream.
struct BuildRun {
    tail: LogTail,
    output_bytes: u64,
    ok: bool,
    stopped: Option<BuildStop>,
    observer: Option<BuildObserver>,
}

impl BuildRun {
    /// One line of Podman's stream: `{"stream": …}` or `{"error": …}`.
    fn line(&mut self, line: &[u8]) {
        if line.is_empty() {
            return;
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(v) => {
                if let Some(s) = v.get("stream").and_then(Value::as_str) {
                    self.output_bytes += s.len() as u64;
                    self.tail.push_str(s);
                    self.observe(s);
                }
                if let Some(s) = v.get("error").and_then(Value::as_str) {
                    self.ok = false;
                    let mut text = format!("error: {s}");
                    if !s.ends_with('\n') {
                        text.push('\n');
                    }
                    self.tail.push_str(&text);
                    self.observe(&text);
                }
            }
            Err(_) => self.raw(line),
        }
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.output_bytes += bytes.len() as u64;
        self.tail.push(bytes);
        self.tail.push(b"\n");
        if self.observer.is_some() {
            let text = format!("{}\n", String::from_utf8_lossy(bytes));
            self.observe(&text);
        }
    }

    fn observe(&self, text: &str) {
        if let Some(observer) = &self.observer {
            observer(text);
        }
    }
}

/// The last `cap` bytes of a stream, in at most `2 * cap` bytes of memory.
#[derive(Debug)]
pub struct LogTail {
    buf: Vec<u8>,
    cap: usize,
    /// Bytes dropped from the front.
    cut: u64,
}

impl LogTail {
    pub fn new(cap: usize) -> Self {
        Self {
            buf: Vec::new(),
            cap: cap.max(1),
            cut: 0,
        }
    }

    pub fn push_str(&mut self, s: &str) {
        self.push(s.as_bytes());
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.len() >= self.cap {
            self.cut += (self.buf.len() + bytes.len() - self.cap) as u64;
            self.buf.clear();
            self.buf.extend_from_slice(&bytes[bytes.len() - self.cap..]);
            return;
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > 2 * self.cap {
            let drop = self.buf.len() - self.cap;
            self.buf.drain(..drop);
            self.cut += drop as u64;
        }
    }

    /// The kept text (at most `cap` bytes of output, cut at a character
    /// boundary), after a line saying how much was cut.
    pub fn into_string(self) -> String {
        let mut start = self.buf.len().saturating_sub(self.cap);
        let mut cut = self.cut + start as u64;
        // Skip UTF-8 continuation bytes so the text starts on a character.
        while start < self.buf.len() && (self.buf[start] & 0xC0) == 0x80 {
            start += 1;
            cut += 1;
        }
        let text = String::from_utf8_lossy(&self.buf[start..]);
        if cut == 0 {
            text.into_owned()
        } else {
            format!("[… {cut} bytes of build output cut …]\n{text}")
        }
    }
}

static BUILDS: AtomicU64 = AtomicU64::new(0);

/// The cgroup a build's `RUN` steps run under: `/<name>` holds the limits
/// (pids) and is the kill switch; Podman runs each step in `/<name>/run`.
#[derive(Debug)]
struct BuildCgroup {
    name: String,
    /// The cgroup v2 directory (pure v2, or the `unified` hierarchy of a
    /// hybrid layout), which has `cgroup.kill`.
    v2: Option<PathBuf>,
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

impl BuildCgroup {
    fn create(pids: u64) -> std::io::Result<Self> {
        let root = Path::new(CGROUP_ROOT);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "cpub-build-{}-{}-{nanos:x}",
            std::process::id(),
            BUILDS.fetch_add(1, Ordering::Relaxed)
        );
        let pure_v2 = root.join("cgroup.controllers").exists();
        let v2_root = if pure_v2 {
            Some(root.to_owned())
        } else if root.join("unified/cgroup.controllers").exists() {
            Some(root.join("unified"))
        } else {
            None
        };
        let cgroup = Self {
            v2: v2_root.map(|r| r.join(&name)),
            name,
        };
        let limit = |cgroup: &Self| -> std::io::Result<()> {
            if let Some(dir) = &cgroup.v2 {
                std::fs::create_dir(dir)?;
            }
            let pids_dir = if pure_v2 {
                root.join(&cgroup.name)
            } else {
                let dir = root.join("pids").join(&cgroup.name);
                std::fs::create_dir(&dir)?;
                dir
            };
            std::fs::write(pids_dir.join("pids.max"), pids.to_string())
        };
        if let Err(err) = limit(&cgroup) {
            for dir in cgroup.dirs() {
                let _ = std::fs::remove_dir(dir);
            }
            return Err(err);
        }
        if cgroup.v2.is_none() {
            tracing::warn!("no cgroup v2 hierarchy: a build that runs too long cannot be killed");
        }
        Ok(cgroup)
    }

    /// The `cgroupparent` of the build: each `RUN` step's own cgroup.
    fn parent_param(&self) -> String {
        format!("/{}/run", self.name)
    }

    /// Kills every process of the build, at once and recursively.
    fn kill(&self) {
        let Some(dir) = &self.v2 else { return };
        if let Err(err) = std::fs::write(dir.join("cgroup.kill"), "1")
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!(%err, cgroup = %dir.display(), "could not kill a build");
        }
    }

    /// Every directory of this build in every hierarchy, deepest first.
    fn dirs(&self) -> Vec<PathBuf> {
        let root = Path::new(CGROUP_ROOT);
        let mut tops = vec![root.join(&self.name)];
        if let Ok(entries) = std::fs::read_dir(root) {
            for entry in entries.flatten() {
                tops.push(entry.path().join(&self.name));
            }
        }
        let mut dirs = Vec::new();
        for top in tops {
            if top.is_dir() {
                dirs.push(top.join("run"));
                dirs.push(top);
            }
        }
        dirs
    }

    /// Removes the build's cgroups once their processes are gone.
    async fn remove(&self) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let mut busy = false;
            for dir in self.dirs() {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(_) => busy = true,
                }
            }
            if !busy {
                return;
            }
            if Instant::now() > until {
                tracing::warn!(cgroup = %self.name, "build cgroup still busy; left in place");
                return;
            }
            self.kill();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Kills and removes the cgroups of builds whose process is gone: a control
/// plane that died during a build leaves the running step behind (Podman
/// does not stop it). Returns how many builds were reaped.
pub async fn reap_orphaned_builds() -> usize {
    let root = Path::new(CGROUP_ROOT);
    let mut names = std::collections::BTreeSet::new();
    for hierarchy in [root.to_owned(), root.join("unified"), root.join("pids")] {
        let Ok(entries) = std::fs::read_dir(&hierarchy) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("cpub-build-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                names.insert(name);
            }
        }
    }
    for name in &names {
        let cgroup = BuildCgroup {
            name: name.clone(),
            v2: [root.to_owned(), root.join("unified")]
                .into_iter()
                .filter(|r| r.join("cgroup.controllers").exists())
                .map(|r| r.join(name))
                .find(|d| d.is_dir()),
        };
        tracing::warn!(cgroup = %name, "killing the steps of a build whose control plane is gone");
        cgroup.kill();
        cgroup.remove().await;
    }
    names.len()
}

/// The query of libpod's `POST /build`: every parameter named once, in a
/// type, as the container spec is (`spec.rs`): a misspelt key is a compile
/// error here, where Podman would ignore it (no pull, no network, the
/// limits). JSON-valued parameters are JSON text, as libpod reads them.
#[derive(Debug, serde::Serialize)]
struct BuildQuery<'a> {
    t: &'a str,
    dockerfile: &'a str,
    rm: bool,
    forcerm: bool,
    layers: bool,
    isolation: &'static str,
    pullpolicy: &'static str,
    networkmode: &'static str,
    dropcaps: String,
    memory: u64,
    memswap: u64,
    cpuperiod: u64,
    cpuquota: u64,
    ulimits: String,
    cgroupparent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    idmappingoptions: Option<String>,
}

impl<'a> BuildQuery<'a> {
    fn new(
        tag: &'a str,
        containerfile: &'a str,
        limits: &BuildLimits,
        cgroupparent: String,
    ) -> Self {
        let ulimits = serde_json::json!([
            format!("nofile={0}:{0}", limits.nofile),
            format!("nproc={0}:{0}", limits.pids),
        ]);
        let idmappingoptions = (limits.userns_size > 0).then(|| {
            serde_json::json!({
                "AutoUserNs": true,
                "AutoUserNsOpts": {"Size": limits.userns_size},
            })
            .to_string()
        });
        BuildQuery {
            t: tag,
            dockerfile: containerfile,
            rm: true,
            forcerm: true,
            layers: false,
            isolation: "oci",
            pullpolicy: "never",
            networkmode: "NetworkDisabled",
            dropcaps: serde_json::json!(DROPPED_CAPS).to_string(),
            memory: limits.memory_bytes,
            memswap: limits.memory_bytes,
            cpuperiod: 100_000,
            cpuquota: limits.millicpus.saturating_mul(100).max(1000),
            ulimits: ulimits.to_string(),
            cgroupparent,
            idmappingoptions,
        }
    }

    fn encode(&self) -> Result<String, PodmanError> {
        serde_urlencoded::to_string(self)
            .map_err(|e| PodmanError::Transport(format!("encoding the build query: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_query_names_every_setting_once() {
        let limits = BuildLimits {
            memory_bytes: 512 << 20,
            millicpus: 500,
            pids: 64,
            nofile: 1024,
            userns_size: 65536,
            ..BuildLimits::default()
        };
        let query = BuildQuery::new(
            "localhost/cpub-f:3",
            "Containerfile",
            &limits,
            "/b1/run".into(),
        );
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(&query.encode().unwrap()).unwrap();
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "t",
                "dockerfile",
                "rm",
                "forcerm",
                "layers",
                "isolation",
                "pullpolicy",
                "networkmode",
                "dropcaps",
                "memory",
                "memswap",
                "cpuperiod",
                "cpuquota",
                "ulimits",
                "cgroupparent",
                "idmappingoptions"
            ]
        );
        let get = |k: &str| pairs.iter().find(|(key, _)| key == k).unwrap().1.as_str();
        assert_eq!(get("t"), "localhost/cpub-f:3");
        assert_eq!(
            (get("pullpolicy"), get("networkmode")),
            ("never", "NetworkDisabled")
        );
        assert_eq!((get("memory"), get("memswap")), ("536870912", "536870912"));
        assert_eq!((get("cpuperiod"), get("cpuquota")), ("100000", "50000"));
        assert_eq!(get("ulimits"), r#"["nofile=1024:1024","nproc=64:64"]"#);
        let caps: Vec<String> = serde_json::from_str(get("dropcaps")).unwrap();
        assert_eq!(caps, DROPPED_CAPS);
        let ids: Value = serde_json::from_str(get("idmappingoptions")).unwrap();
        assert_eq!(ids["AutoUserNsOpts"]["Size"], 65536);
        // No user namespace asked: no id mapping options at all.
        let plain = BuildLimits {
            userns_size: 0,
            ..limits
        };
        let query = BuildQuery::new("t", "Containerfile", &plain, String::new())
            .encode()
            .unwrap();
        assert!(!query.contains("idmappingoptions"), "{query}");
    }

    #[test]
    fn log_tail_keeps_the_end_in_bounded_memory() {
        let mut t = LogTail::new(10);
        t.push_str("hello ");
        assert_eq!(t.into_string(), "hello ");
        let mut t = LogTail::new(10);
        for i in 0..1000 {
            t.push_str(&format!("{i}\n"));
            assert!(t.buf.len() <= 20);
        }
        let s = t.into_string();
        assert!(s.ends_with("\n7\n998\n999\n"), "{s}");
        assert!(
            s.starts_with("[… 3880 bytes of build output cut …]\n"),
            "{s}"
        );
        // One huge push keeps its last bytes only.
        let mut t = LogTail::new(4);
        t.push(b"abc");
        t.push(b"0123456789");
        assert_eq!(t.into_string(), "[… 9 bytes of build output cut …]\n6789");
        // Never starts inside a character.
        let mut t = LogTail::new(3);
        t.push_str("ééé");
        assert_eq!(t.into_string(), "[… 4 bytes of build output cut …]\né");
    }

    #[test]
    fn build_lines_are_parsed() {
        let mut run = BuildRun {
            tail: LogTail::new(1024),
            observer: None,
            output_bytes: 0,
            ok: true,
            stopped: None,
        };
        run.line(br#"{"stream":"STEP 1/2: FROM scratch\n"}"#);
        run.line(b"");
        assert!(run.ok);
        run.line(br#"{"errorDetail":{"message":"boom"},"error":"boom\n"}"#);
        run.line(b"not json");
        assert!(!run.ok);
        assert_eq!(
            run.tail.into_string(),
            "STEP 1/2: FROM scratch\nerror: boom\nnot json\n"
        );
        assert_eq!(run.output_bytes, 23 + 8);
    }

    #[test]
    fn stops_explain_themselves() {
        assert_eq!(
            BuildStop::Timeout(Duration::from_secs(3)).to_string(),
            "the build was stopped: it ran longer than the build time limit of 3 s"
        );
        assert!(BuildStop::OutputLimit(10).to_string().contains("10 bytes"));
    }
}
