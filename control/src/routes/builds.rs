//! Asynchronous builds (issue 13): a detached deploy
//! (`POST …/deployments?detach=true`: 202 + the `building` deployment once
//! the bundle is accepted and its row exists), `GET
//! /api/v1/functions/{name}/builds` (the function's builds, newest first,
//! without logs), `GET /api/v1/builds/{id}` (one build: its deployment) and
//! `GET /api/v1/builds/{id}/log[?follow=true]` (its output; with `follow`,
//! streamed as it happens until the build ends). A build's id is its
//! deployment's id. The build runs in its own task: neither the deploy
//! request nor any follower can stop it. A follower's token is checked
//! again every 5 s while it follows, and before a build finished elsewhere
//! is sent: one revoked meanwhile ends the stream with a line saying why.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use containerpub_wire::api::DeploymentInfo;

use crate::auth::{self, Action, Caller};
use crate::builds::{LIVE_CAP, LiveBuild};
use crate::db;
use crate::deploy::{self, Deployed, Upload};
use crate::error::{Error, Result};
use crate::routes::json;
use crate::state::AppState;

/// How often a follower of a build running elsewhere (another replica, or
/// a control plane that restarted) looks at its row.
const POLL: Duration = Duration::from_millis(500);
/// Most bytes sent per piece of a followed log.
const PIECE: usize = 64 * 1024;
/// How often a follower's token is checked again while it follows.
const RECHECK: Duration = Duration::from_secs(5);

/// `detach=true|false` (absent: false); anything else is a 400 naming it.
pub(crate) fn detach_query(query: Option<&str>) -> Result<bool> {
    flag(query, "detach")
}

fn flag(query: Option<&str>, name: &str) -> Result<bool> {
    let mut value = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "true")) {
            (key, v) if key == name => {
                value = match v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(Error::bad_request(
                            name,
                            format!("must be true or false, got {v:?}"),
                        ));
                    }
                }
            }
            (key, _) => {
                return Err(Error::bad_request(
                    key,
                    format!("unknown query parameter (expected `{name}`)"),
                ));
            }
        }
    }
    Ok(value)
}

/// Runs the deploy in its own task and answers 202 with the `building`
/// deployment as soon as its row exists; a bundle refused before that gets
/// its error as a synchronous deploy would.
pub(crate) async fn start_detached(
    state: AppState,
    caller: Caller,
    name: String,
    upload: Upload,
) -> Result<Response> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let db = state.db.clone();
    let mut task = tokio::spawn(deploy::deploy(state, caller, name, upload, Some(tx)));
    tokio::select! {
        started = rx => match started {
            Ok(new) => {
                let info = db::get_deployment(&db, new.deployment_id).await?;
                Ok(json(StatusCode::ACCEPTED, info))
            }
            // The task ended before the build started: answer its result.
            Err(_) => finished(task.await),
        },
        done = &mut task => finished(done),
    }
}

fn finished(done: Result<Result<Deployed>, tokio::task::JoinError>) -> Result<Response> {
    let deployed = done.map_err(|e| anyhow::anyhow!("deploy task: {e}"))??;
    Ok(match deployed {
        Deployed::Built(info) => json(StatusCode::CREATED, info),
        Deployed::Failed(info) => json(StatusCode::UNPROCESSABLE_ENTITY, info),
    })
}

/// The function's builds (uploads, not rollbacks or config changes),
/// newest first, without their logs.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<DeploymentInfo>>> {
    caller
        .require_function(&state.db, Action::ReadFunctions, &name)
        .await?;
    let builds: Vec<i64> = sqlx::query_scalar(
        "SELECT d.id FROM deployments d JOIN functions f ON f.id = d.function_id \
         WHERE f.name = $1 AND d.kind = 'build'",
    )
    .bind(&name)
    .fetch_all(&state.db)
    .await?;
    let mut out: Vec<DeploymentInfo> = db::list_deployments(&state.db, &name)
        .await?
        .into_iter()
        .filter(|d| builds.contains(&d.id))
        .collect();
    for d in &mut out {
        d.build_log.clear();
    }
    Ok(Json(out))
}

/// The status and log of build `id` as stored.
async fn row(state: &AppState, id: i64) -> Result<(String, String)> {
    sqlx::query_as("SELECT status, build_log FROM deployments WHERE id = $1 AND kind = 'build'")
        .bind(id)
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no build with id {id}")))
}

fn check_id(id: &str) -> Result<i64> {
    id.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        Error::bad_request(
            "id",
            format!("must be a build id (a positive number), got {id:?}"),
        )
    })
}

/// One build: its deployment, with the stored log.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    caller.require(Action::ReadFunctions, None)?;
    let id = check_id(&id)?;
    row(&state, id).await?;
    Ok(json(
        StatusCode::OK,
        db::get_deployment(&state.db, id).await?,
    ))
}

/// The build's output as text. Live (steps and Podman's output) while the
/// build runs in this process, else the stored log; `follow=true` streams
/// until the build ends.
pub async fn log(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    caller.require(Action::ReadFunctions, None)?;
    let id = check_id(&id)?;
    let follow = flag(query.as_deref(), "follow")?;
    let (status, stored) = row(&state, id).await?;
    let text = |body: Body| {
        (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response()
    };
    if let Some(live) = state.builds.get(id) {
        if !follow {
            let chunk = live.read(0, LIVE_CAP);
            return Ok(text(Body::from(with_skip(chunk.skipped, chunk.bytes))));
        }
        return Ok(text(Body::from_stream(follow_live(state, headers, live))));
    }
    if status == "building" && follow {
        return Ok(text(Body::from_stream(follow_row(state, headers, id))));
    }
    Ok(text(Body::from(stored)))
}

fn with_skip(skipped: u64, bytes: Vec<u8>) -> Vec<u8> {
    if skipped == 0 {
        return bytes;
    }
    let mut out = format!("[… {skipped} bytes of build output not kept …]\n").into_bytes();
    out.extend(bytes);
    out
}

/// Whether the token of a follower (its request's `headers`) still may
/// read builds: a follow lasts as long as the build (up to the build
/// timeout), so a token revoked, expired or demoted meanwhile ends it, with
/// a last line saying why, instead of reading on.
async fn still_allowed(state: &AppState, headers: &HeaderMap) -> Option<Bytes> {
    match auth::recheck(&state.db, headers).await {
        Ok(caller) if caller.require(Action::ReadFunctions, None).is_ok() => None,
        Ok(_) => Some(Bytes::from_static(
            b"\n[follow ended: this token may no longer read builds]\n",
        )),
        Err(e) => Some(Bytes::from(format!("\n[follow ended: {e}]\n"))),
    }
}

/// Where a follower of a live build stands: the next offset to send, and
/// when its token was last checked (`None`: the stream has ended).
type Following = Option<(u64, Instant)>;

/// The live log from the start, piece by piece as it is written, until the
/// build ends (or the control plane shuts down, or the follower's token
/// stops being valid: checked every `RECHECK` of following).
fn follow_live(
    state: AppState,
    headers: HeaderMap,
    live: Arc<LiveBuild>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    let start: Following = Some((0, Instant::now()));
    futures_util::stream::unfold(start, move |following| {
        let (live, state, headers) = (Arc::clone(&live), state.clone(), headers.clone());
        async move {
            let (offset, mut checked) = following?;
            loop {
                if checked.elapsed() >= RECHECK {
                    if let Some(ended) = still_allowed(&state, &headers).await {
                        return Some((Ok(ended), None));
                    }
                    checked = Instant::now();
                }
                let chunk = live.read(offset, PIECE);
                if !chunk.bytes.is_empty() || chunk.skipped > 0 {
                    let next = (!chunk.done).then_some((chunk.next, checked));
                    let bytes = Bytes::from(with_skip(chunk.skipped, chunk.bytes));
                    return Some((Ok(bytes), next));
                }
                if chunk.done {
                    return None;
                }
                tokio::select! {
                    () = live.wait_past(offset) => {}
                    () = tokio::time::sleep(RECHECK) => {}
                    () = state.shutdown.cancelled() => return None,
                }
            }
        }
    })
}

/// A build running elsewhere: waits for its row to leave `building`, then
/// sends the stored log if the follower's token still may read it.
fn follow_row(
    state: AppState,
    headers: HeaderMap,
    id: i64,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    futures_util::stream::unfold(true, move |first| {
        let (state, headers) = (state.clone(), headers.clone());
        async move {
            if !first {
                return None;
            }
            loop {
                tokio::select! {
                    () = tokio::time::sleep(POLL) => {}
                    () = state.shutdown.cancelled() => return None,
                }
                match row(&state, id).await {
                    Ok((status, log)) if status != "building" => {
                        // Read first, checked after: a revocation that
                        // committed before the read is seen.
                        let log = still_allowed(&state, &headers)
                            .await
                            .unwrap_or_else(|| Bytes::from(log));
                        return Some((Ok(log), false));
                    }
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
        }
    })
}
