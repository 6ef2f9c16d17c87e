//! `GET /api/v1/routes?since=N&wait_s=S`: the route table for proxies, as a
//! long poll on the route revision.

use std::time::Duration;

use axum::Json;
use axum::extract::{RawQuery, State};
use containerpub_wire::api::RouteTable;

use crate::db;
use crate::error::{Error, Result};
use crate::state::AppState;

/// Default and longest wait of a long poll.
pub const DEFAULT_WAIT_S: u64 = 25;
pub const MAX_WAIT_S: u64 = 60;

/// Query of a watch call.
#[derive(Debug, PartialEq, Eq)]
pub struct WatchQuery {
    /// Revision the caller has; absent → answer at once.
    pub since: Option<i64>,
    /// Seconds to wait for a newer revision (clamped to [`MAX_WAIT_S`]).
    pub wait_s: u64,
    /// The calling proxy's node name; with `since`, records what it serves.
    pub node: Option<String>,
}

pub fn parse_query(query: Option<&str>) -> Result<WatchQuery> {
    let mut out = WatchQuery {
        since: None,
        wait_s: DEFAULT_WAIT_S,
        node: None,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "since" => {
                out.since = Some(value.parse().map_err(|_| {
                    Error::bad_request(
                        "since",
                        format!("must be an integer revision, got {value:?}"),
                    )
                })?);
            }
            "wait_s" => {
                let wait: u64 = value.parse().map_err(|_| {
                    Error::bad_request(
                        "wait_s",
                        format!("must be a number of seconds, got {value:?}"),
                    )
                })?;
                out.wait_s = wait.min(MAX_WAIT_S);
            }
            "node" if !value.is_empty() && value.len() <= 253 => out.node = Some(value.to_owned()),
            "node" => {
                return Err(Error::bad_request("node", "must be 1 to 253 characters"));
            }
            other => {
                return Err(Error::bad_request(
                    other,
                    "unknown query parameter (use since, wait_s, node)",
                ));
            }
        }
    }
    Ok(out)
}

/// Answers at once when the revision is above `since` (or `since` is
/// absent); otherwise waits for a change, `wait_s`, or shutdown, then
/// answers with the current table either way.
pub async fn routes(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<RouteTable>> {
    let query = parse_query(query.as_deref())?;
    if let (Some(since), Some(node)) = (query.since, &query.node) {
        state.watchers.saw(node, since);
    }
    if let Some(since) = query.since {
        let mut revision = state.revision.clone();
        let wait = Duration::from_secs(query.wait_s);
        tokio::select! {
            // Err: the follower stopped (shutdown); answer with what is there.
            _ = revision.wait_for(|r| *r > since) => {}
            () = tokio::time::sleep(wait) => {}
            () = state.shutdown.cancelled() => {}
        }
    }
    Ok(Json(db::route_table(&state.db).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        assert_eq!(
            parse_query(None).unwrap(),
            WatchQuery {
                since: None,
                wait_s: 25,
                node: None
            }
        );
        assert_eq!(
            parse_query(Some("since=4&wait_s=600&node=edge-1")).unwrap(),
            WatchQuery {
                since: Some(4),
                wait_s: 60,
                node: Some("edge-1".into())
            }
        );
        let err = parse_query(Some("since=x")).unwrap_err();
        assert!(matches!(err, Error::BadRequest { field: Some(ref f), .. } if f == "since"));
        let err = parse_query(Some("wait_s=-1")).unwrap_err();
        assert!(matches!(err, Error::BadRequest { field: Some(ref f), .. } if f == "wait_s"));
    }
}
