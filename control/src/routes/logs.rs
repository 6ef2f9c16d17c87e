//! Function logs: `POST /api/v1/logs` (a proxy ships a batch of the lines
//! its instances printed) and `GET /api/v1/functions/{name}/logs` (what
//! `cpub logs` reads; with `after` and `wait_s` a long poll, so `cpub logs
//! -f` shows a line as soon as it is stored).
//!
//! Any API token may ship lines, as any may report crashes: proxies use
//! one. Every line is checked again here (cleaned, bounded) and stored with
//! its function's id and the version of the deployment it names; lines of
//! functions or deployments that no longer exist are counted and dropped.
//! A batch takes one transaction-scoped advisory lock before its ids are
//! drawn, so ids are committed in order and a follower's cursor (`after`)
//! never skips a line that commits late. Retention is in `crate::logs`.

use std::borrow::Cow;
use std::sync::LazyLock;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use containerpub_wire::logs::{
    LogBatch, LogIngest, LogLine, LogPage, LogQuery, LogStream, MAX_BATCH_LINES, MAX_QUERY_LINES,
    MAX_WAIT_S, clean_line, is_clean,
};
use containerpub_wire::request_id;
use tokio::sync::watch;

use crate::auth::{Action, Caller};
use crate::error::{Error, Result};
use crate::pgcopy;
use crate::routes::check_name;
use crate::routes::watch::query_error;
use crate::state::AppState;

/// A batch's rows, in `COPY_COLUMNS` fields each.
const COPY_STATEMENT: &str = "COPY function_logs \
     (function_id, version, node, instance, stream, at, request_id, line, bytes) \
     FROM STDIN (FORMAT binary)";
const COPY_COLUMNS: i16 = 9;

/// Key of the advisory lock every batch takes (ASCII "cpublogs").
const INGEST_LOCK: i64 = 0x6370_7562_6c6f_6773;
/// Bytes a row counts beyond its text (ids, times, names) against the
/// per-function limit.
pub(crate) const ROW_OVERHEAD_BYTES: i32 = 64;
/// How often a waiting follower looks again even without a wake-up from
/// this process (lines stored by another control-plane replica).
const FOLLOW_RECHECK: Duration = Duration::from_millis(500);
/// Lines a query answers unless `limit` says otherwise.
const DEFAULT_LIMIT: u32 = 1000;

/// Bumped after every stored batch: wakes the followers of this process.
static STORED: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::channel(0).0);

/// `POST /api/v1/logs`.
pub async fn ingest(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<LogIngest>> {
    caller.require(Action::ShipLogs, None)?;
    let batch: LogBatch = serde_json::from_slice(&body)
        .map_err(|e| Error::bad_request("body", format!("not a log batch: {e}")))?;
    containerpub_wire::validate_node_name(&batch.node)
        .map_err(|m| Error::bad_request("node", m))?;
    caller.require_node_name(Some(&batch.node))?;
    let total: usize = batch.groups.iter().map(|g| g.lines.len()).sum();
    if total > MAX_BATCH_LINES {
        return Err(Error::too_large(
            "groups",
            format!("a batch holds at most {MAX_BATCH_LINES} lines, got {total}"),
        ));
    }
    for (g, group) in batch.groups.iter().enumerate() {
        containerpub_wire::validate_function_name(&group.function)
            .map_err(|m| Error::bad_request(format!("groups[{g}].function"), m))?;
        if group.instance.len() > 64 || !group.instance.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::bad_request(
                format!("groups[{g}].instance"),
                "must be a container id (at most 64 hex digits) or empty",
            ));
        }
        for (l, entry) in group.lines.iter().enumerate() {
            if let Some(id) = &entry.request_id
                && !request_id::is_valid(id.as_bytes())
            {
                return Err(Error::bad_request(
                    format!("groups[{g}].lines[{l}].request_id"),
                    "not a valid request id",
                ));
            }
        }
    }
    if total == 0 {
        return Ok(Json(LogIngest::default()));
    }
    // The deployments the batch names, each once.
    let mut named: Vec<(&str, i64)> = batch
        .groups
        .iter()
        .map(|g| (g.function.as_str(), g.deployment_id))
        .collect();
    named.sort_unstable();
    named.dedup();
    let (names, deployments): (Vec<&str>, Vec<i64>) = named.into_iter().unzip();
    let mut tx = state.db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(INGEST_LOCK)
        .execute(&mut *tx)
        .await?;
    // Resolved once per batch, the functions' rows held until the commit
    // (a deletion, which takes them `FOR UPDATE` and deletes their lines,
    // waits): what a foreign key checked on every row before migration
    // 0009, at a third of the cost of the whole insert.
    let known: Vec<(String, i64, i64, i32)> = sqlx::query_as(
        "SELECT t.name, t.deployment, f.id, d.version \
         FROM unnest($1::text[], $2::bigint[]) AS t(name, deployment) \
         JOIN functions f ON f.name = t.name \
         JOIN deployments d ON d.id = t.deployment AND d.function_id = f.id \
         FOR KEY SHARE OF f",
    )
    .bind(&names)
    .bind(&deployments)
    .fetch_all(&mut *tx)
    .await?;
    let mut copy_rows = Vec::with_capacity(pgcopy::HEADER.len() + total * 160 + 2);
    copy_rows.extend_from_slice(pgcopy::HEADER);
    // Per function: lines and bytes stored.
    let mut added: Vec<(i64, i64, i64)> = Vec::new();
    for group in &batch.groups {
        let Some((_, _, function_id, version)) = known
            .iter()
            .find(|(n, d, _, _)| *n == group.function && *d == group.deployment_id)
        else {
            continue;
        };
        let mut bytes = 0i64;
        for entry in &group.lines {
            let line = if is_clean(&entry.line) {
                Cow::Borrowed(entry.line.as_str())
            } else {
                Cow::Owned(clean_line(entry.line.as_bytes()))
            };
            // A clean line is bounded (`MAX_LINE_BYTES`): far below i32.
            let row_bytes = line.len() as i32 + ROW_OVERHEAD_BYTES;
            bytes += i64::from(row_bytes);
            pgcopy::row(&mut copy_rows, COPY_COLUMNS);
            pgcopy::field(&mut copy_rows, &function_id.to_be_bytes());
            pgcopy::field(&mut copy_rows, &version.to_be_bytes());
            pgcopy::field(&mut copy_rows, batch.node.as_bytes());
            pgcopy::field(&mut copy_rows, group.instance.as_bytes());
            pgcopy::field(&mut copy_rows, entry.stream.as_str().as_bytes());
            pgcopy::timestamp_us(&mut copy_rows, entry.at_ns.div_euclid(1000));
            pgcopy::field_opt(&mut copy_rows, entry.request_id.as_deref());
            pgcopy::field(&mut copy_rows, line.as_bytes());
            pgcopy::field(&mut copy_rows, &row_bytes.to_be_bytes());
        }
        match added.iter_mut().find(|(f, _, _)| f == function_id) {
            Some((_, lines, b)) => {
                *lines += group.lines.len() as i64;
                *b += bytes;
            }
            None => added.push((*function_id, group.lines.len() as i64, bytes)),
        }
    }
    copy_rows.extend_from_slice(pgcopy::TRAILER);
    let mut usage: Vec<(i64, i64, i64)> = Vec::new();
    if !added.is_empty() {
        let mut copy = tx.copy_in_raw(COPY_STATEMENT).await?;
        copy.send(copy_rows).await?;
        copy.finish().await?;
        let (ids, bytes): (Vec<i64>, Vec<i64>) = added.iter().map(|(f, _, b)| (*f, *b)).unzip();
        let totals: Vec<(i64, i64)> = sqlx::query_as(
            "INSERT INTO function_log_usage (function_id, bytes) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[]) \
             ON CONFLICT (function_id) DO UPDATE \
             SET bytes = function_log_usage.bytes + EXCLUDED.bytes \
             RETURNING function_id, bytes",
        )
        .bind(&ids)
        .bind(&bytes)
        .fetch_all(&mut *tx)
        .await?;
        usage = added
            .iter()
            .filter_map(|(f, lines, _)| {
                let (_, total) = totals.iter().find(|(id, _)| id == f)?;
                Some((*f, *lines, *total))
            })
            .collect();
    }
    tx.commit().await?;
    STORED.send_modify(|n| *n = n.wrapping_add(1));
    let stored: i64 = usage.iter().map(|(_, lines, _)| lines).sum();
    let limit = state.settings.logs.max_bytes;
    for (function_id, _, bytes) in &usage {
        if u64::try_from(*bytes).unwrap_or(0) > limit {
            crate::logs::trim(&state.db, *function_id, limit).await?;
        }
    }
    let stored = u64::try_from(stored).unwrap_or(0);
    let answer = LogIngest {
        stored,
        unknown: (total as u64).saturating_sub(stored),
    };
    if answer.unknown > 0 {
        tracing::debug!(node = %batch.node, unknown = answer.unknown, "log lines of unknown functions dropped");
    }
    Ok(Json(answer))
}

type LineRow = (
    i64,
    DateTime<Utc>,
    i32,
    String,
    String,
    String,
    Option<String>,
    String,
);

/// Lines after a cursor, oldest first (also `since_s` without a cursor).
const FORWARD: &str = "SELECT id, at, version, node, instance, stream, request_id, line \
     FROM function_logs \
     WHERE function_id = $1 AND id > $2 \
       AND ($3::int IS NULL OR version = $3) \
       AND ($4::text IS NULL OR starts_with(instance, $4)) \
       AND ($5::text IS NULL OR request_id = $5) \
       AND ($6::float8 IS NULL OR at >= now() - make_interval(secs => $6)) \
     ORDER BY id LIMIT $7";
/// The newest lines (no cursor, no `since_s`), newest first.
const NEWEST: &str = "SELECT id, at, version, node, instance, stream, request_id, line \
     FROM function_logs \
     WHERE function_id = $1 AND id > $2 \
       AND ($3::int IS NULL OR version = $3) \
       AND ($4::text IS NULL OR starts_with(instance, $4)) \
       AND ($5::text IS NULL OR request_id = $5) \
       AND ($6::float8 IS NULL OR at >= now() - make_interval(secs => $6)) \
     ORDER BY id DESC LIMIT $7";

/// `GET /api/v1/functions/{name}/logs`.
pub async fn query(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    query: std::result::Result<Query<LogQuery>, QueryRejection>,
) -> Result<Json<LogPage>> {
    caller.require(Action::ReadFunctions, None)?;
    check_name(&name)?;
    let Query(q) = query.map_err(|e| query_error(&e))?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_QUERY_LINES).contains(&limit) {
        return Err(Error::bad_request(
            "limit",
            format!("must be 1 to {MAX_QUERY_LINES}, got {limit}"),
        ));
    }
    if let Some(instance) = &q.instance
        && (!(4..=64).contains(&instance.len()) || !instance.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(Error::bad_request(
            "instance",
            "must be 4 to 64 hex digits (a container id or its start)",
        ));
    }
    if let Some(id) = &q.request_id
        && !request_id::is_valid(id.as_bytes())
    {
        return Err(Error::bad_request(
            "request_id",
            "must be 1 to 128 of A-Z a-z 0-9 - _ . : + / =",
        ));
    }
    const TEN_YEARS_S: u64 = 10 * 366 * 24 * 3600;
    if q.since_s.is_some_and(|s| s > TEN_YEARS_S) {
        return Err(Error::bad_request(
            "since_s",
            format!("must be at most {TEN_YEARS_S} seconds"),
        ));
    }
    let wait = Duration::from_secs(q.wait_s.unwrap_or(0));
    if wait > Duration::from_secs(MAX_WAIT_S) {
        return Err(Error::bad_request(
            "wait_s",
            format!("must be at most {MAX_WAIT_S}"),
        ));
    }
    if q.after.is_some_and(|a| a < 0) {
        return Err(Error::bad_request("after", "must be 0 or more"));
    }
    let function_id: Option<(i64,)> = sqlx::query_as("SELECT id FROM functions WHERE name = $1")
        .bind(&name)
        .fetch_optional(&state.db)
        .await?;
    let Some((function_id,)) = function_id else {
        return Err(Error::NotFound(format!("function {name:?} not found")));
    };
    let newest = q.after.is_none() && q.since_s.is_none();
    let deadline = tokio::time::Instant::now() + wait;
    let mut stored = STORED.subscribe();
    loop {
        stored.mark_unchanged();
        let mut rows: Vec<LineRow> = sqlx::query_as(if newest { NEWEST } else { FORWARD })
            .bind(function_id)
            .bind(q.after.unwrap_or(0))
            .bind(q.version)
            .bind(q.instance.as_deref().map(str::to_ascii_lowercase))
            .bind(q.request_id.as_deref())
            .bind(q.since_s.map(|s| s as f64))
            .bind(i64::from(limit))
            .fetch_all(&state.db)
            .await?;
        if newest {
            rows.reverse();
        }
        let waiting = q.after.is_some() && !wait.is_zero();
        if !rows.is_empty() || !waiting || tokio::time::Instant::now() >= deadline {
            let next = match (rows.last(), q.after) {
                (Some(last), _) => last.0,
                (None, Some(after)) => after,
                // Nothing yet: follow from the newest line of the function.
                (None, None) => {
                    let (max,): (i64,) = sqlx::query_as(
                        "SELECT coalesce(max(id), 0) FROM function_logs WHERE function_id = $1",
                    )
                    .bind(function_id)
                    .fetch_one(&state.db)
                    .await?;
                    max
                }
            };
            let lines = rows.into_iter().map(to_line).collect();
            return Ok(Json(LogPage { lines, next }));
        }
        tokio::select! {
            _ = stored.changed() => {}
            () = tokio::time::sleep(FOLLOW_RECHECK) => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = state.shutdown.cancelled() => {}
        }
        if state.shutdown.is_cancelled() {
            return Ok(Json(LogPage {
                lines: Vec::new(),
                next: q.after.unwrap_or(0),
            }));
        }
    }
}

fn to_line(row: LineRow) -> LogLine {
    let (id, at, version, node, instance, stream, request_id, line) = row;
    LogLine {
        id,
        at,
        version,
        node,
        instance,
        stream: LogStream::parse(&stream).unwrap_or(LogStream::System),
        request_id,
        line,
    }
}
