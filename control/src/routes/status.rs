//! `GET /api/v1/status` (the platform at a glance, for `cpub status`): the
//! route revision, the proxies following the routes and the revision each
//! serves, every function with its instances by state (as the proxies last
//! reported them) and its calls of the last 5 minutes, and the start
//! failures reported in the last hour. `POST /api/v1/nodes/{node}/status`
//! is how a proxy reports its instances (every few seconds; kept in memory:
//! a control plane that restarts knows them again within one report).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use containerpub_wire::executions::{
    FunctionStatus, MAX_REPORTED_INSTANCES, NodeReport, PlatformStatus, ProxyStatus, StartFailure,
};

use crate::auth::{Action, Caller};
use crate::error::{Error, Result};
use crate::state::AppState;

/// A node report older than this is not shown.
const REPORT_FRESH: Duration = Duration::from_secs(60);
/// Largest node report body.
const MAX_REPORT_BYTES: usize = 16 * 1024 * 1024;

type Reports = Mutex<HashMap<String, (Instant, NodeReport)>>;

fn reports() -> &'static Reports {
    static R: OnceLock<Reports> = OnceLock::new();
    R.get_or_init(Mutex::default)
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
    let report: NodeReport = serde_json::from_slice(&body)
        .map_err(|e| Error::bad_request("body", format!("not a node report: {e}")))?;
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
    super::usage::record(&node, report.keep_warm_window_s, &report.functions);
    let mut all = reports().lock().expect("reports lock");
    all.retain(|_, (at, _)| at.elapsed() < REPORT_FRESH * 10);
    all.insert(node, (Instant::now(), report));
    Ok(StatusCode::NO_CONTENT)
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

/// `GET /api/v1/status`.
pub async fn status(State(state): State<AppState>, caller: Caller) -> Result<Json<PlatformStatus>> {
    caller.require(Action::ReadFunctions, None)?;
    let route_revision = *state.revision.borrow();
    let functions: Vec<FunctionRow> = sqlx::query_as(
        "SELECT f.name, d.version AS active_version, \
                coalesce(e.calls, 0) AS calls, coalesce(e.errors, 0) AS errors \
         FROM functions f \
         LEFT JOIN deployments d ON d.id = f.active_deployment_id \
         LEFT JOIN ( \
             SELECT x.function, count(*) AS calls, \
                    count(*) FILTER (WHERE x.status >= 500 OR x.status < 100) AS errors \
             FROM executions x JOIN deployments xd ON xd.id = x.deployment_id \
             JOIN functions xf ON xf.id = xd.function_id AND xf.name = x.function \
             WHERE x.chunk_max_at >= now() - interval '5 minutes' \
               AND x.at >= now() - interval '5 minutes' \
             GROUP BY x.function) e ON e.function = f.name \
         ORDER BY f.name",
    )
    .fetch_all(&state.db)
    .await?;
    let crashes: Vec<CrashRow> = sqlx::query_as(
        "SELECT f.name AS function, c.node, c.exit_code, c.during_start, c.crashes, c.at \
         FROM function_crashes c JOIN functions f ON f.id = c.function_id \
         WHERE c.at >= now() - interval '1 hour' ORDER BY c.at DESC LIMIT 50",
    )
    .fetch_all(&state.db)
    .await?;

    let mut by_function: HashMap<String, BTreeMap<String, u64>> = HashMap::new();
    let mut per_node: HashMap<String, u64> = HashMap::new();
    {
        let all = reports().lock().expect("reports lock");
        for (node, (at, report)) in all.iter() {
            if at.elapsed() >= REPORT_FRESH {
                continue;
            }
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
    let start_failures = crashes
        .into_iter()
        .map(|c| StartFailure {
            function: c.function,
            node: c.node,
            exit_code: c.exit_code,
            during_start: c.during_start,
            crashes: c.crashes,
            at: c.at,
        })
        .collect();
    Ok(Json(PlatformStatus {
        route_revision,
        proxies,
        functions,
        start_failures,
    }))
}
