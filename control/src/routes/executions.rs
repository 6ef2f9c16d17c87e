//! Execution records: `POST /api/v1/executions` (a proxy's batch, as JSON
//! or in the binary form of `containerpub_wire::executions::binary` by its
//! `content-type`, written
//! with a binary COPY into the day-partitioned `execution_chunks` table, a
//! row per function deployment and day with the records' values in a text
//! per field, migrations 0006, 0011 and 0015; the view `executions` shows a
//! row per record),
//! `GET /api/v1/functions/{name}/executions` (the newest calls, filtered by
//! status and time), and the partitions' upkeep: a day's partition is
//! created when a record of that day arrives, and `retain` drops those past
//! the retention (`CPUB_EXECUTIONS_RETENTION_DAYS`, default 7).
//!
//! Any API token may post records, as any may follow the routes or report
//! a crash: proxies use one. A record is shown only while its deployment
//! belongs to the function it names.
//!
//! Over 600 lines with its unit tests: about 590 of code (ingest, its COPY
//! rows, the partitions' upkeep, the list) and 100 of tests of the COPY rows.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use containerpub_wire::executions::{
    self as wire, ExecutionBatchRef, ExecutionInfo, ExecutionRecord, ExecutionRecordRef,
    ExecutionsQuery, IngestResult, StartKind, StatusFilter, Text,
};
use sqlx::PgPool;

use crate::auth::{Action, Caller};
use crate::error::{Error, Result};
use crate::histogram;
use crate::pgcopy::{self, Spaced, field};
use crate::reads;
use crate::routes::check_name;
use crate::state::AppState;

/// Environment variable: days of execution records kept.
pub const ENV_RETENTION_DAYS: &str = "CPUB_EXECUTIONS_RETENTION_DAYS";
/// Days kept unless configured.
pub const DEFAULT_RETENTION_DAYS: u32 = 7;
/// Most days that may be configured.
pub const MAX_RETENTION_DAYS: u32 = 366;
/// How often the retention runs.
const RETAIN_EVERY: Duration = Duration::from_secs(3600);
/// Records may be this far in the future (clock skew between hosts).
const MAX_AHEAD: TimeDelta = TimeDelta::hours(1);

static RETENTION_DAYS: OnceLock<u32> = OnceLock::new();

/// Reads `CPUB_EXECUTIONS_RETENTION_DAYS` (1 to 366; default 7). Called
/// once at start; an unusable value is a configuration error.
pub fn configure_retention() -> std::result::Result<u32, String> {
    let days = match std::env::var(ENV_RETENTION_DAYS) {
        Err(_) => DEFAULT_RETENTION_DAYS,
        Ok(v) => match v.trim().parse::<u32>() {
            Ok(d) if (1..=MAX_RETENTION_DAYS).contains(&d) => d,
            _ => {
                return Err(format!(
                    "{ENV_RETENTION_DAYS}: must be a whole number of days from 1 to {MAX_RETENTION_DAYS}, got {v:?}"
                ));
            }
        },
    };
    let _ = RETENTION_DAYS.set(days);
    Ok(days)
}

fn retention_days() -> u32 {
    *RETENTION_DAYS.get().unwrap_or(&DEFAULT_RETENTION_DAYS)
}

/// The partitions known to exist (created by this process or seen).
fn known() -> &'static Mutex<HashSet<NaiveDate>> {
    static K: OnceLock<Mutex<HashSet<NaiveDate>>> = OnceLock::new();
    K.get_or_init(Mutex::default)
}

fn partition_name(day: NaiveDate) -> String {
    format!("execution_chunks_p{}", day.format("%Y%m%d"))
}

/// The field columns of `execution_chunks` (a value per record each).
pub const FIELD_COLUMNS: [&str; 14] = [
    "at_offsets_us",
    "instances",
    "request_ids",
    "trace_ids",
    "methods",
    "statuses",
    "start_kinds",
    "queue_us",
    "start_us",
    "upstream_us",
    "total_us",
    "bytes_in",
    "bytes_out",
    "rejections",
];

/// `ALTER TABLE` of a partition: no planner statistics for its fields, as
/// migrations 0012 and 0015 set on the parent (a new partition does not
/// inherit it; ANALYZE of the fields, then arrays, was almost half of
/// PostgreSQL's ingest CPU).
fn no_field_statistics(table: &str) -> String {
    let columns: Vec<String> = FIELD_COLUMNS
        .iter()
        .map(|c| format!("ALTER COLUMN {c} SET STATISTICS 0"))
        .collect();
    format!("ALTER TABLE {table} {}", columns.join(", "))
}

/// Creates the partition of `day` unless it exists. Serialised by an
/// advisory lock: two `CREATE TABLE IF NOT EXISTS` at once can still fail.
async fn ensure_partition(db: &PgPool, day: NaiveDate) -> Result<()> {
    if known().lock().expect("partitions lock").contains(&day) {
        return Ok(());
    }
    let next = day + TimeDelta::days(1);
    // Names and bounds are built from a date only: no input reaches the SQL.
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF execution_chunks \
         FOR VALUES FROM ('{} 00:00:00+00') TO ('{} 00:00:00+00')",
        partition_name(day),
        day.format("%Y-%m-%d"),
        next.format("%Y-%m-%d"),
    );
    let mut tx = db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('cpub_execution_partitions'))")
        .execute(&mut *tx)
        .await?;
    // Only a partition made here gets the ALTER: it locks the table, and a
    // VACUUM of an existing one would hold every ingest up behind it.
    let (missing,): (bool,) = sqlx::query_as("SELECT to_regclass($1) IS NULL")
        .bind(partition_name(day))
        .fetch_one(&mut *tx)
        .await?;
    if missing {
        sqlx::query(&sql).execute(&mut *tx).await?;
        sqlx::query(&no_field_statistics(&partition_name(day)))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    known().lock().expect("partitions lock").insert(day);
    Ok(())
}

/// Columns of a row of `COPY_STATEMENT`: the records' 22, then the
/// figures' 14.
const COPY_COLUMNS: i16 = 36;

/// Whether a call counts as an error in `cpub status`: an answer of 500 or
/// more, or none (below 100). A chunk stores how many of its records do
/// (`errors`, migration 0016), and `status.rs` counts the records it splits
/// by the same rule (`STATUS_ERROR_SQL`).
pub(crate) fn is_status_error(status: u16) -> bool {
    !(100..500).contains(&status)
}

/// `is_status_error` in SQL, of a column `status`.
pub(crate) const STATUS_ERROR_SQL: &str = "(status >= 500 OR status < 100)";

/// One binary COPY row of `execution_chunks` for `records` (of one function
/// deployment and day, `at_us` checked by the caller): the chunk's columns,
/// then one text per field with a value per record (migration 0015's form,
/// `pgcopy::Spaced`): validated strings as they are (visible ASCII, no
/// space), numbers in decimal, a time as microseconds after the chunk's
/// first, a trace id that is the record's request id as '='; last, how
/// many records are errors (`is_status_error`).
fn copy_chunk(out: &mut Vec<u8>, node: &str, records: &[&ExecutionRecordRef<'_>]) {
    let Some(first) = records.first() else { return };
    let min_at = records.iter().map(|r| r.at_us).min().unwrap_or(first.at_us);
    let max_at = records.iter().map(|r| r.at_us).max().unwrap_or(first.at_us);
    pgcopy::row(out, COPY_COLUMNS);
    field(out, node.as_bytes());
    field(out, first.function.as_str().as_bytes());
    field(out, &first.deployment_id.to_be_bytes());
    field(out, &first.version.to_be_bytes());
    // At most MAX_BATCH_RECORDS.
    field(out, &(records.len() as i32).to_be_bytes());
    pgcopy::timestamp_us(out, min_at);
    pgcopy::timestamp_us(out, max_at);
    let text = |out: &mut Vec<u8>,
                pick: for<'a> fn(&'a ExecutionRecordRef<'_>) -> Option<&'a str>| {
        let mut f = Spaced::start(out);
        for r in records {
            f.push(out, pick(r).map(str::as_bytes));
        }
        f.finish(out);
    };
    let number = |out: &mut Vec<u8>, pick: &dyn Fn(&ExecutionRecordRef<'_>) -> i64| {
        let mut f = Spaced::start(out);
        for r in records {
            f.number(out, pick(r));
        }
        f.finish(out);
    };
    number(out, &|r| r.at_us - min_at);
    text(out, |r| r.instance.as_ref().map(Text::as_str));
    text(out, |r| Some(r.request_id.as_str()));
    // A trace id equal to the request id (the proxy made both) as '=': the
    // view `executions` shows the request id there.
    text(out, |r| {
        r.trace_id.as_ref().map(|t| {
            if t.as_str() == r.request_id.as_str() {
                "="
            } else {
                t.as_str()
            }
        })
    });
    text(out, |r| Some(r.method.as_str()));
    // Validated: at most 999.
    number(out, &|r| i64::from(r.status));
    text(out, |r| r.start.map(StartKind::as_str));
    let fields: [fn(&ExecutionRecordRef<'_>) -> u64; 6] = [
        |r| r.queue_us,
        |r| r.start_us,
        |r| r.upstream_us,
        |r| r.total_us,
        |r| r.bytes_in,
        |r| r.bytes_out,
    ];
    for pick in fields {
        // Validated: every duration and byte count fits an i64.
        number(out, &|r| i64::try_from(pick(r)).unwrap_or(i64::MAX));
    }
    text(out, |r| r.rejection.as_ref().map(Text::as_str));
    let errors = records.iter().filter(|r| is_status_error(r.status)).count();
    // At most MAX_BATCH_RECORDS.
    field(out, &(errors as i32).to_be_bytes());
    Figures::of(records).copy(out);
}

/// What `cpub stats` needs of a chunk (migration 0019), counted as it is
/// written: the stats add these up for the chunks a window holds whole.
struct Figures {
    /// 2xx, 3xx, 4xx, 5xx, no answer (below 200 or above 599), refused,
    /// cold, paused, with a start kind.
    counts: [i32; 9],
    cold_us_sum: f64,
    queue_us_sum: f64,
    queue_us_max: u64,
    /// Records per total-time bucket (`histogram::bucket`).
    buckets: Box<[u32; histogram::BUCKETS]>,
}

impl Figures {
    fn of(records: &[&ExecutionRecordRef<'_>]) -> Self {
        let mut f = Self {
            counts: [0; 9],
            cold_us_sum: 0.0,
            queue_us_sum: 0.0,
            queue_us_max: 0,
            buckets: Box::new([0; histogram::BUCKETS]),
        };
        for r in records {
            let class = match r.status {
                200..=299 => 0,
                300..=399 => 1,
                400..=499 => 2,
                500..=599 => 3,
                _ => 4,
            };
            f.counts[class] += 1;
            f.counts[5] += i32::from(r.rejection.is_some());
            match r.start {
                Some(StartKind::Cold) => {
                    f.counts[6] += 1;
                    f.cold_us_sum += r.start_us as f64;
                }
                Some(StartKind::Paused) => f.counts[7] += 1,
                _ => {}
            }
            if r.start.is_some() {
                f.counts[8] += 1;
                f.queue_us_sum += r.queue_us as f64;
            }
            f.queue_us_max = f.queue_us_max.max(r.queue_us);
            f.buckets[usize::from(histogram::bucket(r.total_us))] += 1;
        }
        f
    }

    /// The fields of `FIGURE_COLUMNS`, in order.
    fn copy(&self, out: &mut Vec<u8>) {
        for count in self.counts {
            field(out, &count.to_be_bytes());
        }
        field(out, &self.cold_us_sum.to_be_bytes());
        field(out, &self.queue_us_sum.to_be_bytes());
        // Validated: fits an i64.
        field(
            out,
            &i64::try_from(self.queue_us_max)
                .unwrap_or(i64::MAX)
                .to_be_bytes(),
        );
        let counted = || self.buckets.iter().enumerate().filter(|&(_, &n)| n > 0);
        let mut f = Spaced::start(out);
        for (b, _) in counted() {
            f.number(out, b as i64);
        }
        f.finish(out);
        let mut f = Spaced::start(out);
        for (_, &n) in counted() {
            f.number(out, i64::from(n));
        }
        f.finish(out);
    }
}

const COPY_STATEMENT: &str = "COPY execution_chunks (node, function, deployment_id, version, \
     n, min_at, max_at, at_offsets_us, instances, request_ids, trace_ids, methods, statuses, \
     start_kinds, queue_us, start_us, upstream_us, total_us, bytes_in, bytes_out, rejections, \
     errors, n_2xx, n_3xx, n_4xx, n_5xx, n_no_answer, n_rejected, n_cold, n_paused, n_started, \
     cold_us_sum, queue_us_sum, queue_us_max, total_buckets, total_counts) \
     FROM STDIN (FORMAT binary)";

/// Most records in one chunk row: a proxy's body holds up to
/// `MAX_BATCH_RECORDS`, a chunk row half that (what `cpub executions` and
/// the views decompress to read one record of it stays as it was).
const CHUNK_RECORDS: usize = 5_000;

/// Microseconds in a day.
const US_PER_DAY: i64 = 86_400_000_000;

/// `POST /api/v1/executions`.
pub async fn ingest(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<IngestResult>> {
    caller.require(Action::ReportExecutions, None)?;
    if body.len() > wire::MAX_BATCH_BYTES {
        return Err(Error::too_large(
            "body",
            format!("a batch is at most {} bytes", wire::MAX_BATCH_BYTES),
        ));
    }
    // Strings stay borrowed from `body`. Anything not binary is JSON (what
    // proxies sent before the binary form, and spool files).
    // A media type is case-insensitive and may carry parameters.
    let binary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(wire::binary::CONTENT_TYPE));
    let batch: ExecutionBatchRef<'_> = if binary {
        wire::binary::decode(&body).map_err(|e| {
            Error::bad_request(
                format!("body.{}", e.field),
                format!("not a binary execution batch: {}", e.problem),
            )
        })?
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::bad_request("body", format!("not an execution batch: {e}")))?
    };
    let node = batch.node.as_str();
    containerpub_wire::validate_node_name(node).map_err(|m| Error::bad_request("node", m))?;
    caller.require_node_name(Some(node))?;
    let batch_id = batch.batch.as_str();
    if batch_id.is_empty()
        || batch_id.len() > 128
        || !batch_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(Error::bad_request(
            "batch",
            "must be 1 to 128 letters, digits and '-'",
        ));
    }
    if batch.records.len() > wire::MAX_BATCH_RECORDS {
        return Err(Error::too_large(
            "records",
            format!("a batch holds at most {} records", wire::MAX_BATCH_RECORDS),
        ));
    }
    let now = Utc::now();
    let oldest = (now - TimeDelta::days(i64::from(retention_days()))).timestamp_micros();
    let newest = (now + MAX_AHEAD).timestamp_micros();
    // The records kept, by function deployment and day (a chunk each, of
    // up to CHUNK_RECORDS; a few per batch in practice).
    type Key<'k> = (&'k str, i64, i32, i64);
    let mut chunks: Vec<Vec<&ExecutionRecordRef<'_>>> = Vec::new();
    let mut chunk_of: HashMap<Key<'_>, usize> = HashMap::new();
    let mut days: Vec<i64> = Vec::new();
    let mut skipped = 0u64;
    let mut kept = 0u64;
    // The previous record's function name (valid) and chunk: most records
    // are of the same function as the one before, checked and found once.
    let mut valid_function = None;
    let mut last: Option<(Key<'_>, usize)> = None;
    for (i, r) in batch.records.iter().enumerate() {
        r.validate_given(valid_function)
            .map_err(|(field, m)| Error::bad_request(format!("records[{i}].{field}"), m))?;
        valid_function = Some(r.function.as_str());
        if r.at_us < oldest || r.at_us > newest {
            // Within those bounds, a time is one.
            if DateTime::from_timestamp_micros(r.at_us).is_none() {
                return Err(Error::bad_request(
                    format!("records[{i}].at_us"),
                    "not a time",
                ));
            }
            skipped += 1;
            continue;
        }
        let day = r.at_us.div_euclid(US_PER_DAY);
        let key = (r.function.as_str(), r.deployment_id, r.version, day);
        let at = match last {
            Some((k, at)) if k == key && chunks[at].len() < CHUNK_RECORDS => at,
            _ => {
                if !days.contains(&day) {
                    days.push(day);
                }
                match chunk_of.get(&key) {
                    Some(&at) if chunks[at].len() < CHUNK_RECORDS => at,
                    // A new chunk, or the next one of a full chunk's key.
                    _ => {
                        chunk_of.insert(key, chunks.len());
                        chunks.push(Vec::new());
                        chunks.len() - 1
                    }
                }
            }
        };
        last = Some((key, at));
        chunks[at].push(r);
        kept += 1;
    }
    // About 100 bytes a record in the fields' text.
    let mut rows = Vec::with_capacity(pgcopy::HEADER.len() + kept as usize * 100 + 2);
    rows.extend_from_slice(pgcopy::HEADER);
    for records in &chunks {
        copy_chunk(&mut rows, node, records);
    }
    rows.extend_from_slice(pgcopy::TRAILER);
    let days: Vec<NaiveDate> = days
        .into_iter()
        .filter_map(|d| DateTime::from_timestamp_micros(d * US_PER_DAY))
        .map(|d| d.date_naive())
        .collect();
    for &day in &days {
        ensure_partition(&state.db, day).await?;
    }
    let stored = match store(&state.db, node, batch_id, &rows, kept).await {
        // A partition this process knew of is gone (dropped behind its
        // back, or it serves another database now): forget, create, retry.
        Err(e) if is_missing_partition(&e) => {
            for &day in &days {
                known().lock().expect("partitions lock").remove(&day);
                ensure_partition(&state.db, day).await?;
            }
            store(&state.db, node, batch_id, &rows, kept).await?
        }
        other => other?,
    };
    let Some(stored) = stored else {
        crate::metrics::record_ingest(0, 0, true);
        return Ok(Json(IngestResult {
            stored: 0,
            skipped: 0,
            duplicate: true,
        }));
    };
    crate::metrics::record_ingest(stored, skipped, false);
    tracing::debug!(
        node,
        batch = batch_id,
        stored,
        skipped,
        "execution records stored"
    );
    Ok(Json(IngestResult {
        stored,
        skipped,
        duplicate: false,
    }))
}

/// One transaction: the batch id's row, then the rows by binary COPY.
/// `None` when the batch was stored before (nothing written).
async fn store(
    db: &PgPool,
    node: &str,
    batch_id: &str,
    rows: &[u8],
    kept: u64,
) -> std::result::Result<Option<u64>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let fresh = sqlx::query(
        "INSERT INTO execution_batches (node, batch) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(node)
    .bind(batch_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if fresh == 0 {
        tx.rollback().await?;
        return Ok(None);
    }
    if kept > 0 {
        let mut copy = tx.copy_in_raw(COPY_STATEMENT).await?;
        copy.send(rows).await?;
        copy.finish().await?;
    }
    tx.commit().await?;
    Ok(Some(kept))
}

/// PostgreSQL's "no partition of relation … found for row".
fn is_missing_partition(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "23514")
}

/// Drops the partitions past the retention and the batch ids as old.
/// Returns how many partitions went.
pub async fn retain(db: &PgPool) -> Result<u64> {
    let keep_from = Utc::now().date_naive() - TimeDelta::days(i64::from(retention_days()));
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'execution_chunks'::regclass",
    )
    .fetch_all(db)
    .await?;
    let mut dropped = 0;
    for (name,) in names {
        let Some(day) = name
            .strip_prefix("execution_chunks_p")
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
        else {
            continue;
        };
        if day >= keep_from {
            continue;
        }
        // The name was checked to be execution_chunks_pYYYYMMDD above.
        let sql = format!("DROP TABLE IF EXISTS {}", partition_name(day));
        let mut tx = db.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('cpub_execution_partitions'))")
            .execute(&mut *tx)
            .await?;
        sqlx::query(&sql).execute(&mut *tx).await?;
        tx.commit().await?;
        known().lock().expect("partitions lock").remove(&day);
        dropped += 1;
        tracing::info!(partition = %name, "dropped execution records past the retention");
    }
    sqlx::query("DELETE FROM execution_batches WHERE at < $1")
        .bind(Utc::now() - TimeDelta::days(i64::from(retention_days()) + 1))
        .execute(db)
        .await?;
    crate::metrics::record_partitions_dropped(dropped);
    Ok(dropped)
}

/// Runs [`retain`] at start and every hour until `stop`.
pub async fn retain_forever(db: PgPool, stop: tokio_util::sync::CancellationToken) {
    loop {
        if let Err(err) = retain(&db).await {
            tracing::warn!(%err, "execution record retention failed");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RETAIN_EVERY) => {}
        }
    }
}

/// The start of a `since` window (default: one hour).
pub(crate) fn since_start(since: Option<&str>) -> Result<DateTime<Utc>> {
    let seconds = match since {
        None => 3600,
        Some(s) => wire::parse_since(s).map_err(|m| Error::bad_request("since", m))?,
    };
    Ok(Utc::now() - TimeDelta::seconds(seconds as i64))
}

/// The function's id, or 404.
pub(crate) async fn function_id(db: &PgPool, name: &str) -> Result<i64> {
    check_name(name)?;
    let id: Option<(i64,)> = sqlx::query_as("SELECT id FROM functions WHERE name = $1")
        .bind(name)
        .fetch_optional(db)
        .await?;
    id.map(|r| r.0)
        .ok_or_else(|| Error::NotFound(format!("function {name:?} not found")))
}

#[derive(sqlx::FromRow)]
struct Row {
    at: DateTime<Utc>,
    node: String,
    deployment_id: i64,
    version: i32,
    instance: Option<String>,
    request_id: String,
    trace_id: Option<String>,
    method: String,
    status: i16,
    start_kind: Option<String>,
    queue_us: i64,
    start_us: i64,
    upstream_us: i64,
    total_us: i64,
    bytes_in: i64,
    bytes_out: i64,
    rejection: Option<String>,
}

/// `GET /api/v1/functions/{name}/executions?status=&since=&limit=`: newest first.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<ExecutionsQuery>,
) -> Result<Json<Vec<ExecutionInfo>>> {
    caller.require(Action::ReadFunctions, None)?;
    let id = function_id(&state.db, &name).await?;
    let since = since_start(q.since.as_deref())?;
    let (lo, hi) = match q.status.as_deref() {
        None => (0, 999),
        Some(s) => StatusFilter::parse(s)
            .map_err(|m| Error::bad_request("status", m))?
            .range(),
    };
    // Only statuses that count as errors (`--status 5xx`, `503`): a chunk
    // that stored no error (migration 0016) holds none of them and is not
    // split.
    let only_errors = (lo..=hi).all(is_status_error);
    let limit = q.limit.unwrap_or(wire::DEFAULT_LIST_LIMIT);
    if limit == 0 || limit > wire::MAX_LIST_LIMIT {
        return Err(Error::bad_request(
            "limit",
            format!("must be 1 to {}", wire::MAX_LIST_LIMIT),
        ));
    }
    // The newest `limit` records since `since`, found in a window that
    // starts a minute back and grows 8-fold until it holds `limit` of them
    // or reaches `since`: the rows in `[from, …)` are exactly those of the
    // chunks whose newest record is at or after `from`, so a full page from
    // a window is the page, and a busy function's days of chunks are not
    // opened for the newest hundred calls.
    // The permit here, the read in a task of its own (as in `stats`).
    let mut read = state.reads.begin(&state.db).await?;
    let function = name.clone();
    let rows = reads::detached(async move {
        let mut window = TimeDelta::minutes(1);
        loop {
            let from = (Utc::now() - window).max(since);
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT e.at, e.node, e.deployment_id, e.version, e.instance, e.request_id, \
                    e.trace_id, e.method, e.status, e.start_kind, e.queue_us, e.start_us, \
                    e.upstream_us, e.total_us, e.bytes_in, e.bytes_out, e.rejection \
             FROM executions e \
             WHERE e.function = $1 AND e.chunk_max_at >= $2 AND e.at >= $2 \
               AND e.status BETWEEN $3 AND $4 \
               AND (NOT $7 OR e.chunk_errors IS DISTINCT FROM 0) \
               AND e.deployment_id IN (SELECT id FROM deployments WHERE function_id = $5) \
             ORDER BY e.at DESC LIMIT $6",
            )
            .bind(&function)
            .bind(from)
            .bind(lo as i16)
            .bind(hi as i16)
            .bind(id)
            .bind(i64::from(limit))
            .bind(only_errors)
            .fetch_all(read.conn())
            .await
            .map_err(|e| read.explain(e, Some("since")))?;
            if rows.len() >= limit as usize || from <= since {
                return Ok::<_, Error>(rows);
            }
            window = window * 8;
        }
    })
    .await?;
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    let out = rows
        .into_iter()
        .map(|r| ExecutionInfo {
            at: r.at,
            node: r.node,
            record: ExecutionRecord {
                at_us: r.at.timestamp_micros(),
                function: name.clone(),
                deployment_id: r.deployment_id,
                version: r.version,
                instance: r.instance,
                request_id: r.request_id,
                trace_id: r.trace_id,
                method: r.method,
                status: u16::try_from(r.status).unwrap_or(0),
                start: r.start_kind.as_deref().and_then(StartKind::parse),
                queue_us: u(r.queue_us),
                start_us: u(r.start_us),
                upstream_us: u(r.upstream_us),
                total_us: u(r.total_us),
                bytes_in: u(r.bytes_in),
                bytes_out: u(r.bytes_out),
                rejection: r.rejection,
            },
        })
        .collect();
    Ok(Json(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of one binary COPY row (None: NULL).
    fn fields(mut row: &[u8]) -> Vec<Option<Vec<u8>>> {
        let n = i16::from_be_bytes(row[..2].try_into().unwrap());
        row = &row[2..];
        let mut out = Vec::new();
        for _ in 0..n {
            let len = i32::from_be_bytes(row[..4].try_into().unwrap());
            row = &row[4..];
            if len < 0 {
                out.push(None);
            } else {
                out.push(Some(row[..len as usize].to_vec()));
                row = &row[len as usize..];
            }
        }
        assert!(row.is_empty(), "{} bytes after the row", row.len());
        out
    }

    /// The values of a spaced text field (None: NULL), as
    /// `execution_chunk_field` splits it.
    fn values(field: &[u8]) -> Vec<Option<String>> {
        let text = std::str::from_utf8(field).unwrap();
        let rest = text
            .strip_prefix(' ')
            .expect("a space before the first value");
        rest.split(' ')
            .map(|v| (!v.is_empty()).then(|| v.to_owned()))
            .collect()
    }

    #[test]
    fn copy_chunks_are_binary_and_raw() {
        let r = ExecutionRecord {
            at_us: 1_700_000_000_123_456,
            function: "f".into(),
            deployment_id: 1,
            version: 2,
            instance: None,
            request_id: "r".into(),
            trace_id: None,
            method: "G\\T\"".into(),
            status: 200,
            start: Some(StartKind::Warm),
            queue_us: 1,
            start_us: 2,
            upstream_us: 3,
            total_us: 4,
            bytes_in: 5,
            bytes_out: 6,
            rejection: None,
        };
        let mut later = r.clone();
        later.at_us += 10;
        later.instance = Some("abc".into());
        later.trace_id = Some("r".into());
        later.status = 503;
        later.total_us = 40;
        let (r, later) = (r.borrowed(), later.borrowed());
        let mut out = Vec::new();
        copy_chunk(&mut out, "n\t1", &[&later, &r]);
        let f = fields(&out);
        assert_eq!(f.len(), COPY_COLUMNS as usize);
        let i64_of = |v: &[u8]| i64::from_be_bytes(v.try_into().unwrap());
        let f: Vec<Vec<u8>> = f.into_iter().map(|v| v.expect("no NULL column")).collect();
        // Text goes raw: no escapes in the binary form.
        assert_eq!(f[0], b"n\t1");
        assert_eq!(f[1], b"f");
        assert_eq!(i64_of(&f[2]), 1);
        assert_eq!(f[3], 2i32.to_be_bytes());
        assert_eq!(f[4], 2i32.to_be_bytes());
        // 2023-11-14T22:13:20.123456Z since 2000-01-01: the first and the
        // last time of the chunk.
        let pg = 1_700_000_000_123_456 - 946_684_800_000_000;
        assert_eq!((i64_of(&f[5]), i64_of(&f[6])), (pg, pg + 10));
        let some = |v: &[&str]| v.iter().map(|v| Some((*v).to_owned())).collect::<Vec<_>>();
        // Microseconds after the chunk's first, in the order sent.
        assert_eq!(values(&f[7]), some(&["10", "0"]));
        assert_eq!(values(&f[8]), [Some("abc".to_owned()), None]);
        assert_eq!(values(&f[9]), some(&["r", "r"]));
        assert_eq!(values(&f[10]), [Some("=".to_owned()), None]);
        assert_eq!(values(&f[11]), some(&["G\\T\"", "G\\T\""]));
        assert_eq!(values(&f[12]), some(&["503", "200"]));
        assert_eq!(values(&f[13]), some(&["warm", "warm"]));
        assert_eq!(values(&f[14]), some(&["1", "1"]));
        assert_eq!(values(&f[17]), some(&["40", "4"]));
        assert_eq!(values(&f[19]), some(&["6", "6"]));
        assert_eq!(values(&f[20]), [None, None]);
        // One error of two: the 503.
        assert_eq!(f[21], 1i32.to_be_bytes());
    }

    #[test]
    fn errors_are_answers_from_500_and_no_answer() {
        for (status, error) in [(0, true), (99, true), (100, false), (200, false)] {
            assert_eq!(is_status_error(status), error, "{status}");
        }
        for (status, error) in [(499, false), (500, true), (599, true), (999, true)] {
            assert_eq!(is_status_error(status), error, "{status}");
        }
    }
}
