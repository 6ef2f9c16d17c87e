//! Packs a function directory into the `.tar.gz` bundle that `cpub deploy`
//! uploads: relative paths, `.cpubignore` honoured, `.git/` left out.
//!
//! Only `.cpubignore` files (gitignore syntax, in the directory or below)
//! decide what is left out: `.gitignore` is not read and hidden files are
//! kept, because a build output such as `bin/` is often gitignored yet is
//! exactly what a `runtime = "binary"` bundle must carry. The archive is
//! deterministic (sorted entries, fixed owner and mtime) so the same
//! directory always has the same digest. Modes are normalised to 0755 for
//! anything executable and 0644 otherwise, so the unprivileged user the
//! function runs as can read and run what the developer could.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use flate2::Compression;
use flate2::write::GzEncoder;
use ignore::WalkBuilder;

/// Name of the per-directory ignore file.
pub const IGNORE_FILE: &str = ".cpubignore";

/// What went into an archive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packed {
    /// Relative `/`-separated paths of the regular files, in archive order.
    pub files: Vec<String>,
    /// Sum of the files' sizes before compression.
    pub bytes: u64,
}

impl Packed {
    /// Whether the bundle carries the file at `path` (relative, `/`-separated).
    pub fn contains(&self, path: &str) -> bool {
        let path = path.trim_start_matches("./");
        self.files.iter().any(|f| f == path)
    }
}

/// Writes `dir` as a gzip-compressed tar archive to `out`.
pub fn pack<W: Write>(dir: &Path, out: W) -> Result<Packed> {
    let mut builder = tar::Builder::new(GzEncoder::new(out, Compression::default()));
    let mut packed = Packed::default();

    let walker = WalkBuilder::new(dir)
        .standard_filters(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .follow_links(false)
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(|entry| entry.depth() == 0 || entry.file_name() != ".git")
        .build();

    for entry in walker {
        let entry = entry.with_context(|| format!("cannot walk {}", dir.display()))?;
        if entry.depth() == 0 {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(dir)
            .context("walked outside the bundle")?;
        let Some(rel_str) = rel.to_str() else {
            bail!(
                "{}: file names in a bundle must be UTF-8",
                entry.path().display()
            );
        };
        let meta = std::fs::symlink_metadata(entry.path())
            .with_context(|| format!("cannot stat {}", entry.path().display()))?;
        let file_type = meta.file_type();

        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if file_type.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder
                .append_data(&mut header, format!("{rel_str}/"), std::io::empty())
                .with_context(|| format!("cannot add {rel_str}/ to the bundle"))?;
        } else if file_type.is_file() {
            let executable = meta.permissions().mode() & 0o111 != 0;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if executable { 0o755 } else { 0o644 });
            header.set_size(meta.len());
            let file = std::fs::File::open(entry.path())
                .with_context(|| format!("cannot open {}", entry.path().display()))?;
            builder
                .append_data(&mut header, rel_str, file)
                .with_context(|| format!("cannot add {rel_str} to the bundle"))?;
            packed.files.push(rel_str.to_owned());
            packed.bytes += meta.len();
        } else if file_type.is_symlink() {
            bail!(
                "{rel_str} is a symbolic link; bundles carry regular files only \
                 (copy the target in, or list it in {IGNORE_FILE})"
            );
        } else {
            bail!("{rel_str} is not a regular file or directory (list it in {IGNORE_FILE})");
        }
    }

    let gz = builder
        .into_inner()
        .context("cannot finish the tar archive")?;
    let mut out = gz.finish().context("cannot finish gzip compression")?;
    out.flush().context("cannot flush the bundle")?;
    Ok(packed)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Read;

    use super::*;

    fn write(root: &Path, rel: &str, text: &str, mode: u32) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Unpacks an archive into path → (entry type, mode, contents).
    fn unpack(bytes: &[u8]) -> BTreeMap<String, (tar::EntryType, u32, String)> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
        let mut out = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_str().unwrap().to_owned();
            let kind = entry.header().entry_type();
            let mode = entry.header().mode().unwrap();
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            out.insert(path, (kind, mode, text));
        }
        out
    }

    fn sample() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "cpub.toml", "name = \"hello\"\n", 0o644);
        write(root, "bin/hello", "#!/bin/sh\necho hi\n", 0o755);
        write(root, "src/main.rs", "fn main() {}\n", 0o644);
        write(root, "notes.log", "debug\n", 0o644);
        write(root, "logs/today.log", "debug\n", 0o644);
        write(root, "target/debug/junk", "x", 0o644);
        write(root, ".env.example", "A=1\n", 0o600);
        write(root, ".gitignore", "bin/\n", 0o644);
        write(root, ".git/HEAD", "ref: refs/heads/main\n", 0o644);
        write(root, ".git/objects/ab/cdef", "blob", 0o444);
        write(root, "sub/.cpubignore", "secret.txt\n", 0o644);
        write(root, "sub/secret.txt", "s3cr3t", 0o644);
        write(root, "sub/kept.txt", "kept", 0o644);
        write(root, IGNORE_FILE, "*.log\n/target/\n", 0o644);
        dir
    }

    #[test]
    fn packs_relative_paths_honouring_cpubignore_only() {
        let dir = sample();
        let mut bytes = Vec::new();
        let packed = pack(dir.path(), &mut bytes).unwrap();
        let entries = unpack(&bytes);
        let names: Vec<&str> = entries.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                ".cpubignore",
                ".env.example",
                ".gitignore",
                "bin/",
                "bin/hello",
                "cpub.toml",
                "logs/",
                "src/",
                "src/main.rs",
                "sub/",
                "sub/.cpubignore",
                "sub/kept.txt",
            ]
        );
        for name in &names {
            assert!(
                !name.starts_with('/') && !name.contains(".."),
                "{name} not relative"
            );
        }
        assert_eq!(entries["cpub.toml"].2, "name = \"hello\"\n");
        assert_eq!(entries["sub/kept.txt"].2, "kept");
        assert!(packed.contains("bin/hello") && packed.contains("./cpub.toml"));
        assert!(!packed.contains("sub/secret.txt"));
        assert_eq!(packed.files.len(), 8);
        assert_eq!(
            packed.bytes,
            entries.values().map(|e| e.2.len() as u64).sum::<u64>()
        );
    }

    #[test]
    fn keeps_executables_executable() {
        let dir = sample();
        let mut bytes = Vec::new();
        pack(dir.path(), &mut bytes).unwrap();
        let entries = unpack(&bytes);
        assert_eq!(entries["bin/hello"].0, tar::EntryType::Regular);
        assert_eq!(entries["bin/hello"].1, 0o755);
        assert_eq!(entries["cpub.toml"].1, 0o644);
        assert_eq!(
            entries[".env.example"].1, 0o644,
            "owner-only files become readable"
        );
        assert_eq!(entries["bin/"].0, tar::EntryType::Directory);
        assert_eq!(entries["bin/"].1, 0o755);
    }

    #[test]
    fn archive_is_deterministic() {
        let dir = sample();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        pack(dir.path(), &mut a).unwrap();
        std::fs::write(dir.path().join("cpub.toml"), "name = \"hello\"\n").unwrap();
        pack(dir.path(), &mut b).unwrap();
        assert_eq!(
            a, b,
            "rewriting a file with the same content changed the archive"
        );
    }

    #[test]
    fn symlinks_are_refused() {
        let dir = sample();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd")).unwrap();
        let err = pack(dir.path(), Vec::new()).unwrap_err().to_string();
        assert!(
            err.contains("passwd") && err.contains("symbolic link"),
            "{err}"
        );
        // ...unless ignored.
        std::fs::write(dir.path().join(IGNORE_FILE), "passwd\n").unwrap();
        pack(dir.path(), Vec::new()).unwrap();
    }
}
