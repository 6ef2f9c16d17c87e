//! Pausing and resuming a container by writing its cgroup freezer directly,
//! not through Podman's `pause`/`unpause` (docs/BENCHMARKS.md, "Resume by
//! the cgroup freezer").
//!
//! Podman's `unpause` runs `runc resume` under Podman's lock: a process
//! and the lock, 10–20 ms on this machine and far more when Podman is busy
//! with a thousand containers. The kernel's side of a resume
//! is one write to the container's freezer: well under a millisecond. The
//! price is that Podman keeps reporting a container frozen this way as
//! `running`; the pool is the authority on which of its instances are
//! paused (`PodmanRuntime` reads the freezer when it adopts containers, and
//! thaws an instance before removing it: on cgroup v1 a frozen process
//! takes no signal).
//!
//! cgroup v1 (this machine): `<root>/freezer/<path>/freezer.state`, written
//! `FROZEN`/`THAWED`; freezing passes through `FREEZING` until every task
//! stopped. cgroup v2: `<root>/<path>/cgroup.freeze` written `1`/`0`, done
//! when `cgroup.events` says `frozen 1`. `<path>` is Podman's
//! `State.CgroupPath` (`/libpod_parent/libpod-<id>` with the cgroupfs
//! manager); a path that is not absolute or has `.`/`..` components is
//! refused, never joined.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// What failed while freezing or thawing.
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("cgroup path {0:?} is not an absolute path of plain components")]
    BadPath(String),
    #[error("container {id} has no cgroup (Podman's State.CgroupPath; status {status})")]
    NoCgroup { id: String, status: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} still says {state:?} after {waited:?}; thawed again")]
    NotFrozen {
        path: PathBuf,
        state: String,
        waited: Duration,
    },
}

/// Which cgroup hierarchy the freezer lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `freezer` controller, `freezer.state`.
    V1,
    /// Unified hierarchy, `cgroup.freeze` and `cgroup.events`.
    V2,
}

/// The host's cgroup freezer.
#[derive(Debug, Clone)]
pub struct Freezer {
    root: PathBuf,
    version: Version,
}

/// How long a freeze may stay in `FREEZING` (a task in uninterruptible
/// sleep delays it) before it is undone and reported.
pub const FREEZE_DEADLINE: Duration = Duration::from_secs(2);

impl Freezer {
    /// The freezer under `root` (`/sys/fs/cgroup`): v1 when a `freezer`
    /// hierarchy is mounted there, else v2 when `root` is the unified
    /// hierarchy; `None` when neither.
    pub fn detect(root: &Path) -> Option<Self> {
        let version = if root.join("freezer").join("freezer.state").exists()
            || root.join("freezer").join("tasks").exists()
        {
            Version::V1
        } else if root.join("cgroup.controllers").exists() {
            Version::V2
        } else {
            return None;
        };
        Some(Self {
            root: root.to_owned(),
            version,
        })
    }

    /// The host's freezer under `/sys/fs/cgroup`.
    pub fn host() -> Option<Self> {
        Self::detect(Path::new("/sys/fs/cgroup"))
    }

    /// Proves the freezer works before it is trusted: makes an empty cgroup
    /// (`cpub-freezer-check-<pid>`), freezes it, reads it frozen, thaws it
    /// and removes it. Fails, naming the step, where the hierarchy is
    /// mounted read-only, the kernel has no `cgroup.freeze` (v2 before
    /// Linux 5.2) or a freeze never completes.
    pub async fn check(&self) -> Result<(), String> {
        let path = format!("/cpub-freezer-check-{}", std::process::id());
        let dir = self.dir(&path).map_err(|e| e.to_string())?;
        if let Err(e) = std::fs::create_dir(&dir) {
            return Err(format!("cannot make a cgroup at {}: {e}", dir.display()));
        }
        let tried = async {
            let control = self.control(&path).map_err(|e| e.to_string())?;
            // The kernel makes it with the cgroup: a write must not create it.
            if !control.exists() {
                return Err(format!(
                    "a new cgroup has no {} (a kernel without this freezer?)",
                    control.display()
                ));
            }
            self.freeze(&path, Duration::from_secs(1))
                .await
                .map_err(|e| format!("freezing an empty cgroup: {e}"))?;
            if !self.is_frozen(&path).map_err(|e| e.to_string())? {
                return Err(format!("{} does not read frozen", control.display()));
            }
            self.thaw(&path)
                .map_err(|e| format!("thawing an empty cgroup: {e}"))
        }
        .await;
        if let Err(e) = std::fs::remove_dir(&dir) {
            tracing::warn!(cgroup = %dir.display(), error = %e, "removing the freezer's check cgroup");
        }
        tried
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The directory of cgroup `path` in the freezer's hierarchy.
    fn dir(&self, path: &str) -> Result<PathBuf, FreezeError> {
        // Checked on the text: `Path::components` would drop a `.`.
        let plain = path.strip_prefix('/').is_some_and(|rest| {
            rest.split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.contains('\0'))
        });
        if !plain {
            return Err(FreezeError::BadPath(path.to_owned()));
        }
        let p = Path::new(path);
        let base = match self.version {
            Version::V1 => self.root.join("freezer"),
            Version::V2 => self.root.clone(),
        };
        Ok(base.join(p.strip_prefix("/").unwrap_or(p)))
    }

    fn control(&self, path: &str) -> Result<PathBuf, FreezeError> {
        let file = match self.version {
            Version::V1 => "freezer.state",
            Version::V2 => "cgroup.freeze",
        };
        Ok(self.dir(path)?.join(file))
    }

    /// Whether cgroup `path` is frozen now (`FREEZING` counts as not yet).
    pub fn is_frozen(&self, path: &str) -> Result<bool, FreezeError> {
        Ok(self.state(path)? == "FROZEN")
    }

    /// Whether cgroup `path` is thawed (neither frozen nor freezing).
    pub fn is_thawed(&self, path: &str) -> Result<bool, FreezeError> {
        Ok(self.state(path)? == "THAWED")
    }

    /// `FROZEN`, `FREEZING` or `THAWED` (v2's `cgroup.events` mapped onto
    /// v1's words).
    fn state(&self, path: &str) -> Result<String, FreezeError> {
        match self.version {
            Version::V1 => {
                let file = self.control(path)?;
                Ok(read(&file)?.trim().to_owned())
            }
            Version::V2 => {
                let events = read(&self.dir(path)?.join("cgroup.events"))?;
                let frozen = events.lines().any(|l| l.trim() == "frozen 1");
                let asked = read(&self.control(path)?)?.trim() == "1";
                Ok(match (asked, frozen) {
                    (_, true) => "FROZEN",
                    (true, false) => "FREEZING",
                    (false, false) => "THAWED",
                }
                .to_owned())
            }
        }
    }

    /// Freezes cgroup `path` and waits until every task in it stopped (at
    /// most `deadline`; past it the cgroup is thawed again and the error
    /// says what it was stuck in). Memory stays as it is.
    pub async fn freeze(&self, path: &str, deadline: Duration) -> Result<(), FreezeError> {
        let file = self.control(path)?;
        write(&file, self.word(true))?;
        let begun = std::time::Instant::now();
        let mut pause = Duration::from_micros(100);
        loop {
            let state = self.state(path)?;
            if state == "FROZEN" {
                return Ok(());
            }
            let waited = begun.elapsed();
            if waited >= deadline {
                let _ = write(&file, self.word(false));
                return Err(FreezeError::NotFrozen {
                    path: file,
                    state,
                    waited,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Thaws cgroup `path` (done when the write returns).
    pub fn thaw(&self, path: &str) -> Result<(), FreezeError> {
        write(&self.control(path)?, self.word(false))
    }

    fn word(&self, frozen: bool) -> &'static str {
        match (self.version, frozen) {
            (Version::V1, true) => "FROZEN",
            (Version::V1, false) => "THAWED",
            (Version::V2, true) => "1",
            (Version::V2, false) => "0",
        }
    }
}

fn read(path: &Path) -> Result<String, FreezeError> {
    std::fs::read_to_string(path).map_err(|source| FreezeError::Io {
        path: path.to_owned(),
        source,
    })
}

/// One `write(2)` of `word` (sysfs files take the value in one write; no
/// truncation, no creation: a missing cgroup is an error, never a new file).
fn write(path: &Path, word: &str) -> Result<(), FreezeError> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(word.as_bytes()))
        .map_err(|source| FreezeError::Io {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1() -> (tempfile::TempDir, Freezer) {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("freezer/libpod_parent/libpod-abc")).unwrap();
        std::fs::write(root.path().join("freezer/tasks"), "").unwrap();
        std::fs::write(
            root.path()
                .join("freezer/libpod_parent/libpod-abc/freezer.state"),
            "THAWED\n",
        )
        .unwrap();
        let f = Freezer::detect(root.path()).unwrap();
        (root, f)
    }

    #[test]
    fn paths_that_leave_the_hierarchy_are_refused() {
        let (_root, f) = v1();
        for bad in [
            "",
            "/",
            "libpod_parent/libpod-abc",
            "/libpod_parent/../../etc",
            "/libpod_parent/./libpod-abc",
            "/a/\0b",
            "/a//b",
            "/a/b/",
        ] {
            let err = f.thaw(bad).unwrap_err();
            assert!(matches!(err, FreezeError::BadPath(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_missing_cgroup_is_an_error_and_creates_nothing() {
        let (root, f) = v1();
        let err = f.thaw("/libpod_parent/libpod-gone").unwrap_err();
        assert!(matches!(err, FreezeError::Io { .. }), "{err}");
        assert!(
            !root
                .path()
                .join("freezer/libpod_parent/libpod-gone")
                .exists()
        );
    }

    #[tokio::test]
    async fn v1_words_are_written_and_read() {
        let (root, f) = v1();
        assert_eq!(f.version(), Version::V1);
        let state = root
            .path()
            .join("freezer/libpod_parent/libpod-abc/freezer.state");
        // A regular file reads back what was written: FROZEN at once.
        f.freeze("/libpod_parent/libpod-abc", FREEZE_DEADLINE)
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(&state).unwrap().trim(), "FROZEN");
        assert!(f.is_frozen("/libpod_parent/libpod-abc").unwrap());
        f.thaw("/libpod_parent/libpod-abc").unwrap();
        assert_eq!(std::fs::read_to_string(&state).unwrap().trim(), "THAWED");
    }

    #[tokio::test]
    async fn a_freeze_that_does_not_complete_is_undone_and_reported() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "").unwrap();
        let dir = root.path().join("cpub/x");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.freeze"), "0\n").unwrap();
        // The kernel never says `frozen 1` here.
        std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        let f = Freezer::detect(root.path()).unwrap();
        assert_eq!(f.version(), Version::V2);
        let err = f
            .freeze("/cpub/x", Duration::from_millis(30))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, FreezeError::NotFrozen { state, .. } if state == "FREEZING"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("cgroup.freeze"))
                .unwrap()
                .trim(),
            "0"
        );
    }

    /// A hierarchy whose new cgroups get no control file (here plain
    /// directories, as on a kernel without this freezer) is refused, and
    /// the check's cgroup is removed again.
    #[tokio::test]
    async fn a_freezer_that_cannot_freeze_is_refused() {
        let (root, f) = v1();
        let err = f.check().await.unwrap_err();
        assert!(
            err.contains("has no") && err.contains("freezer.state"),
            "{err}"
        );
        let left: Vec<_> = std::fs::read_dir(root.path().join("freezer"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "only tasks and libpod_parent: {left:?}");
        // No hierarchy to make a cgroup in.
        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "").unwrap();
        let f = Freezer::detect(v2.path()).unwrap();
        std::fs::remove_file(v2.path().join("cgroup.controllers")).unwrap();
        std::fs::remove_dir(v2.path()).unwrap();
        let err = f.check().await.unwrap_err();
        assert!(err.starts_with("cannot make a cgroup"), "{err}");
    }

    /// This host's freezer (the one the pool uses) passes the check and
    /// leaves no cgroup behind.
    #[tokio::test]
    async fn the_hosts_freezer_passes_its_check() {
        let f = Freezer::host().expect("a cgroup freezer on this host");
        f.check().await.unwrap();
        let name = format!("cpub-freezer-check-{}", std::process::id());
        let base = match f.version() {
            Version::V1 => Path::new("/sys/fs/cgroup/freezer").join(&name),
            Version::V2 => Path::new("/sys/fs/cgroup").join(&name),
        };
        assert!(!base.exists(), "{} left behind", base.display());
    }
}
