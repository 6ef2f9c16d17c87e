//! Execution records: `POST /api/v1/executions` (a proxy's batch, written
//! with a binary COPY into the day-partitioned `executions` table, migration 0006),
//! `GET /api/v1/functions/{name}/executions` (the newest calls, filtered by
//! status and time), and the partitions' upkeep: a day's partition is
//! created when a record of that day arrives, and `retain` drops those past
//! the retention (`CPUB_EXECUTIONS_RETENTION_DAYS`, default 7).
//!
//! Any API token may post records, as any may follow the routes or report
//! a crash: proxies use one. A record is shown only while its deployment
//! belongs to the function it names.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use containerpub_wire::executions::{
    self as wire, ExecutionBatchRef, ExecutionInfo, ExecutionRecord, ExecutionRecordRef,
    ExecutionsQuery, IngestResult, StartKind, StatusFilter, Text,
};
use sqlx::PgPool;

use crate::auth::{Action, Caller};
use crate::error::{Error, Result};
use crate::pgcopy::{self, field, field_opt};
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
    format!("executions_p{}", day.format("%Y%m%d"))
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
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF executions \
         FOR VALUES FROM ('{} 00:00:00+00') TO ('{} 00:00:00+00')",
        partition_name(day),
        day.format("%Y-%m-%d"),
        next.format("%Y-%m-%d"),
    );
    let mut tx = db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('cpub_execution_partitions'))")
        .execute(&mut *tx)
        .await?;
    sqlx::query(&sql).execute(&mut *tx).await?;
    tx.commit().await?;
    known().lock().expect("partitions lock").insert(day);
    Ok(())
}

/// Columns of a row of `COPY_STATEMENT`.
const COPY_COLUMNS: i16 = 18;

/// One binary COPY row for `r` (`at_us` checked by the caller); text
/// columns go as their UTF-8 bytes, numbers big-endian, `at` as
/// microseconds since 2000-01-01 (a `timestamptz`'s binary form).
fn copy_row(out: &mut Vec<u8>, node: &str, r: &ExecutionRecordRef<'_>) {
    // Validated: every duration and byte count fits an i64.
    let int8 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX).to_be_bytes();
    pgcopy::row(out, COPY_COLUMNS);
    pgcopy::timestamp_us(out, r.at_us);
    field(out, node.as_bytes());
    field(out, r.function.as_str().as_bytes());
    field(out, &r.deployment_id.to_be_bytes());
    field(out, &r.version.to_be_bytes());
    field_opt(out, r.instance.as_ref().map(Text::as_str));
    field(out, r.request_id.as_str().as_bytes());
    field_opt(out, r.trace_id.as_ref().map(Text::as_str));
    field(out, r.method.as_str().as_bytes());
    // Validated: at most 999.
    field(out, &(r.status as i16).to_be_bytes());
    field_opt(out, r.start.map(StartKind::as_str));
    for v in [
        r.queue_us,
        r.start_us,
        r.upstream_us,
        r.total_us,
        r.bytes_in,
        r.bytes_out,
    ] {
        field(out, &int8(v));
    }
    field_opt(out, r.rejection.as_ref().map(Text::as_str));
}

const COPY_STATEMENT: &str = "COPY executions (at, node, function, deployment_id, version, \
     instance, request_id, trace_id, method, status, start_kind, queue_us, start_us, \
     upstream_us, total_us, bytes_in, bytes_out, rejection) FROM STDIN (FORMAT binary)";

/// Microseconds in a day.
const US_PER_DAY: i64 = 86_400_000_000;

/// `POST /api/v1/executions`.
pub async fn ingest(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<IngestResult>> {
    caller.require(Action::ReportExecutions, None)?;
    if body.len() > wire::MAX_BATCH_BYTES {
        return Err(Error::too_large(
            "body",
            format!("a batch is at most {} bytes", wire::MAX_BATCH_BYTES),
        ));
    }
    // Strings stay borrowed from `body`.
    let batch: ExecutionBatchRef<'_> = serde_json::from_slice(&body)
        .map_err(|e| Error::bad_request("body", format!("not an execution batch: {e}")))?;
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
    // About 200 bytes a row in the binary form.
    let mut rows = Vec::with_capacity(pgcopy::HEADER.len() + batch.records.len() * 200 + 2);
    rows.extend_from_slice(pgcopy::HEADER);
    // The days of the records (one or two in practice).
    let mut days: Vec<i64> = Vec::new();
    let mut skipped = 0u64;
    let mut kept = 0u64;
    for (i, r) in batch.records.iter().enumerate() {
        r.validate()
            .map_err(|(field, m)| Error::bad_request(format!("records[{i}].{field}"), m))?;
        if DateTime::from_timestamp_micros(r.at_us).is_none() {
            return Err(Error::bad_request(
                format!("records[{i}].at_us"),
                "not a time",
            ));
        }
        if r.at_us < oldest || r.at_us > newest {
            skipped += 1;
            continue;
        }
        let day = r.at_us.div_euclid(US_PER_DAY);
        if !days.contains(&day) {
            days.push(day);
        }
        copy_row(&mut rows, node, r);
        kept += 1;
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
    let stored = if kept == 0 {
        0
    } else {
        let mut copy = tx.copy_in_raw(COPY_STATEMENT).await?;
        copy.send(rows).await?;
        copy.finish().await?
    };
    tx.commit().await?;
    Ok(Some(stored))
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
         WHERE i.inhparent = 'executions'::regclass",
    )
    .fetch_all(db)
    .await?;
    let mut dropped = 0;
    for (name,) in names {
        let Some(day) = name
            .strip_prefix("executions_p")
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
        else {
            continue;
        };
        if day >= keep_from {
            continue;
        }
        // The name was checked to be executions_pYYYYMMDD above.
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
    let limit = q.limit.unwrap_or(wire::DEFAULT_LIST_LIMIT);
    if limit == 0 || limit > wire::MAX_LIST_LIMIT {
        return Err(Error::bad_request(
            "limit",
            format!("must be 1 to {}", wire::MAX_LIST_LIMIT),
        ));
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT e.at, e.node, e.deployment_id, e.version, e.instance, e.request_id, e.trace_id, \
                e.method, e.status, e.start_kind, e.queue_us, e.start_us, e.upstream_us, \
                e.total_us, e.bytes_in, e.bytes_out, e.rejection \
         FROM executions e \
         WHERE e.function = $1 AND e.at >= $2 AND e.status BETWEEN $3 AND $4 \
           AND e.deployment_id IN (SELECT id FROM deployments WHERE function_id = $5) \
         ORDER BY e.at DESC LIMIT $6",
    )
    .bind(&name)
    .bind(since)
    .bind(lo as i16)
    .bind(hi as i16)
    .bind(id)
    .bind(i64::from(limit))
    .fetch_all(&state.db)
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

    #[test]
    fn copy_rows_are_binary_and_raw() {
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
        let mut out = Vec::new();
        copy_row(&mut out, "n\t1", &r.borrowed());
        let f = fields(&out);
        assert_eq!(f.len(), COPY_COLUMNS as usize);
        let i64_of =
            |v: &Option<Vec<u8>>| i64::from_be_bytes(v.clone().unwrap().try_into().unwrap());
        // 2023-11-14T22:13:20.123456Z since 2000-01-01.
        assert_eq!(i64_of(&f[0]), 1_700_000_000_123_456 - 946_684_800_000_000);
        // Text goes raw: no escapes in the binary form.
        assert_eq!(f[1].as_deref(), Some(&b"n\t1"[..]));
        assert_eq!(f[2].as_deref(), Some(&b"f"[..]));
        assert_eq!(i64_of(&f[3]), 1);
        assert_eq!(f[4].as_deref(), Some(&2i32.to_be_bytes()[..]));
        assert_eq!((&f[5], &f[7], &f[17]), (&None, &None, &None));
        assert_eq!(f[8].as_deref(), Some(&b"G\\T\""[..]));
        assert_eq!(f[9].as_deref(), Some(&200i16.to_be_bytes()[..]));
        assert_eq!(f[10].as_deref(), Some(&b"warm"[..]));
        let numbers: Vec<i64> = f[11..17].iter().map(i64_of).collect();
        assert_eq!(numbers, [1, 2, 3, 4, 5, 6]);
    }
}
