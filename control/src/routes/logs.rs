//! Function logs: `POST /api/v1/logs` (a proxy ships a batch of the lines
//! its instances printed) and `GET /api/v1/functions/{name}/logs` (what
//! `cpub logs` reads; with `after` and `wait_s` a long poll, so `cpub logs
//! -f` shows a line as soon as it is stored; a poll that waited checks its
//! token again before it answers lines).
//!
//! Any API token may ship lines, as any may report crashes: proxies use
//! one. Every line is checked again here (cleaned, bounded) and stored with
//! its function's id and the version of the deployment it names; lines of
//! functions or deployments that no longer exist are counted and dropped.
//! A batch takes one transaction-scoped advisory lock before its ids are
//! drawn, so ids are committed in order and a follower's cursor (`after`)
//! never skips a line that commits late; under it, lines a proxy read
//! again from their file (killed before it saved how far it shipped) are
//! dropped by their place there (`crate::logs::drop_stored_before`,
//! migration 0017).
//! Retention is in `crate::logs`; reads run under `crate::reads`' limits.
//!
//! Over 600 lines: the ingest and the query share the chunk layout and its
//! SQL, which a split would put in a third file both import.

use std::borrow::Cow;
use std::sync::LazyLock;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use containerpub_wire::logs::{
    LogBatch, LogEntry, LogGroup, LogIngest, LogLine, LogPage, LogQuery, LogStream,
    MAX_BATCH_ID_BYTES, MAX_BATCH_LINES, MAX_FILE_ID_BYTES, MAX_QUERY_LINES, MAX_WAIT_S,
    clean_line, is_clean, is_valid_batch_id, is_valid_file_id,
};
use containerpub_wire::request_id;
use tokio::sync::watch;

use crate::auth::{self, Action, Caller};
use crate::error::{Error, Result};
use crate::pgcopy;
use crate::reads;
use crate::routes::check_name;
use crate::routes::watch::query_error;
use crate::state::AppState;

/// A batch's chunks (one per group), in `COPY_COLUMNS` fields each.
const COPY_STATEMENT: &str = "COPY function_log_chunks \
     (function_id, first_id, n, version, node, instance, min_at, max_at, bytes, \
      request_ids, ats, streams, line_request_ids, lines) \
     FROM STDIN (FORMAT binary)";
const COPY_COLUMNS: i16 = 14;

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
    let mut batch: LogBatch = serde_json::from_slice(&body)
        .map_err(|e| Error::bad_request("body", format!("not a log batch: {e}")))?;
    containerpub_wire::validate_node_name(&batch.node)
        .map_err(|m| Error::bad_request("node", m))?;
    caller.require_node_name(Some(&batch.node))?;
    if let Some(id) = &batch.batch
        && !is_valid_batch_id(id)
    {
        return Err(Error::bad_request(
            "batch",
            format!("must be 1 to {MAX_BATCH_ID_BYTES} letters, digits and '-'"),
        ));
    }
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
        if group.file.as_deref().is_some_and(|f| !is_valid_file_id(f)) {
            return Err(Error::bad_request(
                format!("groups[{g}].file"),
                format!("must be 1 to {MAX_FILE_ID_BYTES} letters, digits and '-'"),
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
            if entry.end.is_some_and(|end| i64::try_from(end).is_err()) {
                return Err(Error::bad_request(
                    format!("groups[{g}].lines[{l}].end"),
                    "must be at most 9223372036854775807",
                ));
            }
        }
    }
    if total == 0 {
        return Ok(Json(LogIngest::default()));
    }
    let mut tx = state.db.begin().await?;
    // A batch sent again (its answer was lost) is stored once: its id's row
    // commits with its lines (a second copy in flight waits for the first
    // on the primary key, then finds it).
    if let Some(id) = &batch.batch {
        let fresh = sqlx::query(
            "INSERT INTO log_batches (node, batch) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(&batch.node)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if fresh == 0 {
            tx.rollback().await?;
            tracing::debug!(node = %batch.node, batch = %id, "log batch received again, not stored twice");
            return Ok(Json(LogIngest {
                duplicate: true,
                ..LogIngest::default()
            }));
        }
    }
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(INGEST_LOCK)
        .execute(&mut *tx)
        .await?;
    let repeated = crate::logs::drop_stored_before(&mut tx, &mut batch).await?;
    // The deployments the batch names, each once.
    let mut named: Vec<(&str, i64)> = batch
        .groups
        .iter()
        .map(|g| (g.function.as_str(), g.deployment_id))
        .collect();
    named.sort_unstable();
    named.dedup();
    let (names, deployments): (Vec<&str>, Vec<i64>) = named.into_iter().unzip();
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
    // The groups stored (of known deployments), with their function and
    // version; then ids for all their lines at once, under the lock.
    let stored_groups: Vec<(&LogGroup, i64, i32)> = batch
        .groups
        .iter()
        .filter(|g| !g.lines.is_empty())
        .filter_map(|group| {
            let (_, _, function_id, version) = known
                .iter()
                .find(|(n, d, _, _)| *n == group.function && *d == group.deployment_id)?;
            Some((group, *function_id, *version))
        })
        .collect();
    let stored_lines: usize = stored_groups.iter().map(|(g, _, _)| g.lines.len()).sum();
    let mut next_id = 0i64;
    if stored_lines > 0 {
        let (last,): (i64,) = sqlx::query_as(
            "SELECT setval('function_log_ids', nextval('function_log_ids') + $1 - 1)",
        )
        .bind(stored_lines as i64)
        .fetch_one(&mut *tx)
        .await?;
        next_id = last - stored_lines as i64 + 1;
    }
    let mut copy_rows = Vec::with_capacity(pgcopy::HEADER.len() + stored_lines * 120 + 2);
    copy_rows.extend_from_slice(pgcopy::HEADER);
    // Per function: lines and bytes stored.
    let mut added: Vec<(i64, i64, i64)> = Vec::new();
    for (group, function_id, version) in stored_groups {
        let n = group.lines.len();
        let bytes = write_chunk(
            &mut copy_rows,
            &batch.node,
            group,
            function_id,
            version,
            next_id,
        );
        next_id += n as i64;
        match added.iter_mut().find(|(f, _, _)| *f == function_id) {
            Some((_, lines, b)) => {
                *lines += n as i64;
                *b += bytes;
            }
            None => added.push((function_id, n as i64, bytes)),
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
        unknown: (total as u64).saturating_sub(stored + repeated),
        duplicate: false,
        repeated,
    };
    if answer.unknown > 0 {
        tracing::debug!(node = %batch.node, unknown = answer.unknown, "log lines of unknown functions dropped");
    }
    Ok(Json(answer))
}

/// Writes `group`'s lines as one chunk row of the COPY (lines cleaned
/// again, ids from `first_id` on); returns the bytes they count against
/// the function's limit.
fn write_chunk(
    out: &mut Vec<u8>,
    node: &str,
    group: &LogGroup,
    function_id: i64,
    version: i32,
    first_id: i64,
) -> i64 {
    let lines: Vec<Cow<'_, str>> = group
        .lines
        .iter()
        .map(|entry| {
            if is_clean(&entry.line) {
                Cow::Borrowed(entry.line.as_str())
            } else {
                Cow::Owned(clean_line(entry.line.as_bytes()))
            }
        })
        .collect();
    let bytes: i64 = lines
        .iter()
        .map(|l| l.len() as i64 + i64::from(ROW_OVERHEAD_BYTES))
        .sum();
    let at_us = |e: &LogEntry| e.at_ns.div_euclid(1000);
    let min_at = group.lines.iter().map(at_us).min().unwrap_or(0);
    let max_at = group.lines.iter().map(at_us).max().unwrap_or(0);
    let mut request_ids: Vec<&str> = group
        .lines
        .iter()
        .filter_map(|e| e.request_id.as_deref())
        .collect();
    request_ids.sort_unstable();
    request_ids.dedup();
    pgcopy::row(out, COPY_COLUMNS);
    pgcopy::field(out, &function_id.to_be_bytes());
    pgcopy::field(out, &first_id.to_be_bytes());
    // At most MAX_BATCH_LINES lines.
    pgcopy::field(out, &(group.lines.len() as i32).to_be_bytes());
    pgcopy::field(out, &version.to_be_bytes());
    pgcopy::field(out, node.as_bytes());
    pgcopy::field(out, group.instance.as_bytes());
    pgcopy::timestamp_us(out, min_at);
    pgcopy::timestamp_us(out, max_at);
    pgcopy::field(out, &bytes.to_be_bytes());
    use pgcopy::{TEXT_OID, TIMESTAMPTZ_OID, array};
    array(
        out,
        TEXT_OID,
        request_ids.iter().map(|id| Some(id.as_bytes())),
    );
    let entries = || group.lines.iter();
    array(
        out,
        TIMESTAMPTZ_OID,
        entries().map(|e| Some(pgcopy::timestamp_bytes(at_us(e)))),
    );
    array(
        out,
        TEXT_OID,
        entries().map(|e| Some(e.stream.as_str().as_bytes())),
    );
    array(
        out,
        TEXT_OID,
        entries().map(|e| e.request_id.as_deref().map(str::as_bytes)),
    );
    array(out, TEXT_OID, lines.iter().map(|l| Some(l.as_bytes())));
    bytes
}

/// The chunks a query may read, in id order (`ASC`) or newest first
/// (`DESC`): of the function, holding ids after `$2` and starting before
/// `$3`, of version `$4`, an instance starting with `$5`, holding request
/// id `$6` and a line at or after `$7`. Every chunk it names holds a line
/// that passes the line filters, save the one holding the cursor and one
/// that matches `$6` and `$7` on different lines. `$8` is `$2` less the
/// most lines a chunk holds (`MAX_BATCH_LINES`, a check of migration
/// 0010): a bound on `first_id` itself, so that a follower's query starts
/// in the primary key at its cursor instead of at the function's oldest
/// chunk.
macro_rules! chunks_query {
    ($order:literal) => {
        concat!(
            "SELECT first_id, bytes FROM function_log_chunks \
             WHERE function_id = $1 AND first_id > $8 AND first_id + n - 1 > $2 \
               AND first_id < $3 \
               AND ($4::int IS NULL OR version = $4) \
               AND ($5::text IS NULL OR starts_with(instance, $5)) \
               AND ($6::text IS NULL OR request_ids @> ARRAY[$6::text]) \
               AND ($7::timestamptz IS NULL OR max_at >= $7) \
             ORDER BY first_id ",
            $order,
            " LIMIT 64"
        )
    };
}
const CHUNKS_FORWARD: &str = chunks_query!("ASC");
const CHUNKS_NEWEST: &str = chunks_query!("DESC");
/// The lines of chunks chosen by one of the above.
const CHUNK_LINES: &str = "SELECT first_id, version, node, instance, ats, streams, \
     line_request_ids, lines FROM function_log_chunks \
     WHERE function_id = $1 AND first_id = ANY($2)";
/// Bytes of chunks (line bytes + 64 a line) a query reads at a time: a
/// query's memory stays bounded however large the chunks it passes over.
const READ_BYTES: i64 = 4 << 20;

type ChunkLines = (
    i64,
    i32,
    String,
    String,
    Vec<DateTime<Utc>>,
    Vec<String>,
    Vec<Option<String>>,
    Vec<String>,
);

/// What a query asks for, validated.
struct Filter {
    function: String,
    function_id: i64,
    after: i64,
    version: Option<i32>,
    instance: Option<String>,
    request_id: Option<String>,
    since: Option<DateTime<Utc>>,
    limit: usize,
    newest: bool,
}

/// The lines `f` asks for, oldest first: the first `limit` after the
/// cursor, or the newest `limit`. Reads chunks a few MiB at a time, in
/// order, until it has `limit` lines or none are left.
/// Each statement takes the read's connection anew (`Read::conn`), so a
/// cancel is told from the time limit by that statement's time.
async fn read_lines(read: &mut reads::Read, f: &Filter) -> sqlx::Result<Vec<LogLine>> {
    let mut lines = Vec::new();
    // Chunks already read: ids up to `after` (forward), from `before` on
    // (newest first).
    let (mut after, mut before) = (f.after, i64::MAX);
    while lines.len() < f.limit {
        let chunks: Vec<(i64, i64)> = sqlx::query_as(if f.newest {
            CHUNKS_NEWEST
        } else {
            CHUNKS_FORWARD
        })
        .bind(f.function_id)
        .bind(after)
        .bind(before)
        .bind(f.version)
        .bind(f.instance.as_deref())
        .bind(f.request_id.as_deref())
        .bind(f.since)
        .bind(after.saturating_sub(MAX_BATCH_LINES as i64))
        .fetch_all(read.conn())
        .await?;
        let Some(first) = chunks.first() else { break };
        let mut take = vec![first.0];
        let mut bytes = first.1;
        for (id, b) in &chunks[1..] {
            bytes += b;
            if bytes > READ_BYTES {
                break;
            }
            take.push(*id);
        }
        let mut read: Vec<ChunkLines> = sqlx::query_as(CHUNK_LINES)
            .bind(f.function_id)
            .bind(&take)
            .fetch_all(read.conn())
            .await?;
        read.sort_unstable_by_key(|c| c.0);
        if f.newest {
            read.reverse();
        }
        for (first_id, version, node, instance, ats, streams, request_ids, texts) in read {
            let n = texts.len() as i64;
            if f.newest {
                before = first_id;
            } else {
                after = first_id + n - 1;
            }
            let chunk = ats.into_iter().zip(streams).zip(request_ids).zip(texts);
            let mut from_chunk = chunk
                .enumerate()
                .map(|(i, (((at, stream), request_id), line))| LogLine {
                    id: first_id + i as i64,
                    function: f.function.clone(),
                    at,
                    version,
                    node: node.clone(),
                    instance: instance.clone(),
                    stream: LogStream::parse(&stream).unwrap_or(LogStream::System),
                    request_id,
                    line,
                })
                .filter(|l| {
                    l.id > f.after
                        && f.request_id
                            .as_deref()
                            .is_none_or(|id| l.request_id.as_deref() == Some(id))
                        && f.since.is_none_or(|since| l.at >= since)
                })
                .collect::<Vec<_>>();
            if f.newest {
                from_chunk.reverse();
            }
            let room = f.limit - lines.len();
            lines.extend(from_chunk.into_iter().take(room));
            if lines.len() >= f.limit {
                break;
            }
        }
    }
    if f.newest {
        lines.reverse();
    }
    Ok(lines)
}

/// `GET /api/v1/functions/{name}/logs`.
pub async fn query(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
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
    // Bounded to ten years above.
    let since = q
        .since_s
        .map(|s| Utc::now() - chrono::TimeDelta::seconds(s as i64));
    let filter = std::sync::Arc::new(Filter {
        function: name.clone(),
        function_id,
        after: q.after.unwrap_or(0),
        version: q.version,
        instance: q.instance.as_deref().map(str::to_ascii_lowercase),
        request_id: q.request_id.clone(),
        since,
        limit: limit as usize,
        newest: q.after.is_none() && q.since_s.is_none(),
    });
    let deadline = tokio::time::Instant::now() + wait;
    let waiting = q.after.is_some() && !wait.is_zero();
    let mut stored = STORED.subscribe();
    let mut waited = false;
    loop {
        stored.mark_unchanged();
        // A read of its own each time, none held while it waits; a follower
        // with time left that finds every permit taken waits on.
        // The permit here, the read in a task of its own (as in `stats`).
        // A follower's next lines have no window to blame (503: try again);
        // any other read is asked for a shorter window or narrower filters.
        let window = q.after.is_none().then_some("since_s");
        let lines = match state.reads.begin(&state.db).await {
            Ok(mut read) => {
                let f = filter.clone();
                reads::detached(async move {
                    read_lines(&mut read, &f)
                        .await
                        .map_err(|e| read.explain(e, window))
                })
                .await?
            }
            Err(Error::TooManyRequests { .. })
                if waiting && tokio::time::Instant::now() < deadline =>
            {
                Vec::new()
            }
            Err(err) => return Err(err),
        };
        if !lines.is_empty() || !waiting || tokio::time::Instant::now() >= deadline {
            if waited && !lines.is_empty() {
                // A token revoked (or expired, its user removed) while the
                // poll waited gets a 401, not the lines printed since:
                // checked after they were read, so a revocation that
                // committed before the read is seen (as the route watch).
                auth::recheck(&state.db, &headers)
                    .await?
                    .require(Action::ReadFunctions, None)?;
            }
            let next = match (lines.last(), q.after) {
                (Some(last), _) => last.id,
                (None, Some(after)) => after,
                // Nothing yet: follow from the newest line of the function.
                (None, None) => {
                    let last: Option<(i64,)> = sqlx::query_as(
                        "SELECT first_id + n - 1 FROM function_log_chunks \
                         WHERE function_id = $1 ORDER BY first_id DESC LIMIT 1",
                    )
                    .bind(function_id)
                    .fetch_optional(&state.db)
                    .await?;
                    last.map_or(0, |(id,)| id)
                }
            };
            return Ok(Json(LogPage { lines, next }));
        }
        tokio::select! {
            _ = stored.changed() => {}
            () = tokio::time::sleep(FOLLOW_RECHECK) => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = state.shutdown.cancelled() => {}
        }
        waited = true;
        if state.shutdown.is_cancelled() {
            return Ok(Json(LogPage {
                lines: Vec::new(),
                next: q.after.unwrap_or(0),
            }));
        }
    }
}
