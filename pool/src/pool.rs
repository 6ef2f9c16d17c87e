//! Pool policy: which instance serves a call, when instances start, and when
//! they drain and go. Talks to containers only through `ContainerRuntime`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerpub_wire::api::Route;
use tokio::time::Instant;

use crate::podman::Podman;
use crate::runtime::{ContainerRuntime, PodmanRuntime, short};
use crate::{NETWORK, PoolError, health};

/// How often a draining instance is checked for in-flight requests.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Node name written to `cpub.node`; containers of other nodes are never touched.
    pub node: String,
    /// How long a new instance may take to become ready.
    pub start_timeout: Duration,
}

/// How the instance behind a lease came to serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    /// A new container was started for this call.
    Cold,
    /// A running instance had a free slot.
    Warm,
    /// A paused instance was resumed.
    Paused,
}

impl StartKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cold => "cold",
            Self::Warm => "warm",
            Self::Paused => "paused",
        }
    }
}

/// One running container.
#[derive(Debug)]
struct Instance {
    id: String,
    addr: SocketAddr,
    in_flight: AtomicU32,
    /// Set when the instance must take no more calls (failed or draining).
    gone: AtomicBool,
}

/// The instances of one function's active deployment.
struct FunctionPool {
    route: Route,
    instances: Mutex<Vec<Arc<Instance>>>,
    /// Single-flight guard: one start at a time per function.
    starting: tokio::sync::Mutex<()>,
}

impl FunctionPool {
    fn new(route: Route) -> Self {
        Self {
            route,
            instances: Mutex::new(Vec::new()),
            starting: tokio::sync::Mutex::new(()),
        }
    }

    /// Takes a slot on the ready instance with the fewest in-flight calls
    /// below the function's concurrency.
    fn try_acquire(&self) -> Option<Arc<Instance>> {
        let limit = self.route.config.scaling.concurrency;
        let instances = self.instances.lock().expect("instances lock");
        let best = instances
            .iter()
            .filter(|i| !i.gone.load(Ordering::Acquire))
            .min_by_key(|i| i.in_flight.load(Ordering::Acquire))?;
        // Increment under the lock so two callers cannot both take the last slot.
        let taken = best
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| Arc::clone(best))
    }

    fn len(&self) -> usize {
        self.instances.lock().expect("instances lock").len()
    }
}

/// A slot on one instance. Dropping it releases the slot, on every path.
#[derive(Debug)]
pub struct Lease {
    instance: Arc<Instance>,
    kind: StartKind,
    start: Duration,
    pool: Pool,
    function: String,
}

impl Lease {
    pub fn addr(&self) -> SocketAddr {
        self.instance.addr
    }
    pub fn start_kind(&self) -> StartKind {
        self.kind
    }
    /// Time spent starting or resuming the instance (zero when warm).
    pub fn start_duration(&self) -> Duration {
        self.start
    }
    pub fn instance_id(&self) -> &str {
        &self.instance.id
    }
    /// The upstream failed at the connection level: the instance leaves the
    /// pool and its container is removed; demand starts a replacement.
    pub fn mark_failed(&self) {
        if !self.instance.gone.swap(true, Ordering::AcqRel) {
            tracing::warn!(function = %self.function, container = short(&self.instance.id), "instance failed, removing it");
            self.pool.forget(&self.function, &self.instance);
            let runtime = Arc::clone(&self.pool.inner.runtime);
            let id = self.instance.id.clone();
            tokio::spawn(async move {
                if let Err(err) = runtime.remove(&id).await {
                    tracing::warn!(container = short(&id), %err, "removing a failed instance");
                }
            });
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.instance.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Snapshot of one instance, for status pages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub function: String,
    pub deployment_id: i64,
    pub id: String,
    pub addr: SocketAddr,
    pub in_flight: u32,
}

struct Inner {
    runtime: Arc<dyn ContainerRuntime>,
    config: PoolConfig,
    functions: Mutex<HashMap<String, Arc<FunctionPool>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("node", &self.config.node)
            .finish_non_exhaustive()
    }
}

/// The instance pool. Cheap to clone; usable from any tokio runtime.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// A pool on Podman: ensures the `cpub` network and removes containers
    /// this node owns from an earlier run.
    pub async fn podman(podman: Podman, config: PoolConfig) -> Result<Pool, PoolError> {
        let runtime = PodmanRuntime::new(podman, NETWORK).await?;
        Self::with_runtime(Arc::new(runtime), config).await
    }

    /// A pool on any runtime (tests use a fake).
    pub async fn with_runtime(
        runtime: Arc<dyn ContainerRuntime>,
        config: PoolConfig,
    ) -> Result<Pool, PoolError> {
        let stale = runtime.list_owned(&config.node).await?;
        for c in &stale {
            tracing::info!(container = short(&c.id), function = %c.function, "removing a container left from an earlier run");
            runtime.remove(&c.id).await?;
        }
        let inner = Inner {
            runtime,
            config,
            functions: Mutex::new(HashMap::new()),
        };
        Ok(Pool {
            inner: Arc::new(inner),
        })
    }

    /// Applies a route table: functions no longer routed, or routed to
    /// another deployment, drain (finish in-flight calls) and are removed.
    /// Must be called inside a tokio runtime (removal runs in the background).
    pub fn sync(&self, routes: &[Route]) {
        let wanted: HashMap<&str, i64> = routes
            .iter()
            .map(|r| (r.function.as_str(), r.deployment_id))
            .collect();
        let mut functions = self.inner.functions.lock().expect("functions lock");
        let retired: Vec<Arc<FunctionPool>> = functions
            .extract_if(|name, fp| wanted.get(name.as_str()) != Some(&fp.route.deployment_id))
            .map(|(_, fp)| fp)
            .collect();
        drop(functions);
        for fp in retired {
            self.retire(fp);
        }
    }

    /// Leases an instance of `route`'s deployment, starting one (cold) when
    /// none has a free slot.
    pub async fn lease(&self, route: &Route) -> Result<Lease, PoolError> {
        let fp = self.function_pool(route);
        if let Some(instance) = fp.try_acquire() {
            return Ok(self.lease_of(instance, StartKind::Warm, Duration::ZERO, route));
        }
        let began = Instant::now();
        let _single_flight = fp.starting.lock().await;
        // Whoever held the guard may have started an instance with room for us.
        if let Some(instance) = fp.try_acquire() {
            return Ok(self.lease_of(instance, StartKind::Warm, began.elapsed(), route));
        }
        let max = route.config.scaling.max_instances as usize;
        if fp.len() >= max {
            return Err(PoolError::AtCapacity {
                function: route.function.clone(),
                max_instances: max,
            });
        }
        let instance = self.start_instance(route).await?;
        instance.in_flight.store(1, Ordering::Release);
        fp.instances
            .lock()
            .expect("instances lock")
            .push(Arc::clone(&instance));
        Ok(self.lease_of(instance, StartKind::Cold, began.elapsed(), route))
    }

    /// Every live instance.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        let functions = self.inner.functions.lock().expect("functions lock");
        let mut out = Vec::new();
        for fp in functions.values() {
            for i in fp.instances.lock().expect("instances lock").iter() {
                out.push(InstanceInfo {
                    function: fp.route.function.clone(),
                    deployment_id: fp.route.deployment_id,
                    id: i.id.clone(),
                    addr: i.addr,
                    in_flight: i.in_flight.load(Ordering::Acquire),
                });
            }
        }
        out
    }

    /// Removes every instance at once (shutdown).
    pub async fn shutdown(&self) {
        let all: Vec<Arc<FunctionPool>> = self
            .inner
            .functions
            .lock()
            .expect("functions lock")
            .drain()
            .map(|(_, fp)| fp)
            .collect();
        for fp in all {
            let instances: Vec<_> = fp
                .instances
                .lock()
                .expect("instances lock")
                .drain(..)
                .collect();
            for i in instances {
                i.gone.store(true, Ordering::Release);
                if let Err(err) = self.inner.runtime.remove(&i.id).await {
                    tracing::warn!(container = short(&i.id), %err, "removing an instance at shutdown");
                }
            }
        }
    }

    fn lease_of(
        &self,
        instance: Arc<Instance>,
        kind: StartKind,
        start: Duration,
        route: &Route,
    ) -> Lease {
        Lease {
            instance,
            kind,
            start,
            pool: self.clone(),
            function: route.function.clone(),
        }
    }

    /// The function's pool for this deployment; a route for another
    /// deployment than the pool holds means a deploy: the old one retires.
    fn function_pool(&self, route: &Route) -> Arc<FunctionPool> {
        let mut functions = self.inner.functions.lock().expect("functions lock");
        match functions.get(&route.function) {
            Some(fp) if fp.route.deployment_id == route.deployment_id => return Arc::clone(fp),
            _ => {}
        }
        let fresh = Arc::new(FunctionPool::new(route.clone()));
        let old = functions.insert(route.function.clone(), Arc::clone(&fresh));
        drop(functions);
        if let Some(old) = old {
            self.retire(old);
        }
        fresh
    }

    async fn start_instance(&self, route: &Route) -> Result<Arc<Instance>, PoolError> {
        let began = Instant::now();
        let started = self
            .inner
            .runtime
            .start(route, &self.inner.config.node)
            .await?;
        let health = route.config.health_path.as_deref();
        if let Err(reason) =
            health::wait_ready(started.addr, health, self.inner.config.start_timeout).await
        {
            if let Err(err) = self.inner.runtime.remove(&started.id).await {
                tracing::warn!(container = short(&started.id), %err, "removing an instance that never became ready");
            }
            return Err(PoolError::StartFailed {
                function: route.function.clone(),
                reason,
            });
        }
        tracing::info!(
            function = %route.function,
            deployment = route.deployment_id,
            container = short(&started.id),
            addr = %started.addr,
            ms = began.elapsed().as_millis() as u64,
            "instance ready"
        );
        Ok(Arc::new(Instance {
            id: started.id,
            addr: started.addr,
            in_flight: AtomicU32::new(0),
            gone: AtomicBool::new(false),
        }))
    }

    fn forget(&self, function: &str, instance: &Arc<Instance>) {
        let functions = self.inner.functions.lock().expect("functions lock");
        if let Some(fp) = functions.get(function) {
            fp.instances
                .lock()
                .expect("instances lock")
                .retain(|i| !Arc::ptr_eq(i, instance));
        }
    }

    /// Drains a function pool in the background: no new calls; each
    /// instance is removed once its in-flight calls finish or the
    /// function's timeout passes.
    fn retire(&self, fp: Arc<FunctionPool>) {
        let runtime = Arc::clone(&self.inner.runtime);
        let grace = Duration::from_millis(fp.route.config.resources.timeout_ms);
        let instances: Vec<_> = fp
            .instances
            .lock()
            .expect("instances lock")
            .drain(..)
            .collect();
        for i in &instances {
            i.gone.store(true, Ordering::Release);
        }
        tokio::spawn(async move {
            let until = Instant::now() + grace;
            for i in instances {
                while i.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < until {
                    tokio::time::sleep(DRAIN_POLL).await;
                }
                match runtime.remove(&i.id).await {
                    Ok(()) => {
                        tracing::info!(function = %fp.route.function, deployment = fp.route.deployment_id, container = short(&i.id), "instance removed")
                    }
                    Err(err) => {
                        tracing::warn!(container = short(&i.id), %err, "removing a retired instance")
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use async_trait::async_trait;
    use containerpub_wire::Manifest;
    use tokio::net::TcpListener;

    use super::*;
    use crate::runtime::{Owned, Started};

    /// A runtime whose "containers" all share one local listener.
    struct Fake {
        addr: SocketAddr,
        starts: AtomicUsize,
        removed: Mutex<Vec<String>>,
        leftovers: Vec<Owned>,
    }

    impl Fake {
        async fn new(leftovers: Vec<Owned>) -> Arc<Self> {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((s, _)) = listener.accept().await {
                    drop(s);
                }
            });
            Arc::new(Fake {
                addr,
                starts: AtomicUsize::new(0),
                removed: Mutex::new(Vec::new()),
                leftovers,
            })
        }
        fn removed(&self) -> Vec<String> {
            self.removed.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl ContainerRuntime for Fake {
        async fn start(&self, route: &Route, _node: &str) -> Result<Started, PoolError> {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let n = self.starts.fetch_add(1, Ordering::SeqCst);
            Ok(Started {
                id: format!("{}-{}-{n}", route.function, route.deployment_id),
                addr: self.addr,
            })
        }
        async fn remove(&self, id: &str) -> Result<(), PoolError> {
            self.removed.lock().unwrap().push(id.to_owned());
            Ok(())
        }
        async fn list_owned(&self, _node: &str) -> Result<Vec<Owned>, PoolError> {
            Ok(self.leftovers.clone())
        }
    }

    fn route(name: &str, deployment_id: i64, concurrency: u32, max: u32) -> Route {
        let text = format!(
            "name = \"{name}\"\nruntime = \"container\"\n[scaling]\nconcurrency = {concurrency}\nmax_instances = {max}\n[resources]\ntimeout_ms = 1000\n"
        );
        Route {
            function: name.into(),
            deployment_id,
            version: 1,
            image: "img".into(),
            config: Manifest::parse(&text).unwrap(),
        }
    }

    async fn pool(fake: &Arc<Fake>) -> Pool {
        let config = PoolConfig {
            node: "test".into(),
            start_timeout: Duration::from_secs(2),
        };
        Pool::with_runtime(Arc::clone(fake) as Arc<dyn ContainerRuntime>, config)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn removes_leftover_containers_at_start() {
        let left = Owned {
            id: "old".into(),
            function: "f".into(),
            deployment: "1".into(),
        };
        let fake = Fake::new(vec![left]).await;
        let _pool = pool(&fake).await;
        assert_eq!(fake.removed(), vec!["old".to_owned()]);
    }

    #[tokio::test]
    async fn first_call_is_cold_then_warm_on_the_same_instance() {
        let fake = Fake::new(vec![]).await;
        let pool = pool(&fake).await;
        let r = route("f", 1, 4, 3);
        let first = pool.lease(&r).await.unwrap();
        assert_eq!(first.start_kind(), StartKind::Cold);
        let id = first.instance_id().to_owned();
        drop(first);
        let second = pool.lease(&r).await.unwrap();
        assert_eq!(second.start_kind(), StartKind::Warm);
        assert_eq!(second.instance_id(), id);
        assert_eq!(second.start_duration(), Duration::ZERO);
        assert_eq!(fake.starts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn leases_are_released_on_drop_and_spread_by_load() {
        let fake = Fake::new(vec![]).await;
        let pool = pool(&fake).await;
        let r = route("f", 1, 2, 2);
        let a = pool.lease(&r).await.unwrap();
        let b = pool.lease(&r).await.unwrap();
        assert_eq!(
            a.instance_id(),
            b.instance_id(),
            "second call fits the first instance"
        );
        let c = pool.lease(&r).await.unwrap();
        assert_ne!(
            c.instance_id(),
            a.instance_id(),
            "full instance: a second one starts"
        );
        let d = pool.lease(&r).await.unwrap();
        assert_eq!(d.instance_id(), c.instance_id());
        assert!(matches!(
            pool.lease(&r).await,
            Err(PoolError::AtCapacity {
                max_instances: 2,
                ..
            })
        ));
        drop(a);
        // The freed slot is on the first instance.
        let e = pool.lease(&r).await.unwrap();
        assert_eq!(e.instance_id(), b.instance_id());
        drop((b, c, d, e));
        assert!(
            pool.instances().iter().all(|i| i.in_flight == 0),
            "{:?}",
            pool.instances()
        );
    }

    #[tokio::test]
    async fn concurrent_cold_calls_start_one_instance() {
        let fake = Fake::new(vec![]).await;
        let pool = pool(&fake).await;
        let r = route("f", 1, 10, 5);
        let calls = (0..10).map(|_| {
            let (pool, r) = (pool.clone(), r.clone());
            tokio::spawn(async move { pool.lease(&r).await.map(|l| l.instance_id().to_owned()) })
        });
        let mut ids = Vec::new();
        for c in calls {
            ids.push(c.await.unwrap().unwrap());
        }
        assert_eq!(fake.starts.load(Ordering::SeqCst), 1, "single-flight start");
        assert!(ids.iter().all(|i| i == &ids[0]));
    }

    #[tokio::test]
    async fn new_deployment_drains_and_removes_old_instances() {
        let fake = Fake::new(vec![]).await;
        let pool = pool(&fake).await;
        let v1 = route("f", 1, 4, 3);
        let held = pool.lease(&v1).await.unwrap();
        let old_id = held.instance_id().to_owned();
        pool.sync(&[route("f", 2, 4, 3)]);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(fake.removed().is_empty(), "in-flight call is not cut off");
        drop(held);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(fake.removed(), vec![old_id]);
        let fresh = pool.lease(&route("f", 2, 4, 3)).await.unwrap();
        assert_eq!(fresh.start_kind(), StartKind::Cold);
        assert!(fresh.instance_id().starts_with("f-2-"));
    }

    #[tokio::test]
    async fn deleted_function_loses_its_instances_and_failed_ones_leave() {
        let fake = Fake::new(vec![]).await;
        let pool = pool(&fake).await;
        let f = route("f", 1, 4, 3);
        let lease = pool.lease(&f).await.unwrap();
        lease.mark_failed();
        let id = lease.instance_id().to_owned();
        drop(lease);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(fake.removed(), vec![id]);
        assert!(pool.instances().is_empty());
        let again = pool.lease(&f).await.unwrap();
        assert_eq!(
            again.start_kind(),
            StartKind::Cold,
            "demand starts a replacement"
        );
        drop(again);
        pool.sync(&[]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(fake.removed().len(), 2);
        assert!(pool.instances().is_empty());
    }
}
