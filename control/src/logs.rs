//! Storage rules of function logs beside the handlers (`routes/logs.rs`).
//!
//! Lines read again from their file are stored once
//! ([`drop_stored_before`], migration 0017).
//!
//! Retention, a chunk (one batch's lines of one instance, migration 0010)
//! at a time: chunks whose newest line is older than
//! `--log-retention-days` go (a sweep every minute), and a function never
//! keeps more than `--log-retention-bytes` (checked after every stored
//! batch from the usage row kept with each insert: past the limit, its
//! oldest chunks go until it holds at most 90 % of it, so a busy function
//! is not trimmed on every batch; its newest chunk always stays). The same
//! sweep forgets the ids of batches stored more than [`BATCH_ID_KEEP`] ago
//! (migration 0014: they only guard against a proxy sending a batch again
//! after its answer was lost), and the places of log files no line came
//! from for as long as lines are kept (migration 0017: they guard against
//! lines read again after a proxy was killed).

use std::collections::HashMap;
use std::time::Duration;

use containerpub_wire::logs::{LogBatch, LogGroup, LogStream};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigError;

pub const ENV_LOG_RETENTION_DAYS: &str = "CPUB_LOG_RETENTION_DAYS";
pub const ENV_LOG_RETENTION_BYTES: &str = "CPUB_LOG_RETENTION_BYTES";

/// How often lines past their age are removed.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Chunks removed per statement (a long sweep does not hold one huge
/// transaction).
const SWEEP_CHUNKS: i64 = 1_000;

/// How long a stored batch's id is kept against a second copy. A proxy
/// sends a batch again within seconds (back-off at most 10 s) while its
/// process lives, and ids are unique per process: a day covers a retry
/// after a day-long control-plane outage that began right after the first
/// copy was stored. Ids are not kept as long as the lines (7 days by
/// default): a busy node ships up to 10 batches a second.
pub const BATCH_ID_KEEP: Duration = Duration::from_secs(24 * 3600);

/// The flags of log retention (flattened into `cpub-control`'s).
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Days a function's log lines are kept (1 to 3650).
    #[arg(long, env = ENV_LOG_RETENTION_DAYS, default_value_t = 7)]
    pub log_retention_days: u32,
    /// Most bytes of log lines kept per function (oldest go first; at least
    /// 64 KiB).
    #[arg(long, env = ENV_LOG_RETENTION_BYTES, default_value_t = 256 * 1024 * 1024)]
    pub log_retention_bytes: u64,
}

/// Log retention as validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub days: u32,
    pub max_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            days: 7,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

impl LogArgs {
    pub fn validate(&self) -> Result<Retention, ConfigError> {
        if !(1..=3650).contains(&self.log_retention_days) {
            return Err(ConfigError {
                setting: format!("--log-retention-days / {ENV_LOG_RETENTION_DAYS}"),
                message: format!("must be 1 to 3650, got {}", self.log_retention_days),
            });
        }
        if self.log_retention_bytes < 64 * 1024 || self.log_retention_bytes > i64::MAX as u64 {
            return Err(ConfigError {
                setting: format!("--log-retention-bytes / {ENV_LOG_RETENTION_BYTES}"),
                message: format!("must be at least 65536, got {}", self.log_retention_bytes),
            });
        }
        Ok(Retention {
            days: self.log_retention_days,
            max_bytes: self.log_retention_bytes,
        })
    }
}

/// Removes lines past their age every [`SWEEP_EVERY`] until `shutdown`.
pub async fn sweep_forever(db: PgPool, retention: Retention, shutdown: CancellationToken) {
    loop {
        match sweep(&db, retention.days).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(lines = n, days = retention.days, "old log lines removed"),
            Err(err) => tracing::warn!(%err, "removing old log lines"),
        }
        if let Err(err) = prune_batch_ids(&db, BATCH_ID_KEEP).await {
            tracing::warn!(%err, "removing old log batch ids");
        }
        if let Err(err) = prune_positions(&db, retention.days).await {
            tracing::warn!(%err, "removing old log file positions");
        }
        tokio::select! {
            () = tokio::time::sleep(SWEEP_EVERY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Removes every chunk whose newest line is older than `days`; returns how
/// many lines went.
pub async fn sweep(db: &PgPool, days: u32) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let (chunks, lines): (i64, i64) = sqlx::query_as(
            "WITH del AS ( \
               DELETE FROM function_log_chunks WHERE (function_id, first_id) IN ( \
                 SELECT function_id, first_id FROM function_log_chunks \
                 WHERE max_at < now() - make_interval(days => $1) LIMIT $2) \
               RETURNING function_id, n, bytes), \
             agg AS (SELECT function_id, count(*) AS c, sum(n) AS n, sum(bytes)::bigint AS b \
                     FROM del GROUP BY function_id), \
             up AS (UPDATE function_log_usage u SET bytes = greatest(u.bytes - agg.b, 0) \
                    FROM agg WHERE u.function_id = agg.function_id) \
             SELECT coalesce(sum(c), 0)::bigint, coalesce(sum(n), 0)::bigint FROM agg",
        )
        .bind(i32::try_from(days).unwrap_or(i32::MAX))
        .bind(SWEEP_CHUNKS)
        .fetch_one(db)
        .await?;
        total += u64::try_from(lines).unwrap_or(0);
        if chunks < SWEEP_CHUNKS {
            return Ok(total);
        }
    }
}

/// Forgets the ids of batches stored more than `older_than` ago (a
/// thousand rows per statement); returns how many went.
pub async fn prune_batch_ids(db: &PgPool, older_than: Duration) -> Result<u64, sqlx::Error> {
    delete_old(
        db,
        "DELETE FROM log_batches WHERE (node, batch) IN ( \
           SELECT node, batch FROM log_batches \
           WHERE at < now() - make_interval(secs => $1) LIMIT $2)",
        older_than,
    )
    .await
}

/// Runs `delete` (rows older than `$1` seconds, at most `$2` of them) until
/// it removes fewer than [`SWEEP_CHUNKS`]; returns how many went.
async fn delete_old(db: &PgPool, delete: &str, older_than: Duration) -> Result<u64, sqlx::Error> {
    let secs = older_than.as_secs_f64();
    let mut total = 0;
    loop {
        let gone = sqlx::query(delete)
            .bind(secs)
            .bind(SWEEP_CHUNKS)
            .execute(db)
            .await?
            .rows_affected();
        total += gone;
        if gone < SWEEP_CHUNKS as u64 {
            return Ok(total);
        }
    }
}

/// Drops the lines of `batch` stored before: a line whose end in its file
/// (`LogEntry::end`, of the group's `file`) is at or before the end of the
/// last line of its stream stored from that file (migration 0017: a proxy
/// killed before it saved how far it shipped leaves the next one to read
/// those lines again), or of an earlier line of the batch. A stream's lines
/// come in file order, each ending after the one before (the streams'
/// lines interleave: a line held back unfinished on one ends before lines
/// of the other stored meanwhile). Then keeps the new ends. Lines without
/// a place (older proxies, platform lines) are all kept. Under the ingest
/// lock: batches from one file are never checked at once. Returns how many
/// lines were dropped.
pub(crate) async fn drop_stored_before(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    batch: &mut LogBatch,
) -> Result<u64, sqlx::Error> {
    /// Instance, file and stream, borrowed from the batch or the rows read.
    type Key<'a> = (&'a str, &'a str, &'static str);
    let with_place = |g: &LogGroup| !g.instance.is_empty() && g.file.is_some();
    if !batch.groups.iter().any(with_place) {
        return Ok(0);
    }
    let mut instances: Vec<&str> = Vec::new();
    let mut files: Vec<&str> = Vec::new();
    for g in batch.groups.iter().filter(|g| with_place(g)) {
        instances.push(&g.instance);
        files.push(g.file.as_deref().unwrap_or_default());
    }
    let stored: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT p.instance, p.file, p.stream, p.end_offset FROM log_positions p \
         JOIN (SELECT DISTINCT * FROM unnest($2::text[], $3::text[])) AS f(instance, file) \
           ON p.instance = f.instance AND p.file = f.file \
         WHERE p.node = $1",
    )
    .bind(&batch.node)
    .bind(&instances)
    .bind(&files)
    .fetch_all(&mut **tx)
    .await?;
    let mut last: HashMap<Key, i64> = HashMap::new();
    for (instance, file, stream, end) in &stored {
        if let Some(stream) = LogStream::parse(stream) {
            last.insert((instance, file, stream.as_str()), *end);
        }
    }
    let mut moved: HashMap<Key, i64> = HashMap::new();
    let mut dropped = 0u64;
    for LogGroup {
        instance,
        file,
        lines,
        ..
    } in &mut batch.groups
    {
        let (instance, file): (&String, &Option<String>) = (instance, file);
        let Some(file) = file.as_deref().filter(|_| !instance.is_empty()) else {
            continue;
        };
        let before = lines.len();
        lines.retain(|line| {
            // Checked: at most i64::MAX.
            let Some(end) = line.end.and_then(|e| i64::try_from(e).ok()) else {
                return true;
            };
            let key = (instance.as_str(), file, line.stream.as_str());
            let end_before = last.get(&key).copied().unwrap_or(-1);
            if end <= end_before {
                return false;
            }
            last.insert(key, end);
            moved.insert(key, end);
            true
        });
        dropped += (before - lines.len()) as u64;
    }
    if !moved.is_empty() {
        let mut instances = Vec::with_capacity(moved.len());
        let mut files = Vec::with_capacity(moved.len());
        let mut streams = Vec::with_capacity(moved.len());
        let mut ends = Vec::with_capacity(moved.len());
        for ((instance, file, stream), end) in moved {
            instances.push(instance);
            files.push(file);
            streams.push(stream);
            ends.push(end);
        }
        sqlx::query(
            "INSERT INTO log_positions (node, instance, file, stream, end_offset) \
             SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[]) \
             ON CONFLICT (node, instance, file, stream) DO UPDATE \
             SET end_offset = greatest(log_positions.end_offset, EXCLUDED.end_offset), at = now()",
        )
        .bind(&batch.node)
        .bind(&instances)
        .bind(&files)
        .bind(&streams)
        .bind(&ends)
        .execute(&mut **tx)
        .await?;
    }
    if dropped > 0 {
        tracing::debug!(node = %batch.node, lines = dropped, "log lines read again not stored twice");
    }
    Ok(dropped)
}

/// Forgets the places of log files no line came from for `days` (a
/// thousand rows per statement); returns how many went.
pub async fn prune_positions(db: &PgPool, days: u32) -> Result<u64, sqlx::Error> {
    delete_old(
        db,
        "DELETE FROM log_positions WHERE (node, instance, file, stream) IN ( \
           SELECT node, instance, file, stream FROM log_positions \
           WHERE at < now() - make_interval(secs => $1) LIMIT $2)",
        Duration::from_secs(u64::from(days) * 86_400),
    )
    .await
}

/// Removes the oldest chunks of `function_id` until it holds at most 90 %
/// of `max_bytes`, never its newest chunk (which alone may hold more: a
/// batch is up to 16 MiB, the limit at least 64 KiB); returns the bytes
/// removed.
pub async fn trim(db: &PgPool, function_id: i64, max_bytes: u64) -> Result<u64, sqlx::Error> {
    let target = i64::try_from(max_bytes / 10 * 9).unwrap_or(i64::MAX);
    let (removed,): (i64,) = sqlx::query_as(
        "WITH usage AS (SELECT bytes FROM function_log_usage WHERE function_id = $1), \
         cut AS ( \
           SELECT min(first_id) AS id FROM ( \
             SELECT first_id, sum(bytes) OVER (ORDER BY first_id) AS cum \
             FROM function_log_chunks WHERE function_id = $1) t \
           WHERE t.cum >= (SELECT bytes FROM usage) - $2 \
             AND (SELECT bytes FROM usage) > $2), \
         newest AS (SELECT max(first_id) AS id FROM function_log_chunks WHERE function_id = $1), \
         del AS (DELETE FROM function_log_chunks \
                 WHERE function_id = $1 AND first_id <= (SELECT id FROM cut) \
                   AND first_id < (SELECT id FROM newest) \
                 RETURNING bytes), \
         sum AS (SELECT coalesce(sum(bytes), 0)::bigint AS b FROM del), \
         up AS (UPDATE function_log_usage SET bytes = greatest(bytes - (SELECT b FROM sum), 0) \
                WHERE function_id = $1) \
         SELECT b FROM sum",
    )
    .bind(function_id)
    .bind(target)
    .fetch_one(db)
    .await?;
    if removed > 0 {
        tracing::debug!(
            function_id,
            bytes = removed,
            "oldest log chunks removed (byte limit)"
        );
    }
    Ok(u64::try_from(removed).unwrap_or(0))
}
