//! `GET /api/v1/routes?since=N&wait_s=S&node=NAME`: the route table for
//! proxies, as a long poll on the route revision. The query is
//! `containerpub_wire::api::WatchQuery`, the struct the proxy sends.
//!
//! The table holds every function's secrets, opened. Node credentials and
//! admin tokens that never expire may follow it; a user's token that
//! expires (a login's, or one created with `--expires`) may not (403): a
//! leaked admin login would otherwise read every secret, and a proxy is
//! never set up with a token that stops working weeks later.

use std::error::Error as _;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use containerpub_wire::api::{RouteTable, WatchQuery};

use crate::auth::{self, Action, Caller};
use crate::db;
use crate::error::{Error, Result};
use crate::state::AppState;

/// A query that is not a [`WatchQuery`] as a 400 naming the parameter at
/// fault (axum's `Query` reports it through `serde_path_to_error`) with the
/// wire type's message.
pub fn query_error(rejection: &QueryRejection) -> Error {
    type PathError = serde_path_to_error::Error<serde::de::value::Error>;
    let mut source = rejection.source();
    while let Some(error) = source {
        if let Some(e) = error.downcast_ref::<PathError>() {
            let field = e.path().to_string();
            let field = if field == "." {
                "query".to_owned()
            } else {
                field
            };
            return Error::bad_request(field, e.inner().to_string());
        }
        source = error.source();
    }
    Error::bad_request("query", rejection.body_text())
}

/// Answers at once when the revision is above `since` (or `since` is
/// absent); otherwise waits for a change, `wait_s` (at most 60 s), or
/// shutdown, then answers with the current table either way.
pub async fn routes(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    query: std::result::Result<Query<WatchQuery>, QueryRejection>,
) -> Result<Json<RouteTable>> {
    caller.require(Action::WatchRoutes, None)?;
    if caller.user().is_ok()
        && let (Some(expires_at), _) = auth::token_expiry(&state.db, caller.token_id).await?
    {
        return Err(Error::Forbidden(format!(
            "a token that expires ({}) cannot watch routes: the route table holds every \
             function's secrets; a proxy uses a node credential (`cpub node-token create`)",
            expires_at.format("%Y-%m-%d %H:%M:%S UTC")
        )));
    }
    let Query(query) = query.map_err(|e| query_error(&e))?;
    caller.require_node_name(query.node.as_ref().map(|n| n.as_str()))?;
    if let (Some(since), Some(node)) = (query.since, &query.node) {
        state.watchers.saw(node.as_str(), since);
    }
    if let Some(since) = query.since {
        let mut revision = state.revision.clone();
        tokio::select! {
            // Err: the follower stopped (shutdown); answer with what is there.
            _ = revision.wait_for(|r| *r > since) => {}
            () = tokio::time::sleep(query.wait()) => {}
            () = state.shutdown.cancelled() => {}
        }
    }
    let table = db::route_table(&state.db, &state.vault).await?;
    if query.since.is_some() {
        // The table holds every function's secrets: a credential revoked
        // (or a user removed, or demoted) while this poll waited gets a
        // 401, not the table a rotation of those secrets made. Checked
        // after the table is read, so a revocation that committed before
        // the read is seen.
        let now = auth::recheck(&state.db, &headers).await?;
        now.require(Action::WatchRoutes, None)?;
        now.require_node_name(query.node.as_ref().map(|n| n.as_str()))?;
    }
    Ok(Json(table))
}

#[cfg(test)]
mod tests {
    use axum::http::Uri;

    use super::*;

    /// What the handler answers for `query`, without a database.
    fn parse(query: &str) -> Result<WatchQuery> {
        let uri: Uri = format!("/api/v1/routes?{query}").parse().unwrap();
        Query::try_from_uri(&uri)
            .map(|Query(q)| q)
            .map_err(|e| query_error(&e))
    }

    fn field_and_message(err: Error) -> (String, String) {
        match err {
            Error::BadRequest {
                field: Some(field),
                message,
            } => (field, message),
            other => panic!("not a 400 naming a field: {other:?}"),
        }
    }

    #[test]
    fn the_proxy_s_query_parses_back() {
        let sent = WatchQuery {
            since: Some(4),
            wait_s: 600,
            node: Some("edge-1".to_owned().try_into().unwrap()),
        };
        let text = serde_urlencoded::to_string(&sent).unwrap();
        let got = parse(&text).unwrap();
        assert_eq!(got, sent);
        assert_eq!(got.wait().as_secs(), 60, "clamped");
        assert_eq!(parse("").unwrap(), WatchQuery::default());
    }

    #[test]
    fn bad_queries_name_the_parameter() {
        for (query, field, message) in [
            ("since=x", "since", "must be an integer revision, got \"x\""),
            ("wait_s=-1", "wait_s", "whole number of seconds"),
            ("node=a%20b", "node", "1 to 63"),
            ("node=", "node", "1 to 63"),
            ("since=1&since=2", "query", "duplicate field `since`"),
            ("bogus=1", "bogus", "unknown field `bogus`"),
        ] {
            let (f, m) = field_and_message(parse(query).unwrap_err());
            assert_eq!(f, field, "{query}: {m}");
            assert!(m.contains(message), "{query}: {m}");
        }
    }
}
