//! `cpub-proxy`: the ContainerPub edge proxy. Parses configuration, loads the
//! route snapshot, connects the pool to Podman (which adopts this node's
//! healthy instances of the snapshot's routes), starts the route watcher and
//! serves calls until SIGTERM/SIGINT, drains, then stops the pool's
//! background tasks. Instances are left running on the way out: the next
//! proxy on this node adopts them (`scripts/down.sh` removes them when the
//! whole stack stops).
//!
//! Threads: the proxy's worker threads each run their own single-threaded
//! runtime (`server.rs`); the pool is created on, and the route watcher and
//! signal handling run on, a separate small tokio runtime (`cpub-bg`) that
//! outlives the workers, so the pool's background tasks survive and
//! `Pool::shutdown` can run after the workers have stopped.

use std::process::exit;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use containerpub_pool::logs::LogHub;
use containerpub_pool::{Podman, Pool, PoolConfig};
use containerpub_util::fs::{DirLock, LockError, Modes};
use containerpub_wire::api::NodeName;
use tracing::{error, info, warn};

use containerpub_proxy::admin;
use containerpub_proxy::config::{Config, EXIT_CONFIG};
use containerpub_proxy::crashes;
use containerpub_proxy::executions;
use containerpub_proxy::metrics;
use containerpub_proxy::node_status;
use containerpub_proxy::routes::{self, Routes, Watcher};
use containerpub_proxy::server;
use containerpub_proxy::service::Proxy;

/// Longest wait for the pool to stop its background tasks on the way out.
const POOL_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the execution records still queued to be sent on the
/// way out (what is left goes to the spool).
const EXECUTIONS_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for the log lines still queued to be shipped on the way out
/// (what is left is read again from the files by the next proxy).
const LOGS_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

fn main() {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            let _ = e.print();
            eprintln!("(every flag can also be set through its environment variable, see --help)");
            exit(EXIT_CONFIG);
        }
    };
    let config = config.validate().unwrap_or_else(|e| {
        eprintln!("cpub-proxy: bad configuration: {e}");
        exit(EXIT_CONFIG);
    });
    if let Err(e) = containerpub_util::logging::init() {
        eprintln!("cpub-proxy: bad configuration: {e}");
        exit(EXIT_CONFIG);
    }
    exit(run(config));
}

/// Runs the proxy; returns the process exit code.
fn run(config: Config) -> i32 {
    // One proxy per state directory, taken before anything else: a second
    // one would adopt (and remove) the first one's containers and rewrite
    // its log offsets and record spool before failing to bind.
    // A directory it cannot create or lock stops it too: without it no
    // snapshot, record spool or log offset would survive a restart.
    let _state = match DirLock::hold(&config.state_dir, Modes::PRIVATE) {
        Ok(lock) => lock,
        Err(e @ LockError::Held { .. }) => {
            error!(error = %e, "another cpub-proxy runs with this state directory (--state-dir)");
            return 1;
        }
        Err(e) => {
            error!(error = %e, "cannot create or lock the state directory (--state-dir)");
            return 1;
        }
    };
    let background = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("cpub-bg")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the background runtime");
            return 1;
        }
    };

    let snapshot_path = config.snapshot_path();
    let snapshot = routes::load_snapshot_or_empty(&snapshot_path);
    let routes = Arc::new(Routes::new(&snapshot));

    let pool_config = PoolConfig {
        node: config.node().to_owned(),
        start_timeout: config.start_timeout(),
    };
    let podman = Podman::new(config.podman_socket.clone());
    metrics::init();
    // Log capture starts before the pool: adoption reads the unshipped
    // lines of the containers it removes.
    let log_hub = config
        .logs
        .config(&config.state_dir)
        .and_then(|log_config| {
            LogHub::new(log_config)
                .inspect_err(|e| warn!(error = %e, "log capture off: cannot start its thread"))
                .ok()
        });
    let pool = match background.block_on(Pool::podman_with_logs(
        podman,
        pool_config,
        config.node_config(),
        &snapshot.routes,
        log_hub.clone(),
    )) {
        Ok(pool) => pool,
        Err(e) => {
            error!(socket = %config.podman_socket.display(), error = %e, "cannot start the pool");
            return 1;
        }
    };
    if let Some(hub) = &log_hub {
        background.spawn(containerpub_proxy::logs::ship(
            Arc::clone(hub),
            config.control_url.clone(),
            config.token.clone(),
            config.node().to_owned(),
        ));
    }
    background.block_on(async {
        pool.sync(&snapshot.routes);
        routes.resolve_handles(&pool);
    });

    // `Config::validate` checked the node name with the same rule.
    let node = match NodeName::try_from(config.node().to_owned()) {
        Ok(node) => node,
        Err(e) => {
            error!(error = %e, "bad node name");
            return 1;
        }
    };
    let watcher = match Watcher::new(
        routes.clone(),
        pool.clone(),
        &config.control_url,
        config.token.clone(),
        node,
        snapshot_path,
    ) {
        Ok(watcher) => watcher,
        Err(e) => {
            error!(error = %e, "cannot build the control-plane client");
            return 1;
        }
    };
    let watching = background.spawn(watcher.run());
    background.spawn(crashes::report(
        pool.clone(),
        config.control_url.clone(),
        config.token.clone(),
        config.node().to_owned(),
    ));

    let admin = match server::bind(config.admin_listen)
        .and_then(|l| background.block_on(async { tokio::net::TcpListener::from_std(l) }))
    {
        Ok(admin) => admin,
        Err(e) => {
            error!(admin_listen = %config.admin_listen, error = %e, "cannot listen for the admin endpoints");
            return 1;
        }
    };
    background.spawn(admin::serve(admin, routes.clone()));
    background.spawn(node_status::run(
        pool.clone(),
        config.control_url.clone(),
        config.token.clone(),
        config.node().to_owned(),
    ));
    if config.executions_on() {
        let _guard = background.enter();
        executions::start(executions::Settings {
            control_url: config.control_url.clone(),
            token: config.token.clone(),
            node: config.node().to_owned(),
            spool_dir: config.state_dir.join("executions"),
            memory_bytes: config.executions_memory_mb * 1024 * 1024,
            spool_bytes: config.executions_spool_mb * 1024 * 1024,
        });
    } else {
        executions::init_metrics();
    }

    let listener = match server::bind(config.listen) {
        Ok(listener) => listener,
        Err(e) => {
            error!(listen = %config.listen, error = %e, "cannot listen");
            return 1;
        }
    };
    info!(
        listen = %config.listen,
        admin_listen = %config.admin_listen,
        node = config.node(),
        threads = config.threads(),
        control = %config.control_url,
        revision = routes.revision(),
        routes = snapshot.routes.len(),
        "cpub-proxy starting"
    );
    let stop = match stop_signal(&background) {
        Ok(stop) => stop,
        Err(e) => {
            error!(error = %e, "cannot install the signal handlers");
            return 1;
        }
    };
    let proxy = Arc::new(Proxy::new(routes.clone(), pool.clone()));
    let grace = Duration::from_secs(config.grace_period_s);
    if let Err(e) = server::serve(listener, config.threads(), proxy, grace, stop, &background) {
        error!(error = %e, "cannot start the worker threads");
        return 1;
    }

    // Nothing removes or starts instances any more before the logs are
    // flushed: no route sync (a deploy drains and removes), no idle expiry,
    // no crash handling. A container removed during the flush would take
    // its queued lines (counted as read again) and its unread tail with it;
    // one started would not be followed. The tailers themselves run until
    // the flush's end (`LogHub::flush`).
    watching.abort();
    pool.stop_background();
    // Both at once: each has its own deadline.
    background.block_on(async {
        tokio::join!(executions::shutdown(EXECUTIONS_SHUTDOWN_TIMEOUT), async {
            if let Some(hub) = &log_hub {
                containerpub_proxy::logs::shutdown(hub, LOGS_SHUTDOWN_TIMEOUT).await;
            }
        });
    });
    info!("proxy stopped, stopping the pool (instances stay for the next proxy)");
    // The timer must be created inside the runtime, hence the async block.
    let stopped = background
        .block_on(async { tokio::time::timeout(POOL_SHUTDOWN_TIMEOUT, pool.shutdown()).await });
    if stopped.is_err() {
        warn!(
            timeout_s = POOL_SHUTDOWN_TIMEOUT.as_secs(),
            "pool shutdown timed out"
        );
    }
    background.shutdown_timeout(Duration::from_secs(1));
    info!("cpub-proxy exited");
    0
}

/// Installs the SIGTERM and SIGINT handlers (before the workers start, so
/// an early signal is not lost to the default action) and returns a future
/// that resolves on either.
fn stop_signal(
    runtime: &tokio::runtime::Runtime,
) -> std::io::Result<impl std::future::Future<Output = ()> + use<>> {
    use tokio::signal::unix::{SignalKind, signal};
    let _guard = runtime.enter();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
    })
}
