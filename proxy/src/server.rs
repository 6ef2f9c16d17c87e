//! The proxy's HTTP/1.1 server: `threads` worker threads, each running its
//! own single-threaded tokio runtime (the shape of nginx's workers). One
//! accept loop (on the caller's runtime) hands every new connection to the
//! worker with the fewest open connections; the connection then stays on
//! that thread with its upstream connections (`upstream.rs`), so the data
//! path (`engine/`) takes no lock shared with other threads and wakes no
//! other thread, but for one bounded exception (ARCHITECTURE.md,
//! "Threads"): the replay check of a signed call. (Letting every worker
//! accept on the shared socket sent all of a load test's connections to one
//! thread.)
//!
//! Shutdown: when `shutdown` resolves, accepting stops, the workers ask
//! every open connection to finish its current exchange and close, and wait
//! up to the grace period for them.

use std::cell::Cell;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use crate::engine::{self, Worker};
use crate::metrics;
use crate::service::Proxy;
use crate::upstream;

/// How often each worker closes its stale idle upstream connections (its
/// timer also publishes the worker's metric counts, every
/// `metrics::FLUSH_EVERY`).
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (out of file descriptors, …).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Binds the listening socket (so a taken port fails before anything
/// starts).
pub fn bind(addr: SocketAddr) -> std::io::Result<StdListener> {
    let listener = StdListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// A worker as the accept loop sees it.
struct WorkerHandle {
    connections: mpsc::UnboundedSender<(StdStream, SocketAddr)>,
    open: Arc<AtomicUsize>,
}

/// Serves `listener` on `threads` worker threads until `shutdown`
/// resolves, then drains for at most `grace`. The accept loop runs on
/// `runtime`; the call blocks the calling thread.
pub fn serve(
    listener: StdListener,
    threads: usize,
    proxy: Arc<Proxy>,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
    runtime: &tokio::runtime::Runtime,
) -> std::io::Result<()> {
    let mut workers = Vec::with_capacity(threads);
    let mut threads_joined = Vec::with_capacity(threads);
    for i in 0..threads {
        let (tx, rx) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicUsize::new(0));
        let proxy = Proxy::clone(&proxy);
        let counter = open.clone();
        let handle = std::thread::Builder::new()
            .name(format!("cpub-proxy-{i}"))
            .spawn(move || worker(rx, counter, proxy, grace))?;
        workers.push(WorkerHandle {
            connections: tx,
            open,
        });
        threads_joined.push(handle);
    }
    let accepted = runtime.block_on(accept_loop(listener, &workers, shutdown));
    info!(
        grace_s = grace.as_secs(),
        "stopping: no new connections, draining"
    );
    // Closing the channels tells the workers to drain.
    drop(workers);
    for handle in threads_joined {
        if handle.join().is_err() {
            warn!("a worker thread panicked");
        }
    }
    accepted
}

/// Accepts until `shutdown`, giving each connection to the least busy
/// worker.
async fn accept_loop(
    listener: StdListener,
    workers: &[WorkerHandle],
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let Some(worker) = workers.iter().min_by_key(|w| w.open.load(Ordering::Relaxed)) else {
                        return Ok(());
                    };
                    match tcp.into_std() {
                        Ok(std) => {
                            worker.open.fetch_add(1, Ordering::Relaxed);
                            if worker.connections.send((std, peer)).is_err() {
                                worker.open.fetch_sub(1, Ordering::Relaxed);
                                warn!("a worker is gone; connection dropped");
                            }
                        }
                        Err(e) => warn!(error = %e, "cannot hand a connection over"),
                    }
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            () = &mut shutdown => return Ok(()),
        }
    }
}

fn worker(
    connections: mpsc::UnboundedReceiver<(StdStream, SocketAddr)>,
    counter: Arc<AtomicUsize>,
    proxy: Proxy,
    grace: Duration,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            warn!(error = %e, "cannot start a worker runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(
        &runtime,
        run_worker(connections, counter, Rc::new(proxy), grace),
    );
}

/// One worker's open connections: how many, and a wake-up when the last
/// one ends.
#[derive(Default)]
struct Open {
    count: Cell<usize>,
    drained: Notify,
}

/// Counts one open connection of a worker (its own count and the accept
/// loop's) for as long as it lives: the counts cannot leak, even when a
/// connection's task panics.
struct OpenGuard {
    open: Rc<Open>,
    counter: Arc<AtomicUsize>,
}

impl OpenGuard {
    /// The accept loop counted the connection in `counter` already.
    fn new(open: Rc<Open>, counter: Arc<AtomicUsize>) -> Self {
        open.count.set(open.count.get().saturating_add(1));
        Self { open, counter }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
        let left = self.open.count.get().saturating_sub(1);
        self.open.count.set(left);
        if left == 0 {
            self.open.drained.notify_one();
        }
    }
}

async fn run_worker(
    mut connections: mpsc::UnboundedReceiver<(StdStream, SocketAddr)>,
    counter: Arc<AtomicUsize>,
    proxy: Rc<Proxy>,
    grace: Duration,
) {
    let open = Rc::new(Open::default());
    let shared = Rc::new(Worker::default());
    let sweeper = tokio::task::spawn_local(async {
        let mut every = tokio::time::interval(metrics::FLUSH_EVERY);
        let mut last_sweep = Instant::now();
        loop {
            every.tick().await;
            metrics::flush_local();
            crate::executions::flush_local();
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                upstream::sweep(last_sweep);
            }
        }
    });
    while let Some((std, peer)) = connections.recv().await {
        let tcp = match TcpStream::from_std(std) {
            Ok(tcp) => tcp,
            Err(e) => {
                counter.fetch_sub(1, Ordering::Relaxed);
                warn!(error = %e, "cannot register a connection");
                continue;
            }
        };
        let guard = OpenGuard::new(Rc::clone(&open), Arc::clone(&counter));
        let (proxy, shared) = (proxy.clone(), shared.clone());
        tokio::task::spawn_local(async move {
            // Dropped however the task ends, a panic included.
            let _guard = guard;
            engine::serve_connection(tcp, peer, proxy, shared).await;
        });
    }
    shared.begin_stop();
    let drained = async {
        while open.count.get() > 0 {
            open.drained.notified().await;
        }
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        debug!(
            open = open.count.get(),
            "grace period over, closing connections"
        );
    }
    sweeper.abort();
    metrics::flush_local();
    crate::executions::flush_local();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection task that panics still gives its counts back (old code
    /// decremented them after `serve_connection` returned, so a panic
    /// leaked them and shutdown waited the whole grace period).
    #[test]
    fn a_panicking_connection_task_releases_its_counts() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let open = Rc::new(Open::default());
            let counter = Arc::new(AtomicUsize::new(2));
            let calm = OpenGuard::new(Rc::clone(&open), Arc::clone(&counter));
            let guard = OpenGuard::new(Rc::clone(&open), Arc::clone(&counter));
            assert_eq!(open.count.get(), 2);
            let task = tokio::task::spawn_local(async move {
                let _guard = guard;
                panic!("a connection task panics");
            });
            assert!(task.await.unwrap_err().is_panic());
            assert_eq!(open.count.get(), 1);
            assert_eq!(counter.load(Ordering::Relaxed), 1);
            drop(calm);
            assert_eq!(open.count.get(), 0);
            assert_eq!(counter.load(Ordering::Relaxed), 0);
            tokio::time::timeout(Duration::from_secs(1), open.drained.notified())
                .await
                .expect("the last one wakes the drain");
        });
    }
}
