//! Replacing a file atomically: readers see the old content or the new,
//! never a part, also after a crash.

use std::fs::{DirBuilder, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
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
}
