//! A configurable fake container runtime (feature `test-util`), for the
//! policy tests of this crate and the tests and benches of its users: no
//! Podman, every "container" is a local address.
//!
//! Where started instances listen is chosen at construction
//! ([`FakeRuntime::new`]: a local listener that accepts and drops every
//! connection; [`FakeRuntime::serving`]: an address the test runs;
//! [`FakeRuntime::vanishing`]: a fresh listener per instance that answers
//! one readiness probe and then goes away). What starts do (delay, fail,
//! crash, lose their `died` event) can be changed at any time; what the
//! pool asked for (starts, removals, pauses, resumes) is recorded.
//!
//! Also [`eventually`]: the polling helper the tests synchronise with,
//! instead of fixed sleeps.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use containerpub_wire::api::Route;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

use crate::PoolError;
use crate::runtime::{ContainerRuntime, Exit, Owned, RuntimeEvent, Started};

/// Where the fake's instances listen.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// Every instance is this address.
    Fixed(SocketAddr),
    /// Every instance gets a listener that answers one probe, then closes.
    Vanishing,
}

/// A container runtime without containers. See the module header.
#[derive(Debug)]
pub struct FakeRuntime {
    target: Target,
    /// A closed port: what a crashed container's address answers.
    dead_addr: SocketAddr,
    start_delay: Duration,
    /// How long a pause takes (a freeze in flight).
    pause_delay: Duration,
    /// `pause-begin`, `pause-end` and `resume` of each id, in order.
    freezer_log: Mutex<Vec<String>>,
    leftovers: Vec<Owned>,
    fail_starts: AtomicBool,
    /// When set, starts fail with this as Podman's error text.
    engine_error: Mutex<Option<String>>,
    crash_starts: AtomicBool,
    silent_deaths: AtomicBool,
    starts: AtomicUsize,
    /// The routes of the starts that succeeded, in order.
    started: Mutex<Vec<Route>>,
    removed: Mutex<Vec<String>>,
    paused: Mutex<Vec<String>>,
    resumed: Mutex<Vec<String>>,
    /// Containers that exited, with how.
    exited: Mutex<HashMap<String, Exit>>,
    /// Log files of containers, removed with them.
    log_paths: Mutex<HashMap<String, std::path::PathBuf>>,
    events: broadcast::Sender<RuntimeEvent>,
}

impl FakeRuntime {
    /// Instances on a local listener that accepts and drops connections
    /// (enough for a TCP readiness probe), spawned on the current runtime.
    pub async fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("listener address");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        Self::on(Target::Fixed(addr))
    }

    /// Every instance is `addr` (a server the test runs).
    pub fn serving(addr: SocketAddr) -> Self {
        Self::on(Target::Fixed(addr))
    }

    /// Every instance answers its readiness probe (HTTP 200 or a bare
    /// accept), then stops listening: connecting to it refuses.
    pub fn vanishing() -> Self {
        Self::on(Target::Vanishing)
    }

    fn on(target: Target) -> Self {
        let dead_addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0");
        Self {
            target,
            dead_addr,
            start_delay: Duration::ZERO,
            pause_delay: Duration::ZERO,
            freezer_log: Mutex::default(),
            leftovers: Vec::new(),
            fail_starts: AtomicBool::new(false),
            engine_error: Mutex::default(),
            crash_starts: AtomicBool::new(false),
            silent_deaths: AtomicBool::new(false),
            starts: AtomicUsize::new(0),
            started: Mutex::default(),
            removed: Mutex::default(),
            paused: Mutex::default(),
            resumed: Mutex::default(),
            exited: Mutex::default(),
            log_paths: Mutex::default(),
            events: broadcast::channel(64).0,
        }
    }

    /// Every pause takes `delay` (the default is none).
    pub fn with_pause_delay(mut self, delay: Duration) -> Self {
        self.pause_delay = delay;
        self
    }

    /// `pause-begin <id>`, `pause-end <id>` and `resume <id>`, in the order
    /// they happened.
    pub fn freezer_log(&self) -> Vec<String> {
        self.freezer_log.lock().expect("freezer log lock").clone()
    }

    /// Every start takes `delay` (the default is none).
    pub fn with_start_delay(mut self, delay: Duration) -> Self {
        self.start_delay = delay;
        self
    }

    /// Containers this node owns already, for adoption.
    pub fn with_leftovers(mut self, leftovers: Vec<Owned>) -> Self {
        self.leftovers = leftovers;
        self
    }

    /// Container `id`'s k8s-file log is `path` (as Podman's `log_path`);
    /// removing the container removes the file, as Podman does.
    pub fn set_log_path(&self, id: &str, path: std::path::PathBuf) {
        self.log_paths
            .lock()
            .expect("log paths lock")
            .insert(id.to_owned(), path);
    }

    /// The address of instances, when they all share one.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self.target {
            Target::Fixed(addr) => Some(addr),
            Target::Vanishing => None,
        }
    }

    pub fn start_delay(&self) -> Duration {
        self.start_delay
    }

    /// Starts fail ("image missing") while set.
    pub fn fail_starts(&self, on: bool) {
        self.fail_starts.store(on, Ordering::SeqCst);
    }

    /// Starts fail as Podman's API would, with `message` as its error text
    /// (e.g. its IPAM error when the network has no free address), while
    /// set.
    pub fn fail_starts_with(&self, message: Option<&str>) {
        *self.engine_error.lock().expect("engine error lock") = message.map(str::to_owned);
    }

    /// Started containers exit at once (code 3, output "boom") instead of
    /// listening, while set.
    pub fn crash_starts(&self, on: bool) {
        self.crash_starts.store(on, Ordering::SeqCst);
    }

    /// The `died` events of crashing starts are lost (a broken event
    /// stream), while set.
    pub fn silent_deaths(&self, on: bool) {
        self.silent_deaths.store(on, Ordering::SeqCst);
    }

    /// Records how container `id` ended (what `exit_of` answers).
    pub fn set_exit(&self, id: &str, exit: Exit) {
        self.exited
            .lock()
            .expect("exited lock")
            .insert(id.to_owned(), exit);
    }

    /// Sends a `died` event for `id` to the pool.
    pub fn send_died(&self, id: &str) {
        // No receiver yet is fine: the pool subscribes when it starts.
        let _ = self.events.send(RuntimeEvent::Died { id: id.to_owned() });
    }

    /// Starts that succeeded so far.
    pub fn starts(&self) -> usize {
        self.starts.load(Ordering::SeqCst)
    }

    /// The route each start that made a container was given (what its
    /// spec, labels and environment came from), in order.
    pub fn started_routes(&self) -> Vec<Route> {
        self.started.lock().expect("started lock").clone()
    }

    pub fn removed(&self) -> Vec<String> {
        self.removed.lock().expect("removed lock").clone()
    }

    pub fn paused(&self) -> Vec<String> {
        self.paused.lock().expect("paused lock").clone()
    }

    pub fn resumed(&self) -> Vec<String> {
        self.resumed.lock().expect("resumed lock").clone()
    }
}

/// A listener that answers one readiness probe and then goes away, so
/// that connecting to it refuses.
async fn vanishing_instance() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("listener address");
    tokio::spawn(async move {
        let Ok((mut probe, _)) = listener.accept().await else {
            return;
        };
        drop(listener);
        let mut buf = [0u8; 1024];
        let _ = probe.read(&mut buf).await;
        let _ = probe
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
    });
    addr
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn start(&self, route: &Route, _node: &str) -> Result<Started, PoolError> {
        if !self.start_delay.is_zero() {
            tokio::time::sleep(self.start_delay).await;
        }
        let engine_error = self.engine_error.lock().expect("engine error lock").clone();
        if let Some(message) = engine_error {
            return Err(PoolError::Podman(crate::PodmanError::Api {
                method: http::Method::POST,
                path: format!("/containers/{}-x/start", route.function),
                status: http::StatusCode::INTERNAL_SERVER_ERROR,
                message,
            }));
        }
        if self.fail_starts.load(Ordering::SeqCst) {
            return Err(PoolError::StartFailed {
                function: route.function.clone(),
                reason: "image missing".into(),
            });
        }
        let n = self.starts.fetch_add(1, Ordering::SeqCst);
        self.started
            .lock()
            .expect("started lock")
            .push(route.clone());
        let id = format!("{}-{}-{n}", route.function, route.deployment_id);
        if self.crash_starts.load(Ordering::SeqCst) {
            self.set_exit(
                &id,
                Exit {
                    code: Some(3),
                    output: "boom\n".into(),
                    oom_killed: false,
                },
            );
            if !self.silent_deaths.load(Ordering::SeqCst) {
                let (events, dead) = (self.events.clone(), id.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let _ = events.send(RuntimeEvent::Died { id: dead });
                });
            }
            return Ok(Started {
                id,
                addr: self.dead_addr,
            });
        }
        let addr = match self.target {
            Target::Fixed(addr) => addr,
            Target::Vanishing => vanishing_instance().await,
        };
        Ok(Started { id, addr })
    }

    async fn exit_of(&self, id: &str) -> Result<Option<Exit>, PoolError> {
        Ok(self.exited.lock().expect("exited lock").get(id).cloned())
    }

    async fn remove(&self, id: &str) -> Result<(), PoolError> {
        self.removed
            .lock()
            .expect("removed lock")
            .push(id.to_owned());
        let log = self.log_paths.lock().expect("log paths lock").remove(id);
        if let Some(path) = log {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    async fn log_path(&self, id: &str) -> Result<Option<std::path::PathBuf>, PoolError> {
        Ok(self
            .log_paths
            .lock()
            .expect("log paths lock")
            .get(id)
            .cloned())
    }

    async fn list_owned(&self, _node: &str) -> Result<Vec<Owned>, PoolError> {
        Ok(self.leftovers.clone())
    }

    async fn pause(&self, id: &str) -> Result<(), PoolError> {
        let log = |what: &str| {
            self.freezer_log
                .lock()
                .expect("freezer log lock")
                .push(format!("{what} {id}"));
        };
        log("pause-begin");
        if !self.pause_delay.is_zero() {
            tokio::time::sleep(self.pause_delay).await;
        }
        log("pause-end");
        self.paused.lock().expect("paused lock").push(id.to_owned());
        Ok(())
    }

    async fn resume(&self, id: &str) -> Result<(), PoolError> {
        self.freezer_log
            .lock()
            .expect("freezer log lock")
            .push(format!("resume {id}"));
        self.resumed
            .lock()
            .expect("resumed lock")
            .push(id.to_owned());
        Ok(())
    }

    async fn events(
        &self,
        _node: &str,
        tx: &mpsc::UnboundedSender<RuntimeEvent>,
    ) -> Result<(), PoolError> {
        let mut rx = self.events.subscribe();
        loop {
            tokio::select! {
                () = tx.closed() => return Ok(()),
                event = rx.recv() => match event {
                    Ok(e) => {
                        if tx.send(e).is_err() {
                            return Ok(());
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
            }
        }
    }
}

/// Polls `check` every 10 ms until it holds; panics with `what` when it
/// still does not after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
