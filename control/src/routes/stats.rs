//! `GET /api/v1/functions/{name}/stats?since=1h&by=minute|hour`: figures of
//! a function's calls from its execution records — calls, answers by class,
//! refusals, total-time percentiles, cold-start share and time, queue time —
//! for the whole window and, with `by`, per minute or hour — and the
//! function's CPU, memory, OOM kills and restarts as its nodes last
//! reported them (`resources`, `super::usage`; not bound by `since`).

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use containerpub_wire::executions::{Stats, StatsQuery, StatsRow};

use crate::auth::{Action, Caller};
use crate::error::{Error, Result};
use crate::reads;
use crate::routes::executions::{function_id, since_start};
use crate::state::AppState;

#[derive(sqlx::FromRow)]
struct Row {
    /// NULL: the row of the whole window.
    bucket: Option<DateTime<Utc>>,
    calls: i64,
    s2: i64,
    s3: i64,
    s4: i64,
    s5: i64,
    s0: i64,
    rejected: i64,
    p50: Option<f64>,
    p95: Option<f64>,
    p99: Option<f64>,
    cold: i64,
    paused: i64,
    cold_us: Option<f64>,
    queue_us: Option<f64>,
    queue_max_us: Option<i64>,
}

/// The figures, for the whole window and, with `by`, per bucket, in one
/// pass over the records (`GROUPING SETS`); `{bucket}` and `{sets}` are
/// replaced by fixed expressions (never input). It reads the view
/// `execution_outcomes`, which splits only the fields used here (migration
/// 0016); a chunk's records are of one UTC day, so one that ends after
/// `$2` began less than 24 hours before it (a bound for partition pruning;
/// not `1 day`, which is 23 hours on a daylight-saving day of the session's
/// time zone).
const SQL: &str = "SELECT {bucket} AS bucket, count(*) AS calls, \
       count(*) FILTER (WHERE status BETWEEN 200 AND 299) AS s2, \
       count(*) FILTER (WHERE status BETWEEN 300 AND 399) AS s3, \
       count(*) FILTER (WHERE status BETWEEN 400 AND 499) AS s4, \
       count(*) FILTER (WHERE status BETWEEN 500 AND 599) AS s5, \
       count(*) FILTER (WHERE status < 200 OR status > 599) AS s0, \
       count(*) FILTER (WHERE rejection IS NOT NULL) AS rejected, \
       percentile_cont(0.5) WITHIN GROUP (ORDER BY total_us) AS p50, \
       percentile_cont(0.95) WITHIN GROUP (ORDER BY total_us) AS p95, \
       percentile_cont(0.99) WITHIN GROUP (ORDER BY total_us) AS p99, \
       count(*) FILTER (WHERE start_kind = 'cold') AS cold, \
       count(*) FILTER (WHERE start_kind = 'paused') AS paused, \
       (avg(start_us) FILTER (WHERE start_kind = 'cold'))::float8 AS cold_us, \
       (avg(queue_us) FILTER (WHERE start_kind IS NOT NULL))::float8 AS queue_us, \
       max(queue_us) AS queue_max_us \
     FROM execution_outcomes \
     WHERE function = $1 AND chunk_max_at >= $2 AND at >= $2 \
       AND chunk_min_at > $2 - interval '24 hours' \
       AND deployment_id IN (SELECT id FROM deployments WHERE function_id = $3) \
     GROUP BY GROUPING SETS ({sets}) ORDER BY 1 NULLS FIRST";

fn ms(us: Option<f64>) -> Option<f64> {
    us.map(|v| (v / 1000.0 * 1000.0).round() / 1000.0)
}

fn to_row(r: Row, since: DateTime<Utc>) -> StatsRow {
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    let calls = n(r.calls);
    StatsRow {
        from: r.bucket.unwrap_or(since),
        calls,
        status_2xx: n(r.s2),
        status_3xx: n(r.s3),
        status_4xx: n(r.s4),
        status_5xx: n(r.s5),
        no_answer: n(r.s0),
        rejected: n(r.rejected),
        p50_ms: ms(r.p50),
        p95_ms: ms(r.p95),
        p99_ms: ms(r.p99),
        cold_starts: n(r.cold),
        paused_starts: n(r.paused),
        cold_start_share: if calls == 0 {
            0.0
        } else {
            n(r.cold) as f64 / calls as f64
        },
        cold_start_ms: ms(r.cold_us),
        queue_mean_ms: ms(r.queue_us),
        queue_max_ms: ms(r.queue_max_us.map(|v| v as f64)),
    }
}

/// `GET /api/v1/functions/{name}/stats`.
pub async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<StatsQuery>,
) -> Result<Json<Stats>> {
    caller.require(Action::ReadFunctions, None)?;
    let id = function_id(&state.db, &name).await?;
    let since = since_start(q.since.as_deref())?;
    let bucket = match q.by.as_deref() {
        None => None,
        Some("minute") => Some("date_trunc('minute', at)"),
        Some("hour") => Some("date_trunc('hour', at)"),
        Some(other) => {
            return Err(Error::bad_request(
                "by",
                format!("must be minute or hour, got {other:?}"),
            ));
        }
    };
    // The whole window is the grouping set (), whose bucket is NULL; a
    // bucket of records is never NULL (every record has a time).
    let sql = match bucket {
        None => SQL
            .replace("{bucket}", "NULL::timestamptz")
            .replace("{sets}", "()"),
        Some(expr) => SQL
            .replace("{bucket}", expr)
            .replace("{sets}", &format!("(), ({expr})")),
    };
    // The permit here (a caller who hangs up while queued takes none), the
    // read in a task of its own (one who hangs up later does not stop it).
    let mut read = state.reads.begin(&state.db).await?;
    let function = name.clone();
    let found: Vec<Row> = reads::detached(async move {
        sqlx::query_as(&sql)
            .bind(&function)
            .bind(since)
            .bind(id)
            .fetch_all(read.conn())
            .await
            .map_err(|e| read.explain(e, "since"))
    })
    .await?;
    let mut total = StatsRow {
        from: since,
        ..StatsRow::default()
    };
    let mut rows = Vec::new();
    for row in found {
        if row.bucket.is_none() {
            total = to_row(row, since);
        } else {
            rows.push(to_row(row, since));
        }
    }
    let usage = super::usage::of_function(&name);
    Ok(Json(Stats {
        resources: (!usage.nodes.is_empty()).then_some(usage.total),
        function: name,
        since,
        by: q.by,
        total,
        rows,
    }))
}
