//! Counters the workers bump as requests finish, and the once-a-second
//! progress line on stderr that reads them.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Live totals shared by all workers (relaxed atomics: display only).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) done: AtomicU64,
    pub(crate) errors: AtomicU64,
}

impl Counters {
    pub(crate) fn count(&self, is_error: bool) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if is_error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Prints a line a second until dropped; on a terminal the line is redrawn
/// in place and cleared at the end.
pub(crate) struct ProgressLine {
    task: JoinHandle<()>,
    tty: bool,
}

impl ProgressLine {
    pub(crate) fn start(counters: Arc<Counters>, t0: Instant, bound: Duration) -> Self {
        let tty = std::io::stderr().is_terminal();
        let task = tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
            let mut last = 0;
            loop {
                tick.tick().await;
                let done = counters.done.load(Ordering::Relaxed);
                let errors = counters.errors.load(Ordering::Relaxed);
                let line = format!(
                    "[{:>5.1}s/{:.0}s] {done} requests, {} req/s, {errors} errors",
                    t0.elapsed().as_secs_f64(),
                    bound.as_secs_f64(),
                    done - last,
                );
                last = done;
                let mut err = std::io::stderr().lock();
                let _ = if tty {
                    write!(err, "\r{line}\x1b[K")
                } else {
                    writeln!(err, "{line}")
                };
                let _ = err.flush();
            }
        });
        Self { task, tty }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.task.abort();
        if self.tty {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}
