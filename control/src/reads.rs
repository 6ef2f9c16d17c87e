//! Reads of execution records and function logs on behalf of a caller
//! (`cpub stats`, `cpub executions`, `cpub logs`): their cost grows with
//! the records they split, about 1.9–2.5 s of one PostgreSQL backend per
//! million (stats split only chunks cut at the window's edges or stored
//! without figures, migration 0019), so a day of a busy function is
//! minutes. Each holds one of the control plane's 16
//! database connections for its whole run: unbounded, enough of them at
//! once leave none for deploys, route watches and the proxies' record and
//! log batches, which wait and fail after the pool's 10 s.
//!
//! So such a read takes a permit first (at most `concurrency` at once; a
//! caller who finds none within [`QUEUE_WAIT`] gets 429 with Retry-After),
//! and runs in a read-only transaction whose statements PostgreSQL stops
//! after `timeout` (`statement_timeout`): the caller gets 400 naming the
//! window and the limit, and the backend is free again. A read that waits
//! between queries (`cpub logs -f`) holds neither while it waits.
//!
//! A read runs in a task of its own ([`detached`]), which a caller who
//! hangs up does not stop half-way: dropped, the read would give its permit
//! back at once while its query ran on in PostgreSQL, and its connection
//! would stay busy (sqlx waits for the query's end before the connection
//! goes back to the pool), so hanging up and asking again could run more
//! than `concurrency` reads at once. Run to its end, it holds its permit
//! as long as its connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{ENV_READ_CONCURRENCY, ENV_READ_TIMEOUT_S};
use crate::error::{Error, Result};

/// Longest a read waits for a permit before it is refused.
pub const QUEUE_WAIT: Duration = Duration::from_secs(2);

/// SQLSTATE `query_canceled`: what a statement stopped by
/// `statement_timeout` fails with (and one cancelled by an operator).
const QUERY_CANCELED: &str = "57014";

/// SQLSTATEs of a backend the server ends: `admin_shutdown`,
/// `crash_shutdown`, `cannot_connect_now`.
const SERVER_ENDED: [&str; 3] = ["57P01", "57P02", "57P03"];

/// How many reads run at once, and how long a statement of one may run.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    pub concurrency: usize,
    pub timeout: Duration,
}

/// The permits of the reads, shared by the handlers.
#[derive(Debug)]
pub struct Reads {
    permits: Arc<Semaphore>,
    limits: ReadLimits,
}

/// A read under way: its permit and its transaction (rolled back when
/// dropped: it only reads).
pub struct Read {
    tx: Transaction<'static, Postgres>,
    limits: ReadLimits,
    /// When the read last took its connection (about when its statement
    /// began): a cancelled statement is the time limit's only when it ran
    /// that long.
    began: Instant,
    _permit: OwnedSemaphorePermit,
}

impl Reads {
    pub fn new(limits: ReadLimits) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limits.concurrency)),
            limits,
        }
    }

    /// Permits free now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// A permit and a read-only transaction with the statement time limit,
    /// or 429 when `concurrency` reads keep every permit for [`QUEUE_WAIT`].
    pub async fn begin(&self, db: &PgPool) -> Result<Read> {
        let permits = Arc::clone(&self.permits);
        let permit = match tokio::time::timeout(QUEUE_WAIT, permits.acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                return Err(Error::TooManyRequests {
                    message: format!(
                        "{} reads of execution records or logs are running, the most the \
                         control plane runs at once ({ENV_READ_CONCURRENCY}); try again shortly",
                        self.limits.concurrency
                    ),
                    retry_after_s: 1,
                });
            }
        };
        let mut tx = db.begin().await?;
        let began = Instant::now();
        // SET takes no parameters: a number formatted here.
        let ms = self.limits.timeout.as_millis().max(1);
        // One snapshot for all its statements (a stats read's parts, a
        // list's growing windows).
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("SET LOCAL statement_timeout = {ms}"))
            .execute(&mut *tx)
            .await?;
        Ok(Read {
            tx,
            limits: self.limits,
            began,
            _permit: permit,
        })
    }
}

impl Read {
    /// The connection to run the read's next queries on.
    pub fn conn(&mut self) -> &mut PgConnection {
        self.began = Instant::now();
        &mut self.tx
    }

    /// `err` as the caller should see it: a statement stopped at the time
    /// limit is the window's size, said so and blamed on `field` (the
    /// window's parameter; `None`: the read has no window to blame, such as
    /// a follower's next lines, and the database was slow: 503, try again).
    /// A statement cancelled sooner (an operator's `pg_cancel_backend`), or
    /// a backend the server ended (a shutdown), is 503 too. The elapsed
    /// time tells a cancel from the time limit, not the message, which the
    /// server's `lc_messages` may translate. Anything else as usual.
    pub fn explain(&self, err: sqlx::Error, field: Option<&str>) -> Error {
        let code = err.as_database_error().and_then(|e| e.code());
        let canceled = code.as_deref() == Some(QUERY_CANCELED);
        let ended = code.as_deref().is_some_and(|c| SERVER_ENDED.contains(&c));
        let limit = self.limits.timeout.as_secs_f64();
        match field {
            _ if ended || (canceled && self.began.elapsed() < self.limits.timeout) => {
                Error::Unavailable(
                    "the database server cancelled or ended this read (an operator, or a \
                     restart); try again"
                        .into(),
                )
            }
            Some(field) if canceled => Error::bad_request(
                field,
                format!(
                    "reading the records or logs of this window took longer than the control \
                     plane's limit of {limit} s ({ENV_READ_TIMEOUT_S}) and was stopped: ask for \
                     a shorter window (--since) or narrower filters"
                ),
            ),
            None if canceled => Error::Unavailable(format!(
                "this read took longer than the control plane's limit of {limit} s \
                 ({ENV_READ_TIMEOUT_S}) and was stopped: the database is slow or busy; try again"
            )),
            _ => err.into(),
        }
    }
}

/// Runs `read` (the queries of a [`Read`] the handler began, to their end)
/// in a task of its own, which a caller who hangs up does not stop. The
/// permit is taken before, in the handler: a caller who hangs up while
/// queued for one takes none.
pub async fn detached<T: Send + 'static>(
    read: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(read)
        .await
        .map_err(|e| Error::Internal(anyhow::Error::new(e).context("a read's task")))?
}
