//! Replacing a file atomically: readers see the old content or the new,
//! never a part, also after a crash; and holding a directory for one
//! process ([`DirLock`]).

use std::fs::{DirBuilder, File, OpenOptions, Permissions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Modes of the file and of the directories [`write_atomic`] creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modes {
    pub file: u32,
    pub dir: u32,
}

impl Modes {
    /// Anyone may read (`0644`, directories `0755`).
    pub const PUBLIC: Self = Self {
        file: 0o644,
        dir: 0o755,
    };
    /// Only the owner (`0600`, directories `0700`): credentials.
    pub const PRIVATE: Self = Self {
        file: 0o600,
        dir: 0o700,
    };
}

/// Replaces `path` with `bytes`: its directory is created when missing
/// (`modes.dir`), a temporary file next to it (`modes.file` from its
/// creation on, so the content is never readable with wider rights) is
/// written and flushed to disk, renamed over `path`, and the directory is
/// flushed so the rename survives a crash. On error `path` is untouched and
/// the temporary file is gone.
pub fn write_atomic(path: &Path, bytes: &[u8], modes: Modes) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    DirBuilder::new()
        .recursive(true)
        .mode(modes.dir)
        .create(dir)?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(Permissions::from_mode(modes.file))
        .tempfile_in(dir)?;
    // The mode above is subject to the umask: set it exactly.
    tmp.as_file()
        .set_permissions(Permissions::from_mode(modes.file))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

/// Name of the lock file [`DirLock::hold`] keeps in its directory.
pub const LOCK_FILE: &str = "lock";

/// An exclusive hold on a directory for as long as the value lives (an
/// advisory `flock` on `DIR/lock`, which the kernel lets go when the
/// process ends, also by SIGKILL). The file holds the holder's process id,
/// for the message of the next one that tries.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Why [`DirLock::hold`] did not get the directory.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path} is held by another process{}", holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default())]
    Held { path: String, holder: Option<u32> },
    #[error("cannot lock {path}: {source}")]
    Io { path: String, source: io::Error },
}

impl DirLock {
    /// Takes `dir` (created when missing, `modes.dir`) for this process, or
    /// says which process has it. Never waits.
    pub fn hold(dir: &Path, modes: Modes) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE);
        let io_err = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(modes.dir)
            .create(dir)
            .map_err(io_err)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false) // the holder's pid stays readable until it is ours
            .mode(modes.file)
            .custom_flags(libc::O_NOFOLLOW) // a link planted there is refused
            .open(&path)
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = (&file).take(32).read_to_string(&mut text);
                return Err(LockError::Held {
                    path: path.display().to_string(),
                    holder: text.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_err(e)),
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(io_err)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_replaces_and_leaves_no_temporary_file() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("a").join("b").join("routes.json");
        write_atomic(&path, b"one", Modes::PUBLIC).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        assert_eq!(mode(&path), 0o644);
        // A new directory's mode goes through the umask: never wider.
        assert_eq!(mode(path.parent().unwrap()) | 0o755, 0o755);
        write_atomic(&path, b"two, longer", Modes::PUBLIC).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two, longer");
        assert_eq!(entries(path.parent().unwrap()), ["routes.json"]);
    }

    #[test]
    fn private_files_are_never_wider_than_asked() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("cfg").join("config.toml");
        // An existing file with wider rights gets the asked ones.
        std::fs::create_dir(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o666)).unwrap();
        write_atomic(&path, b"token = \"x\"", Modes::PRIVATE).unwrap();
        assert_eq!(mode(&path), 0o600);
        let fresh = root.path().join("new").join("config.toml");
        write_atomic(&fresh, b"x", Modes::PRIVATE).unwrap();
        assert_eq!(
            (mode(&fresh), mode(fresh.parent().unwrap())),
            (0o600, 0o700)
        );
    }

    #[test]
    fn a_failed_write_leaves_the_target_and_no_temporary_file() {
        let root = tempfile::tempdir().unwrap();
        // A directory cannot be replaced by a file: the rename fails.
        let path = root.path().join("taken");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), "kept").unwrap();
        assert!(write_atomic(&path, b"new", Modes::PUBLIC).is_err());
        assert_eq!(std::fs::read(path.join("inside")).unwrap(), b"kept");
        assert_eq!(entries(root.path()), ["taken"]);
        // No file name at all.
        let err = write_atomic(Path::new("/"), b"x", Modes::PUBLIC).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_held_directory_names_its_holder_and_is_free_again_after_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        let first = DirLock::hold(&dir, Modes::PRIVATE).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap(),
            format!("{}\n", std::process::id())
        );
        // A second hold (another open file description, as another process
        // would have) is refused and names the holder.
        let err = DirLock::hold(&dir, Modes::PRIVATE).unwrap_err();
        match &err {
            LockError::Held { path, holder } => {
                assert!(path.ends_with("state/lock"), "{path}");
                assert_eq!(*holder, Some(std::process::id()));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        assert!(
            err.to_string()
                .contains(&format!("(pid {})", std::process::id()))
        );
        drop(first);
        let _again = DirLock::hold(&dir, Modes::PRIVATE).unwrap();
    }

    #[test]
    fn a_link_at_the_lock_file_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        let elsewhere = root.path().join("elsewhere");
        std::fs::write(&elsewhere, "kept").unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join(LOCK_FILE)).unwrap();
        let err = DirLock::hold(&dir, Modes::PRIVATE).unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err:?}");
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "kept");
    }
}
