//! Live build output (issue 13): while a build runs in this process, its
//! steps and Podman's output are kept here (the last [`LIVE_CAP`] bytes, with
//! their offset in the whole output) so any number of followers
//! (`GET /api/v1/builds/{id}/log?follow=true`, `cpub deploy`, `cpub
//! build-log -f`) read it as it happens. The build itself runs in its own
//! task, never tied to a request: a follower that goes away (Ctrl-C on the
//! CLI) changes nothing. When the build ends, its tail is in the deployment
//! row (`build_log`) as before; the live entry stays a minute for followers
//! that are still reading, then goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// Most live output kept per build (followers that fall further behind
/// are told how much they missed).
pub const LIVE_CAP: usize = 1 << 20;
/// How long a finished build's live entry stays.
const LINGER: Duration = Duration::from_secs(60);

/// The builds running (or just finished) in this process, by deployment id.
#[derive(Default)]
pub struct LiveBuilds {
    map: Mutex<HashMap<i64, Arc<LiveBuild>>>,
}

impl LiveBuilds {
    /// Registers the build of deployment `id`; the guard marks it finished
    /// when dropped (on every path, panics included).
    pub fn begin(self: &Arc<Self>, id: i64) -> LiveGuard {
        let build = Arc::new(LiveBuild::new());
        self.map
            .lock()
            .expect("live builds lock")
            .insert(id, Arc::clone(&build));
        LiveGuard {
            builds: Arc::clone(self),
            id,
            build,
        }
    }

    /// The live build of deployment `id`, if it runs (or ran within a
    /// minute) in this process.
    pub fn get(&self, id: i64) -> Option<Arc<LiveBuild>> {
        self.map.lock().expect("live builds lock").get(&id).cloned()
    }
}

/// Marks its build finished when dropped, and forgets it a minute later.
pub struct LiveGuard {
    builds: Arc<LiveBuilds>,
    id: i64,
    build: Arc<LiveBuild>,
}

impl LiveGuard {
    pub fn build(&self) -> &Arc<LiveBuild> {
        &self.build
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.build.finish();
        let (builds, id, build) = (Arc::clone(&self.builds), self.id, Arc::clone(&self.build));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::time::sleep(LINGER).await;
                let mut map = builds.map.lock().expect("live builds lock");
                if map.get(&id).is_some_and(|b| Arc::ptr_eq(b, &build)) {
                    map.remove(&id);
                }
            });
        }
    }
}

/// One build's output so far.
pub struct LiveBuild {
    log: Mutex<LiveLog>,
    /// The total length written so far; closed (`finished`) at the end.
    written: watch::Sender<(u64, bool)>,
}

struct LiveLog {
    /// The kept bytes: output from offset `base` on.
    text: Vec<u8>,
    base: u64,
    done: bool,
}

/// What a follower reads from `offset`.
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Bytes cut before the kept part (the follower fell behind).
    pub skipped: u64,
    pub bytes: Vec<u8>,
    /// Offset to read from next.
    pub next: u64,
    /// The build had finished when this was read (and `bytes` is the end).
    pub done: bool,
}

impl LiveBuild {
    fn new() -> Self {
        Self {
            log: Mutex::new(LiveLog {
                text: Vec::new(),
                base: 0,
                done: false,
            }),
            written: watch::channel((0, false)).0,
        }
    }

    /// Appends output (a step line or a piece of Podman's output).
    pub fn push(&self, text: &str) {
        let total = {
            let mut log = self.log.lock().expect("live log lock");
            if log.done {
                return;
            }
            log.text.extend_from_slice(text.as_bytes());
            if log.text.len() > 2 * LIVE_CAP {
                let drop = log.text.len() - LIVE_CAP;
                log.text.drain(..drop);
                log.base += drop as u64;
            }
            log.base + log.text.len() as u64
        };
        self.written.send_replace((total, false));
    }

    fn finish(&self) {
        let total = {
            let mut log = self.log.lock().expect("live log lock");
            log.done = true;
            log.base + log.text.len() as u64
        };
        self.written.send_replace((total, true));
    }

    /// What is there from `offset` on (at most `max` bytes).
    pub fn read(&self, offset: u64, max: usize) -> Chunk {
        let log = self.log.lock().expect("live log lock");
        let end = log.base + log.text.len() as u64;
        let from = offset.clamp(log.base, end);
        let skipped = from.saturating_sub(offset);
        let start = (from - log.base) as usize;
        let take = (log.text.len() - start).min(max);
        let bytes = log.text[start..start + take].to_vec();
        let next = from + take as u64;
        Chunk {
            skipped,
            bytes,
            next,
            done: log.done && next == end,
        }
    }

    /// Waits until more than `offset` bytes were written or the build ended.
    pub async fn wait_past(&self, offset: u64) {
        let mut rx = self.written.subscribe();
        let _ = rx.wait_for(|(total, done)| *total > offset || *done).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_read_what_was_written_and_learn_the_end() {
        let builds = Arc::new(LiveBuilds::default());
        let guard = builds.begin(7);
        let live = builds.get(7).unwrap();
        live.push("STEP 1/2\n");
        let first = live.read(0, 1 << 20);
        assert_eq!(
            first,
            Chunk {
                skipped: 0,
                bytes: b"STEP 1/2\n".to_vec(),
                next: 9,
                done: false
            }
        );
        let waiter = {
            let live = Arc::clone(&live);
            tokio::spawn(async move { live.wait_past(9).await })
        };
        live.push("STEP 2/2\n");
        waiter.await.unwrap();
        assert_eq!(live.read(9, 4).bytes, b"STEP");
        drop(guard);
        let last = live.read(9, 1 << 20);
        assert_eq!(
            (last.bytes.as_slice(), last.done),
            (&b"STEP 2/2\n"[..], true)
        );
        live.wait_past(100).await; // returns: the build ended
        live.push("late\n");
        assert_eq!(live.read(18, 100).bytes, b"");
    }

    #[test]
    fn a_slow_follower_is_told_what_it_missed() {
        let live = LiveBuild::new();
        let line = "x".repeat(1000) + "\n";
        for _ in 0..(3 * LIVE_CAP / line.len()) {
            live.push(&line);
        }
        let chunk = live.read(0, 10);
        assert!(chunk.skipped > 0);
        assert_eq!(chunk.next, chunk.skipped + 10);
    }
}
