//! The proxy's route table: an atomically swapped map from function name to
//! route (with the function's metric handles and pool handle), the local snapshot that keeps
//! it across restarts, and the watcher that follows the control plane's
//! `GET /api/v1/routes` long poll.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use containerpub_pool::{FunctionHandle, Pool};
use containerpub_util::fs::{Modes, write_atomic};
use containerpub_wire::api::{self, NodeName, Route, RouteTable, WatchQuery};
use rustc_hash::FxHashMap;
use tracing::{debug, info, warn};

use crate::metrics::{self, FunctionMetrics};

/// How long the control plane may hold one long poll.
pub const WATCH_WAIT_S: u64 = api::DEFAULT_WAIT_S;
/// First retry delay after a failed poll.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Shortest time between two polls that brought no change.
const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// A routed function: its route, its metric handles and its pool handle,
/// resolved once per function (kept across table updates) rather than once
/// per call.
#[derive(Debug)]
pub struct Entry {
    pub route: Route,
    pub metrics: FunctionMetrics,
    /// The function's way into the pool: set by [`Routes::install`] before
    /// the entry is published (by [`Routes::resolve_handles`] at start-up;
    /// else at the entry's first call).
    /// A lease through it touches only this function's pool state.
    pub pool_handle: OnceLock<FunctionHandle>,
}

impl Entry {
    /// The pool handle of this function (resolved from `pool` on first use).
    pub fn pool_handle(&self, pool: &Pool) -> &FunctionHandle {
        self.pool_handle.get_or_init(|| pool.handle(&self.route))
    }
}

/// One consistent view of the routes: readers get the map and its revision
/// from the same swap.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub revision: i64,
    /// By function name; an unkeyed hash (names come from the control
    /// plane, callers only look them up).
    pub routes: FxHashMap<String, Arc<Entry>>,
}

impl Snapshot {
    /// The view of `table`, reusing the metric and pool handles of `previous`
    /// (a pool handle outlives deploys of its function).
    fn from_table(table: &RouteTable, previous: Option<&Snapshot>) -> Self {
        let routes = table
            .routes
            .iter()
            .map(|route| {
                let before = previous.and_then(|p| p.routes.get(&route.function));
                let metrics = before.map_or_else(
                    || FunctionMetrics::new(&route.function),
                    |e| e.metrics.clone(),
                );
                let pool_handle = before
                    .and_then(|e| e.pool_handle.get().cloned())
                    .map_or_else(OnceLock::new, OnceLock::from);
                let entry = Entry {
                    route: route.clone(),
                    metrics,
                    pool_handle,
                };
                (route.function.clone(), Arc::new(entry))
            })
            .collect();
        Self {
            revision: table.revision,
            routes,
        }
    }
}

/// The live route table, read on every request without locks.
#[derive(Debug, Default)]
pub struct Routes {
    current: ArcSwap<Snapshot>,
}

impl Routes {
    /// A table holding `table`.
    pub fn new(table: &RouteTable) -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::from_table(table, None)),
        }
    }

    /// Route of the function `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Entry>> {
        self.current.load().routes.get(name).cloned()
    }

    /// The whole current view.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Current revision.
    pub fn revision(&self) -> i64 {
        self.current.load().revision
    }

    /// Resolves the pool handle of every routed function (after
    /// `Pool::sync` of the same table), so no call resolves one.
    pub fn resolve_handles(&self, pool: &Pool) {
        for entry in self.current.load().routes.values() {
            entry.pool_handle(pool);
        }
    }

    /// Replaces the table with `table`; the metric series of functions no
    /// longer routed are dropped. One writer at a time (the watcher).
    /// Entries of functions new to the table resolve their pool handle at
    /// their first call: [`Routes::install`] is what the watcher uses.
    pub fn replace(&self, table: &RouteTable) {
        self.swap(table, None);
    }

    /// Syncs `pool` with `table` (deploys switch, removed functions go),
    /// then publishes `table` with every entry's pool handle resolved, so
    /// that no call resolves one: a call never takes the pool's function
    /// map lock nor creates a function's instance set.
    pub fn install(&self, table: &RouteTable, pool: &Pool) {
        pool.sync(&table.routes);
        self.swap(table, Some(pool));
    }

    fn swap(&self, table: &RouteTable, pool: Option<&Pool>) {
        let previous = self.current.load_full();
        let next = Snapshot::from_table(table, Some(&previous));
        if let Some(pool) = pool {
            for entry in next.routes.values() {
                entry.pool_handle(pool);
            }
        }
        let gone: Vec<&String> = previous
            .routes
            .keys()
            .filter(|name| !next.routes.contains_key(*name))
            .collect();
        self.current.store(Arc::new(next));
        for name in gone {
            metrics::forget_function(name);
        }
    }
}

/// A snapshot file that exists but cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("route snapshot {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("route snapshot {path} is not a route table: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Reads a snapshot; `Ok(None)` when there is none yet.
pub fn load_snapshot(path: &Path) -> Result<Option<RouteTable>, SnapshotError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SnapshotError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| SnapshotError::Corrupt {
            path: path.to_owned(),
            source,
        })
}

/// Reads a snapshot for start-up: a missing or unusable one gives an empty
/// table (an unusable one is logged), never an error.
pub fn load_snapshot_or_empty(path: &Path) -> RouteTable {
    match load_snapshot(path) {
        Ok(Some(table)) => {
            info!(path = %path.display(), revision = table.revision, routes = table.routes.len(), "route snapshot loaded");
            table
        }
        Ok(None) => {
            info!(path = %path.display(), "no route snapshot yet");
            RouteTable::default()
        }
        Err(e) => {
            warn!(error = %e, "route snapshot ignored");
            RouteTable::default()
        }
    }
}

/// Writes a snapshot atomically (`containerpub_util::fs::write_atomic`: a
/// temporary file in the same directory, flushed to disk, renamed over the
/// old one), readable by its owner only: it holds the functions' secrets.
pub fn save_snapshot(path: &Path, table: &RouteTable) -> Result<(), SnapshotError> {
    let json = serde_json::to_vec_pretty(table).expect("a route table always serializes");
    write_atomic(path, &json, Modes::PRIVATE).map_err(|source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Follows the control plane's route table.
pub struct Watcher {
    routes: Arc<Routes>,
    pool: Pool,
    client: reqwest::Client,
    url: String,
    token: String,
    /// This proxy's node name, sent so the control plane knows what it serves.
    node: NodeName,
    snapshot_path: PathBuf,
}

/// Why one poll did not give a table.
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("control plane unreachable: {0}")]
    Http(#[from] reqwest::Error),
    #[error("control plane answered {status}: {body}")]
    Status {
        status: reqwest::StatusCode,
        body: String,
    },
}

impl Watcher {
    pub fn new(
        routes: Arc<Routes>,
        pool: Pool,
        control_url: &str,
        token: String,
        node: NodeName,
        snapshot_path: PathBuf,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(WATCH_WAIT_S + 15))
            .build()?;
        Ok(Self {
            routes,
            pool,
            client,
            url: format!("{control_url}{}", api::ROUTES_PATH),
            token,
            node,
            snapshot_path,
        })
    }

    /// Polls forever. Keeps serving the last table while the control plane
    /// is away; logs a warning when it goes away and an info line when it
    /// is back.
    pub async fn run(self) {
        let mut backoff = BACKOFF_MIN;
        let mut failing = false;
        loop {
            let began = tokio::time::Instant::now();
            match self.poll_once().await {
                Ok(table) => {
                    if failing {
                        info!(url = %self.url, "control plane reachable again");
                        failing = false;
                    }
                    backoff = BACKOFF_MIN;
                    let unchanged = table.revision == self.routes.revision();
                    self.apply(table).await;
                    // A control plane that answers at once without news
                    // (no long poll) must not make this a busy loop.
                    if unchanged && began.elapsed() < MIN_POLL_INTERVAL {
                        tokio::time::sleep_until(began + MIN_POLL_INTERVAL).await;
                    }
                }
                Err(e) => {
                    if !failing {
                        warn!(url = %self.url, error = %e, revision = self.routes.revision(), "route watch failing, serving the last known routes");
                        failing = true;
                    } else {
                        debug!(error = %e, "route watch still failing");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    async fn poll_once(&self) -> Result<RouteTable, PollError> {
        let query = WatchQuery {
            since: Some(self.routes.revision()),
            wait_s: WATCH_WAIT_S,
            node: Some(self.node.clone()),
        };
        let response = self
            .client
            .get(&self.url)
            .query(&query)
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(200).collect();
            return Err(PollError::Status { status, body });
        }
        Ok(response.json().await?)
    }

    /// Installs a table whose revision differs from the current one (a
    /// lower one too: the control plane's database may have been reset).
    async fn apply(&self, table: RouteTable) {
        let old = self.routes.revision();
        if table.revision == old {
            return;
        }
        self.routes.install(&table, &self.pool);
        info!(
            from = old,
            to = table.revision,
            routes = table.routes.len(),
            "routes updated"
        );
        let path = self.snapshot_path.clone();
        let saved = tokio::task::spawn_blocking(move || save_snapshot(&path, &table)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "route snapshot not saved"),
            Err(e) => warn!(error = %e, "route snapshot task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerpub_wire::Manifest;

    fn route(name: &str, deployment_id: i64) -> Route {
        let manifest =
            Manifest::parse(&format!("name = \"{name}\"\nruntime = \"container\"\n")).unwrap();
        Route {
            function: name.to_owned(),
            deployment_id,
            version: 1,
            image: format!("localhost/cpub-{name}:1"),
            config: manifest,
            keys: Vec::new(),
            secrets: Vec::new(),
            signing_keys: Vec::new(),
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("cpub-proxy-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn snapshot_round_trip() {
        let dir = temp_dir("roundtrip");
        let path = dir.join("nested").join("routes.json");
        let table = RouteTable {
            revision: 7,
            routes: vec![route("a", 1), route("b", 2)],
        };
        save_snapshot(&path, &table).unwrap();
        assert_eq!(load_snapshot(&path).unwrap(), Some(table.clone()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the snapshot holds secrets");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["routes.json"], "temporary file left behind");

        // Overwriting replaces the content as a whole.
        let newer = RouteTable {
            revision: 8,
            routes: vec![route("b", 3)],
        };
        save_snapshot(&path, &newer).unwrap();
        assert_eq!(load_snapshot(&path).unwrap(), Some(newer));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_snapshot_is_none() {
        let dir = temp_dir("missing");
        assert_eq!(load_snapshot(&dir.join("routes.json")).unwrap(), None);
        assert_eq!(
            load_snapshot_or_empty(&dir.join("routes.json")),
            RouteTable::default()
        );
    }

    #[test]
    fn corrupt_snapshot_is_reported_and_ignored() {
        let dir = temp_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("routes.json");
        for garbage in [
            &b"{\"revision\": 3, \"routes\": [{\"function\""[..],
            b"not json",
            b"",
            b"[]",
        ] {
            std::fs::write(&path, garbage).unwrap();
            let err = load_snapshot(&path).unwrap_err();
            assert!(matches!(err, SnapshotError::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains("routes.json"), "{err}");
            assert_eq!(load_snapshot_or_empty(&path), RouteTable::default());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn table_replacement() {
        let routes = Routes::new(&RouteTable {
            revision: 1,
            routes: vec![route("a", 1), route("b", 1)],
        });
        assert_eq!(routes.revision(), 1);
        assert_eq!(routes.get("a").unwrap().route.deployment_id, 1);
        let held = routes.get("b").unwrap();

        routes.replace(&RouteTable {
            revision: 2,
            routes: vec![route("b", 5), route("c", 1)],
        });
        assert_eq!(routes.revision(), 2);
        assert!(routes.get("a").is_none(), "removed function still routed");
        assert_eq!(routes.get("b").unwrap().route.deployment_id, 5);
        assert!(routes.get("c").is_some());
        // A request that looked its route up before the swap keeps it.
        assert_eq!(held.route.deployment_id, 1);

        let snap = routes.snapshot();
        assert_eq!((snap.revision, snap.routes.len()), (2, 2));
        routes.replace(&RouteTable::default());
        assert_eq!(
            (snap.revision, snap.routes.len()),
            (2, 2),
            "a taken snapshot never changes"
        );
        assert_eq!(routes.snapshot().routes.len(), 0);
    }

    #[tokio::test]
    async fn pool_handles_are_resolved_once_and_survive_redeploys() {
        use containerpub_pool::testing::FakeRuntime;
        use containerpub_pool::{PoolConfig, StartKind};

        let runtime = Arc::new(FakeRuntime::new().await);
        let config = PoolConfig {
            node: "routes-test".into(),
            start_timeout: Duration::from_secs(2),
        };
        let table = RouteTable {
            revision: 1,
            routes: vec![route("routes-h", 1)],
        };
        let pool = Pool::with_runtime(runtime, config, &table.routes)
            .await
            .unwrap();
        let routes = Routes::new(&table);
        assert!(routes.get("routes-h").unwrap().pool_handle.get().is_none());
        routes.resolve_handles(&pool);
        let before = routes.get("routes-h").unwrap();
        let handle = before.pool_handle.get().expect("resolved").clone();
        let lease = handle.lease().await.unwrap();
        assert_eq!(lease.start_kind(), StartKind::Cold);
        drop(lease);

        // A redeploy keeps the handle: the entry carries it over.
        let next = RouteTable {
            revision: 2,
            routes: vec![route("routes-h", 2)],
        };
        routes.replace(&next);
        pool.sync(&next.routes);
        let after = routes.get("routes-h").unwrap();
        let kept = after.pool_handle.get().expect("carried over");
        assert_eq!(kept.function(), "routes-h");
        assert!(kept.lease().await.is_ok(), "serves through the deploy");

        // A function new to the table is published with its handle: its
        // first call resolves nothing.
        let grown = RouteTable {
            revision: 3,
            routes: vec![route("routes-h", 2), route("routes-new", 1)],
        };
        routes.install(&grown, &pool);
        let new = routes.get("routes-new").unwrap();
        let handle = new
            .pool_handle
            .get()
            .expect("resolved before it was published");
        assert_eq!(handle.function(), "routes-new");
        assert!(handle.lease().await.is_ok());
    }

    #[test]
    fn metric_handles_survive_redeploys_and_go_with_the_function() {
        let count = |function: &str| {
            let text = String::from_utf8(metrics::render()).unwrap();
            let prefix =
                format!("cpub_invocations_total{{function=\"{function}\",status_class=\"2xx\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix)?.parse::<u64>().ok())
        };
        let routes = Routes::new(&RouteTable {
            revision: 1,
            routes: vec![route("routes-m1", 1), route("routes-m2", 1)],
        });
        let before = routes.get("routes-m1").unwrap();
        routes.replace(&RouteTable {
            revision: 2,
            routes: vec![route("routes-m1", 2), route("routes-m2", 1)],
        });
        let after = routes.get("routes-m1").unwrap();
        assert_eq!(after.route.deployment_id, 2);
        before.metrics.record_call(200, Duration::from_millis(1));
        after.metrics.record_call(200, Duration::from_millis(1));
        assert_eq!(count("routes-m1"), Some(2), "one series across the deploy");
        assert_eq!(count("routes-m2"), Some(0));

        routes.replace(&RouteTable {
            revision: 3,
            routes: vec![route("routes-m1", 2)],
        });
        assert_eq!(count("routes-m2"), None, "deleted function left the scrape");
        assert_eq!(count("routes-m1"), Some(2));
    }
}
