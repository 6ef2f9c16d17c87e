//! `GET /api/v1/status` (the platform at a glance, for `cpub status`): the
//! route revision, the proxies following the routes and the revision each
//! serves, every function with its instances by state (as the proxies last
//! reported them) and its calls of the last 5 minutes, and the start
//! failures of the last hour: the crashes the proxies reported
//! (`function_crashes`) and, from the node reports, each function's last
//! failed start of another kind (`not_ready`, `runtime`, `capacity`) with
//! its count, newest first, at most [`MAX_START_FAILURES`].
//! `POST /api/v1/nodes/{node}/status` is how a proxy reports its
//! instances and failed starts (every few seconds; kept in memory: a
//! control plane that restarts knows them again within one report, since
//! a node's failures count from its proxy's start).
//!
//! Bounded: one report per node heard from in the last 10 minutes, and of
//! its failed starts only the [`MAX_START_FAILURES`] newest of the last
//! hour (an older one could never be shown: the node's newer ones come
//! first), messages cut to `MAX_MESSAGE_BYTES` and made one line.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use containerpub_wire::executions::{
    FunctionStatus, MAX_REPORTED_INSTANCES, NodeReport, PlatformStatus, ProxyStatus, StartFailure,
};
use containerpub_wire::start_failures::{self as failures, FunctionStartFailures};

use crate::auth::{Action, Caller};
use crate::error::{Error, Result};
use crate::routes::executions::STATUS_ERROR_SQL;
use crate::state::AppState;

/// A node report older than this is not shown.
const REPORT_FRESH: Duration = Duration::from_secs(60);
/// Largest node report body.
const MAX_REPORT_BYTES: usize = 16 * 1024 * 1024;
/// A node report is forgotten after this long.
const REPORT_FORGET: Duration = Duration::from_secs(600);
/// Most start failures `GET /status` answers (crashes and others).
pub const MAX_START_FAILURES: usize = 50;
/// Start failures older than this are not shown.
const FAILURES_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// A node's latest report, and when it came.
struct NodeEntry {
    at: Instant,
    /// Its instances and figures (`start_failures` moved to `failures`).
    report: NodeReport,
    /// Its newest failed starts other than crashes, ready to show.
    failures: Vec<StartFailure>,
}

type Reports = Mutex<HashMap<String, NodeEntry>>;

fn reports() -> &'static Reports {
    static R: OnceLock<Reports> = OnceLock::new();
    R.get_or_init(Mutex::default)
}

/// Checks a node report's lists and fields (400 or 413 naming the field).
fn check_report(report: &NodeReport) -> Result<()> {
    if report.instances.len() > MAX_REPORTED_INSTANCES {
        return Err(Error::too_large(
            "instances",
            format!("at most {MAX_REPORTED_INSTANCES} instances"),
        ));
    }
    for (i, inst) in report.instances.iter().enumerate() {
        containerpub_wire::validate_function_name(&inst.function)
            .map_err(|m| Error::bad_request(format!("instances[{i}].function"), m))?;
        if !matches!(
            inst.state.as_str(),
            "starting" | "ready" | "paused" | "resuming" | "gone"
        ) {
            return Err(Error::bad_request(
                format!("instances[{i}].state"),
                format!(
                    "unknown state {:?}",
                    inst.state.chars().take(32).collect::<String>()
                ),
            ));
        }
        if inst.id.is_empty()
            || inst.id.len() > 64
            || !inst.id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(Error::bad_request(
                format!("instances[{i}].id"),
                "must be 1 to 64 hex digits",
            ));
        }
    }
    super::usage::validate(&report.functions)?;
    if report.start_failures.len() > failures::MAX_FUNCTIONS {
        return Err(Error::too_large(
            "start_failures",
            format!("at most {} functions", failures::MAX_FUNCTIONS),
        ));
    }
    failures::validate(&report.start_failures).map_err(|(f, m)| Error::bad_request(f, m))?;
    Ok(())
}

/// `POST /api/v1/nodes/{node}/status`.
pub async fn report(caller: Caller, Path(node): Path<String>, body: Bytes) -> Result<StatusCode> {
    caller.require(Action::ReportExecutions, None)?;
    containerpub_wire::validate_node_name(&node).map_err(|m| Error::bad_request("node", m))?;
    caller.require_node_name(Some(&node))?;
    if body.len() > MAX_REPORT_BYTES {
        return Err(Error::too_large(
            "body",
            format!("a node report is at most {MAX_REPORT_BYTES} bytes"),
        ));
    }
    let mut report: NodeReport = serde_json::from_slice(&body)
        .map_err(|e| Error::bad_request("body", format!("not a node report: {e}")))?;
    check_report(&report)?;
    super::usage::record(&node, report.keep_warm_window_s, &report.functions);
    let failures = newest_failures(
        &node,
        std::mem::take(&mut report.start_failures),
        Utc::now(),
    );
    let mut all = reports().lock().expect("reports lock");
    all.retain(|_, e| e.at.elapsed() < REPORT_FORGET);
    all.insert(
        node,
        NodeEntry {
            at: Instant::now(),
            report,
            failures,
        },
    );
    Ok(StatusCode::NO_CONTENT)
}

/// The [`MAX_START_FAILURES`] newest of a node's failed starts (checked by
/// `failures::validate`) that happened within the hour before `now`, as
/// status rows, newest first.
fn newest_failures(
    node: &str,
    reported: Vec<FunctionStartFailures>,
    now: DateTime<Utc>,
) -> Vec<StartFailure> {
    let since = now - FAILURES_WINDOW;
    let mut rows: Vec<(DateTime<Utc>, FunctionStartFailures)> = reported
        .into_iter()
        .filter_map(|f| {
            let ago = chrono::TimeDelta::try_milliseconds(i64::try_from(f.last.age_ms).ok()?)?;
            let at = now.checked_sub_signed(ago).filter(|at| *at >= since)?;
            Some((at, f))
        })
        .collect();
    // Newest first; the order of equal times fixed.
    let order = |a: &(DateTime<Utc>, FunctionStartFailures),
                 b: &(DateTime<Utc>, FunctionStartFailures)| {
        b.0.cmp(&a.0).then_with(|| a.1.function.cmp(&b.1.function))
    };
    if rows.len() > MAX_START_FAILURES {
        rows.select_nth_unstable_by(MAX_START_FAILURES - 1, order);
        rows.truncate(MAX_START_FAILURES);
    }
    rows.sort_unstable_by(order);
    rows.into_iter()
        .map(|(at, f)| {
            let counts: BTreeMap<String, i64> = f
                .counts
                .into_iter()
                .map(|(r, n)| (r, i64::try_from(n).unwrap_or(i64::MAX)))
                .collect();
            StartFailure {
                function: f.function,
                node: node.to_owned(),
                count: counts.get(&f.last.reason).copied().unwrap_or(0).max(1),
                counts,
                message: Some(failures::clean_message(&f.last.message)),
                reason: f.last.reason,
                exit_code: None,
                during_start: true,
                crashes: 0,
                at,
            }
        })
        .collect()
}

/// The crashes and the other failed starts in one list: those of
/// functions in `known` since `since`, newest first, at most
/// [`MAX_START_FAILURES`].
fn merge_failures(
    crashes: Vec<StartFailure>,
    others: impl IntoIterator<Item = StartFailure>,
    known: &HashSet<&str>,
    since: DateTime<Utc>,
) -> Vec<StartFailure> {
    let mut all: Vec<StartFailure> = crashes
        .into_iter()
        .chain(others)
        .filter(|f| f.at >= since && known.contains(f.function.as_str()))
        .collect();
    all.sort_by(|a, b| {
        b.at.cmp(&a.at)
            .then_with(|| a.function.cmp(&b.function))
            .then_with(|| a.node.cmp(&b.node))
            .then_with(|| a.reason.cmp(&b.reason))
    });
    all.truncate(MAX_START_FAILURES);
    all
}

#[derive(sqlx::FromRow)]
struct FunctionRow {
    name: String,
    active_version: Option<i32>,
    calls: i64,
    errors: i64,
}

#[derive(sqlx::FromRow)]
struct CrashRow {
    function: String,
    node: String,
    exit_code: Option<i32>,
    during_start: bool,
    crashes: i64,
    at: DateTime<Utc>,
}

/// Each function, its active version, and its calls and errors (see
/// `executions::is_status_error`) of the last five minutes. A chunk of
/// records wholly in the window counts by its `n` and `errors` (migration
/// 0016); only a chunk that straddles the window's start, or one stored
/// without `errors` (before that migration), is split into its records, so
/// the cost follows the number of chunks in the window (found by the index
/// on `max_at`), not of calls. A chunk's records are of one UTC day, so one
/// that ends in the window began less than 24 hours before its start: that
/// bound keeps older days' partitions from being scanned (pruned when the
/// query starts). A record counts for its function only if its deployment is of the
/// function of that name now (not of a deleted one of the same name).
static FUNCTIONS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT f.name, d.version AS active_version, \
                coalesce(e.calls, 0) AS calls, coalesce(e.errors, 0) AS errors \
         FROM functions f \
         LEFT JOIN deployments d ON d.id = f.active_deployment_id \
         LEFT JOIN ( \
             SELECT x.function, sum(x.calls)::bigint AS calls, sum(x.errors)::bigint AS errors \
             FROM ( \
                 SELECT c.function, c.deployment_id, c.n AS calls, c.errors \
                 FROM execution_chunks c \
                 WHERE c.max_at >= {start} AND c.min_at >= {start} \
                   AND c.errors IS NOT NULL \
                 UNION ALL \
                 SELECT o.function, o.deployment_id, count(*), \
                        count(*) FILTER (WHERE {error}) \
                 FROM execution_outcomes o \
                 WHERE o.chunk_max_at >= {start} \
                   AND o.chunk_min_at > {start} - interval '24 hours' \
                   AND (o.chunk_min_at < {start} OR o.chunk_errors IS NULL) \
                   AND o.at >= {start} \
                 GROUP BY o.function, o.deployment_id \
             ) x JOIN deployments xd ON xd.id = x.deployment_id \
             JOIN functions xf ON xf.id = xd.function_id AND xf.name = x.function \
             GROUP BY x.function) e ON e.function = f.name \
         ORDER BY f.name",
        error = STATUS_ERROR_SQL,
        // One time for the whole statement: `now()` is the transaction's.
        start = "(now() - interval '5 minutes')",
    )
});

/// `GET /api/v1/status`.
pub async fn status(State(state): State<AppState>, caller: Caller) -> Result<Json<PlatformStatus>> {
    caller.require(Action::ReadFunctions, None)?;
    let route_revision = *state.revision.borrow();
    let functions: Vec<FunctionRow> = sqlx::query_as(&FUNCTIONS_SQL).fetch_all(&state.db).await?;
    let crashes: Vec<CrashRow> = sqlx::query_as(
        "SELECT f.name AS function, c.node, c.exit_code, c.during_start, c.crashes, c.at \
         FROM function_crashes c JOIN functions f ON f.id = c.function_id \
         WHERE c.at >= now() - interval '1 hour' ORDER BY c.at DESC LIMIT 50",
    )
    .fetch_all(&state.db)
    .await?;

    let mut by_function: HashMap<String, BTreeMap<String, u64>> = HashMap::new();
    let mut per_node: HashMap<String, u64> = HashMap::new();
    let mut others: Vec<StartFailure> = Vec::new();
    {
        let all = reports().lock().expect("reports lock");
        for (node, entry) in all.iter() {
            if entry.at.elapsed() >= REPORT_FORGET {
                continue;
            }
            others.extend(entry.failures.iter().cloned());
            if entry.at.elapsed() >= REPORT_FRESH {
                continue;
            }
            let report = &entry.report;
            per_node.insert(node.clone(), report.instances.len() as u64);
            for inst in &report.instances {
                *by_function
                    .entry(inst.function.clone())
                    .or_default()
                    .entry(inst.state.clone())
                    .or_default() += 1;
            }
        }
    }
    let proxies = state
        .watchers
        .list()
        .into_iter()
        .map(|(node, revision, ago)| ProxyStatus {
            instances: per_node.get(&node).copied(),
            node,
            revision,
            seen_s_ago: ago.as_secs(),
        })
        .collect();
    let crashes = crashes
        .into_iter()
        .map(|c| StartFailure {
            function: c.function,
            node: c.node,
            reason: failures::CRASH.to_owned(),
            message: None,
            count: c.crashes,
            counts: BTreeMap::new(),
            exit_code: c.exit_code,
            during_start: c.during_start,
            crashes: c.crashes,
            at: c.at,
        })
        .collect();
    let known: HashSet<&str> = functions.iter().map(|f| f.name.as_str()).collect();
    let start_failures = merge_failures(crashes, others, &known, Utc::now() - FAILURES_WINDOW);
    let functions = functions
        .into_iter()
        .map(|f| FunctionStatus {
            instances: by_function.remove(&f.name).unwrap_or_default(),
            name: f.name,
            active_version: f.active_version,
            calls_5m: u64::try_from(f.calls).unwrap_or(0),
            errors_5m: u64::try_from(f.errors).unwrap_or(0),
        })
        .collect();
    Ok(Json(PlatformStatus {
        route_revision,
        proxies,
        functions,
        start_failures,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerpub_wire::start_failures::LastStartFailure;

    fn now() -> DateTime<Utc> {
        "2026-06-01T12:00:00Z".parse().unwrap()
    }

    fn reported(function: &str, reason: &str, age_ms: u64) -> FunctionStartFailures {
        FunctionStartFailures {
            function: function.into(),
            counts: [(reason.to_owned(), 3), ("capacity".to_owned(), 1)].into(),
            last: LastStartFailure {
                reason: reason.into(),
                message: format!("{reason}\nsecond line"),
                age_ms,
            },
        }
    }

    fn crash(function: &str, node: &str, secs_ago: i64) -> StartFailure {
        StartFailure {
            function: function.into(),
            node: node.into(),
            reason: failures::CRASH.into(),
            message: None,
            count: 2,
            counts: BTreeMap::new(),
            exit_code: Some(3),
            during_start: true,
            crashes: 2,
            at: now() - chrono::TimeDelta::seconds(secs_ago),
        }
    }

    #[test]
    fn a_report_listing_a_function_twice_is_refused_naming_the_field() {
        let report = |start_failures| NodeReport {
            instances: Vec::new(),
            functions: Vec::new(),
            keep_warm_window_s: None,
            start_failures,
        };
        assert!(check_report(&report(vec![reported("a", "not_ready", 1)])).is_ok());
        let twice = report(vec![
            reported("a", "not_ready", 1),
            reported("b", "runtime", 1),
            reported("a", "capacity", 1),
        ]);
        match check_report(&twice) {
            Err(e @ Error::BadRequest { .. }) => {
                assert_eq!(e.status(), StatusCode::BAD_REQUEST);
                let Error::BadRequest { field, message } = e else {
                    unreachable!()
                };
                assert_eq!(field.as_deref(), Some("start_failures[2].function"));
                assert!(message.contains("listed twice"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_message_loses_its_bidi_and_zero_width_characters() {
        let mut f = reported("a", "runtime", 1);
        f.last.message = "image\u{202E}gnp.exe\u{200B}\u{2066}x\u{FEFF}".into();
        let rows = newest_failures("n1", vec![f], now());
        assert_eq!(rows[0].message.as_deref(), Some("image gnp.exe  x "));
    }

    #[test]
    fn a_nodes_failures_become_rows_dated_by_their_age() {
        let rows = newest_failures(
            "n1",
            vec![
                reported("old", "not_ready", 2 * 3600 * 1000),
                reported("slow", "not_ready", 5_000),
                reported("full", "capacity", 1_000),
                // Hostile ages: too far back for any clock, or the whole range.
                reported("far", "runtime", u64::MAX),
                reported("far", "runtime", i64::MAX as u64),
            ],
            now(),
        );
        let names: Vec<_> = rows.iter().map(|r| r.function.as_str()).collect();
        assert_eq!(names, ["full", "slow"], "newest first, old ones dropped");
        let slow = &rows[1];
        assert_eq!(slow.node, "n1");
        assert_eq!(slow.reason, "not_ready");
        assert_eq!(slow.count, 3);
        assert_eq!(slow.counts.get("capacity"), Some(&1));
        assert_eq!(slow.at, now() - chrono::TimeDelta::seconds(5));
        assert_eq!(slow.message.as_deref(), Some("not_ready second line"));
        assert_eq!((slow.exit_code, slow.crashes), (None, 0));
        assert!(slow.during_start);
        // `count` is the last reason's (at least the last one itself).
        let mut odd = reported("odd", "runtime", 0);
        odd.counts.clear();
        assert_eq!(newest_failures("n1", vec![odd], now())[0].count, 1);
    }

    #[test]
    fn a_node_keeps_only_its_newest_failures() {
        let many: Vec<_> = (0..(3 * MAX_START_FAILURES as u64))
            .map(|i| {
                let mut f = reported("f", "not_ready", i * 1000);
                f.last.message = "m".repeat(10_000);
                f
            })
            .collect();
        let rows = newest_failures("n1", many, now());
        assert_eq!(rows.len(), MAX_START_FAILURES);
        assert_eq!(rows[0].at, now());
        assert_eq!(
            rows[MAX_START_FAILURES - 1].at,
            now() - chrono::TimeDelta::seconds(MAX_START_FAILURES as i64 - 1)
        );
        assert!(rows.iter().all(|r| {
            r.message
                .as_ref()
                .is_some_and(|m| m.len() <= failures::MAX_MESSAGE_BYTES)
        }));
    }

    #[test]
    fn crashes_and_other_failures_merge_newest_first_within_bounds() {
        let others = newest_failures(
            "n2",
            vec![
                reported("slow", "not_ready", 10_000),
                reported("full", "capacity", 30_000),
                reported("gone", "runtime", 0),
            ],
            now(),
        );
        let known: HashSet<&str> = ["slow", "full", "boom"].into();
        let since = now() - FAILURES_WINDOW;
        let merged = merge_failures(
            vec![crash("boom", "n1", 20), crash("boom", "n3", 4000)],
            others,
            &known,
            since,
        );
        let seen: Vec<_> = merged
            .iter()
            .map(|f| (f.function.as_str(), f.node.as_str(), f.reason.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("slow", "n2", "not_ready"),
                ("boom", "n1", "crash"),
                ("full", "n2", "capacity"),
            ],
            "newest first; an unknown function and a crash over an hour old left out"
        );

        // Bounded, the newest kept whatever their kind.
        let crashes: Vec<_> = (0..MAX_START_FAILURES as i64)
            .map(|i| crash("boom", "n1", 100 + i))
            .collect();
        let others = newest_failures("n2", vec![reported("slow", "not_ready", 1)], now());
        let merged = merge_failures(crashes, others, &known, since);
        assert_eq!(merged.len(), MAX_START_FAILURES);
        assert_eq!(merged[0].reason, "not_ready");
        assert!(merged.windows(2).all(|w| w[0].at >= w[1].at));
    }
}
