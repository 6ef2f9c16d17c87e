//! Execution records: one per call of a routed function, sent to the control
//! plane (`POST /api/v1/executions`) in batches; the proxy never opens
//! PostgreSQL.
//!
//! The data path only fills a [`Raw`] record (no allocation: the request id
//! is copied in or, past 32 bytes, moves in ([`RecordId`]), the route entry
//! is an `Arc`, the rest is inline) and pushes it
//! onto its worker thread's local batch; a full batch, or every 250 ms the
//! worker's flush tick ([`flush_local`]), goes through a bounded channel to
//! the shipper on the background runtime. When the channel is full the
//! batch is dropped and counted — the data path never waits.
//!
//! The shipper encodes records into binary bodies
//! (`containerpub_wire::executions::binary`: the control plane decodes
//! them for a fraction of what JSON cost it) of up to [`POST_RECORDS`]
//! records, each with a batch id unique to this process
//! (the control plane stores a batch once, so a resend after a lost answer
//! adds nothing), and posts them oldest first. Only a 400 or 422 drops a
//! body; any other answer, or a 2xx without the control plane's answer,
//! sends it again (`crate::ingest`, the log shipper's rule too). While the
//! control plane is unreachable, bodies wait in memory (up to
//! `memory_bytes`), then in spool
//! files in `<state-dir>/executions/` (up to `spool_bytes`; written as JSON,
//! so that they are sent by the next proxy too, after a restart or a
//! rollback to a version before the binary form); what does not fit is
//! dropped and
//! counted in `cpub_execution_records_dropped_total{reason}`.
//!
//! Over 600 lines (about 700 lines of code, 300 of tests): it is
//! the record's whole way from a call to the control plane — the data
//! path's side and the shipper share the batch, the metrics and the queue.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerpub_pool::StartKind;
use containerpub_wire::executions as wire;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use crate::h1::{self, Field};
use crate::ingest::{self, Outage, Verdict, verdict_of};
use crate::metrics::Rejection;
use crate::routes::Entry;

/// Records a worker collects before it hands them over.
const LOCAL_BATCH: usize = 256;
/// Batches the channel to the shipper holds.
const CHANNEL_BATCHES: usize = 1024;
/// Most records in one posted body: as many as a batch may hold. Each body
/// costs the control plane and PostgreSQL about 2 ms besides its records
/// (docs/BENCHMARKS.md), so under load fewer, larger bodies cost less.
pub const POST_RECORDS: usize = wire::MAX_BATCH_RECORDS;
/// Longest a record waits before its body is posted.
const POST_EVERY: Duration = Duration::from_millis(500);
/// Pause after a failed post before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long bodies go as JSON after the control plane refused the binary
/// form (a version from before it) before the binary form is tried again.
const JSON_FOR: Duration = Duration::from_secs(600);
/// Spool file suffix. Spooled bodies are JSON, as before the binary form:
/// an older proxy (after a rollback) still sends them.
const SPOOL_SUFFIX: &str = ".json";

/// What the data path records of one call (its route entry is passed
/// beside it to [`push`]).
pub struct Raw {
    pub at: SystemTime,
    pub instance: Option<ShortId>,
    pub request_id: RecordId,
    pub trace_id: Option<[u8; wire::TRACE_ID_LEN]>,
    pub method: Method,
    pub status: u16,
    pub start: Option<StartKind>,
    pub queue: Duration,
    pub start_time: Duration,
    pub upstream: Duration,
    pub total: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub rejection: Option<Rejection>,
}

/// A worker's records and the route entries they name: a record holds an
/// index into `entries`, so the entry's `Arc` is cloned once per batch and
/// function rather than per call (a shared reference count both workers
/// would otherwise write on every call).
#[derive(Default)]
pub struct Batch {
    entries: Vec<Arc<Entry>>,
    records: Vec<(u32, Raw)>,
}

impl Batch {
    fn push(&mut self, entry: &Arc<Entry>, raw: Raw) {
        let at = match self.entries.iter().rposition(|e| Arc::ptr_eq(e, entry)) {
            Some(at) => at,
            None => {
                self.entries.push(Arc::clone(entry));
                self.entries.len() - 1
            }
        };
        self.records.push((at as u32, raw));
    }

    fn len(&self) -> usize {
        self.records.len()
    }
}

/// A call's request id in its record: inline when it is at most 32 bytes
/// (the ids the proxy makes), so that the call's `String` is freed on its
/// worker thread, whose allocator cache then serves the next call's id (a
/// `String` moved into the record was freed on the shipper's thread, and
/// the worker's next allocation took malloc's slow path); a longer id a
/// caller sent moves in.
pub enum RecordId {
    Inline([u8; 32], u8),
    Owned(String),
}

impl RecordId {
    /// Copies a short id, takes a long one (leaving `id` empty).
    pub fn new(id: &mut String) -> Self {
        let mut inline = [0u8; 32];
        match inline.get_mut(..id.len()) {
            Some(dst) => {
                dst.copy_from_slice(id.as_bytes());
                Self::Inline(inline, id.len() as u8)
            }
            None => Self::Owned(std::mem::take(id)),
        }
    }

    /// The id's bytes (a copy of a whole `str`: UTF-8).
    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline(bytes, n) => bytes.get(..usize::from(*n)).unwrap_or_default(),
            Self::Owned(s) => s.as_bytes(),
        }
    }
}

/// An instance id's first 12 characters (Podman's short id), inline.
#[derive(Clone, Copy)]
pub struct ShortId([u8; 12], u8);

impl ShortId {
    pub fn new(id: &str) -> Self {
        let mut out = [0u8; 12];
        // Cut at a character boundary: the bytes stay UTF-8.
        let mut n = id.len().min(12);
        while !id.is_char_boundary(n) {
            n -= 1;
        }
        out.get_mut(..n)
            .unwrap_or_default()
            .copy_from_slice(id.as_bytes().get(..n).unwrap_or_default());
        Self(out, n as u8)
    }

    /// The short id's bytes (UTF-8).
    fn as_bytes(&self) -> &[u8] {
        self.0.get(..usize::from(self.1)).unwrap_or_default()
    }
}

/// A request method, inline (longer ones are cut; the proxy refuses none
/// by length).
#[derive(Clone, Copy, Default)]
pub struct Method([u8; 16], u8);

impl Method {
    pub fn new(method: &[u8]) -> Self {
        let mut out = [0u8; 16];
        let n = method.len().min(16);
        if let (Some(dst), Some(src)) = (out.get_mut(..n), method.get(..n)) {
            dst.copy_from_slice(src);
        }
        Self(out, n as u8)
    }

    /// The method's bytes when they are visible ASCII, else `?`.
    fn as_bytes(&self) -> &[u8] {
        match self.0.get(..usize::from(self.1)) {
            Some(m) if !m.is_empty() && m.iter().all(u8::is_ascii_graphic) => m,
            _ => b"?",
        }
    }
}

/// The trace id of the request's `traceparent` field, when it has one
/// valid field of that name.
pub fn trace_id(buf: &[u8], fields: &[Field]) -> Option<[u8; wire::TRACE_ID_LEN]> {
    let mut found = None;
    for f in fields {
        if f.kind != h1::Name::Traceparent {
            continue;
        }
        if found.is_some() {
            // Two of them: W3C says to ignore both.
            return None;
        }
        let value = buf.get(f.value.clone()).unwrap_or_default();
        found = Some(wire::trace_id_of_traceparent(value).and_then(|t| t.try_into().ok()));
    }
    found.flatten()
}

/// Fills what admission knows of a call into its record: the method, the
/// trace id, and the bytes the client sends (its head and a
/// `content-length` body; of a chunked body, nothing is counted). Nothing
/// when records are off.
pub fn describe(
    call: &mut crate::service::Call,
    method: &[u8],
    line: &h1::RequestLine,
    framing: h1::Framing,
    buf: &[u8],
    fields: &[Field],
) {
    if !enabled() {
        return;
    }
    call.method = Method::new(method);
    // The trace the instance is told about (`trace.rs`: the request's valid
    // `traceparent`, else one the proxy made), so a record and the
    // function's log lines share it; the request's own field otherwise.
    // `trace::pick` made it, so it is valid and its trace id is at 3..35:
    // not checked again (about 260 instructions a call, callgrind).
    let picked = call.traceparent.as_bytes().get(3..35);
    debug_assert!(picked.is_none_or(wire::is_trace_id), "{}", call.traceparent);
    call.trace_id = picked
        .and_then(|t| t.try_into().ok())
        .or_else(|| trace_id(buf, fields));
    call.bytes_in = line.head_len as u64
        + match framing {
            h1::Framing::Length(n) => n,
            _ => 0,
        };
}

/// The records' metrics, defined once here.
struct Metrics {
    dropped: IntCounterVec,
    sent: IntCounter,
    pending: IntGauge,
    spool_bytes: IntGauge,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let dropped = IntCounterVec::new(
            Opts::new(
                "cpub_execution_records_dropped_total",
                "Execution records lost: channel_full (the shipper fell behind), spool_full (the control plane was away too long), refused (the control plane refused the batch)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let sent = IntCounter::new(
            "cpub_execution_records_sent_total",
            "Execution records the control plane stored",
        )
        .expect("valid metric");
        let pending = IntGauge::new(
            "cpub_execution_records_pending",
            "Execution records waiting to be sent (memory and spool)",
        )
        .expect("valid metric");
        let spool_bytes = IntGauge::new(
            "cpub_execution_spool_bytes",
            "Bytes of execution records in spool files",
        )
        .expect("valid metric");
        let r = prometheus::default_registry();
        for reason in ["channel_full", "spool_full", "refused"] {
            dropped.with_label_values(&[reason]);
        }
        let _ = r.register(Box::new(dropped.clone()));
        let _ = r.register(Box::new(sent.clone()));
        let _ = r.register(Box::new(pending.clone()));
        let _ = r.register(Box::new(spool_bytes.clone()));
        Metrics {
            dropped,
            sent,
            pending,
            spool_bytes,
        }
    })
}

/// Registers the records' metrics (so a scrape shows them at zero).
pub fn init_metrics() {
    metrics();
}

static SINK: OnceLock<mpsc::Sender<Batch>> = OnceLock::new();
static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();

thread_local! {
    static LOCAL: RefCell<Batch> = RefCell::new(Batch::default());
}

/// Whether records are kept (the shipper runs).
#[inline]
pub fn enabled() -> bool {
    SINK.get().is_some()
}

/// Adds one call's record to this thread's batch.
pub fn push(entry: &Arc<Entry>, raw: Raw) {
    let full = LOCAL.with(|local| {
        let mut local = local.borrow_mut();
        if local.records.capacity() == 0 {
            local.records.reserve_exact(LOCAL_BATCH);
        }
        local.push(entry, raw);
        (local.len() >= LOCAL_BATCH).then(|| std::mem::take(&mut *local))
    });
    if let Some(batch) = full {
        hand_over(batch);
    }
}

/// Hands this thread's records to the shipper (the worker's flush tick).
pub fn flush_local() {
    let batch = LOCAL.with(|local| std::mem::take(&mut *local.borrow_mut()));
    if batch.len() > 0 {
        hand_over(batch);
    }
}

fn hand_over(batch: Batch) {
    let Some(tx) = SINK.get() else { return };
    if let Err(e) = tx.try_send(batch) {
        let batch = match e {
            mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => b,
        };
        metrics()
            .dropped
            .with_label_values(&["channel_full"])
            .inc_by(batch.len() as u64);
    }
}

/// Settings of the shipper.
#[derive(Debug, Clone)]
pub struct Settings {
    pub control_url: String,
    pub token: String,
    pub node: String,
    /// Spool directory (created when needed).
    pub spool_dir: PathBuf,
    /// Encoded bodies kept in memory while the control plane is away.
    pub memory_bytes: u64,
    /// Bytes of spool files at most (0: no spool).
    pub spool_bytes: u64,
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The wire form of `raw` (a call of `entry`'s function), borrowed, its
/// strings as bytes (each a copy of a `str`, or ASCII): not validated again.
fn record<'a>(entry: &'a Entry, raw: &'a Raw) -> wire::binary::RecordBytes<'a> {
    let at_us = raw
        .at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    let request_id = match raw.request_id.as_bytes() {
        b"" => b"-",
        id => id,
    };
    wire::binary::RecordBytes {
        at_us,
        function: &entry.route.function,
        deployment_id: entry.route.deployment_id,
        version: entry.route.version,
        instance: raw.instance.as_ref().map_or(&[][..], ShortId::as_bytes),
        request_id,
        trace_id: raw.trace_id.as_ref().map_or(&[][..], |t| &t[..]),
        method: raw.method.as_bytes(),
        status: raw.status,
        start: raw.start.map(wire_start),
        queue_us: us(raw.queue).min(86_400_000_000),
        start_us: us(raw.start_time).min(86_400_000_000),
        upstream_us: us(raw.upstream).min(86_400_000_000),
        total_us: us(raw.total).min(86_400_000_000),
        bytes_in: raw.bytes_in.min(i64::MAX as u64),
        bytes_out: raw.bytes_out.min(i64::MAX as u64),
        rejection: raw.rejection.map_or(&[][..], |r| r.as_str().as_bytes()),
    }
}

fn wire_start(kind: StartKind) -> wire::StartKind {
    match kind {
        StartKind::Cold => wire::StartKind::Cold,
        StartKind::Paused => wire::StartKind::Paused,
        StartKind::Warm => wire::StartKind::Warm,
    }
}

/// One encoded body waiting to be posted.
struct Body {
    seq: u64,
    records: u64,
    bytes: Vec<u8>,
}

// A body fits a batch the control plane accepts.
const _: () = assert!(POST_RECORDS <= wire::MAX_BATCH_RECORDS);

/// Encodes records into binary bodies of up to [`POST_RECORDS`].
struct Encoder {
    node: String,
    boot: String,
    next_seq: u64,
    batch: wire::binary::Encoder,
}

impl Encoder {
    fn new(node: &str, boot: String, next_seq: u64) -> Self {
        Self {
            node: node.to_owned(),
            boot,
            next_seq,
            batch: wire::binary::Encoder::default(),
        }
    }

    fn add(&mut self, entry: &Entry, raw: &Raw) -> Option<Body> {
        self.batch.push_bytes(&record(entry, raw));
        (self.batch.len() >= POST_RECORDS)
            .then(|| self.finish())
            .flatten()
    }

    fn finish(&mut self) -> Option<Body> {
        if self.batch.is_empty() {
            return None;
        }
        let records = self.batch.len() as u64;
        let id = format!("{}-{}", self.boot, self.next_seq);
        let body = Body {
            seq: self.next_seq,
            records,
            bytes: self.batch.finish(&self.node, &id),
        };
        self.next_seq += 1;
        Some(body)
    }
}

/// A spool file: its body's sequence, path, records (estimated for files
/// an earlier run left) and bytes.
struct SpoolFile {
    seq: u64,
    path: PathBuf,
    records: u64,
    bytes: u64,
}

/// Bodies waiting: oldest first, in spool files then in memory.
struct Queue {
    memory: VecDeque<Body>,
    memory_bytes: u64,
    /// Spool files, oldest first.
    spool: VecDeque<SpoolFile>,
    spool_bytes: u64,
}

impl Queue {
    fn pending(&self) -> u64 {
        self.memory.iter().map(|b| b.records).sum::<u64>()
            + self.spool.iter().map(|s| s.records).sum::<u64>()
    }
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Notify,
    settings: Settings,
}

/// Starts keeping records: creates the channel the workers hand batches
/// to and spawns the encoder and the sender on the current runtime.
/// Spool files a previous proxy left are sent first.
pub fn start(settings: Settings) {
    init_metrics();
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    if SINK.set(tx).is_err() {
        warn!("execution records already started");
        return;
    }
    let (spool, spool_bytes, max_seq) = scan_spool(&settings.spool_dir);
    if !spool.is_empty() {
        info!(
            files = spool.len(),
            bytes = spool_bytes,
            "execution records spooled by an earlier run will be sent"
        );
    }
    let boot = containerpub_wire::request_id::generate();
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            memory: VecDeque::new(),
            memory_bytes: 0,
            spool,
            spool_bytes,
        }),
        ready: Notify::new(),
        settings,
    });
    update_gauges(&shared);
    let _ = SHARED.set(shared.clone());
    let encoder = Encoder::new(&shared.settings.node, boot, max_seq + 1);
    tokio::spawn(encode_loop(rx, encoder, shared.clone()));
    tokio::spawn(send_loop(shared));
}

/// Existing spool files: (queue, bytes, highest sequence).
fn scan_spool(dir: &Path) -> (VecDeque<SpoolFile>, u64, u64) {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SPOOL_SUFFIX))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let bytes = entry.metadata().map_or(0, |m| m.len());
            // The count is not known without reading it: estimate for the
            // gauge (about 300 bytes a record).
            files.push(SpoolFile {
                seq,
                path: entry.path(),
                records: bytes / 300,
                bytes,
            });
        }
    }
    files.sort_by_key(|f| f.seq);
    let bytes = files.iter().map(|f| f.bytes).sum();
    let max = files.last().map_or(0, |f| f.seq);
    (files.into(), bytes, max)
}

fn update_gauges(shared: &Shared) {
    let q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
    metrics().pending.set(q.pending() as i64);
    metrics().spool_bytes.set(q.spool_bytes as i64);
}

async fn encode_loop(mut rx: mpsc::Receiver<Batch>, mut encoder: Encoder, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(POST_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            batch = rx.recv() => {
                let Some(batch) = batch else { break };
                for (at, raw) in &batch.records {
                    let Some(entry) = batch.entries.get(*at as usize) else { continue };
                    if let Some(body) = encoder.add(entry, raw) {
                        enqueue(&shared, body);
                    }
                }
                // The records (and their `Arc<Entry>`s) are dropped here.
            }
            _ = tick.tick() => {
                if let Some(body) = encoder.finish() {
                    enqueue(&shared, body);
                }
            }
        }
    }
    if let Some(body) = encoder.finish() {
        enqueue(&shared, body);
    }
}

/// Queues a body; bodies over the memory limit move to the spool (oldest
/// first), and what the spool cannot take is dropped.
fn enqueue(shared: &Shared, body: Body) {
    let settings = &shared.settings;
    let mut spill = Vec::new();
    {
        let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.memory_bytes += body.bytes.len() as u64;
        q.memory.push_back(body);
        // Keep at least the newest body in memory.
        while q.memory_bytes > settings.memory_bytes && q.memory.len() > 1 {
            let Some(old) = q.memory.pop_front() else {
                break;
            };
            q.memory_bytes -= old.bytes.len() as u64;
            spill.push(old);
        }
    }
    for body in spill {
        spool(shared, body);
    }
    update_gauges(shared);
    shared.ready.notify_one();
}

/// Writes a body to a spool file, or drops it when the spool is full.
fn spool(shared: &Shared, body: Body) {
    let settings = &shared.settings;
    // As JSON (only while the control plane is away, so its cost does not
    // matter): a proxy of an earlier version, after a rollback, sends it.
    let Some(json) = as_json(&body.bytes) else {
        drop_records("refused", body.records, "cannot encode them as JSON");
        return;
    };
    let len = json.len() as u64;
    let room = {
        let q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.spool_bytes + len <= settings.spool_bytes
    };
    let path = settings
        .spool_dir
        .join(format!("{:020}{SPOOL_SUFFIX}", body.seq));
    let written = room
        && std::fs::create_dir_all(&settings.spool_dir).is_ok()
        && containerpub_util::fs::write_atomic(&path, &json, containerpub_util::fs::Modes::PRIVATE)
            .map_err(
                |e| warn!(path = %path.display(), error = %e, "cannot spool execution records"),
            )
            .is_ok();
    if written {
        let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.spool_bytes += len;
        // Spooled bodies are older than every body still in memory but may
        // be newer than earlier spool files: keep the files in order.
        let at = q.spool.partition_point(|f| f.seq < body.seq);
        q.spool.insert(
            at,
            SpoolFile {
                seq: body.seq,
                path,
                records: body.records,
                bytes: len,
            },
        );
    } else {
        drop_records("spool_full", body.records, "the spool is full");
    }
}

/// Counts `records` as dropped for `reason` and logs why.
fn drop_records(reason: &'static str, records: u64, why: &str) {
    metrics()
        .dropped
        .with_label_values(&[reason])
        .inc_by(records);
    warn!(records, "execution records dropped: {why}");
}

/// What to send next: the oldest spool file (JSON), else the oldest body
/// in memory (binary).
enum Next {
    File(u64, PathBuf, u64),
    Memory(u64, u64, Vec<u8>),
}

async fn send_loop(shared: Arc<Shared>) {
    let client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "execution records disabled: cannot build the client");
            return;
        }
    };
    let url = format!("{}/api/v1/executions", shared.settings.control_url);
    let mut outage = Outage::new("execution records");
    // Until when bodies go as JSON (the control plane does not know the
    // binary form).
    let mut json_until: Option<tokio::time::Instant> = None;
    loop {
        let next = {
            let q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(f) = q.spool.front() {
                Some(Next::File(f.seq, f.path.clone(), f.records))
            } else {
                q.memory
                    .front()
                    .map(|b| Next::Memory(b.seq, b.records, b.bytes.clone()))
            }
        };
        let Some(mut next) = next else {
            shared.ready.notified().await;
            continue;
        };
        let (seq, records, body, json) = match &mut next {
            Next::File(seq, path, records) => match tokio::fs::read(&*path).await {
                Ok(body) => (*seq, *records, body, true),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "unreadable spool file dropped");
                    remove_front(&shared, &next).await;
                    continue;
                }
            },
            // The queue keeps its copy until the body is sent.
            Next::Memory(seq, records, body) => (*seq, *records, std::mem::take(body), false),
        };
        let json_only = json_until.is_some_and(|t| tokio::time::Instant::now() < t);
        let (body, content_type) = if json {
            (body, "application/json")
        } else if json_only {
            match as_json(&body) {
                Some(json) => (json, "application/json"),
                // Not for a body this process encoded.
                None => {
                    drop_records("refused", records, "cannot encode them as JSON");
                    remove_front(&shared, &next).await;
                    continue;
                }
            }
        } else {
            (body, wire::binary::CONTENT_TYPE)
        };
        let sent = client
            .post(&url)
            .bearer_auth(&shared.settings.token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await;
        match verdict_of::<Stored>(sent).await {
            Verdict::Stored(answer) => {
                metrics().sent.inc_by(answer.stored);
                outage.delivered();
                debug!(seq, records, "execution records sent");
                remove_front(&shared, &next).await;
            }
            Verdict::Refused(status, text) => {
                outage.delivered(); // it answered: reachable again
                if content_type == wire::binary::CONTENT_TYPE && refused_as_json(status, &text) {
                    // A control plane from before the binary form read the
                    // body as JSON: send it (and the next ones) as JSON.
                    info!("the control plane does not take binary execution batches: sending JSON");
                    json_until = Some(tokio::time::Instant::now() + JSON_FOR);
                    continue;
                }
                let text = ingest::excerpt(&text);
                warn!(%status, body = %text, records, "execution records refused by the control plane, dropped");
                metrics()
                    .dropped
                    .with_label_values(&["refused"])
                    .inc_by(records);
                remove_front(&shared, &next).await;
            }
            Verdict::Again(why) => {
                if !outage.failed(&why) {
                    debug!(why, "execution records not taken; trying again");
                }
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

/// The part of the control plane's answer (`wire::IngestResult`) the
/// shipper reads; a 2xx without it stored nothing (see `crate::ingest`).
#[derive(Debug, serde::Deserialize)]
struct Stored {
    stored: u64,
}

/// A binary body (this process's encoding) as JSON.
fn as_json(binary: &[u8]) -> Option<Vec<u8>> {
    let batch = wire::binary::decode(binary).ok()?;
    serde_json::to_vec(&batch).ok()
}

/// Whether a refusal of a binary body is a control plane reading it as
/// JSON (one from before the binary form: 400, the whole body at fault, as
/// `not an execution batch: …`); a control plane that knows the form names
/// `body.<field>` or a record.
fn refused_as_json(status: reqwest::StatusCode, answer: &str) -> bool {
    status == reqwest::StatusCode::BAD_REQUEST
        && serde_json::from_str::<containerpub_wire::api::ApiError>(answer).is_ok_and(|r| {
            r.field.as_deref() == Some("body") && r.error.starts_with("not an execution batch")
        })
}

/// Takes the body just sent (or dropped) off the queue.
async fn remove_front(shared: &Shared, next: &Next) {
    let file = {
        let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        match next {
            Next::File(seq, ..) => {
                if q.spool.front().is_some_and(|f| f.seq == *seq) {
                    let f = q.spool.pop_front();
                    if let Some(f) = &f {
                        q.spool_bytes = q.spool_bytes.saturating_sub(f.bytes);
                    }
                    f.map(|f| f.path)
                } else {
                    None
                }
            }
            Next::Memory(seq, ..) => {
                if q.memory.front().is_some_and(|b| b.seq == *seq)
                    && let Some(b) = q.memory.pop_front()
                {
                    q.memory_bytes -= b.bytes.len() as u64;
                }
                None
            }
        }
    };
    if let Some(path) = file {
        let _ = tokio::fs::remove_file(&path).await;
    }
    update_gauges(shared);
}

/// On the way out (after the workers flushed): waits up to `timeout` for
/// the records still queued to be sent, then writes what is left in memory
/// to the spool, for the next proxy to send.
pub async fn shutdown(timeout: Duration) {
    let Some(shared) = SHARED.get() else { return };
    let deadline = tokio::time::Instant::now() + timeout;
    // The encoder closes its body at its next tick.
    tokio::time::sleep(POST_EVERY + Duration::from_millis(100)).await;
    while tokio::time::Instant::now() < deadline {
        let empty = {
            let q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.memory.is_empty() && q.spool.is_empty()
        };
        if empty {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left: Vec<Body> = {
        let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.memory_bytes = 0;
        q.memory.drain(..).collect()
    };
    let records: u64 = left.iter().map(|b| b.records).sum();
    for body in left {
        spool(shared, body);
    }
    if records > 0 {
        info!(
            records,
            "execution records not sent yet were spooled for the next proxy"
        );
    }
}

/// How many records are waiting (for tests and the shutdown log).
pub fn pending() -> i64 {
    metrics().pending.get()
}

/// Records dropped so far, all reasons.
pub fn dropped() -> u64 {
    ["channel_full", "spool_full", "refused"]
        .iter()
        .map(|r| metrics().dropped.with_label_values(&[r]).get())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Arc<Entry> {
        entry_named("rec")
    }

    fn entry_named(name: &str) -> Arc<Entry> {
        entry_of(name, 7, 3)
    }

    fn entry_of(name: &str, deployment_id: i64, version: i32) -> Arc<Entry> {
        let manifest = containerpub_wire::Manifest::parse(&format!(
            "name = \"{name}\"\nruntime = \"container\"\n"
        ))
        .unwrap();
        Arc::new(Entry {
            route: containerpub_wire::api::Route {
                function: name.into(),
                deployment_id,
                version,
                image: "img".into(),
                config: manifest,
                keys: Vec::new(),
                secrets: Vec::new(),
                signing_keys: Vec::new(),
            },
            metrics: crate::metrics::FunctionMetrics::new(name),
            pool_handle: Default::default(),
        })
    }

    fn raw(i: u64) -> Raw {
        Raw {
            at: UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_000 + i),
            instance: Some(ShortId::new("0123456789abcdef")),
            request_id: RecordId::new(&mut format!("rid-{i}")),
            trace_id: Some(*b"4bf92f3577b34da6a3ce929d0e0e4736"),
            method: Method::new(b"POST"),
            status: 200,
            start: Some(StartKind::Cold),
            queue: Duration::from_micros(5),
            start_time: Duration::from_millis(200),
            upstream: Duration::from_micros(900),
            total: Duration::from_micros(201_000),
            bytes_in: 10,
            bytes_out: 20,
            rejection: None,
        }
    }

    #[test]
    fn bodies_are_batches_the_control_plane_accepts() {
        let mut enc = Encoder::new("node-1", "boot".into(), 1);
        for i in 0..3 {
            assert!(enc.add(&entry(), &raw(i)).is_none());
        }
        let mut r = raw(9);
        r.instance = None;
        r.trace_id = None;
        r.start = None;
        r.status = 429;
        r.rejection = Some(Rejection::QueueFull);
        r.method = Method::new(b"");
        r.request_id = RecordId::new(&mut String::new());
        assert!(enc.add(&entry(), &r).is_none());
        let body = enc.finish().unwrap();
        assert_eq!((body.seq, body.records), (1, 4));
        let batch = wire::binary::decode(&body.bytes).unwrap();
        assert_eq!(batch.node.as_str(), "node-1");
        assert_eq!(batch.batch.as_str(), "boot-1");
        assert_eq!(batch.records.len(), 4);
        for r in &batch.records {
            r.validate().unwrap();
        }
        let first = &batch.records[0];
        assert_eq!(first.function.as_str(), "rec");
        assert_eq!(
            first.instance.as_ref().map(wire::Text::as_str),
            Some("0123456789ab")
        );
        assert_eq!(
            first.trace_id.as_ref().map(wire::Text::as_str),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(first.request_id.as_str(), "rid-0");
        assert_eq!(first.method.as_str(), "POST");
        assert_eq!(first.start, Some(wire::StartKind::Cold));
        assert_eq!((first.deployment_id, first.version), (7, 3));
        assert_eq!(first.at_us, 1_700_000_000_000_000);
        assert_eq!(first.total_us, 201_000);
        let last = &batch.records[3];
        assert_eq!(
            last.rejection.as_ref().map(wire::Text::as_str),
            Some("queue_full")
        );
        assert_eq!(
            (last.instance.as_ref(), last.trace_id.as_ref()),
            (None, None)
        );
        assert_eq!((last.start, last.status), (None, 429));
        assert_eq!(last.method.as_str(), "?");
        assert_eq!(last.request_id.as_str(), "-");
        // The next body has the next id.
        enc.add(&entry(), &raw(10));
        assert_eq!(enc.finish().unwrap().seq, 2);
        assert!(enc.finish().is_none());
    }

    #[test]
    fn an_older_control_plane_reading_binary_as_json_is_told_apart() {
        let bad = reqwest::StatusCode::BAD_REQUEST;
        // What a control plane from before the binary form answers.
        let old = r#"{"error":"not an execution batch: expected value at line 1 column 1","field":"body"}"#;
        assert!(refused_as_json(bad, old));
        // What one that knows the form answers for a damaged body or a bad
        // record: refused, not retried as JSON.
        let damaged = r#"{"error":"not a binary execution batch: the body ends inside it","field":"body.records[3].method"}"#;
        let record =
            r#"{"error":"must be 1 to 64 visible ASCII characters","field":"records[3].method"}"#;
        assert!(!refused_as_json(bad, damaged));
        assert!(!refused_as_json(bad, record));
        assert!(!refused_as_json(
            reqwest::StatusCode::PAYLOAD_TOO_LARGE,
            old
        ));
        assert!(!refused_as_json(bad, "not json"));
        // A body of this encoder, sent as JSON instead: the same batch.
        let mut enc = Encoder::new("node-1", "boot".into(), 1);
        enc.add(&entry(), &raw(1));
        let body = enc.finish().unwrap();
        let json = as_json(&body.bytes).unwrap();
        let batch: wire::ExecutionBatch = serde_json::from_slice(&json).unwrap();
        assert_eq!(batch.batch, "boot-1");
        assert_eq!(batch.records[0].request_id, "rid-1");
        batch.records[0].validate().unwrap();
    }

    #[test]
    fn a_batch_holds_each_entry_once() {
        let (a, b) = (entry(), entry());
        let mut batch = Batch::default();
        for e in [&a, &a, &b, &a, &b] {
            batch.push(e, raw(0));
        }
        assert_eq!(batch.entries.len(), 2);
        let idx: Vec<u32> = batch.records.iter().map(|r| r.0).collect();
        assert_eq!(idx, [0, 0, 1, 0, 1]);
        assert_eq!(Arc::strong_count(&a), 2);
    }

    #[test]
    fn a_full_body_is_cut_at_the_limit() {
        let mut enc = Encoder::new("n", "b".into(), 1);
        let mut bodies = 0;
        for i in 0..(POST_RECORDS as u64 * 2 + 1) {
            if enc.add(&entry(), &raw(i)).is_some() {
                bodies += 1;
            }
        }
        assert_eq!(bodies, 2);
        assert_eq!(enc.finish().unwrap().records, 1);
    }

    #[test]
    fn a_full_body_of_the_longest_records_fits_a_batch_as_json_too() {
        // Spooled bodies are JSON: one the control plane refused as too
        // large (413) would be sent again and again, holding up the rest.
        let entry = entry_of(&format!("f{}", "9".repeat(62)), i64::MIN, i32::MIN);
        let mut enc = Encoder::new(&"n".repeat(255), "b".repeat(128), u64::MAX - 1);
        let mut body = None;
        for i in 0..POST_RECORDS as u64 {
            let mut longest = raw(i);
            longest.request_id =
                RecordId::new(&mut "/".repeat(containerpub_wire::request_id::MAX_LEN));
            longest.method = Method::new(&[b'"'; 16]);
            longest.status = u16::MAX;
            longest.start = Some(StartKind::Paused);
            longest.queue = Duration::MAX;
            longest.start_time = Duration::MAX;
            longest.upstream = Duration::MAX;
            longest.total = Duration::MAX;
            longest.bytes_in = u64::MAX;
            longest.bytes_out = u64::MAX;
            longest.at = UNIX_EPOCH + Duration::from_micros(i64::MAX as u64);
            longest.rejection = Rejection::ALL.into_iter().max_by_key(|r| r.as_str().len());
            body = enc.add(&entry, &longest);
        }
        let body = body.expect("a full body");
        assert_eq!(body.records, POST_RECORDS as u64);
        let json = as_json(&body.bytes).expect("the body decodes");
        assert!(
            json.len() <= wire::MAX_BATCH_BYTES,
            "{} bytes of JSON",
            json.len()
        );
        assert!(body.bytes.len() <= wire::MAX_BATCH_BYTES);
    }

    #[test]
    fn trace_ids_come_from_one_valid_traceparent() {
        let parse = |head: &[u8]| {
            let mut fields = Vec::new();
            h1::parse_request(head, &mut fields).unwrap().unwrap();
            trace_id(head, &fields)
        };
        let good = b"GET / HTTP/1.1\r\nhost: a\r\nTraceParent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
        assert_eq!(parse(good), Some(*b"4bf92f3577b34da6a3ce929d0e0e4736"));
        let none = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        assert_eq!(parse(none), None);
        let bad = b"GET / HTTP/1.1\r\nhost: a\r\ntraceparent: 00-xyz\r\n\r\n";
        assert_eq!(parse(bad), None);
        let two = b"GET / HTTP/1.1\r\nhost: a\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4737-00f067aa0ba902b7-01\r\n\r\n";
        assert_eq!(parse(two), None);
    }

    #[test]
    fn request_ids_of_up_to_32_bytes_are_copied_and_longer_ones_moved() {
        let mut short = "0123456789abcdef0123456789abcdef".to_string();
        let id = RecordId::new(&mut short);
        assert!(matches!(id, RecordId::Inline(..)));
        assert_eq!(
            (id.as_bytes(), short.len()),
            (&b"0123456789abcdef0123456789abcdef"[..], 32)
        );
        let mut long = format!("{short}x");
        let id = RecordId::new(&mut long);
        assert!(matches!(id, RecordId::Owned(_)));
        assert_eq!((id.as_bytes().len(), long.len()), (33, 0));
        assert_eq!(RecordId::new(&mut String::new()).as_bytes(), b"");
        assert_eq!(
            RecordId::new(&mut "é-ü".to_string()).as_bytes(),
            "é-ü".as_bytes()
        );
    }

    #[test]
    fn short_ids_and_methods_stay_inline_and_utf8() {
        assert_eq!(ShortId::new("abc").as_bytes(), b"abc");
        assert_eq!(ShortId::new("0123456789abcdef").as_bytes(), b"0123456789ab");
        // Cut before a character, not inside it (the bytes go out as they
        // are, and the control plane refuses a batch that is not UTF-8).
        let cut = ShortId::new("0123456789aé");
        assert_eq!(cut.as_bytes(), b"0123456789a");
        assert!(std::str::from_utf8(ShortId::new("ééééééé").as_bytes()).is_ok());
        assert_eq!(Method::new(b"GET").as_bytes(), b"GET");
        assert_eq!(
            Method::new(b"AVERYLONGMETHODNAMEINDEED").as_bytes(),
            b"AVERYLONGMETHODN"
        );
        assert_eq!(Method::new(b"G\x01T").as_bytes(), b"?");
        assert_eq!(Method::new("GÉT".as_bytes()).as_bytes(), b"?");
        assert_eq!(Method::new(b"").as_bytes(), b"?");
    }

    #[test]
    fn spool_files_are_found_in_order() {
        let dir = tempfile_dir();
        std::fs::write(dir.join("00000000000000000002.json"), b"{}").unwrap();
        std::fs::write(dir.join("00000000000000000010.json"), b"{}").unwrap();
        std::fs::write(dir.join("junk.json"), b"{}").unwrap();
        std::fs::write(dir.join("00000000000000000003.bin"), b"CPX1").unwrap();
        std::fs::write(dir.join("00000000000000000001.json.tmp"), b"{}").unwrap();
        let (files, bytes, max) = scan_spool(&dir);
        assert_eq!(files.iter().map(|f| f.seq).collect::<Vec<_>>(), [2, 10]);
        assert_eq!((bytes, max), (4, 10));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "cpub-exec-test-{}-{}",
            std::process::id(),
            containerpub_wire::request_id::generate()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
