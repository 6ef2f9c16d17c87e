//! `POST /api/v1/functions/{name}/crashes` (a proxy reports the last crash
//! of a function's instance on its node) and `GET` (the last crash per
//! node, newest first, for `cpub describe`).
//!
//! Reports come from node credentials (for their own node only) and
//! admins; any user may read them. A report only names a deployment of the
//! function and is shown, never acted on.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use containerpub_wire::api::{CrashInfo, CrashReport, MAX_CRASH_OUTPUT_BYTES};

use crate::auth::{Action, Caller};
use crate::db;
use crate::error::{Error, Result};
use crate::routes::check_name;
use crate::state::AppState;

/// Most crashes one report may count (a proxy sends what piled up while
/// the control plane was away).
const MAX_COUNT: u32 = 1_000_000;

pub async fn report(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<StatusCode> {
    caller.require(Action::ReportCrash, None)?;
    check_name(&name)?;
    let report: CrashReport = serde_json::from_slice(&body)
        .map_err(|e| Error::bad_request("body", format!("not a crash report: {e}")))?;
    caller.require_node_name(Some(&report.node))?;
    containerpub_wire::validate_node_name(&report.node)
        .map_err(|m| Error::bad_request("node", m))?;
    if report.count == 0 || report.count > MAX_COUNT {
        return Err(Error::bad_request(
            "count",
            format!("must be 1 to {MAX_COUNT}, got {}", report.count),
        ));
    }
    let output = clean_output(&report.output);
    if db::get_function(&state.db, &name).await?.is_none() {
        return Err(Error::NotFound(format!("function {name:?} not found")));
    }
    let stored = sqlx::query(
        "INSERT INTO function_crashes \
             (function_id, node, deployment_id, exit_code, output, during_start, crashes) \
         SELECT f.id, $2, d.id, $4, $5, $6, $7 \
         FROM functions f JOIN deployments d ON d.function_id = f.id \
         WHERE f.name = $1 AND d.id = $3 \
         ON CONFLICT (function_id, node) DO UPDATE SET \
             deployment_id = EXCLUDED.deployment_id, exit_code = EXCLUDED.exit_code, \
             output = EXCLUDED.output, during_start = EXCLUDED.during_start, \
             crashes = function_crashes.crashes + EXCLUDED.crashes, at = now()",
    )
    .bind(&name)
    .bind(&report.node)
    .bind(report.deployment_id)
    .bind(report.exit_code)
    .bind(&output)
    .bind(report.during_start)
    .bind(i64::from(report.count))
    .execute(&state.db)
    .await?
    .rows_affected();
    if stored == 0 {
        return Err(Error::bad_request(
            "deployment_id",
            format!(
                "function {name:?} has no deployment {}",
                report.deployment_id
            ),
        ));
    }
    tracing::info!(function = %name, node = %report.node, code = ?report.exit_code, during_start = report.during_start, "crash reported");
    Ok(StatusCode::NO_CONTENT)
}

type CrashRow = (String, i32, Option<i32>, String, bool, i64, DateTime<Utc>);

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<CrashInfo>>> {
    caller.require(Action::ReadFunctions, None)?;
    check_name(&name)?;
    if db::get_function(&state.db, &name).await?.is_none() {
        return Err(Error::NotFound(format!("function {name:?} not found")));
    }
    let rows: Vec<CrashRow> = sqlx::query_as(
        "SELECT c.node, d.version, c.exit_code, c.output, c.during_start, c.crashes, c.at \
         FROM function_crashes c \
         JOIN functions f ON f.id = c.function_id \
         JOIN deployments d ON d.id = c.deployment_id \
         WHERE f.name = $1 ORDER BY c.at DESC, c.node",
    )
    .bind(&name)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(
                |(node, version, exit_code, output, during_start, crashes, at)| CrashInfo {
                    node,
                    version,
                    exit_code,
                    output,
                    during_start,
                    crashes,
                    at,
                },
            )
            .collect(),
    ))
}

/// The last [`MAX_CRASH_OUTPUT_BYTES`] of a function's output, with control
/// characters other than newline and tab replaced (PostgreSQL text holds no
/// NUL, and a terminal showing `cpub describe` must not run escapes).
fn clean_output(output: &str) -> String {
    let mut start = output.len().saturating_sub(MAX_CRASH_OUTPUT_BYTES);
    while !output.is_char_boundary(start) {
        start += 1;
    }
    output[start..]
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn output_is_bounded_and_has_no_control_characters() {
        assert_eq!(super::clean_output("boom\n\tx"), "boom\n\tx");
        assert_eq!(
            super::clean_output("a\0b\x1b[31m"),
            "a\u{fffd}b\u{fffd}[31m"
        );
        let long = "é".repeat(5000);
        let out = super::clean_output(&long);
        assert!(out.len() <= super::MAX_CRASH_OUTPUT_BYTES && out.len() > 4000);
    }
}
