//! Which proxies follow the route table and which revision each has, so a
//! deploy or delete answers only once every live proxy serves the change.
//!
//! A proxy names itself (`node`) on every route watch call; its `since` is
//! the revision it has applied. Proxies not heard from for `LIVE_FOR` are
//! not waited for.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// A proxy that has not polled for this long is taken for gone. Longer
/// than the longest long poll plus the proxy's retry back-off.
const LIVE_FOR: Duration = Duration::from_secs(90);

#[derive(Debug, Default)]
pub struct Watchers {
    seen: Mutex<HashMap<String, (i64, Instant)>>,
    changed: Notify,
}

impl Watchers {
    /// Records that `node` has applied `revision`.
    pub fn saw(&self, node: &str, revision: i64) {
        let mut seen = self.seen.lock().expect("watchers lock");
        seen.insert(node.to_owned(), (revision, Instant::now()));
        seen.retain(|_, (_, at)| at.elapsed() < LIVE_FOR);
        drop(seen);
        self.changed.notify_waiters();
    }

    /// Live proxies, each with the revision it serves and how long ago it
    /// was heard from, by node name.
    pub fn list(&self) -> Vec<(String, i64, Duration)> {
        let seen = self.seen.lock().expect("watchers lock");
        let mut list: Vec<_> = seen
            .iter()
            .filter(|(_, (_, at))| at.elapsed() < LIVE_FOR)
            .map(|(node, (rev, at))| (node.clone(), *rev, at.elapsed()))
            .collect();
        list.sort();
        list
    }

    /// Live proxies that have not applied `revision` yet.
    pub fn behind(&self, revision: i64) -> Vec<String> {
        let seen = self.seen.lock().expect("watchers lock");
        seen.iter()
            .filter(|(_, (rev, at))| *rev < revision && at.elapsed() < LIVE_FOR)
            .map(|(node, _)| node.clone())
            .collect()
    }

    /// Waits until every live proxy has applied `revision`, or `timeout`.
    /// Returns the proxies still behind (empty when all caught up).
    pub async fn wait_applied(&self, revision: i64, timeout: Duration) -> Vec<String> {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            let behind = self.behind(revision);
            if behind.is_empty() {
                return behind;
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                return self.behind(revision);
            }
        }
    }

    /// Waits (bounded by [`APPLY_TIMEOUT`]) until live proxies serve
    /// `revision`; a slow one is logged, not an error: the change is
    /// committed and it will catch up.
    pub async fn await_proxies(&self, revision: i64) {
        let behind = self.wait_applied(revision, APPLY_TIMEOUT).await;
        if !behind.is_empty() {
            tracing::warn!(
                revision,
                ?behind,
                "proxies have not applied the new routes yet"
            );
        }
    }
}

/// How long a deploy or delete waits for proxies to apply its routes.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn waits_for_every_live_proxy() {
        let w = Arc::new(Watchers::default());
        assert!(
            w.wait_applied(5, Duration::from_millis(10))
                .await
                .is_empty(),
            "no proxy: nothing to wait for"
        );
        w.saw("a", 4);
        w.saw("b", 5);
        assert_eq!(
            w.wait_applied(5, Duration::from_millis(20)).await,
            vec!["a".to_owned()]
        );
        let waiter = tokio::spawn({
            let w = Arc::clone(&w);
            async move { w.wait_applied(5, Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        w.saw("a", 5);
        assert!(waiter.await.unwrap().is_empty());
    }
}
