//! Capture of function logs on the node: every instance's stdout and
//! stderr, line by line, with the time conmon read it, the function, the
//! deployment, the instance and the stream — and, on instances that serve
//! one call at a time, the request id of the call it served meanwhile.
//!
//! **How.** Podman's conmon writes each container's output to a `k8s-file`
//! log (`<time> <stream> <P|F> <bytes>`, a record per read of at most 8 KiB:
//! `P` continues a line, `F` ends it). A *tailer* task per instance opens
//! that file as soon as the container runs and reads it from its start
//! (ARCHITECTURE.md, "Function logs", says why a file and not Podman's log
//! stream, with figures). It keeps the file open, so when the pool removes
//! the container (scale to zero, a crash, a deploy) the lines written up to
//! the end are still read from the unlinked file; when conmon rotates it
//! (the container's log size limit) the old file is read to its end — once
//! more after the new one is seen — before the new one is opened. Reads
//! poll: right away while there is more, then every 25 ms growing to 250 ms
//! while nothing comes.
//!
//! **Bounds.** A line is cut at [`MAX_LINE_BYTES`] (a note says how much
//! went), a line without its end is sent after 1 s, bytes that are not
//! UTF-8 or are control characters are replaced ([`clean_line`]). Each
//! function may send `rate` lines/s per node (a token bucket with `burst`);
//! the lines over it are counted (`cpub_log_lines_dropped_total{reason=
//! "rate_limit"}`) and a `system` line "N lines dropped …" takes their
//! place. Lines wait for the shipper in one queue of at most `buffer_bytes`;
//! past it they are dropped and counted the same way (`buffer_full`).
//!
//! Tailers run on a thread of their own (`cpub-logs`), away from the call
//! path and the pool's tasks. The queue's lock is taken once per chunk read.
//!
//! **Restarts.** Every queued line carries where its file may be read again
//! from once it is shipped ([`Source`]); the shipper hands back what the
//! control plane acknowledged ([`LogHub::acknowledge`]) and [`offsets`]
//! saves it per container under the proxy's state directory. An adopted
//! instance is read from there, so lines printed while no proxy ran, or
//! still queued when the last one stopped, are shipped by the next one.
//!
//! Over 600 lines because about 500 of them are the unit tests of
//! the record parser, the line assembly under hostile output, attribution,
//! the rate limit, resuming from a saved offset, rotation and the graceful
//! stop, which read best next to that code; the parts (call journal, queue with
//! its acknowledgements and graceful stop, assembler, tailer) share private
//! types (`Queue`, `Marked`, `Pending`). The offsets' storage is apart, in
//! `logs/offsets.rs`.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use containerpub_wire::logs::{LogEntry, LogStream, MAX_LINE_BYTES, clean_line};
use prometheus::{IntCounterVec, IntGauge, register_int_counter_vec, register_int_gauge};
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::Notify;

use crate::runtime::{ContainerRuntime, short};

pub mod offsets;

pub use offsets::Position;
use offsets::{FileRead, Offsets, SavedName};

/// Settings of log capture.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Lines per second each function may send from this node.
    pub rate_lines_per_s: u32,
    /// Lines a function may send at once above its rate (the bucket's size).
    pub burst_lines: u32,
    /// Most bytes of lines waiting to be shipped (all functions).
    pub buffer_bytes: usize,
    /// Where each container's shipped offset is saved (the proxy's
    /// `<state-dir>/log-offsets`); `None`: not saved, adopted instances are
    /// read from the end of their file.
    pub offsets_dir: Option<PathBuf>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            rate_lines_per_s: 10_000,
            burst_lines: 50_000,
            buffer_bytes: 64 << 20,
            offsets_dir: None,
        }
    }
}

/// Shortest and longest pause between two reads of a quiet log file.
const POLL_MIN: Duration = Duration::from_millis(25);
const POLL_MAX: Duration = Duration::from_millis(250);
/// Bytes read from a log file at a time.
const READ_CHUNK: usize = 256 * 1024;
/// A line without its end is sent after this long.
const PARTIAL_FLUSH: Duration = Duration::from_secs(1);
/// Calls remembered per instance for request-id attribution.
const JOURNAL_CALLS: usize = 4096;
/// Calls that ended this long ago are forgotten.
const JOURNAL_KEEP_NS: i64 = 30_000_000_000;
/// A line read this long after its call ended is still that call's (conmon
/// reads the pipe a little after the function wrote it).
const ATTRIBUTION_GRACE_NS: i64 = 50_000_000;
/// Bytes a queued line counts beyond its text.
const LINE_OVERHEAD: usize = 96;

struct LogMetrics {
    lines: IntCounterVec,
    dropped: IntCounterVec,
    queued_bytes: IntGauge,
}

static METRICS: LazyLock<LogMetrics> = LazyLock::new(|| {
    LogMetrics {
    lines: register_int_counter_vec!(
        "cpub_log_lines_total",
        "Lines of function output captured on this node (before the rate limit).",
        &["function"]
    )
    .expect("register cpub_log_lines_total"),
    dropped: register_int_counter_vec!(
        "cpub_log_lines_dropped_total",
        "Lines of function output not shipped: rate_limit, buffer_full, rejected (by the control plane), shutdown (queued at a graceful stop and not readable again).",
        &["function", "reason"]
    )
    .expect("register cpub_log_lines_dropped_total"),
    queued_bytes: register_int_gauge!(
        "cpub_log_buffer_bytes",
        "Bytes of log lines waiting to be shipped to the control plane."
    )
    .expect("register cpub_log_buffer_bytes"),
}
});

/// A captured line and whose it is.
#[derive(Debug, Clone)]
pub struct Captured {
    pub function: Arc<str>,
    pub deployment_id: i64,
    /// Short container id; empty for platform lines.
    pub instance: Arc<str>,
    pub entry: LogEntry,
    /// Where the instance's file may be read again from once this line is
    /// shipped; `None` for platform lines and when offsets are not kept.
    pub source: Option<Source>,
    /// Which file the line was read from ([`file_identity`]; with the
    /// line's `entry.end`, its place there: the control plane stores a line
    /// read again once); `None` for platform lines.
    pub file: Option<Arc<str>>,
}

/// A line's place in its container's log file.
#[derive(Debug, Clone)]
pub struct Source {
    /// The full container id.
    pub container: Arc<str>,
    pub at: Position,
    /// The tailer's rotations before it read the line's file.
    pub rotation: u32,
}

impl Source {
    /// The file the line was read from.
    fn file(&self) -> FileRead {
        FileRead {
            ino: self.at.ino,
            rotation: self.rotation,
        }
    }
}

/// A line and where reading may resume once it is shipped (see
/// [`Assembler::mark`]).
struct Marked {
    entry: LogEntry,
    mark: u64,
}

/// The calls an instance served, for attribution of its lines (only kept
/// for instances with `concurrency = 1` while their logs are captured).
#[derive(Debug, Default)]
pub(crate) struct CallJournal {
    enabled: AtomicBool,
    calls: Mutex<VecDeque<Span>>,
}

#[derive(Debug)]
struct Span {
    start_ns: i64,
    /// `i64::MAX` while the call runs.
    end_ns: i64,
    request_id: Box<str>,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

impl CallJournal {
    /// A call starts on the instance; false when nothing is kept.
    pub(crate) fn begin(&self, request_id: &str) -> bool {
        if !self.enabled.load(Ordering::Relaxed) {
            return false;
        }
        let mut calls = self.calls.lock().expect("journal lock");
        if calls.len() >= JOURNAL_CALLS {
            calls.pop_front();
        }
        calls.push_back(Span {
            start_ns: now_ns(),
            end_ns: i64::MAX,
            request_id: request_id.into(),
        });
        true
    }

    /// The call that began last ends.
    pub(crate) fn end(&self) {
        let now = now_ns();
        let mut calls = self.calls.lock().expect("journal lock");
        if let Some(span) = calls.iter_mut().rev().find(|s| s.end_ns == i64::MAX) {
            span.end_ns = now;
        }
    }

    /// The request id of the call running at `at_ns`.
    fn find(&self, at_ns: i64) -> Option<String> {
        let calls = self.calls.lock().expect("journal lock");
        let span = calls.iter().rev().find(|s| s.start_ns <= at_ns)?;
        (at_ns <= span.end_ns.saturating_add(ATTRIBUTION_GRACE_NS))
            .then(|| span.request_id.to_string())
    }

    fn forget_old(&self) {
        let before = now_ns() - JOURNAL_KEEP_NS;
        let mut calls = self.calls.lock().expect("journal lock");
        while calls.front().is_some_and(|s| s.end_ns < before) {
            calls.pop_front();
        }
    }
}

/// Per function: its token bucket and what was dropped since the last
/// batch.
struct Budget {
    tokens: f64,
    refilled: std::time::Instant,
    deployment_id: i64,
    dropped_rate: u64,
    dropped_buffer: u64,
}

#[derive(Default)]
struct Queue {
    lines: VecDeque<Captured>,
    bytes: usize,
    budgets: FxHashMap<Arc<str>, Budget>,
}

/// The node's log capture: the tailers and the queue the shipper drains.
pub struct LogHub {
    config: LogConfig,
    queue: Mutex<Queue>,
    ready: Notify,
    /// Containers being followed.
    followed: Mutex<FxHashSet<String>>,
    /// The `cpub-logs` thread's runtime.
    tailers: tokio::runtime::Handle,
    stop: tokio_util::sync::CancellationToken,
    /// Shipped offsets per container, when kept.
    offsets: Option<Arc<Offsets>>,
    /// Lines [`LogHub::take`]n and not yet acknowledged or refused.
    outstanding: AtomicUsize,
    /// Those lines' functions and sources (judged readable again or not at
    /// the stop: a rotation meanwhile changes the answer).
    in_flight: Mutex<Vec<InFlight>>,
}

/// A line the shipper holds: whose, and where it was read.
struct InFlight {
    function: Arc<str>,
    system: bool,
    source: Option<(Arc<str>, FileRead)>,
}

impl std::fmt::Debug for LogHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHub")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What a tailer knows of its instance.
pub(crate) struct Follow {
    pub(crate) id: String,
    pub(crate) function: Arc<str>,
    /// The deployment its set serves (`InstanceSet::serving`), read as each
    /// line is shipped: `cpub scale` moves running instances to a later
    /// deployment, and the control plane drops lines of deployments it no
    /// longer has.
    pub(crate) deployment: Arc<std::sync::atomic::AtomicI64>,
    /// The instance's call journal when it serves one call at a time.
    pub(crate) journal: Option<Arc<CallJournal>>,
    /// An instance that ran before this proxy (adopted): read from the
    /// offset the previous proxy saved, else from the end of its file.
    pub(crate) adopted: bool,
}

impl LogHub {
    /// Starts the `cpub-logs` thread.
    pub fn new(config: LogConfig) -> std::io::Result<Arc<Self>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let stop = tokio_util::sync::CancellationToken::new();
        let handle = runtime.handle().clone();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("cpub-logs".into())
            .spawn(move || runtime.block_on(stopped.cancelled()))?;
        LazyLock::force(&METRICS);
        let offsets = config
            .offsets_dir
            .clone()
            .map(|dir| Arc::new(Offsets::new(dir)));
        if let Some(offsets) = &offsets {
            // Saves moved offsets, each container's at most once a second.
            let offsets = Arc::clone(offsets);
            let stopped = stop.clone();
            handle.spawn(async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(offsets::SAVE_EVERY) => {}
                        () = stopped.cancelled() => return,
                    }
                    let o = Arc::clone(&offsets);
                    let _ = tokio::task::spawn_blocking(move || o.save(false)).await;
                }
            });
        }
        Ok(Arc::new(Self {
            config,
            queue: Mutex::default(),
            ready: Notify::new(),
            followed: Mutex::default(),
            tailers: handle,
            stop,
            offsets,
            outstanding: AtomicUsize::new(0),
            in_flight: Mutex::default(),
        }))
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Stops every tailer (the pool shuts down).
    pub fn close(&self) {
        self.stop.cancel();
    }

    /// Follows an instance's log file until the container is removed
    /// (nothing when it is followed already or `runtime` has no files).
    pub(crate) fn follow(self: &Arc<Self>, runtime: Arc<dyn ContainerRuntime>, follow: Follow) {
        if self.stop.is_cancelled()
            || !self
                .followed
                .lock()
                .expect("followed lock")
                .insert(follow.id.clone())
        {
            return;
        }
        if let Some(journal) = &follow.journal {
            journal.enabled.store(true, Ordering::Relaxed);
        }
        let hub = Arc::clone(self);
        self.tailers.spawn(async move {
            let id = follow.id.clone();
            let stop = hub.stop.clone();
            tokio::select! {
                () = tail_container(&hub, runtime.as_ref(), &follow, hub.offsets.as_ref()) => {}
                () = stop.cancelled() => {}
            }
            if let Some(journal) = &follow.journal {
                journal.enabled.store(false, Ordering::Relaxed);
            }
            hub.followed.lock().expect("followed lock").remove(&id);
        });
    }

    /// Follows the k8s-file log at `path` as if it were container `id`'s,
    /// from its start, until the file is removed (the capture benchmark,
    /// `examples/log_capture.rs`, measures the real tailer this way).
    pub fn follow_file(self: &Arc<Self>, path: PathBuf, id: &str, function: &str) {
        let follow = Follow {
            id: id.to_owned(),
            function: Arc::from(function),
            deployment: Arc::new(std::sync::atomic::AtomicI64::new(0)),
            journal: None,
            adopted: false,
        };
        let hub = Arc::clone(self);
        self.tailers.spawn(async move {
            let stop = hub.stop.clone();
            tokio::select! {
                () = tail(&hub, &path, &follow, None) => {}
                () = stop.cancelled() => {}
            }
        });
    }

    /// Containers whose logs are being followed.
    pub fn followed(&self) -> usize {
        self.followed.lock().expect("followed lock").len()
    }

    /// Removes the offset files of containers this proxy does not follow
    /// (gone while no proxy ran) once the adopted instances are followed.
    pub(crate) fn prune_offsets(&self) {
        let Some(offsets) = &self.offsets else { return };
        let followed = self.followed.lock().expect("followed lock").clone();
        let removed = offsets.prune(|id| followed.contains(id));
        if removed > 0 {
            tracing::info!(
                files = removed,
                "log offsets of containers gone while no proxy ran removed"
            );
        }
    }

    /// Before a container that ran before this proxy is removed without
    /// being adopted (it exited, or failed its readiness probe): opens its
    /// log file at the offset the previous proxy saved, so that once it is
    /// removed ([`RemovedLog::finish`]) the rest — its last output, a
    /// crash's too — is read from the open file to its end and queued, not
    /// lost with it. Without a saved offset the file is opened at its end,
    /// as an adopted instance's is (that proxy shipped its lines or did not
    /// capture them): only what comes until the removal is read. `None`
    /// when there is no file.
    pub(crate) async fn open_before_removal(
        self: &Arc<Self>,
        runtime: &dyn ContainerRuntime,
        id: &str,
        function: &str,
        deployment_id: i64,
    ) -> Option<RemovedLog> {
        let offsets = Arc::clone(self.offsets.as_ref()?);
        let path = match runtime.log_path(id).await {
            Ok(path) => path?,
            Err(err) => {
                tracing::debug!(container = short(id), %err, "no log file to read before removal");
                return None;
            }
        };
        let id = id.to_owned();
        let file = tokio::task::spawn_blocking(move || {
            let mut file = open(&path).ok()??;
            let len = file.0.metadata().map_or(0, |m| m.len());
            let name = file_identity(&file.0, file.1);
            let start = start_at(&id, (file.1, name.as_deref()), len, true, Some(&offsets));
            file.0
                .seek(SeekFrom::Start(start))
                .is_ok()
                .then_some((id, file.0, start))
        })
        .await
        .ok()??;
        let (id, file, start) = file;
        Some(RemovedLog {
            hub: Arc::clone(self),
            id,
            function: Arc::from(function),
            deployment_id,
            file,
            start,
        })
    }

    /// Queues lines of one instance (read from the file `source` names:
    /// container and inode), within the function's rate and the buffer;
    /// counts the rest.
    fn push(
        &self,
        function: &Arc<str>,
        deployment_id: i64,
        instance: &Arc<str>,
        file: Option<&Arc<str>>,
        source: Option<(&Arc<str>, FileRead)>,
        entries: Vec<Marked>,
    ) {
        if entries.is_empty() {
            return;
        }
        let n = entries.len() as u64;
        let (mut over_rate, mut over_buffer) = (0u64, 0u64);
        {
            let mut q = self.queue.lock().expect("log queue lock");
            let q = &mut *q;
            let rate = f64::from(self.config.rate_lines_per_s);
            let burst = f64::from(self.config.burst_lines.max(1));
            let now = std::time::Instant::now();
            let budget = q
                .budgets
                .entry(Arc::clone(function))
                .or_insert_with(|| Budget {
                    tokens: burst,
                    refilled: now,
                    deployment_id,
                    dropped_rate: 0,
                    dropped_buffer: 0,
                });
            budget.tokens = (budget.tokens
                + now.duration_since(budget.refilled).as_secs_f64() * rate)
                .min(burst);
            budget.refilled = now;
            budget.deployment_id = deployment_id;
            for Marked { entry, mark } in entries {
                if budget.tokens < 1.0 {
                    over_rate += 1;
                    continue;
                }
                budget.tokens -= 1.0;
                let size = entry.line.len() + LINE_OVERHEAD;
                if q.bytes + size > self.config.buffer_bytes {
                    over_buffer += 1;
                    continue;
                }
                q.bytes += size;
                q.lines.push_back(Captured {
                    function: Arc::clone(function),
                    deployment_id,
                    instance: Arc::clone(instance),
                    entry,
                    source: source.map(|(container, read)| Source {
                        container: Arc::clone(container),
                        at: Position {
                            ino: read.ino,
                            offset: mark,
                        },
                        rotation: read.rotation,
                    }),
                    file: file.cloned(),
                });
            }
            budget.dropped_rate += over_rate;
            budget.dropped_buffer += over_buffer;
            METRICS.queued_bytes.set(q.bytes as i64);
        }
        METRICS.lines.with_label_values(&[function]).inc_by(n);
        if over_rate > 0 {
            METRICS
                .dropped
                .with_label_values(&[function, "rate_limit"])
                .inc_by(over_rate);
        }
        if over_buffer > 0 {
            METRICS
                .dropped
                .with_label_values(&[function, "buffer_full"])
                .inc_by(over_buffer);
        }
        self.ready.notify_one();
    }

    /// Waits until lines are queued (or drops are to be reported).
    pub async fn wait(&self) {
        loop {
            let notified = self.ready.notified();
            {
                let q = self.queue.lock().expect("log queue lock");
                if !q.lines.is_empty()
                    || q.budgets
                        .values()
                        .any(|b| b.dropped_rate + b.dropped_buffer > 0)
                {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Takes up to `max_lines` lines and about `max_bytes`, in the order
    /// they were captured, after a "N lines dropped" line for each function
    /// that lost some since the last batch.
    pub fn take(&self, max_lines: usize, max_bytes: usize) -> Vec<Captured> {
        let mut guard = self.queue.lock().expect("log queue lock");
        let q = &mut *guard;
        let mut out = Vec::new();
        let at_ns = now_ns();
        let rate = self.config.rate_lines_per_s;
        for (function, b) in &mut q.budgets {
            for (n, why) in [
                (
                    std::mem::take(&mut b.dropped_rate),
                    format!("over the rate limit of {rate} lines/s"),
                ),
                (
                    std::mem::take(&mut b.dropped_buffer),
                    "the node's log buffer was full (control plane unreachable or slow)".to_owned(),
                ),
            ] {
                if n > 0 {
                    out.push(Captured {
                        function: Arc::clone(function),
                        deployment_id: b.deployment_id,
                        instance: Arc::from(""),
                        entry: LogEntry {
                            at_ns,
                            stream: LogStream::System,
                            request_id: None,
                            line: format!("{n} lines dropped: {why}"),
                            end: None,
                        },
                        source: None,
                        file: None,
                    });
                }
            }
        }
        // Budgets of functions quiet for a while go (they refill anyway).
        let now = std::time::Instant::now();
        q.budgets
            .retain(|_, b| now.duration_since(b.refilled) < Duration::from_secs(60));
        let mut bytes = 0;
        while out.len() < max_lines {
            let Some(next) = q.lines.front() else { break };
            let size = next.entry.line.len() + LINE_OVERHEAD;
            if bytes + size > max_bytes && !out.is_empty() {
                break;
            }
            bytes += size;
            q.bytes = q.bytes.saturating_sub(size);
            out.extend(q.lines.pop_front());
        }
        METRICS.queued_bytes.set(q.bytes as i64);
        drop(guard);
        let mut in_flight = self.in_flight.lock().expect("in flight lock");
        in_flight.clear();
        in_flight.extend(out.iter().map(|c| {
            InFlight {
                function: Arc::clone(&c.function),
                system: c.entry.stream == LogStream::System,
                source: c
                    .source
                    .as_ref()
                    .map(|s| (Arc::clone(&s.container), s.file())),
            }
        }));
        self.outstanding.fetch_add(out.len(), Ordering::Relaxed);
        out
    }

    /// Whether a later proxy reads a line again if it is not shipped: a
    /// line of function output whose container's offset is kept, read from
    /// the file conmon writes now (`source`: container and file). Not one
    /// of a file conmon rotated away, even when the current file has its
    /// inode: the next proxy reads the current file only. (Platform lines,
    /// `system`, report drops already counted.)
    fn readable_again(&self, system: bool, source: Option<(&str, FileRead)>) -> bool {
        system
            || source.is_some_and(|(container, file)| {
                self.offsets
                    .as_ref()
                    .is_some_and(|o| o.readable_again(container, file))
            })
    }

    /// The control plane stored (or knowingly dropped) `lines`, a batch
    /// [`LogHub::take`] gave: their containers' files need not be read again
    /// up to them.
    pub fn acknowledge(&self, lines: &[Captured]) {
        self.in_flight.lock().expect("in flight lock").clear();
        let _ = self
            .outstanding
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(lines.len()))
            });
        let Some(offsets) = &self.offsets else { return };
        // A container's lines are in reading order: its last one counts,
        // with the name of the file it was read from.
        let mut last: FxHashMap<&str, (Position, Option<&Arc<str>>)> = FxHashMap::default();
        for c in lines {
            if let Some(source) = &c.source {
                last.insert(&source.container, (source.at, c.file.as_ref()));
            }
        }
        for (container, (at, file)) in last {
            offsets.acknowledge(container, at, file);
        }
    }

    /// The control plane refused `lines` for good: counted
    /// (`reason="rejected"`), not retried, and not read again after a
    /// restart (they would be refused again).
    pub fn reject(&self, lines: &[Captured]) {
        let mut per_function: FxHashMap<&str, u64> = FxHashMap::default();
        for c in lines {
            *per_function.entry(&c.function).or_default() += 1;
        }
        for (function, n) in per_function {
            METRICS
                .dropped
                .with_label_values(&[function, "rejected"])
                .inc_by(n);
        }
        self.acknowledge(lines);
    }

    /// Whether nothing waits to be shipped or acknowledged.
    fn is_idle(&self) -> bool {
        let q = self.queue.lock().expect("log queue lock");
        q.lines.is_empty()
            && q.budgets
                .values()
                .all(|b| b.dropped_rate + b.dropped_buffer == 0)
            && self.outstanding.load(Ordering::Relaxed) == 0
    }

    /// A graceful stop: waits up to `timeout` for what is queued to be
    /// shipped and acknowledged (the shipper keeps going, and so do the
    /// tailers: a container removed meanwhile is still read to its end),
    /// then stops the tailers and saves every container's acknowledged
    /// offset. Lines still not acknowledged are read again by the next
    /// proxy when their container's offset is kept and they come from its
    /// current file; the others are counted
    /// (`cpub_log_lines_dropped_total{reason="shutdown"}`). Returns how many
    /// lines are left for the next proxy and how many were dropped. The
    /// caller stops whatever removes or starts containers first (the
    /// proxy: the pool's background work and the route watcher).
    pub async fn flush(&self, timeout: Duration) -> (u64, u64) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_idle() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.cancel();
        let (mut again, mut lost) = (0u64, 0u64);
        let mut dropped: FxHashMap<Arc<str>, u64> = FxHashMap::default();
        let in_flight = std::mem::take(&mut *self.in_flight.lock().expect("in flight lock"));
        let outstanding = self.outstanding.swap(0, Ordering::Relaxed);
        // What the shipper holds is the last batch taken (when it was not
        // acknowledged yet): judged now, after the tailers stopped.
        let mut in_flight_lost = 0u64;
        if outstanding > 0 {
            for line in &in_flight {
                let source = line.source.as_ref().map(|(c, file)| (&**c, *file));
                if !self.readable_again(line.system, source) {
                    in_flight_lost += 1;
                    *dropped.entry(Arc::clone(&line.function)).or_default() += 1;
                }
            }
        }
        again += (outstanding as u64).saturating_sub(in_flight_lost);
        {
            let mut q = self.queue.lock().expect("log queue lock");
            for c in std::mem::take(&mut q.lines) {
                let source = c.source.as_ref().map(|s| (&*s.container, s.file()));
                if self.readable_again(c.entry.stream == LogStream::System, source) {
                    again += 1;
                } else {
                    *dropped.entry(Arc::clone(&c.function)).or_default() += 1;
                }
            }
            q.bytes = 0;
            METRICS.queued_bytes.set(0);
        }
        for (function, n) in dropped {
            lost += n;
            METRICS
                .dropped
                .with_label_values(&[&function, "shutdown"])
                .inc_by(n);
        }
        if let Some(offsets) = &self.offsets {
            let offsets = Arc::clone(offsets);
            let _ = tokio::task::spawn_blocking(move || offsets.save(true)).await;
        }
        (again, lost)
    }
}

/// The log file of a container about to be removed, open at the offset
/// the previous proxy saved ([`LogHub::open_before_removal`]).
pub(crate) struct RemovedLog {
    hub: Arc<LogHub>,
    id: String,
    function: Arc<str>,
    deployment_id: i64,
    file: std::fs::File,
    start: u64,
}

impl RemovedLog {
    /// Once the container is removed: reads the file to its end and queues
    /// its lines. They carry no source: no proxy reads them again, so a
    /// stop before they are shipped counts them (`shutdown`); they carry
    /// their place in the file, so lines the proxy before shipped past its
    /// saved offset are not stored twice. Returns how many lines were
    /// queued.
    pub(crate) async fn finish(self) -> usize {
        tokio::task::spawn_blocking(move || {
            let Self {
                hub,
                id,
                function,
                deployment_id,
                mut file,
                start,
            } = self;
            let mut asm = Assembler::new(None);
            asm.resync = !record_ends_at(&file, start);
            asm.next_start = start;
            let (mut pos, mut chunk, mut out) = (start, vec![0u8; READ_CHUNK], Vec::new());
            read_rest(&mut file, &mut asm, &mut pos, &mut chunk, &mut out);
            asm.flush_stale(true, &mut out);
            let n = out.len();
            let instance: Arc<str> = Arc::from(short(&id));
            let identity = file
                .metadata()
                .ok()
                .and_then(|m| file_identity(&file, m.ino()));
            hub.push(&function, deployment_id, &instance, identity.as_ref(), None, out);
            if n > 0 {
                tracing::info!(container = short(&id), %function, lines = n, "log lines of a container not adopted read at its removal");
            }
            n
        })
        .await
        .unwrap_or(0)
    }
}

/// One k8s-file record: `<RFC 3339 time> <stream> <P|F> <bytes>`.
#[derive(Debug, PartialEq, Eq)]
struct Record<'a> {
    at_ns: i64,
    stream: LogStream,
    /// `P`: the line goes on in the next record.
    partial: bool,
    bytes: &'a [u8],
}

fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = match parts.next()? {
        b"stdout" => LogStream::Stdout,
        b"stderr" => LogStream::Stderr,
        _ => return None,
    };
    let partial = match parts.next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    let bytes = parts.next().unwrap_or_default();
    let at_ns = chrono::DateTime::parse_from_rfc3339(time)
        .ok()?
        .timestamp_nanos_opt()?;
    Some(Record {
        at_ns,
        stream,
        partial,
        bytes,
    })
}

/// A line being put together from `P` records.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Bytes beyond [`MAX_LINE_BYTES`], not kept.
    cut: usize,
    at_ns: i64,
    since: Option<std::time::Instant>,
    /// File offsets: the start of its first record, the end of its last.
    start: u64,
    end: u64,
}

impl Pending {
    fn add(&mut self, at_ns: i64, bytes: &[u8], start: u64, end: u64) {
        if self.since.is_none() {
            self.at_ns = at_ns;
            self.since = Some(std::time::Instant::now());
            self.start = start;
        }
        self.end = end;
        let room = MAX_LINE_BYTES.saturating_sub(self.bytes.len());
        let keep = bytes.len().min(room);
        self.bytes
            .extend_from_slice(bytes.get(..keep).unwrap_or_default());
        self.cut += bytes.len() - keep;
    }

    fn finish(&mut self) -> Option<(i64, String)> {
        self.since.take()?;
        let mut line = clean_line(&self.bytes);
        if self.cut > 0 {
            line.push_str(&format!(" […{} more bytes cut]", self.cut));
        }
        self.bytes.clear();
        self.cut = 0;
        Some((self.at_ns, line))
    }
}

/// Turns the records of one instance's file into lines.
struct Assembler {
    stdout: Pending,
    stderr: Pending,
    /// Bytes of a record whose end was not read yet.
    carry: Vec<u8>,
    journal: Option<Arc<CallJournal>>,
    /// Skip up to the first record end (reading started mid-file).
    resync: bool,
    /// File offset of the start of the record being read.
    next_start: u64,
}

impl Assembler {
    fn new(journal: Option<Arc<CallJournal>>) -> Self {
        Self {
            stdout: Pending::default(),
            stderr: Pending::default(),
            carry: Vec::new(),
            journal,
            resync: false,
            next_start: 0,
        }
    }

    /// Where reading may resume once a line of `stream` whose last record
    /// ends at `end` is shipped: there, or at the start of the other
    /// stream's unfinished line when that began earlier (read again, it
    /// would also bring back the lines finished meanwhile: duplicates,
    /// never a loss).
    fn mark(&self, stream: LogStream, end: u64) -> u64 {
        let other = if stream == LogStream::Stderr {
            &self.stdout
        } else {
            &self.stderr
        };
        if other.since.is_some() {
            other.start.min(end)
        } else {
            end
        }
    }

    fn pending(&mut self, stream: LogStream) -> &mut Pending {
        if stream == LogStream::Stderr {
            &mut self.stderr
        } else {
            &mut self.stdout
        }
    }

    /// A finished line whose last record ends at file offset `end`.
    fn entry(&self, stream: LogStream, at_ns: i64, line: String, end: u64) -> LogEntry {
        LogEntry {
            at_ns,
            stream,
            request_id: self.journal.as_ref().and_then(|j| j.find(at_ns)),
            line,
            end: Some(end),
        }
    }

    /// Feeds bytes read from the file at offset `base`; returns the
    /// finished lines.
    fn feed(&mut self, chunk: &[u8], base: u64, out: &mut Vec<Marked>) {
        let mut rest = chunk;
        let mut at = base;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            let (head, tail) = rest.split_at(end);
            rest = tail.get(1..).unwrap_or_default();
            at += end as u64 + 1;
            let start = std::mem::replace(&mut self.next_start, at);
            if self.resync {
                self.resync = false;
                self.carry.clear();
                continue;
            }
            let record = if self.carry.is_empty() {
                parse_record(head).map(|r| (r.at_ns, r.stream, r.partial, r.bytes.to_vec()))
            } else {
                self.carry.extend_from_slice(head);
                let whole = std::mem::take(&mut self.carry);
                parse_record(&whole).map(|r| (r.at_ns, r.stream, r.partial, r.bytes.to_vec()))
            };
            let Some((at_ns, stream, partial, bytes)) = record else {
                continue;
            };
            let pending = self.pending(stream);
            pending.add(at_ns, &bytes, start, at);
            if !partial && let Some((at_ns, line)) = pending.finish() {
                let mark = self.mark(stream, at);
                out.push(Marked {
                    entry: self.entry(stream, at_ns, line, at),
                    mark,
                });
            }
        }
        // A record is at most conmon's buffer plus its head: a longer run
        // without a newline is not a record.
        if self.carry.len() + rest.len() <= 2 * MAX_LINE_BYTES {
            self.carry.extend_from_slice(rest);
        } else {
            self.carry.clear();
            self.resync = true;
        }
    }

    /// Sends lines whose end has not come for [`PARTIAL_FLUSH`] (or all,
    /// when the file is done).
    fn flush_stale(&mut self, all: bool, out: &mut Vec<Marked>) {
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            let pending = self.pending(stream);
            let end = pending.end;
            if pending
                .since
                .is_some_and(|s| all || s.elapsed() >= PARTIAL_FLUSH)
                && let Some((at, line)) = pending.finish()
            {
                let mark = self.mark(stream, end);
                out.push(Marked {
                    entry: self.entry(stream, at, line, end),
                    mark,
                });
            }
        }
    }
}

/// Follows one instance's log file until the container is gone.
async fn tail_container(
    hub: &LogHub,
    runtime: &dyn ContainerRuntime,
    follow: &Follow,
    offsets: Option<&Arc<Offsets>>,
) {
    match runtime.log_path(&follow.id).await {
        Ok(Some(path)) => tail(hub, &path, follow, offsets).await,
        Ok(None) => {}
        Err(err) => {
            tracing::debug!(container = short(&follow.id), %err, "no log file to follow");
        }
    }
}

/// Where to start reading container `id`'s file (inode `ino`, `len`
/// bytes, named `file` when it has a record: [`file_identity`]). A new
/// instance: at its start. An adopted one: at the offset the previous
/// proxy saved for this file; at the start when the saved one is of
/// another file (another inode, or the same inode under another name: a
/// number conmon's rotation freed and a later file got) or beyond the end
/// (conmon rotated the file while no proxy ran: all of the new file is
/// unshipped, the old one's unread end is gone with it); at the end when
/// nothing was saved (a proxy that did not keep offsets, or capture was
/// off: its lines were shipped or never captured). A saved offset without
/// a name (saved before the file had a whole record, or by an older
/// proxy: [`SavedName::Absent`]) is matched by the inode alone; one whose
/// file is not known ([`SavedName::Unsure`]) reads the file from its start.
fn start_at(
    id: &str,
    (ino, file): (u64, Option<&str>),
    len: u64,
    adopted: bool,
    offsets: Option<&Offsets>,
) -> u64 {
    if !adopted {
        return 0;
    }
    let Some(offsets) = offsets else { return len };
    match offsets.load(id) {
        Some(saved)
            if saved.at.ino == ino
                && saved.at.offset <= len
                && match &saved.file {
                    SavedName::Absent => true,
                    SavedName::Known(name) => Some(name.as_str()) == file,
                    SavedName::Unsure => false,
                } =>
        {
            saved.at.offset
        }
        Some(saved) => {
            tracing::info!(
                container = short(id),
                saved_ino = saved.at.ino,
                saved_file = ?saved.file,
                ino,
                file = ?file,
                saved_offset = saved.at.offset,
                len,
                "the log file is not known to be the one its offset was saved for (rotated while no proxy followed it, or its name was not saved): read from its start"
            );
            0
        }
        None => len,
    }
}

/// Follows a k8s-file log at `path` until it is removed; with `offsets`,
/// from the saved offset of an adopted instance, keeping it up to date and
/// removing it when the file goes.
async fn tail(hub: &LogHub, path: &Path, follow: &Follow, offsets: Option<&Arc<Offsets>>) {
    let instance: Arc<str> = Arc::from(short(&follow.id));
    let container: Arc<str> = Arc::from(follow.id.as_str());
    let mut asm = Assembler::new(follow.journal.clone());
    let mut file = match open(path) {
        Ok(Some(f)) => f,
        Ok(None) => return,
        Err(err) => {
            tracing::warn!(container = short(&follow.id), path = %path.display(), %err, "cannot open the log file");
            return;
        }
    };
    let len = file.0.metadata().map_or(0, |m| m.len());
    // The name of the file read now (`file_identity`), once it has one;
    // forgotten at a rotation (the new file's inode may be one a file
    // before it had).
    let named: std::sync::Mutex<Option<Arc<str>>> =
        std::sync::Mutex::new(file_identity(&file.0, file.1));
    let start = match offsets {
        Some(offsets) => {
            let (o, id, ino, name, adopted) = (
                Arc::clone(offsets),
                Arc::clone(&container),
                file.1,
                named.lock().expect("file name lock").clone(),
                follow.adopted,
            );
            tokio::task::spawn_blocking(move || {
                let start = start_at(&id, (ino, name.as_deref()), len, adopted, Some(&o));
                o.register(&id, Position { ino, offset: start }, name);
                start
            })
            .await
            .unwrap_or(len)
        }
        None => start_at(&follow.id, (file.1, None), len, follow.adopted, None),
    };
    if start > 0
        && let Err(err) = file.0.seek(SeekFrom::Start(start))
    {
        tracing::warn!(container = short(&follow.id), %err, "cannot seek in the log file");
        return;
    }
    // Started mid-file: skip to the next record unless at a record's end.
    asm.resync = !record_ends_at(&file.0, start);
    asm.next_start = start;
    let mut pos = start;
    let gone;
    // Rotations gone through (`Offsets::rotated`): with the inode, which
    // file a line was read from.
    let rotation = std::sync::atomic::AtomicU32::new(0);
    let source = |ino: u64| {
        offsets.map(|_| {
            let rotation = rotation.load(Ordering::Relaxed);
            (&container, FileRead { ino, rotation })
        })
    };
    // Hands the lines read from `file` to the hub.
    let push = |file: &(std::fs::File, u64), lines: Vec<Marked>| {
        if lines.is_empty() {
            return;
        }
        let ino = file.1;
        let id = {
            let mut known = named.lock().expect("file name lock");
            if known.is_none() {
                *known = file_identity(&file.0, ino);
            }
            known.clone()
        };
        hub.push(
            &follow.function,
            follow.deployment.load(std::sync::atomic::Ordering::Acquire),
            &instance,
            id.as_ref(),
            source(ino),
            lines,
        );
    };
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut quiet = POLL_MIN;
    // Warned that the log could not be opened again (once until a look works).
    let mut warned_open = false;
    let mut out = Vec::new();
    loop {
        let n = match file.0.read(&mut chunk) {
            Ok(n) => n,
            Err(err) => {
                tracing::warn!(container = short(&follow.id), %err, "reading the log file");
                0
            }
        };
        if n > 0 {
            asm.feed(chunk.get(..n).unwrap_or_default(), pos, &mut out);
            pos += n as u64;
            push(&file, std::mem::take(&mut out));
            quiet = POLL_MIN;
            tokio::task::yield_now().await;
            continue;
        }
        // At the end of what was written: rotated or removed?
        match at_end(path, &mut file, &mut asm, &mut pos, &mut chunk, &mut out) {
            AtEnd::Same => warned_open = false,
            AtEnd::Rotated(next) => {
                // The old file's last lines are its own, an unfinished one
                // too (its end is a place in the old file: carried into
                // the new one it would name a place there).
                asm.flush_stale(true, &mut out);
                push(&file, std::mem::take(&mut out));
                file = next;
                pos = 0;
                asm.next_start = 0;
                // Nothing of the old file's reading carries over: not a
                // record it left unfinished, and not its name (the new
                // file's inode may be one a file before it had).
                asm.carry.clear();
                asm.resync = false;
                *named.lock().expect("file name lock") = None;
                if let Some(offsets) = offsets {
                    rotation.store(offsets.rotated(&container, file.1), Ordering::Relaxed);
                }
                warned_open = false;
                continue;
            }
            AtEnd::Gone => {
                gone = true;
                break;
            }
            AtEnd::Retry(err) => {
                if !warned_open {
                    tracing::warn!(container = short(&follow.id), path = %path.display(), %err, "cannot open the log file again to look for a rotation; retrying");
                    warned_open = true;
                }
            }
        }
        asm.flush_stale(false, &mut out);
        push(&file, std::mem::take(&mut out));
        if let Some(journal) = &follow.journal {
            journal.forget_old();
        }
        tokio::time::sleep(quiet).await;
        quiet = (quiet * 2).min(POLL_MAX);
    }
    asm.flush_stale(true, &mut out);
    push(&file, out);
    if gone && let Some(offsets) = offsets {
        // No proxy will adopt the container: nothing to resume.
        let (o, id) = (Arc::clone(offsets), Arc::clone(&container));
        let _ = tokio::task::spawn_blocking(move || o.forget(&id)).await;
    }
    tracing::debug!(container = short(&follow.id), "log file done");
}

/// Which file of a container's log this is, for the control plane
/// ([`Captured::file`]): its inode and the digits of its first record's
/// time (`<ino>-<digits>`, at most 64 bytes). The inode alone does not
/// tell files apart: conmon's rotation frees the old file's, and a later
/// file often gets it again. Two files with the same inode and the same
/// first time (to the nanosecond) would need conmon to rotate more than
/// once within one read of the function's output (up to 8 KiB stamped
/// with one time), which the 32 MiB rotation rules out. `None` before the
/// first record's time is written (no line yet) or when it has no digits.
pub(crate) fn file_identity(file: &std::fs::File, ino: u64) -> Option<Arc<str>> {
    let mut head = [0u8; 48];
    let n = file.read_at(&mut head, 0).ok()?;
    let head = head.get(..n)?;
    let time = head.split(|b| *b == b' ').next()?;
    // The time must end within what was read (a space follows it).
    if time.len() == head.len() {
        return None;
    }
    let digits: String = time
        .iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| char::from(*b))
        .take(40)
        .collect();
    (!digits.is_empty()).then(|| Arc::from(format!("{ino}-{digits}")))
}

/// What the path of a log file read to its end names now.
enum AtEnd {
    /// The same file: wait for more.
    Same,
    /// Another file (conmon rotated the log): the old one was read to its
    /// end; go on with this one.
    Rotated((std::fs::File, u64)),
    /// Nothing (the container was removed): the old one was read to its end.
    Gone,
    /// The path is there (or was at the last look) but could not be
    /// opened (descriptors or memory short, a permission): look again
    /// later, keeping the offset (the container may still run).
    Retry(std::io::Error),
}

/// Called when a read of `file` found its end: whether `path` still names
/// it. When it names another file or none, `file` is first read to its end
/// again: conmon may have written its last records between the read that
/// found the end and this look, then renamed a new file over it (or the
/// container went).
fn at_end(
    path: &Path,
    file: &mut (std::fs::File, u64),
    asm: &mut Assembler,
    pos: &mut u64,
    chunk: &mut [u8],
    out: &mut Vec<Marked>,
) -> AtEnd {
    let now = std::fs::metadata(path);
    if now.as_ref().is_ok_and(|m| m.ino() == file.1) {
        return AtEnd::Same;
    }
    read_rest(&mut file.0, asm, pos, chunk, out);
    // conmon renames a new file over the old one: the path is never
    // missing during a rotation, so missing means removed (and an open
    // would fail for want of a descriptor before it looked).
    if now.is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        return AtEnd::Gone;
    }
    match open(path) {
        Ok(Some(next)) if next.1 != file.1 => AtEnd::Rotated(next),
        // Back to the same inode between the two looks: nothing changed.
        Ok(Some(_)) => AtEnd::Same,
        Ok(None) => AtEnd::Gone,
        // The path was there when looked at: the container may still run,
        // so its offset is kept and the next look retries (a removal makes
        // the path missing, which ends the tailer then).
        Err(err) => AtEnd::Retry(err),
    }
}

/// Reads `file` from `pos` to its end into `asm`.
fn read_rest(
    file: &mut std::fs::File,
    asm: &mut Assembler,
    pos: &mut u64,
    chunk: &mut [u8],
    out: &mut Vec<Marked>,
) {
    loop {
        match file.read(chunk) {
            Ok(0) => break,
            Ok(n) => {
                asm.feed(chunk.get(..n).unwrap_or_default(), *pos, out);
                *pos += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// The file and its inode, or `None` when it does not exist (yet).
fn open(path: &Path) -> std::io::Result<Option<(std::fs::File, u64)>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let ino = file.metadata()?.ino();
    Ok(Some((file, ino)))
}

/// Whether a record ends just before `offset` (the byte before it is a
/// newline, or it is the file's start).
fn record_ends_at(file: &std::fs::File, offset: u64) -> bool {
    let mut last = [0u8; 1];
    offset == 0 || (file.read_at(&mut last, offset - 1).is_ok() && last[0] == b'\n')
}

/// Where a Podman container's `k8s-file` log is (`HostConfig.LogConfig.Path`).
pub(crate) fn log_path_of(inspect: &serde_json::Value) -> Option<PathBuf> {
    let driver = inspect
        .pointer("/HostConfig/LogConfig/Type")
        .and_then(serde_json::Value::as_str)?;
    if driver != "k8s-file" {
        return None;
    }
    inspect
        .pointer("/HostConfig/LogConfig/Path")
        .and_then(serde_json::Value::as_str)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse() {
        let r = parse_record(b"2026-11-29T21:47:38.396301304+00:00 stdout F hello world").unwrap();
        assert_eq!(r.stream, LogStream::Stdout);
        assert!(!r.partial);
        assert_eq!(r.bytes, b"hello world");
        assert_eq!(r.at_ns % 1_000_000_000, 396_301_304);
        let r = parse_record(b"2026-11-29T21:47:39.403339088+01:00 stderr P ").unwrap();
        assert!(r.partial && r.bytes.is_empty() && r.stream == LogStream::Stderr);
        assert!(parse_record(b"garbage").is_none());
        assert!(parse_record(b"2026-11-29T21:47:38Z stdin F x").is_none());
        assert!(parse_record(b"not-a-time stdout F x").is_none());
    }

    fn lines(asm: &mut Assembler, input: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        asm.feed(input, 0, &mut out);
        out.into_iter().map(|e| e.entry.line).collect()
    }

    fn assembler() -> Assembler {
        Assembler::new(None)
    }

    fn marked(entries: Vec<LogEntry>) -> Vec<Marked> {
        entries
            .into_iter()
            .map(|entry| Marked { entry, mark: 0 })
            .collect()
    }

    const T: &str = "2026-11-29T21:47:38.396301304+00:00";

    #[test]
    fn partial_records_make_one_line_and_records_split_across_reads() {
        let mut asm = assembler();
        let input = format!("{T} stdout P abc\n{T} stderr F err\n{T} stdout F def\n");
        let (a, b) = input.as_bytes().split_at(20);
        assert!(lines(&mut asm, a).is_empty());
        assert_eq!(lines(&mut asm, b), ["err", "abcdef"]);
    }

    #[test]
    fn hostile_output_is_bounded() {
        let mut asm = assembler();
        let mut input = String::new();
        for _ in 0..5 {
            input.push_str(&format!("{T} stdout P {}\n", "x".repeat(8192)));
        }
        input.push_str(&format!("{T} stdout F \n"));
        let got = lines(&mut asm, input.as_bytes());
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with(&"x".repeat(MAX_LINE_BYTES)));
        assert!(got[0].ends_with(&format!(" […{} more bytes cut]", 5 * 8192 - MAX_LINE_BYTES)));
        // Binary bytes and escapes are replaced.
        let mut raw = format!("{T} stdout F a").into_bytes();
        raw.extend_from_slice(b"\x00\x1b[2J\xff\xfe b\n");
        assert_eq!(
            lines(&mut asm, &raw),
            ["a\u{fffd}\u{fffd}[2J\u{fffd}\u{fffd} b"]
        );
        // A line without its end goes out when flushed.
        assert!(lines(&mut asm, format!("{T} stdout P no newline\n").as_bytes()).is_empty());
        let mut out = Vec::new();
        asm.flush_stale(true, &mut out);
        assert_eq!(out[0].entry.line, "no newline");
        // Garbage without newlines does not grow the carry without bound.
        for _ in 0..10 {
            assert!(lines(&mut asm, &vec![b'z'; 100_000]).is_empty());
            assert!(asm.carry.len() <= 2 * MAX_LINE_BYTES);
        }
        // And reading resumes at the next record.
        assert_eq!(
            lines(&mut asm, format!("\n{T} stdout F ok\n").as_bytes()),
            ["ok"]
        );
    }

    #[test]
    fn lines_go_to_the_call_that_ran_when_they_were_printed() {
        let j = CallJournal::default();
        assert!(!j.begin("off"), "nothing is kept until capture is on");
        j.enabled.store(true, Ordering::Relaxed);
        let before = now_ns();
        assert!(j.begin("a"));
        let during_a = now_ns();
        j.end();
        std::thread::sleep(Duration::from_millis(120));
        let between = now_ns();
        assert!(j.begin("b"));
        let during_b = now_ns();
        assert_eq!(j.find(before - 1), None);
        assert_eq!(j.find(during_a).as_deref(), Some("a"));
        assert_eq!(j.find(between), None, "after a's grace, before b");
        assert_eq!(j.find(during_b).as_deref(), Some("b"));
        assert_eq!(
            j.find(now_ns() + 1_000_000_000).as_deref(),
            Some("b"),
            "b still runs"
        );
    }

    #[tokio::test]
    async fn the_rate_limit_counts_what_it_drops_and_says_so() {
        let hub = LogHub::new(LogConfig {
            rate_lines_per_s: 10,
            burst_lines: 10,
            buffer_bytes: 1 << 20,
            offsets_dir: None,
        })
        .unwrap();
        let f: Arc<str> = Arc::from("logs-unit-rate");
        let i: Arc<str> = Arc::from("abc");
        let entries = (0..25)
            .map(|n| LogEntry {
                at_ns: n,
                stream: LogStream::Stdout,
                request_id: None,
                line: format!("line {n}"),
                end: None,
            })
            .collect();
        hub.push(&f, 7, &i, None, None, marked(entries));
        hub.wait().await;
        let got = hub.take(100, 1 << 20);
        let text: Vec<&str> = got.iter().map(|c| c.entry.line.as_str()).collect();
        assert_eq!(
            text[0],
            "15 lines dropped: over the rate limit of 10 lines/s"
        );
        assert_eq!(got[0].entry.stream, LogStream::System);
        assert_eq!(got[0].deployment_id, 7);
        assert_eq!(
            &text[1..],
            (0..10).map(|n| format!("line {n}")).collect::<Vec<_>>()
        );
        let dropped = METRICS
            .dropped
            .with_label_values(&["logs-unit-rate", "rate_limit"])
            .get();
        assert_eq!(dropped, 15);
        assert!(hub.take(100, 1 << 20).is_empty(), "the marker is sent once");
        hub.close();
    }

    #[tokio::test]
    async fn a_full_buffer_drops_and_counts() {
        let hub = LogHub::new(LogConfig {
            rate_lines_per_s: 1000,
            burst_lines: 1000,
            buffer_bytes: 10 * (LINE_OVERHEAD + 6),
            offsets_dir: None,
        })
        .unwrap();
        let f: Arc<str> = Arc::from("logs-unit-buffer");
        let i: Arc<str> = Arc::from("abc");
        let entries = (0..30)
            .map(|n| LogEntry {
                at_ns: n,
                stream: LogStream::Stderr,
                request_id: None,
                line: format!("line{n:02}"),
                end: None,
            })
            .collect();
        hub.push(&f, 1, &i, None, None, marked(entries));
        let got = hub.take(5, 1 << 20);
        assert_eq!(
            got[0].entry.line,
            "20 lines dropped: the node's log buffer was full (control plane unreachable or slow)"
        );
        assert_eq!(got.len(), 5);
        let rest = hub.take(100, 1 << 20);
        assert_eq!(rest.len(), 6, "10 were kept in all");
        hub.close();
    }

    #[test]
    fn a_line_marks_where_reading_may_resume() {
        let mut asm = assembler();
        let r1 = format!("{T} stdout F one\n");
        let r2 = format!("{T} stdout P ab\n");
        let r3 = format!("{T} stderr F err\n");
        let r4 = format!("{T} stdout F cd\n");
        let input = format!("{r1}{r2}{r3}{r4}");
        let mut out = Vec::new();
        // Read from offset 1000 of the file, in two pieces.
        let (a, b) = input.as_bytes().split_at(r1.len() + 5);
        asm.next_start = 1000;
        asm.feed(a, 1000, &mut out);
        asm.feed(b, 1000 + a.len() as u64, &mut out);
        let got: Vec<(&str, u64)> = out
            .iter()
            .map(|m| (m.entry.line.as_str(), m.mark - 1000))
            .collect();
        let (l1, l2, l3) = (r1.len() as u64, r2.len() as u64, r3.len() as u64);
        assert_eq!(
            got,
            [
                ("one", l1),
                // stdout's "ab" began before "err" ended: resume there.
                ("err", l1),
                ("abcd", input.len() as u64)
            ]
        );
        assert!(l1 + l2 + l3 < input.len() as u64);
        // Each line knows where its last record ends: "err" and "abcd"
        // read again from err's mark (where "ab" began) end where they did.
        let ends: Vec<Option<u64>> = out.iter().map(|m| m.entry.end).collect();
        let (e1, e3, e4) = (1000 + l1, 1000 + l1 + l2 + l3, 1000 + input.len() as u64);
        assert_eq!(ends, [Some(e1), Some(e3), Some(e4)]);
        let mut again = assembler();
        again.next_start = 1000 + l1;
        let mut out = Vec::new();
        again.feed(&input.as_bytes()[l1 as usize..], 1000 + l1, &mut out);
        let got: Vec<(&str, Option<u64>)> = out
            .iter()
            .map(|m| (m.entry.line.as_str(), m.entry.end))
            .collect();
        assert_eq!(got, [("err", Some(e3)), ("abcd", Some(e4))]);
        // A line sent without its end (after `PARTIAL_FLUSH`) ends where
        // its last record read so far does.
        let mut partial = assembler();
        let mut out = Vec::new();
        partial.feed(r2.as_bytes(), 0, &mut out);
        partial.flush_stale(true, &mut out);
        assert_eq!(out[0].entry.end, Some(r2.len() as u64));
    }

    const CTR: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn follow(adopted: bool) -> Follow {
        Follow {
            id: CTR.into(),
            function: Arc::from("logs-unit-resume"),
            deployment: Arc::new(std::sync::atomic::AtomicI64::new(1)),
            journal: None,
            adopted,
        }
    }

    fn hub_with_offsets(dir: &Path) -> Arc<LogHub> {
        LogHub::new(LogConfig {
            offsets_dir: Some(dir.to_path_buf()),
            ..LogConfig::default()
        })
        .unwrap()
    }

    /// Follows `path` as container [`CTR`] on `hub` until the file goes.
    fn spawn_tail(hub: &Arc<LogHub>, path: &Path, adopted: bool) -> tokio::task::JoinHandle<()> {
        let (hub, path) = (Arc::clone(hub), path.to_path_buf());
        tokio::spawn(async move {
            let offsets = hub.offsets.clone();
            tail(&hub, &path, &follow(adopted), offsets.as_ref()).await;
        })
    }

    /// Follows `path` as container [`CTR`] as `LogHub::follow` does: on the
    /// hub's tasks, until the hub stops.
    fn follow_until_stop(hub: &Arc<LogHub>, path: &Path) {
        let (h, path) = (Arc::clone(hub), path.to_path_buf());
        hub.tailers.spawn(async move {
            let stop = h.stop.clone();
            let (offsets, follow) = (h.offsets.clone(), follow(false));
            tokio::select! {
                () = tail(&h, &path, &follow, offsets.as_ref()) => {}
                () = stop.cancelled() => {}
            }
        });
    }

    /// Waits (5 s at most) until `n` lines are queued.
    async fn queued(hub: &LogHub, n: usize) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while hub.queue.lock().unwrap().lines.len() < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{n} lines queued"));
    }

    /// Takes lines until `n` came (5 s at most), then checks no more come.
    async fn take_exactly(hub: &LogHub, n: usize) -> Vec<Captured> {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), async {
            while got.len() < n {
                hub.wait().await;
                got.extend(hub.take(100, 1 << 20));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{n} lines expected, got {}", got.len()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(hub.take(100, 1 << 20).is_empty(), "more than {n} lines");
        got
    }

    fn texts(lines: &[Captured]) -> Vec<&str> {
        lines.iter().map(|c| c.entry.line.as_str()).collect()
    }

    /// The `n` lines a proxy with offsets in `dir` reads from `log` when it
    /// adopts the instance.
    async fn adopted_reads(dir: &Path, log: &Path, n: usize) -> Vec<String> {
        let hub = hub_with_offsets(dir);
        let task = spawn_tail(&hub, log, true);
        let got = take_exactly(&hub, n).await;
        task.abort();
        hub.close();
        texts(&got).into_iter().map(str::to_owned).collect()
    }

    fn append(path: &Path, lines: &[&str]) {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for l in lines {
            writeln!(f, "{T} stdout F {l}").unwrap();
        }
    }

    #[tokio::test]
    async fn an_adopted_instance_resumes_after_the_acknowledged_lines() {
        let root = tempfile::tempdir().unwrap();
        let log = root.path().join("ctr.log");
        let dir = root.path().join(offsets::DIR_NAME);
        append(&log, &["one", "two", "three"]);
        // The first proxy: a new instance, read from its start; the control
        // plane acknowledged two lines when it stopped.
        let hub = hub_with_offsets(&dir);
        let task = spawn_tail(&hub, &log, false);
        let got = take_exactly(&hub, 3).await;
        assert_eq!(texts(&got), ["one", "two", "three"]);
        hub.acknowledge(&got[..2]);
        let (again, lost) = hub.flush(Duration::from_millis(50)).await;
        assert_eq!((again, lost), (1, 0), "the third is read again");
        task.abort();
        let ino = std::fs::metadata(&log).unwrap().ino();
        let saved = Offsets::new(dir.clone()).load(CTR).unwrap();
        let two = format!("{T} stdout F one\n{T} stdout F two\n").len() as u64;
        assert_eq!(saved.at, Position { ino, offset: two });
        let name = file_identity(&std::fs::File::open(&log).unwrap(), ino).unwrap();
        assert_eq!(
            saved.file,
            SavedName::Known(name.to_string()),
            "saved with its file's name"
        );
        // Printed while no proxy ran.
        append(&log, &["four"]);
        // The next proxy adopts it: the unacknowledged line and the new one,
        // each once.
        let hub = hub_with_offsets(&dir);
        let task = spawn_tail(&hub, &log, true);
        let got = take_exactly(&hub, 2).await;
        assert_eq!(texts(&got), ["three", "four"]);
        hub.acknowledge(&got);
        hub.offsets.as_ref().unwrap().save(true);
        let len = std::fs::metadata(&log).unwrap().len();
        assert_eq!(
            Offsets::new(dir.clone()).load(CTR).map(|s| s.at),
            Some(Position { ino, offset: len })
        );
        // The container goes: its offset file too.
        std::fs::remove_file(&log).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the tailer ends with its file")
            .unwrap();
        assert!(!dir.join(CTR).exists(), "offset file removed");
        hub.close();
    }

    #[tokio::test]
    async fn without_a_usable_offset_an_adopted_instance_starts_at_the_end_or_the_start() {
        let root = tempfile::tempdir().unwrap();
        let log = root.path().join("ctr.log");
        let dir = root.path().join(offsets::DIR_NAME);
        append(&log, &["old"]);
        let ino = std::fs::metadata(&log).unwrap().ino();
        std::fs::create_dir_all(&dir).unwrap();
        // Nothing saved, or a corrupt file (a warning): from the end.
        for content in [None, Some("{\"container\": 12"), Some("\u{0}\u{ff}")] {
            if let Some(content) = content {
                std::fs::write(dir.join(CTR), content).unwrap();
            }
            let hub = hub_with_offsets(&dir);
            let task = spawn_tail(&hub, &log, true);
            tokio::time::sleep(Duration::from_millis(200)).await;
            append(&log, &["new"]);
            let got = take_exactly(&hub, 1).await;
            assert_eq!(texts(&got), ["new"], "{content:?}");
            task.abort();
            hub.close();
            let _ = std::fs::remove_file(dir.join(CTR));
        }
        // Saved for another inode (rotated while no proxy ran), beyond the
        // end, or for the same inode under another name (a later file got
        // the number conmon's rotation freed): the whole file.
        let name = file_identity(&std::fs::File::open(&log).unwrap(), ino).unwrap();
        let first = format!("{T} stdout F old\n").len() as u64;
        // The offset file, and the name beside it (`None`: no names file,
        // as an older proxy saved).
        let save = |ino: u64, offset: u64, file: Option<&str>| {
            let at = format!("\"container\":\"{CTR}\",\"ino\":{ino},\"offset\":{offset}");
            std::fs::write(dir.join(CTR), format!("{{{at}}}")).unwrap();
            let names = dir.join(offsets::NAMES_DIR);
            std::fs::create_dir_all(&names).unwrap();
            match file {
                Some(file) => {
                    let named = format!("{{{at},\"file\":\"{file}\"}}");
                    std::fs::write(names.join(CTR), named).unwrap();
                }
                None => {
                    let _ = std::fs::remove_file(names.join(CTR));
                }
            }
        };
        let other = format!("{ino}-1");
        let renamed = format!("{name}x");
        for (saved_ino, offset, file) in [
            (ino + 1, first, None),
            (ino, 1u64 << 40, None),
            (ino, first, Some(other.as_str())),
            (ino, first, Some(renamed.as_str())),
        ] {
            save(saved_ino, offset, file);
            assert_eq!(
                adopted_reads(&dir, &log, 4).await,
                ["old", "new", "new", "new"],
                "{file:?}"
            );
        }
        let names = dir.join(offsets::NAMES_DIR).join(CTR);
        // A names file that agrees and holds no name (as this proxy saves
        // a file with no record yet), for another inode: the whole file.
        save(ino + 1, first, None);
        let null = format!(
            "{{\"container\":\"{CTR}\",\"ino\":{},\"offset\":{first},\"file\":null}}",
            ino + 1
        );
        std::fs::write(&names, null).unwrap();
        assert_eq!(
            adopted_reads(&dir, &log, 4).await,
            ["old", "new", "new", "new"],
            "null, another inode"
        );
        // A names file that does not agree with the offset file and holds
        // no name: which file is not known, the whole file.
        save(ino, first, None);
        let null = format!("{{\"container\":\"{CTR}\",\"ino\":{ino},\"offset\":5,\"file\":null}}");
        std::fs::write(&names, null).unwrap();
        assert_eq!(
            adopted_reads(&dir, &log, 4).await,
            ["old", "new", "new", "new"],
            "disagreeing"
        );
        // A names file ahead of the offset file (a kill between the two
        // writes) with its file's name: reading resumes at its place (the
        // offset file's would give the first line too).
        save(ino, 0, None);
        let ahead = format!(
            "{{\"container\":\"{CTR}\",\"ino\":{ino},\"offset\":{first},\"file\":\"{name}\"}}"
        );
        std::fs::write(&names, ahead).unwrap();
        assert_eq!(adopted_reads(&dir, &log, 3).await, ["new", "new", "new"]);
        // An offset inside a record of the file it names: reading resumes
        // at the next one.
        save(ino, 5, Some(&name));
        assert_eq!(adopted_reads(&dir, &log, 3).await, ["new", "new", "new"]);
    }

    fn numbered(n: usize) -> Vec<Marked> {
        marked(
            (0..n)
                .map(|n| LogEntry {
                    at_ns: n as i64,
                    stream: LogStream::Stdout,
                    request_id: None,
                    line: format!("line {n}"),
                    end: None,
                })
                .collect(),
        )
    }

    #[tokio::test]
    async fn a_graceful_stop_counts_only_lines_no_proxy_can_read_again() {
        let root = tempfile::tempdir().unwrap();
        let hub = hub_with_offsets(&root.path().join(offsets::DIR_NAME));
        let f: Arc<str> = Arc::from("logs-unit-shutdown");
        let i: Arc<str> = Arc::from("abc");
        let kept: Arc<str> = Arc::from(CTR);
        let offsets = hub.offsets.as_ref().unwrap();
        offsets.register(&kept, Position { ino: 1, offset: 0 }, None);
        let gone: Arc<str> = Arc::from("fedcba");
        // A container whose log was rotated twice: its current file got the
        // inode (5) of the file before the last.
        let reused: Arc<str> = Arc::from("5555");
        offsets.register(&reused, Position { ino: 5, offset: 0 }, None);
        let read = |ino, rotation| FileRead { ino, rotation };
        // In flight (taken by the shipper, not acknowledged): one of each
        // kind. Lines of the file conmon writes now (inode 1, rotated away
        // below), of no file, of a container gone, of the next file (2);
        // of the first file with inode 5 (rotated away) and of the third.
        hub.push(&f, 1, &i, None, Some((&kept, read(1, 0))), numbered(2));
        hub.push(&f, 1, &i, None, None, numbered(1));
        hub.push(&f, 1, &i, None, Some((&gone, read(1, 0))), numbered(1));
        hub.push(&f, 1, &i, None, Some((&kept, read(2, 1))), numbered(1));
        hub.push(&f, 1, &i, None, Some((&reused, read(5, 0))), numbered(1));
        hub.push(&f, 1, &i, None, Some((&reused, read(5, 2))), numbered(2));
        assert_eq!(hub.take(100, 1 << 20).len(), 8);
        // Queued: the same kinds.
        hub.push(&f, 1, &i, None, Some((&kept, read(1, 0))), numbered(1));
        hub.push(&f, 1, &i, None, None, numbered(2));
        hub.push(&f, 1, &i, None, Some((&gone, read(1, 0))), numbered(1));
        hub.push(&f, 1, &i, None, Some((&kept, read(2, 1))), numbered(3));
        hub.push(&f, 1, &i, None, Some((&reused, read(5, 0))), numbered(3));
        hub.push(&f, 1, &i, None, Some((&reused, read(5, 2))), numbered(1));
        // Conmon rotated the file: the tailer went on with inode 2; what is
        // left of inode 1 is not read again by the next proxy (it reads the
        // current file, from its start).
        assert_eq!(offsets.rotated(CTR, 2), 1);
        // Twice, and the current file has the first one's inode again: the
        // first one's lines are not read again either.
        assert_eq!(offsets.rotated(&reused, 6), 1);
        assert_eq!(offsets.rotated(&reused, 5), 2);
        let before = METRICS
            .dropped
            .with_label_values(&["logs-unit-shutdown", "shutdown"])
            .get();
        let (again, lost) = hub.flush(Duration::from_millis(50)).await;
        // Again: inode 2's, 1 in flight and 3 queued; the third file of
        // inode 5, 2 in flight and 1 queued. Lost: in flight 2 of inode 1,
        // 1 of no file, 1 of the container gone, 1 of the first file of
        // inode 5; queued 1, 2, 1, 3.
        assert_eq!((again, lost), (7, 12));
        let after = METRICS
            .dropped
            .with_label_values(&["logs-unit-shutdown", "shutdown"])
            .get();
        assert_eq!(after - before, 12);
    }

    #[test]
    fn lines_written_just_before_a_rotation_are_read_from_the_old_file() {
        let root = tempfile::tempdir().unwrap();
        let log = root.path().join("ctr.log");
        append(&log, &["one"]);
        let mut file = open(&log).unwrap().unwrap();
        let (mut asm, mut pos, mut chunk, mut out) =
            (assembler(), 0u64, vec![0u8; 1024], Vec::new());
        read_rest(&mut file.0, &mut asm, &mut pos, &mut chunk, &mut out);
        // The tailer's read found the end; before it looks at the path,
        // conmon writes its last records and renames a new file over it.
        append(&log, &["two", "three"]);
        let rotated = root.path().join("new.log");
        append(&rotated, &["four"]);
        std::fs::rename(&rotated, &log).unwrap();
        let AtEnd::Rotated(next) =
            at_end(&log, &mut file, &mut asm, &mut pos, &mut chunk, &mut out)
        else {
            panic!("the rotation is seen");
        };
        let got: Vec<&str> = out.iter().map(|m| m.entry.line.as_str()).collect();
        assert_eq!(got, ["one", "two", "three"]);
        assert_eq!(next.1, std::fs::metadata(&log).unwrap().ino());
        // And a removal: the old file's last lines too.
        let mut file = next;
        let (mut pos, mut out) = (0u64, Vec::new());
        read_rest(&mut file.0, &mut asm, &mut pos, &mut chunk, &mut out);
        append(&log, &["five"]);
        std::fs::remove_file(&log).unwrap();
        assert!(matches!(
            at_end(&log, &mut file, &mut asm, &mut pos, &mut chunk, &mut out),
            AtEnd::Gone
        ));
        let got: Vec<&str> = out.iter().map(|m| m.entry.line.as_str()).collect();
        assert_eq!(got, ["four", "five"]);
    }

    #[test]
    fn a_file_is_named_by_its_inode_and_first_records_time() {
        let root = tempfile::tempdir().unwrap();
        let log = root.path().join("ctr.log");
        std::fs::write(&log, "").unwrap();
        let file = std::fs::File::open(&log).unwrap();
        assert_eq!(file_identity(&file, 7), None, "no record yet");
        std::fs::write(&log, "2026-11-29T21:47:38.396301304+00:00").unwrap();
        assert_eq!(file_identity(&file, 7), None, "its time not ended yet");
        std::fs::write(&log, "").unwrap();
        append(&log, &["one"]);
        let a = file_identity(&file, 7).unwrap();
        assert_eq!(&*a, "7-202611292147383963013040000");
        // The same inode number, another file (after a rotation freed it).
        std::fs::write(&log, "2026-11-29T21:50:00.000000001+00:00 stdout F x\n").unwrap();
        let b = file_identity(&file, 7).unwrap();
        assert_ne!(a, b);
        assert!(containerpub_wire::logs::is_valid_file_id(&a));
        std::fs::write(&log, "garbage without digits\n").unwrap();
        assert_eq!(file_identity(&file, 7), None);
    }

    #[tokio::test]
    async fn lines_name_their_file_and_an_unfinished_one_stays_with_the_old_file() {
        let root = tempfile::tempdir().unwrap();
        let log = root.path().join("ctr.log");
        // A finished line, then the first part of one on stdout.
        append(&log, &["one"]);
        let part = format!("{T} stdout P par\n");
        {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            f.write_all(part.as_bytes()).unwrap();
        }
        let old_len = std::fs::metadata(&log).unwrap().len();
        let hub = LogHub::new(LogConfig::default()).unwrap();
        let tailer = spawn_tail(&hub, &log, false);
        let first = take_exactly(&hub, 1).await;
        assert_eq!(texts(&first), ["one"]);
        // Rotated: the rest of that line never comes in the old file.
        let rotated = root.path().join("new.log");
        std::fs::write(
            &rotated,
            "2026-11-29T22:00:00.000000001+00:00 stdout F two\n",
        )
        .unwrap();
        std::fs::rename(&rotated, &log).unwrap();
        let rest = take_exactly(&hub, 2).await;
        assert_eq!(texts(&rest), ["par", "two"]);
        let old = first[0].file.clone().expect("named");
        assert_eq!(rest[0].file.as_deref(), Some(&*old), "the old file's");
        assert_eq!(rest[0].entry.end, Some(old_len));
        let new = rest[1].file.clone().expect("named");
        assert_ne!(new, old);
        assert!(new.ends_with("-202611292200000000000010000"), "{new}");
        std::fs::remove_file(&log).unwrap();
        tailer.await.unwrap();
        hub.close();
    }

    #[tokio::test]
    async fn a_container_removed_while_the_logs_flush_is_read_to_its_end_and_counted() {
        let root = tempfile::tempdir().unwrap();
        let log = root.path().join("ctr.log");
        append(&log, &["one", "two", "three"]);
        let hub = hub_with_offsets(&root.path().join(offsets::DIR_NAME));
        follow_until_stop(&hub, &log);
        queued(&hub, 3).await;
        // No shipper: the flush waits its whole time. Meanwhile the
        // container prints a last line and is removed.
        let remover = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            append(&log, &["last words"]);
            std::fs::remove_file(&log).unwrap();
        });
        let (again, lost) = hub.flush(Duration::from_millis(1500)).await;
        remover.await.unwrap();
        // Its file and offset are gone: no proxy reads any of them again,
        // and the last line was read too.
        assert_eq!((again, lost), (0, 4));
    }

    #[tokio::test]
    async fn a_graceful_stop_after_a_rotation_counts_the_old_files_lines_only() {
        let root = tempfile::tempdir().unwrap();
        let log = root.path().join("ctr.log");
        append(&log, &["one", "two"]);
        let hub = hub_with_offsets(&root.path().join(offsets::DIR_NAME));
        follow_until_stop(&hub, &log);
        queued(&hub, 2).await;
        // Conmon rotates: a new file renamed over the old one.
        let next = root.path().join("next.log");
        std::fs::write(&next, format!("{T} stdout F three\n")).unwrap();
        std::fs::rename(&next, &log).unwrap();
        queued(&hub, 3).await;
        // No shipper: all three are still queued at the stop. The next
        // proxy reads the current file again, not the one rotated away.
        let (again, lost) = hub.flush(Duration::from_millis(100)).await;
        assert_eq!((again, lost), (1, 2));
    }

    #[tokio::test]
    async fn a_log_path_that_cannot_be_opened_for_a_while_is_retried_and_its_offset_kept() {
        let root = tempfile::tempdir().unwrap();
        let log = root.path().join("ctr.log");
        append(&log, &["one"]);
        let hub = hub_with_offsets(&root.path().join(offsets::DIR_NAME));
        let tailer = spawn_tail(&hub, &log, false);
        assert_eq!(texts(&take_exactly(&hub, 1).await), ["one"]);
        // The path is there but cannot be opened (a link to itself: ELOOP;
        // as root, a permission cannot be refused).
        let looped = root.path().join("looped");
        std::os::unix::fs::symlink("ctr.log", &looped).unwrap();
        std::fs::rename(&looped, &log).unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!tailer.is_finished(), "the tailer waits for its log");
        let offsets = hub.offsets.as_ref().unwrap();
        assert!(offsets.is_kept(CTR), "the offset is kept");
        // Openable again, as a new file: followed from its start.
        let next = root.path().join("next.log");
        std::fs::write(&next, format!("{T} stdout F two\n")).unwrap();
        std::fs::rename(&next, &log).unwrap();
        assert_eq!(texts(&take_exactly(&hub, 1).await), ["two"]);
        assert!(offsets.is_kept(CTR));
        std::fs::remove_file(&log).unwrap();
        tokio::time::timeout(Duration::from_secs(5), tailer)
            .await
            .expect("the tailer ends when its log is removed")
            .unwrap();
        assert!(!offsets.is_kept(CTR), "a removed container's offset goes");
    }

    #[test]
    fn the_log_path_comes_from_inspect() {
        let v = serde_json::json!({"HostConfig": {"LogConfig": {"Type": "k8s-file", "Path": "/x/ctr.log"}}});
        assert_eq!(log_path_of(&v), Some(PathBuf::from("/x/ctr.log")));
        let v = serde_json::json!({"HostConfig": {"LogConfig": {"Type": "journald", "Path": ""}}});
        assert_eq!(log_path_of(&v), None);
    }
}
