//! `GET /api/v1/functions/{name}/stats?since=1h&by=minute|hour`: figures of
//! a function's calls from its execution records — calls, answers by class,
//! refusals, total-time percentiles, cold-start share and time, queue time —
//! for the whole window and, with `by`, per minute or hour — and the
//! function's CPU, memory, OOM kills and restarts as its nodes last
//! reported them (`resources`, `super::usage`; not bound by `since`).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use containerpub_wire::executions::{Stats, StatsQuery, StatsRow};

use crate::auth::{Action, Caller};
use crate::error::{Error, Result};
use crate::routes::executions::{function_id, since_start};
use crate::state::AppState;
use crate::{histogram, reads};

/// A part of a bucket's figures (bucket NULL: of the whole window): of the
/// records whose total time fell in histogram bucket `b` (`hn` of them),
/// or, with `b` NULL, of whole chunks (their histograms come as rows of
/// their own). The parts of a bucket add up to its figures.
#[derive(sqlx::FromRow)]
struct Part {
    bucket: Option<DateTime<Utc>>,
    b: Option<i32>,
    calls: i64,
    s2: i64,
    s3: i64,
    s4: i64,
    s5: i64,
    s0: i64,
    rejected: i64,
    cold: i64,
    paused: i64,
    started: i64,
    cold_us: Option<f64>,
    queue_us: Option<f64>,
    queue_max_us: Option<i64>,
    hn: i64,
}

/// A bucket's figures, added up from its parts.
#[derive(Default)]
struct Sums {
    /// calls, 2xx, 3xx, 4xx, 5xx, no answer, refused, cold, paused, with a
    /// start kind.
    counts: [u64; 10],
    cold_us: f64,
    queue_us: f64,
    queue_max_us: Option<i64>,
    /// (histogram bucket, records), in bucket order.
    histogram: Vec<(u16, u64)>,
}

impl Sums {
    fn add(&mut self, p: &Part) {
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        let counts = [
            p.calls, p.s2, p.s3, p.s4, p.s5, p.s0, p.rejected, p.cold, p.paused, p.started,
        ];
        for (sum, v) in self.counts.iter_mut().zip(counts) {
            *sum += n(v);
        }
        self.cold_us += p.cold_us.unwrap_or(0.0);
        self.queue_us += p.queue_us.unwrap_or(0.0);
        self.queue_max_us = self.queue_max_us.max(p.queue_max_us);
        if let (Some(b), Ok(hn)) = (p.b.and_then(|b| u16::try_from(b).ok()), u64::try_from(p.hn))
            && hn > 0
        {
            self.histogram.push((b, hn));
        }
    }
}

/// The chunks of the window: of the function's deployments (`$3`), ending
/// at or after `$2`; a chunk's records are of one UTC day, so one that ends
/// after `$2` began less than 24 hours before it (a bound for partition
/// pruning; not `1 day`, which is 23 hours on a daylight-saving day of the
/// session's time zone). `{p}` is the prefix of the chunk's columns.
const CHUNKS: &str = "function = $1 AND {p}max_at >= $2 \
     AND {p}min_at > $2 - interval '24 hours' \
     AND deployment_id IN (SELECT id FROM deployments WHERE function_id = $3)";

/// The chunks whose stored figures answer for them (migration 0019): wholly
/// in the window and in one bucket (`{same}`). The records of the others
/// are split (the view `execution_outcomes`).
const WHOLE: &str = "({p}min_at >= $2 AND {figures} AND {same})";

/// The figures, for the whole window and, with `by`, per bucket
/// (`GROUPING SETS`), in parts by histogram bucket `b`, in one statement
/// (one snapshot; the split chunks split once): the stored figures of
/// whole chunks (`b` NULL) and their histograms (rows of `hn` records
/// only), and the records of the other chunks, each in its `b`. `{…}` are
/// replaced by fixed expressions (never input). The comment names it in
/// `pg_stat_activity`, whose `query` shows the first 1 KiB only.
const SQL: &str = "/* cpub stats */ SELECT {outer_bucket} AS bucket, b, \
       coalesce(sum(calls), 0)::bigint AS calls, coalesce(sum(s2), 0)::bigint AS s2, \
       coalesce(sum(s3), 0)::bigint AS s3, coalesce(sum(s4), 0)::bigint AS s4, \
       coalesce(sum(s5), 0)::bigint AS s5, coalesce(sum(s0), 0)::bigint AS s0, \
       coalesce(sum(rejected), 0)::bigint AS rejected, \
       coalesce(sum(cold), 0)::bigint AS cold, coalesce(sum(paused), 0)::bigint AS paused, \
       coalesce(sum(started), 0)::bigint AS started, \
       sum(cold_us)::float8 AS cold_us, sum(queue_us)::float8 AS queue_us, \
       max(queue_max) AS queue_max_us, coalesce(sum(hn), 0)::bigint AS hn \
     FROM ( \
       SELECT {bucket_min} AS bucket, NULL::integer AS b, n::bigint AS calls, n_2xx AS s2, \
              n_3xx AS s3, n_4xx AS s4, n_5xx AS s5, n_no_answer AS s0, \
              n_rejected AS rejected, n_cold AS cold, n_paused AS paused, \
              n_started AS started, cold_us_sum AS cold_us, queue_us_sum AS queue_us, \
              queue_us_max AS queue_max, 0::bigint AS hn \
       FROM execution_chunks WHERE {chunks} AND {whole} \
       UNION ALL \
       SELECT {bucket_min}, h.b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, NULL, NULL, NULL, h.n \
       FROM execution_chunks, \
            unnest(execution_chunk_field(total_buckets)::integer[], \
                   execution_chunk_field(total_counts)::bigint[]) AS h(b, n) \
       WHERE {chunks} AND {whole} \
       UNION ALL \
       SELECT {bucket_at}, execution_total_bucket(total_us), 1, \
              (status BETWEEN 200 AND 299)::int, \
              (status BETWEEN 300 AND 399)::int, (status BETWEEN 400 AND 499)::int, \
              (status BETWEEN 500 AND 599)::int, (status < 200 OR status > 599)::int, \
              (rejection IS NOT NULL)::int, (start_kind = 'cold')::int, \
              (start_kind = 'paused')::int, (start_kind IS NOT NULL)::int, \
              CASE WHEN start_kind = 'cold' THEN start_us END::float8, \
              CASE WHEN start_kind IS NOT NULL THEN queue_us END::float8, queue_us, 1 \
       FROM execution_outcomes WHERE {outcomes} AND at >= $2 AND NOT {whole_outcomes} \
     ) x GROUP BY GROUPING SETS ({sets}) ORDER BY 1 NULLS FIRST, 2 NULLS FIRST";

/// `SQL` with its `{…}` filled in for buckets of `unit` (`minute`, `hour`;
/// `None`: the whole window only).
fn statement(unit: Option<&str>) -> String {
    let trunc = |column: &str| match unit {
        Some(unit) => format!("date_trunc('{unit}', {column})"),
        None => "NULL::timestamptz".to_owned(),
    };
    let whole = |p: &str, figures: &str| {
        let same = match unit {
            Some(_) => format!(
                "{} = {}",
                trunc(&format!("{p}min_at")),
                trunc(&format!("{p}max_at"))
            ),
            None => "true".to_owned(),
        };
        WHOLE
            .replace("{p}", p)
            .replace("{figures}", figures)
            .replace("{same}", &same)
    };
    // Without buckets, the whole window is the only grouping set (by `b`),
    // and its bucket NULL.
    let (outer_bucket, sets) = match unit {
        Some(_) => ("bucket", "(b), (bucket, b)"),
        None => ("NULL::timestamptz", "(b)"),
    };
    SQL.replace("{chunks}", &CHUNKS.replace("{p}", ""))
        .replace("{outcomes}", &CHUNKS.replace("{p}", "chunk_"))
        .replace("{whole}", &whole("", "n_2xx IS NOT NULL"))
        .replace("{whole_outcomes}", &whole("chunk_", "chunk_figures"))
        .replace("{bucket_min}", &trunc("min_at"))
        .replace("{bucket_at}", &trunc("at"))
        .replace("{outer_bucket}", outer_bucket)
        .replace("{sets}", sets)
}

fn ms(us: Option<f64>) -> Option<f64> {
    us.map(|v| (v / 1000.0 * 1000.0).round() / 1000.0)
}

fn to_row(from: DateTime<Utc>, sums: &Sums) -> StatsRow {
    let [calls, s2, s3, s4, s5, s0, rejected, cold, paused, started] = sums.counts;
    let mean = |sum: f64, n: u64| (n > 0).then(|| sum / n as f64);
    StatsRow {
        from,
        calls,
        status_2xx: s2,
        status_3xx: s3,
        status_4xx: s4,
        status_5xx: s5,
        no_answer: s0,
        rejected,
        p50_ms: ms(histogram::quantile(&sums.histogram, 0.5)),
        p95_ms: ms(histogram::quantile(&sums.histogram, 0.95)),
        p99_ms: ms(histogram::quantile(&sums.histogram, 0.99)),
        cold_starts: cold,
        paused_starts: paused,
        cold_start_share: if calls == 0 {
            0.0
        } else {
            cold as f64 / calls as f64
        },
        cold_start_ms: ms(mean(sums.cold_us, cold)),
        queue_mean_ms: ms(mean(sums.queue_us, started)),
        queue_max_ms: ms(sums.queue_max_us.map(|v| v as f64)),
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
    let unit = match q.by.as_deref() {
        None => None,
        Some(unit @ ("minute" | "hour")) => Some(unit),
        Some(other) => {
            return Err(Error::bad_request(
                "by",
                format!("must be minute or hour, got {other:?}"),
            ));
        }
    };
    let sql = statement(unit);
    // The permit here (a caller who hangs up while queued takes none), the
    // read in a task of its own (one who hangs up later does not stop it).
    let mut read = state.reads.begin(&state.db).await?;
    let function = name.clone();
    let parts: Vec<Part> = reads::detached(async move {
        sqlx::query_as(&sql)
            .bind(&function)
            .bind(since)
            .bind(id)
            .fetch_all(read.conn())
            .await
            .map_err(|e| read.explain(e, Some("since")))
    })
    .await?;
    // Ordered by bucket (the whole window's first), then `b`: the
    // histograms come in bucket order.
    let mut sums: BTreeMap<Option<DateTime<Utc>>, Sums> = BTreeMap::new();
    sums.entry(None).or_default();
    for part in &parts {
        sums.entry(part.bucket).or_default().add(part);
    }
    let total = to_row(since, &sums[&None]);
    let rows = sums
        .iter()
        .filter_map(|(bucket, s)| bucket.map(|from| to_row(from, s)))
        .collect();
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
