//! Follows the route revision: a `PgListener` on `cpub_routes` feeds a
//! `tokio::sync::watch` that long polls wait on. The value only grows.
//!
//! Notifications sent while the listener is reconnecting are lost, so the
//! revision is re-read from the table after every (re)connect, and also on a
//! slow timer as a safety net.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::db;

/// How often the revision is re-read even without notifications.
const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// Pause before reconnecting after a listener error.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Raises the watched revision to `revision` if that is higher.
fn raise(tx: &watch::Sender<i64>, revision: i64) {
    tx.send_if_modified(|current| {
        if revision > *current {
            *current = revision;
            true
        } else {
            false
        }
    });
}

/// Runs until `shutdown` is cancelled.
pub async fn follow(pool: PgPool, tx: watch::Sender<i64>, shutdown: CancellationToken) {
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listen(&pool, &tx) => r,
        };
        if let Err(err) = result {
            tracing::warn!(%err, "route revision listener failed; retrying");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RETRY_AFTER) => {}
        }
    }
}

/// One listener session: returns when its connection is lost.
async fn listen(pool: &PgPool, tx: &watch::Sender<i64>) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(db::ROUTES_CHANNEL).await?;
    // Listening first, then reading: nothing committed after this read is missed.
    raise(tx, db::current_revision(pool).await?);
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    resync.tick().await;
    loop {
        tokio::select! {
            msg = listener.try_recv() => match msg? {
                Some(notification) => match notification.payload().parse::<i64>() {
                    Ok(revision) => raise(tx, revision),
                    Err(_) => raise(tx, db::current_revision(pool).await?),
                },
                None => {
                    // The connection was lost and notifications in the gap
                    // with it: start a new session, which re-reads the
                    // revision once it listens again.
                    tracing::info!("route listener lost its connection; reconnecting");
                    return Ok(());
                }
            },
            _ = resync.tick() => raise(tx, db::current_revision(pool).await?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_only_grows() {
        let (tx, rx) = watch::channel(5);
        raise(&tx, 3);
        assert_eq!(*rx.borrow(), 5);
        raise(&tx, 7);
        assert_eq!(*rx.borrow(), 7);
    }
}
