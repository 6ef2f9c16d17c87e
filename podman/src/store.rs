//! The image store's lock: image removals never run while an image is being
//! made in the same store.
//!
//! Podman 4.3 creates a new image's layers before the image that references
//! them, and may reuse an existing layer of identical content; an image
//! removal in between deletes that layer as unreferenced, and the new image
//! fails with `committing the finished image: creating image …: layer not
//! known` (seen in our CI when two functions with the same binary were built
//! at once; upstream: podman#18659, buildah#5674, both open). So every
//! operation that makes an image (a build; the load half of
//! [`Podman::move_image`]) holds a shared lock on `<socket>.lock`, and
//! removals take it exclusively:
//! - [`Podman::remove_image`] waits for the exclusive lock (up to
//!   [`REMOVAL_WAIT`]): right for the instances' store, whose holders are
//!   loads of a few seconds.
//! - [`Podman::remove_when_idle`] does not wait: right for the build store,
//!   whose holders are builds of up to minutes. The removal is written down
//!   in `<socket>.pending/` and done by whoever next finds the store idle
//!   (the end of every build and move tries), in any process using the
//!   store, so no image is left behind because its process went away.
//!
//! The lock is a `flock(2)` on a file, so it binds every process on the host
//! that uses the same socket (several control planes in the e2e tests), and
//! the kernel releases it when a process dies.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::time::Duration;

use crate::client::{Podman, PodmanError, encode};

/// Longest [`Podman::remove_image`] waits for the images being made in the
/// store to be done.
pub const REMOVAL_WAIT: Duration = Duration::from_secs(120);
/// How often a waiting removal tries the lock again.
const RETRY: Duration = Duration::from_millis(25);

/// A shared hold on a store: no image is removed from it while this lives.
#[derive(Debug)]
pub struct StoreHold {
    _file: File,
}

impl Podman {
    fn lock_path(&self) -> PathBuf {
        let mut path = self.socket().as_os_str().to_owned();
        path.push(".lock");
        path.into()
    }

    fn pending_dir(&self) -> PathBuf {
        let mut path = self.socket().as_os_str().to_owned();
        path.push(".pending");
        path.into()
    }

    fn open_lock(&self) -> Result<File, PodmanError> {
        let path = self.lock_path();
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| PodmanError::StoreLock { path, source })
    }

    /// Holds the store shared (waits only while a removal runs).
    pub async fn hold_store(&self) -> Result<StoreHold, PodmanError> {
        let file = self.open_lock()?;
        let path = self.lock_path();
        tokio::task::spawn_blocking(move || {
            file.lock_shared()
                .map(|()| StoreHold { _file: file })
                .map_err(|source| PodmanError::StoreLock { path, source })
        })
        .await
        .map_err(|err| PodmanError::Transport(format!("store lock task: {err}")))?
    }

    /// The store held exclusively, if nothing holds it now.
    fn try_exclusive(&self) -> Result<Option<File>, PodmanError> {
        let file = self.open_lock()?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(source)) => Err(PodmanError::StoreLock {
                path: self.lock_path(),
                source,
            }),
        }
    }

    /// The store held exclusively, waiting up to `wait` (blocking the
    /// thread: for code outside the async world, the test fixtures' image
    /// clean-up with the Podman CLI).
    #[cfg(feature = "test-util")]
    pub(crate) fn exclusive_blocking(&self, wait: Duration) -> Result<File, PodmanError> {
        let until = std::time::Instant::now() + wait;
        loop {
            if let Some(file) = self.try_exclusive()? {
                return Ok(file);
            }
            if std::time::Instant::now() >= until {
                return Err(PodmanError::StoreBusy {
                    image: "(images removed with the Podman CLI)".into(),
                    waited: wait,
                });
            }
            std::thread::sleep(RETRY);
        }
    }

    /// Removes image `name` (absent is fine), waiting up to
    /// [`REMOVAL_WAIT`] for the images being made in this store.
    pub async fn remove_image(&self, name: &str) -> Result<(), PodmanError> {
        let until = tokio::time::Instant::now() + REMOVAL_WAIT;
        let _exclusive = loop {
            if let Some(file) = self.try_exclusive()? {
                break file;
            }
            if tokio::time::Instant::now() >= until {
                return Err(PodmanError::StoreBusy {
                    image: name.into(),
                    waited: REMOVAL_WAIT,
                });
            }
            tokio::time::sleep(RETRY).await;
        };
        self.remove_image_unlocked(name).await
    }

    /// Removes image `name` now if nothing is being made in this store,
    /// else as soon as a build or move finds it idle. Failures are logged:
    /// the removal stays written down and is tried again then.
    pub async fn remove_when_idle(&self, name: &str) {
        let dir = self.pending_dir();
        let marker = dir.join(encode(name));
        let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&marker, name));
        match written {
            Ok(()) => self.remove_pending().await,
            Err(err) => {
                tracing::warn!(%err, path = %marker.display(), "could not write down an image removal; removing it now");
                if let Err(err) = self.remove_image(name).await {
                    tracing::warn!(%err, image = name, "could not remove an image");
                }
            }
        }
    }

    /// Images whose removal is written down and not done yet.
    pub fn pending_removals(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.pending_dir()) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect();
        names.sort();
        names
    }

    /// Does the removals written down, if nothing is being made now.
    pub async fn remove_pending(&self) {
        let pending = self.pending_removals();
        if pending.is_empty() {
            return;
        }
        let _exclusive = match self.try_exclusive() {
            Ok(Some(file)) => file,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(%err, "could not lock the image store to remove images");
                return;
            }
        };
        for name in self.pending_removals() {
            match self.remove_image_unlocked(&name).await {
                Ok(()) => {
                    let _ = std::fs::remove_file(self.pending_dir().join(encode(&name)));
                }
                Err(err) => {
                    tracing::warn!(%err, image = %name, "could not remove an image; will try again")
                }
            }
        }
    }
}
